//! Turning refusals and failures into HTTP answers: a status code and an [`ApiError`] body that
//! names the problem, with `Retry-After` where waiting helps.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use client::api::{ApiError, ErrorCode};

use crate::state::Refusal;

/// How long a client should wait before retrying an `unavailable` answer.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_millis(500);

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub body: ApiError,
}

impl ApiFailure {
    pub fn new(status: StatusCode, code: ErrorCode, error: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            body: ApiError {
                error: error.into(),
                code,
                retry_after_ms: None,
            },
        }
    }

    pub fn bad_request(error: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, error)
    }

    pub fn not_found(error: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, error)
    }

    pub fn internal(error: impl Into<String>) -> ApiFailure {
        ApiFailure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            error,
        )
    }

    /// 503: no leader, no quorum, or a timeout; worth retrying shortly.
    pub fn unavailable(error: impl Into<String>) -> ApiFailure {
        ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            error,
        )
        .retry_after(UNAVAILABLE_RETRY)
    }

    pub fn retry_after(mut self, wait: Duration) -> ApiFailure {
        self.body.retry_after_ms = Some(wait.as_millis().max(1) as u64);
        self
    }
}

impl From<Refusal> for ApiFailure {
    fn from(refusal: Refusal) -> ApiFailure {
        let (status, code) = match &refusal {
            Refusal::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            Refusal::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            Refusal::AlreadyExists(_) => (StatusCode::CONFLICT, ErrorCode::AlreadyExists),
            Refusal::StaleGeneration { .. } => (StatusCode::CONFLICT, ErrorCode::StaleGeneration),
            Refusal::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            Refusal::InsufficientNodes(_) => (StatusCode::CONFLICT, ErrorCode::InsufficientNodes),
            Refusal::LeaseNotExpired { retry_after_ms } => {
                let failure = ApiFailure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::LeaseNotExpired,
                    refusal.to_string(),
                );
                return failure.retry_after(Duration::from_millis(*retry_after_ms));
            }
            Refusal::Unavailable(_) => return ApiFailure::unavailable(refusal.to_string()),
        };
        ApiFailure::new(status, code, refusal.to_string())
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let retry_after = self.body.retry_after_ms.map(|ms| ms.div_ceil(1000).max(1));
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::types::{Generation, UnitId};

    #[test]
    fn refusals_map_to_codes_and_statuses() {
        let stale = Refusal::StaleGeneration {
            unit: UnitId::new(1, 0),
            named: Generation(1),
            current: Generation(2),
        };
        let failure = ApiFailure::from(stale);
        assert_eq!(failure.status, StatusCode::CONFLICT);
        assert_eq!(failure.body.code, ErrorCode::StaleGeneration);
        assert!(
            failure.body.error.contains("generation 1"),
            "{}",
            failure.body.error
        );

        let wait = ApiFailure::from(Refusal::LeaseNotExpired {
            retry_after_ms: 1500,
        });
        assert_eq!(wait.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(wait.body.retry_after_ms, Some(1500));
        let response = wait.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}

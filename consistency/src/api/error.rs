//! Turning refusals and failures into HTTP answers: a status code and an [`ApiError`] body that
//! names the problem, with `Retry-After` where waiting helps.

use std::time::Duration;

use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use vbs_wire::api::{ApiError, ErrorCode};

use crate::manager::ManagerError;
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

    /// 400: what was asked is malformed; `error` says what is wrong.
    pub fn bad_request(error: impl std::fmt::Display) -> ApiFailure {
        ApiFailure::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            error.to_string(),
        )
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

impl From<ManagerError> for ApiFailure {
    fn from(error: ManagerError) -> ApiFailure {
        match error {
            ManagerError::Refused(refusal) => refusal.into(),
            other => ApiFailure::unavailable(other.to_string()),
        }
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

/// Gives every error answer the API's JSON shape, including those axum makes itself: a method a
/// route does not serve (405), a body over the limit (413), an unreadable path or query (400).
/// Answers that already are JSON (ours, or a leader's relayed by a follower) pass unchanged.
pub async fn json_errors(method: Method, uri: Uri, response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let error = if status == StatusCode::METHOD_NOT_ALLOWED {
        format!("{method} is not allowed on {}", uri.path())
    } else if text.is_empty() {
        format!(
            "{} {}: {}",
            method,
            uri.path(),
            status.canonical_reason().unwrap_or("error")
        )
    } else {
        text
    };
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let mut answer = ApiFailure::new(status, code, error).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        answer.headers_mut().insert(header::ALLOW, allow.clone());
    }
    answer
}

/// Most of a plain-text error body [`json_errors`] reads: axum's own messages are one line.
const MAX_PLAIN_ERROR_BYTES: usize = 64 << 10;

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
    use vbs_wire::types::{Generation, UnitId};

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

    #[tokio::test]
    async fn errors_axum_makes_itself_are_json_too() {
        use axum::extract::{DefaultBodyLimit, Query};
        use axum::routing::post;

        #[derive(serde::Deserialize)]
        struct Id {
            #[allow(dead_code)]
            id: u64,
        }
        let app = axum::Router::new()
            .route("/echo", post(|body: axum::body::Bytes| async move { body }))
            .route("/query", axum::routing::get(|_: Query<Id>| async { "ok" }))
            .layer(DefaultBodyLimit::max(16))
            .layer(axum::middleware::map_response(json_errors));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let cases = [
            (
                http.get(format!("http://{addr}/echo")),
                405,
                "GET is not allowed on /echo",
            ),
            (
                http.post(format!("http://{addr}/echo"))
                    .body(vec![b'x'; 17]),
                413,
                "",
            ),
            (http.get(format!("http://{addr}/query?id=x")), 400, "id"),
        ];
        for (request, status, words) in cases {
            let response = request.send().await.expect("answered");
            assert_eq!(response.status().as_u16(), status);
            let body: ApiError = response.json().await.expect("a JSON error body");
            assert!(body.error.contains(words), "{}", body.error);
            assert_eq!(body.code, ErrorCode::BadRequest);
        }
        let ok = http
            .post(format!("http://{addr}/echo"))
            .body("hi")
            .send()
            .await
            .expect("answered");
        assert_eq!(
            ok.text().await.expect("body"),
            "hi",
            "successes pass unchanged"
        );
        server.abort();
    }
}

//! What the client does about each kind of failure, as plain functions: which errors mean "the map
//! is out of date", "wait and retry", "the primary is gone", or "give up now", and how long to wait
//! between tries.

use std::time::Duration;

use crate::api::ErrorCode as ApiCode;
use crate::conn::DataError;
use crate::managers::ManagerError;
use crate::proto::ErrorCode;

use super::error::ClientError;

/// The first wait after a failure that calls for one; each next wait doubles, up to the last.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long to wait before reporting again when the managers say "lease not expired" without a
/// `retry_after_ms`, and the bounds put on what they say.
const DEFAULT_LEASE_WAIT: Duration = Duration::from_millis(500);
const MIN_LEASE_WAIT: Duration = Duration::from_millis(10);
const MAX_LEASE_WAIT: Duration = Duration::from_secs(10);

/// What to do about a failed data-plane request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The cached map is out of date (another generation or primary): refresh it, then retry.
    Refresh,
    /// The node cannot serve just now (starting, learning its units, connection lost): wait a
    /// little, then retry.
    Backoff,
    /// The primary did not answer: report it unresponsive to the managers, which fail the slice
    /// over, then retry with the map they answer with.
    Report,
    /// Retrying cannot help.
    Fail,
}

pub fn classify(error: &DataError) -> Action {
    match error {
        DataError::Remote { error, .. } => classify_code(error.code),
        // The node closed the connection (restart, crash): the next try reconnects, and reports
        // the node if that fails.
        DataError::Closed { .. } => Action::Backoff,
        DataError::Connect { .. } | DataError::Timeout { .. } => Action::Report,
        // Credentials do not fix themselves, and a node that refuses them is not down: reporting
        // it would have the managers fail over a healthy primary.
        DataError::Unauthorized { .. } => Action::Fail,
    }
}

pub fn classify_code(code: ErrorCode) -> Action {
    match code {
        ErrorCode::StaleGeneration
        | ErrorCode::NotPrimary
        | ErrorCode::NotCurrent
        | ErrorCode::UnknownUnit => Action::Refresh,
        ErrorCode::Unavailable => Action::Backoff,
        ErrorCode::OutOfRange
        | ErrorCode::TooLarge
        | ErrorCode::BadRequest
        | ErrorCode::Conflict
        | ErrorCode::Internal
        | ErrorCode::Hole
        | ErrorCode::Damaged
        | ErrorCode::NoSpace
        | ErrorCode::Unauthorized => Action::Fail,
    }
}

/// What became of reporting a primary unresponsive.
#[derive(Clone, Debug)]
pub enum ReportOutcome {
    /// The slice failed over (or had already): the cached map has its new primary.
    FailedOver,
    /// The primary's lease may still hold: report again after this long.
    Wait(Duration),
    /// The report named an out-of-date generation or primary: someone already moved the slice
    /// on. Refresh the map.
    Refresh,
    /// The managers cannot act now (no leader, no current copy to promote): back off and retry.
    Backoff(String),
    /// Retrying cannot help.
    Fail(ClientError),
}

/// The outcome of a report that the managers refused or did not answer.
pub fn report_refused(error: &ManagerError) -> ReportOutcome {
    match error {
        ManagerError::Unreachable { .. } => ReportOutcome::Backoff(error.to_string()),
        ManagerError::Api { error: api, .. } => match api.code {
            ApiCode::LeaseNotExpired => ReportOutcome::Wait(
                api.retry_after_ms
                    .map_or(DEFAULT_LEASE_WAIT, Duration::from_millis)
                    .clamp(MIN_LEASE_WAIT, MAX_LEASE_WAIT),
            ),
            // StaleGeneration: a newer generation exists. Conflict: the node named is no longer
            // the primary. NotFound: the unit is gone; the refresh tells whether the volume is.
            ApiCode::StaleGeneration | ApiCode::Conflict | ApiCode::NotFound => {
                ReportOutcome::Refresh
            }
            ApiCode::Unavailable | ApiCode::InsufficientNodes => {
                ReportOutcome::Backoff(api.error.clone())
            }
            ApiCode::BadRequest
            | ApiCode::AlreadyExists
            | ApiCode::Internal
            | ApiCode::Unauthorized => ReportOutcome::Fail(ClientError::Managers(error.clone())),
        },
    }
}

/// Whether a failure to refresh the map is worth retrying (the managers may elect a leader).
pub fn refresh_retryable(error: &ClientError) -> bool {
    match error {
        ClientError::Managers(e) => matches!(e.code(), None | Some(ApiCode::Unavailable)),
        _ => false,
    }
}

/// Waits between tries: 50 ms, doubling to 1 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff {
            next: FIRST_BACKOFF,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        delay
    }

    /// Progress was made (a new primary): the next failure starts from the shortest wait again.
    pub fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiError;
    use crate::proto::WireError;

    fn remote(code: ErrorCode) -> DataError {
        DataError::Remote {
            addr: "n1:7100".into(),
            error: WireError::new(code, "test"),
        }
    }

    #[test]
    fn every_wire_error_code_has_an_action() {
        use ErrorCode::*;
        let cases = [
            (StaleGeneration, Action::Refresh),
            (NotPrimary, Action::Refresh),
            (NotCurrent, Action::Refresh),
            (UnknownUnit, Action::Refresh),
            (Unavailable, Action::Backoff),
            (OutOfRange, Action::Fail),
            (TooLarge, Action::Fail),
            (BadRequest, Action::Fail),
            (Conflict, Action::Fail),
            (Internal, Action::Fail),
            (Hole, Action::Fail),
            (Unauthorized, Action::Fail),
        ];
        for (code, action) in cases {
            assert_eq!(classify(&remote(code)), action, "{code:?}");
        }
    }

    #[test]
    fn a_silent_primary_is_reported_and_a_closed_connection_retried() {
        let addr = "n1:7100".to_string();
        let timeout = DataError::Timeout {
            addr: addr.clone(),
            timeout: Duration::from_secs(5),
        };
        let connect = DataError::Connect {
            addr: addr.clone(),
            reason: "refused".into(),
        };
        let closed = DataError::Closed {
            addr,
            reason: "closed by the node".into(),
        };
        assert_eq!(classify(&timeout), Action::Report);
        assert_eq!(classify(&connect), Action::Report);
        assert_eq!(classify(&closed), Action::Backoff);
        let refused = DataError::Unauthorized {
            addr: "n1:7100".into(),
            reason: "the node requires authentication".into(),
        };
        assert_eq!(classify(&refused), Action::Fail);
    }

    fn api(code: ApiCode, retry_after_ms: Option<u64>) -> ManagerError {
        ManagerError::Api {
            status: 409,
            error: ApiError {
                error: "test".into(),
                code,
                retry_after_ms,
            },
        }
    }

    #[test]
    fn report_refusals_are_classified() {
        assert!(matches!(
            report_refused(&api(ApiCode::LeaseNotExpired, Some(1200))),
            ReportOutcome::Wait(d) if d == Duration::from_millis(1200)
        ));
        assert!(matches!(
            report_refused(&api(ApiCode::LeaseNotExpired, None)),
            ReportOutcome::Wait(d) if d == DEFAULT_LEASE_WAIT
        ));
        assert!(matches!(
            report_refused(&api(ApiCode::LeaseNotExpired, Some(3_600_000))),
            ReportOutcome::Wait(d) if d == MAX_LEASE_WAIT
        ));
        for code in [
            ApiCode::StaleGeneration,
            ApiCode::Conflict,
            ApiCode::NotFound,
        ] {
            assert!(matches!(
                report_refused(&api(code, None)),
                ReportOutcome::Refresh
            ));
        }
        assert!(matches!(
            report_refused(&api(ApiCode::Unavailable, None)),
            ReportOutcome::Backoff(_)
        ));
        let unreachable = ManagerError::Unreachable {
            tried: "m1:7001".into(),
            last: "refused".into(),
        };
        assert!(matches!(
            report_refused(&unreachable),
            ReportOutcome::Backoff(_)
        ));
        assert!(matches!(
            report_refused(&api(ApiCode::BadRequest, None)),
            ReportOutcome::Fail(ClientError::Managers(_))
        ));
    }

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        let mut backoff = Backoff::new();
        let delays: Vec<u64> = (0..7)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![50, 100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), FIRST_BACKOFF);
    }

    #[test]
    fn only_unavailable_managers_make_a_refresh_worth_retrying() {
        let unreachable = ClientError::Managers(ManagerError::Unreachable {
            tried: "m1:7001".into(),
            last: "refused".into(),
        });
        assert!(refresh_retryable(&unreachable));
        let deleted = ClientError::VolumeDeleted {
            name: "v".into(),
            id: 7,
        };
        assert!(!refresh_retryable(&deleted));
    }
}

//! Authentication of HTTP requests: with a cluster token, every route but the health check and
//! the dashboard's static files answers only requests that carry it as
//! `Authorization: Bearer TOKEN` — the public API, `/metrics`, and the Raft RPCs between
//! managers alike. Others get 401 and are counted in `vbs_auth_rejected_total`.
//!
//! The dashboard page (`/`, `/ui/*`) holds no cluster data, so it is served to anyone; the page
//! reads the token from its URL fragment (`#token=...`, which browsers never send) and sends it
//! with its own `GET /v1/status` calls.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing::debug;
use vbs_wire::security::http::{authorize, unauthorized};
use vbs_wire::security::Surface;

use crate::manager::SharedManager;

/// Lets a request through when it carries the token (or the cluster has none).
pub async fn require_token(
    State(manager): State<SharedManager>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if is_public(path) {
        return next.run(request).await;
    }
    match authorize(manager.config.security.token.as_deref(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let surface = surface(path);
            manager.rejections.count(surface);
            debug!(path, surface = surface.as_str(), %refusal, "refused a request");
            unauthorized(refusal)
        }
    }
}

/// Routes anyone may call: the health check, and the dashboard's page and files.
fn is_public(path: &str) -> bool {
    path == "/health" || path == "/" || path.starts_with("/ui/")
}

fn surface(path: &str) -> Surface {
    if path.starts_with("/raft/") {
        Surface::Raft
    } else {
        Surface::Api
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_and_the_dashboard_files_are_public() {
        for path in ["/health", "/", "/ui/dashboard.js"] {
            assert!(is_public(path), "{path}");
        }
        for path in [
            "/v1/status",
            "/v1/volumes",
            "/metrics",
            "/raft/append",
            "/raft/probe",
            "/healthz",
            "/ui",
            "//",
        ] {
            assert!(!is_public(path), "{path}");
        }
        assert_eq!(surface("/raft/vote"), Surface::Raft);
        assert_eq!(surface("/v1/notifications"), Surface::Api);
    }
}

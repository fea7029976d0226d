//! The dashboard: `GET /` and its assets under `/ui/`. Plain HTML, CSS and JavaScript compiled
//! into the binary (no build step, nothing fetched from elsewhere), so any manager serves it and
//! it works where the cluster has no internet access. The page polls `GET /v1/status`,
//! `GET /v1/volumes`, `GET /v1/io` and `GET /v1/events` itself; the server side is only these
//! files.

use axum::extract::Path;
use axum::http::{header, HeaderName};
use axum::response::{IntoResponse, Response};

use super::error::ApiFailure;

/// One file of the dashboard.
#[derive(Debug)]
pub struct Asset {
    /// The name under `/ui/`.
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The page itself, served at `/`.
pub const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../../assets/dashboard/index.html"),
};

/// Everything the page loads, served under `/ui/`.
pub const ASSETS: [Asset; 3] = [
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../assets/dashboard/dashboard.css"),
    },
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../assets/dashboard/dashboard.js"),
    },
    Asset {
        name: "activity.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../assets/dashboard/activity.js"),
    },
];

/// The page may load its own assets and talk to its own manager, nothing else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn index() -> Response {
    serve(&INDEX)
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => serve(asset),
        None => ApiFailure::not_found(format!("no dashboard file {name}")).into_response(),
    }
}

fn serve(asset: &Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            // Revalidate every time: after an upgrade the page and its script must match.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                HeaderName::from_static("content-security-policy"),
                CONTENT_SECURITY_POLICY,
            ),
        ],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of `attribute="..."` in `html`.
    fn attribute_values<'a>(html: &'a str, attribute: &str) -> Vec<&'a str> {
        let pattern = format!("{attribute}=\"");
        html.match_indices(&pattern)
            .filter_map(|(at, _)| {
                let rest = &html[at + pattern.len()..];
                rest.find('"').map(|end| &rest[..end])
            })
            .collect()
    }

    #[test]
    fn the_page_loads_every_asset_and_only_its_own() {
        let mut loaded: Vec<&str> = attribute_values(INDEX.body, "src");
        loaded.extend(
            attribute_values(INDEX.body, "href")
                .into_iter()
                .filter(|h| !h.starts_with("data:")),
        );
        loaded.sort_unstable();
        let mut served: Vec<String> = ASSETS.iter().map(|a| format!("ui/{}", a.name)).collect();
        served.sort_unstable();
        assert_eq!(
            loaded, served,
            "relative URLs, so the page works behind a prefix"
        );
        for asset in ASSETS.iter().chain([&INDEX]) {
            assert!(
                !asset.body.contains("http://") && !asset.body.contains("https://"),
                "{} must not load anything from elsewhere",
                asset.name
            );
        }
    }
}

//! The dashboard: a page, its script modules, its styles and a vendored charting library
//! (uPlot, MIT, licence beside it in `vendor/uplot/`), all compiled into the binary and served by
//! the cloud itself. No build step and no CDN: it must work in a plant's offline network.
//!
//! The page reads the JSON API and listens to `/v1/events` for live updates. Its scripts put
//! every piece of data into the DOM as text nodes or attribute values, never as markup; the
//! content security policy below allows scripts and styles from this origin only.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("index.html");

/// What `/ui/{file}` serves: name, content type, content. A fixed table, so a request can only
/// ever name one of these.
const ASSETS: &[(&str, &str, &str)] = &[
    ("style.css", "text/css; charset=utf-8", include_str!("style.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("api.js")),
    ("relays.js", "text/javascript; charset=utf-8", include_str!("relays.js")),
    ("admin.js", "text/javascript; charset=utf-8", include_str!("admin.js")),
    ("audit.js", "text/javascript; charset=utf-8", include_str!("audit.js")),
    ("managed.js", "text/javascript; charset=utf-8", include_str!("managed.js")),
    ("silences.js", "text/javascript; charset=utf-8", include_str!("silences.js")),
    ("people.js", "text/javascript; charset=utf-8", include_str!("people.js")),
    ("dom.js", "text/javascript; charset=utf-8", include_str!("dom.js")),
    ("format.js", "text/javascript; charset=utf-8", include_str!("format.js")),
    ("chart.js", "text/javascript; charset=utf-8", include_str!("chart.js")),
    ("uPlot.iife.min.js", "text/javascript; charset=utf-8", include_str!("vendor/uplot/uPlot.iife.min.js")),
    ("uPlot.min.css", "text/css; charset=utf-8", include_str!("vendor/uplot/uPlot.min.css")),
];

/// Scripts and styles from this origin only: no inline script, so injected markup could not run
/// even if some text ever reached the page as HTML. Images from `data:` are the state favicon.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn headers(content_type: &'static str) -> [(header::HeaderName, &'static str); 4] {
    [
        (header::CONTENT_TYPE, content_type),
        // The page and its scripts change together with the binary; a cached old script beside a
        // new page would break it.
        (header::CACHE_CONTROL, "no-store"),
        (header::HeaderName::from_static("content-security-policy"), CSP),
        (header::HeaderName::from_static("x-content-type-options"), "nosniff"),
    ]
}

pub async fn index() -> impl IntoResponse {
    (headers("text/html; charset=utf-8"), INDEX)
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, ct, body)) => (headers(ct), *body).into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every script the page loads is one the binary serves.
    #[test]
    fn the_page_names_only_served_assets() {
        for src in INDEX.split("/ui/").skip(1) {
            let name = src.split('"').next().unwrap();
            assert!(ASSETS.iter().any(|(n, _, _)| *n == name), "index.html loads /ui/{name}, not served");
        }
        for (name, _, body) in ASSETS {
            for imp in body.split("from \"./").skip(1) {
                let dep = imp.split('"').next().unwrap();
                assert!(ASSETS.iter().any(|(n, _, _)| *n == dep), "{name} imports ./{dep}, not served");
            }
        }
    }
}

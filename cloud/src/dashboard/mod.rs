//! The dashboard: one self-contained page (no build step, no CDN: it must work in a plant's
//! offline network) that reads the JSON API and listens to `/v1/events` for live updates.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("index.html");

pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("content-security-policy"),
             "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:"),
        ],
        INDEX,
    )
}

//! The dashboard's files, embedded in the binary at build time (no CDN, no
//! file to install): one page shell for every page path (the script draws the
//! page the path names), the script, the style sheet and an icon; and the
//! headers every response carries (a strict content security policy: scripts
//! and styles from here only, no framing, no inline script).

use std::sync::Arc;

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::Dashboard;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// The paths of the pages (each served the shell).
const PAGES: [&str; 7] = ["/login", "/jobs", "/jobs/{id}", "/experiments", "/experiments/{id}", "/compare", "/workers"];

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                      base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn routes() -> Router<Arc<Dashboard>> {
    let mut router = Router::new()
        .route("/", get(|| async { Redirect::to("/jobs") }))
        .route("/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/assets/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/assets/icon.svg", get(|| async { asset("image/svg+xml", ICON_SVG) }));
    for page in PAGES {
        router = router.route(page, get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }));
    }
    router
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(CONTENT_TYPE, content_type)], body).into_response()
}

/// The headers of every response.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Pages and answers are live data, and the answers are a user's own.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

//! The web dashboard's static files (`web-ui/public/`), embedded in the binary at build time:
//! `GET /` is the page, `GET /assets/...` its scripts, styles and the charting library.
//!
//! The files carry no secrets and are served without the token; everything the dashboard
//! shows or changes goes through `/api/v1` with the token the user signs in with. Responses
//! carry a strict Content-Security-Policy (only this origin's scripts, styles and API; no
//! inline script, no framing), `nosniff`, no referrer, and an `ETag` (the file's sha256) so a
//! browser revalidates cheaply and never runs stale code after an upgrade.

use axum::Router;
use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::Embed;

use super::error::ApiError;

/// The dashboard's files.
#[derive(Embed)]
#[folder = "../web-ui/public/"]
struct Assets;

/// What the dashboard may load and talk to: this origin only.
const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The routes of the dashboard (no state, no token).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/assets/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    if path == "index.html" {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "the dashboard is at /").into_response();
    }
    serve(&path, &headers)
}

/// The media type of a dashboard file, by extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("the dashboard has no file {path}"))
            .into_response();
    };
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let mut response = if request.get(IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(CONTENT_TYPE, content_type(path))], file.data.into_owned()).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, etag);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_every_file_it_loads_are_embedded() {
        let index = Assets::get("index.html").expect("index.html is embedded");
        let html = String::from_utf8_lossy(&index.data);
        let mut referenced = 0;
        for part in html.split("/assets/").skip(1) {
            let path = &part[..part.find(['"', '\'']).expect("a quoted asset path")];
            assert!(Assets::get(path).is_some(), "index.html loads /assets/{path}, which is not embedded");
            assert_ne!(content_type(path), "application/octet-stream", "{path} has an unknown media type");
            referenced += 1;
        }
        assert!(referenced >= 3, "index.html loads its script, style and icon from /assets/");
    }
}

//! The web console: a single page (Preact + htm, uPlot charts, a dash.js preview player)
//! served at `/` with its files under `/console/`, all embedded in the binary (rust-embed),
//! so the appliance host needs no Node, build step or network. The page talks only to the
//! admin API (`/api/v1`), which enforces every access rule; these routes serve static
//! files to anyone, with a Content-Security-Policy that allows nothing but this origin.
//! `web/vendor/VENDOR.md` names each vendored library, its version and licence.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "src/console/web/"]
struct Files;

/// Scripts, styles, XHR and media from this origin only; MSE needs `blob:` media.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   media-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn router() -> Router {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route("/console/{*file}", get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }))
}

fn serve(file: &str, request: &HeaderMap) -> Response {
    let Some(content) = Files::get(file) else {
        return (StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, "no-store")], "no such console file\n").into_response();
    };
    // Revalidated on every load: an upgraded appliance never serves a stale console.
    let etag = format!("\"{}\"", hex::encode(&content.metadata.sha256_hash()[..16]));
    let mut response = if request.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mime = content.metadata.mimetype().to_owned();
        ([(header::CONTENT_TYPE, mime)], content.data).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn vendored_files_are_the_recorded_ones() {
        let sums = Files::get("vendor/SHA256SUMS").expect("vendor/SHA256SUMS");
        let sums = std::str::from_utf8(&sums.data).unwrap();
        let mut checked = 0;
        for line in sums.lines() {
            let (digest, name) = line.split_once("  ").unwrap();
            let file = Files::get(&format!("vendor/{name}")).unwrap_or_else(|| panic!("vendor/{name} is not embedded"));
            assert_eq!(hex::encode(Sha256::digest(&file.data)), digest, "vendor/{name} differs from SHA256SUMS");
            checked += 1;
        }
        assert_eq!(checked, 4);
    }

    #[test]
    fn every_file_the_page_loads_is_embedded() {
        let index = Files::get("index.html").unwrap();
        let index = std::str::from_utf8(&index.data).unwrap();
        for reference in index.split(['"', '\'']).filter_map(|s| s.strip_prefix("/console/")) {
            assert!(Files::get(reference).is_some(), "index.html loads /console/{reference}, which is not embedded");
        }
    }
}

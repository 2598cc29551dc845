//! The web chat page: `/` and the files it loads, embedded in the binary so the gateway
//! serves a working page with nothing else installed (no CDN, no build step, works
//! offline). The page itself lives in `services/gateway/assets/`.
//!
//! Asset URLs carry no content hash, so every response says `no-cache`: browsers keep
//! their copy but revalidate it with the strong `ETag` (a 304 costs one round trip), and
//! a new gateway version is picked up on the next load instead of mixing old and new
//! scripts.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// One embedded file and the URL it is served at.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
// Module scripts are refused unless served with a JavaScript MIME type.
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

const ASSETS: &[Asset] = &[
    asset("/", HTML, include_bytes!("../assets/index.html")),
    asset("/assets/app.css", CSS, include_bytes!("../assets/app.css")),
    asset("/assets/app.js", JS, include_bytes!("../assets/app.js")),
    asset("/assets/api.js", JS, include_bytes!("../assets/api.js")),
    asset(
        "/assets/toolcalls.js",
        JS,
        include_bytes!("../assets/toolcalls.js"),
    ),
    asset(
        "/assets/favicon.svg",
        SVG,
        include_bytes!("../assets/favicon.svg"),
    ),
];

const fn asset(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
    Asset {
        path,
        content_type,
        body,
    }
}

/// Everything the page loads comes from this origin; the API is same-origin too. No
/// inline script or style is allowed, so injected markup cannot run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The routes of the page: `GET /` and `GET /assets/…` (HEAD too).
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        let etag = etag(asset.body);
        router.route(
            asset.path,
            get(move |headers: HeaderMap| {
                let etag = etag.clone();
                async move { serve(asset, &etag, &headers) }
            }),
        )
    })
}

/// A strong validator: the first 128 bits of the body's SHA-256, quoted as RFC 9110 wants.
fn etag(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex digits are a valid header value")
}

/// Whether the client's `If-None-Match` names this version (RFC 9110 §13.1.2: weak
/// comparison, `*` matches anything).
fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(etag) = etag.to_str().ok() else {
        return false;
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|list| {
            list.split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
        })
}

fn serve(asset: &Asset, etag: &HeaderValue, request: &HeaderMap) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::ETAG, etag.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type == HTML {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    if not_modified(request, etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    (headers, asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{HeaderName, Request};
    use tower::ServiceExt;

    async fn get(path: &str, headers: &[(HeaderName, &str)]) -> Response {
        let mut request = Request::get(path);
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        router::<()>()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn body_text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// The values of `attr="/assets/…"` and `from "./….js"` references in a text.
    fn references(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for (marker, prefix) in [
            ("src=\"/", "/"),
            ("href=\"/", "/"),
            ("from \"./", "/assets/"),
        ] {
            for piece in text.split(marker).skip(1) {
                let end = piece.find('"').unwrap();
                found.push(format!("{prefix}{}", &piece[..end]));
            }
        }
        found
    }

    #[tokio::test]
    async fn the_page_is_served_at_the_root_with_a_strict_policy() {
        let response = get("/", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(headers[header::CONTENT_TYPE], HTML);
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(policy.contains("connect-src 'self'"), "{policy}");
        let html = body_text(response).await;
        assert!(
            html.contains("<script type=\"module\" src=\"/assets/app.js\">"),
            "{html}"
        );
    }

    #[tokio::test]
    async fn every_file_the_page_references_is_served_with_its_type() {
        let mut pending = vec!["/".to_owned()];
        let mut seen = Vec::new();
        while let Some(path) = pending.pop() {
            if seen.contains(&path) {
                continue;
            }
            let response = get(&path, &[]).await;
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "{path} is referenced but not served"
            );
            let content_type = response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_owned();
            let expected = match path.rsplit('.').next() {
                Some("js") => JS,
                Some("css") => CSS,
                Some("svg") => SVG,
                _ => HTML,
            };
            assert_eq!(content_type, expected, "{path}");
            assert_eq!(
                response.headers()[header::X_CONTENT_TYPE_OPTIONS],
                "nosniff"
            );
            let text = body_text(response).await;
            // The SVG's XML namespace is a name, not a download.
            let offline =
                path.ends_with(".svg") || !(text.contains("http://") || text.contains("https://"));
            assert!(
                offline,
                "{path} loads something from another origin; the page must work offline"
            );
            pending.extend(references(&text));
            seen.push(path);
        }
        assert_eq!(
            seen.len(),
            ASSETS.len(),
            "served but never referenced: {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_known_version_is_answered_with_not_modified() {
        let first = get("/assets/app.js", &[]).await;
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

        let again = get("/assets/app.js", &[(header::IF_NONE_MATCH, &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag.as_str());
        assert!(body_text(again).await.is_empty());

        let listed = format!("\"stale\", W/{etag}");
        let weak = get("/assets/app.js", &[(header::IF_NONE_MATCH, &listed)]).await;
        assert_eq!(weak.status(), StatusCode::NOT_MODIFIED);

        let stale = get("/assets/app.js", &[(header::IF_NONE_MATCH, "\"stale\"")]).await;
        assert_eq!(stale.status(), StatusCode::OK);
        assert!(body_text(stale).await.contains("sendMessage"));
    }

    #[tokio::test]
    async fn files_outside_the_page_are_not_served() {
        for path in [
            "/assets/",
            "/assets/../Cargo.toml",
            "/assets/web.rs",
            "/index.html",
        ] {
            assert_eq!(
                get(path, &[]).await.status(),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
    }
}

//! How a protected HTTP resource tells clients where tokens come from: the OAuth
//! protected-resource metadata document (RFC 9728) and the `WWW-Authenticate` challenge
//! of a 401 that points at it (RFC 6750, RFC 9728 section 5.1). OAuth-capable clients
//! (MCP clients among them) follow the challenge to the document and the document to
//! the authorization server.
//!
//! The document is always served. It names `authorization_servers` only when an
//! issuer is configured (`AUTH_ISSUER`); without one, tokens come from elsewhere
//! (`gateway token`, dev login), and the document says only what the resource is and
//! how it takes a token.

use http::{HeaderMap, HeaderValue, header};
use url::Url;

use super::AuthError;

/// Where the metadata document of a resource at a host's root is served.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The URL of the metadata document of `resource`: the well-known path inserted
/// between the host and the resource's path (RFC 9728 section 3.1), so the resource
/// `https://h/mcp` has its document at `https://h/.well-known/oauth-protected-resource/mcp`.
pub fn metadata_url(resource: &Url) -> Url {
    let mut url = resource.clone();
    let path = resource.path().trim_end_matches('/');
    url.set_path(&format!("{METADATA_PATH}{path}"));
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// The metadata document of `resource`, whose tokens come from `issuer` when set.
pub fn metadata_document(resource: &Url, issuer: Option<&str>) -> serde_json::Value {
    let mut document = serde_json::json!({
        "resource": resource.as_str(),
        "bearer_methods_supported": ["header"],
        "resource_name": "taskchat",
    });
    if let Some(issuer) = issuer {
        document["authorization_servers"] = serde_json::json!([issuer]);
    }
    document
}

/// The origin (`scheme://host[:port]`) a request was sent to, from its `Host` header
/// and, behind a TLS-terminating proxy, `X-Forwarded-Proto`. None when the `Host` header
/// is missing or is not a host name. Set the service's public URL instead where a
/// proxy rewrites `Host`.
pub fn request_origin(headers: &HeaderMap) -> Option<Url> {
    let host = headers.get(header::HOST)?.to_str().ok()?.trim();
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .map(str::trim)
        .filter(|scheme| matches!(*scheme, "http" | "https"))
        .unwrap_or("http");
    if host.is_empty() || host.contains(['/', '?', '#', '@', '\\']) {
        return None;
    }
    let url = Url::parse(&format!("{scheme}://{host}/")).ok()?;
    url.host().is_some().then_some(url)
}

/// The `WWW-Authenticate` value of a 401: the Bearer scheme, `error="invalid_token"` when
/// a token was given but refused, and the metadata document's URL when known.
pub fn challenge(realm: &str, error: AuthError, metadata: Option<&Url>) -> HeaderValue {
    let mut value = format!("Bearer realm=\"{realm}\"");
    if matches!(error, AuthError::Invalid | AuthError::Expired) {
        value.push_str(", error=\"invalid_token\"");
    }
    if let Some(metadata) = metadata {
        // A parsed URL has no `"` or control characters (they are percent-encoded).
        value.push_str(&format!(", resource_metadata=\"{metadata}\""));
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_document_url_inserts_the_well_known_path_before_the_resource_path() {
        let url = |raw: &str| metadata_url(&Url::parse(raw).unwrap()).to_string();
        assert_eq!(
            url("https://tasks.example/mcp"),
            "https://tasks.example/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            url("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            url("https://h/a/b/?q=1#f"),
            "https://h/.well-known/oauth-protected-resource/a/b"
        );
    }

    #[test]
    fn the_document_names_the_issuer_only_when_there_is_one() {
        let resource = Url::parse("https://tasks.example/mcp").unwrap();
        let with = metadata_document(&resource, Some("https://idp.example/"));
        assert_eq!(with["resource"], "https://tasks.example/mcp");
        assert_eq!(
            with["authorization_servers"],
            serde_json::json!(["https://idp.example/"])
        );
        assert_eq!(
            with["bearer_methods_supported"],
            serde_json::json!(["header"])
        );
        let without = metadata_document(&resource, None);
        assert!(without.get("authorization_servers").is_none());
        assert_eq!(without["resource"], "https://tasks.example/mcp");
    }

    #[test]
    fn the_origin_comes_from_host_and_forwarded_proto() {
        let origin = |pairs: &[(&str, &str)]| request_origin(&headers(pairs)).map(String::from);
        assert_eq!(
            origin(&[("host", "127.0.0.1:8001")]).as_deref(),
            Some("http://127.0.0.1:8001/")
        );
        assert_eq!(
            origin(&[
                ("host", "tasks.example"),
                ("x-forwarded-proto", "https, http")
            ])
            .as_deref(),
            Some("https://tasks.example/")
        );
        assert_eq!(
            origin(&[("host", "tasks.example"), ("x-forwarded-proto", "gopher")]).as_deref(),
            Some("http://tasks.example/")
        );
        for bad in ["", "a/b", "user@evil", "h?x", "h#x", "[::1"] {
            assert_eq!(origin(&[("host", bad)]), None, "{bad:?}");
        }
        assert_eq!(origin(&[]), None);
    }

    #[test]
    fn challenges_say_whether_a_token_was_refused_and_where_the_document_is() {
        let metadata = Url::parse("http://h/.well-known/oauth-protected-resource/mcp").unwrap();
        assert_eq!(
            challenge("task-service", AuthError::Missing, Some(&metadata)),
            "Bearer realm=\"task-service\", resource_metadata=\"http://h/.well-known/oauth-protected-resource/mcp\""
        );
        assert_eq!(
            challenge("taskchat", AuthError::Expired, None),
            "Bearer realm=\"taskchat\", error=\"invalid_token\""
        );
        assert_eq!(
            challenge("taskchat", AuthError::Invalid, Some(&metadata)),
            "Bearer realm=\"taskchat\", error=\"invalid_token\", resource_metadata=\"http://h/.well-known/oauth-protected-resource/mcp\""
        );
    }
}

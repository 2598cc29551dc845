//! Bearer tokens and the user they name: the user id a verified token carries is the
//! only one a request may act for (invariant 6). The gateway and task-service's MCP
//! endpoint verify tokens with one [`TokenVerifier`], which accepts:
//! - HS256 tokens signed with the shared `AUTH_JWT_SECRET` ([`JwtKeys`]; `sub` is the
//!   user id): local use, `gateway token`, dev login;
//! - tokens of an identity provider, verified with its JWKS ([`IdentityProvider`]).
//!
//! The token's `alg` picks the verifier, and each accepts only its own algorithms, so
//! a token cannot be verified by the other's key. [`resource`] holds the RFC 9728
//! metadata and the `WWW-Authenticate` challenge that tell clients where tokens come from.

mod jwks;
pub mod resource;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use proto_schemas::UserId;
use serde::{Deserialize, Serialize};

pub use jwks::{ASYMMETRIC_ALGORITHMS, IdentityProvider, JwksError, MAX_KEY_AGE, ProviderRules};

/// Clock skew tolerated when checking `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// The shortest `AUTH_JWT_SECRET` accepted outside dev mode: HS256 needs a key of at
/// least the hash's size (RFC 7518 section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// The claims of a taskchat token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issue time, seconds since the Unix epoch. Optional, as RFC 7519 has it: tokens
    /// from libraries and identity providers often leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not before, seconds since the Unix epoch: a token is refused until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
    #[error("expired bearer token")]
    Expired,
}

/// Signing and verifying keys derived from one shared secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeys")
            .field("algorithm", &Algorithm::HS256)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    pub fn new(secret: &[u8]) -> Self {
        // Only HS256 is accepted, so a token cannot pick a weaker algorithm (or `none`)
        // through its header.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `user` that expires after `ttl`.
    pub fn mint(&self, user: &UserId, ttl: Duration) -> String {
        let now = chrono::Utc::now().timestamp();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            sub: user.to_string(),
            exp: now.saturating_add(ttl),
            iat: Some(now),
            nbf: None,
        };
        self.sign(&claims)
    }

    /// Signs the given claims as they are (e.g. a token that expired long ago, for tests
    /// of expiry handling).
    pub fn sign(&self, claims: &Claims) -> String {
        // Encoding HMAC claims made of plain strings and integers cannot fail: the key
        // family always matches the header and serialization has no fallible field.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 encoding of plain claims is infallible")
    }

    /// The user a token was minted for, when its signature and expiry check out.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        UserId::parse(&data.claims.sub).map_err(|_| AuthError::Invalid)
    }
}

/// Verifies bearer tokens of every kind the deployment accepts (see the module docs).
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    local: Option<JwtKeys>,
    provider: Option<Arc<IdentityProvider>>,
}

impl TokenVerifier {
    /// A verifier of HS256 tokens (`local`) and identity-provider tokens (`provider`),
    /// each when given.
    pub fn new(local: Option<JwtKeys>, provider: Option<IdentityProvider>) -> Self {
        Self {
            local,
            provider: provider.map(Arc::new),
        }
    }

    /// The user a token names, when one of the configured verifiers accepts it.
    pub async fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        match (&self.local, &self.provider) {
            (Some(local), _) if header.alg == Algorithm::HS256 => local.verify(token),
            (_, Some(provider)) if ASYMMETRIC_ALGORITHMS.contains(&header.alg) => {
                provider.verify(token, &header).await
            }
            _ => Err(AuthError::Invalid),
        }
    }

    /// The keys that sign HS256 tokens, when `AUTH_JWT_SECRET` (or dev mode) gives one.
    pub fn signing_keys(&self) -> Option<&JwtKeys> {
        self.local.as_ref()
    }

    /// The identity provider, when tokens of one are accepted.
    pub fn provider(&self) -> Option<&IdentityProvider> {
        self.provider.as_deref()
    }

    /// The issuer of identity-provider tokens (`AUTH_ISSUER`), when set.
    pub fn issuer(&self) -> Option<&str> {
        self.provider()
            .and_then(|provider| provider.rules().issuer.as_deref())
    }
}

impl From<JwtKeys> for TokenVerifier {
    /// A verifier of HS256 tokens only.
    fn from(keys: JwtKeys) -> Self {
        Self::new(Some(keys), None)
    }
}

/// Parses an `Authorization` header value "Bearer <token>" (case-insensitive scheme).
pub fn bearer_token(header: Option<&http::HeaderValue>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::Invalid)?.trim();
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Invalid);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn ada() -> UserId {
        UserId::parse("ada").unwrap()
    }

    fn encode_raw(header: &Header, claims: &impl Serialize, secret: &[u8]) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn minted_token_verifies_to_its_user() {
        let keys = JwtKeys::new(b"secret");
        let token = keys.mint(&ada(), Duration::from_secs(3600));
        assert_eq!(keys.verify(&token), Ok(ada()));
    }

    #[test]
    fn token_signed_with_another_secret_is_invalid() {
        let token = JwtKeys::new(b"one").mint(&ada(), Duration::from_secs(3600));
        assert_eq!(JwtKeys::new(b"two").verify(&token), Err(AuthError::Invalid));
    }

    #[test]
    fn expired_token_is_expired() {
        let keys = JwtKeys::new(b"secret");
        let claims = Claims {
            sub: "ada".into(),
            exp: now() - 120,
            iat: Some(now() - 3600),
            nbf: None,
        };
        let token = encode_raw(&Header::new(Algorithm::HS256), &claims, b"secret");
        assert_eq!(keys.verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn recently_expired_token_is_within_leeway() {
        let keys = JwtKeys::new(b"secret");
        let claims = Claims {
            sub: "ada".into(),
            exp: now() - 5,
            iat: Some(now() - 3600),
            nbf: None,
        };
        let token = encode_raw(&Header::new(Algorithm::HS256), &claims, b"secret");
        assert_eq!(keys.verify(&token), Ok(ada()));
    }

    #[test]
    fn a_token_without_iat_verifies() {
        let claims = Claims {
            sub: "ada".into(),
            exp: now() + 3600,
            iat: None,
            nbf: None,
        };
        let token = encode_raw(&Header::new(Algorithm::HS256), &claims, b"secret");
        assert!(!token.is_empty());
        assert_eq!(JwtKeys::new(b"secret").verify(&token), Ok(ada()));
    }

    #[test]
    fn a_token_is_refused_before_its_nbf() {
        let keys = JwtKeys::new(b"secret");
        let at = |nbf: i64| {
            let claims = Claims {
                sub: "ada".into(),
                exp: now() + 3600,
                iat: Some(now()),
                nbf: Some(nbf),
            };
            encode_raw(&Header::new(Algorithm::HS256), &claims, b"secret")
        };
        assert_eq!(keys.verify(&at(now() + 600)), Err(AuthError::Invalid));
        assert_eq!(keys.verify(&at(now() - 600)), Ok(ada()));
    }

    #[test]
    fn token_without_exp_is_invalid() {
        #[derive(Serialize)]
        struct NoExp {
            sub: String,
        }
        let token = encode_raw(
            &Header::new(Algorithm::HS256),
            &NoExp { sub: "ada".into() },
            b"secret",
        );
        assert_eq!(
            JwtKeys::new(b"secret").verify(&token),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn other_hmac_algorithm_is_invalid() {
        let claims = Claims {
            sub: "ada".into(),
            exp: now() + 3600,
            iat: Some(now()),
            nbf: None,
        };
        let token = encode_raw(&Header::new(Algorithm::HS512), &claims, b"secret");
        assert_eq!(
            JwtKeys::new(b"secret").verify(&token),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn alg_none_and_garbage_are_invalid() {
        let keys = JwtKeys::new(b"secret");
        // base64url of {"alg":"none","typ":"JWT"} and of valid claims, no signature.
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let payload = format!(
            "{{\"sub\":\"ada\",\"exp\":{},\"iat\":{}}}",
            now() + 3600,
            now()
        );
        let payload = base64url(payload.as_bytes());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
            "not-a-jwt".to_owned(),
            "a.b.c".to_owned(),
            String::new(),
        ] {
            assert_eq!(
                keys.verify(&token),
                Err(AuthError::Invalid),
                "token {token:?}"
            );
        }
    }

    #[test]
    fn subject_that_is_not_a_user_id_is_invalid() {
        let claims = Claims {
            sub: "a/b".into(),
            exp: now() + 3600,
            iat: Some(now()),
            nbf: None,
        };
        let token = encode_raw(&Header::new(Algorithm::HS256), &claims, b"secret");
        assert_eq!(
            JwtKeys::new(b"secret").verify(&token),
            Err(AuthError::Invalid)
        );
    }

    /// An identity provider whose JWKS is never reachable: verifying any token with it
    /// would have to fetch.
    fn unreachable_provider() -> IdentityProvider {
        IdentityProvider::new(
            url::Url::parse("http://127.0.0.1:1/jwks.json").unwrap(),
            ProviderRules {
                issuer: None,
                audience: None,
                user_claim: "sub".into(),
            },
            Duration::from_secs(60),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn each_verifier_takes_only_its_own_algorithms() {
        let secret = b"a-secret-of-at-least-thirty-two-bytes";
        let hs256 = JwtKeys::new(secret).mint(&ada(), Duration::from_secs(600));

        let local = TokenVerifier::from(JwtKeys::new(secret));
        assert_eq!(local.verify(&hs256).await, Ok(ada()));
        // An asymmetric token goes nowhere without a provider.
        let ed_header = Header::new(Algorithm::EdDSA);
        let claims = serde_json::json!({"sub": "ada", "exp": now() + 600});
        let forged = format!(
            "{}.{}.c2ln",
            base64url(serde_json::to_string(&ed_header).unwrap().as_bytes()),
            base64url(claims.to_string().as_bytes())
        );
        assert_eq!(local.verify(&forged).await, Err(AuthError::Invalid));

        // With only a provider, an HS256 token is refused before any key is fetched:
        // a public key can never be used as an HMAC secret.
        let provider_only = TokenVerifier::new(None, Some(unreachable_provider()));
        assert_eq!(provider_only.verify(&hs256).await, Err(AuthError::Invalid));
        let hs384 = encode_raw(&Header::new(Algorithm::HS384), &claims, secret);
        let both = TokenVerifier::new(Some(JwtKeys::new(secret)), Some(unreachable_provider()));
        assert_eq!(both.verify(&hs384).await, Err(AuthError::Invalid));
        assert_eq!(both.verify(&hs256).await, Ok(ada()));
        assert_eq!(both.verify("not-a-jwt").await, Err(AuthError::Invalid));
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let keys = JwtKeys::new(b"super-secret-value");
        let debug = format!("{keys:?}");
        assert!(!debug.contains("super-secret-value"), "{debug}");
    }

    #[test]
    fn bearer_header_parsing() {
        let ok = HeaderValue::from_static("Bearer abc.def.ghi");
        assert_eq!(bearer_token(Some(&ok)), Ok("abc.def.ghi"));
        let lower = HeaderValue::from_static("bearer   tok ");
        assert_eq!(bearer_token(Some(&lower)), Ok("tok"));
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
        let empty = HeaderValue::from_static("Bearer ");
        assert_eq!(bearer_token(Some(&empty)), Err(AuthError::Missing));
        let basic = HeaderValue::from_static("Basic dXNlcjpwYXNz");
        assert_eq!(bearer_token(Some(&basic)), Err(AuthError::Invalid));
        let bare = HeaderValue::from_static("abc.def.ghi");
        assert_eq!(bearer_token(Some(&bare)), Err(AuthError::Invalid));
        let opaque = HeaderValue::from_bytes(b"Bearer \xff").unwrap();
        assert_eq!(bearer_token(Some(&opaque)), Err(AuthError::Invalid));
    }

    fn base64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

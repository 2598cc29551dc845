//! Tokens from an identity provider (Auth0, Keycloak, Cognito, Google, …): verified
//! with the public keys of its JWKS document, which is fetched over HTTP, cached, and
//! fetched again when a token names a key id the cache does not hold (key rotation) or
//! when the cache is old. Refreshes are rate-limited, so a stream of tokens with made-up
//! key ids costs the provider one request per interval, not one per token.
//!
//! Only asymmetric algorithms are accepted here, and each key only for the algorithm
//! its type (and its `alg`, when the document names one) allows: a token cannot make
//! a public key act as an HMAC secret, and `alg: none` does not parse at all.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use proto_schemas::UserId;
use serde_json::{Map, Value};

use super::{AuthError, LEEWAY_SECS};

/// The algorithms identity providers sign with that this verifier accepts.
pub const ASYMMETRIC_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Keys older than this are fetched again on the next token, so that a key the
/// provider withdrew stops being accepted.
pub const MAX_KEY_AGE: Duration = Duration::from_secs(15 * 60);
/// How long one fetch of the JWKS document may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read (real ones are a few KiB).
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// What identity-provider tokens must satisfy besides their signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRules {
    /// `iss` must equal this, when set.
    pub issuer: Option<String>,
    /// `aud` must contain this, when set.
    pub audience: Option<String>,
    /// The claim that holds the taskchat user id.
    pub user_claim: String,
}

/// Why the JWKS document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The provider could not be reached or did not answer in time; worth trying again.
    #[error("failed to fetch {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The provider answered with an error status (5xx is worth trying again, 4xx is not).
    #[error("{url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{url} sent more than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url} is not a JWKS document: {reason}")]
    NotJwks { url: String, reason: String },
}

impl JwksError {
    /// Whether a later attempt may succeed (the provider is down or slow), as opposed
    /// to a configuration mistake (wrong URL, not a JWKS document).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Status { status, .. } => status.is_server_error(),
            Self::TooLarge { .. } | Self::NotJwks { .. } => false,
        }
    }
}

/// One verifying key of the document and the algorithms it may verify.
#[derive(Clone)]
struct SigningKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The usable keys of one JWKS document, by key id.
#[derive(Clone, Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<SigningKey>>,
    /// Keys without a `kid`: used for tokens without one.
    unnamed: Vec<Arc<SigningKey>>,
}

impl KeySet {
    /// The signing keys of a JWKS document. Keys this verifier cannot use (encryption
    /// keys, symmetric keys, unknown types or curves) are skipped rather than failing
    /// the whole document: providers publish those next to their signing keys.
    pub(crate) fn parse(document: &[u8]) -> Result<Self, String> {
        let document: Value =
            serde_json::from_slice(document).map_err(|error| format!("not JSON: {error}"))?;
        let keys = document
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no \"keys\" array")?;
        let mut set = Self::default();
        for raw in keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
                tracing::debug!(key = %raw, "skipping a JWKS entry that is not a readable key");
                continue;
            };
            let Some(key) = signing_key(&jwk) else {
                tracing::debug!(kid = ?jwk.common.key_id, "skipping a JWKS key that cannot verify signatures");
                continue;
            };
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, Arc::new(key));
                }
                None => set.unnamed.push(Arc::new(key)),
            }
        }
        if set.is_empty() {
            return Err("no signing key it holds is usable (RSA, P-256, P-384 or Ed25519)".into());
        }
        Ok(set)
    }

    fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.unnamed.is_empty()
    }

    /// The key a token's header names: by `kid`, or the one key without an id that
    /// fits the algorithm when the token names none.
    fn find(&self, header: &Header) -> Option<Arc<SigningKey>> {
        let key = match &header.kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => {
                let mut fitting = self
                    .unnamed
                    .iter()
                    .filter(|key| key.algorithms.contains(&header.alg));
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => Some(Arc::clone(only)),
                    _ => None,
                }
            }
        }?;
        key.algorithms.contains(&header.alg).then_some(key)
    }
}

/// A verifying key and its algorithms, when `jwk` is an asymmetric signing key.
fn signing_key(jwk: &Jwk) -> Option<SigningKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    // The key type decides the algorithms; an `alg` in the document narrows them to one.
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &ASYMMETRIC_ALGORITHMS[..6],
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        // Symmetric keys in a public document would let anyone who reads it sign.
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        Some(named) => {
            let named = Algorithm::from_str(&named.to_string()).ok()?;
            if !by_type.contains(&named) {
                return None;
            }
            vec![named]
        }
        None => by_type.to_vec(),
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(SigningKey { key, algorithms })
}

/// Checks a token's signature with `key` and its claims against `rules`; returns the
/// user it names.
fn verify_with(
    token: &str,
    alg: Algorithm,
    key: &SigningKey,
    rules: &ProviderRules,
) -> Result<UserId, AuthError> {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(issuer) = &rules.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &rules.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // Without an audience setting, a token for any audience of the provider is
        // accepted (the start-up log warns about it).
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(
        |error| match error.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        },
    )?;
    let user = data
        .claims
        .get(&rules.user_claim)
        .and_then(Value::as_str)
        .ok_or(AuthError::Invalid)?;
    UserId::parse(user).map_err(|_| AuthError::Invalid)
}

/// Whether a refresh waits for one that is under way.
#[derive(Debug, Clone, Copy)]
enum Wait {
    Yes,
    No,
}

/// The cached keys and when they were fetched.
struct Cache {
    keys: KeySet,
    fetched_at: Option<Instant>,
}

/// Verifies identity-provider tokens with the keys of its JWKS document.
pub struct IdentityProvider {
    url: url::Url,
    rules: ProviderRules,
    http: reqwest::Client,
    min_refresh: Duration,
    cache: RwLock<Cache>,
    /// When the document was last requested; held while a fetch runs, so concurrent
    /// tokens with an unknown key id wait for one fetch instead of each starting one.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("jwks_url", &self.url.as_str())
            .field("rules", &self.rules)
            .field("min_refresh", &self.min_refresh)
            .finish_non_exhaustive()
    }
}

impl IdentityProvider {
    /// A provider whose keys are not fetched yet (see [`Self::load`]). `min_refresh` is
    /// the shortest time between two fetches of the document.
    pub fn new(
        url: url::Url,
        rules: ProviderRules,
        min_refresh: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent("taskchat")
            .build()?;
        Ok(Self {
            url,
            rules,
            http,
            min_refresh,
            cache: RwLock::new(Cache {
                keys: KeySet::default(),
                fetched_at: None,
            }),
            last_fetch: tokio::sync::Mutex::new(None),
        })
    }

    pub fn rules(&self) -> &ProviderRules {
        &self.rules
    }

    pub fn jwks_url(&self) -> &url::Url {
        &self.url
    }

    /// Fetches the document now (at start-up), retrying while the provider is
    /// unreachable; the error says what was wrong when it never worked.
    pub async fn load(&self) -> Result<(), JwksError> {
        use backon::Retryable as _;

        let keys = (|| self.fetch())
            .retry(crate::retry::quick())
            .when(JwksError::is_transient)
            .await?;
        *self.last_fetch.lock().await = Some(Instant::now());
        self.store(keys);
        Ok(())
    }

    /// The user a token names, when it is signed by one of the provider's keys and its
    /// claims check out. `header` is the token's decoded header.
    pub async fn verify(&self, token: &str, header: &Header) -> Result<UserId, AuthError> {
        if !ASYMMETRIC_ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::Invalid);
        }
        if self.is_stale() {
            // Old keys still verify while someone else fetches new ones: a slow
            // provider must not hold up every request.
            self.refresh(Wait::No).await;
        }
        let key = match self.cached(header) {
            Some(key) => key,
            None => {
                // A key id we do not know: the provider may have rotated its keys.
                self.refresh(Wait::Yes).await;
                self.cached(header).ok_or(AuthError::Invalid)?
            }
        };
        verify_with(token, header.alg, &key, &self.rules)
    }

    fn cached(&self, header: &Header) -> Option<Arc<SigningKey>> {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys
            .find(header)
    }

    fn is_stale(&self) -> bool {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fetched_at
            .is_none_or(|at| at.elapsed() >= MAX_KEY_AGE)
    }

    fn store(&self, keys: KeySet) {
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *cache = Cache {
            keys,
            fetched_at: Some(Instant::now()),
        };
    }

    /// Fetches the document again unless that was done less than `min_refresh` ago (or
    /// while this call waited for another fetch). A failed fetch keeps the old keys.
    /// With [`Wait::No`], returns at once when another fetch is under way.
    async fn refresh(&self, wait: Wait) {
        let asked = Instant::now();
        let mut last = match wait {
            Wait::Yes => self.last_fetch.lock().await,
            Wait::No => match self.last_fetch.try_lock() {
                Ok(last) => last,
                Err(_) => return,
            },
        };
        if let Some(at) = *last
            && (at >= asked || at.elapsed() < self.min_refresh)
        {
            tracing::debug!(url = %self.url, "jwks fetched recently, not fetching again yet");
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                self.store(keys);
                tracing::info!(url = %self.url, "jwks refreshed");
            }
            Err(error) => tracing::warn!(
                url = %self.url,
                error = %crate::error_chain(&error),
                "failed to refresh the jwks, keeping the keys held"
            ),
        }
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let url = self.url.to_string();
        let unreachable = |source| JwksError::Unreachable {
            url: url.clone(),
            source,
        };
        let mut response = self
            .http
            .get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            return Err(JwksError::Status { url, status });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(JwksError::TooLarge { url });
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::parse(&body).map_err(|reason| JwksError::NotJwks { url, reason })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, encode};
    use serde_json::json;

    use super::*;

    // RFC 8032 section 7.1, test 1: an Ed25519 key pair, so that no key is generated.
    const ED_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const ED_PUBLIC_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    // RFC 7517 appendix A.1: an RSA public key (never used to sign here).
    const RSA_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The Ed25519 key as PKCS#8 (the fixed 16-byte prefix of an Ed25519 key, then the seed).
    fn ed_key() -> EncodingKey {
        let mut der = hex("302e020100300506032b657004220420");
        der.extend(hex(ED_SEED));
        EncodingKey::from_ed_der(&der)
    }

    fn document(keys: Value) -> KeySet {
        KeySet::parse(json!({ "keys": keys }).to_string().as_bytes()).unwrap()
    }

    fn ed_jwk(kid: Option<&str>) -> Value {
        let mut jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": ED_PUBLIC_X, "use": "sig"});
        if let Some(kid) = kid {
            jwk["kid"] = kid.into();
        }
        jwk
    }

    fn rsa_jwk(kid: &str) -> Value {
        json!({"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": kid, "alg": "RS256"})
    }

    fn rules() -> ProviderRules {
        ProviderRules {
            issuer: Some("https://idp.example".into()),
            audience: Some("taskchat".into()),
            user_claim: "sub".into(),
        }
    }

    fn claims() -> Value {
        json!({"sub": "ada", "exp": now() + 600, "iss": "https://idp.example", "aud": "taskchat"})
    }

    fn sign(kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, &ed_key()).unwrap()
    }

    /// Looks the token's key up in `keys` and verifies it, as the provider does.
    fn check(keys: &KeySet, token: &str, rules: &ProviderRules) -> Result<UserId, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let key = keys.find(&header).ok_or(AuthError::Invalid)?;
        verify_with(token, header.alg, &key, rules)
    }

    fn ada() -> UserId {
        UserId::parse("ada").unwrap()
    }

    #[test]
    fn a_token_signed_by_a_key_of_the_document_names_its_user() {
        let keys = document(json!([rsa_jwk("r1"), ed_jwk(Some("e1"))]));
        assert_eq!(
            check(&keys, &sign(Some("e1"), &claims()), &rules()),
            Ok(ada())
        );
    }

    #[test]
    fn iat_is_optional_exp_is_required_and_nbf_is_honoured() {
        let keys = document(json!([ed_jwk(Some("e1"))]));
        let mut claims = claims();
        claims["iat"] = now().into();
        assert_eq!(
            check(&keys, &sign(Some("e1"), &claims), &rules()),
            Ok(ada())
        );

        let mut no_exp = claims.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            check(&keys, &sign(Some("e1"), &no_exp), &rules()),
            Err(AuthError::Invalid)
        );
        let mut expired = claims.clone();
        expired["exp"] = (now() - 600).into();
        assert_eq!(
            check(&keys, &sign(Some("e1"), &expired), &rules()),
            Err(AuthError::Expired)
        );
        let mut early = claims.clone();
        early["nbf"] = (now() + 600).into();
        assert_eq!(
            check(&keys, &sign(Some("e1"), &early), &rules()),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn issuer_and_audience_are_checked_when_set() {
        let keys = document(json!([ed_jwk(Some("e1"))]));
        for (claim, value) in [
            ("iss", json!("https://evil.example")),
            ("aud", json!("another-app")),
            ("aud", json!(["another-app", "a-third"])),
        ] {
            let mut claims = claims();
            claims[claim] = value.clone();
            assert_eq!(
                check(&keys, &sign(Some("e1"), &claims), &rules()),
                Err(AuthError::Invalid),
                "{claim} {value}"
            );
        }
        for missing in ["iss", "aud"] {
            let mut claims = claims();
            claims.as_object_mut().unwrap().remove(missing);
            assert_eq!(
                check(&keys, &sign(Some("e1"), &claims), &rules()),
                Err(AuthError::Invalid),
                "without {missing}"
            );
        }
        // An audience list that holds ours is fine.
        let mut listed = claims();
        listed["aud"] = json!(["another-app", "taskchat"]);
        assert_eq!(
            check(&keys, &sign(Some("e1"), &listed), &rules()),
            Ok(ada())
        );

        // Unset rules check nothing, whatever the token says.
        let open = ProviderRules {
            issuer: None,
            audience: None,
            user_claim: "sub".into(),
        };
        let mut other = claims();
        other["iss"] = "https://elsewhere.example".into();
        other["aud"] = "another-app".into();
        assert_eq!(check(&keys, &sign(Some("e1"), &other), &open), Ok(ada()));
    }

    #[test]
    fn the_user_comes_from_the_configured_claim_and_must_be_a_user_id() {
        let keys = document(json!([ed_jwk(Some("e1"))]));
        let email = ProviderRules {
            user_claim: "email".into(),
            ..rules()
        };
        let mut claims = claims();
        claims["email"] = "ada@example.com".into();
        assert_eq!(
            check(&keys, &sign(Some("e1"), &claims), &email),
            Ok(UserId::parse("ada@example.com").unwrap())
        );
        for bad in [json!("a/b"), json!(""), json!(42), json!(null)] {
            claims["email"] = bad.clone();
            assert_eq!(
                check(&keys, &sign(Some("e1"), &claims), &email),
                Err(AuthError::Invalid),
                "{bad}"
            );
        }
        claims.as_object_mut().unwrap().remove("email");
        assert_eq!(
            check(&keys, &sign(Some("e1"), &claims), &email),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn a_key_verifies_only_the_algorithms_of_its_type() {
        // The Ed25519 key's id points at an RSA key: the family does not match.
        let keys = document(json!([rsa_jwk("e1")]));
        assert_eq!(
            check(&keys, &sign(Some("e1"), &claims()), &rules()),
            Err(AuthError::Invalid)
        );
        // A key whose document names another algorithm is skipped.
        let mut named = ed_jwk(Some("e1"));
        named["alg"] = "ES256".into();
        let parsed = KeySet::parse(
            json!({ "keys": [named, rsa_jwk("r1")] })
                .to_string()
                .as_bytes(),
        );
        assert!(!parsed.unwrap().by_kid.contains_key("e1"));
    }

    #[test]
    fn unknown_and_missing_key_ids() {
        let keys = document(json!([ed_jwk(Some("e1"))]));
        assert_eq!(
            check(&keys, &sign(Some("e2"), &claims()), &rules()),
            Err(AuthError::Invalid)
        );
        // A token without a kid only fits a key without one.
        assert_eq!(
            check(&keys, &sign(None, &claims()), &rules()),
            Err(AuthError::Invalid)
        );
        let unnamed = document(json!([ed_jwk(None), rsa_jwk("r1")]));
        assert_eq!(check(&unnamed, &sign(None, &claims()), &rules()), Ok(ada()));
    }

    #[test]
    fn documents_keep_their_usable_keys_and_refuse_when_none_is() {
        let keys = document(json!([
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": "enc", "use": "enc", "alg": "RSA-OAEP"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
            {"kty": "weird", "kid": "w"},
            ed_jwk(Some("e1")),
        ]));
        assert_eq!(keys.by_kid.keys().collect::<Vec<_>>(), vec!["e1"]);

        for bad in [
            "not json",
            "{}",
            r#"{"keys": "no"}"#,
            r#"{"keys": []}"#,
            r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
        ] {
            assert!(KeySet::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn transient_errors_are_told_apart_from_mistakes() {
        let status = |code: u16| JwksError::Status {
            url: "u".into(),
            status: reqwest::StatusCode::from_u16(code).unwrap(),
        };
        assert!(status(503).is_transient());
        assert!(!status(404).is_transient());
        assert!(
            !JwksError::NotJwks {
                url: "u".into(),
                reason: "r".into()
            }
            .is_transient()
        );
    }
}

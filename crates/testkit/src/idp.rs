//! A stand-in identity provider: key pairs generated in the test (RSA, P-256, Ed25519),
//! their JWKS document served over real HTTP on 127.0.0.1, tokens signed with any of
//! them, keys published while it runs (rotation), and a count of the document's
//! fetches (to see refreshes and their rate limit).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rand_core::{OsRng, RngCore as _};

use crate::Running;

/// The kinds of key identity providers sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048, RS256.
    Rsa,
    /// P-256, ES256.
    P256,
    /// Ed25519, EdDSA.
    Ed25519,
}

/// A key pair of the provider.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    signing: EncodingKey,
    /// The public key as the JWKS publishes it.
    pub jwk: Jwk,
    /// The public key's bytes (RSA: PKCS#1 DER; P-256: SEC1; Ed25519: raw).
    pub public_key_bytes: Vec<u8>,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl TestKey {
    /// A fresh key pair named `kid`. RSA key generation takes a moment: make one per test.
    pub fn generate(kind: KeyKind, kid: &str) -> Self {
        let (alg, signing, public_key_bytes) = match kind {
            KeyKind::Rsa => {
                use rsa::pkcs1::{EncodeRsaPrivateKey as _, EncodeRsaPublicKey as _};
                let private = rsa::RsaPrivateKey::new(&mut OsRng, 2048).expect("rsa keygen");
                let der = private.to_pkcs1_der().expect("rsa key to der");
                let public = private
                    .to_public_key()
                    .to_pkcs1_der()
                    .expect("rsa public key to der");
                (
                    Algorithm::RS256,
                    EncodingKey::from_rsa_der(der.as_bytes()),
                    public.as_bytes().to_vec(),
                )
            }
            KeyKind::P256 => {
                use p256::pkcs8::EncodePrivateKey as _;
                let secret = p256::SecretKey::random(&mut OsRng);
                let der = secret.to_pkcs8_der().expect("p256 key to der");
                let public = secret.public_key().to_sec1_bytes().to_vec();
                (
                    Algorithm::ES256,
                    EncodingKey::from_ec_der(der.as_bytes()),
                    public,
                )
            }
            KeyKind::Ed25519 => {
                let mut seed = [0_u8; 32];
                OsRng.fill_bytes(&mut seed);
                let public = ed25519_dalek::SigningKey::from_bytes(&seed)
                    .verifying_key()
                    .to_bytes()
                    .to_vec();
                // PKCS#8 of an Ed25519 key: a fixed 16-byte prefix, then the seed.
                let mut der = vec![
                    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04,
                    0x22, 0x04, 0x20,
                ];
                der.extend_from_slice(&seed);
                (Algorithm::EdDSA, EncodingKey::from_ed_der(&der), public)
            }
        };
        let mut jwk = match kind {
            KeyKind::Ed25519 => {
                Jwk::from_decoding_key(&DecodingKey::from_ed_der(&public_key_bytes), Some(alg))
            }
            _ => Jwk::from_encoding_key(&signing, alg),
        }
        .expect("public key as a jwk");
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg,
            signing,
            jwk,
            public_key_bytes,
        }
    }

    /// `claims` signed with this key, the header naming its `kid`.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signing).expect("signing test claims")
    }

    /// An algorithm-confusion forgery: `claims` as an HS256 token whose HMAC secret is
    /// this key's public half (which anyone can read in the JWKS), naming its `kid`.
    pub fn forge_hs256_with_public_key(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        let secret = EncodingKey::from_secret(&self.public_key_bytes);
        jsonwebtoken::encode(&header, claims, &secret).expect("signing test claims")
    }
}

/// The running provider: serves `GET /jwks.json`.
#[derive(Debug)]
pub struct TestIdp {
    published: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<AtomicUsize>,
    jwks_url: String,
    _server: Running,
}

impl TestIdp {
    /// Serves an empty key set on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let published = Arc::new(Mutex::new(Vec::<Jwk>::new()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let router = {
            let published = Arc::clone(&published);
            let fetches = Arc::clone(&fetches);
            Router::new().route(
                "/jwks.json",
                get(move || {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let keys = published.lock().expect("key list").clone();
                    async move { axum::Json(JwkSet { keys }) }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let jwks_url = format!("http://{}/jwks.json", listener.local_addr()?);
        let server = Running::spawn(|token| async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
        });
        Ok(Self {
            published,
            fetches,
            jwks_url,
            _server: server,
        })
    }

    /// The URL of the JWKS document (`AUTH_JWKS_URL`).
    pub fn jwks_url(&self) -> &str {
        &self.jwks_url
    }

    /// Adds `key`'s public half to the document.
    pub fn publish(&self, key: &TestKey) {
        self.published
            .lock()
            .expect("key list")
            .push(key.jwk.clone());
    }

    /// How often the document has been fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

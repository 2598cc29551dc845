//! The identity-provider verifier against a real JWKS served over HTTP
//! (`testkit::TestIdp`): what start-up does with a good, a wrong and an unreachable
//! URL, how unknown key ids are refetched at most once per interval, and rotation.

use std::time::Duration;

use clap::Parser as _;
use platform::auth::{AuthError, IdentityProvider, ProviderRules, TokenVerifier};
use platform::config::{AuthConfig, AuthConfigError};
use serde_json::{Value, json};
use testkit::{KeyKind, TestIdp, TestKey};

#[derive(clap::Parser, Debug)]
struct Settings {
    #[command(flatten)]
    auth: AuthConfig,
}

fn settings(args: &[&str]) -> AuthConfig {
    Settings::try_parse_from(std::iter::once("svc").chain(args.iter().copied()))
        .unwrap()
        .auth
}

fn claims(user: &str) -> Value {
    json!({"sub": user, "exp": chrono::Utc::now().timestamp() + 600})
}

fn provider(idp: &TestIdp, min_refresh: Duration) -> IdentityProvider {
    let rules = ProviderRules {
        issuer: None,
        audience: None,
        user_claim: "sub".into(),
    };
    IdentityProvider::new(idp.jwks_url().parse().unwrap(), rules, min_refresh).unwrap()
}

#[tokio::test]
async fn start_up_loads_the_keys_and_refuses_a_url_that_serves_no_keys() {
    let idp = TestIdp::start().await.unwrap();
    let key = TestKey::generate(KeyKind::Ed25519, "k1");
    idp.publish(&key);

    let verifier = settings(&["--auth-jwks-url", idp.jwks_url()])
        .verifier()
        .await
        .expect("a good JWKS URL starts");
    assert_eq!(idp.fetches(), 1, "fetched once at start-up");
    let user = verifier.verify(&key.sign(&claims("ada"))).await.unwrap();
    assert_eq!(user.as_str(), "ada");
    assert_eq!(idp.fetches(), 1, "known keys need no fetch");

    // A wrong path answers 404: a configuration mistake, said at start-up.
    let wrong = idp.jwks_url().replace("jwks.json", "nope.json");
    let error = settings(&["--auth-jwks-url", &wrong])
        .verifier()
        .await
        .unwrap_err();
    assert!(matches!(error, AuthConfigError::Jwks(_)), "{error}");
    let text = platform::error_chain(&error);
    assert!(text.contains("nope.json") && text.contains("404"), "{text}");
}

#[tokio::test]
async fn an_unreachable_provider_is_not_fatal_and_its_tokens_wait_for_it() {
    let verifier = settings(&["--auth-jwks-url", "http://127.0.0.1:1/jwks.json"])
        .verifier()
        .await
        .expect("the provider may come up later");
    let key = TestKey::generate(KeyKind::Ed25519, "k1");
    assert_eq!(
        verifier.verify(&key.sign(&claims("ada"))).await,
        Err(AuthError::Invalid)
    );
}

#[tokio::test]
async fn unknown_key_ids_refetch_at_most_once_per_interval() {
    let idp = TestIdp::start().await.unwrap();
    let known = TestKey::generate(KeyKind::Ed25519, "k1");
    idp.publish(&known);
    let provider = provider(&idp, Duration::from_secs(3600));
    provider.load().await.unwrap();
    let verifier = TokenVerifier::new(None, Some(provider));

    // Within the interval since the last fetch: refused without asking the provider.
    let stranger = TestKey::generate(KeyKind::Ed25519, "k2");
    let tokens: Vec<String> = (0..20).map(|_| stranger.sign(&claims("ada"))).collect();
    let verifies = tokens.iter().map(|token| verifier.verify(token));
    for result in futures::future::join_all(verifies).await {
        assert_eq!(result, Err(AuthError::Invalid));
    }
    assert_eq!(idp.fetches(), 1);
    assert!(verifier.verify(&known.sign(&claims("ada"))).await.is_ok());
}

#[tokio::test]
async fn keys_published_after_start_are_picked_up_by_their_first_token() {
    let idp = TestIdp::start().await.unwrap();
    idp.publish(&TestKey::generate(KeyKind::P256, "old"));
    let provider = provider(&idp, Duration::ZERO);
    provider.load().await.unwrap();
    let verifier = TokenVerifier::new(None, Some(provider));

    let rotated = TestKey::generate(KeyKind::Ed25519, "new");
    let token = rotated.sign(&claims("ada"));
    assert_eq!(verifier.verify(&token).await, Err(AuthError::Invalid));
    idp.publish(&rotated);
    assert_eq!(verifier.verify(&token).await.unwrap().as_str(), "ada");
    assert_eq!(
        idp.fetches(),
        3,
        "start-up, then one fetch per unknown key id"
    );
}

//! `Idempotency-Key`: a client's retried POST maps to the request id of its first
//! attempt, so the turn runs once (invariant 2) and the retry gets the first answer.
//!
//! The mapping lives in a JetStream KV bucket keyed by a hash of (user, key); the
//! first POST wins with an only-if-absent `create`. The request id it stores is also
//! the JetStream message id, so a re-published request is dropped by the stream's
//! duplicate window as well.

use async_nats::jetstream::kv;
use axum::http::HeaderMap;
use proto_schemas::chat::TurnKind;
use proto_schemas::{ConversationId, RequestId, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use platform::error_chain;

pub(crate) const HEADER: &str = "idempotency-key";

/// The longest key accepted, in characters.
pub(crate) const MAX_KEY_CHARS: usize = 200;

/// How often a claim is retried when the key vanishes between a failed create and
/// the read (it expired at that very moment).
const CLAIM_ATTEMPTS: usize = 3;

/// A validated `Idempotency-Key` header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of a request, if it has one. Empty, over-long or non-ASCII keys → 422.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let invalid = |why: &str| {
            ApiError::invalid("invalid_idempotency_key", format!("Idempotency-Key {why}"))
        };
        let text = value
            .to_str()
            .map_err(|_| invalid("must be printable ASCII"))?
            .trim();
        if text.is_empty() {
            return Err(invalid("must not be empty"));
        }
        // `to_str` lets a tab through; /openapi.json promises printable ASCII only.
        if !text.chars().all(|c| (' '..='~').contains(&c)) {
            return Err(invalid("must be printable ASCII"));
        }
        if text.chars().count() > MAX_KEY_CHARS {
            return Err(invalid(&format!(
                "must be at most {MAX_KEY_CHARS} characters"
            )));
        }
        Ok(Some(Self(text.to_owned())))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The bucket key of (user, key): hex SHA-256, so any header text makes a valid KV
/// key and the user's key space is private to them.
pub(crate) fn bucket_key(user: &UserId, key: &IdempotencyKey) -> String {
    let mut hasher = Sha256::new();
    hasher.update(user.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(key.as_str().as_bytes());
    hex(&hasher.finalize())
}

/// What a request asked for, so that a key reused for a different request is caught.
pub(crate) fn fingerprint(
    message: &str,
    conversation: Option<ConversationId>,
    kind: TurnKind,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(message.as_bytes());
    hasher.update([0]);
    if let Some(conversation) = conversation {
        hasher.update(conversation.to_string().as_bytes());
    }
    // A message's fingerprint is what it was before turns had kinds, so claims made
    // by an older gateway still match.
    match kind {
        TurnKind::Message => {}
        TurnKind::Regenerate => hasher.update(b"\0regenerate"),
        TurnKind::Approval { .. } => hasher.update(b"\0approval"),
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The turn a key stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    pub request_id: RequestId,
    pub conversation_id: ConversationId,
    pub new_conversation: bool,
    pub fingerprint: String,
}

/// Whether this request made the claim or found an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// First use of the key: run the turn.
    New(Claim),
    /// A retry: answer with the turn the key already stands for.
    Existing(Claim),
}

impl Claimed {
    pub(crate) fn claim(&self) -> &Claim {
        match self {
            Self::New(claim) | Self::Existing(claim) => claim,
        }
    }
}

/// Claims `key` for `proposed`, or returns the earlier claim of the same request.
/// The same key with a different message or conversation → 422.
pub(crate) async fn claim(
    store: &kv::Store,
    key: &str,
    proposed: Claim,
) -> Result<Claimed, ApiError> {
    let value = serde_json::to_vec(&proposed).map_err(ApiError::internal)?;
    for _ in 0..CLAIM_ATTEMPTS {
        match store.create(key, value.clone().into()).await {
            Ok(_) => return Ok(Claimed::New(proposed)),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(error) => {
                return Err(ApiError::bus_unavailable(error_chain(&error)));
            }
        }
        let entry = store
            .get(key)
            .await
            .map_err(|error| ApiError::bus_unavailable(error_chain(&error)))?;
        let Some(stored) = entry else {
            continue;
        };
        let existing: Claim = serde_json::from_slice(&stored).map_err(|error| {
            ApiError::internal(format!("unreadable idempotency entry: {error}"))
        })?;
        if existing.fingerprint != proposed.fingerprint {
            return Err(ApiError::invalid(
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request; use a new key for a new message",
            ));
        }
        return Ok(Claimed::Existing(existing));
    }
    Err(ApiError::internal(
        "idempotency key kept vanishing while being claimed",
    ))
}

/// Forgets the claim on `key` (best effort: a claim left behind only makes a retry
/// look for the turn it stands for).
pub(crate) async fn release(store: &kv::Store, key: &str) {
    if let Err(error) = store.delete(key).await {
        tracing::warn!(error = %error_chain(&error), "could not release an Idempotency-Key");
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_bytes(value).unwrap());
        headers
    }

    #[test]
    fn keys_are_validated() {
        assert_eq!(
            IdempotencyKey::from_headers(&HeaderMap::new()).unwrap(),
            None
        );
        let key = IdempotencyKey::from_headers(&headers(b" abc-123 "))
            .unwrap()
            .unwrap();
        assert_eq!(key.as_str(), "abc-123");
        assert!(
            IdempotencyKey::from_headers(&headers(&[b'k'; 200]))
                .unwrap()
                .is_some()
        );
        for bad in [&b"   "[..], &[b'k'; 201][..], b"caf\xc3\xa9", b"a\tb"] {
            let error = IdempotencyKey::from_headers(&headers(bad)).unwrap_err();
            assert_eq!(error.code(), "invalid_idempotency_key");
        }
    }

    #[test]
    fn bucket_keys_separate_users_and_are_kv_safe() {
        let key = IdempotencyKey("retry.me/*>".into());
        let ada = bucket_key(&UserId::parse("ada").unwrap(), &key);
        let bob = bucket_key(&UserId::parse("bob").unwrap(), &key);
        assert_ne!(ada, bob);
        assert_eq!(ada, bucket_key(&UserId::parse("ada").unwrap(), &key));
        assert_eq!(ada.len(), 64);
        assert!(ada.chars().all(|c| c.is_ascii_hexdigit()));
        // "ad" + "a\0…" must not collide with "ada" + "\0…".
        let shifted = bucket_key(
            &UserId::parse("ad").unwrap(),
            &IdempotencyKey("aretry.me/*>".into()),
        );
        assert_ne!(ada, shifted);
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let conversation = ConversationId::new();
        let message = TurnKind::Message;
        assert_eq!(
            fingerprint("hi", None, message),
            fingerprint("hi", None, message)
        );
        assert_ne!(
            fingerprint("hi", None, message),
            fingerprint("hi!", None, message)
        );
        assert_ne!(
            fingerprint("hi", None, message),
            fingerprint("hi", Some(conversation), message)
        );
        assert_eq!(
            fingerprint("hi", Some(conversation), message),
            fingerprint("hi", Some(conversation), message)
        );
        // A regenerate is not the same request as a message, even an empty one.
        assert_ne!(
            fingerprint("", Some(conversation), message),
            fingerprint("", Some(conversation), TurnKind::Regenerate)
        );
    }
}

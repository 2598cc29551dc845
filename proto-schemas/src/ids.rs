//! Typed identifiers. Internal ids are UUIDv7; ids that must be the same on a retry
//! (a tool call's command id, an event's id) are derived deterministically from their
//! parent id and stay time-ordered by borrowing the parent's timestamp.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A UUIDv7-shaped id derived from `parent` and `label`: the same inputs always give
/// the same id, and the id sorts with its parent in time.
pub fn derive_uuid(parent: Uuid, label: &str) -> Uuid {
    let millis = parent
        .get_timestamp()
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            secs * 1000 + u64::from(nanos) / 1_000_000
        })
        .unwrap_or(0);
    let mut hasher = Sha256::new();
    hasher.update(parent.as_bytes());
    hasher.update(label.as_bytes());
    let digest = hasher.finalize();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
        )]
        #[serde(transparent)]
        #[schemars(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

uuid_id!(
    /// One chat turn: assigned by the gateway (or derived from an Idempotency-Key),
    /// used as the JetStream message id and the correlation id of everything the turn does.
    RequestId
);
uuid_id!(
    /// One conversation between a user and the assistant (one event stream).
    ConversationId
);
uuid_id!(
    /// One stored event; appending an event whose id is stored already writes nothing.
    EventId
);
uuid_id!(
    /// One task command; the same command id sent twice has one effect.
    CommandId
);
uuid_id!(
    /// One tool call waiting for the person's approval (`AGENT_CONFIRM_TOOLS`).
    ApprovalId
);

impl ApprovalId {
    /// The approval id of the `index`-th tool call of model step `step` in a chat turn,
    /// identical on every redelivery of that turn.
    pub fn for_tool_call(request: RequestId, step: u32, index: u32) -> Self {
        Self(derive_uuid(request.0, &format!("approval/{step}/{index}")))
    }
}

impl CommandId {
    /// The command id of the `index`-th tool call of model step `step` in a chat turn,
    /// identical on every redelivery of that turn.
    pub fn for_tool_call(request: RequestId, step: u32, index: u32) -> Self {
        Self(derive_uuid(request.0, &format!("tool-call/{step}/{index}")))
    }
}

impl EventId {
    /// The id of the `index`-th event caused by `cause` (a command or a request), so
    /// that a retried cause re-derives the same ids and the log stores it once.
    pub fn derived(cause: Uuid, label: &str, index: u32) -> Self {
        Self(derive_uuid(cause, &format!("event/{label}/{index}")))
    }
}

/// A user's id as it comes from a verified token's `sub`. Never chosen by the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct UserId(String);

/// The longest user id accepted.
pub const USER_ID_MAX_CHARS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUserId {
    #[error("user id must not be empty")]
    Empty,
    #[error("user id must be at most {USER_ID_MAX_CHARS} characters")]
    TooLong,
    #[error("user id must not contain whitespace, control characters or '/'")]
    BadCharacter,
}

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, InvalidUserId> {
        if raw.is_empty() {
            return Err(InvalidUserId::Empty);
        }
        if raw.chars().count() > USER_ID_MAX_CHARS {
            return Err(InvalidUserId::TooLong);
        }
        if raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(InvalidUserId::BadCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for UserId {
    type Err = InvalidUserId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A task's per-user sequential number (1, 2, 3 …): what people say in chat.
///
/// Accepts a JSON integer or a string of digits, because models sometimes quote numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct TaskNumber(pub u32);

impl fmt::Display for TaskNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for TaskNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum NumberOrText {
            Number(u32),
            Text(String),
        }
        match NumberOrText::deserialize(deserializer)? {
            NumberOrText::Number(n) => Ok(Self(n)),
            NumberOrText::Text(text) => text
                .trim()
                .trim_start_matches('#')
                .parse()
                .map(Self)
                .map_err(|_| serde::de::Error::custom("task_id must be a positive whole number")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_v7_and_distinct() {
        let request = RequestId::new();
        let a = CommandId::for_tool_call(request, 0, 0);
        assert_eq!(a, CommandId::for_tool_call(request, 0, 0));
        assert_ne!(a, CommandId::for_tool_call(request, 0, 1));
        assert_ne!(a, CommandId::for_tool_call(request, 1, 0));
        assert_eq!(a.0.get_version_num(), 7);
        assert_eq!(
            a.0.get_timestamp().unwrap().to_unix().0,
            request.0.get_timestamp().unwrap().to_unix().0
        );
    }

    #[test]
    fn user_ids_are_validated() {
        assert!(UserId::parse("test-user").is_ok());
        assert!(UserId::parse("alice@example.com").is_ok());
        assert_eq!(UserId::parse(""), Err(InvalidUserId::Empty));
        assert_eq!(UserId::parse("a b"), Err(InvalidUserId::BadCharacter));
        assert_eq!(UserId::parse("a/b"), Err(InvalidUserId::BadCharacter));
        assert_eq!(UserId::parse(&"x".repeat(129)), Err(InvalidUserId::TooLong));
        assert!(serde_json::from_str::<UserId>("\"\"").is_err());
    }

    #[test]
    fn task_numbers_accept_numbers_and_digit_strings() {
        assert_eq!(
            serde_json::from_str::<TaskNumber>("3").unwrap(),
            TaskNumber(3)
        );
        assert_eq!(
            serde_json::from_str::<TaskNumber>("\"#4\"").unwrap(),
            TaskNumber(4)
        );
        assert!(serde_json::from_str::<TaskNumber>("\"four\"").is_err());
        assert!(serde_json::from_str::<TaskNumber>("-1").is_err());
    }
}

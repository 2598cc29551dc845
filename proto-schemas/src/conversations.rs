//! Commands on a conversation as a whole, sent by the gateway to the agent-workers
//! (NATS request-reply, `conversations.commands`, queue group `agent-workers`): the
//! workers own the conversation streams, so they alone append to them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::chat::ChatRequest;
use crate::events::FeedbackKind;
use crate::ids::{ConversationId, UserId};

/// The longest conversation title a person may set, in characters.
pub const TITLE_MAX_CHARS: usize = 200;

/// The most items one feedback may name.
pub const FEEDBACK_MAX_ITEMS: usize = 100;

/// The longest item id a feedback may name, in characters.
pub const FEEDBACK_ITEM_ID_MAX_CHARS: usize = 200;

/// A conversation title as a person set it: not blank, at most
/// [`TITLE_MAX_CHARS`] characters, no control characters. Trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationTitle(String);

/// Why a title is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTitle {
    #[error("title must not be empty")]
    Empty,
    #[error("title must be at most {TITLE_MAX_CHARS} characters (it has {chars})")]
    TooLong { chars: usize },
    #[error("title must not contain control characters")]
    ControlCharacter,
}

impl ConversationTitle {
    pub fn parse(raw: &str) -> Result<Self, InvalidTitle> {
        let title = raw.trim();
        if title.is_empty() {
            return Err(InvalidTitle::Empty);
        }
        let chars = title.chars().count();
        if chars > TITLE_MAX_CHARS {
            return Err(InvalidTitle::TooLong { chars });
        }
        if title.chars().any(char::is_control) {
            return Err(InvalidTitle::ControlCharacter);
        }
        Ok(Self(title.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// What the gateway asks of a conversation or of one of its turns. The user always
/// comes from the verified token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ConversationCommand {
    Rename {
        user_id: UserId,
        conversation_id: ConversationId,
        title: String,
    },
    Delete {
        user_id: UserId,
        conversation_id: ConversationId,
    },
    /// Stop a turn: record its end as failed with code `cancelled` (unless it has
    /// ended), and tell the replica running it to stop at its next safe point.
    CancelTurn { request: ChatRequest },
    /// Record the person's rating of answers (by their ChatKit item ids): 1 to
    /// [`FEEDBACK_MAX_ITEMS`] ids of at most [`FEEDBACK_ITEM_ID_MAX_CHARS`] characters.
    Feedback {
        user_id: UserId,
        conversation_id: ConversationId,
        item_ids: Vec<String>,
        kind: FeedbackKind,
    },
}

/// Checks the item ids of a feedback: why they are refused, if they are.
pub fn check_feedback_items(item_ids: &[String]) -> Result<(), String> {
    if item_ids.is_empty() || item_ids.len() > FEEDBACK_MAX_ITEMS {
        return Err(format!(
            "feedback must name 1 to {FEEDBACK_MAX_ITEMS} items (it names {})",
            item_ids.len()
        ));
    }
    match item_ids.iter().find(|id| {
        id.trim().is_empty()
            || id.chars().count() > FEEDBACK_ITEM_ID_MAX_CHARS
            || id.chars().any(char::is_control)
    }) {
        Some(id) => Err(format!(
            "item id {id:?} must be 1 to {FEEDBACK_ITEM_ID_MAX_CHARS} characters, without control characters"
        )),
        None => Ok(()),
    }
}

/// What came of a [`ConversationCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ConversationCommandReply {
    Done,
    /// The conversation (or turn) does not exist, is deleted, or is someone else's.
    NotFound,
    /// The turn has ended already: nothing to cancel.
    AlreadyEnded,
    /// The command is malformed (e.g. a blank title); nothing changed.
    Invalid {
        reason: String,
    },
    /// The store could not be reached; nothing or all of it changed, try again.
    Unavailable {
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_trimmed_and_checked() {
        assert_eq!(
            ConversationTitle::parse("  Groceries ").unwrap().as_str(),
            "Groceries"
        );
        assert_eq!(ConversationTitle::parse(" \n"), Err(InvalidTitle::Empty));
        assert_eq!(
            ConversationTitle::parse(&"é".repeat(TITLE_MAX_CHARS + 1)),
            Err(InvalidTitle::TooLong {
                chars: TITLE_MAX_CHARS + 1
            })
        );
        assert!(ConversationTitle::parse(&"é".repeat(TITLE_MAX_CHARS)).is_ok());
        assert_eq!(
            ConversationTitle::parse("a\u{0}b"),
            Err(InvalidTitle::ControlCharacter)
        );
    }

    #[test]
    fn feedback_names_a_bounded_number_of_sane_ids() {
        let ids = |list: &[&str]| list.iter().map(|id| (*id).to_owned()).collect::<Vec<_>>();
        assert!(check_feedback_items(&ids(&["msg_1_assistant"])).is_ok());
        assert!(check_feedback_items(&[]).is_err());
        assert!(check_feedback_items(&vec!["a".to_owned(); FEEDBACK_MAX_ITEMS + 1]).is_err());
        assert!(check_feedback_items(&ids(&[" "])).is_err());
        assert!(check_feedback_items(&ids(&["a\u{7}"])).is_err());
        assert!(check_feedback_items(&["é".repeat(FEEDBACK_ITEM_ID_MAX_CHARS + 1)]).is_err());
    }
}

//! A conversation's state as the worker needs it, and no more: whose it is, a bounded
//! window of its latest messages (what the model is shown), and the state of its
//! latest turns. A pure fold of the conversation's events ([`eventlog::Aggregate`]),
//! and also its snapshot, so a turn costs the same at message 1 and at message 10,000
//! (docs/ARCHITECTURE.md invariant 11): the worker never reads or folds more than
//! this.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use proto_schemas::chat::ChatRequest;
use proto_schemas::events::ConversationEvent;
use proto_schemas::{RequestId, UserId};
use serde::{Deserialize, Serialize};

use crate::machine::{HistoryMessage, TurnState};

/// The most earlier messages the model can be shown (the ceiling of
/// `AGENT_HISTORY_MESSAGES`): the window the state keeps.
pub const MESSAGES_KEPT: usize = 100;

/// Turns whose state is kept. Turns of one conversation rarely overlap, so this only
/// has to hold the turns in flight and the latest ended ones (a redelivered turn
/// republishes its reply from here); an older turn is looked up by its request id.
pub const TURNS_KEPT: usize = 16;

/// Whether a request may use its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The conversation does not exist yet and the request starts it.
    Start,
    /// The conversation exists and is the requester's.
    Continue,
    /// The conversation does not exist, or it is someone else's: the same answer for
    /// both, so that nobody learns which conversation ids exist.
    NotFound,
}

/// One message in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WindowMessage {
    request_id: RequestId,
    from_user: bool,
    text: Arc<str>,
}

/// The conversation's state; see the module docs.
///
/// Texts and turns are shared (`Arc`), so that the copies the cache and each turn
/// take cost reference counts, not the conversation's text again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Any event folded in yet.
    started: bool,
    /// Whose it is: set only when its first event is `ConversationStarted`.
    owner: Option<UserId>,
    /// The person deleted it: it is not found for anyone from then on.
    #[serde(default)]
    deleted: bool,
    messages: VecDeque<WindowMessage>,
    turns: BTreeMap<RequestId, Arc<TurnState>>,
    /// The newest request id whose turn was dropped from `turns`: a turn at or before
    /// it may be in the log but not here.
    forgotten_up_to: Option<RequestId>,
}

/// What [`Conversation::turn`] knows of a request's turn.
#[derive(Debug, Clone, PartialEq)]
pub enum KnownTurn {
    /// The turn as recorded (the default state: nothing recorded yet).
    Known(TurnState),
    /// Dropped from the window: read its events by request id.
    Forgotten,
}

impl Conversation {
    /// Who may use the conversation, for `request`.
    pub fn access(&self, request: &ChatRequest) -> Access {
        match &self.owner {
            _ if !self.started && request.new_conversation => Access::Start,
            _ if self.is_visible_to(&request.user_id) => Access::Continue,
            _ => Access::NotFound,
        }
    }

    /// Whether the conversation exists, is `user`'s and is not deleted.
    pub fn is_visible_to(&self, user: &UserId) -> bool {
        !self.deleted && self.owner.as_ref() == Some(user)
    }

    /// The state of `request`'s turn.
    pub fn turn(&self, request: RequestId) -> KnownTurn {
        match self.turns.get(&request) {
            Some(turn) => KnownTurn::Known(TurnState::clone(turn)),
            None if self.forgotten_up_to.is_some_and(|last| request <= last) => {
                KnownTurn::Forgotten
            }
            None => KnownTurn::Known(TurnState::default()),
        }
    }

    /// The user and assistant messages of the turns before `request`, at most `limit`
    /// of them, newest kept, starting on something the user said. Earlier turns' tool
    /// traffic is left out: their replies already say what the tools did, and a
    /// window cut through a tool exchange would be an invalid message sequence.
    pub fn history_before(&self, request: RequestId, limit: usize) -> Vec<HistoryMessage> {
        let end = self
            .messages
            .iter()
            .position(|message| message.from_user && message.request_id == request)
            .unwrap_or(self.messages.len());
        let earlier = self
            .messages
            .range(..end)
            .filter(|message| message.request_id != request);
        let skip = earlier.clone().count().saturating_sub(limit);
        earlier
            .skip(skip)
            .skip_while(|message| !message.from_user)
            .map(|message| {
                let text = message.text.to_string();
                if message.from_user {
                    HistoryMessage::User(text)
                } else {
                    HistoryMessage::Assistant(text)
                }
            })
            .collect()
    }

    /// What a regenerate answers again: the person's latest message and its turn, once
    /// that turn has ended. `None` while it runs or waits for an approval: superseded
    /// then, it would still end (or run its approved tool) later, out of sight of the
    /// person and of the read models' message count. `None` too with no message at all.
    pub fn message_to_regenerate(&self) -> Option<(RequestId, String)> {
        let message = self
            .messages
            .iter()
            .rev()
            .find(|message| message.from_user)?;
        // A turn no longer kept is an old one: ended turns are the first forgotten.
        let ended = self
            .turns
            .get(&message.request_id)
            .is_none_or(|turn| turn.ending.is_some());
        ended.then(|| (message.request_id, message.text.to_string()))
    }

    fn remember_message(&mut self, request_id: RequestId, from_user: bool, text: &str) {
        self.messages.push_back(WindowMessage {
            request_id,
            from_user,
            text: text.into(),
        });
        while self.messages.len() > MESSAGES_KEPT {
            self.messages.pop_front();
        }
    }

    /// Drops the oldest turn (preferring ended ones) while more than [`TURNS_KEPT`]
    /// are held.
    fn forget_old_turns(&mut self) {
        while self.turns.len() > TURNS_KEPT {
            let oldest = self
                .turns
                .iter()
                .find(|(_, turn)| turn.ending.is_some())
                .or_else(|| self.turns.iter().next())
                .map(|(id, _)| *id)
                .expect("more than TURNS_KEPT turns");
            self.turns.remove(&oldest);
            self.forgotten_up_to = self.forgotten_up_to.max(Some(oldest));
        }
    }
}

impl eventlog::Aggregate for Conversation {
    type Event = ConversationEvent;
    const SNAPSHOT_SCHEMA: &'static str = "agent-worker/conversation/1";

    fn apply(&mut self, event: &ConversationEvent) {
        if !self.started {
            self.started = true;
            if let ConversationEvent::ConversationStarted { user_id } = event {
                self.owner = Some(user_id.clone());
            }
        }
        if let ConversationEvent::ConversationDeleted {} = event {
            self.deleted = true;
        }
        let Some(request) = event.request_id() else {
            return;
        };
        match event {
            ConversationEvent::UserMessageReceived {
                text, regenerates, ..
            } => {
                // The superseded turn leaves the window: the model sees its message
                // once, as this turn's, and not its earlier answer.
                if let Some(earlier) = regenerates {
                    self.messages
                        .retain(|message| message.request_id != *earlier);
                }
                self.remember_message(request, true, text);
            }
            ConversationEvent::AssistantReplied { text, .. } => {
                self.remember_message(request, false, text);
            }
            _ => {}
        }
        // Events of a turn dropped from the window stay out of it: a partial turn
        // here would look like one that never recorded its message.
        let forgotten = self.forgotten_up_to.is_some_and(|last| request <= last);
        if forgotten && !self.turns.contains_key(&request) {
            return;
        }
        Arc::make_mut(self.turns.entry(request).or_default()).apply(event);
        self.forget_old_turns();
    }

    fn weight(&self) -> u64 {
        let messages: usize = self.messages.iter().map(|m| m.text.len() + 48).sum();
        // Turns hold tool arguments and results; a rough share per turn.
        (256 + messages + 1024 * self.turns.len()) as u64
    }
}

#[cfg(test)]
mod tests {
    use eventlog::Aggregate as _;
    use proto_schemas::chat::ChatErrorCode;

    use super::*;
    use crate::fixtures::{replied, request, said, started};
    use crate::machine::Ending;

    fn fold(events: &[ConversationEvent]) -> Conversation {
        let mut conversation = Conversation::default();
        for event in events {
            conversation.apply(event);
        }
        conversation
    }

    #[test]
    fn a_regenerate_takes_the_superseded_turn_out_of_the_window() {
        let (first, second, again) = (RequestId::new(), RequestId::new(), RequestId::new());
        let conversation = fold(&[
            started("alice"),
            said(first, "add milk"),
            replied(first, "Added milk."),
            said(second, "what is open?"),
            replied(second, "Milk."),
        ]);
        assert_eq!(
            conversation.message_to_regenerate(),
            Some((second, "what is open?".to_owned()))
        );
        let mut conversation = conversation;
        conversation.apply(&ConversationEvent::UserMessageReceived {
            request_id: again,
            text: "what is open?".into(),
            regenerates: Some(second),
        });
        assert_eq!(
            conversation.history_before(again, 20),
            [
                HistoryMessage::User("add milk".into()),
                HistoryMessage::Assistant("Added milk.".into())
            ]
        );
        // Until the new turn ends, there is nothing to answer again.
        assert_eq!(conversation.message_to_regenerate(), None);
        conversation.apply(&replied(again, "Milk, still."));
        assert_eq!(
            conversation.message_to_regenerate(),
            Some((again, "what is open?".to_owned()))
        );
        let deleted = fold(&[started("alice"), ConversationEvent::ConversationDeleted {}]);
        assert!(!deleted.is_visible_to(&UserId::parse("alice").unwrap()));
    }

    #[test]
    fn only_an_ended_turn_is_regenerated() {
        let (first, second) = (RequestId::new(), RequestId::new());
        assert_eq!(fold(&[started("alice")]).message_to_regenerate(), None);
        // Running, or paused for an approval (no ending either): not yet.
        let mut conversation = fold(&[
            started("alice"),
            said(first, "add milk"),
            replied(first, "Added milk."),
            said(second, "delete task 1"),
        ]);
        assert_eq!(conversation.message_to_regenerate(), None);
        // A failed (or stopped) turn can be answered again.
        conversation.apply(&ConversationEvent::TurnFailed {
            request_id: second,
            code: ChatErrorCode::Cancelled,
            message: "Stopped.".into(),
        });
        assert_eq!(
            conversation.message_to_regenerate(),
            Some((second, "delete task 1".to_owned()))
        );
    }

    #[test]
    fn access_follows_the_conversation_owner() {
        let new = request(true);
        assert_eq!(fold(&[]).access(&new), Access::Start);
        assert_eq!(fold(&[]).access(&request(false)), Access::NotFound);
        assert_eq!(
            fold(&[started("alice")]).access(&request(false)),
            Access::Continue
        );
        // A redelivered first turn finds the conversation it started.
        assert_eq!(
            fold(&[started("alice"), said(new.request_id, "hi")]).access(&new),
            Access::Continue
        );
        assert_eq!(
            fold(&[started("mallory")]).access(&request(false)),
            Access::NotFound
        );
        assert_eq!(
            fold(&[started("mallory")]).access(&request(true)),
            Access::NotFound
        );
        assert_eq!(
            fold(&[said(RequestId::new(), "orphan"), started("alice")]).access(&request(false)),
            Access::NotFound
        );
    }

    #[test]
    fn history_is_a_bounded_window_of_earlier_turns() {
        let turns: Vec<RequestId> = (0..4).map(|_| RequestId::new()).collect();
        let current = RequestId::new();
        let mut events = vec![started("alice")];
        for (i, r) in turns.iter().enumerate() {
            events.push(said(*r, &format!("u{i}")));
            events.push(replied(*r, &format!("a{i}")));
        }
        events.push(said(current, "now"));
        // A turn of the same conversation recorded after this one is not history.
        let later = RequestId::new();
        events.push(said(later, "later"));
        events.push(replied(later, "later reply"));
        let conversation = fold(&events);

        let all = conversation.history_before(current, 100);
        assert_eq!(all.len(), 8);
        assert_eq!(all[0], HistoryMessage::User("u0".into()));
        assert_eq!(all[7], HistoryMessage::Assistant("a3".into()));
        // The last three are a2, u3, a3; the window starts on a user message.
        assert_eq!(
            conversation.history_before(current, 3),
            vec![
                HistoryMessage::User("u3".into()),
                HistoryMessage::Assistant("a3".into())
            ]
        );
        assert!(conversation.history_before(current, 0).is_empty());
    }

    #[test]
    fn a_turn_without_a_reply_leaves_its_message_in_the_history() {
        let failed = RequestId::new();
        let current = RequestId::new();
        let conversation = fold(&[
            started("alice"),
            said(failed, "first"),
            ConversationEvent::TurnFailed {
                request_id: failed,
                code: ChatErrorCode::ModelUnavailable,
                message: "x".into(),
            },
            said(current, "second"),
        ]);
        assert_eq!(
            conversation.history_before(current, 20),
            vec![HistoryMessage::User("first".into())]
        );
    }

    #[test]
    fn the_state_stays_bounded_however_long_the_conversation() {
        let mut conversation = fold(&[started("alice")]);
        let mut requests = Vec::new();
        for i in 0..1_000 {
            let r = RequestId::new();
            conversation.apply(&said(r, &format!("u{i}")));
            conversation.apply(&replied(r, &format!("a{i}")));
            requests.push(r);
        }
        assert_eq!(conversation.messages.len(), MESSAGES_KEPT);
        assert_eq!(conversation.turns.len(), TURNS_KEPT);
        // The latest turns are known with their endings; an old one is to be looked up.
        let last = *requests.last().unwrap();
        assert!(matches!(
            conversation.turn(last),
            KnownTurn::Known(TurnState {
                ending: Some(Ending::Replied(_)),
                ..
            })
        ));
        assert_eq!(conversation.turn(requests[0]), KnownTurn::Forgotten);
        // A request never seen is a fresh turn.
        assert_eq!(
            conversation.turn(RequestId::new()),
            KnownTurn::Known(TurnState::default())
        );
        // A late event of a forgotten turn does not bring back a partial turn.
        conversation.apply(&replied(requests[0], "late"));
        assert_eq!(conversation.turn(requests[0]), KnownTurn::Forgotten);
        assert_eq!(conversation.history_before(last, 2).len(), 2);
    }

    #[test]
    fn the_state_survives_its_snapshot() {
        let r = RequestId::new();
        let conversation = fold(&[started("alice"), said(r, "hi"), replied(r, "hello")]);
        let snapshot = serde_json::to_value(&conversation).unwrap();
        let restored: Conversation = serde_json::from_value(snapshot).unwrap();
        assert_eq!(restored, conversation);
    }
}

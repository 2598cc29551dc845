//! The registry of message types whose JSON Schemas are checked in under
//! `proto-schemas/schemas/`. The `schemas_match_the_types` test fails when they drift;
//! `UPDATE_SCHEMAS=1 cargo test -p proto-schemas` (or `make schemas`) rewrites them.

use schemars::{JsonSchema, Schema, schema_for};

use crate::{chat, conversations, events, queries, tasks};

/// Every contract type: (file name under `schemas/`, its schema).
pub fn all() -> Vec<(&'static str, Schema)> {
    fn entry<T: JsonSchema>(file: &'static str) -> (&'static str, Schema) {
        (file, schema_for!(T))
    }
    vec![
        entry::<chat::ChatRequest>("chat-request.json"),
        entry::<chat::ChatReply>("chat-reply.json"),
        entry::<chat::ChatStreamChunk>("chat-stream-chunk.json"),
        entry::<conversations::ConversationCommand>("conversation-command.json"),
        entry::<conversations::ConversationCommandReply>("conversation-command-reply.json"),
        entry::<tasks::TaskCommand>("task-command.json"),
        entry::<tasks::TaskCommandReply>("task-command-reply.json"),
        entry::<queries::TasksQuery>("tasks-query.json"),
        entry::<queries::QueryReply<tasks::TaskView>>("tasks-query-reply.json"),
        entry::<queries::ConversationsQuery>("conversations-query.json"),
        entry::<queries::QueryReply<queries::ConversationSummary>>(
            "conversations-query-reply.json",
        ),
        entry::<queries::MessagesQuery>("messages-query.json"),
        entry::<queries::QueryReply<queries::MessageView>>("messages-query-reply.json"),
        entry::<queries::ProjectionHealth>("projection-health.json"),
        entry::<events::EventsAppended>("events-appended.json"),
        entry::<events::TaskEvent>("task-event.json"),
        entry::<events::ConversationEvent>("conversation-event.json"),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    fn schemas_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")
    }

    #[test]
    fn schemas_match_the_types() {
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
        let dir = schemas_dir();
        let mut drifted = Vec::new();
        for (file, schema) in super::all() {
            let generated = serde_json::to_string_pretty(&schema).unwrap() + "\n";
            let path = dir.join(file);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &generated).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(generated.as_str()) {
                drifted.push(file);
            }
        }
        assert!(
            drifted.is_empty(),
            "checked-in schemas differ from the types: {drifted:?}; \
             run `make schemas` and review the diff"
        );
    }

    #[test]
    fn asyncapi_references_every_schema() {
        let asyncapi = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("asyncapi.yaml"),
        )
        .unwrap();
        for (file, _) in super::all() {
            assert!(
                asyncapi.contains(&format!("./schemas/{file}")),
                "asyncapi.yaml does not reference schemas/{file}"
            );
        }
    }
}

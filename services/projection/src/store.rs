//! The read models of one schema in Postgres: applying a batch of events (with its
//! checkpoint, in the caller's transaction) and loading everything back (for verify).
//!
//! A batch is applied as load → fold → write: the rows the batch touches are loaded
//! with one multi-row statement per table, the events are folded into them in memory
//! by [`ReadModels::apply`], and the results go back with one `unnest` statement per
//! table and kind of change. A batch of thousands of events therefore costs about ten
//! round trips, not one per event.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use eventlog::{Checkpoint, StoredEvent};
use itertools::Itertools as _;
use proto_schemas::chat::ToolCallRecord;
use proto_schemas::events::TaskEvent;
use proto_schemas::queries::MessageRole;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};
use uuid::Uuid;

use crate::error::ProjectionError;
use crate::model::{
    ConversationRow, Fact, MessageKey, MessageRow, PendingCall, Projected, ReadModels, TaskKey,
    TaskRow, TurnKey,
};
use crate::schema::{LAYOUT_VERSION, Sql, query};

/// The checkpoint row of a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointRow {
    pub layout_version: i32,
    /// The last event applied.
    pub checkpoint: Checkpoint,
    /// How many events have been applied (every event of the log up to the checkpoint,
    /// including those of streams no read model follows).
    pub events_applied: u64,
}

impl CheckpointRow {
    /// Fails unless this binary writes the layout the tables have.
    pub fn check_layout(&self) -> Result<(), ProjectionError> {
        if self.layout_version == LAYOUT_VERSION {
            Ok(())
        } else {
            Err(ProjectionError::Layout {
                found: self.layout_version,
                expected: LAYOUT_VERSION,
            })
        }
    }
}

pub async fn read_checkpoint(
    conn: &mut PgConnection,
    sql: &Sql,
) -> Result<CheckpointRow, ProjectionError> {
    let row = query(&sql.read_checkpoint).fetch_one(conn).await?;
    Ok(CheckpointRow {
        layout_version: row.try_get("layout_version")?,
        checkpoint: Checkpoint {
            transaction_id: row.try_get("transaction_id")?,
            position: row.try_get("position")?,
        },
        events_applied: to_u64(row.try_get("events_applied")?),
    })
}

/// What a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The checkpoint now stored (the batch's last event).
    pub checkpoint: Checkpoint,
    /// The total of events applied to this schema so far.
    pub events_applied: u64,
    /// Odd events that were folded as far as they make sense (logged).
    pub anomalies: usize,
}

/// Applies `events`, which follow `from` in the log, and moves the checkpoint to the
/// last of them. Run it inside a transaction: all of it commits, or none.
///
/// The checkpoint moves first, with a compare-and-set on `from`: if it is not the
/// stored checkpoint, nothing is written and [`ProjectionError::CheckpointMoved`] is
/// returned. That makes applying a batch twice impossible even with two writers, and
/// the row lock it takes serialises any that race.
pub async fn apply_batch(
    conn: &mut PgConnection,
    sql: &Sql,
    from: Checkpoint,
    events: &[StoredEvent],
) -> Result<Applied, ProjectionError> {
    let Some(last) = events.last() else {
        let stored = read_checkpoint(conn, sql).await?;
        return Ok(Applied {
            checkpoint: from,
            events_applied: stored.events_applied,
            anomalies: 0,
        });
    };
    // Decode everything before writing anything.
    let facts = events
        .iter()
        .map(|event| {
            Fact::decode(event).map_err(|source| ProjectionError::Decode {
                position: event.position,
                event_id: event.event_id.as_uuid(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let to = last.checkpoint();
    let total: Option<i64> = query(&sql.advance_checkpoint)
        .bind(from.transaction_id)
        .bind(from.position)
        .bind(to.transaction_id)
        .bind(to.position)
        .bind(i64::try_from(events.len()).unwrap_or(i64::MAX))
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    let Some(total) = total else {
        return Err(ProjectionError::CheckpointMoved { expected: from });
    };

    let mut task_keys = BTreeSet::new();
    let mut conversation_ids = BTreeSet::new();
    for fact in &facts {
        match &fact.projected {
            Projected::Task { user_id, event } => {
                task_keys.insert(TaskKey {
                    user_id: user_id.clone(),
                    task_id: task_number(event),
                });
            }
            Projected::Conversation {
                conversation_id, ..
            } => {
                conversation_ids.insert(*conversation_id);
            }
            Projected::Other => {}
        }
    }
    let conversation_ids: Vec<Uuid> = conversation_ids.into_iter().collect();

    let mut models = ReadModels::default();
    load_tasks(conn, sql, &task_keys, &mut models).await?;
    load_conversations(conn, sql, &conversation_ids, &mut models).await?;
    let had_pending = !models.pending.is_empty();

    let mut anomalies = 0;
    for (fact, event) in facts.iter().zip(events) {
        if let Some(anomaly) = models.apply(fact) {
            anomalies += 1;
            tracing::warn!(position = event.position, event_id = %event.event_id, %anomaly, "odd event in the log, projected as far as it makes sense");
        }
    }

    write_tasks(conn, sql, &task_keys, &models).await?;
    write_conversations(conn, sql, &models).await?;
    if had_pending {
        query(&sql.delete_pending)
            .bind(&conversation_ids)
            .execute(&mut *conn)
            .await?;
    }
    write_pending(conn, sql, &models).await?;
    write_messages(conn, sql, &models).await?;
    Ok(Applied {
        checkpoint: to,
        events_applied: to_u64(total),
        anomalies,
    })
}

fn task_number(event: &TaskEvent) -> u32 {
    match event {
        TaskEvent::TaskAdded { task_id, .. }
        | TaskEvent::TaskCompleted { task_id }
        | TaskEvent::TaskDeleted { task_id }
        | TaskEvent::TaskUpdated { task_id, .. } => task_id.0,
    }
}

async fn load_tasks(
    conn: &mut PgConnection,
    sql: &Sql,
    keys: &BTreeSet<TaskKey>,
    models: &mut ReadModels,
) -> Result<(), ProjectionError> {
    if keys.is_empty() {
        return Ok(());
    }
    let users: Vec<&str> = keys.iter().map(|k| k.user_id.as_str()).collect();
    let ids: Vec<i64> = keys.iter().map(|k| i64::from(k.task_id)).collect();
    let rows = query(&sql.load_tasks)
        .bind(&users)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
    for row in &rows {
        let (key, task) = decode_task(row)?;
        models.tasks.insert(key, task);
    }
    Ok(())
}

async fn load_conversations(
    conn: &mut PgConnection,
    sql: &Sql,
    ids: &[Uuid],
    models: &mut ReadModels,
) -> Result<(), ProjectionError> {
    if ids.is_empty() {
        return Ok(());
    }
    let rows = query(&sql.load_conversations)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
    for row in &rows {
        let (id, conversation) = decode_conversation(row)?;
        models.conversations.insert(id, conversation);
    }
    let rows = query(&sql.load_pending)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
    for row in &rows {
        let (turn, call) = decode_pending(row)?;
        models.pending.entry(turn).or_default().push(call);
    }
    Ok(())
}

/// Every touched task is written back: upserted if it exists after the batch,
/// deleted if not.
async fn write_tasks(
    conn: &mut PgConnection,
    sql: &Sql,
    touched: &BTreeSet<TaskKey>,
    models: &ReadModels,
) -> Result<(), ProjectionError> {
    let (mut users, mut ids, mut titles, mut descriptions, mut completed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut gone_users, mut gone_ids) = (Vec::new(), Vec::new());
    for key in touched {
        match models.tasks.get(key) {
            Some(task) => {
                users.push(key.user_id.as_str());
                ids.push(i64::from(key.task_id));
                titles.push(task.title.as_str());
                descriptions.push(task.description.as_str());
                completed.push(task.completed);
            }
            None => {
                gone_users.push(key.user_id.as_str());
                gone_ids.push(i64::from(key.task_id));
            }
        }
    }
    if !users.is_empty() {
        query(&sql.upsert_tasks)
            .bind(&users)
            .bind(&ids)
            .bind(&titles)
            .bind(&descriptions)
            .bind(&completed)
            .execute(&mut *conn)
            .await?;
    }
    if !gone_users.is_empty() {
        query(&sql.delete_tasks)
            .bind(&gone_users)
            .bind(&gone_ids)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A read model's rows as one array per column, for the `unnest` statements.
type Columns6<A, B, C, D, E, F> = (Vec<A>, Vec<B>, Vec<C>, Vec<D>, Vec<E>, Vec<F>);
type Columns7<A, B, C, D, E, F, G> = (Vec<A>, Vec<B>, Vec<C>, Vec<D>, Vec<E>, Vec<F>, Vec<G>);

/// Splits rows into [`Columns6`].
fn columns6<A, B, C, D, E, F>(
    rows: impl Iterator<Item = (A, B, C, D, E, F)>,
) -> Columns6<A, B, C, D, E, F> {
    rows.multiunzip()
}

/// Splits rows into [`Columns7`].
fn columns7<A, B, C, D, E, F, G>(
    rows: impl Iterator<Item = (A, B, C, D, E, F, G)>,
) -> Columns7<A, B, C, D, E, F, G> {
    rows.multiunzip()
}

async fn write_conversations(
    conn: &mut PgConnection,
    sql: &Sql,
    models: &ReadModels,
) -> Result<(), ProjectionError> {
    if models.conversations.is_empty() {
        return Ok(());
    }
    let (ids, users, titles, counts, created, updated) =
        columns6(models.conversations.iter().map(|(id, conversation)| {
            (
                *id,
                conversation.user_id.as_str(),
                conversation.title.as_str(),
                i32::try_from(conversation.message_count).unwrap_or(i32::MAX),
                conversation.created_at,
                conversation.updated_at,
            )
        }));
    let deleted: Vec<bool> = models.conversations.values().map(|c| c.deleted).collect();
    let superseded: Vec<Value> = models
        .conversations
        .values()
        .map(|c| Value::from(c.superseded.iter().map(Uuid::to_string).collect::<Vec<_>>()))
        .collect();
    query(&sql.upsert_conversations)
        .bind(&ids)
        .bind(&users)
        .bind(&titles)
        .bind(&counts)
        .bind(&created)
        .bind(&updated)
        .bind(&deleted)
        .bind(&superseded)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn write_pending(
    conn: &mut PgConnection,
    sql: &Sql,
    models: &ReadModels,
) -> Result<(), ProjectionError> {
    if models.pending.is_empty() {
        return Ok(());
    }
    let (conversations, requests, ords, call_ids, names, arguments, results) =
        columns7(models.pending.iter().flat_map(|(turn, calls)| {
            calls.iter().enumerate().map(move |(ord, call)| {
                (
                    turn.conversation_id,
                    turn.request_id,
                    i32::try_from(ord).unwrap_or(i32::MAX),
                    call.call_id.as_str(),
                    call.name.as_str(),
                    &call.arguments,
                    call.result.as_ref(),
                )
            })
        }));
    query(&sql.insert_pending)
        .bind(&conversations)
        .bind(&requests)
        .bind(&ords)
        .bind(&call_ids)
        .bind(&names)
        .bind(&arguments)
        .bind(&results)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn write_messages(
    conn: &mut PgConnection,
    sql: &Sql,
    models: &ReadModels,
) -> Result<(), ProjectionError> {
    if models.messages.is_empty() {
        return Ok(());
    }
    let (conversations, seqs, roles, contents, tool_calls, requests, created) =
        columns7(models.messages.iter().map(|(key, message)| {
            (
                key.conversation_id,
                key.seq,
                role_name(message.role),
                message.content.as_str(),
                serde_json::to_value(&message.tool_calls).expect("tool calls serialize"),
                message.request_id,
                message.created_at,
            )
        }));
    query(&sql.insert_messages)
        .bind(&conversations)
        .bind(&seqs)
        .bind(&roles)
        .bind(&contents)
        .bind(&tool_calls)
        .bind(&requests)
        .bind(&created)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Every row of a schema's read models and its checkpoint, as one snapshot (run it in
/// a repeatable-read transaction).
pub async fn load_all(
    conn: &mut PgConnection,
    sql: &Sql,
) -> Result<(CheckpointRow, ReadModels), ProjectionError> {
    let checkpoint = read_checkpoint(conn, sql).await?;
    let mut models = ReadModels::default();
    for row in &query(&sql.all_tasks).fetch_all(&mut *conn).await? {
        let (key, task) = decode_task(row)?;
        models.tasks.insert(key, task);
    }
    for row in &query(&sql.all_conversations).fetch_all(&mut *conn).await? {
        let (id, conversation) = decode_conversation(row)?;
        models.conversations.insert(id, conversation);
    }
    for row in &query(&sql.all_messages).fetch_all(&mut *conn).await? {
        let (key, message) = decode_message(row)?;
        models.messages.insert(key, message);
    }
    for row in &query(&sql.all_pending).fetch_all(&mut *conn).await? {
        let (turn, call) = decode_pending(row)?;
        models.pending.entry(turn).or_default().push(call);
    }
    Ok((checkpoint, models))
}

pub fn role_name(role: MessageRole) -> &'static str {
    match role {
        MessageRole::User => "user",
        MessageRole::Assistant => "assistant",
        MessageRole::Error => "error",
    }
}

pub fn parse_role(name: &str) -> Result<MessageRole, ProjectionError> {
    match name {
        "user" => Ok(MessageRole::User),
        "assistant" => Ok(MessageRole::Assistant),
        "error" => Ok(MessageRole::Error),
        other => Err(ProjectionError::Corrupt(format!(
            "unknown message role {other:?}"
        ))),
    }
}

fn decode_task(row: &PgRow) -> Result<(TaskKey, TaskRow), ProjectionError> {
    let task_id: i64 = row.try_get("task_id")?;
    let task_id = u32::try_from(task_id)
        .map_err(|_| ProjectionError::Corrupt(format!("task number {task_id}")))?;
    Ok((
        TaskKey {
            user_id: row.try_get("user_id")?,
            task_id,
        },
        TaskRow {
            title: row.try_get("title")?,
            description: row.try_get("description")?,
            completed: row.try_get("completed")?,
        },
    ))
}

fn decode_conversation(row: &PgRow) -> Result<(Uuid, ConversationRow), ProjectionError> {
    let count: i32 = row.try_get("message_count")?;
    Ok((
        row.try_get("conversation_id")?,
        ConversationRow {
            user_id: row.try_get("user_id")?,
            title: row.try_get("title")?,
            message_count: u32::try_from(count)
                .map_err(|_| ProjectionError::Corrupt(format!("message count {count}")))?,
            created_at: row.try_get::<DateTime<Utc>, _>("created_at")?,
            updated_at: row.try_get::<DateTime<Utc>, _>("updated_at")?,
            deleted: row.try_get("deleted")?,
            superseded: serde_json::from_value(row.try_get::<Value, _>("superseded")?)
                .map_err(|error| ProjectionError::Corrupt(format!("superseded turns: {error}")))?,
        },
    ))
}

pub fn decode_message(row: &PgRow) -> Result<(MessageKey, MessageRow), ProjectionError> {
    let tool_calls: Value = row.try_get("tool_calls")?;
    let tool_calls: Vec<ToolCallRecord> = serde_json::from_value(tool_calls)
        .map_err(|error| ProjectionError::Corrupt(format!("tool calls: {error}")))?;
    let role: String = row.try_get("role")?;
    Ok((
        MessageKey {
            conversation_id: row.try_get("conversation_id")?,
            seq: row.try_get("seq")?,
        },
        MessageRow {
            role: parse_role(&role)?,
            content: row.try_get("content")?,
            tool_calls,
            request_id: row.try_get("request_id")?,
            created_at: row.try_get("created_at")?,
        },
    ))
}

fn decode_pending(row: &PgRow) -> Result<(TurnKey, PendingCall), ProjectionError> {
    Ok((
        TurnKey {
            conversation_id: row.try_get("conversation_id")?,
            request_id: row.try_get("request_id")?,
        },
        PendingCall {
            call_id: row.try_get("call_id")?,
            name: row.try_get("name")?,
            arguments: row.try_get("arguments")?,
            result: row.try_get("result")?,
        },
    ))
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

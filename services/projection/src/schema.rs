//! Where the read models live in Postgres: one schema per generation of read models,
//! the tables in it, the SQL that reads and writes them, and the advisory locks that
//! order the writers.
//!
//! The live read models are the schema [`LIVE_SCHEMA`]. A replay builds a new
//! generation in a schema of its own and swaps it in by renaming schemas in one
//! transaction, so every table (and the checkpoint stored beside them) changes at
//! once. The tables are created from code, idempotently, rather than by migrations:
//! a replay needs fresh tables anyway, and the layout version stored in the
//! checkpoint row says which code wrote them.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, PgConnection};

/// The schema queries read and the live projector writes.
pub const LIVE_SCHEMA: &str = "projection";
/// Prefix of the schemas replays build in (`projection_build_<millis>`).
pub const BUILD_SCHEMA_PREFIX: &str = "projection_build_";
/// Prefix a replaced generation is renamed to before it is dropped.
pub const OLD_SCHEMA_PREFIX: &str = "projection_old_";
/// The shape of the tables below. Bump it when they change: a projector refuses to
/// write tables of another layout, and `projection replay` builds the new one.
pub const LAYOUT_VERSION: i32 = 1;

/// The advisory locks (the two-key form, first key [`LOCK_CLASS`]).
pub const LOCK_CLASS: i32 = 0x7463_7072; // "tcpr"
/// Held for its whole life (session lock) by the one replica that writes the live
/// read models; the other replicas only answer queries until it is free.
pub const WRITER_LOCK: i32 = 1;
/// A transaction lock taken in shared mode by every batch the live writer applies and
/// by `verify`'s snapshot, and in exclusive mode by a replay's swap and by table
/// creation: a swap never lands in the middle of a batch or of a verification's reads.
pub const SWAP_LOCK: i32 = 2;
/// Held by a running replay (session lock): one replay at a time.
pub const REPLAY_LOCK: i32 = 3;

/// Takes a transaction-level advisory lock in exclusive mode, waiting for it.
pub async fn xact_lock(conn: &mut PgConnection, key: i32) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(key)
        .execute(conn)
        .await
        .map(drop)
}

/// Takes a transaction-level advisory lock in shared mode, waiting for it.
pub async fn xact_lock_shared(conn: &mut PgConnection, key: i32) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1, $2)")
        .bind(LOCK_CLASS)
        .bind(key)
        .execute(conn)
        .await
        .map(drop)
}

/// Tries to take a session-level advisory lock; true when this session holds it now.
pub async fn try_session_lock(conn: &mut PgConnection, key: i32) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(key)
        .fetch_one(conn)
        .await
}

/// Whether a schema of that name exists.
pub async fn schema_exists(conn: &mut PgConnection, schema: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(conn)
        .await
}

/// Creates `schema` and its tables if missing, with an empty checkpoint. Run it in a
/// transaction holding [`SWAP_LOCK`]: two replicas starting at once would otherwise
/// race on `CREATE SCHEMA IF NOT EXISTS`.
pub async fn create_tables(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    let ddl = format!(
        r#"
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.checkpoint (
    singleton       boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    layout_version  integer     NOT NULL,
    transaction_id  bigint      NOT NULL,
    position        bigint      NOT NULL,
    events_applied  bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {s}.checkpoint (layout_version, transaction_id, position, events_applied)
VALUES ({LAYOUT_VERSION}, 0, 0, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {s}.tasks (
    user_id      text    NOT NULL,
    task_id      bigint  NOT NULL,
    title        text    NOT NULL,
    description  text    NOT NULL,
    completed    boolean NOT NULL,
    PRIMARY KEY (user_id, task_id)
);
CREATE TABLE IF NOT EXISTS {s}.conversations (
    conversation_id  uuid        PRIMARY KEY,
    user_id          text        NOT NULL,
    title            text        NOT NULL,
    message_count    integer     NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_by_user
    ON {s}.conversations (user_id, created_at DESC, conversation_id DESC);
-- Added after layout 1 was released: defaults that are right for every conversation
-- written before (no earlier event could delete or regenerate), so no replay is needed.
ALTER TABLE {s}.conversations
    ADD COLUMN IF NOT EXISTS deleted boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS superseded jsonb NOT NULL DEFAULT '[]';
CREATE TABLE IF NOT EXISTS {s}.messages (
    conversation_id  uuid        NOT NULL,
    seq              bigint      NOT NULL,
    role             text        NOT NULL,
    content          text        NOT NULL,
    tool_calls       jsonb       NOT NULL,
    request_id       uuid        NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
CREATE TABLE IF NOT EXISTS {s}.pending_tool_calls (
    conversation_id  uuid    NOT NULL,
    request_id       uuid    NOT NULL,
    ord              integer NOT NULL,
    call_id          text    NOT NULL,
    name             text    NOT NULL,
    arguments        jsonb   NOT NULL,
    result           jsonb,
    PRIMARY KEY (conversation_id, request_id, ord)
);
"#,
        s = quote_ident(schema)
    );
    sqlx::raw_sql(AssertSqlSafe(ddl))
        .execute(conn)
        .await
        .map(drop)
}

/// Drops a schema and everything in it, if it exists.
pub async fn drop_schema(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema));
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(drop)
}

/// Renames a schema (every table in it moves along, in the same transaction).
pub async fn rename_schema(
    conn: &mut PgConnection,
    from: &str,
    to: &str,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "ALTER SCHEMA {} RENAME TO {}",
        quote_ident(from),
        quote_ident(to)
    );
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(drop)
}

/// The schemas left behind by replays that stopped before their swap or clean-up.
pub async fn leftover_schemas(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace \
         WHERE starts_with(nspname, $1) OR starts_with(nspname, $2) ORDER BY nspname",
    )
    .bind(BUILD_SCHEMA_PREFIX)
    .bind(OLD_SCHEMA_PREFIX)
    .fetch_all(conn)
    .await
}

/// A schema name as a quoted identifier. Names are made by this crate, never taken
/// from a request, but quoting keeps any of them a single identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every statement on one schema's tables, formatted once.
#[derive(Debug)]
pub struct Sql {
    pub schema: String,
    pub read_checkpoint: Arc<str>,
    pub advance_checkpoint: Arc<str>,
    pub load_tasks: Arc<str>,
    pub upsert_tasks: Arc<str>,
    pub delete_tasks: Arc<str>,
    pub load_conversations: Arc<str>,
    pub upsert_conversations: Arc<str>,
    pub load_pending: Arc<str>,
    pub delete_pending: Arc<str>,
    pub insert_pending: Arc<str>,
    pub insert_messages: Arc<str>,
    pub page_tasks: Arc<str>,
    pub page_conversations: Arc<str>,
    pub conversation_owner: Arc<str>,
    pub page_messages: Arc<str>,
    pub all_tasks: Arc<str>,
    pub all_conversations: Arc<str>,
    pub all_messages: Arc<str>,
    pub all_pending: Arc<str>,
}

impl Sql {
    pub fn for_schema(schema: &str) -> Self {
        let s = quote_ident(schema);
        let f = |text: String| -> Arc<str> { Arc::from(text) };
        Self {
            schema: schema.to_owned(),
            read_checkpoint: f(format!(
                "SELECT layout_version, transaction_id, position, events_applied FROM {s}.checkpoint"
            )),
            // Compare-and-set: a batch applies only on top of the checkpoint it was read
            // from, so a second writer (or a swap) makes it fail instead of applying twice.
            advance_checkpoint: f(format!(
                "UPDATE {s}.checkpoint SET transaction_id = $3, position = $4, \
                 events_applied = events_applied + $5, updated_at = now() \
                 WHERE transaction_id = $1 AND position = $2 RETURNING events_applied"
            )),
            load_tasks: f(format!(
                "SELECT t.user_id, t.task_id, t.title, t.description, t.completed FROM {s}.tasks t \
                 JOIN unnest($1::text[], $2::int8[]) AS k(user_id, task_id) \
                 ON t.user_id = k.user_id AND t.task_id = k.task_id"
            )),
            upsert_tasks: f(format!(
                "INSERT INTO {s}.tasks (user_id, task_id, title, description, completed) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::bool[]) \
                 ON CONFLICT (user_id, task_id) DO UPDATE SET title = excluded.title, \
                 description = excluded.description, completed = excluded.completed"
            )),
            delete_tasks: f(format!(
                "DELETE FROM {s}.tasks t USING unnest($1::text[], $2::int8[]) AS k(user_id, task_id) \
                 WHERE t.user_id = k.user_id AND t.task_id = k.task_id"
            )),
            load_conversations: f(format!(
                "SELECT conversation_id, user_id, title, message_count, created_at, updated_at, \
                 deleted, superseded FROM {s}.conversations WHERE conversation_id = ANY($1)"
            )),
            upsert_conversations: f(format!(
                "INSERT INTO {s}.conversations \
                 (conversation_id, user_id, title, message_count, created_at, updated_at, \
                  deleted, superseded) \
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], \
                                      $5::timestamptz[], $6::timestamptz[], $7::bool[], $8::jsonb[]) \
                 ON CONFLICT (conversation_id) DO UPDATE SET user_id = excluded.user_id, \
                 title = excluded.title, message_count = excluded.message_count, \
                 created_at = excluded.created_at, updated_at = excluded.updated_at, \
                 deleted = excluded.deleted, superseded = excluded.superseded"
            )),
            load_pending: f(format!(
                "SELECT conversation_id, request_id, call_id, name, arguments, result \
                 FROM {s}.pending_tool_calls WHERE conversation_id = ANY($1) \
                 ORDER BY conversation_id, request_id, ord"
            )),
            delete_pending: f(format!(
                "DELETE FROM {s}.pending_tool_calls WHERE conversation_id = ANY($1)"
            )),
            insert_pending: f(format!(
                "INSERT INTO {s}.pending_tool_calls \
                 (conversation_id, request_id, ord, call_id, name, arguments, result) \
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::text[], \
                                      $6::jsonb[], $7::jsonb[])"
            )),
            // A plain INSERT: a message key is an event's stream version, so a conflict
            // would mean an event applied twice, which must fail loudly.
            insert_messages: f(format!(
                "INSERT INTO {s}.messages \
                 (conversation_id, seq, role, content, tool_calls, request_id, created_at) \
                 SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::jsonb[], \
                                      $6::uuid[], $7::timestamptz[])"
            )),
            page_tasks: f(format!(
                "SELECT task_id, title, description, completed FROM {s}.tasks \
                 WHERE user_id = $1 AND task_id > $2 AND ($3::bool IS NULL OR completed = $3) \
                 ORDER BY task_id LIMIT $4"
            )),
            page_conversations: f(format!(
                "SELECT conversation_id, title, message_count, created_at, updated_at \
                 FROM {s}.conversations WHERE user_id = $1 AND NOT deleted \
                 AND ($2::timestamptz IS NULL OR (created_at, conversation_id) < ($2, $3)) \
                 ORDER BY created_at DESC, conversation_id DESC LIMIT $4"
            )),
            // A deleted conversation has no owner as far as queries go.
            conversation_owner: f(format!(
                "SELECT user_id FROM {s}.conversations WHERE conversation_id = $1 AND NOT deleted"
            )),
            // Without the messages of superseded (regenerated) turns.
            page_messages: f(format!(
                "SELECT m.conversation_id, m.seq, m.role, m.content, m.tool_calls, m.request_id, \
                 m.created_at FROM {s}.messages m JOIN {s}.conversations c USING (conversation_id) \
                 WHERE m.conversation_id = $1 AND m.seq > $2 \
                 AND NOT c.superseded @> jsonb_build_array(m.request_id::text) \
                 ORDER BY m.seq LIMIT $3"
            )),
            all_tasks: f(format!(
                "SELECT user_id, task_id, title, description, completed FROM {s}.tasks"
            )),
            all_conversations: f(format!(
                "SELECT conversation_id, user_id, title, message_count, created_at, updated_at, \
                 deleted, superseded FROM {s}.conversations"
            )),
            all_messages: f(format!(
                "SELECT conversation_id, seq, role, content, tool_calls, request_id, created_at \
                 FROM {s}.messages"
            )),
            all_pending: f(format!(
                "SELECT conversation_id, request_id, call_id, name, arguments, result \
                 FROM {s}.pending_tool_calls ORDER BY conversation_id, request_id, ord"
            )),
        }
    }
}

/// `sqlx::query` on one of the statements above.
pub fn query(
    sql: &Arc<str>,
) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(AssertSqlSafe(Arc::clone(sql)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("projection"), "\"projection\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        let sql = Sql::for_schema("projection_build_1");
        assert!(sql.load_tasks.contains("\"projection_build_1\".tasks"));
    }
}

//! `projection verify`: folds the log afresh, in memory, and compares the result with
//! the live read models row by row.
//!
//! The live tables and their checkpoint are read in one repeatable-read snapshot
//! (holding off a replay's swap meanwhile), and
//! the log is folded up to exactly that checkpoint, so a writer projecting meanwhile
//! does not show up as a difference. The fold is [`ReadModels::apply`] over the whole
//! log, with none of the batching, loading and writing the projector does: a
//! projector that lost or doubled an event, or a hand-edited row, shows up here.
//! Everything is held in memory, which bounds the log this can check to what fits.

use std::collections::BTreeMap;
use std::fmt::Debug;

use eventlog::{Checkpoint, EventStore};
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::error::ProjectionError;
use crate::model::{Fact, ReadModels};
use crate::schema::{self, LIVE_SCHEMA, Sql};
use crate::store::{self, CheckpointRow};

/// How a verification runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Events read per query while folding the log.
    pub batch_size: u32,
    /// Most differences described (all are counted).
    pub max_differences: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            batch_size: 5_000,
            max_differences: 50,
        }
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The live read models' checkpoint, up to which the log was folded.
    pub checkpoint: Checkpoint,
    /// Events folded from the log.
    pub events_folded: u64,
    /// Events the live read models say they applied.
    pub events_applied: u64,
    /// The first differences, described.
    pub differences: Vec<String>,
    /// How many differences there are in all.
    pub difference_count: usize,
}

impl VerifyReport {
    pub fn is_identical(&self) -> bool {
        self.difference_count == 0
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_identical() {
            return write!(
                f,
                "identical: the read models match a fresh fold of {} events (checkpoint: transaction {}, position {})",
                crate::progress::thousands(self.events_folded),
                self.checkpoint.transaction_id,
                self.checkpoint.position
            );
        }
        writeln!(
            f,
            "different: the read models differ from a fresh fold of {} events (checkpoint: transaction {}, \
             position {}) in {} place(s):",
            crate::progress::thousands(self.events_folded),
            self.checkpoint.transaction_id,
            self.checkpoint.position,
            self.difference_count
        )?;
        for difference in &self.differences {
            writeln!(f, "  - {difference}")?;
        }
        let unshown = self.difference_count - self.differences.len();
        if unshown > 0 {
            writeln!(f, "  … and {unshown} more")?;
        }
        Ok(())
    }
}

/// Compares the live read models with a fresh fold of the log.
pub async fn verify(
    pool: &PgPool,
    options: &VerifyOptions,
) -> Result<VerifyReport, ProjectionError> {
    // Table names resolve against the latest catalog, not the transaction's snapshot:
    // a swap committing while the snapshot is read would show tables whose rows it
    // cannot see. So the swap lock is held (shared, which does not hold up the live
    // writer) from before the snapshot is taken until it is read. It is a session lock
    // here, on a connection of its own that is closed afterwards, because the snapshot
    // of a repeatable-read transaction starts with its first statement.
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    let loaded = load_live(&mut conn).await;
    if let Err(error) = conn.close().await {
        tracing::debug!(%error, "failed to close the verify connection cleanly");
    }
    let (stored, live) = loaded?;
    stored.check_layout()?;

    let store = EventStore::from_pool(pool.clone());
    let mut expected = ReadModels::default();
    let mut at = Checkpoint::START;
    let mut folded = 0u64;
    'log: while at < stored.checkpoint {
        let batch = store.read_all(at, options.batch_size.max(1)).await?;
        if batch.is_empty() {
            break;
        }
        for event in &batch {
            if event.checkpoint() > stored.checkpoint {
                break 'log;
            }
            let fact = Fact::decode(event).map_err(|source| ProjectionError::Decode {
                position: event.position,
                event_id: event.event_id.as_uuid(),
                source,
            })?;
            expected.apply(&fact);
            folded += 1;
            at = event.checkpoint();
        }
    }

    let mut differences = Differences::new(options.max_differences);
    if at != stored.checkpoint {
        differences.push(format!(
            "the checkpoint (transaction {}, position {}) is not an event of the log; the fold stopped at \
             (transaction {}, position {})",
            stored.checkpoint.transaction_id, stored.checkpoint.position, at.transaction_id, at.position
        ));
    }
    if folded != stored.events_applied {
        differences.push(format!(
            "the read models count {} events applied, the log has {folded} up to their checkpoint",
            stored.events_applied
        ));
    }
    compare(&live, &expected, &mut differences);
    Ok(VerifyReport {
        checkpoint: stored.checkpoint,
        events_folded: folded,
        events_applied: stored.events_applied,
        difference_count: differences.count,
        differences: differences.shown,
    })
}

async fn load_live(
    conn: &mut PgConnection,
) -> Result<(CheckpointRow, ReadModels), ProjectionError> {
    sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
        .bind(schema::LOCK_CLASS)
        .bind(schema::SWAP_LOCK)
        .execute(&mut *conn)
        .await?;
    let mut snapshot = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    if !schema::schema_exists(&mut snapshot, LIVE_SCHEMA).await? {
        return Err(ProjectionError::NoReadModels);
    }
    let loaded = store::load_all(&mut snapshot, &Sql::for_schema(LIVE_SCHEMA)).await?;
    snapshot.commit().await?;
    Ok(loaded)
}

/// Collects differences, describing the first `max`.
#[derive(Debug)]
pub struct Differences {
    max: usize,
    pub shown: Vec<String>,
    pub count: usize,
}

impl Differences {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            shown: Vec::new(),
            count: 0,
        }
    }

    fn push(&mut self, description: String) {
        self.count += 1;
        if self.shown.len() < self.max {
            self.shown.push(description);
        }
    }
}

/// Every way `live` differs from `expected` (the fold of the log).
pub fn compare(live: &ReadModels, expected: &ReadModels, out: &mut Differences) {
    diff(
        "task",
        &live.tasks,
        &expected.tasks,
        |k| format!("{}#{}", k.user_id, k.task_id),
        out,
    );
    diff(
        "conversation",
        &live.conversations,
        &expected.conversations,
        |k| k.to_string(),
        out,
    );
    diff(
        "message",
        &live.messages,
        &expected.messages,
        |k| format!("{}/{}", k.conversation_id, k.seq),
        out,
    );
    diff(
        "pending tool calls of turn",
        &live.pending,
        &expected.pending,
        |k| format!("{}/{}", k.conversation_id, k.request_id),
        out,
    );
}

fn diff<K: Ord, V: PartialEq + Debug>(
    what: &str,
    live: &BTreeMap<K, V>,
    expected: &BTreeMap<K, V>,
    name: impl Fn(&K) -> String,
    out: &mut Differences,
) {
    for (key, live_value) in live {
        match expected.get(key) {
            None => out.push(format!(
                "{what} {} is in the read models but not in the log: {live_value:?}",
                name(key)
            )),
            Some(value) if value != live_value => out.push(format!(
                "{what} {} differs: read models have {live_value:?}, the log says {value:?}",
                name(key)
            )),
            Some(_) => {}
        }
    }
    for (key, value) in expected {
        if !live.contains_key(key) {
            out.push(format!(
                "{what} {} is missing from the read models: the log says {value:?}",
                name(key)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{TaskKey, TaskRow};

    use super::*;

    fn models(tasks: &[(u32, &str)]) -> ReadModels {
        let mut models = ReadModels::default();
        for (id, title) in tasks {
            models.tasks.insert(
                TaskKey {
                    user_id: "ada".into(),
                    task_id: *id,
                },
                TaskRow {
                    title: (*title).into(),
                    description: String::new(),
                    completed: false,
                },
            );
        }
        models
    }

    #[test]
    fn every_kind_of_difference_is_found_and_counted() {
        let live = models(&[(1, "milk"), (2, "bread"), (4, "extra")]);
        let expected = models(&[(1, "milk"), (2, "eggs"), (3, "coffee")]);
        let mut out = Differences::new(2);
        compare(&live, &expected, &mut out);
        assert_eq!(out.count, 3);
        assert_eq!(out.shown.len(), 2);
        assert!(
            out.shown[0].starts_with("task ada#2 differs"),
            "{}",
            out.shown[0]
        );
        assert!(out.shown[1].starts_with("task ada#4 is in the read models but not in the log"));

        let mut none = Differences::new(10);
        compare(&expected, &expected.clone(), &mut none);
        assert_eq!(none.count, 0);
    }
}

//! Replay benchmark: `projection replay` over a log of a million realistic events.
//!
//! `cargo bench -p projection --bench replay`. Runs against the local Postgres in a
//! fresh database, which it drops at the end. The log is seeded server-side (INSERT …
//! SELECT over generate_series) with the events task-service and agent-worker write,
//! in their real type names, schema versions and payload shapes:
//!
//! - 40 % task events: users with 30 tasks each, every task added (one in ten as the
//!   old v1 `TaskAdded`, upcast on read), renamed, then completed, deleted or
//!   re-described;
//! - 60 % conversation events: conversations of five turns, each turn a user message,
//!   one `add_task` call requested and completed, and a reply (one conversation in
//!   five ends with a failed turn).
//!
//! Streams overlap in time the way a busy deployment's do: each user's activity spans
//! a tenth of the log and each conversation a hundredth, so every batch touches
//! hundreds of streams. The log is written in ten transactions.
//!
//! Then the replay runs exactly as `projection replay` does (build into a fresh schema,
//! swap in) and the rate is reported; `projection verify` then checks the result.
//!
//! Settings (env): `BENCH_REPLAY_EVENTS` (default 1,000,000), `BENCH_REPLAY_BATCH`
//! (default 5,000), `BENCH_VERIFY` (default 1; 0 skips the verification).

use std::time::Instant;

use eventlog::EventStore;
use projection::progress::thousands;
use projection::{ProgressMode, ReplayOptions, VerifyOptions};
use testkit::TestDatabase;

const TASKS_PER_USER: i64 = 30;
const EVENTS_PER_USER: i64 = TASKS_PER_USER * 3;
const EVENTS_PER_CONVERSATION: i64 = 21;
const SEED_TRANSACTIONS: i64 = 10;

const STAGE_TABLE: &str = "CREATE UNLOGGED TABLE seed (stream_id text, stream_version bigint, \
     event_type text, schema_version int, payload jsonb, metadata jsonb, correlation_id uuid, t float8)";

/// Every event with the time it "happened" (`t` in [0, 1)), staged before it goes into
/// the log in `t` order. `$1` users, `$2` conversations.
const STAGE: &str = r#"
INSERT INTO seed
SELECT 'tasks-user' || u AS stream_id,
       (j - 1) * 3 + k + 1 AS stream_version,
       CASE WHEN k = 0 THEN 'TaskAdded'
            WHEN k = 1 THEN 'TaskUpdated'
            WHEN j % 3 = 0 THEN 'TaskDeleted'
            WHEN j % 3 = 1 THEN 'TaskCompleted'
            ELSE 'TaskUpdated' END AS event_type,
       CASE WHEN k = 0 AND j % 10 <> 0 THEN 2 ELSE 1 END AS schema_version,
       CASE WHEN k = 0 AND j % 10 = 0
                THEN jsonb_build_object('task_id', j, 'title', 'Buy groceries for the week, item ' || j)
            WHEN k = 0
                THEN jsonb_build_object('task_id', j, 'title', 'Buy groceries for the week, item ' || j,
                                        'description', 'Milk, eggs, bread and coffee')
            WHEN k = 1
                THEN jsonb_build_object('task_id', j, 'title', 'Buy groceries and flowers, item ' || j)
            WHEN j % 3 = 2
                THEN jsonb_build_object('task_id', j, 'description', 'From the market on Saturday')
            ELSE jsonb_build_object('task_id', j) END AS payload,
       jsonb_build_object('user_id', 'user' || u) AS metadata,
       NULL::uuid AS correlation_id,
       (u - 1)::float8 / $1 * 0.9 + ((j - 1) * 3 + k)::float8 * (0.1 / 90) AS t
FROM generate_series(1, $1::int) AS u, generate_series(1, 30) AS j, generate_series(0, 2) AS k
UNION ALL
SELECT 'conversation-' || md5('conversation' || c)::uuid,
       v,
       CASE WHEN v = 1 THEN 'ConversationStarted'
            WHEN part = 0 THEN 'UserMessageReceived'
            WHEN part = 1 THEN 'ToolCallRequested'
            WHEN part = 2 THEN 'ToolCallCompleted'
            WHEN turn = 4 AND c % 5 = 0 THEN 'TurnFailed'
            ELSE 'AssistantReplied' END,
       1,
       CASE WHEN v = 1 THEN jsonb_build_object('user_id', 'user' || (c % $1 + 1))
            WHEN part = 0 THEN jsonb_build_object('request_id', request_id,
                'text', 'Please add a task to buy groceries for the week, item ' || turn)
            WHEN part = 1 THEN jsonb_build_object('request_id', request_id, 'step', 0,
                'call_id', 'call_' || md5(request_id::text), 'name', 'add_task',
                'arguments', jsonb_build_object('title', 'Buy groceries, item ' || turn),
                'command_id', md5('command' || request_id::text)::uuid)
            WHEN part = 2 THEN jsonb_build_object('request_id', request_id,
                'call_id', 'call_' || md5(request_id::text), 'name', 'add_task',
                'result', jsonb_build_object('task_id', turn + 1, 'status', 'created',
                                             'title', 'Buy groceries, item ' || turn))
            WHEN turn = 4 AND c % 5 = 0 THEN jsonb_build_object('request_id', request_id,
                'code', 'model_unavailable',
                'message', 'The assistant is unavailable right now. Please try again in a moment.')
            ELSE jsonb_build_object('request_id', request_id,
                'text', 'I added "Buy groceries, item ' || turn || '" to your list. Anything else?') END,
       jsonb_build_object('user_id', 'user' || (c % $1 + 1)),
       CASE WHEN v = 1 THEN NULL ELSE request_id END,
       (c - 1)::float8 / $2 * 0.99 + (v - 1)::float8 * (0.01 / 21)
FROM generate_series(1, $2::int) AS c, generate_series(1, 21) AS v,
     LATERAL (SELECT (v - 2) / 4 AS turn, (v - 2) % 4 AS part,
                     md5('request' || c || '/' || ((v - 2) / 4))::uuid AS request_id) AS x
"#;

const LOAD_CHUNK: &str = r#"
INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, payload,
                    metadata, correlation_id)
SELECT gen_random_uuid(), stream_id, stream_version, event_type, schema_version, payload,
       metadata, correlation_id
FROM seed WHERE t >= $1 AND t < $2 ORDER BY t, stream_id, stream_version
"#;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let target = env_number("BENCH_REPLAY_EVENTS", 1_000_000);
    let batch_size = u32::try_from(env_number("BENCH_REPLAY_BATCH", 5_000))?;
    let run_verify = env_number("BENCH_VERIFY", 1) != 0;
    let users = (target * 4 / 10).div_ceil(EVENTS_PER_USER as u64).max(1);
    let conversations = (target * 6 / 10)
        .div_ceil(EVENTS_PER_CONVERSATION as u64)
        .max(1);

    println!(
        "projection replay benchmark ({} cores, load average {})",
        num_cpus(),
        load_average()
    );
    let db = TestDatabase::create().await?;
    let store = EventStore::connect(&db.url, 4).await?;
    let pool = store.pool().clone();

    let started = Instant::now();
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL work_mem = '512MB'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(STAGE_TABLE).execute(&mut *tx).await?;
    sqlx::query(STAGE)
        .bind(users as i64)
        .bind(conversations as i64)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    for chunk in 0..SEED_TRANSACTIONS {
        let (low, high) = (
            chunk as f64 / SEED_TRANSACTIONS as f64,
            (chunk + 1) as f64 / SEED_TRANSACTIONS as f64,
        );
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL work_mem = '512MB'")
            .execute(&mut *tx)
            .await?;
        sqlx::query(LOAD_CHUNK)
            .bind(low)
            .bind(if chunk + 1 == SEED_TRANSACTIONS {
                2.0
            } else {
                high
            })
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    sqlx::query("DROP TABLE seed").execute(&pool).await?;
    sqlx::query("VACUUM ANALYZE events").execute(&pool).await?;
    let (events, _) = store.size().await?;
    let task_events = users * EVENTS_PER_USER as u64;
    println!(
        "seeded {} events ({} task events of {} users, {} conversation events of {} conversations) in {:.1} s",
        thousands(events),
        thousands(task_events),
        thousands(users),
        thousands(events - task_events),
        thousands(conversations),
        started.elapsed().as_secs_f64()
    );

    let options = ReplayOptions {
        batch_size,
        progress: ProgressMode::Auto,
    };
    let summary = projection::replay(&pool, &options).await?;
    println!("{summary}");
    println!(
        "replay: {} events/s ({} events, {:.1} s, batches of {batch_size}; load average {})",
        thousands(summary.events_per_second().round() as u64),
        thousands(summary.events),
        summary.elapsed.as_secs_f64(),
        load_average()
    );
    anyhow::ensure!(
        summary.events == events,
        "the replay applied {} of {events} events",
        summary.events
    );

    if run_verify {
        let started = Instant::now();
        let report = projection::verify(
            &pool,
            &VerifyOptions {
                batch_size,
                max_differences: 10,
            },
        )
        .await?;
        let elapsed = started.elapsed();
        println!(
            "verify: {} ({} events folded in {:.1} s, {} events/s)",
            if report.is_identical() {
                "identical"
            } else {
                "DIFFERENT"
            },
            thousands(report.events_folded),
            elapsed.as_secs_f64(),
            thousands(
                projection::progress::per_second(report.events_folded, elapsed).round() as u64
            )
        );
        anyhow::ensure!(report.is_identical(), "verify found differences:\n{report}");
    }
    pool.close().await;
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

//! SQL statements the stack runs per turn, every service together, counted by
//! pg_stat_statements in the stack's own database (a fresh one, so nothing else runs
//! there). Every statement a service sends counts once per execution, BEGIN and COMMIT
//! included: each is a round trip to Postgres.
//!
//! pg_stat_statements must be in the server's `shared_preload_libraries`
//! (`deploy/local/services.sh` sees to it). Where it is not, the bench says why instead
//! of a number.

use anyhow::Context;
use sqlx::{Connection, PgConnection};

/// Statements shown by their number of calls.
const TOP: usize = 10;
/// Characters of a statement's text shown.
const SHOWN_CHARS: usize = 100;

/// The counters of this database only, never the other databases on the server.
const THIS_DATABASE: &str = "(SELECT oid FROM pg_database WHERE datname = current_database())";

/// Counting statements in one database, from a reset onward.
pub(crate) struct Statements {
    connection: PgConnection,
}

/// What the stack ran since the counters were reset.
pub(crate) struct Counts {
    pub calls: u64,
    /// The most called statements: calls and the normalised text, shortened.
    pub top: Vec<(u64, String)>,
}

impl Statements {
    /// Makes sure the extension is there and resets its counters for the database at
    /// `url`; the error says why statements cannot be counted.
    pub(crate) async fn start(url: &str) -> anyhow::Result<Self> {
        let mut connection = PgConnection::connect(url)
            .await
            .context("failed to connect to the stack's database")?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut connection)
            .await
            .context("failed to create the extension pg_stat_statements")?;
        // pg_stat_statements_reset(userid, dbid, queryid): 0 matches any.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT pg_stat_statements_reset(0, {THIS_DATABASE}, 0)"
        )))
        .execute(&mut connection)
        .await
        .context("failed to reset pg_stat_statements (is it in shared_preload_libraries?)")?;
        Ok(Self { connection })
    }

    /// The statements run since [`Statements::start`], leaving out this module's own.
    pub(crate) async fn read(mut self) -> anyhow::Result<Counts> {
        let rows: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT calls, query FROM pg_stat_statements \
             WHERE dbid = {THIS_DATABASE} AND query NOT LIKE '%pg_stat_statements%' \
             ORDER BY calls DESC"
        )))
        .fetch_all(&mut self.connection)
        .await
        .context("failed to read pg_stat_statements")?;
        let calls = rows.iter().map(|(calls, _)| *calls as u64).sum();
        let top = rows
            .into_iter()
            .take(TOP)
            .map(|(calls, query)| (calls as u64, shorten(&query)))
            .collect();
        Ok(Counts { calls, top })
    }
}

impl Counts {
    pub(crate) fn report(&self, turns: u64) {
        println!(
            "SQL statements during the concurrent run (pg_stat_statements, all services): \
             {} in {turns} turns = {:.1} per turn",
            self.calls,
            self.calls as f64 / turns.max(1) as f64
        );
        println!("  {:>9} {:>9}  statement", "calls", "per turn");
        for (calls, query) in &self.top {
            println!(
                "  {calls:>9} {:>9.2}  {query}",
                *calls as f64 / turns.max(1) as f64
            );
        }
    }
}

/// The statement on one line, at most [`SHOWN_CHARS`] characters. A long select list
/// is elided: what tells statements apart is what they read and how.
fn shorten(query: &str) -> String {
    let mut line = query.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(columns) = line.strip_prefix("SELECT ")
        && let Some((columns, rest)) = columns.split_once(" FROM ")
        && columns.chars().count() > 30
    {
        line = format!("SELECT … FROM {rest}");
    }
    match line.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

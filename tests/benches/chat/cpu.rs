//! CPU time of each process during a run, read from /proc (Linux): user + system time in
//! clock ticks, sampled before and after the run.
//!
//! The stack's services are its own processes, known by pid. Postgres and NATS are the
//! machine's servers, found in /proc; whatever else uses them meanwhile (another
//! engineer's tests) is counted too, so their rows are an upper bound for this stack.

use std::time::Duration;

use system_tests::{Stack, listening_pid};

/// The rows of the report, in this order; agent-worker replicas are summed in one row.
const SERVICES: [&str; 5] = [
    "gateway",
    "agent-worker",
    "task-service",
    "projection",
    "offline-llm",
];

/// What is measured: one row of the report each.
pub(crate) struct Processes {
    rows: Vec<Row>,
    /// Clock ticks per second (`getconf CLK_TCK`).
    ticks_per_second: u64,
}

struct Row {
    name: String,
    pids: Vec<u32>,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    /// The processes' own time.
    Own,
    /// A postmaster: its own time, the time of its children that ended (backends come
    /// and go; the kernel adds an exited child's time to its parent's cutime/cstime) and
    /// the time of its live children.
    Postmaster,
}

/// Clock ticks each row has used so far; `None` where a process could not be read.
pub(crate) struct Sample(Vec<Option<u64>>);

impl Processes {
    /// The stack's services, Postgres's postmaster and the nats-server the stack uses.
    pub(crate) fn of(stack: &Stack) -> Self {
        let pids = stack.pids();
        let mut rows: Vec<Row> = SERVICES
            .into_iter()
            .map(|service| Row {
                name: service.to_owned(),
                pids: pids
                    .iter()
                    // Replicas are named `agent-worker-0`, `agent-worker-1`, …
                    .filter(|(name, _)| {
                        *name == service || name.starts_with(&format!("{service}-"))
                    })
                    .map(|(_, &pid)| pid)
                    .collect(),
                kind: Kind::Own,
            })
            .collect();
        if let Some(workers) = rows.iter_mut().find(|row| row.name == "agent-worker") {
            workers.name = format!("agent-worker x{}", workers.pids.len());
        }
        rows.push(Row {
            name: "postgres".to_owned(),
            pids: postmasters(),
            kind: Kind::Postmaster,
        });
        rows.push(Row {
            name: "nats-server".to_owned(),
            pids: nats_server(&stack.bus.nats_url).into_iter().collect(),
            kind: Kind::Own,
        });
        Self {
            rows,
            ticks_per_second: ticks_per_second(),
        }
    }

    pub(crate) fn sample(&self) -> Sample {
        Sample(self.rows.iter().map(Row::ticks).collect())
    }

    /// Prints the CPU each process used between `before` and `after`, in total and per
    /// turn, and their sum.
    pub(crate) fn report(&self, before: &Sample, after: &Sample, turns: u64, elapsed: Duration) {
        let ms = |ticks: u64| ticks as f64 * 1000.0 / self.ticks_per_second as f64;
        let per_turn = |ms: f64| ms / turns.max(1) as f64;
        println!(
            "CPU per process during the concurrent run ({turns} turns in {:.1} s; /proc \
             utime+stime, {} ticks/s):",
            elapsed.as_secs_f64(),
            self.ticks_per_second
        );
        println!("  {:<18} {:>10} {:>12}", "process", "CPU ms", "CPU ms/turn");
        let mut sum = 0.0;
        for ((row, before), after) in self.rows.iter().zip(&before.0).zip(&after.0) {
            match (before, after) {
                (Some(before), Some(after)) => {
                    let used = ms(after.saturating_sub(*before));
                    sum += used;
                    println!("  {:<18} {:>10.0} {:>12.2}", row.name, used, per_turn(used));
                }
                _ if row.pids.is_empty() => println!("  {:<18} not found", row.name),
                _ => println!(
                    "  {:<18} not measured (pid {:?} unreadable)",
                    row.name, row.pids
                ),
            }
        }
        println!("  {:<18} {:>10.0} {:>12.2}", "sum", sum, per_turn(sum));
        println!(
            "  (the sum is {:.2} of {} cores busy on average; postgres and nats-server are \
             the machine's servers, shared with anything else using them)",
            sum / 1000.0 / elapsed.as_secs_f64(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
    }
}

impl Row {
    fn ticks(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&pid| self.kind.ticks(pid)).sum()
    }
}

impl Kind {
    fn ticks(self, pid: u32) -> Option<u64> {
        let stat = Stat::read(pid)?;
        match self {
            Self::Own => Some(stat.own),
            Self::Postmaster => {
                let children: u64 = all_processes()
                    .filter(|(_, child)| child.ppid == pid)
                    .map(|(_, child)| child.own)
                    .sum();
                Some(stat.own + stat.children + children)
            }
        }
    }
}

/// The fields of /proc/<pid>/stat this module needs (proc(5)).
struct Stat {
    comm: String,
    ppid: u32,
    /// utime + stime.
    own: u64,
    /// cutime + cstime: children that ended and were waited for.
    children: u64,
}

impl Stat {
    fn read(pid: u32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split at
        // the last ')'.
        let (head, tail) = text.rsplit_once(')')?;
        let (_, comm) = head.split_once('(')?;
        let fields: Vec<&str> = tail.split_whitespace().collect();
        // fields[0] is field 3 of proc(5), `state`.
        let field = |n: usize| -> Option<u64> {
            let value: i64 = fields.get(n - 3)?.parse().ok()?;
            Some(value.max(0) as u64)
        };
        Some(Self {
            comm: comm.to_owned(),
            ppid: u32::try_from(field(4)?).ok()?,
            own: field(14)? + field(15)?,
            children: field(16)? + field(17)?,
        })
    }
}

fn all_processes() -> impl Iterator<Item = (u32, Stat)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((pid, Stat::read(pid)?))
        })
}

/// Every process named `postgres` whose parent is not: the postmaster of each cluster.
fn postmasters() -> Vec<u32> {
    all_processes()
        .filter(|(_, stat)| stat.comm == "postgres")
        .filter(|(_, stat)| Stat::read(stat.ppid).is_none_or(|parent| parent.comm != "postgres"))
        .map(|(pid, _)| pid)
        .collect()
}

/// The nats-server listening on the port of `url`, or else the one nats-server running.
fn nats_server(url: &str) -> Option<u32> {
    let port = url
        .trim_end_matches('/')
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok());
    if let Some(pid) = port.and_then(listening_pid)
        && Stat::read(pid).is_some_and(|stat| stat.comm == "nats-server")
    {
        return Some(pid);
    }
    let mut named = all_processes().filter(|(_, stat)| stat.comm == "nats-server");
    match (named.next(), named.next()) {
        (Some((pid, _)), None) => Some(pid),
        _ => None,
    }
}

/// `getconf CLK_TCK`; 100, Linux's value nearly everywhere, if that cannot run.
fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

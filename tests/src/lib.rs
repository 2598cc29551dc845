//! The harness of the system tests: starts every taskchat service as a real process
//! (the binaries `cargo build --workspace --bins` produced) against the machine's NATS
//! and Postgres, isolated by a fresh database and a unique subject prefix, and talks
//! to them only through their public interfaces.
//!
//! Processes are killed when the [`Stack`] is dropped. Each service's output goes to
//! `target/system-tests/<prefix>/<service>.log`, named in every failure message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use platform::auth::JwtKeys;
use testkit::{NatsServer, TestBus, TestDatabase, free_port};
use tokio::process::{Child, Command};

/// The secret the stack's services sign and verify tokens with.
pub const JWT_SECRET: &str = "system-tests-secret-of-at-least-32-bytes";

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub workers: usize,
    /// Added latency of every offline-llm completion.
    pub llm_latency_ms: u64,
    pub dev_login: bool,
    /// The gateway's wait for a reply before it answers 504.
    pub reply_timeout_secs: u64,
    /// More environment for every service (a setting under test), set last.
    pub env: Vec<(&'static str, String)>,
    /// Run the stack on a NATS server of its own ([`Stack::nats_server`]), which the
    /// test may kill and restart, instead of the machine's shared one.
    pub own_nats: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            llm_latency_ms: 0,
            dev_login: true,
            reply_timeout_secs: 30,
            env: Vec::new(),
            own_nats: false,
        }
    }
}

/// Why a start attempt failed.
#[derive(Debug)]
enum StartError {
    /// A port picked for a service was bound by another process first.
    PortTaken(anyhow::Error),
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for StartError {
    fn from(error: E) -> Self {
        Self::Failed(error.into())
    }
}

/// The process listening on 127.0.0.1:`port`, read from /proc (Linux): tells whether a
/// port picked free was bound by the process it was meant for.
pub fn listening_pid(port: u16) -> Option<u32> {
    // /proc/net/tcp: "sl local_address rem_address st … inode", addresses in hex with
    // the IPv4 address little-endian; st 0A is LISTEN.
    let wanted = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&wanted.as_str()) && fields.get(3) == Some(&"0A"))
            .then(|| fields.get(9).map(|inode| format!("socket:[{inode}]")))
            .flatten()
    })?;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            fds.flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_str() == Some(inode.as_str()))
                })
                .then_some(pid)
        })
}

/// One running service process.
#[derive(Debug)]
struct Service {
    child: Child,
    log: PathBuf,
}

/// Every service of taskchat, running.
#[derive(Debug)]
pub struct Stack {
    /// Base URL of the gateway, e.g. `http://127.0.0.1:40123`.
    pub gateway: String,
    /// task-service's MCP endpoint.
    pub mcp: String,
    /// offline-llm's OpenAI-compatible base URL (`…/v1`).
    pub llm: String,
    pub db: TestDatabase,
    pub bus: TestBus,
    /// The stack's own NATS server, with [`StackOptions::own_nats`]; after `bus`, so
    /// that the bus cleans up before the server goes.
    nats: Option<NatsServer>,
    pub keys: JwtKeys,
    pub options: StackOptions,
    http: reqwest::Client,
    logs: PathBuf,
    env: BTreeMap<String, String>,
    services: BTreeMap<String, Service>,
}

/// Where cargo put the workspace's binaries: next to the directory of this test binary.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the services first (`cargo build --workspace --bins`, which \
         `make test` does)",
        path.display()
    );
    path
}

impl Stack {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(StackOptions::default()).await
    }

    /// Starts the stack. Ports are picked free but may be taken by a parallel test
    /// before a service binds them; such a start is detected (the port is not our
    /// process's) and the whole stack is started again on other ports.
    pub async fn start_with(options: StackOptions) -> anyhow::Result<Self> {
        const ATTEMPTS: usize = 3;
        let mut last_error = None;
        for attempt in 1..=ATTEMPTS {
            match Self::try_start(options.clone()).await {
                Ok(stack) => return Ok(stack),
                Err(StartError::PortTaken(error)) => {
                    eprintln!("stack start attempt {attempt} lost a port race: {error:#}");
                    last_error = Some(error);
                }
                Err(StartError::Failed(error)) => return Err(error),
            }
        }
        Err(last_error
            .expect("at least one attempt")
            .context("every start lost a port race"))
    }

    async fn try_start(options: StackOptions) -> Result<Self, StartError> {
        let db = TestDatabase::create().await?;
        let nats = if options.own_nats {
            Some(NatsServer::start().await?)
        } else {
            None
        };
        let bus = match &nats {
            Some(server) => TestBus::at(server.url.clone()).await?,
            None => TestBus::new().await?,
        };
        let logs = binary("gateway")
            .parent()
            .expect("target dir")
            .join("../system-tests")
            .join(&bus.prefix);
        std::fs::create_dir_all(&logs)?;

        let llm_port = free_port();
        let task_port = free_port();
        let gateway_port = free_port();
        let llm = format!("http://127.0.0.1:{llm_port}/v1");
        let mcp = format!("http://127.0.0.1:{task_port}/mcp");
        let gateway = format!("http://127.0.0.1:{gateway_port}");

        let env: BTreeMap<String, String> = [
            ("NATS_URL", bus.nats_url.clone()),
            ("TASKCHAT_SUBJECT_PREFIX", bus.prefix.clone()),
            ("DATABASE_URL", db.url.clone()),
            ("DATABASE_MAX_CONNECTIONS", "5".into()),
            ("AUTH_JWT_SECRET", JWT_SECRET.into()),
            ("RUST_LOG", "info,sqlx=warn".into()),
            ("OFFLINE_LLM_LISTEN", format!("127.0.0.1:{llm_port}")),
            ("OFFLINE_LLM_LATENCY_MS", options.llm_latency_ms.to_string()),
            ("TASK_SERVICE_LISTEN", format!("127.0.0.1:{task_port}")),
            ("LLM_BASE_URL", llm.clone()),
            ("LLM_MODEL", "offline-llm".into()),
            ("GATEWAY_LISTEN", format!("127.0.0.1:{gateway_port}")),
            ("AUTH_DEV_LOGIN", options.dev_login.to_string()),
            (
                "GATEWAY_REPLY_TIMEOUT_SECS",
                options.reply_timeout_secs.to_string(),
            ),
        ]
        .into_iter()
        .chain(options.env.iter().cloned())
        .map(|(k, v)| (k.to_owned(), v))
        .collect();

        let mut stack = Self {
            gateway,
            mcp,
            llm,
            db,
            bus,
            nats,
            keys: JwtKeys::new(JWT_SECRET.as_bytes()),
            options: options.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            logs,
            env,
            services: BTreeMap::new(),
        };
        stack.spawn("offline-llm", "offline-llm", &[])?;
        stack
            .wait_listening("offline-llm", llm_port, "/healthz")
            .await?;
        stack.spawn("task-service", "task-service", &[])?;
        stack
            .wait_listening("task-service", task_port, "/healthz")
            .await?;
        stack.spawn("projection", "projection", &[])?;
        for worker in 0..options.workers {
            stack.spawn(&format!("agent-worker-{worker}"), "agent-worker", &[])?;
        }
        stack.spawn("gateway", "gateway", &[])?;
        stack
            .wait_listening("gateway", gateway_port, "/readyz")
            .await?;
        Ok(stack)
    }

    /// Starts `binary` as the service called `name` with the stack's environment.
    pub fn spawn(&mut self, name: &str, binary_name: &str, args: &[&str]) -> anyhow::Result<()> {
        let log = self.logs.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut command = Command::new(binary(binary_name));
        command
            .args(args)
            .envs(&self.env)
            // The system tests never reach a real provider.
            .env_remove("OPENAI_API_KEY")
            .env_remove("GEMINI_API_KEY")
            .env_remove("LLM_API_KEY")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {name}"))?;
        self.services
            .insert(name.to_owned(), Service { child, log });
        Ok(())
    }

    /// The stack's own NATS server (started with [`StackOptions::own_nats`]).
    pub fn nats_server(&mut self) -> &mut NatsServer {
        self.nats
            .as_mut()
            .expect("the stack was started with StackOptions::own_nats")
    }

    /// Kills a service with SIGKILL and waits for it to be gone.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let mut service = self
            .services
            .remove(name)
            .with_context(|| format!("no service {name}"))?;
        service.child.kill().await?;
        Ok(())
    }

    /// Kills the gateway (SIGKILL) and starts it again on the same address; returns
    /// once it is ready.
    pub async fn restart_gateway(&mut self) -> anyhow::Result<()> {
        self.kill("gateway").await?;
        self.spawn("gateway", "gateway", &[])?;
        let port: u16 = self
            .gateway
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .context("the gateway's URL has a port")?;
        self.wait_listening("gateway", port, "/readyz")
            .await
            .map_err(|error| match error {
                StartError::PortTaken(error) | StartError::Failed(error) => error,
            })
    }

    /// Runs a one-off command of a service binary (e.g. `projection verify`) against
    /// the stack, to the end within [`ONE_OFF_LIMIT`]: its stdout; panics with its
    /// output when it fails, is killed or takes longer.
    pub async fn run_to_end(&self, binary_name: &str, args: &[&str]) -> String {
        let what = format!("{binary_name} {}", args.join(" "));
        let mut command = Command::new(binary(binary_name));
        command.args(args).envs(&self.env);
        run_checked(&what, &mut command, ONE_OFF_LIMIT).await
    }

    /// The process id of each running service, by service name (`gateway`,
    /// `agent-worker-0`, …): for measuring what each process costs.
    pub fn pids(&self) -> BTreeMap<String, u32> {
        self.services
            .iter()
            .filter_map(|(name, service)| Some((name.clone(), service.child.id()?)))
            .collect()
    }

    /// The environment the stack's services run with.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Waits until `name` listens on `port` (its own process: a parallel test may have
    /// taken the port first) and answers `path` with a success.
    async fn wait_listening(
        &mut self,
        name: &str,
        port: u16,
        path: &str,
    ) -> Result<(), StartError> {
        let url = format!("http://127.0.0.1:{port}{path}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let service = self.services.get_mut(name).expect("spawned before waiting");
            let log = service.log.display().to_string();
            if let Some(status) = service.child.try_wait().map_err(anyhow::Error::from)? {
                let error = anyhow::anyhow!("{name} exited with {status}; see {log}");
                return Err(if listening_pid(port).is_some() {
                    StartError::PortTaken(error)
                } else {
                    StartError::Failed(error)
                });
            }
            let pid = service.child.id();
            match listening_pid(port) {
                Some(owner) if Some(owner) == pid => {
                    if let Ok(response) = self.http.get(&url).send().await
                        && response.status().is_success()
                    {
                        return Ok(());
                    }
                }
                // Someone else holds the port: ours will fail to bind and exit.
                Some(_) | None => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(StartError::Failed(anyhow::anyhow!(
                    "{name} did not answer {url} within 60 s; see {}",
                    self.logs.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A bearer token for `user`, valid for an hour.
    pub fn token(&self, user: &str) -> String {
        self.keys
            .mint(&testkit::user_id(user), Duration::from_secs(3600))
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Where this stack's service logs are.
    pub fn logs(&self) -> &Path {
        &self.logs
    }

    /// `POST /api/{user}/chat` as `user`; returns the status and the JSON body.
    pub async fn chat(
        &self,
        user: &str,
        message: &str,
        conversation_id: Option<&str>,
    ) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
        let mut body = serde_json::json!({ "message": message });
        if let Some(id) = conversation_id {
            body["conversation_id"] = id.into();
        }
        json_answer(
            self.http
                .post(format!("{}/api/{user}/chat", self.gateway))
                .bearer_auth(self.token(user))
                .json(&body),
        )
        .await
    }

    /// `GET {path}` on the gateway as `user`; returns the status and the JSON body.
    pub async fn get(
        &self,
        user: &str,
        path: &str,
    ) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
        json_answer(
            self.http
                .get(format!("{}{path}", self.gateway))
                .bearer_auth(self.token(user)),
        )
        .await
    }

    /// [`Self::chat`] for a turn that must be answered: asserts 200 (naming the body
    /// otherwise) and returns the answer.
    pub async fn chat_ok(
        &self,
        user: &str,
        message: &str,
        conversation_id: Option<&str>,
    ) -> serde_json::Value {
        let (status, answer) = self
            .chat(user, message, conversation_id)
            .await
            .unwrap_or_else(|error| panic!("chat {message:?} as {user}: {error:#}"));
        assert_eq!(
            status,
            reqwest::StatusCode::OK,
            "chat {message:?}: {answer}"
        );
        answer
    }

    /// [`Self::get`] for a read that must succeed: asserts 200 (naming the body
    /// otherwise) and returns the body.
    pub async fn get_ok(&self, user: &str, path: &str) -> serde_json::Value {
        let (status, body) = self
            .get(user, path)
            .await
            .unwrap_or_else(|error| panic!("GET {path} as {user}: {error:#}"));
        assert_eq!(status, reqwest::StatusCode::OK, "GET {path}: {body}");
        body
    }
}

/// Sends `request`; returns the status and the JSON body (an error names a body that
/// is not JSON).
async fn json_answer(
    request: reqwest::RequestBuilder,
) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    let json =
        serde_json::from_str(&text).with_context(|| format!("non-JSON body ({status}): {text}"))?;
    Ok((status, json))
}

/// A whole-number setting of a benchmark from the environment: `default` when unset,
/// an error when it is not a number or is below `min`.
pub fn env_number<T>(name: &str, default: T, min: T) -> anyhow::Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Ok(raw) = std::env::var(name) else {
        return Ok(default);
    };
    let value: T = raw
        .trim()
        .parse()
        .ok()
        .with_context(|| format!("{name}={raw:?} is not a whole number"))?;
    if value < min {
        anyhow::bail!("{name}={value} is below the minimum of {min}");
    }
    Ok(value)
}

/// A program of the Python venv that deploy/local/python-deps.sh installs (`python`,
/// `schemathesis`): `$TASKCHAT_VENV/bin/<name>`, by default under
/// `$HOME/.cache/taskchat/venv`. Panics, saying how to install it, when it is missing:
/// a test that needs it must fail, never pass without running.
pub fn venv_program(name: &str) -> PathBuf {
    let venv = std::env::var_os("TASKCHAT_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/taskchat/venv"))
        })
        .expect("neither TASKCHAT_VENV nor HOME is set");
    let program = venv.join("bin").join(name);
    assert!(
        program.exists(),
        "{} is missing: install the Python test tools with deploy/local/python-deps.sh \
         (`make test` does)",
        program.display()
    );
    program
}

/// A file of the repository, by its path from the workspace root.
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// How long a one-off command of a service binary run by [`Stack::run_to_end`] (a
/// replay or verify of a test's few events) may take.
const ONE_OFF_LIMIT: Duration = Duration::from_secs(120);

/// Runs `command` to the end within `limit`, with its output captured; panics with the
/// output when it fails, is killed or takes longer.
pub async fn run_checked(what: &str, command: &mut Command, limit: Duration) -> String {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|error| panic!("failed to start {what}: {error}"));
    testkit::assert_success(what, &output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

//! A NATS server of a test's own, for tests that stop and restart the bus: the
//! machine's shared server cannot be restarted under other tests.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// Where Debian installs the server; `NATS_SERVER_BIN` overrides it.
const DEFAULT_BINARY: &str = "/usr/sbin/nats-server";

/// A `nats-server -js` process on a free port with its own JetStream store directory,
/// which survives a [`NatsServer::restart`] (as a real server's disk does). Killed,
/// and its directory removed, when dropped.
#[derive(Debug)]
pub struct NatsServer {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    port: u16,
    store: PathBuf,
    process: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        let port = crate::free_port();
        let store = std::env::temp_dir().join(format!("taskchat-nats-{}", crate::random_hex12()));
        std::fs::create_dir_all(&store)
            .with_context(|| format!("failed to create {}", store.display()))?;
        let mut server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store,
            process: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// Kills the server at once (SIGKILL: no lame-duck, no flush), as a crash would.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill().await.context("failed to kill nats-server")?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and store after [`Self::kill`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| DEFAULT_BINARY.to_owned());
        let process = Command::new(&binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {binary}"))?;
        self.process = Some(process);
        // The port answers once the server (and JetStream, which starts first) is up.
        let port = self.port;
        crate::eventually(
            Duration::from_secs(10),
            "nats-server to listen",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(process) = self.process.as_mut() {
            let _ = process.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

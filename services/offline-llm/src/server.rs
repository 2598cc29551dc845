//! Binding and serving: [`App`] owns the listener so that a test can bind port 0,
//! read the real address, and then run the same server `main` runs.

use std::io;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::routes;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("failed to bind {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: io::Error,
    },
    /// The bound socket has no readable local address.
    #[error("failed to read the listener's local address")]
    LocalAddr(#[source] io::Error),
}

/// A bound, not yet running offline-llm server.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
}

impl App {
    /// Binds `config.listen` and prepares the routes.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(Error::LocalAddr)?;
        Ok(Self {
            listener,
            local_addr,
            router: routes::router(config.latency()),
        })
    }

    /// The address actually bound (differs from the config's when it asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL an OpenAI client should use, e.g. `http://127.0.0.1:8089/v1`.
    pub fn api_base(&self) -> String {
        format!("http://{}/v1", self.local_addr)
    }

    /// Serves until `shutdown` is cancelled, then finishes in-flight requests.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        run(self.listener, self.router, shutdown).await
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    platform::http::serve(
        listener,
        router,
        platform::http::HttpConfig::default(),
        shutdown.cancelled_owned(),
    )
    .await;
    Ok(())
}

//! Serving HTTP: the one accept loop behind every service's axum router.
//!
//! `axum::serve` runs hyper without a timer, so a client can hold a connection (and
//! its memory and file descriptor) for as long as it likes by sending its request
//! head slowly, or by sending nothing at all on an idle keep-alive connection. Here
//! hyper's HTTP/1 server runs with a timer: a connection whose next request head has
//! not fully arrived [`HttpConfig::header_read_timeout`] after it was awaited is
//! closed. Responses are not affected, so long SSE streams stay open.
//!
//! A slow request *body* is the router's business: only the router can answer it
//! with its own error shape (the gateway answers 408 with a JSON body).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Connection-level limits of an HTTP server.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct HttpConfig {
    /// Seconds a connection may take to send a request head, and may stay idle
    /// between requests, before it is closed.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_SECS", default_value_t = Self::DEFAULT_HEADER_READ_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: Self::DEFAULT_HEADER_READ_TIMEOUT_SECS,
        }
    }
}

impl HttpConfig {
    const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }
}

/// Header fields hyper parses before it gives up on a request with its own bare 431.
/// Well above what a router refuses with a proper error body (the gateway: 100).
pub const MAX_HEADER_FIELDS: usize = 256;

/// How long to wait before accepting again after the listener failed (out of file
/// descriptors, say): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and
/// waits for the open connections to finish their requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout())
        .max_headers(MAX_HEADER_FIELDS);
    let connections = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "failed to accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small writes (SSE events, short JSON answers) go out at once instead of
        // waiting for the peer's delayed ACK.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "failed to set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let connection = connections.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // Clients that go away or time out end here; nothing to act on.
                tracing::debug!(error = %crate::error_chain(&error), "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}

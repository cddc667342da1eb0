//! The operations endpoint on `HTTP_ADDR`:`HTTP_PORT`: `/healthz` (the process is alive), `/readyz` (every
//! queue consumes and Redis answers; 503 otherwise and during shutdown, with a JSON body saying why) and
//! `/metrics` (Prometheus text format).
//!
//! The port is reachable by anything on the network, so it is hardened against clients that hold
//! connections open without finishing a request (the endpoint shares the process's file descriptors with
//! Redis and the plugins, and a worker that cannot open a socket cannot reconnect to Redis):
//!
//! - **header-read timeout** (hyper's `header_read_timeout`, `HTTP_HEADER_TIMEOUT_MS`): a request head must
//!   arrive in full within it. Hyper starts that clock whenever it waits for a head, so it is also the idle
//!   timeout of a keep-alive connection between two requests;
//! - **request timeout** (tower-http's `TimeoutLayer`): a handler answers within it or the client gets 408;
//! - **connection age**: a connection is asked to close gracefully after [`MAX_CONNECTION_AGE`] however busy
//!   it is (clients reconnect), so a slow reader cannot hold one for ever;
//! - **connection cap** (`HTTP_MAX_CONNECTIONS`, lowered to keep [`FD_RESERVE`] descriptors free): at the cap
//!   the endpoint stops accepting, so further clients wait in the kernel's backlog (which costs the process no
//!   descriptor) until a connection closes; reaching the cap is logged once per episode.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::TimeoutLayer;

use crate::runtime::health::Health;

/// Descriptors kept free for Redis connections, plugin clients (database pools, HTTP) and log files.
pub const FD_RESERVE: u64 = 256;
/// The fewest connections the endpoint is allowed even under a tiny descriptor limit (probes must get in).
const MIN_CONNECTIONS: usize = 4;
/// How long a handler may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After this a connection is asked to close (after its current response).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// How long a connection asked to close may take to do so before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (typically out of descriptors) so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(250);

/// How the endpoint treats its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client has to send a request head, and the idle timeout between keep-alive requests.
    pub header_timeout: Duration,
}

/// The connection cap actually used: the operator's, lowered so that [`FD_RESERVE`] descriptors stay free
/// under the process's descriptor limit `nofile` (`None` when unknown). Also says whether it was lowered.
pub fn connection_cap(configured: usize, nofile: Option<u64>) -> (usize, bool) {
    let Some(limit) = nofile else {
        return (configured.max(1), false);
    };
    let room = usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    let cap = configured.min(room.max(MIN_CONNECTIONS)).max(1);
    (cap, cap < configured)
}

/// Raises the soft descriptor limit to the hard one (the usual default of 1024 is low for a server) and
/// returns the soft limit in force, if it can be read.
pub fn raise_descriptor_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the file-descriptor limit");
            rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
        }
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// Binds the endpoint on `addr` (`HTTP_ADDR`, all interfaces by default: a container's port is published by
/// the orchestrator).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("binding the health/metrics endpoint on {addr} (HTTP_ADDR, HTTP_PORT)")
    })?;
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(%addr, "health and metrics endpoint listening");
    Ok(listener)
}

/// Serves until the process exits; errors are logged, the worker keeps running without the endpoint.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: PrometheusHandle,
    limits: Limits,
) {
    let app = router(health, metrics);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut at_cap = false;
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !at_cap {
                    at_cap = true;
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        header_timeout_ms = limits.header_timeout.as_millis() as u64,
                        "health/metrics endpoint at its connection cap (HTTP_MAX_CONNECTIONS); new clients \
                         wait until a connection closes"
                    );
                }
                match Arc::clone(&slots).acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => return,
                }
            }
        };
        if at_cap && slots.available_permits() > 0 {
            at_cap = false;
            tracing::info!("health/metrics endpoint below its connection cap again");
        }
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "health/metrics endpoint cannot accept a connection");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                () = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        });
    }
}

fn router(health: Arc<Health>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(AppState { health, metrics })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.health.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&readiness).unwrap_or_else(|_| "{}".to_owned());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_status(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }

    async fn start(health: Arc<Health>, limits: Limits, handle: PrometheusHandle) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, health, handle, limits));
        addr
    }

    const LIMITS: Limits = Limits {
        max_connections: 8,
        header_timeout: Duration::from_millis(300),
    };

    #[tokio::test]
    async fn endpoints_answer() {
        let health = Health::new(["q".to_owned()], vec![], None);
        let recorder = PrometheusBuilder::new().build_recorder();
        let addr = start(Arc::clone(&health), LIMITS, recorder.handle()).await;

        assert_eq!(get_status(addr, "/healthz").await, (200, "ok\n".to_owned()));
        let (status, body) = get_status(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("\"ready\":false"), "{body}");
        // The health setters also set the gauges; record them into this test's recorder.
        metrics::with_local_recorder(&recorder, || {
            health.set_redis_up(true);
            health.set_consuming("q", true);
        });
        assert_eq!(get_status(addr, "/readyz").await.0, 200);

        let (status, body) = get_status(addr, "/metrics").await;
        assert_eq!(status, 200);
        for sample in [
            "frostguard_redis_up 1",
            "frostguard_queue_consuming{queue=\"q\"} 1",
        ] {
            assert!(
                body.lines().any(|l| l == sample),
                "/metrics lacks the sample line {sample:?}:\n{body}"
            );
        }

        health.set_shutting_down();
        assert_eq!(get_status(addr, "/readyz").await.0, 503);
    }

    /// Clients that send half a request head are disconnected after the header timeout, and while they
    /// hold every slot a new client waits rather than failing; once they are gone it is served.
    #[tokio::test]
    async fn half_sent_heads_are_cut_off_and_the_cap_holds() {
        let health = Health::new(["q".to_owned()], vec![], None);
        let addr = start(
            health,
            LIMITS,
            PrometheusBuilder::new().build_recorder().handle(),
        )
        .await;
        let mut idle = Vec::new();
        for _ in 0..LIMITS.max_connections * 2 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            idle.push(s);
        }
        // The first ones were accepted and must be closed by the server (EOF or reset), not held.
        let mut first = idle.remove(0);
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(10), first.read(&mut buf))
            .await
            .expect("server never closed a connection that sent half a head");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        let answered = tokio::time::timeout(Duration::from_secs(20), get_status(addr, "/healthz"))
            .await
            .expect("healthz never answered while idle clients came and went");
        assert_eq!(answered.0, 200);
    }

    #[test]
    fn connection_cap_keeps_a_descriptor_reserve() {
        // (configured, nofile) -> (cap, lowered)
        let table = [
            (64, None, (64, false)),
            (64, Some(1024), (64, false)),
            (1000, Some(1024), (768, true)),
            (64, Some(300), (44, true)),
            (64, Some(100), (MIN_CONNECTIONS, true)),
            (2, Some(100), (2, false)),
            (0, Some(1024), (1, false)),
        ];
        for (configured, nofile, want) in table {
            assert_eq!(
                connection_cap(configured, nofile),
                want,
                "{configured} {nofile:?}"
            );
        }
    }
}

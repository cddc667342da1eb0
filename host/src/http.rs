//! The operations endpoint on `HTTP_PORT`: `/healthz` (the process is alive), `/readyz` (every queue
//! consumes and Redis answers; 503 otherwise and during shutdown, with a JSON body saying why) and
//! `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::runtime::health::Health;

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// Binds the endpoint on all interfaces (a container's port is published by the orchestrator).
pub async fn bind(port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the health/metrics endpoint on {addr} (HTTP_PORT)"))?;
    tracing::info!(%addr, "health and metrics endpoint listening");
    Ok(listener)
}

/// Serves until the process exits; errors are logged, the worker keeps running without the endpoint.
pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: PrometheusHandle) {
    if let Err(e) = axum::serve(listener, router(health, metrics)).await {
        tracing::error!(error = %e, "health/metrics endpoint stopped");
    }
}

fn router(health: Arc<Health>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
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

    async fn get_status(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn endpoints_answer() {
        let health = Health::new(["q".to_owned()], vec![], None);
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::clone(&health), handle));

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
}

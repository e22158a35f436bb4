//! `/healthz`, `/readyz` and `/metrics` over plain HTTP, for Kubernetes probes, Docker's
//! HEALTHCHECK and Prometheus (`--metrics-listen`).
//!
//! `/healthz` is liveness only: a collector runs. `/readyz` adds delivery: connected to the
//! server, or spooling within the spool's cap; without a spool, a server that went away
//! makes the agent unready, since what it collects then has nowhere to wait.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Telemetry;

/// Binds `addr`, then serves until `stop` is cancelled.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "Serving /healthz, /readyz and /metrics.");
    // `get` answers GET and HEAD; any other method is 405 with an Allow header.
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(telemetry);
    Ok(crate::prom::serve_until(listener, app, stop))
}

async fn healthz(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    let running = telemetry
        .collectors()
        .iter()
        .filter(|c| c.health().is_active())
        .count();
    if running > 0 {
        (
            StatusCode::OK,
            format!("ok: {running} collectors running\n"),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no collector is running\n".to_owned(),
        )
    }
}

async fn readyz(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    let running = telemetry
        .collectors()
        .iter()
        .filter(|c| c.health().is_active())
        .count();
    if running == 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no collector is running\n".to_owned(),
        );
    }
    match telemetry.bridge().map(|b| b.ready()) {
        None => (StatusCode::OK, "ready: delivery is off\n".to_owned()),
        Some(Ok(why)) => (StatusCode::OK, format!("ready: {why}\n")),
        Some(Err(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry.prometheus(),
    )
}

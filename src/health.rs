//! `/healthz` and `/metrics` over plain HTTP, for Kubernetes probes, Docker's HEALTHCHECK
//! and Prometheus (`--metrics-listen`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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
    tracing::info!(addr = %listener.local_addr()?, "Serving /healthz and /metrics.");
    Ok(tokio::spawn(async move {
        loop {
            let (mut stream, _) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
            };
            let telemetry = Arc::clone(&telemetry);
            tokio::spawn(async move {
                // A request line and headers fit in 4 KiB; anything longer is not ours.
                let mut request = vec![0; 4096];
                let mut filled = 0;
                let read_head = async {
                    while filled < request.len()
                        && !request[..filled].windows(4).any(|w| w == b"\r\n\r\n")
                    {
                        match stream.read(&mut request[filled..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => filled += n,
                        }
                    }
                };
                if tokio::time::timeout(std::time::Duration::from_secs(5), read_head)
                    .await
                    .is_err()
                {
                    return;
                }
                let line = String::from_utf8_lossy(&request[..filled]);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let (status, kind, body) = respond(path, &telemetry);
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
            });
        }
    }))
}

fn respond(path: &str, telemetry: &Telemetry) -> (&'static str, &'static str, String) {
    match path.split('?').next().unwrap_or(path) {
        "/healthz" => {
            let running = telemetry
                .collectors()
                .iter()
                .filter(|c| c.health().is_active())
                .count();
            if running > 0 {
                (
                    "200 OK",
                    "text/plain",
                    format!("ok: {running} collectors running\n"),
                )
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "no collector is running\n".into(),
                )
            }
        }
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            telemetry.prometheus(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

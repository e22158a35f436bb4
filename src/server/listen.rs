//! The server's connections, accepted here rather than by tonic's builder so that what a
//! hostile or broken client meets is ours to bound: a cap on connections, a handshake
//! deadline (TLS and the first request), an idle timeout, accept errors that back off
//! instead of spinning, failed handshakes that are logged, and a shutdown that closes idle
//! connections at once and gives streams a bounded drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpConnectInfo;

/// Limits on connections, from the server's flags.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// A new connection must finish TLS and send its first request within this.
    pub handshake_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    /// On shutdown, how long streams get to finish before connections are closed.
    pub shutdown_timeout: Duration,
}

/// Requests in progress on one connection, and since when it has had none.
#[derive(Debug)]
struct Activity {
    active: AtomicUsize,
    any: AtomicBool,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            active: AtomicUsize::new(0),
            any: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    fn start(self: &Arc<Self>) -> Active {
        self.any.store(true, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::AcqRel);
        Active(Arc::clone(self))
    }

    fn is_idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    /// Whether the connection has waited longer than its limit: the handshake deadline
    /// before its first request, the idle timeout after.
    fn expired(&self, limits: &Limits) -> bool {
        if !self.is_idle() {
            return false;
        }
        let limit = if self.any.load(Ordering::Relaxed) {
            limits.idle_timeout
        } else {
            limits.handshake_timeout
        };
        self.idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
            >= limit
    }
}

/// One request in progress; it ends when its response body is done or dropped.
#[derive(Debug)]
struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .0
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
    }
}

/// A response body that keeps its request counted as in progress until it is done.
struct TrackedBody {
    body: tonic::body::Body,
    _active: Active,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The service of one connection: names the peer on each request (tonic's
/// `Request::remote_addr`) and counts requests in progress.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    info: TcpConnectInfo,
}

impl<S, B, R> tower::Service<http::Request<B>> for Tracked<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>, Error = Infallible> + Send,
    S::Future: Send + 'static,
    R: http_body::Body<Data = Bytes> + Send + 'static,
    R::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.info.clone());
        let active = self.activity.start();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                body: tonic::body::Body::new(body),
                _active: active,
            }))
        })
    }
}

/// Counts a recurring condition and says when to log it: the first time, then at each
/// power of two, so a flood is visible without flooding the log.
#[derive(Debug, Default)]
struct Tally(AtomicU64);

impl Tally {
    fn hit(&self) -> Option<u64> {
        let total = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        total.is_power_of_two().then_some(total)
    }
}

#[derive(Debug, Default)]
struct Tallies {
    refused: Tally,
    accept_errors: Tally,
    handshakes: Tally,
    expired: Tally,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Serves `service` on `listener` until `shutdown`, then drains: `closing` is cancelled
/// (streams finish what they hold and end), idle connections close at once, the rest get
/// `limits.shutdown_timeout`.
pub(super) async fn serve<S, R>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: S,
    limits: Limits,
    shutdown: CancellationToken,
    closing: CancellationToken,
) where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<R>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    R: http_body::Body<Data = Bytes> + Send + 'static,
    R::Error: Into<tonic::codegen::StdError>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tallies = Arc::new(Tallies::default());
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = ended && e.is_panic() {
                    tracing::error!(error = %e, "A connection task panicked.");
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                if let Some(total) = tallies.accept_errors.hit() {
                    tracing::error!(%error, total, "Cannot accept connections (out of file descriptors?); backing off.");
                }
                // Accepting again at once would spin: the error (EMFILE above all) stays
                // until a connection closes.
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            if let Some(total) = tallies.refused.hit() {
                tracing::warn!(%peer, total, max_connections = limits.max_connections, "Refusing connections: at --max-connections.");
            }
            drop(tcp);
            continue;
        };
        let local = tcp.local_addr().ok();
        let _ = tcp.set_nodelay(true);
        let _ = rustix::net::sockopt::set_socket_keepalive(&tcp, true);
        let connection = Connection {
            peer,
            info: TcpConnectInfo {
                local_addr: local,
                remote_addr: Some(peer),
            },
            limits,
            closing: closing.clone(),
            tallies: Arc::clone(&tallies),
            _permit: permit,
        };
        connections.spawn(connection.run(tcp, tls.clone(), service.clone()));
    }
    drop(listener);
    closing.cancel();
    if connections.is_empty() {
        return;
    }
    tracing::info!(
        connections = connections.len(),
        timeout = ?limits.shutdown_timeout,
        "Draining open streams before stopping."
    );
    let deadline = tokio::time::sleep(limits.shutdown_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => {
                tracing::warn!(connections = connections.len(), "Shutdown timeout ran out; closing the connections still open.");
                connections.abort_all();
                while connections.join_next().await.is_some() {}
                return;
            }
            next = connections.join_next() => if next.is_none() { return },
        }
    }
}

/// One accepted connection.
struct Connection {
    peer: SocketAddr,
    info: TcpConnectInfo,
    limits: Limits,
    closing: CancellationToken,
    tallies: Arc<Tallies>,
    /// Its place under `--max-connections`, given back when the connection ends.
    _permit: OwnedSemaphorePermit,
}

/// How long a connection asked to close (idle, or the server stopping) gets before it is
/// dropped: one that never finished its handshake never will.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

impl Connection {
    async fn run<S, R>(self, tcp: TcpStream, tls: Option<TlsAcceptor>, service: S)
    where
        S: tower::Service<
                http::Request<hyper::body::Incoming>,
                Response = http::Response<R>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        R: http_body::Body<Data = Bytes> + Send + 'static,
        R::Error: Into<tonic::codegen::StdError>,
    {
        let activity = Activity::new();
        let deadline = Instant::now() + self.limits.handshake_timeout;
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(acceptor) => {
                let handshake = tokio::select! {
                    () = self.closing.cancelled() => return,
                    handshake = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => handshake,
                };
                match handshake {
                    Ok(Ok(stream)) => Box::new(stream),
                    Ok(Err(error)) => {
                        if let Some(total) = self.tallies.handshakes.hit() {
                            tracing::warn!(peer = %self.peer, %error, total, "TLS handshake failed.");
                        }
                        return;
                    }
                    Err(_) => {
                        if let Some(total) = self.tallies.handshakes.hit() {
                            tracing::warn!(peer = %self.peer, timeout = ?self.limits.handshake_timeout, total, "TLS handshake timed out.");
                        }
                        return;
                    }
                }
            }
        };
        let tracked = Tracked {
            inner: service,
            activity: Arc::clone(&activity),
            info: self.info.clone(),
        };
        let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // Adaptive windows start at HTTP/2's 64 KiB and grow with the measured
        // bandwidth-delay product: a fast stream gets room, a thousand slow ones do not each
        // hold a megabyte of unread data when the server stops reading.
        http.timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let connection = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(tracked));
        tokio::pin!(connection);
        let mut check = tokio::time::interval(
            (self.limits.handshake_timeout.min(self.limits.idle_timeout) / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(1)),
        );
        let mut asked_to_close: Option<Instant> = None;
        loop {
            tokio::select! {
                ended = connection.as_mut() => {
                    if let Err(error) = ended {
                        tracing::debug!(peer = %self.peer, %error, "Connection ended with an error.");
                    }
                    return;
                }
                () = self.closing.cancelled(), if asked_to_close.is_none() => {
                    if activity.is_idle() {
                        return;
                    }
                    // Streams end on their own once they have acked what they hold.
                    connection.as_mut().graceful_shutdown();
                    asked_to_close = Some(Instant::now() + self.limits.shutdown_timeout);
                }
                _ = check.tick() => {
                    if let Some(at) = asked_to_close {
                        if Instant::now() >= at {
                            return;
                        }
                    } else if activity.expired(&self.limits) {
                        if let Some(total) = self.tallies.expired.hit() {
                            tracing::info!(peer = %self.peer, total, "Closing a connection with no request in time (handshake or idle timeout).");
                        }
                        connection.as_mut().graceful_shutdown();
                        asked_to_close = Some(Instant::now() + CLOSE_GRACE);
                    }
                }
            }
        }
    }
}

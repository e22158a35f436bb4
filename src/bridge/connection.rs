//! One stream to the server: connecting (TLS, token, the server's limits from the response
//! headers), the backoff between attempts, and closing politely.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codec::Streaming;
use tonic::transport::{Channel, Endpoint};

use super::{Error, PreEncoded, TlsFiles};
use crate::pb;

pub(super) fn client_tls(files: &TlsFiles) -> Result<tonic::transport::ClientTlsConfig, Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new();
    tls = match &files.ca {
        Some(ca) => {
            // Parsed here too, so a bad file is named rather than a transport error.
            crate::tls::roots(ca, "CA")?;
            tls.ca_certificate(Certificate::from_pem(crate::tls::read_pem(ca, "CA")?))
        }
        None => tls.with_native_roots(),
    };
    if let Some((cert, key)) = &files.identity {
        crate::tls::client_identity(cert, key)?;
        tls = tls.identity(Identity::from_pem(
            crate::tls::read_pem(cert, "client certificate")?,
            crate::tls::read_pem(key, "client key")?,
        ));
    }
    Ok(tls)
}

/// A message for the server: a sealed batch (its id names it to JetStream's duplicate
/// window), or a control message (id 0).
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) batch_id: u64,
    pub(super) bytes: Bytes,
}

/// Answers from the server: a gRPC stream's, or those a NATS session makes of
/// JetStream's publish acks.
pub(super) enum Inbound {
    Grpc(Box<Streaming<pb::TapioStreamEventsResponse>>),
    Nats(mpsc::Receiver<Result<pb::TapioStreamEventsResponse, Status>>),
}

impl Inbound {
    /// The next answer; `Ok(None)` when the other side ended.
    pub(super) async fn message(
        &mut self,
    ) -> Result<Option<pb::TapioStreamEventsResponse>, Status> {
        match self {
            Self::Grpc(stream) => stream.message().await,
            Self::Nats(acks) => acks.recv().await.transpose(),
        }
    }
}

/// One open stream to the server (or session with JetStream).
pub(super) struct Connection {
    pub(super) outbound: mpsc::Sender<Outgoing>,
    pub(super) inbound: Inbound,
    /// The server's rate limit from the response headers, if it set one.
    pub(super) rate_limit: Option<u64>,
    /// The server's largest message, from the response headers, if it said.
    pub(super) message_limit: Option<usize>,
}

pub(super) async fn connect(
    endpoint: Endpoint,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    hello: Bytes,
    window: usize,
) -> Result<Connection, Status> {
    let channel: Channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("connect: {}", crate::tls::error_chain(&e))))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {}", crate::tls::error_chain(&e))))?;
    // The outbound half is fed from the bridge task through this channel: the stream must
    // stay open across many sends, and room for the window plus the hello means a send
    // never waits while fewer than `window` batches are unacked.
    let (outbound, rx) = mpsc::channel(window + 2);
    outbound
        .try_send(Outgoing {
            batch_id: 0,
            bytes: hello,
        })
        .map_err(|_| Status::internal("hello did not fit"))?;
    let outgoing = ReceiverStream::new(rx).map(|o: Outgoing| o.bytes);
    let mut request = tonic::Request::new(outgoing);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", token);
    }
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/tapio.v1.TapioService/StreamEvents");
    let response = grpc.streaming(request, path, PreEncoded).await?;
    let header = |name: &str| {
        response
            .metadata()
            .get(name)
            .and_then(|v| v.to_str().ok()?.parse().ok())
    };
    let rate_limit = header(crate::pb::RATE_LIMIT_HEADER);
    let message_limit =
        header(crate::pb::MESSAGE_LIMIT_HEADER).and_then(|limit: u64| usize::try_from(limit).ok());
    Ok(Connection {
        outbound,
        inbound: Inbound::Grpc(Box::new(response.into_inner())),
        rate_limit,
        message_limit,
    })
}

/// Jittered exponential backoff between connection attempts (backon's): a step from 50 ms
/// doubling up to 5 s, each delay the step plus up to as much again at random.
#[derive(Debug)]
pub(super) struct Backoff(backon::ExponentialBackoff);

impl Backoff {
    const MAX: Duration = Duration::from_secs(10);

    pub(super) fn new() -> Self {
        use backon::BackoffBuilder as _;
        Self(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Self::MAX / 2)
                .with_jitter()
                .without_max_times()
                .build(),
        )
    }

    /// The next delay.
    pub(super) fn delay(&mut self) -> Duration {
        self.0.next().unwrap_or(Self::MAX)
    }

    /// Starts over from the first step (after a connection succeeded).
    pub(super) fn reset(&mut self) {
        *self = Self::new();
    }
}

/// The limit a server names in its `OUT_OF_RANGE` answer to an oversized message
/// ("... the limit is: N bytes").
pub(super) fn limit_from(message: &str) -> Option<usize> {
    let (_, rest) = message.rsplit_once("limit is")?;
    rest.trim_start_matches([':', ' '])
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Ends the stream politely: a close message, the end of the outbound half, then the
/// server's end of the inbound half (bounded, the server may be gone).
pub(super) async fn close(mut connection: Connection, collector_id: &str) {
    if matches!(connection.inbound, Inbound::Nats(_)) {
        // JetStream has no stream to close: the session ends with its channel.
        return;
    }
    let _ = connection
        .outbound
        .try_send(control(collector_id, pb::stream_control::Kind::Close));
    drop(connection.outbound);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(_)) = connection.inbound.message().await {}
    })
    .await;
}

pub(super) fn hello(collector_id: &str) -> Bytes {
    control(collector_id, pb::stream_control::Kind::Hello).bytes
}

fn control(collector_id: &str, kind: pb::stream_control::Kind) -> Outgoing {
    let request = pb::TapioStreamEventsRequest {
        payload: Some(pb::tapio_stream_events_request::Payload::Control(
            pb::StreamControl {
                kind: kind.into(),
                collector_id: collector_id.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        )),
    };
    Outgoing {
        batch_id: 0,
        bytes: Bytes::from(request.encode_to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_read_from_the_servers_out_of_range_answer() {
        assert_eq!(
            limit_from(
                "Error, decoded message length too large: found 5242880 bytes, the limit is: 200000 bytes"
            ),
            Some(200_000)
        );
        assert_eq!(limit_from("something else"), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut backoff = Backoff::new();
        let first = backoff.delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(150));
        for _ in 0..20 {
            assert!(backoff.delay() <= Backoff::MAX.mul_f64(1.5));
        }
        backoff.reset();
        assert!(backoff.delay() <= Duration::from_millis(150));
    }
}

//! Delivery through NATS JetStream (`server.transport: nats`). A session takes the place
//! of a gRPC stream behind the same [`Connection`], so the window, spool, drain and drop
//! accounting are the bridge's own, unchanged: each sealed batch (the same bytes the gRPC
//! path sends) is published with `Nats-Msg-Id: <collector>:<batch id>`, and the stream's
//! publish ack becomes the batch's ack. A batch leaves the spool only then.
//!
//! A resend (after a lost ack or a restart that replays the spool) carries the same
//! message id, so JetStream's duplicate window drops it; past the window the servers'
//! dedup by event id still stores each event once.

use std::sync::Arc;

use async_nats::jetstream;
use tokio::sync::{Mutex, mpsc};
use tonic::Status;

use super::connection::{Connection, Inbound, Outgoing};
use crate::nats::{self, NatsConfig};
use crate::pb;

/// Room left under NATS's largest message for the headers (the message id).
const HEADER_ROOM: usize = 1024;

/// The NATS side of delivery, shared by its sessions: one client, which reconnects by
/// itself after a NATS restart.
pub(super) struct NatsLink {
    config: NatsConfig,
    collector_id: String,
    client: Mutex<Option<async_nats::Client>>,
}

impl std::fmt::Debug for NatsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLink")
            .field("url", &self.config.url)
            .field("subject", &self.config.subject)
            .finish_non_exhaustive()
    }
}

impl NatsLink {
    /// Connects and creates or checks the stream. A refusal (credentials, TLS, a
    /// malformed URL) or a stream that does not fit is an error here, at start; NATS not
    /// answering yet is not: batches wait (in the spool) and sessions retry.
    pub(super) async fn start(
        config: NatsConfig,
        collector_id: String,
    ) -> Result<Self, nats::Error> {
        let link = Self {
            config,
            collector_id,
            client: Mutex::new(None),
        };
        match link.client().await {
            Ok(client) => {
                let js = jetstream::new(client);
                nats::stream(&js, &link.config.stream, Some(&link.config.subject)).await?;
            }
            Err(nats::Error::Unreachable { url, reason }) => {
                tracing::warn!(%url, %reason, "Cannot reach NATS yet; batches wait and delivery retries.");
            }
            Err(refused) => return Err(refused),
        }
        Ok(link)
    }

    async fn client(&self) -> Result<async_nats::Client, nats::Error> {
        let mut slot = self.client.lock().await;
        if let Some(client) = &*slot {
            return Ok(client.clone());
        }
        let client = nats::connect(
            &self.config.url,
            &self.config.auth,
            &format!("tapio-collector {}", self.collector_id),
        )
        .await?;
        *slot = Some(client.clone());
        Ok(client)
    }
}

/// Opens a session: NATS must be connected and the stream there (it is created again if
/// a NATS without persistence lost it).
pub(super) async fn connect(link: Arc<NatsLink>, window: usize) -> Result<Connection, Status> {
    let client = link.client().await.map_err(|e| match e {
        nats::Error::Refused { .. } => Status::unauthenticated(e.to_string()),
        other => Status::unavailable(other.to_string()),
    })?;
    if client.connection_state() != async_nats::connection::State::Connected {
        return Err(Status::unavailable(format!(
            "NATS at {} is disconnected; its client is reconnecting",
            link.config.url
        )));
    }
    let limit = client.server_info().max_payload.saturating_sub(HEADER_ROOM);
    let mut js = jetstream::new(client);
    js.set_timeout(link.config.ack_timeout);
    nats::stream(&js, &link.config.stream, Some(&link.config.subject))
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let (outbound, batches) = mpsc::channel(window + 2);
    let (acks, inbound) = mpsc::channel(window + 2);
    tokio::spawn(session(
        js,
        link.config.subject.clone(),
        link.collector_id.clone(),
        limit,
        batches,
        acks,
    ));
    Ok(Connection {
        outbound,
        inbound: Inbound::Nats(inbound),
        rate_limit: None,
        message_limit: Some(limit),
    })
}

type Acks = mpsc::Sender<Result<pb::TapioStreamEventsResponse, Status>>;

/// Publishes each batch and turns its publish ack into the batch's ack. The first
/// failure ends the session: the bridge puts what was in flight back and resends it.
async fn session(
    js: jetstream::Context,
    subject: String,
    collector_id: String,
    limit: usize,
    mut batches: mpsc::Receiver<Outgoing>,
    acks: Acks,
) {
    while let Some(batch) = batches.recv().await {
        let batch_id = batch.batch_id;
        let publish = jetstream::message::PublishMessage::build()
            .payload(batch.bytes)
            .message_id(format!("{collector_id}:{batch_id}"));
        match js.send_publish(subject.clone(), publish).await {
            Ok(pending) => {
                let acks = acks.clone();
                tokio::spawn(async move {
                    let answer = match pending.await {
                        Ok(_) => Ok(pb::TapioStreamEventsResponse {
                            payload: Some(pb::tapio_stream_events_response::Payload::Ack(
                                pb::Ack {
                                    batch_id,
                                    status: pb::ack::Status::Ok.into(),
                                    ..pb::Ack::default()
                                },
                            )),
                        }),
                        Err(e) => Err(Status::unavailable(format!(
                            "JetStream did not confirm batch {batch_id}: {}",
                            crate::tls::error_chain(&e)
                        ))),
                    };
                    let _ = acks.send(answer).await;
                });
            }
            Err(e) => {
                let status = if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded
                {
                    // The bridge splits a batch the server cannot take when told its limit.
                    Status::out_of_range(format!("{e}; the limit is: {limit} bytes"))
                } else {
                    Status::unavailable(format!(
                        "cannot publish batch {batch_id}: {}",
                        crate::tls::error_chain(&e)
                    ))
                };
                let _ = acks.send(Err(status)).await;
                return;
            }
        }
    }
}

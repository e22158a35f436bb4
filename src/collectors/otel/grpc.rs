//! OTLP/gRPC: the specification's trace and logs services (opentelemetry-proto's tonic
//! servers), gzip accepted, requests capped at `max_request_bytes`.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use super::who::Connection;
use super::{Logs, Outcome, Receiver, Traces};
use crate::collectors::Error;

/// Serves both services on `listener` until `shutdown`.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    receiver: Arc<Receiver>,
    limit: usize,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let traces = TraceServiceServer::new(Grpc(Arc::clone(&receiver)))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    let logs = LogsServiceServer::new(Grpc(receiver))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        // Requests are tens of kilobytes: let clients send each in few frames and keep
        // several in flight per connection.
        .max_frame_size(Some(256 * 1024))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .add_service(traces)
        .add_service(logs)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .map_err(|e| Error::unavailable_by("the OTLP/gRPC server failed", e))
}

/// The services, over the shared receiver.
#[derive(Debug)]
struct Grpc(Arc<Receiver>);

fn connection<T>(request: &Request<T>) -> Option<Connection> {
    Some(Connection {
        peer: request.remote_addr()?,
        local: request.local_addr()?,
    })
}

impl Grpc {
    /// The answer for a request refused whole.
    fn refused(&self, outcome: &Outcome) -> Status {
        match outcome {
            Outcome::Busy => Status::with_error_details(
                Code::ResourceExhausted,
                "the agent's queue is full; retry later",
                ErrorDetails::with_retry_info(Some(self.0.retry_after)),
            ),
            _ => Status::unavailable("the agent is stopping"),
        }
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let connection = connection(&request);
        self.0
            .export::<Traces>(request.into_inner(), connection)
            .await
            .map(Response::new)
            .map_err(|refused| self.refused(&refused))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let connection = connection(&request);
        self.0
            .export::<Logs>(request.into_inner(), connection)
            .await
            .map(Response::new)
            .map_err(|refused| self.refused(&refused))
    }
}

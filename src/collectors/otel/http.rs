//! OTLP/HTTP: `POST /v1/traces` and `POST /v1/logs`, binary protobuf
//! (`application/x-protobuf`) or JSON (`application/json`), optionally gzip-encoded.
//!
//! Answers as the specification's HTTP transport says: 200 with the response message (a
//! partial success when some records were not taken) in the request's encoding; 400 with a
//! `google.rpc.Status` for a body that is not OTLP; 413 for a body over the limit; 415 for
//! a content type or encoding it does not speak; 429 with `Retry-After` when the queue
//! stays full; 503 with `Retry-After` while the agent stops.

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use super::who::Connection;
use super::{Logs, Outcome, Receiver, Signal, Traces};
use crate::collectors::Error;

/// The two encodings OTLP/HTTP has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }
}

/// What the router shares.
#[derive(Clone, Debug)]
struct Shared {
    receiver: Arc<Receiver>,
    limit: usize,
}

/// Both ends of a connection, for finding the client's process.
#[derive(Clone, Copy, Debug)]
struct Ends(Connection);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Ends
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        let peer = *stream.remote_addr();
        let local = stream
            .io()
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        Self(Connection { peer, local })
    }
}

/// Serves `/v1/traces` and `/v1/logs` on `listener` until `shutdown`.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    receiver: Arc<Receiver>,
    limit: usize,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let app = Router::new()
        .route("/v1/traces", post(export::<Traces>))
        .route("/v1/logs", post(export::<Logs>))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Shared { receiver, limit });
    axum::serve(listener, app.into_make_service_with_connect_info::<Ends>())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|e| Error::unavailable_by("the OTLP/HTTP server failed", e))
}

/// Why a body could not be read, as the answer that says so.
fn problem(status: StatusCode, encoding: Encoding, message: String) -> Response {
    let code = match status {
        StatusCode::TOO_MANY_REQUESTS => tonic::Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        _ => tonic::Code::InvalidArgument,
    };
    let body = match encoding {
        Encoding::Protobuf => tonic_types::Status {
            code: code as i32,
            message,
            details: Vec::new(),
        }
        .encode_to_vec(),
        Encoding::Json => serde_json::json!({ "code": code as i32, "message": message })
            .to_string()
            .into_bytes(),
    };
    (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

/// The request's encoding and its body, decompressed within `limit`.
fn read(
    headers: &HeaderMap,
    body: &Bytes,
    limit: usize,
) -> Result<(Encoding, Vec<u8>), Box<Response>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = match content_type.split(';').next().unwrap_or("").trim() {
        "application/x-protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        other => {
            return Err(Box::new(problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Encoding::Json,
                format!(
                    "content type {other:?} is not OTLP/HTTP's: send application/x-protobuf or application/json"
                ),
            )));
        }
    };
    let compression = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    match compression {
        "identity" | "" => Ok((encoding, body.to_vec())),
        "gzip" => {
            let mut out = Vec::new();
            // One byte past the limit tells an oversized body from one exactly at it.
            let read = flate2::read::GzDecoder::new(&body[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out);
            match read {
                Err(e) => Err(Box::new(problem(
                    StatusCode::BAD_REQUEST,
                    encoding,
                    format!("the gzip body cannot be decompressed: {e}"),
                ))),
                Ok(n) if n > limit => Err(Box::new(problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    encoding,
                    format!("the body is over {limit} bytes decompressed (max_request_bytes)"),
                ))),
                Ok(_) => Ok((encoding, out)),
            }
        }
        other => Err(Box::new(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            encoding,
            format!("content encoding {other:?} is not supported: send gzip or none"),
        ))),
    }
}

fn decode<T: prost::Message + Default + serde::de::DeserializeOwned>(
    encoding: Encoding,
    body: &[u8],
) -> Result<T, Box<Response>> {
    let decoded = match encoding {
        Encoding::Protobuf => T::decode(body).map_err(|e| e.to_string()),
        Encoding::Json => serde_json::from_slice(body).map_err(|e| e.to_string()),
    };
    decoded.map_err(|why| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            encoding,
            format!("the body is not an OTLP export request: {why}"),
        ))
    })
}

fn encode<T: prost::Message + serde::Serialize>(encoding: Encoding, message: &T) -> Response {
    let body = match encoding {
        Encoding::Protobuf => message.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(message).unwrap_or_default(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

/// The answer for a request refused whole.
fn refused_answer(receiver: &Receiver, outcome: &Outcome, encoding: Encoding) -> Response {
    let (status, message) = match outcome {
        Outcome::Busy => (
            StatusCode::TOO_MANY_REQUESTS,
            "the agent's queue is full; retry later",
        ),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"),
    };
    let mut response = problem(status, encoding, message.to_owned());
    let seconds = receiver.retry_after.as_secs_f64().ceil().max(1.0);
    if let Ok(value) = HeaderValue::from_str(&format!("{seconds:.0}")) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// `POST /v1/traces` and `POST /v1/logs`: one export request of signal `S`.
async fn export<S: Signal>(
    State(shared): State<Shared>,
    ConnectInfo(Ends(connection)): ConnectInfo<Ends>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (encoding, body) = match read(&headers, &body, shared.limit) {
        Ok(read) => read,
        Err(answer) => return *answer,
    };
    let request: S::Request = match decode(encoding, &body) {
        Ok(request) => request,
        Err(answer) => return *answer,
    };
    match shared.receiver.export::<S>(request, Some(connection)).await {
        Ok(response) => encode(encoding, &response),
        Err(refused) => refused_answer(&shared.receiver, &refused, encoding),
    }
}

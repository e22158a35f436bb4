//! A gRPC codec that sends messages that are already encoded, so a batch is encoded once
//! and its bytes serve the first send, every resend and the spool alike.

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::pb;

/// Sends encoded `TapioStreamEventsRequest` bytes; decodes responses with prost.
#[derive(Clone, Copy, Debug, Default)]
pub struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = pb::TapioStreamEventsResponse;
    type Encoder = BytesEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

/// Copies the bytes into the frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

/// Decodes a response message.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = pb::TapioStreamEventsResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let message = pb::TapioStreamEventsResponse::decode(&mut *src)
            .map_err(|e| Status::internal(format!("undecodable response: {e}")))?;
        debug_assert_eq!(src.remaining(), 0);
        Ok(Some(message))
    }
}

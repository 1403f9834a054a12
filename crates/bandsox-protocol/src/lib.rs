//! The host <-> guest agent protocol, shared by `bandsox-agent` (guest) and `bandsox-core`
//! (host).
//!
//! One byte stream (a virtio-serial port under QEMU, a vsock connection under Firecracker)
//! carries many concurrent operations. Each operation is a *stream*: the host opens it with a
//! JSON [`Request`] frame, both sides exchange raw [`frame::FrameKind::Data`] frames on numbered
//! channels (stdin, stdout, stderr) under per-channel credit flow control, and the guest closes
//! it with one JSON [`Reply`]. Bytes are never base64-encoded on the wire.
//!
//! The crate has no runtime: [`frame`] is a sans-IO codec, [`message`] the JSON messages.

pub mod frame;
pub mod message;

pub use frame::{Channel, Frame, FrameDecoder, FrameKind, FrameReader, PayloadPool};
pub use message::*;

/// Errors from decoding or encoding protocol frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("invalid JSON message: {0}")]
    Json(#[source] serde_json::Error),
}

/// Decodes the JSON payload of a frame.
pub fn decode_json<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(payload).map_err(ProtocolError::Json)
}

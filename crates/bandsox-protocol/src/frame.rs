//! Framing: how messages and raw bytes share one byte stream.
//!
//! Every frame is a 9-byte header followed by its payload:
//!
//! ```text
//! +----------------+----------------+--------+-------------------+
//! | len: u32 LE    | stream: u32 LE | kind u8| payload (len B)   |
//! +----------------+----------------+--------+-------------------+
//! ```
//!
//! `len` counts payload bytes only. The codec is sans-IO: [`encode_frame`] appends a frame to a
//! buffer, [`FrameDecoder`] takes bytes as they arrive and yields whole frames.

use crate::ProtocolError;

/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 9;

/// Largest payload a frame may carry. Anything larger is a protocol violation: the decoder
/// refuses it instead of allocating, so a corrupt length can never exhaust memory.
pub const MAX_PAYLOAD_LEN: usize = 4 << 20;

/// Largest chunk of raw bytes the sender puts in one [`FrameKind::Data`] frame.
pub const DATA_CHUNK_LEN: usize = 64 << 10;

/// Initial flow-control window of each (stream, channel): how many data bytes a sender may
/// have in flight before it must wait for [`FrameKind::Credit`].
pub const INITIAL_WINDOW: u32 = 1 << 20;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Host -> guest: JSON [`crate::Request`]; opens the stream.
    Request = 1,
    /// Guest -> host: JSON [`crate::Reply`]; the last frame of a stream.
    Reply = 2,
    /// Guest -> host: JSON [`crate::Event`]; an intermediate notice on an open stream.
    Event = 3,
    /// Raw bytes. Payload: `[channel: u8][bytes...]`.
    Data = 4,
    /// End of one channel of a stream (half close). Payload: `[channel: u8]`.
    Eof = 5,
    /// Flow-control grant. Payload: `[channel: u8][bytes: u32 LE]`.
    Credit = 6,
    /// Host -> guest: abandon the operation on this stream (kill what it started).
    Cancel = 7,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Request,
            2 => Self::Reply,
            3 => Self::Event,
            4 => Self::Data,
            5 => Self::Eof,
            6 => Self::Credit,
            7 => Self::Cancel,
            _ => return None,
        })
    }
}

/// Byte channels inside one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Channel {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
}

impl Channel {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Stdin,
            1 => Self::Stdout,
            2 => Self::Stderr,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: u32,
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

impl Frame {
    /// For `Data`, `Eof` and `Credit` frames: the channel byte and the rest of the payload.
    pub fn channel_payload(&self) -> Result<(Channel, &[u8]), ProtocolError> {
        let (&c, rest) = self
            .payload
            .split_first()
            .ok_or(ProtocolError::Malformed("frame without channel byte"))?;
        let channel = Channel::from_u8(c).ok_or(ProtocolError::Malformed("unknown channel"))?;
        Ok((channel, rest))
    }

    /// For `Credit` frames: the channel and the number of bytes granted.
    pub fn credit(&self) -> Result<(Channel, u32), ProtocolError> {
        let (channel, rest) = self.channel_payload()?;
        let bytes: [u8; 4] = rest
            .try_into()
            .map_err(|_| ProtocolError::Malformed("credit frame length"))?;
        Ok((channel, u32::from_le_bytes(bytes)))
    }
}

/// Appends one frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, stream: u32, kind: FrameKind, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD_LEN);
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&stream.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
}

/// Appends a `Data` frame carrying `bytes` on `channel`.
pub fn encode_data(out: &mut Vec<u8>, stream: u32, channel: Channel, bytes: &[u8]) {
    out.reserve(HEADER_LEN + 1 + bytes.len());
    out.extend_from_slice(&((bytes.len() + 1) as u32).to_le_bytes());
    out.extend_from_slice(&stream.to_le_bytes());
    out.push(FrameKind::Data as u8);
    out.push(channel as u8);
    out.extend_from_slice(bytes);
}

/// Appends an `Eof` frame for `channel`.
pub fn encode_eof(out: &mut Vec<u8>, stream: u32, channel: Channel) {
    encode_frame(out, stream, FrameKind::Eof, &[channel as u8]);
}

/// Appends a `Credit` frame granting `bytes` more on `channel`.
pub fn encode_credit(out: &mut Vec<u8>, stream: u32, channel: Channel, bytes: u32) {
    let mut p = [0u8; 5];
    p[0] = channel as u8;
    p[1..].copy_from_slice(&bytes.to_le_bytes());
    encode_frame(out, stream, FrameKind::Credit, &p);
}

/// Appends a frame whose payload is `msg` serialised as JSON.
pub fn encode_json<T: serde::Serialize>(
    out: &mut Vec<u8>,
    stream: u32,
    kind: FrameKind,
    msg: &T,
) -> Result<(), ProtocolError> {
    let body = serde_json::to_vec(msg).map_err(ProtocolError::Json)?;
    if body.len() > MAX_PAYLOAD_LEN {
        return Err(ProtocolError::TooLarge(body.len()));
    }
    encode_frame(out, stream, kind, &body);
    Ok(())
}

/// Incremental decoder: feed it bytes with [`FrameDecoder::push`], take frames with
/// [`FrameDecoder::next_frame`].
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Forgets any partial frame (used when the channel drops and a new peer connects).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Number of buffered bytes not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Returns the next whole frame, `Ok(None)` if more bytes are needed, or an error if the
    /// stream is corrupt (unknown kind or oversized length). After an error call [`reset`].
    ///
    /// [`reset`]: FrameDecoder::reset
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            self.compact();
            return Ok(None);
        }
        let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        let stream = u32::from_le_bytes([avail[4], avail[5], avail[6], avail[7]]);
        let kind = FrameKind::from_u8(avail[8]).ok_or(ProtocolError::UnknownKind(avail[8]))?;
        if len > MAX_PAYLOAD_LEN {
            return Err(ProtocolError::TooLarge(len));
        }
        if avail.len() < HEADER_LEN + len {
            self.compact();
            return Ok(None);
        }
        let payload = avail[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.start += HEADER_LEN + len;
        Ok(Some(Frame {
            stream,
            kind,
            payload,
        }))
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_split_at_every_byte() {
        let mut wire = Vec::new();
        encode_frame(&mut wire, 7, FrameKind::Request, br#"{"op":"ping"}"#);
        encode_data(&mut wire, 7, Channel::Stdout, &[0, 1, 2, 255]);
        encode_credit(&mut wire, 9, Channel::Stderr, 65536);
        for split in 0..wire.len() {
            let mut d = FrameDecoder::new();
            let mut frames = Vec::new();
            d.push(&wire[..split]);
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
            d.push(&wire[split..]);
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
            assert_eq!(frames.len(), 3, "split at {split}");
            assert_eq!(frames[0].payload, br#"{"op":"ping"}"#);
            assert_eq!(
                frames[1].channel_payload().unwrap(),
                (Channel::Stdout, &[0u8, 1, 2, 255][..])
            );
            assert_eq!(frames[2].credit().unwrap(), (Channel::Stderr, 65536));
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn wire_shape_is_frozen() {
        let mut wire = Vec::new();
        encode_data(&mut wire, 0x0102_0304, Channel::Stderr, b"hi");
        assert_eq!(wire, [3, 0, 0, 0, 4, 3, 2, 1, 4, 2, b'h', b'i']);
    }

    #[test]
    fn oversized_and_unknown_frames_are_rejected() {
        let mut d = FrameDecoder::new();
        d.push(&[0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0, 1]);
        assert!(matches!(d.next_frame(), Err(ProtocolError::TooLarge(_))));
        d.reset();
        d.push(&[0, 0, 0, 0, 1, 0, 0, 0, 99]);
        assert!(matches!(
            d.next_frame(),
            Err(ProtocolError::UnknownKind(99))
        ));
    }
}

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

/// Largest chunk of raw bytes the guest puts in one [`FrameKind::Data`] frame of streamed
/// output (exec, terminals, logs).
pub const DATA_CHUNK_LEN: usize = 64 << 10;

/// Largest chunk of bulk data in one [`FrameKind::Data`] frame: file transfers both ways and
/// all host input. Fewer, larger frames mean fewer channel writes and wakeups per byte, which
/// is most of the cost under software emulation. A quarter of [`INITIAL_WINDOW`], so four are
/// in flight.
pub const BULK_CHUNK_LEN: usize = 256 << 10;

/// Initial flow-control window of each (stream, channel): how many data bytes a sender may
/// have in flight before it must wait for [`FrameKind::Credit`].
pub const INITIAL_WINDOW: u32 = 1 << 20;

/// Consumed data bytes per (stream, channel) after which the receiver grants credit back. One
/// credit frame per data frame cost a third of the throughput under TCG; a quarter of
/// [`INITIAL_WINDOW`] keeps the sender streaming while credit is on its way.
pub const CREDIT_BATCH_BYTES: u32 = INITIAL_WINDOW / 4;

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

/// Length of a `Data` frame's header: the frame header and the channel byte.
pub const DATA_HEADER_LEN: usize = HEADER_LEN + 1;

/// Writes the header of a `Data` frame carrying `len` bytes on `channel` into `out`, so a
/// sender can read its bytes straight into the space after it (no copy).
pub fn write_data_header(
    out: &mut [u8; DATA_HEADER_LEN],
    stream: u32,
    channel: Channel,
    len: usize,
) {
    out[..4].copy_from_slice(&((len + 1) as u32).to_le_bytes());
    out[4..8].copy_from_slice(&stream.to_le_bytes());
    out[8] = FrameKind::Data as u8;
    out[9] = channel as u8;
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

/// Frames read from a byte stream with as few copies as possible: small frames come out of an
/// internal buffer, a large payload is read straight into its own `Vec` taken from a
/// [`PayloadPool`] (under software emulation every extra pass over bulk data costs
/// throughput, and a fresh `Vec` would be zero-filled before the read).
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    pool: PayloadPool,
}

/// Payload buffers handed back after use, so the next large payload is read into memory that is
/// already initialised instead of a zero-filled new allocation. Cloning shares the pool.
#[derive(Debug, Clone, Default)]
pub struct PayloadPool(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl PayloadPool {
    /// Buffers kept at most: a window's worth of full data frames and some slack.
    const KEEP: usize = 2 * (INITIAL_WINDOW as usize / BULK_CHUNK_LEN);

    /// A buffer of exactly `len` bytes, contents unspecified. Only bytes beyond the length of
    /// the recycled buffer are zero-filled (none, when frames have the same size).
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut v = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        v.resize(len, 0);
        v
    }

    /// Hands `buf` back for reuse; small buffers are not worth keeping, and ones much larger
    /// than a bulk frame are not kept either (a peer sending huge frames must not pin memory).
    pub fn give(&self, buf: Vec<u8>) {
        if buf.capacity() < DIRECT_READ_LEN || buf.capacity() > 2 * BULK_CHUNK_LEN {
            return;
        }
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < Self::KEEP {
            pool.push(buf);
        }
    }
}

/// Payloads at least this large that are not yet buffered are read directly into place.
const DIRECT_READ_LEN: usize = 8 << 10;

impl<R: std::io::Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_pool(inner, PayloadPool::default())
    }

    /// A reader whose large payloads come from (and should go back to) `pool`.
    pub fn with_pool(inner: R, pool: PayloadPool) -> Self {
        Self {
            inner,
            buf: vec![0; 64 << 10],
            start: 0,
            end: 0,
            pool,
        }
    }

    /// The byte stream itself (bytes already buffered are not in it).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Forgets buffered bytes (after a corrupt frame).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    fn fill(&mut self) -> std::io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream. A corrupt frame is an
    /// `InvalidData` error wrapping the [`ProtocolError`]: call [`FrameReader::reset`] and go on.
    pub fn read_frame(&mut self) -> std::io::Result<Option<Frame>> {
        use std::io::{Error, ErrorKind};
        loop {
            let avail = &self.buf[self.start..self.end];
            if avail.len() >= HEADER_LEN {
                let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
                let stream = u32::from_le_bytes([avail[4], avail[5], avail[6], avail[7]]);
                let kind = FrameKind::from_u8(avail[8]).ok_or_else(|| {
                    Error::new(ErrorKind::InvalidData, ProtocolError::UnknownKind(avail[8]))
                })?;
                if len > MAX_PAYLOAD_LEN {
                    return Err(Error::new(
                        ErrorKind::InvalidData,
                        ProtocolError::TooLarge(len),
                    ));
                }
                if avail.len() >= HEADER_LEN + len {
                    let payload = avail[HEADER_LEN..HEADER_LEN + len].to_vec();
                    self.start += HEADER_LEN + len;
                    return Ok(Some(Frame {
                        stream,
                        kind,
                        payload,
                    }));
                }
                if len >= DIRECT_READ_LEN {
                    let have = avail.len() - HEADER_LEN;
                    let mut payload = self.pool.take(len);
                    payload[..have].copy_from_slice(&avail[HEADER_LEN..]);
                    self.reset();
                    if let Err(e) = self.inner.read_exact(&mut payload[have..]) {
                        self.pool.give(payload);
                        return Err(if e.kind() == ErrorKind::UnexpectedEof {
                            Error::new(ErrorKind::UnexpectedEof, "stream ended inside a frame")
                        } else {
                            e
                        });
                    }
                    return Ok(Some(Frame {
                        stream,
                        kind,
                        payload,
                    }));
                }
            }
            let had = self.end - self.start;
            if self.fill()? == 0 {
                return if had == 0 {
                    Ok(None)
                } else {
                    Err(Error::new(
                        ErrorKind::UnexpectedEof,
                        "stream ended inside a frame",
                    ))
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_pool_recycles_frame_sized_buffers_only() {
        let pool = PayloadPool::default();
        let a = pool.take(BULK_CHUNK_LEN + 1);
        assert_eq!(a.len(), BULK_CHUNK_LEN + 1);
        let ptr = a.as_ptr();
        pool.give(a);
        // The same memory comes back, at the length asked for.
        let b = pool.take(1000);
        assert_eq!((b.as_ptr(), b.len()), (ptr, 1000));
        pool.give(b);
        let c = pool.take(10);
        assert_eq!(c.as_ptr(), ptr);
        // Too small or far too large: not kept.
        pool.give(vec![0; 100]);
        pool.give(vec![0; 4 * BULK_CHUNK_LEN]);
        assert!(pool.0.lock().unwrap().is_empty());
    }

    /// A reader that hands out at most `step` bytes per read, like a virtio-serial port.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn frame_reader_small_and_large_frames_in_any_read_sizes() {
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        encode_frame(&mut wire, 1, FrameKind::Request, b"{}");
        encode_data(&mut wire, 2, Channel::Stdin, &big);
        encode_credit(&mut wire, 3, Channel::Stdout, 7);
        let mut hdr = [0u8; DATA_HEADER_LEN];
        write_data_header(&mut hdr, 4, Channel::Stdout, 3);
        wire.extend_from_slice(&hdr);
        wire.extend_from_slice(b"xyz");
        for step in [1, 7, 4096, 65_536, usize::MAX] {
            let mut r = FrameReader::new(Trickle { data: &wire, step });
            let f = r.read_frame().unwrap().unwrap();
            assert_eq!(
                (f.stream, f.kind, f.payload.as_slice()),
                (1, FrameKind::Request, &b"{}"[..])
            );
            let f = r.read_frame().unwrap().unwrap();
            assert_eq!(
                f.channel_payload().unwrap(),
                (Channel::Stdin, big.as_slice()),
                "step {step}"
            );
            let f = r.read_frame().unwrap().unwrap();
            assert_eq!(f.credit().unwrap(), (Channel::Stdout, 7));
            let f = r.read_frame().unwrap().unwrap();
            assert_eq!(f.channel_payload().unwrap(), (Channel::Stdout, &b"xyz"[..]));
            assert!(r.read_frame().unwrap().is_none(), "clean end");
        }
    }

    #[test]
    fn frame_reader_reports_truncation_and_corruption() {
        let mut wire = Vec::new();
        encode_data(&mut wire, 2, Channel::Stdin, &[1u8; 20_000]);
        wire.truncate(15_000);
        let mut r = FrameReader::new(Trickle {
            data: &wire,
            step: 4096,
        });
        let e = r.read_frame().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        let junk = [0u8, 0, 0, 0, 0, 0, 0, 0, 99];
        let mut r = FrameReader::new(Trickle {
            data: &junk,
            step: 100,
        });
        assert_eq!(
            r.read_frame().unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
    }

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

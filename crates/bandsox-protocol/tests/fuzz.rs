//! Property-based fuzzing of the wire decoder on stable Rust (proptest). The guest is hostile:
//! whatever bytes it sends, decoding never panics, never allocates for a length it refuses,
//! and gives the same frames however the bytes are split into reads.
//!
//! Each property runs `PROPTEST_CASES` cases (default 256, a few seconds in all); a longer
//! run: `PROPTEST_CASES=100000 cargo test -p bandsox-protocol --test fuzz --release`.

use std::io::Read;

use bandsox_protocol::frame::{self, HEADER_LEN, MAX_PAYLOAD_LEN};
use bandsox_protocol::{
    decode_json, Channel, Event, Frame, FrameDecoder, FrameKind, FrameReader, ProtocolError, Reply,
    Request,
};
use proptest::prelude::*;

/// What a decoder made of a byte stream: the frames before the first error, and that error.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<String>,
}

/// Decodes `bytes` pushed in pieces cut at `cuts` (positions, any order, any value).
fn decode_in_pieces(bytes: &[u8], cuts: &[usize]) -> Outcome {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    let mut d = FrameDecoder::new();
    let mut frames = Vec::new();
    for w in at.windows(2) {
        d.push(&bytes[w[0]..w[1]]);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        frames,
                        error: Some(e.to_string()),
                    }
                }
            }
        }
    }
    Outcome {
        frames,
        error: None,
    }
}

/// A reader that hands out at most the next of `sizes` bytes per read (cycling).
struct Trickle<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    i: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self.sizes[self.i % self.sizes.len()].max(1);
        self.i += 1;
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Reads frames with [`FrameReader`] until the end or the first error.
fn read_all(bytes: &[u8], sizes: Vec<usize>) -> (Vec<Frame>, Option<std::io::Error>) {
    let mut r = FrameReader::new(Trickle {
        data: bytes,
        sizes,
        i: 0,
    });
    let mut frames = Vec::new();
    loop {
        match r.read_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

fn kind() -> impl Strategy<Value = FrameKind> {
    prop_oneof![
        Just(FrameKind::Request),
        Just(FrameKind::Reply),
        Just(FrameKind::Event),
        Just(FrameKind::Data),
        Just(FrameKind::Eof),
        Just(FrameKind::Credit),
        Just(FrameKind::Cancel),
    ]
}

/// Frames with payloads small and large (past the reader's direct-read size of 8 KiB).
fn frames() -> impl Strategy<Value = Vec<Frame>> {
    let payload = prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => proptest::collection::vec(any::<u8>(), 8000..20_000),
    ];
    proptest::collection::vec(
        (any::<u32>(), kind(), payload).prop_map(|(stream, kind, payload)| Frame {
            stream,
            kind,
            payload,
        }),
        0..12,
    )
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        frame::encode_frame(&mut out, f.stream, f.kind, &f.payload);
    }
    out
}

/// A frame header with the given fields.
fn header(len: u32, stream: u32, kind: u8) -> Vec<u8> {
    let mut h = len.to_le_bytes().to_vec();
    h.extend_from_slice(&stream.to_le_bytes());
    h.push(kind);
    h
}

proptest! {
    /// Any bytes: no panic, and the same frames and error however the bytes arrive.
    #[test]
    fn arbitrary_bytes_decode_the_same_in_any_pieces(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let whole = decode_in_pieces(&bytes, &[]);
        prop_assert_eq!(&decode_in_pieces(&bytes, &cuts), &whole);
        // The decoder never claims more bytes than it was given.
        let used: usize = whole.frames.iter().map(|f| HEADER_LEN + f.payload.len()).sum();
        prop_assert!(used <= bytes.len());
    }

    /// Encoded frames come back exactly, from the decoder and from the reader, however the
    /// bytes are split.
    #[test]
    fn encoded_frames_round_trip(
        frames in frames(),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
        sizes in proptest::collection::vec(1usize..70_000, 1..8),
    ) {
        let bytes = encode(&frames);
        let out = decode_in_pieces(&bytes, &cuts);
        prop_assert_eq!(&out.frames, &frames);
        prop_assert!(out.error.is_none());
        let (read, err) = read_all(&bytes, sizes);
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert_eq!(read, frames);
    }

    /// A stream cut inside a frame: the decoder waits for more, the reader says where it
    /// ended; neither makes up a frame.
    #[test]
    fn truncated_streams_yield_only_whole_frames(
        frames in frames().prop_filter("some bytes", |f| !f.is_empty()),
        cut in any::<usize>(),
        sizes in proptest::collection::vec(1usize..70_000, 1..8),
    ) {
        let bytes = encode(&frames);
        let end = cut % bytes.len();
        let out = decode_in_pieces(&bytes[..end], &[]);
        prop_assert!(out.error.is_none());
        prop_assert!(frames.starts_with(&out.frames));
        let (read, err) = read_all(&bytes[..end], sizes);
        prop_assert!(frames.starts_with(&read));
        let whole: usize = read.iter().map(|f| HEADER_LEN + f.payload.len()).sum();
        if whole == end {
            prop_assert!(err.is_none());
        } else {
            let err = err.expect("an error for a cut frame");
            prop_assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        }
    }

    /// A length past the limit is refused from the header alone (no payload needed, nothing
    /// allocated for it), by both decoders.
    #[test]
    fn oversized_lengths_are_refused_from_the_header(
        len in (MAX_PAYLOAD_LEN as u32 + 1)..=u32::MAX,
        stream in any::<u32>(),
        kind in 1u8..=7,
    ) {
        let h = header(len, stream, kind);
        let mut d = FrameDecoder::new();
        d.push(&h);
        prop_assert!(matches!(d.next_frame(), Err(ProtocolError::TooLarge(n)) if n == len as usize));
        let (read, err) = read_all(&h, vec![HEADER_LEN]);
        prop_assert!(read.is_empty());
        prop_assert_eq!(err.expect("refused").kind(), std::io::ErrorKind::InvalidData);
    }

    /// An unknown kind byte is refused, by both decoders.
    #[test]
    fn unknown_kinds_are_refused(
        len in 0u32..64,
        stream in any::<u32>(),
        kind in any::<u8>().prop_filter("unknown", |k| !(1..=7).contains(k)),
    ) {
        let mut bytes = header(len, stream, kind);
        bytes.resize(HEADER_LEN + len as usize, 0);
        let mut d = FrameDecoder::new();
        d.push(&bytes);
        prop_assert!(matches!(d.next_frame(), Err(ProtocolError::UnknownKind(k)) if k == kind));
        let (_, err) = read_all(&bytes, vec![4096]);
        prop_assert_eq!(err.expect("refused").kind(), std::io::ErrorKind::InvalidData);
    }

    /// Channel and credit payloads: never a panic; a credit is exactly a known channel and
    /// four bytes.
    #[test]
    fn channel_and_credit_payloads(payload in proptest::collection::vec(any::<u8>(), 0..16)) {
        let f = Frame { stream: 1, kind: FrameKind::Credit, payload: payload.clone() };
        let known = payload.first().is_some_and(|c| *c <= 2);
        prop_assert_eq!(f.channel_payload().is_ok(), known);
        match f.credit() {
            Ok((ch, n)) => {
                prop_assert!(known && payload.len() == 5);
                prop_assert_eq!(ch as u8, payload[0]);
                prop_assert_eq!(n, u32::from_le_bytes(payload[1..5].try_into().unwrap()));
            }
            Err(_) => prop_assert!(!known || payload.len() != 5),
        }
        let mut out = Vec::new();
        if let Some(ch) = payload.first().and_then(|c| Channel::from_u8(*c)) {
            frame::encode_data(&mut out, 9, ch, &payload[1..]);
            let out = decode_in_pieces(&out, &[]);
            let (c, rest) = out.frames[0].channel_payload().unwrap();
            prop_assert_eq!(c, ch);
            prop_assert_eq!(rest, &payload[1..]);
        }
    }

    /// JSON messages from arbitrary bytes, and from valid messages with bytes changed: an
    /// error or a value, never a panic.
    #[test]
    fn json_messages_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        which in 0usize..4,
    ) {
        let _ = decode_json::<Request>(&bytes);
        let _ = decode_json::<Reply>(&bytes);
        let _ = decode_json::<Event>(&bytes);
        let valid: [&[u8]; 4] = [
            br#"{"op":"exec","argv":["sh","-c","echo hi"],"env":{"A":"1"},"cwd":"/"}"#,
            br#"{"ok":{"exited":{"code":0}}}"#,
            br#"{"error":{"code":"not_found","message":"x"}}"#,
            br#"{"started":{"pid":7}}"#,
        ];
        let mut m = valid[which].to_vec();
        for (at, b) in flips {
            let i = at % m.len();
            m[i] = b;
        }
        let _ = decode_json::<Request>(&m);
        let _ = decode_json::<Reply>(&m);
        let _ = decode_json::<Event>(&m);
    }
}

//! Records and their on-disk framing.
//!
//! A segment file starts with [`SEGMENT_MAGIC`], then records back to back:
//!
//! ```text
//! len: u32 LE | crc: u32 LE | body (len bytes)
//! body = seq: u64 LE | time_ns: i64 LE | id_len: u16 LE | kind_len: u16 LE | id | kind | payload
//! crc  = CRC32C(len bytes ++ body)
//! ```
//!
//! The checksum covers the length too, so a torn or flipped length is caught like a torn body.

/// The first bytes of every segment file (format version 1).
pub const SEGMENT_MAGIC: &[u8; 8] = b"CTWJSEG1";
/// Bytes before the body: length and checksum.
pub const FRAME_HEADER: usize = 8;
/// Fixed part of a body: seq, time, two lengths.
pub const BODY_FIXED: usize = 20;
/// No body is ever longer than this, whatever `Options::max_record_bytes` says (a length above it
/// is corruption).
pub const HARD_MAX_BODY: usize = 64 << 20;

/// One event as given to [`crate::Journal::append`].
#[derive(Debug, Clone, Copy)]
pub struct JournalRecordInput<'a> {
    /// When the event happened, in nanoseconds since the Unix epoch (used by `find_by_time` and
    /// age retention).
    pub time_ns: i64,
    /// The container the event is about (indexed for `history`); empty if none.
    pub container_id: &'a str,
    /// The event's kind (`container_create`, ...).
    pub kind: &'a str,
    /// The event itself (its JSON); opaque to the journal.
    pub payload: &'a [u8],
}

/// One event as read back from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Assigned by the journal: strictly increasing for the journal's life.
    pub seq: u64,
    /// When the event happened, in nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// The container the event is about; empty if none.
    pub container_id: String,
    /// The event's kind.
    pub kind: String,
    /// The event itself, byte for byte as appended.
    pub payload: Vec<u8>,
}

/// The size of a framed record, or `None` if a field does not fit its length field.
pub(crate) fn framed_len(input: &JournalRecordInput<'_>) -> Option<usize> {
    if input.container_id.len() > u16::MAX as usize || input.kind.len() > u16::MAX as usize {
        return None;
    }
    Some(FRAME_HEADER + BODY_FIXED + input.container_id.len() + input.kind.len() + input.payload.len())
}

/// Appends the framed record to `out`. The caller checked `framed_len`.
#[cfg(test)]
pub(crate) fn encode(out: &mut Vec<u8>, seq: u64, input: &JournalRecordInput<'_>) {
    encode_with(out, seq, input.time_ns, input.container_id, input.kind, |_, b| b.extend_from_slice(input.payload));
}

/// Appends a framed record whose payload `payload` writes (given the seq), and returns the body
/// length. `container_id` and `kind` must fit a u16 (the caller checked). The caller truncates
/// `out` back if it refuses the record.
pub(crate) fn encode_with(
    out: &mut Vec<u8>,
    seq: u64,
    time_ns: i64,
    container_id: &str,
    kind: &str,
    payload: impl FnOnce(u64, &mut Vec<u8>),
) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time_ns.to_le_bytes());
    out.extend_from_slice(&(container_id.len() as u16).to_le_bytes());
    out.extend_from_slice(&(kind.len() as u16).to_le_bytes());
    out.extend_from_slice(container_id.as_bytes());
    out.extend_from_slice(kind.as_bytes());
    payload(seq, out);
    let body_len = out.len() - start - FRAME_HEADER;
    out[start..start + 4].copy_from_slice(&(body_len.min(u32::MAX as usize) as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 4]), &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    body_len
}

/// A record decoded in place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordRef<'a> {
    pub seq: u64,
    pub time_ns: i64,
    pub container_id: &'a str,
    pub kind: &'a str,
    pub payload: &'a [u8],
}

impl RecordRef<'_> {
    pub(crate) fn to_owned(self) -> Record {
        Record {
            seq: self.seq,
            time_ns: self.time_ns,
            container_id: self.container_id.to_owned(),
            kind: self.kind.to_owned(),
            payload: self.payload.to_vec(),
        }
    }
}

/// What is at the start of a buffer.
#[derive(Debug)]
pub(crate) enum Decoded<'a> {
    /// A good record and its framed length.
    Record(RecordRef<'a>, usize),
    /// The buffer ends inside a record (read more, or it is a torn tail).
    Incomplete,
    /// Not a good record: bad length, bad checksum, bad fields.
    Corrupt(&'static str),
}

/// Decodes the record at the start of `buf`, checksum included; never panics.
pub(crate) fn decode(buf: &[u8]) -> Decoded<'_> {
    decode_inner(buf, true)
}

/// Decodes a record this process just encoded (the writer's own batch): the same checks but
/// the checksum.
pub(crate) fn decode_trusted(buf: &[u8]) -> Decoded<'_> {
    decode_inner(buf, false)
}

fn decode_inner(buf: &[u8], verify: bool) -> Decoded<'_> {
    if buf.len() < FRAME_HEADER {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
    if !(BODY_FIXED..=HARD_MAX_BODY).contains(&len) {
        return Decoded::Corrupt("bad record length");
    }
    if buf.len() < FRAME_HEADER + len {
        return Decoded::Incomplete;
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap_or_default());
    let body = &buf[FRAME_HEADER..FRAME_HEADER + len];
    if verify && crc32c::crc32c_append(crc32c::crc32c(&buf[0..4]), body) != crc {
        return Decoded::Corrupt("checksum mismatch");
    }
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap_or_default());
    let u16_at = |i: usize| u16::from_le_bytes(body[i..i + 2].try_into().unwrap_or_default()) as usize;
    let seq = u64_at(0);
    let time_ns = u64_at(8) as i64;
    let id_len = u16_at(16);
    let kind_len = u16_at(18);
    if BODY_FIXED + id_len + kind_len > len {
        return Decoded::Corrupt("field lengths exceed the record");
    }
    let id_end = BODY_FIXED + id_len;
    let kind_end = id_end + kind_len;
    let (Ok(container_id), Ok(kind)) =
        (std::str::from_utf8(&body[BODY_FIXED..id_end]), std::str::from_utf8(&body[id_end..kind_end]))
    else {
        return Decoded::Corrupt("container id or kind is not UTF-8");
    };
    Decoded::Record(RecordRef { seq, time_ns, container_id, kind, payload: &body[kind_end..] }, FRAME_HEADER + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        let input = JournalRecordInput {
            time_ns: 1_700_000_000_000_000_000,
            container_id: "abc",
            kind: "container_create",
            payload: br#"{"x":1}"#,
        };
        encode(&mut out, 42, &input);
        assert_eq!(out.len(), framed_len(&input).unwrap());
        out
    }

    #[test]
    fn round_trip() {
        let buf = sample();
        match decode(&buf) {
            Decoded::Record(r, n) => {
                assert_eq!(n, buf.len());
                assert_eq!(r.seq, 42);
                assert_eq!(r.time_ns, 1_700_000_000_000_000_000);
                assert_eq!(r.container_id, "abc");
                assert_eq!(r.kind, "container_create");
                assert_eq!(r.payload, br#"{"x":1}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_prefix_is_incomplete_and_every_flip_is_caught() {
        let buf = sample();
        for cut in 0..buf.len() {
            assert!(matches!(decode(&buf[..cut]), Decoded::Incomplete | Decoded::Corrupt(_)));
        }
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                assert!(!matches!(decode(&b), Decoded::Record(..)), "flip of bit {bit} in byte {i} not caught");
            }
        }
    }

    #[test]
    fn zeros_are_corrupt() {
        assert!(matches!(decode(&[0u8; 64]), Decoded::Corrupt(_)));
    }

    #[test]
    fn oversized_fields_are_refused() {
        let long = "x".repeat(70_000);
        let input = JournalRecordInput { time_ns: 0, container_id: &long, kind: "k", payload: b"" };
        assert!(framed_len(&input).is_none());
    }
}

//! The on-disk batch: a run of consecutive records stored under one RocksDB key.
//!
//! The key is the batch's base offset (big-endian `u64`, so byte order is offset
//! order); the value is this compact binary encoding. Layout (integers big-endian):
//!
//! ```text
//! 0  magic u8 (= 1)          1  attributes u8 (reserved, 0)
//! 2  leader_epoch u32        6  record count u32
//! 10 first_timestamp i64     18 max_timestamp i64
//! 26 running_max_timestamp i64   (max over the partition up to this batch; set by the writer)
//! 34 crc32 u32 of bytes 38.. (the body)
//! 38 body: shared headers (u16 n, then n × [u16 name len, name, u32 len, value])
//!          then `count` records, each:
//!          attrs u8 (bit 0: value is JSON, bit 1: has key), offset_delta u32,
//!          timestamp i64, [u32 key len, key], headers (as above), u32 value len, value
//! ```
//!
//! Shared headers apply to every record of the batch (the gateway's receive time,
//! client IP and user agent are the same for all events of one request), so they are
//! stored once. The CRC covers the body, where all record data lives; header fields
//! are re-validated on decode (count, magic).

use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Result, StorageError};

const MAGIC: u8 = 1;
const HEADER_LEN: usize = 38;
const OFF_EPOCH: usize = 2;
const OFF_COUNT: usize = 6;
const OFF_FIRST_TS: usize = 10;
const OFF_MAX_TS: usize = 18;
const OFF_RUNNING_MAX_TS: usize = 26;
const OFF_CRC: usize = 34;

const ATTR_JSON: u8 = 1;
const ATTR_KEY: u8 = 2;

/// A record as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the partition: dense, increasing, never reused.
    pub offset: u64,
    /// Milliseconds since the Unix epoch (producer's, else the gateway's receive time).
    pub timestamp: i64,
    /// Optional key (used for partitioning).
    pub key: Option<Bytes>,
    /// Headers: the batch's shared headers first, then the record's own.
    pub headers: Headers,
    /// The payload, byte for byte as appended.
    pub value: Bytes,
    /// Whether `value` is a JSON text. Appenders set it only for values they parsed as
    /// JSON (the batch checksum guards it afterwards), so readers may inline the value
    /// in JSON output without parsing it again.
    pub value_is_json: bool,
}

/// A record's headers: those shared by every record of its batch (the gateway's
/// receive time, client IP and user agent; decoded once per batch and shared by
/// reference), then the record's own. Equality compares the sequence, not the split.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    shared: Arc<[(String, Bytes)]>,
    own: Vec<(String, Bytes)>,
}

impl Headers {
    /// Headers made of a batch's shared ones followed by a record's own.
    pub fn new(shared: Arc<[(String, Bytes)]>, own: Vec<(String, Bytes)>) -> Self {
        Self { shared, own }
    }

    /// Every header, shared ones first, in stored order.
    pub fn iter(&self) -> impl Iterator<Item = &(String, Bytes)> {
        self.shared.iter().chain(&self.own)
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.shared.len() + self.own.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<(String, Bytes)>> for Headers {
    fn from(own: Vec<(String, Bytes)>) -> Self {
        Self { shared: Arc::default(), own }
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

/// Builds one encoded batch. Records get offsets `base..base+count` when the writer
/// stores the batch; the builder only knows their order.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: u32,
    first_ts: i64,
    max_ts: i64,
}

/// A finished batch, ready to hand to [`crate::Store::append`].
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub(crate) bytes: Vec<u8>,
    pub(crate) count: u32,
    pub(crate) max_ts: i64,
}

impl EncodedBatch {
    /// Number of records in the batch.
    pub fn count(&self) -> u32 {
        self.count
    }
    /// Encoded size in bytes (what it adds to the partition's size).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    /// True when the batch holds no records.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

fn put_headers(buf: &mut Vec<u8>, headers: &[(&str, &[u8])]) {
    let n = u16::try_from(headers.len()).expect("header count checked by caller");
    buf.extend_from_slice(&n.to_be_bytes());
    for (name, value) in headers {
        buf.extend_from_slice(&(name.len() as u16).to_be_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(&(value.len() as u32).to_be_bytes());
        buf.extend_from_slice(value);
    }
}

/// Largest number of headers per record or per batch, and largest header name.
pub const MAX_HEADERS: usize = u16::MAX as usize;
/// Longest header name in bytes.
pub const MAX_HEADER_NAME: usize = u16::MAX as usize;

impl BatchBuilder {
    /// Starts a batch whose records all carry `shared_headers`.
    ///
    /// Panics if there are more than [`MAX_HEADERS`] headers or a name is longer than
    /// [`MAX_HEADER_NAME`]; callers validate input first.
    pub fn new(shared_headers: &[(&str, &[u8])], capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + capacity);
        buf.resize(HEADER_LEN, 0);
        put_headers(&mut buf, shared_headers);
        Self { buf, count: 0, first_ts: 0, max_ts: i64::MIN }
    }

    /// Appends one record. Its offset will be `base + (records pushed before it)`.
    /// `value_is_json` must be true only for a value the caller parsed as JSON
    /// (see [`Record::value_is_json`]).
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        value: &[u8],
        value_is_json: bool,
    ) {
        if self.count == 0 {
            self.first_ts = timestamp;
        }
        self.max_ts = self.max_ts.max(timestamp);
        let mut attrs = 0;
        if value_is_json {
            attrs |= ATTR_JSON;
        }
        if key.is_some() {
            attrs |= ATTR_KEY;
        }
        self.buf.push(attrs);
        self.buf.extend_from_slice(&self.count.to_be_bytes());
        self.buf.extend_from_slice(&timestamp.to_be_bytes());
        if let Some(key) = key {
            self.buf.extend_from_slice(&(key.len() as u32).to_be_bytes());
            self.buf.extend_from_slice(key);
        }
        put_headers(&mut self.buf, headers);
        self.buf.extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(value);
        self.count += 1;
    }

    /// Number of records pushed so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Seals the batch: writes the header and the body checksum.
    pub fn finish(mut self, leader_epoch: u32) -> EncodedBatch {
        let crc = crc32fast::hash(&self.buf[HEADER_LEN..]);
        let h = &mut self.buf[..HEADER_LEN];
        h[0] = MAGIC;
        h[1] = 0;
        h[OFF_EPOCH..OFF_EPOCH + 4].copy_from_slice(&leader_epoch.to_be_bytes());
        h[OFF_COUNT..OFF_COUNT + 4].copy_from_slice(&self.count.to_be_bytes());
        h[OFF_FIRST_TS..OFF_FIRST_TS + 8].copy_from_slice(&self.first_ts.to_be_bytes());
        h[OFF_MAX_TS..OFF_MAX_TS + 8].copy_from_slice(&self.max_ts.to_be_bytes());
        h[OFF_RUNNING_MAX_TS..OFF_RUNNING_MAX_TS + 8].copy_from_slice(&self.max_ts.to_be_bytes());
        h[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        EncodedBatch { bytes: self.buf, count: self.count, max_ts: self.max_ts }
    }
}

impl EncodedBatch {
    /// Sets the running maximum timestamp (the writer knows the partition's history).
    pub(crate) fn set_running_max_ts(&mut self, ts: i64) {
        self.bytes[OFF_RUNNING_MAX_TS..OFF_RUNNING_MAX_TS + 8].copy_from_slice(&ts.to_be_bytes());
    }
}

/// The fixed header of a stored batch, readable without decoding the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub leader_epoch: u32,
    pub count: u32,
    pub first_ts: i64,
    pub max_ts: i64,
    pub running_max_ts: i64,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads a batch header; fails on short input or a wrong magic byte.
pub fn read_header(bytes: &[u8]) -> std::result::Result<BatchHeader, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("batch of {} bytes is shorter than its header", bytes.len()));
    }
    if bytes[0] != MAGIC {
        return Err(format!("unknown batch magic {}", bytes[0]));
    }
    Ok(BatchHeader {
        leader_epoch: be_u32(bytes, OFF_EPOCH),
        count: be_u32(bytes, OFF_COUNT),
        first_ts: be_i64(bytes, OFF_FIRST_TS),
        max_ts: be_i64(bytes, OFF_MAX_TS),
        running_max_ts: be_i64(bytes, OFF_RUNNING_MAX_TS),
    })
}

/// A bounds-checked cursor over a batch body.
struct Cursor<'a> {
    b: &'a Bytes,
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<std::ops::Range<usize>, String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| format!("truncated batch at byte {}", self.at))?;
        let r = self.at..end;
        self.at = end;
        Ok(r)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.b[self.take(1)?][0])
    }
    fn u16(&mut self) -> std::result::Result<u16, String> {
        let r = self.take(2)?;
        Ok(u16::from_be_bytes(self.b[r].try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        let r = self.take(4)?;
        Ok(be_u32(&self.b[r], 0))
    }
    fn i64(&mut self) -> std::result::Result<i64, String> {
        let r = self.take(8)?;
        Ok(be_i64(&self.b[r], 0))
    }
    fn bytes(&mut self, n: usize) -> std::result::Result<Bytes, String> {
        let r = self.take(n)?;
        Ok(self.b.slice(r))
    }
    fn headers(&mut self, out: &mut Vec<(String, Bytes)>) -> std::result::Result<(), String> {
        let n = self.u16()?;
        for _ in 0..n {
            let len = self.u16()? as usize;
            let name = self.bytes(len)?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| "header name is not UTF-8")?;
            let len = self.u32()? as usize;
            out.push((name, self.bytes(len)?));
        }
        Ok(())
    }
}

/// Decodes every record of a stored batch whose base offset is `base`, appending
/// those with `offset >= from` to `out`, stopping before `until` or after `max`
/// records. Verifies the checksum. Returns the header.
pub fn decode_into(
    base: u64,
    bytes: &Bytes,
    from: u64,
    until: u64,
    max: usize,
    out: &mut Vec<Record>,
) -> std::result::Result<BatchHeader, String> {
    let header = read_header(bytes)?;
    let crc = be_u32(bytes, OFF_CRC);
    if crc32fast::hash(&bytes[HEADER_LEN..]) != crc {
        return Err("checksum mismatch".into());
    }
    let mut c = Cursor { b: bytes, at: HEADER_LEN };
    let mut shared = Vec::new();
    c.headers(&mut shared)?;
    let shared: Arc<[(String, Bytes)]> = shared.into();
    for i in 0..header.count {
        let attrs = c.u8()?;
        let delta = c.u32()?;
        if delta != i {
            return Err(format!("record {i} has offset delta {delta}"));
        }
        let timestamp = c.i64()?;
        let key = if attrs & ATTR_KEY != 0 {
            let n = c.u32()? as usize;
            Some(c.bytes(n)?)
        } else {
            None
        };
        let mut own = Vec::new();
        c.headers(&mut own)?;
        let n = c.u32()? as usize;
        let value = c.bytes(n)?;
        let offset = base + u64::from(delta);
        if offset >= until || out.len() >= max {
            break;
        }
        if offset >= from {
            let headers = Headers::new(shared.clone(), own);
            out.push(Record { offset, timestamp, key, headers, value, value_is_json: attrs & ATTR_JSON != 0 });
        }
    }
    Ok(header)
}

/// Checks a batch's header and checksum without building records (recovery).
pub fn verify(bytes: &[u8]) -> std::result::Result<BatchHeader, String> {
    let header = read_header(bytes)?;
    if crc32fast::hash(&bytes[HEADER_LEN..]) != be_u32(bytes, OFF_CRC) {
        return Err("checksum mismatch".into());
    }
    Ok(header)
}

/// Big-endian key for a base offset: byte order equals offset order.
pub fn offset_key(offset: u64) -> [u8; 8] {
    offset.to_be_bytes()
}

/// Decodes a key written by [`offset_key`].
pub fn key_offset(key: &[u8], cf: &str) -> Result<u64> {
    let arr: [u8; 8] = key.try_into().map_err(|_| StorageError::Corrupt {
        cf: cf.to_string(),
        offset: 0,
        reason: format!("key of {} bytes", key.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EncodedBatch {
        let mut b = BatchBuilder::new(&[("client-ip", b"127.0.0.1")], 64);
        b.push(10, Some(b"k1"), &[], br#"{"a":1}"#, true);
        b.push(5, None, &[("h", b"v")], b"\x00\x01", false);
        b.push(20, Some(b""), &[], b"", false);
        b.finish(7)
    }

    #[test]
    fn headers_compare_by_sequence_not_by_split() {
        let h = |n: &str, v: &'static [u8]| (n.to_string(), Bytes::from_static(v));
        let split = Headers::new(vec![h("x", b"1")].into(), vec![h("y", b"2")]);
        assert_eq!(split, Headers::from(vec![h("x", b"1"), h("y", b"2")]));
        assert_ne!(split, Headers::from(vec![h("y", b"2"), h("x", b"1")]));
        assert_eq!(split.len(), 2);
        assert!(Headers::default().is_empty());
        let names: Vec<&str> = split.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x", "y"]);
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let batch = sample();
        let bytes = Bytes::from(batch.bytes);
        let mut out = Vec::new();
        let h = decode_into(100, &bytes, 0, u64::MAX, usize::MAX, &mut out).unwrap();
        assert_eq!(h.count, 3);
        assert_eq!(h.leader_epoch, 7);
        assert_eq!((h.first_ts, h.max_ts), (10, 20));
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].offset, 100);
        assert_eq!(out[0].key.as_deref(), Some(&b"k1"[..]));
        assert!(out[0].value_is_json);
        assert_eq!(out[0].headers, Headers::from(vec![("client-ip".to_string(), Bytes::from_static(b"127.0.0.1"))]));
        assert_eq!(out[1].headers.len(), 2);
        assert_eq!(out[1].value.as_ref(), b"\x00\x01");
        assert!(!out[1].value_is_json);
        assert_eq!(out[2].key.as_deref(), Some(&b""[..]));
        assert_eq!(out[2].offset, 102);
    }

    #[test]
    fn decode_honours_from_until_and_max() {
        let bytes = Bytes::from(sample().bytes);
        let mut out = Vec::new();
        decode_into(100, &bytes, 101, 103, 10, &mut out).unwrap();
        assert_eq!(out.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![101, 102]);
        out.clear();
        decode_into(100, &bytes, 0, 102, 10, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        out.clear();
        decode_into(100, &bytes, 0, u64::MAX, 1, &mut out).unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_flipped_bit_is_detected() {
        let mut raw = sample().bytes;
        let last = raw.len() - 1;
        raw[last] ^= 0x40;
        let mut out = Vec::new();
        let err = decode_into(0, &Bytes::from(raw.clone()), 0, u64::MAX, 10, &mut out).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        assert!(verify(&raw).is_err());
        raw.truncate(10);
        assert!(verify(&raw).is_err());
    }

    #[test]
    fn keys_sort_like_offsets() {
        let mut keys: Vec<_> = [5u64, 256, 1, u64::MAX, 65536].iter().map(|&o| offset_key(o)).collect();
        keys.sort();
        let offs: Vec<u64> = keys.iter().map(|k| key_offset(k, "t").unwrap()).collect();
        assert_eq!(offs, vec![1, 5, 256, 65536, u64::MAX]);
    }
}

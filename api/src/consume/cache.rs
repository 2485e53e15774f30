//! Recently sent records frames, shared by every subscription of the node.
//!
//! Subscribers tailing the same partition wake on the same append and read from the
//! same offset; without sharing, 1,000 subscribers cost 1,000 storage reads and
//! 1,000 JSON encodings of the same records. A frame for `(partition, offset)` is
//! valid forever (records below the high watermark never change), so the cache
//! needs no invalidation, only a byte bound (`subscription_cache_bytes`, oldest
//! entries evicted first). Keys use the partition's storage id, which is unique per
//! topic incarnation, so a re-created topic never gets the old topic's frames.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;

/// An encoded `records` frame and where it ends.
#[derive(Debug, Clone)]
pub struct CachedFrame {
    /// The frame's JSON text.
    pub text: Utf8Bytes,
    /// Offset after the frame's last record.
    pub next_offset: u64,
    /// Records in the frame.
    pub count: u64,
}

/// Frames by partition storage id, then by first offset (looked up by `&str`, so a hit
/// allocates nothing), and their insertion order for eviction.
#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, HashMap<u64, CachedFrame>>,
    order: VecDeque<(String, u64)>,
    bytes: usize,
}

/// A byte-bounded FIFO cache of frames. `std::sync::Mutex`: sections are a hash
/// lookup or insert, never held across `.await`.
#[derive(Debug)]
pub struct FrameCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

impl FrameCache {
    /// A cache holding at most `max_bytes` of frame text (0 disables it).
    pub fn new(max_bytes: usize) -> Self {
        Self { inner: Mutex::new(Inner::default()), max_bytes }
    }

    /// The frame starting at `offset` of the partition `log_id`, if cached.
    pub fn get(&self, log_id: &str, offset: u64) -> Option<CachedFrame> {
        let inner = self.inner.lock().expect("frame cache lock");
        inner.map.get(log_id)?.get(&offset).cloned()
    }

    /// Remembers a frame, evicting the oldest ones beyond the byte bound.
    pub fn insert(&self, log_id: &str, offset: u64, frame: CachedFrame) {
        let size = frame.text.len();
        if size > self.max_bytes / 4 {
            return;
        }
        let mut guard = self.inner.lock().expect("frame cache lock");
        let inner = &mut *guard;
        let frames = inner.map.entry(log_id.to_string()).or_default();
        if frames.contains_key(&offset) {
            return;
        }
        frames.insert(offset, frame);
        inner.bytes += size;
        inner.order.push_back((log_id.to_string(), offset));
        while inner.bytes > self.max_bytes {
            let Some((old_log, old_offset)) = inner.order.pop_front() else { break };
            let Some(frames) = inner.map.get_mut(&old_log) else { continue };
            if let Some(f) = frames.remove(&old_offset) {
                inner.bytes -= f.text.len();
            }
            if frames.is_empty() {
                inner.map.remove(&old_log);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str, next: u64) -> CachedFrame {
        CachedFrame { text: Utf8Bytes::from(text.to_string()), next_offset: next, count: 1 }
    }

    #[test]
    fn hits_misses_and_the_byte_bound() {
        let cache = FrameCache::new(40);
        cache.insert("p/a/1/0", 0, frame("0123456789", 1));
        assert_eq!(cache.get("p/a/1/0", 0).unwrap().next_offset, 1);
        assert!(cache.get("p/a/2/0", 0).is_none(), "another incarnation misses");
        assert!(cache.get("p/a/1/0", 1).is_none());
        for o in 1..5 {
            cache.insert("p/a/1/0", o, frame("0123456789", o + 1));
        }
        assert!(cache.get("p/a/1/0", 0).is_none(), "oldest evicted");
        assert!(cache.get("p/a/1/0", 4).is_some());
        let inner = cache.inner.lock().unwrap();
        assert!(inner.bytes <= 40);
        let cached: usize = inner.map.values().map(HashMap::len).sum();
        assert_eq!(cached, inner.order.len());
    }
}

//! Partition choice, compatible with Kafka's Java producer.
//!
//! Explicit partition first; else `toPositive(murmur2(key)) % partitions`, exactly as
//! Kafka's default partitioner computes it (the same key lands on the same partition
//! number a Kafka producer would pick); else keyless events of one request all go to
//! one partition (sticky, like Kafka's), rotating across requests so load spreads
//! evenly.

use std::sync::atomic::{AtomicU32, Ordering};

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), bit for bit.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a key.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions > 0);
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

/// Round-robin source for keyless requests.
#[derive(Debug, Default)]
pub struct Spreader {
    next: AtomicU32,
}

impl Spreader {
    /// The partition for the keyless events of the next request.
    pub fn next(&self, partitions: u32) -> u32 {
        self.next.fetch_add(1, Ordering::Relaxed) % partitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "key {:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partition_is_to_positive_modulo() {
        // toPositive(-790332482) = 1357151166; % 6 = 0, % 7 = 1357151166 % 7.
        assert_eq!(partition_for_key(b"foobar", 6), 1357151166 % 6);
        assert_eq!(partition_for_key(b"abc", 10), 479470107 % 10);
        assert_eq!(partition_for_key(b"21", 3), ((-973932308i32 & 0x7fffffff) as u32) % 3);
    }

    #[test]
    fn spreader_visits_every_partition() {
        let s = Spreader::default();
        let mut seen: Vec<u32> = (0..6).map(|_| s.next(3)).collect();
        seen.sort();
        assert_eq!(seen, vec![0, 0, 1, 1, 2, 2]);
    }
}

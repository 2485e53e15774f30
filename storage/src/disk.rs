//! Free space on the data directory's file system, and the floor below which appends
//! stop.
//!
//! Why: when a write fails for lack of space, RocksDB refuses every later write (topic
//! deletes, retention and offset commits included) until about a memtable's worth of
//! space (64 MiB here) is free again, which nothing inside the node can then free. The
//! guard refuses appends while free space is below `min_free_disk_bytes`, before the
//! disk is full: topic admin, retention and offset commits go on, so deleting a topic
//! or shortening retention frees space, and appends resume by themselves.
//!
//! Guarantees: the writer measures before every group commit ([`DiskGuard::room`]) and
//! admits the group's requests in turn while their bytes fit above the floor, so no
//! append is written past it; a request that does not fit is refused alone and writes
//! nothing. The floor is a margin, not a quota: memtable flushes, compactions and
//! metadata still write into it, which is why the API requires it to hold a flush of
//! every memtable and the next WAL file. While free space is below the floor the
//! store flushes its memtables every second (`Store::relieve_disk`), so
//! WAL files that only unflushed metadata still pinned are deleted: what a topic delete
//! or a shorter retention frees becomes free space. `min_free_disk_bytes = 0` turns the
//! guard off.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Result, StorageError};

/// Free space when asked, and the floor (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes free for this process on the data directory's file system (`None` when
    /// the file system does not tell).
    pub free_bytes: Option<u64>,
    /// The floor (`min_free_disk_bytes`); 0 when the guard is off.
    pub min_free_bytes: u64,
    /// Appends are refused: free space is below the floor.
    pub low: bool,
}

/// Measures free space on the data directory's file system and keeps appends above
/// the floor.
#[derive(Debug)]
pub(crate) struct DiskGuard {
    /// The data directory, open, for `fstatvfs` (no path lookup per check).
    dir: std::fs::File,
    min_free: u64,
    /// Set while appends are refused (the last check found the disk low).
    low: AtomicBool,
}

impl DiskGuard {
    /// A guard of the file system holding `dir`, with floor `min_free` bytes.
    pub(crate) fn new(dir: &Path, min_free: u64) -> Result<DiskGuard> {
        let handle =
            std::fs::File::open(dir).map_err(|source| StorageError::DataDir { path: dir.to_path_buf(), source })?;
        Ok(DiskGuard { dir: handle, min_free, low: AtomicBool::new(false) })
    }

    /// Bytes free for unprivileged use now, if the file system tells.
    pub(crate) fn free_bytes(&self) -> Option<u64> {
        let stat = rustix::fs::fstatvfs(&self.dir).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Room for appends now: `(free, bytes that may still be appended)`, or `None` when
    /// the guard is off or the file system does not say how much is free (RocksDB's own
    /// errors then remain). Measures now. Called by the writer before each group commit.
    pub(crate) fn room(&self) -> Option<(u64, u64)> {
        if self.min_free == 0 {
            return None;
        }
        let free = self.free_bytes()?;
        Some((free, free.saturating_sub(self.min_free)))
    }

    /// Records the writer's verdict on a group commit (`refused`: some append did not
    /// fit above the floor); logs when appends stop and when they resume.
    pub(crate) fn verdict(&self, free: u64, refused: bool) {
        let was_low = self.low.swap(refused, Ordering::AcqRel);
        if refused && !was_low {
            tracing::warn!(free, min_free_disk_bytes = self.min_free, "disk space low: refusing appends");
        } else if was_low && !refused {
            tracing::info!(
                free,
                min_free_disk_bytes = self.min_free,
                "disk space back above the floor: appends resume"
            );
        }
    }

    /// The refusal of an append that does not fit.
    pub(crate) fn refusal(&self, free: u64) -> StorageError {
        StorageError::DiskLow { free, min: self.min_free }
    }

    /// For a request of `bytes` that does not wait for its write (`acks=none`): refused
    /// while the writer's last verdict was "low" and the bytes still do not fit above
    /// the floor, the writer's own test (its refusal would reach no one). One atomic
    /// load while the disk is fine.
    pub(crate) fn admit_detached(&self, bytes: u64) -> Result<()> {
        if !self.low.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.room() {
            Some((free, left)) if bytes > left => Err(self.refusal(free)),
            _ => Ok(()),
        }
    }

    /// Free space now, the floor, and whether appends are refused.
    pub(crate) fn space(&self) -> DiskSpace {
        let free_bytes = self.free_bytes();
        let low = self.min_free > 0 && free_bytes.is_some_and(|free| free < self.min_free);
        DiskSpace { free_bytes, min_free_bytes: self.min_free, low }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_what_is_free_above_the_floor() {
        let dir = tempfile::tempdir().expect("temp dir");
        let free = DiskGuard::new(dir.path(), 1).expect("guard").free_bytes().expect("Linux tells free space");
        assert!(free > 0);

        let off = DiskGuard::new(dir.path(), 0).expect("guard");
        assert_eq!(off.room(), None, "0 turns the guard off");
        assert!(!off.space().low);

        // A floor far above what is free: no room, and a refusal with the figures.
        let high = DiskGuard::new(dir.path(), free.saturating_mul(1000)).expect("guard");
        let (f, room) = high.room().expect("measured");
        assert_eq!(room, 0);
        assert!(matches!(high.refusal(f), StorageError::DiskLow { min, .. } if min == free.saturating_mul(1000)));
        assert!(high.space().low);
        assert!(high.admit_detached(100).is_ok(), "no verdict yet");
        high.verdict(f, true);
        assert!(high.admit_detached(100).is_err(), "refused while the writer refuses and space is short");

        // A floor of one byte: room for nearly everything free.
        let low = DiskGuard::new(dir.path(), 1).expect("guard");
        let (_, room) = low.room().expect("measured");
        assert!(room > 0);
        low.verdict(1, true);
        assert!(low.admit_detached(100).is_ok(), "space is back: detached appends go on");
        assert!(low.admit_detached(u64::MAX).is_err(), "the writer's test: what does not fit is refused");
        assert!(!low.space().low);
    }
}

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
//! Guarantees: the writer checks before every group commit ([`DiskGuard::admit`]),
//! counting the group's own bytes, so no append is written past the floor (the floor
//! is a margin, not a hard cap: metadata, memtable flushes and compactions still write).
//! A refused append writes nothing. `min_free_disk_bytes = 0` turns the guard off.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Result, StorageError};

/// Free space as last measured, and the floor (see the module documentation).
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

    /// Whether `incoming` more bytes may be appended: `Err(DiskLow)` when free space
    /// minus `incoming` is below the floor. Measures now; logs when appends stop and
    /// when they resume. Called by the writer before each group commit.
    pub(crate) fn admit(&self, incoming: u64) -> Result<()> {
        if self.min_free == 0 {
            return Ok(());
        }
        // A file system that does not say how much is free cannot be guarded: RocksDB's
        // own errors remain.
        let Some(free) = self.free_bytes() else { return Ok(()) };
        let low = free < self.min_free.saturating_add(incoming);
        let was_low = self.low.swap(low, Ordering::AcqRel);
        if low && !was_low {
            tracing::warn!(free, min_free_disk_bytes = self.min_free, "disk space low: refusing appends");
        } else if was_low && !low {
            tracing::info!(
                free,
                min_free_disk_bytes = self.min_free,
                "disk space back above the floor: appends resume"
            );
        }
        if low { Err(StorageError::DiskLow { free, min: self.min_free }) } else { Ok(()) }
    }

    /// [`DiskGuard::admit`] for a request that does not wait for its write
    /// (`acks=none`): cheap while the disk is fine (the writer's last verdict), measured
    /// again while it is low.
    pub(crate) fn admit_detached(&self) -> Result<()> {
        if self.low.load(Ordering::Acquire) { self.admit(0) } else { Ok(()) }
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
    fn the_floor_refuses_appends_below_it_and_admits_above() {
        let dir = tempfile::tempdir().expect("temp dir");
        let free = DiskGuard::new(dir.path(), 1).expect("guard").free_bytes().expect("Linux tells free space");
        assert!(free > 0);

        let off = DiskGuard::new(dir.path(), 0).expect("guard");
        assert!(off.admit(u64::MAX).is_ok(), "0 turns the guard off");
        assert!(!off.space().low);

        // A floor far above what is free: refused, with the figures.
        let high = DiskGuard::new(dir.path(), free.saturating_mul(1000)).expect("guard");
        match high.admit(0) {
            Err(StorageError::DiskLow { free: f, min }) => {
                assert!(f > 0 && min == free.saturating_mul(1000), "{f} {min}");
            }
            other => panic!("expected DiskLow, got {other:?}"),
        }
        assert!(high.space().low);
        assert!(high.admit_detached().is_err(), "the refusal sticks for detached appends");

        // A floor of one byte: admitted, unless the append itself would not fit.
        let low = DiskGuard::new(dir.path(), 1).expect("guard");
        assert!(low.admit(0).is_ok());
        assert!(low.admit_detached().is_ok());
        assert!(matches!(low.admit(u64::MAX), Err(StorageError::DiskLow { .. })), "the group's bytes count");
        assert!(low.admit(0).is_ok(), "and appends resume once they fit");
    }
}

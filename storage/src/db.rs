//! The RocksDB database with a column-family handle map of its own.
//!
//! Why: the `rocksdb` crate keeps its handles in a map behind a lock that it holds for
//! writing during the whole of a column-family create or drop, and RocksDB rewrites
//! and re-reads its OPTIONS file (every column family's options) inside each of them:
//! ~100 ms each on a node with 300 partitions. Every `cf_handle` lookup (the writer's,
//! each read's, each dedup lookup's) waited behind it, so creating or deleting a topic
//! held up appends and reads on every topic for seconds. Here lookups go to this map,
//! whose lock is held only for a map update; creates and drops still take the crate's
//! lock, which nothing on a hot path touches any more.
//!
//! Guarantees:
//! - [`Db::cf_handle`] never waits for a create or drop in progress: it answers from the
//!   map, where a column family appears once its create is done and disappears when its
//!   drop begins.
//! - A handle never outlives the database: callers get handles bound to `&self`, as from
//!   the crate; the map's own handles are dropped before the database closes.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rocksdb::{BoundColumnFamily, ColumnFamilyDescriptor, DBWithThreadMode, MultiThreaded, Options};

type Rocks = DBWithThreadMode<MultiThreaded>;
type Handles = HashMap<String, Arc<BoundColumnFamily<'static>>>;

/// The database: every method of the `rocksdb` crate's multi-threaded database (through
/// `Deref`), with column-family lookup, create and drop answered by the map above.
pub(crate) struct Db {
    // Declared before `rocks`, so dropped first: no handle of the map outlives the
    // database (see `detach`).
    handles: RwLock<Handles>,
    rocks: Rocks,
}

impl std::ops::Deref for Db {
    type Target = Rocks;
    fn deref(&self) -> &Rocks {
        &self.rocks
    }
}

/// Gives a handle bound to the database the `'static` lifetime, for the map.
///
/// SAFETY: `BoundColumnFamily<'a>` and `BoundColumnFamily<'static>` differ only in a
/// lifetime parameter (a `PhantomData`), so the pointer cast keeps layout and the `Arc`
/// reference count intact; the `rocksdb` crate makes its own bound handles with the same
/// cast. The lifetime tied a handle to the database: the map upholds that instead, as
/// its handles leave it only through [`Db::cf_handle`], narrowed back to `&self`, and it
/// is dropped before the database (field order of [`Db`]).
fn detach(handle: Arc<BoundColumnFamily<'_>>) -> Arc<BoundColumnFamily<'static>> {
    unsafe { Arc::from_raw(Arc::into_raw(handle).cast::<BoundColumnFamily<'static>>()) }
}

impl Db {
    /// Column families of the database at `path` (RocksDB's `ListColumnFamilies`).
    pub(crate) fn list_cf(opts: &Options, path: &Path) -> Result<Vec<String>, rocksdb::Error> {
        Rocks::list_cf(opts, path)
    }

    /// Opens the database with `descriptors` (plus `default`) and maps their handles.
    pub(crate) fn open_cf_descriptors(
        opts: &Options,
        path: &Path,
        descriptors: Vec<ColumnFamilyDescriptor>,
    ) -> Result<Db, rocksdb::Error> {
        let mut names: Vec<String> = descriptors.iter().map(|d| d.name().to_string()).collect();
        names.push(rocksdb::DEFAULT_COLUMN_FAMILY_NAME.to_string());
        let rocks = Rocks::open_cf_descriptors(opts, path, descriptors)?;
        let handles = names.into_iter().filter_map(|n| Some((n.clone(), detach(rocks.cf_handle(&n)?)))).collect();
        Ok(Db { handles: RwLock::new(handles), rocks })
    }

    /// The handle of column family `name`, if it exists and is not being dropped.
    /// Never waits for a column-family create or drop.
    pub(crate) fn cf_handle(&self, name: &str) -> Option<Arc<BoundColumnFamily<'_>>> {
        self.handles.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }

    /// Creates column family `name` (slow: RocksDB rewrites its OPTIONS file); it is
    /// found by [`Db::cf_handle`] once this returns `Ok`.
    pub(crate) fn create_cf(&self, name: &str, opts: &Options) -> Result<(), rocksdb::Error> {
        self.rocks.create_cf(name, opts)?;
        // Only a drop of the same name could remove it in between, and names are never
        // reused (each topic incarnation has its own).
        match self.rocks.cf_handle(name) {
            Some(handle) => {
                self.handles.write().unwrap_or_else(PoisonError::into_inner).insert(name.to_string(), detach(handle));
            }
            None => tracing::error!(cf = %name, "column family missing right after its create"),
        }
        Ok(())
    }

    /// Drops column family `name` (slow, like a create). [`Db::cf_handle`] stops finding
    /// it at once, also when the drop fails (the `rocksdb` crate forgets it either way;
    /// the next start drops what no topic claims); handles already taken stay valid until
    /// dropped (RocksDB frees the column family after the last one).
    pub(crate) fn drop_cf(&self, name: &str) -> Result<(), rocksdb::Error> {
        let ours = self.handles.write().unwrap_or_else(PoisonError::into_inner).remove(name);
        let dropped = self.rocks.drop_cf(name);
        drop(ours);
        dropped
    }

    /// Names of every column family, as [`Db::cf_handle`] finds them.
    pub(crate) fn cf_names(&self) -> Vec<String> {
        self.handles.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }
}

//! Opening the redb file that holds the state machine, with the cache sized for this use.

use std::path::Path;

use redb::{Builder, Database, DatabaseError};

/// redb's page cache. redb's default is 1 GiB, and a cache that size keeps every page a member
/// ever touched resident. Reads need it less than it seems: the key index is in memory, so a read
/// is one point lookup in the history table, whose inner pages stay cached and whose leaves the
/// OS's page cache serves. A tenth of it is redb's write buffer, which holds the pages the
/// non-durable commits between two durable ones dirtied.
pub const CACHE_BYTES: usize = 32 << 20;

/// Opens (or creates) the database at `path` with a [`CACHE_BYTES`] cache.
pub fn open_database(path: &Path) -> Result<Database, DatabaseError> {
    Builder::new().set_cache_size(CACHE_BYTES).create(path)
}

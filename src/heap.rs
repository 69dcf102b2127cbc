//! The process's heap: one allocator for Rust and RocksDB's C++, and its size.
//!
//! jemalloc is Rust's global allocator, and it also replaces the C library's
//! `malloc` for the whole process (tikv-jemalloc-sys's
//! `override_allocator_on_supported_platforms`), so RocksDB's memtables,
//! block cache and write batches come from the same heap as the IOUs the gRPC
//! workers decode. One heap means one set of numbers an operator can put
//! beside RocksDB's own accounting: `tally serve` publishes what is in use
//! (`tally_heap_allocated_bytes`) and what the heap holds from the OS
//! (`tally_heap_resident_bytes`).
//!
//! Why jemalloc, measured on the benchmark machine (docs/performance.md):
//! before, Rust allocated through mimalloc and RocksDB through glibc.
//! mimalloc kept its high-water (~270 MiB) committed forever, and glibc's
//! free chunks grew with history (block-cache blocks freed on other threads'
//! arenas: 6 → 30 MiB over 12 million IOUs). glibc also needed its mmap
//! threshold pinned, or freed memtables stayed resident, and the pinned
//! threshold made every large write batch fault in fresh pages. With jemalloc
//! for both, in alternating runs against that build: per-IOU ingest +10 %,
//! batch-signed +16 %, peak RSS 10–25 % lower, and memory over 20 million
//! IOUs without a trend.
//!
//! The allocator and its options are set in `allocator.rs`.

/// The heap's size, from jemalloc's statistics.
#[derive(Clone, Copy, Debug)]
pub struct HeapUsage {
    /// Bytes in use by Rust and C++ allocations.
    pub allocated_bytes: u64,
    /// Bytes of physical memory the heap holds: what is in use, freed pages
    /// not yet returned, and jemalloc's own metadata. An upper bound: jemalloc
    /// counts whole extents, some of whose pages may never have been touched.
    pub resident_bytes: u64,
}

/// Reads the heap's size. Refreshing jemalloc's statistics takes a lock per
/// arena: this is for a once-a-second gauge, not the data path.
pub fn usage() -> Result<HeapUsage, tikv_jemalloc_ctl::Error> {
    tikv_jemalloc_ctl::epoch::advance()?;
    let allocated_bytes = tikv_jemalloc_ctl::stats::allocated::read()? as u64;
    let resident_bytes = tikv_jemalloc_ctl::stats::resident::read()? as u64;
    Ok(HeapUsage { allocated_bytes, resident_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heap is the process's: these tests take turns, so one's
    /// allocations (or panic) never land between another's readings.
    static HEAP_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn exclusive() -> std::sync::MutexGuard<'static, ()> {
        HEAP_TESTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[test]
    fn jemalloc_runs_with_tallys_options() {
        let _turn = exclusive();
        assert!(tikv_jemalloc_ctl::opt::background_thread::read().unwrap());
        // SAFETY: both options are `ssize_t` in jemalloc.
        let (dirty_ms, muzzy_ms) = unsafe {
            (
                tikv_jemalloc_ctl::raw::read::<isize>(b"opt.dirty_decay_ms\0").unwrap(),
                tikv_jemalloc_ctl::raw::read::<isize>(b"opt.muzzy_decay_ms\0").unwrap(),
            )
        };
        assert_eq!((dirty_ms, muzzy_ms), (1_000, 0));
    }

    /// Rust's allocations and RocksDB's C++ ones land in the same counted heap.
    #[test]
    fn rust_and_rocksdb_allocate_from_jemalloc() {
        let _turn = exclusive();
        const BLOCK_BYTES: u64 = 64 << 20;
        let before = usage().unwrap();
        let block = vec![1u8; BLOCK_BYTES as usize];
        let during = usage().unwrap();
        assert!(during.allocated_bytes >= before.allocated_bytes + BLOCK_BYTES / 2, "{before:?} -> {during:?}");
        assert!(during.resident_bytes >= during.allocated_bytes, "{during:?}");
        drop(block);

        // 16 MiB into a memtable: RocksDB allocates its arena blocks with C++
        // `new`, which calls `malloc`.
        let dir = tempfile::tempdir().unwrap();
        let db = rocksdb::DB::open_default(dir.path()).unwrap();
        let before = usage().unwrap();
        let value = vec![7u8; 4 << 10];
        for key in 0u32..4_096 {
            db.put(key.to_be_bytes(), &value).unwrap();
        }
        let memtable_bytes = db.property_int_value("rocksdb.cur-size-all-mem-tables").unwrap().unwrap();
        let after = usage().unwrap();
        assert!(memtable_bytes >= 16 << 20, "{memtable_bytes}");
        assert!(
            after.allocated_bytes >= before.allocated_bytes + memtable_bytes / 2,
            "memtables of {memtable_bytes} bytes: {before:?} -> {after:?}"
        );
    }
}

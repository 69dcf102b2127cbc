//! The process's two heaps: how they are set up, and how big they are.
//!
//! Rust code allocates through mimalloc (the global allocator in `main.rs`);
//! RocksDB's C++ allocates through glibc's `malloc`. Each keeps memory it has
//! freed for reuse, so RSS is not the sum of what is in use. An operator who
//! wants to see that memory is bounded by configuration (not by history)
//! needs both heaps' sizes beside RocksDB's own accounting; `tally serve`
//! publishes them as `tally_heap_bytes{heap="rust"|"native"}`, and the free
//! part of glibc's as `tally_heap_free_bytes{heap="native"}`.

/// RocksDB's C++ allocates through glibc's `malloc`, not mimalloc. After the
/// first large `free`, glibc raises its mmap threshold (up to 32 MiB), and
/// from then on each memtable's blocks come from a per-thread arena and stay
/// resident after the memtable is flushed and freed: RSS then grows past
/// RocksDB's own memory budget. A fixed 1 MiB threshold returns those blocks
/// to the kernel when they are freed (measured: ~70 MiB less RSS after 4
/// million IOUs, same throughput; docs/performance.md). A group commit's
/// `WriteBatch` (~512 bytes per IOU) stays on the heap up to ~2,000 IOUs;
/// bigger groups are mmapped and fault their pages in afresh (measured
/// within noise of batch-signed throughput, where groups are biggest).
/// Must run before any other thread starts.
pub fn fix_native_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD_BYTES: libc::c_int = 1 << 20;
        // SAFETY: `mallopt` only sets one of glibc's tuning parameters; the
        // caller runs it before any other thread exists.
        let accepted = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
        debug_assert_eq!(accepted, 1, "glibc accepts a 1 MiB mmap threshold");
    }
}

/// Bytes each heap holds from the operating system (in use or kept for reuse).
#[derive(Clone, Copy, Debug)]
pub struct HeapUsage {
    /// mimalloc's committed memory: Rust's heap.
    pub rust_bytes: u64,
    /// glibc's arenas plus its mmapped chunks: RocksDB's C++ heap. `None`
    /// where the C library is not glibc.
    pub native_bytes: Option<u64>,
    /// Of `native_bytes`, free chunks glibc keeps inside its arenas: memory
    /// held but not in use (fragmentation and reuse slack).
    pub native_free_bytes: Option<u64>,
}

/// Reads both heaps' sizes. glibc walks its arenas under their locks, so this
/// is for a once-a-second gauge, not the data path.
pub fn usage() -> HeapUsage {
    let mut current_commit: usize = 0;
    // SAFETY: every out-parameter is nullable; the one given points to a live usize.
    unsafe {
        libmimalloc_sys::mi_process_info(
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut current_commit,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallinfo2` only reads glibc's allocator statistics.
    let (native_bytes, native_free_bytes) = {
        let info = unsafe { libc::mallinfo2() };
        (Some((info.arena as u64).saturating_add(info.hblkhd as u64)), Some(info.fordblks as u64))
    };
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let (native_bytes, native_free_bytes) = (None, None);
    HeapUsage { rust_bytes: current_commit as u64, native_bytes, native_free_bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heaps_grow_with_what_they_hold() {
        let before = usage();
        // 64 MiB from Rust's heap, touched so it is committed.
        let block = vec![1u8; 64 << 20];
        let during = usage();
        assert!(during.rust_bytes >= before.rust_bytes + (32 << 20), "{before:?} -> {during:?}");
        drop(block);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let (held, free) = (during.native_bytes.unwrap(), during.native_free_bytes.unwrap());
            assert!(free <= held, "free chunks are part of what glibc holds: {during:?}");
        }
    }
}

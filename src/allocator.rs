//! The process's allocator: jemalloc, for Rust and (replacing the C
//! library's `malloc`) for RocksDB's C++; `heap.rs` says why and reads its
//! size. `benches/pg_peer.rs` includes this file too, so the PostgreSQL peer
//! runs on the same allocator with the same options.
//!
//! [`MALLOC_CONF`] bounds what the heap keeps: freed pages are returned to
//! the OS within about a second, by jemalloc's background threads rather than
//! by whichever thread happens to free, so memory follows the load instead of
//! its history.

// Names the crate so its `malloc`, `free`, … are linked in and replace the C
// library's for C and C++ code too (RocksDB).
use tikv_jemalloc_sys as _;

/// Rust's allocations.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it initialises (before `main`):
/// - `background_thread:true`: purging runs on jemalloc's own threads, off
///   the data path;
/// - `dirty_decay_ms:1000`: freed pages go back to the OS after ~1 s instead
///   of the default 10 s (memtables and write batches are freed in bursts of
///   tens of MiB; ten seconds of them is ~100 MiB of RSS for nothing);
/// - `muzzy_decay_ms:0`: pages are returned with `MADV_DONTNEED`, skipping
///   the lazy `MADV_FREE` stage, whose pages stay in RSS until the kernel
///   needs them; so RSS drops when pages are returned.
pub const MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// The symbol jemalloc reads its options from (unprefixed, as its `malloc` is).
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(
    // SAFETY: `MALLOC_CONF` is a static, NUL-terminated byte string; `u8`
    // and `c_char` have the same size and alignment.
    unsafe { &*MALLOC_CONF.as_ptr().cast::<std::ffi::c_char>() },
);

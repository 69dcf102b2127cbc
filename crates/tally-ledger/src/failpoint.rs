//! Failpoints of the ledger's write path: a way for tests to make the disk
//! refuse a write without needing a real full disk.
//!
//! Tests prefer a real small filesystem filled to the brim; where mounting
//! one is not allowed, this failpoint stands in for it at the exact place a
//! full disk is felt: the group commit's `WriteBatch` write. It follows the
//! style of the settler's failpoints (`TALLY_FAILPOINTS`), under its own
//! variable, `TALLY_LEDGER_FAILPOINTS`, because the settler refuses to start
//! on names it does not know: a comma-separated list, read once. An entry
//!
//! ```text
//! ledger-write-enospc=/path/to/switch
//! ```
//!
//! arms the point: while the file `/path/to/switch` exists, every group
//! write fails before reaching RocksDB with the error a full disk gives
//! (`ENOSPC`); once the file is removed, writes go through again. The switch
//! file lets a test fill and free the "disk" while the server runs. Unarmed
//! (the normal case), the check is one load of a cached, empty option.

//!
//! **Test builds only**, like the settler's: compiled in with the cargo
//! feature `failpoints` (on for the `tally` package's dev-dependencies, so in
//! `cargo test` builds and not in `cargo build --release`). Without it,
//! [`write_enospc`] is always `None` and the variable is never read.

#[cfg(feature = "failpoints")]
use std::path::PathBuf;
#[cfg(feature = "failpoints")]
use std::sync::OnceLock;

/// Whether this build has failpoints (the `failpoints` feature: test builds).
pub const COMPILED_IN: bool = cfg!(feature = "failpoints");

/// The environment variable holding the ledger's armed failpoints.
pub const ENV_VAR: &str = "TALLY_LEDGER_FAILPOINTS";

/// The failpoint name, as written in [`ENV_VAR`].
pub const LEDGER_WRITE_ENOSPC: &str = "ledger-write-enospc";

#[cfg(feature = "failpoints")]
fn enospc_switch() -> Option<&'static PathBuf> {
    static SWITCH: OnceLock<Option<PathBuf>> = OnceLock::new();
    SWITCH
        .get_or_init(|| {
            let list = std::env::var(ENV_VAR).ok()?;
            list.split(',').map(str::trim).find_map(|entry| {
                let (name, path) = entry.split_once('=')?;
                (name == LEDGER_WRITE_ENOSPC && !path.is_empty()).then(|| PathBuf::from(path))
            })
        })
        .as_ref()
}

/// `Some(error)` when the `ledger-write-enospc` failpoint is armed and its
/// switch file exists: the write must fail as if the disk were full.
#[cfg(feature = "failpoints")]
pub fn write_enospc() -> Option<std::io::Error> {
    let switch = enospc_switch()?;
    switch.exists().then(|| std::io::Error::from_raw_os_error(libc_enospc()))
}

/// A build without failpoints: the disk is never made to look full.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn write_enospc() -> Option<std::io::Error> {
    None
}

/// `ENOSPC` on every platform Tally builds for (Linux, macOS, the BSDs).
#[cfg(feature = "failpoints")]
const fn libc_enospc() -> i32 {
    28
}

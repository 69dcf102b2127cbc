//! # tally-ledger: the append-only, hash-chained RocksDB ledger
//!
//! This crate owns everything Tally keeps on disk. It knows nothing of gRPC
//! or HTTP: front doors hand it IOUs whose signatures they have already
//! verified, and it answers with per-IOU outcomes once they are durable.
//!
//! How the pieces meet:
//!
//! - [`layout`] names the column families and encodes every key and value
//!   (documented in `ARCHITECTURE.md`).
//! - [`store::Ledger`] opens the database and serves reads: balances,
//!   epochs, accounts, single IOUs. Reads go straight to RocksDB from any
//!   thread.
//! - [`format`] knows which on-disk format a directory holds: a new ledger's
//!   genesis (its random ledger id), and the migration of older formats.
//! - [`command`] is the writer's vocabulary (appends, admin commands,
//!   settlement steps, their answers), shared by everything that talks to it.
//! - [`journal`] is the hash chain of every control-plane change, with who
//!   made it; the accounts, epochs and settlement column families are its
//!   materialised view.
//! - [`history`] reads the journal as a history of values (who changed what,
//!   from what, to what) for `tally audit log`.
//! - [`tokens`] holds the query service's scoped tokens (stored hashed).
//! - [`writer`] runs the **single writer**: one thread that takes commands
//!   from a bounded queue, applies replay, account and credit checks against
//!   its in-memory [`state::State`], and commits whole groups of commands as
//!   one fsynced `WriteBatch` (group commit). Because exactly one thread
//!   decides, credit limits and replay rules hold exactly under any number
//!   of concurrent clients, with no locks on the data path.
//! - `commit` is the writer's second stage: one thread that writes each
//!   decided group, fsyncs and answers, while the writer decides the next.
//! - [`directory::KeyDirectory`] is the writer's published list of payer
//!   keys, which verification stages read to find (and cache decompressed)
//!   public keys without touching the disk.
//! - [`settlement`] stores settlement plans, batches, payouts, bills and
//!   carries, and applies the state machine's steps inside the writer.
//! - [`audit`] recomputes every aggregate from the log, walks both hash
//!   chains, re-verifies signatures, replays the journal against the stored
//!   accounts and settlement records, and nets every plan again:
//!   `tally ledger verify`.
//!
//! The durability contract: a reply from the writer that says "accepted"
//! is sent only after the batch holding that IOU was written with
//! `sync = true`.

pub mod audit;
pub mod command;
mod commit;
pub mod directory;
pub mod exposure;
pub mod failpoint;
pub mod format;
pub mod history;
pub mod journal;
pub mod layout;
pub mod settlement;
pub mod state;
pub mod store;
pub mod tokens;
pub mod writer;

pub use audit::{AuditOptions, AuditReport, audit};
pub use command::Notice;
pub use command::{AdminCommand, AdminError, AdminReply, AppendItem, AppendResult, SettlementCommand};
pub use directory::KeyDirectory;
pub use format::FORMAT_CURRENT;
pub use journal::{JournalEntry, JournalHead};
pub use layout::Meta;
pub use layout::{AggregateValue, BatchRecord, EpochRecord, EpochStatus, StoredIou};
pub use store::{BalanceFilter, BalancePage, BalanceRow, Ledger, LedgerOptions, MemoryUsage};
pub use tokens::{QueryScope, QueryToken, token_digest};
pub use writer::{Writer, WriterConfig, WriterHandle};

/// Errors from the storage layer. Any of these fails a whole group commit:
/// nothing in it is acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("storage error: {0}")]
    Storage(rocksdb::Error),
    #[error("ledger corruption: {0}")]
    Corruption(String),
    /// The environment refused something the ledger needs (a directory, a
    /// thread) or the ledger was opened read-only: no data is at fault.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    #[error("the ledger writer has stopped")]
    WriterStopped,
    #[error("the group commit failed, nothing in it was written: {0}")]
    WriteFailed(String),
    /// A reader's request was malformed (a forged page token, say): the
    /// caller's fault, answered `INVALID_ARGUMENT`, never a panic.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// RocksDB's own corruption findings (a bad block checksum, say) are
/// corruption, answered `DATA_LOSS`, not a transient storage failure.
impl LedgerError {
    /// Why a format-1 ledger is not opened read-only, and what to do.
    pub(crate) fn format_1_read_only() -> LedgerError {
        LedgerError::Unavailable(
            "this ledger is format 1 (written before Tally's journal); open it once with `tally serve`, which \
             migrates it to format 2 in one atomic write, then read it"
                .into(),
        )
    }
}

impl From<rocksdb::Error> for LedgerError {
    fn from(error: rocksdb::Error) -> LedgerError {
        match error.kind() {
            rocksdb::ErrorKind::Corruption => LedgerError::Corruption(error.to_string()),
            _ => LedgerError::Storage(error),
        }
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A source of wall-clock time in Unix milliseconds. Production uses
/// [`unix_now_ms`]; tests substitute a controlled clock.
pub type Clock = std::sync::Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock as a [`Clock`].
pub fn system_clock() -> Clock {
    std::sync::Arc::new(unix_now_ms)
}

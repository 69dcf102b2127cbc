//! The tonic services. Each translates protobuf to a pipeline or ledger call
//! and back; none holds policy of its own.
//!
//! - [`ingest`]: `SubmitBatch` (unary) and `StreamBatches` (bidirectional).
//! - [`query`]: balances, epochs, exposure, single IOUs (read-only), behind
//!   a bearer token: the admin token, or a scoped query token ([`auth::QueryAuth`]).
//! - [`admin`]: accounts, keys, tokens and epochs, behind [`auth::AdminAuth`].

pub mod admin;
pub mod auth;
pub mod ingest;
pub mod query;

use tally_ledger::LedgerError;
use tonic::Status;

/// Maps storage failures to gRPC: a failed write is `UNAVAILABLE` (nothing
/// was written; retrying is safe because replays are idempotent), corruption
/// is `DATA_LOSS`.
pub fn ledger_status(error: LedgerError) -> Status {
    match error {
        LedgerError::Corruption(_) => Status::data_loss(error.to_string()),
        LedgerError::InvalidRequest(_) => Status::invalid_argument(error.to_string()),
        LedgerError::Storage(_)
        | LedgerError::WriteFailed(_)
        | LedgerError::WriterStopped
        | LedgerError::Unavailable(_) => Status::unavailable(error.to_string()),
    }
}

//! # tally-settler: from sealed epochs to money moved, exactly once
//!
//! Settlement is the "redeem" step of x402 `batch-settlement`: the IOUs an
//! epoch collected become payouts to payees and bills to payers. This crate
//! sits above the ledger and beside ingest; it never touches the IOU path.
//!
//! How the pieces meet:
//!
//! - [`config`]: the operator's policy (fee, minimum payouts, which rail
//!   each asset settles on) and each rail's settings, from TOML.
//! - [`plan`]: reads a sealed epoch from the ledger, nets it with
//!   `tally_core::settlement::net`, and cuts the payouts into batches.
//! - [`driver`]: the [`Settler`]: seal, plan, submit, each step recorded in
//!   the ledger through the single writer before the next, so a crash at
//!   any point resumes without paying twice or skipping anyone.
//! - [`evm`]: the EVM rail (alloy): the `TallyPayout` contract, signing,
//!   broadcasting, receipts, and a real local node for tests.
//! - [`bank`]: the bank rails: ISO 20022 `pain.001` and NACHA files out,
//!   `pain.002` status reports in. Pure functions.
//! - [`outbox`]: atomic, durable placement of bank files.
//! - [`report`]: settlement reports and per-party statements.
//! - [`aging`]: the aged list of open bills (receivables by age bucket).
//! - [`schedule`]: when `tally serve` settles on its own.
//! - [`failpoint`]: named crash and error points for the exactly-once tests.
//! - [`grpc`]: the `Settlement` gRPC service the CLI talks to.
//!
//! Must never depend on: `tally-ingest` (a peer), or any HTTP framework.

pub mod aging;
pub mod bank;
pub mod config;
pub mod driver;
pub mod evm;
pub mod failpoint;
pub mod grpc;
pub mod outbox;
pub mod plan;
pub mod report;
pub mod schedule;

pub use config::SettlementConfig;
pub use driver::{ImportSummary, Progress, SettleRequest, Settler};
pub use report::{EpochReport, Statement, report_of, statement};
pub use schedule::Schedule;

/// Why a settlement step failed. Every failure leaves the persisted state
/// consistent; rerunning resumes.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("settlement configuration: {0}")]
    Config(String),
    #[error("ledger: {0}")]
    Ledger(String),
    #[error("rail: {0}")]
    Rail(String),
    #[error("EVM: {0}")]
    Evm(#[from] evm::EvmError),
    #[error("bank file: {0}")]
    BankFile(#[from] bank::BankFileError),
    #[error("outbox: {0}")]
    Outbox(#[from] outbox::OutboxError),
    #[error("netting: {0}")]
    Netting(#[from] tally_core::settlement::NettingError),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Busy(String),
}

impl From<tally_ledger::LedgerError> for SettleError {
    fn from(error: tally_ledger::LedgerError) -> SettleError {
        SettleError::Ledger(error.to_string())
    }
}

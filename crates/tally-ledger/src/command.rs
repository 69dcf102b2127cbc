//! The writer's vocabulary: what front doors ask of it and what it answers.
//!
//! These types are shared by the writer ([`crate::writer`]), its committer
//! ([`crate::commit`]), the journal ([`crate::journal`], which records admin
//! commands as they were asked) and every caller. They live here, apart from
//! the code that applies them, so that no module has to import the writer to
//! speak to it (and the crate has no import cycle).

use serde::{Deserialize, Serialize};
use tally_core::settlement::{BatchLimits, BatchState, RailBatch, SettlementPlan, SettlementPolicy, SettlementStatus};
use tally_core::{Asset, CommitmentId, Outcome, Payee, PayeeStatus, PayerStatus, PublicKeyBytes, SignedIou};

use crate::tokens::QueryScope;

/// Something the engine records about itself (journaled as
/// `journal::Action::Notice`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// The engine started; `verify_signatures: false` means IOUs from here
    /// on were accepted without checking their signatures
    /// (`--unsafe-skip-signature-verification`), which `tally ledger
    /// verify` reports.
    EngineStarted { verify_signatures: bool, version: String },
}

/// An IOU whose signature the caller has verified, with the evidence to
/// store (`tally_core::evidence`: its signing bytes, or a Web Bot Auth
/// record) and what the payee charges for it.
pub struct AppendItem {
    pub signed: SignedIou,
    pub evidence: Vec<u8>,
    /// What the payee charges: `1..=amount`. The IOU's amount is what the
    /// payer committed to at most; an x402 resource server may charge less
    /// (the batch-settlement scheme's dynamic pricing). Aggregates, credit
    /// and settlement count the charge.
    pub charge: u64,
}

impl From<tally_core::Commitment> for AppendItem {
    /// The whole committed amount is charged (gRPC ingest, fixed prices).
    fn from(commitment: tally_core::Commitment) -> AppendItem {
        let charge = commitment.signed.iou.amount;
        AppendItem { signed: commitment.signed, evidence: commitment.evidence, charge }
    }
}

/// The writer's verdict on one IOU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResult {
    pub outcome: Outcome,
    /// Set for `Accepted` and `Duplicate`.
    pub commitment: Option<CommitmentId>,
    /// The epoch the IOU is in (for `Accepted` and `Duplicate`), else 0.
    pub epoch: u64,
    /// What was charged (for `Accepted` and `Duplicate`: the recorded
    /// charge, which for a duplicate is the original's), else 0.
    pub charge: u64,
}

impl AppendResult {
    pub fn rejected(outcome: Outcome) -> AppendResult {
        debug_assert!(!outcome.is_success());
        AppendResult { outcome, commitment: None, epoch: 0, charge: 0 }
    }
}

/// A settlement step the writer applies (see [`AdminCommand::Settlement`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SettlementCommand {
    /// Persists an epoch's plan and its batches. The epoch must be sealed,
    /// the next to plan (epochs are planned in order, so carries always land
    /// in an unplanned epoch), and the plan must be exactly what netting the
    /// epoch's sealed aggregates under `policy` gives, cut into batches by
    /// `limits`: the writer nets it again and refuses any difference.
    RecordPlan { plan: Box<SettlementPlan>, batches: Vec<RailBatch>, policy: SettlementPolicy, limits: BatchLimits },
    /// The driver's own status changes: `Submitting`, `NeedsAttention`.
    SetStatus { epoch: u64, status: SettlementStatus },
    /// One batch's progress; marks its payouts when it completes.
    UpdateBatch { epoch: u64, index: u32, state: BatchState },
    /// A bank's verdict on one payout: `Ok(reference)` or `Err(reason)`.
    /// A rejection carries the payout (and its fee) into the next unplanned
    /// epoch. Repeating the same verdict changes nothing.
    RecordBankStatus { payout_id: String, verdict: Result<String, String> },
    /// The operator collected a bill; the payer's credit is released.
    MarkBillPaid { epoch: u64, bill_id: String },
}

/// Control-plane commands: accounts, keys, tokens, epochs, settlement.
/// Every one that succeeds is journaled with its actor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AdminCommand {
    /// Registers an asset, or updates whether it is enabled. A registered
    /// asset's scale never changes: it gives meaning to every stored amount.
    UpsertAsset(Asset),
    RegisterPayer {
        id: String,
        display_name: String,
        keys: Vec<PublicKeyBytes>,
        credit_limits: Vec<(String, u128)>,
    },
    AddPayerKey {
        payer_id: String,
        key: PublicKeyBytes,
    },
    SetPayerStatus {
        payer_id: String,
        status: PayerStatus,
    },
    SetCreditLimit {
        payer_id: String,
        asset: String,
        limit: u128,
    },
    RegisterPayee(Payee),
    SetPayeePayout {
        payee_id: String,
        payout_destination: String,
    },
    /// Links a payer to the payee account it nets under at settlement
    /// (`None` unlinks).
    LinkPayer {
        payer_id: String,
        payee_id: Option<String>,
    },
    /// Sets the signature agent a payer's crawler sends in `Signature-Agent`
    /// (`None` clears it). An agent belongs to at most one payer.
    SetSignatureAgent {
        payer_id: String,
        signature_agent: Option<String>,
    },
    /// Seals the open epoch and opens the next, atomically.
    SealEpoch,
    /// A step of settlement's state machine.
    Settlement(SettlementCommand),
    /// Revokes one of a payer's keys: IOUs it signs from now on are refused
    /// (`KEY_REVOKED`); what it signed before stays recorded and owed.
    RevokePayerKey {
        payer_id: String,
        key: PublicKeyBytes,
    },
    /// Suspends or reinstates a payee.
    SetPayeeStatus {
        payee_id: String,
        status: PayeeStatus,
    },
    /// Creates a query-service token named `name` with `scope`. Only the
    /// SHA-256 of the secret reaches the ledger; the caller shows the
    /// secret once.
    CreateQueryToken {
        name: String,
        scope: QueryScope,
        digest: [u8; 32],
    },
    RevokeQueryToken {
        name: String,
    },
    /// Records something about the engine itself (a start, how it verifies).
    RecordNotice(Notice),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminReply {
    Done,
    Sealed { sealed: crate::EpochRecord, opened: crate::EpochRecord },
    Planned { epoch: u64 },
    BankStatus { changed: bool },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("invalid: {0}")]
    Invalid(String),
    /// A proposed plan is not what netting the ledger gives now (its carries
    /// or accounts changed while it was planned, or the planner is wrong):
    /// net again and propose the new plan.
    #[error("the plan does not match the ledger ({0}); plan it again")]
    PlanMismatch(String),
    /// The ledger's own records disagree (a counter below zero, a missing
    /// record): nothing was changed, and `tally ledger verify` says more.
    #[error("ledger state is inconsistent, nothing was changed: {0}")]
    Inconsistent(String),
    #[error("storage failure, nothing was changed: {0}")]
    Storage(String),
    #[error("the ledger writer has stopped")]
    WriterStopped,
}

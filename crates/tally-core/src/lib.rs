//! # tally-core: the vocabulary every other Tally crate speaks
//!
//! This crate is the bottom of the dependency graph and performs no I/O. It
//! defines:
//!
//! - [`iou`]: the IOU (a payer's signed promise to pay a payee), its bounds,
//!   and its **canonical signing bytes** (documented byte by byte in
//!   `docs/iou-format.md`);
//! - [`verify`]: Ed25519 verification, single and batched, plus the key
//!   hygiene checks done at registration;
//! - [`amount`]: assets, scales and decimal formatting of integer amounts
//!   (no floats anywhere near money);
//! - [`account`]: payers, payees and their statuses;
//! - [`actor`]: who made a recorded change (the admin caller, the settler);
//! - [`ledger_id`]: the random id of one ledger, mixed into every payment id;
//! - [`outcome`]: the per-IOU result codes the engine answers with;
//! - [`batch`]: batch-signed commitments (one signature over the Merkle root
//!   of a batch of IOUs) and their inclusion proofs;
//! - [`evidence`]: what the ledger stores as proof of each IOU (the bytes the
//!   payer signed: IOU signing bytes, or a Web Bot Auth signature base) and
//!   the rule that derives an IOU from a Web Bot Auth payment;
//! - [`chain`]: the ledger's hash-chain link and the commitment identifier
//!   returned to clients;
//! - [`destination`]: payout destinations (EVM address, IBAN, ACH) and the
//!   rails they are paid on, checked at registration;
//! - [`settlement`]: netting a sealed epoch into payouts, bills and
//!   carries, and the records of settlement's exactly-once state machine.
//!
//! Everything above (ledger, ingest, settler, CLI) builds on these types; nothing here
//! may depend on them.

pub mod account;
pub mod actor;
pub mod amount;
pub mod batch;
pub mod chain;
pub mod destination;
pub mod evidence;
#[doc(hidden)]
pub mod fuzzing;
pub mod iou;
pub mod ledger_id;
pub mod outcome;
pub mod pay_per_crawl;
pub mod settlement;
pub mod verify;

pub use account::{Payee, PayeeStatus, Payer, PayerStatus};
pub use actor::Actor;
pub use amount::{Asset, format_amount, parse_amount, parse_canonical_units};
pub use chain::{CommitmentId, GENESIS_HASH, LinkContent, RecordHash, link_hash, link_hash_v1};
pub use destination::{PayoutDestination, Rail};
pub use evidence::{Commitment, Evidence, EvidenceError, EvidenceKind, parse_evidence};
pub use iou::{Iou, IouError, Nonce, PublicKeyBytes, SignatureBytes, SignedIou, ValidityPolicy};
pub use ledger_id::LedgerId;
pub use outcome::Outcome;

//! Settlement's vocabulary and the netting computation (pure, no I/O).
//!
//! Tally settles **credit-backed**: the operator pays every net creditor
//! from its treasury and bills every net debtor. For one sealed epoch and
//! one asset, each participant's *net position* is what it is owed as a
//! payee, plus what earlier epochs carried forward to it, minus what it owes
//! as a payer. A payer linked to a payee account (an agent that both earns
//! and spends) nets under that payee's id, so its flows offset.
//!
//! [`net`] turns the epoch's aggregates into a [`SettlementPlan`]:
//!
//! - a **payout** for each creditor whose amount, after the operator fee
//!   (basis points, recorded per payout) and rounding down to what the rail
//!   can pay (cents on bank rails), reaches the asset's minimum;
//! - a **bill** for each debtor;
//! - a **carry** for everything owed but not paid now (below the minimum,
//!   no usable destination, no rail for the asset, the sub-cent remainder):
//!   it is added to the payee's position in the next epoch, never lost.
//!
//! Every amount is an integer in the asset's smallest unit; every sum is
//! checked. Per asset the plan conserves value exactly:
//! `Σ payouts + Σ fees + Σ carried out − Σ billed = Σ carried in`,
//! which [`net`] asserts before it returns.
//!
//! The persisted records of settlement's state machine (epoch status, batch
//! and payout states) are defined here too, with their allowed transitions,
//! so the ledger that stores them and the settler that drives them agree.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::destination::{PayoutDestination, Rail};

/// Basis points in one whole.
pub const BPS_ONE: u32 = 10_000;
/// Longest reason text kept with a carry, rejection or attention flag.
pub const REASON_LEN_MAX: usize = 256;

/// Who a position belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Party {
    /// A payee account (and any payers linked to it).
    Payee(String),
    /// A payer not linked to any payee.
    Payer(String),
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Payee(id) => write!(f, "payee:{id}"),
            Party::Payer(id) => write!(f, "payer:{id}"),
        }
    }
}

impl Party {
    /// Parses `payee:<id>` or `payer:<id>`.
    pub fn parse(text: &str) -> Option<Party> {
        match text.split_once(':') {
            Some(("payee", id)) if !id.is_empty() => Some(Party::Payee(id.to_owned())),
            Some(("payer", id)) if !id.is_empty() => Some(Party::Payer(id.to_owned())),
            _ => None,
        }
    }
}

/// How one asset settles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetPolicy {
    pub rail: Rail,
    /// Smallest payout worth making, in smallest units; below it, credit
    /// carries forward.
    pub payout_min: u128,
    /// Payouts are whole multiples of this many smallest units: 1 when the
    /// rail is at least as precise as the asset, `10^(scale − 2)` for a
    /// bank rail paying cents. The remainder carries forward.
    pub payable_multiple: u128,
}

/// The operator's settlement rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementPolicy {
    /// Operator fee per payout, in basis points of the net credit (≤ 10,000).
    pub fee_bps: u32,
    /// Asset code → policy. Assets absent here are never paid out; their
    /// credit carries forward (reason [`CarryReason::NoRail`]).
    pub assets: BTreeMap<String, AssetPolicy>,
}

/// One aggregate of the sealed epoch: what `payer` owes `payee` in `asset`.
#[derive(Clone, Copy, Debug)]
pub struct Flow<'a> {
    pub payer: &'a str,
    pub payee: &'a str,
    pub asset: &'a str,
    pub sum: u128,
    pub count: u64,
}

/// Credit carried into this epoch by an earlier one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carry {
    /// The epoch whose settlement this amount joins.
    pub epoch_to: u64,
    pub payee: String,
    pub asset: String,
    pub amount: u128,
    pub reason: CarryReason,
    /// What produced it: the carrying plan's `carry:<epoch>:<payee>:<asset>:<kind>`
    /// or the rejected payout's id. Unique among carries into one epoch.
    pub source: String,
}

/// Why credit was not paid now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CarryReason {
    /// The payable amount is below the asset's minimum payout.
    BelowMinimum,
    /// The payee has no destination on the asset's rail.
    NoDestination,
    /// The asset has no settlement rail configured.
    NoRail,
    /// The part smaller than the rail's unit (e.g. below one cent).
    RailPrecision,
    /// The bank rejected the payout; the text is the bank's reason.
    Rejected(String),
}

impl fmt::Display for CarryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CarryReason::BelowMinimum => f.write_str("below minimum payout"),
            CarryReason::NoDestination => f.write_str("no payout destination on the asset's rail"),
            CarryReason::NoRail => f.write_str("asset has no settlement rail"),
            CarryReason::RailPrecision => f.write_str("below the rail's smallest unit"),
            CarryReason::Rejected(reason) => write!(f, "rejected by the bank: {reason}"),
        }
    }
}

/// Money to pay a net creditor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payout {
    /// Deterministic: see [`payout_id`].
    pub id: String,
    pub epoch: u64,
    pub payee: String,
    pub asset: String,
    pub rail: Rail,
    pub destination: PayoutDestination,
    /// The net position this payout settles (before fee and rounding).
    pub net_credit: u128,
    /// The operator's fee, kept from `net_credit`.
    pub fee: u128,
    /// What the rail pays: `net_credit − fee − carried remainder`.
    pub amount: u128,
    /// IOUs behind this position as payee.
    pub iou_count: u64,
}

/// Money a net debtor owes the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bill {
    pub id: String,
    pub epoch: u64,
    pub party: Party,
    pub asset: String,
    pub amount: u128,
    /// IOUs behind this position as payer.
    pub iou_count: u64,
}

/// Netting figures for one asset of one epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetFigures {
    pub asset: String,
    /// Σ of the epoch's IOU amounts (each IOU once).
    pub gross: u128,
    pub iou_count: u64,
    pub payout_count: u64,
    /// Σ payout amounts: the value the rails move out.
    pub paid: u128,
    pub fees: u128,
    pub bill_count: u64,
    pub billed: u128,
    pub carried_in: u128,
    pub carried_out: u128,
    /// IOUs behind the payouts (the denominator of gas per settled IOU).
    pub payout_iou_count: u64,
}

impl AssetFigures {
    /// `paid / gross` in parts per million (integer; no floats near money).
    pub fn moved_ppm(&self) -> u128 {
        self.paid.saturating_mul(1_000_000).checked_div(self.gross).unwrap_or(0)
    }
}

/// The complete, deterministic settlement of one epoch. Persisted in the
/// ledger before anything is submitted to a rail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementPlan {
    pub epoch: u64,
    pub fee_bps: u32,
    /// Sorted by id.
    pub payouts: Vec<Payout>,
    /// Sorted by id.
    pub bills: Vec<Bill>,
    /// Carries into `epoch + 1`, sorted by source.
    pub carries_out: Vec<Carry>,
    /// The sources of the carries this plan consumed (sorted): the ledger
    /// refuses the plan if the carries into the epoch changed meanwhile.
    pub carries_in: Vec<String>,
    /// Sorted by asset.
    pub figures: Vec<AssetFigures>,
}

/// Why netting failed. Each is a refusal to produce a plan, never a
/// partial one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NettingError {
    #[error("fee of {0} bps exceeds 10,000")]
    BadFee(u32),
    #[error("asset {0}: payable multiple must be at least 1")]
    BadMultiple(String),
    #[error("arithmetic overflow netting {0}")]
    Overflow(String),
    #[error("conservation violated for {0}: this is a bug, no plan was produced")]
    NotConserved(String),
}

/// A short deterministic id: a letter, then 30 hex digits (120 bits) of
/// SHA-256 over a domain tag and length-prefixed parts. 31 characters fit
/// ISO 20022's 35-character EndToEndId.
fn short_id(letter: char, tag: &str, epoch: u64, parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(tag.as_bytes());
    hasher.update(epoch.to_be_bytes());
    for part in parts {
        hasher.update((part.len() as u32).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut id = String::with_capacity(31);
    id.push(letter);
    id.push_str(&hex::encode(&digest[..15]));
    id
}

/// The payout id of `(epoch, payee, asset, rail)`.
pub fn payout_id(epoch: u64, payee: &str, asset: &str, rail: Rail) -> String {
    short_id('P', "tally-payout-v1", epoch, &[payee, asset, rail.as_str()])
}

/// The bill id of `(epoch, party, asset)`.
pub fn bill_id(epoch: u64, party: &Party, asset: &str) -> String {
    short_id('B', "tally-bill-v1", epoch, &[&party.to_string(), asset])
}

#[derive(Default)]
struct Position {
    credit: u128,
    debit: u128,
    carried_in: u128,
    credit_ious: u64,
    debit_ious: u64,
}

/// Everything besides the aggregates that netting needs.
pub struct NettingInput<'a> {
    pub epoch: u64,
    pub policy: &'a SettlementPolicy,
    /// Payer id → the payee account it nets under.
    pub links: &'a BTreeMap<String, String>,
    /// Payee id → its parsed destination (absent or unparsable: none).
    pub destinations: &'a BTreeMap<String, PayoutDestination>,
    /// Carries into this epoch.
    pub carries_in: &'a [Carry],
}

fn checked_add(a: u128, b: u128, what: &str) -> Result<u128, NettingError> {
    a.checked_add(b).ok_or_else(|| NettingError::Overflow(what.to_owned()))
}

/// Nets one sealed epoch. `flows` may come in any order; the plan is the
/// same for the same inputs (everything is keyed and sorted).
pub fn net<'f>(
    input: &NettingInput<'_>,
    flows: impl IntoIterator<Item = Flow<'f>>,
) -> Result<SettlementPlan, NettingError> {
    let policy = input.policy;
    if policy.fee_bps > BPS_ONE {
        return Err(NettingError::BadFee(policy.fee_bps));
    }
    if let Some((asset, _)) = policy.assets.iter().find(|(_, p)| p.payable_multiple == 0) {
        return Err(NettingError::BadMultiple(asset.clone()));
    }
    let mut positions: BTreeMap<(Party, String), Position> = BTreeMap::new();
    let mut figures: BTreeMap<String, AssetFigures> = BTreeMap::new();
    for flow in flows {
        let fig = figures.entry(flow.asset.to_owned()).or_default();
        fig.gross = checked_add(fig.gross, flow.sum, flow.asset)?;
        fig.iou_count = fig.iou_count.saturating_add(flow.count);
        let payer_party = match input.links.get(flow.payer) {
            Some(payee) => Party::Payee(payee.clone()),
            None => Party::Payer(flow.payer.to_owned()),
        };
        let debtor = positions.entry((payer_party, flow.asset.to_owned())).or_default();
        debtor.debit = checked_add(debtor.debit, flow.sum, flow.asset)?;
        debtor.debit_ious = debtor.debit_ious.saturating_add(flow.count);
        let creditor = positions.entry((Party::Payee(flow.payee.to_owned()), flow.asset.to_owned())).or_default();
        creditor.credit = checked_add(creditor.credit, flow.sum, flow.asset)?;
        creditor.credit_ious = creditor.credit_ious.saturating_add(flow.count);
    }
    let mut carries_in: Vec<String> = Vec::with_capacity(input.carries_in.len());
    for carry in input.carries_in {
        let fig = figures.entry(carry.asset.clone()).or_default();
        fig.carried_in = checked_add(fig.carried_in, carry.amount, &carry.asset)?;
        let position = positions.entry((Party::Payee(carry.payee.clone()), carry.asset.clone())).or_default();
        position.carried_in = checked_add(position.carried_in, carry.amount, &carry.asset)?;
        carries_in.push(carry.source.clone());
    }
    carries_in.sort();

    let epoch = input.epoch;
    let mut plan = SettlementPlan {
        epoch,
        fee_bps: policy.fee_bps,
        payouts: Vec::new(),
        bills: Vec::new(),
        carries_out: Vec::new(),
        carries_in,
        figures: Vec::new(),
    };
    for ((party, asset), position) in positions {
        let fig = figures.get_mut(&asset).expect("every position's asset has figures");
        let credit = checked_add(position.credit, position.carried_in, &asset)?;
        if credit < position.debit {
            let amount = position.debit - credit;
            fig.bill_count += 1;
            fig.billed = checked_add(fig.billed, amount, &asset)?;
            plan.bills.push(Bill {
                id: bill_id(epoch, &party, &asset),
                epoch,
                party,
                asset,
                amount,
                iou_count: position.debit_ious,
            });
            continue;
        }
        let net_credit = credit - position.debit;
        if net_credit == 0 {
            continue;
        }
        let Party::Payee(payee) = party else {
            unreachable!("only payee accounts receive credit or carries");
        };
        let mut carry = |amount: u128, reason: CarryReason, kind: &str, fig: &mut AssetFigures| {
            fig.carried_out = checked_add(fig.carried_out, amount, &asset)?;
            plan.carries_out.push(Carry {
                epoch_to: epoch + 1,
                payee: payee.clone(),
                asset: asset.clone(),
                amount,
                reason,
                source: format!("carry:{epoch}:{payee}:{asset}:{kind}"),
            });
            Ok::<(), NettingError>(())
        };
        let Some(asset_policy) = policy.assets.get(&asset) else {
            carry(net_credit, CarryReason::NoRail, "no-rail", fig)?;
            continue;
        };
        let destination = match input.destinations.get(&payee) {
            Some(destination) if destination.rail() == asset_policy.rail => destination.clone(),
            _ => {
                carry(net_credit, CarryReason::NoDestination, "no-destination", fig)?;
                continue;
            }
        };
        let fee = net_credit
            .checked_mul(u128::from(policy.fee_bps))
            .ok_or_else(|| NettingError::Overflow(format!("fee on {asset}")))?
            / u128::from(BPS_ONE);
        let payable = net_credit - fee;
        let remainder = payable % asset_policy.payable_multiple;
        let amount = payable - remainder;
        if amount == 0 || amount < asset_policy.payout_min {
            carry(net_credit, CarryReason::BelowMinimum, "below-minimum", fig)?;
            continue;
        }
        if remainder > 0 {
            carry(remainder, CarryReason::RailPrecision, "precision", fig)?;
        }
        fig.payout_count += 1;
        fig.paid = checked_add(fig.paid, amount, &asset)?;
        fig.fees = checked_add(fig.fees, fee, &asset)?;
        fig.payout_iou_count = fig.payout_iou_count.saturating_add(position.credit_ious);
        plan.payouts.push(Payout {
            id: payout_id(epoch, &payee, &asset, asset_policy.rail),
            epoch,
            payee,
            asset,
            rail: asset_policy.rail,
            destination,
            net_credit,
            fee,
            amount,
            iou_count: position.credit_ious,
        });
    }
    for fig in figures.values_mut() {
        if !conserves(fig) {
            return Err(NettingError::NotConserved(fig.asset.clone()));
        }
    }
    plan.figures = figures
        .into_iter()
        .map(|(asset, mut fig)| {
            fig.asset = asset;
            fig
        })
        .collect();
    plan.payouts.sort_by(|a, b| a.id.cmp(&b.id));
    plan.bills.sort_by(|a, b| a.id.cmp(&b.id));
    plan.carries_out.sort_by(|a, b| a.source.cmp(&b.source));
    debug_assert!(plan.payouts.windows(2).all(|w| w[0].id != w[1].id), "payout ids are unique");
    Ok(plan)
}

/// `paid + fees + carried_out == billed + carried_in`, without overflow.
fn conserves(fig: &AssetFigures) -> bool {
    let out = fig.paid.checked_add(fig.fees).and_then(|v| v.checked_add(fig.carried_out));
    let back = fig.billed.checked_add(fig.carried_in);
    out.is_some() && out == back
}

// ---------------------------------------------------------------------------
// The persisted state machine.

/// Where an epoch's settlement stands. Sealed epochs without a plan have no
/// record at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettlementStatus {
    /// The plan is durable; nothing has been submitted.
    Planned,
    /// Batches are being handed to the rails.
    Submitting,
    /// Every batch is on its rail; bank payouts await status reports.
    Submitted,
    /// Every payout is final (paid, or rejected and carried forward).
    Settled,
    /// A step failed in a way a rerun alone may not fix; the reason says why.
    /// `tally settle --resume` retries once the cause is addressed.
    NeedsAttention(String),
}

impl SettlementStatus {
    pub fn label(&self) -> &'static str {
        match self {
            SettlementStatus::Planned => "planned",
            SettlementStatus::Submitting => "submitting",
            SettlementStatus::Submitted => "submitted",
            SettlementStatus::Settled => "settled",
            SettlementStatus::NeedsAttention(_) => "needs-attention",
        }
    }
}

/// The summary record of one epoch's settlement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochSettlement {
    pub epoch: u64,
    pub status: SettlementStatus,
    pub fee_bps: u32,
    pub planned_at_ms: u64,
    pub updated_at_ms: u64,
    pub figures: Vec<AssetFigures>,
    pub payout_count: u64,
    pub bill_count: u64,
    pub batch_count: u64,
    /// Batches not yet mined or written.
    pub batches_open: u64,
    /// Payouts neither settled nor rejected.
    pub payouts_open: u64,
    /// Σ gas used by this epoch's EVM transactions.
    pub gas_used: u64,
    /// Σ amounts the bank rejected (and that were carried forward), per asset.
    pub rejected: Vec<(String, u128)>,
}

/// A group of payouts submitted together: one EVM transaction or one bank
/// file. Deterministic from the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RailBatch {
    pub epoch: u64,
    /// Position in the plan's batch order (execution order).
    pub index: u32,
    /// EVM: `0x`-hex bytes32 batch id; banks: the file's message id.
    pub id: String,
    pub rail: Rail,
    pub asset: String,
    pub payout_ids: Vec<String>,
}

/// Where one batch stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchState {
    Planned,
    /// Signed, possibly broadcast: the exact bytes are kept so a resume
    /// rebroadcasts the same transaction rather than signing a new one.
    EvmPrepared {
        nonce: u64,
        tx_hash: [u8; 32],
        raw_tx: Vec<u8>,
        /// Chain, contract and treasury the transaction was signed for.
        signed_for: String,
    },
    EvmMined {
        tx_hash: [u8; 32],
        block_number: u64,
        gas_used: u64,
    },
    /// Generated; its name and hash are fixed before the write.
    FilePrepared {
        file_name: String,
        sha256: [u8; 32],
    },
    FileWritten {
        file_name: String,
        sha256: [u8; 32],
    },
    /// The step failed; a resume retries (the rail's own idempotency makes
    /// that safe). The reason is shown to operators.
    Failed(String),
}

impl BatchState {
    pub fn is_done(&self) -> bool {
        matches!(self, BatchState::EvmMined { .. } | BatchState::FileWritten { .. })
    }

    pub fn label(&self) -> &'static str {
        match self {
            BatchState::Planned => "planned",
            BatchState::EvmPrepared { .. } => "evm-prepared",
            BatchState::EvmMined { .. } => "evm-mined",
            BatchState::FilePrepared { .. } => "file-prepared",
            BatchState::FileWritten { .. } => "file-written",
            BatchState::Failed(_) => "failed",
        }
    }

    /// The transitions the state machine allows. Done states are final;
    /// everything else may fail, and a failed batch may be retried from any
    /// step (a resume first asks the rail whether it already happened).
    pub fn may_become(&self, next: &BatchState) -> bool {
        use BatchState::*;
        match (self, next) {
            (EvmMined { .. } | FileWritten { .. }, _) => false,
            (_, Planned) => false,
            (_, Failed(_)) => true,
            (Planned | Failed(_), _) => true,
            (EvmPrepared { .. }, EvmPrepared { .. } | EvmMined { .. }) => true,
            (FilePrepared { .. }, FilePrepared { .. } | FileWritten { .. }) => true,
            _ => false,
        }
    }
}

/// A batch with its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub batch: RailBatch,
    pub state: BatchState,
}

/// Where one payout stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayoutState {
    Planned,
    /// In a bank file in the outbox, awaiting the bank's status report.
    Submitted,
    /// Paid. The reference is the transaction hash or the bank message id.
    Settled(String),
    /// Refused by the bank, with its reason; the amount was carried forward.
    Rejected(String),
}

impl PayoutState {
    pub fn is_final(&self) -> bool {
        matches!(self, PayoutState::Settled(_) | PayoutState::Rejected(_))
    }

    pub fn label(&self) -> &'static str {
        match self {
            PayoutState::Planned => "planned",
            PayoutState::Submitted => "submitted",
            PayoutState::Settled(_) => "settled",
            PayoutState::Rejected(_) => "rejected",
        }
    }
}

/// A payout with its state and the batch it travels in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutRecord {
    pub payout: Payout,
    pub batch_index: u32,
    pub state: PayoutState,
}

/// A bill with its collection state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillRecord {
    pub bill: Bill,
    pub paid_at_ms: Option<u64>,
    /// The payers whose credit this bill holds until it is paid, fixed when
    /// the plan is recorded (the billed payer, or the payers linked to the
    /// billed account then), so later link changes never move credit.
    pub holders: Vec<String>,
}

/// Truncates a reason to [`REASON_LEN_MAX`] bytes on a character boundary.
pub fn bounded_reason(reason: &str) -> String {
    if reason.len() <= REASON_LEN_MAX {
        return reason.to_owned();
    }
    let mut end = REASON_LEN_MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn evm(n: u8) -> PayoutDestination {
        PayoutDestination::Evm { address: [n; 20] }
    }

    fn policy(fee_bps: u32, min: u128, multiple: u128) -> SettlementPolicy {
        SettlementPolicy {
            fee_bps,
            assets: BTreeMap::from([(
                "USDC".to_owned(),
                AssetPolicy { rail: Rail::Evm, payout_min: min, payable_multiple: multiple },
            )]),
        }
    }

    fn flow<'a>(payer: &'a str, payee: &'a str, sum: u128) -> Flow<'a> {
        Flow { payer, payee, asset: "USDC", sum, count: 1 }
    }

    #[test]
    fn pays_creditors_bills_debtors_and_carries_small_credit() {
        let policy = policy(100, 50, 1);
        let links = BTreeMap::new();
        let destinations = BTreeMap::from([("site-a".to_owned(), evm(1)), ("site-b".to_owned(), evm(2))]);
        let input =
            NettingInput { epoch: 7, policy: &policy, links: &links, destinations: &destinations, carries_in: &[] };
        let plan =
            net(&input, [flow("bot", "site-a", 1_000), flow("bot", "site-b", 40), flow("bot", "site-c", 5)]).unwrap();
        assert_eq!(plan.bills.len(), 1);
        assert_eq!(plan.bills[0].amount, 1_045);
        assert_eq!(plan.payouts.len(), 1);
        let payout = &plan.payouts[0];
        assert_eq!((payout.payee.as_str(), payout.fee, payout.amount), ("site-a", 10, 990));
        let carried: Vec<(&str, u128, &CarryReason)> =
            plan.carries_out.iter().map(|c| (c.payee.as_str(), c.amount, &c.reason)).collect();
        assert!(carried.contains(&("site-b", 40, &CarryReason::BelowMinimum)));
        assert!(carried.contains(&("site-c", 5, &CarryReason::NoDestination)));
        let fig = &plan.figures[0];
        assert_eq!((fig.gross, fig.paid, fig.fees, fig.billed, fig.carried_out), (1_045, 990, 10, 1_045, 45));
        assert_eq!(fig.moved_ppm(), 947_368);
    }

    #[test]
    fn linked_accounts_net_their_flows() {
        let policy = policy(0, 1, 1);
        let links = BTreeMap::from([("agent-key-owner".to_owned(), "agent".to_owned())]);
        let destinations = BTreeMap::from([("agent".to_owned(), evm(9)), ("api".to_owned(), evm(8))]);
        let input =
            NettingInput { epoch: 1, policy: &policy, links: &links, destinations: &destinations, carries_in: &[] };
        // The agent earns 300 from a crawler and spends 120 at an API.
        let plan = net(&input, [flow("crawler", "agent", 300), flow("agent-key-owner", "api", 120)]).unwrap();
        let agent = plan.payouts.iter().find(|p| p.payee == "agent").unwrap();
        assert_eq!(agent.amount, 180);
        assert_eq!(plan.bills.iter().map(|b| b.amount).sum::<u128>(), 300);
        assert_eq!(plan.figures[0].paid, 300, "180 to the agent plus 120 to the API");
        assert_eq!(plan.figures[0].gross, 420);
    }

    #[test]
    fn bank_precision_remainder_carries() {
        let policy = SettlementPolicy {
            fee_bps: 0,
            assets: BTreeMap::from([(
                "EUR".to_owned(),
                AssetPolicy { rail: Rail::Iso20022, payout_min: 0, payable_multiple: 10_000 },
            )]),
        };
        let destinations = BTreeMap::from([(
            "pub".to_owned(),
            PayoutDestination::Iban { iban: "DE89370400440532013000".into(), bic: None },
        )]);
        let links = BTreeMap::new();
        let carry = Carry {
            epoch_to: 3,
            payee: "pub".into(),
            asset: "EUR".into(),
            amount: 4_321,
            reason: CarryReason::BelowMinimum,
            source: "carry:2:pub:EUR:below-minimum".into(),
        };
        let carries = [carry];
        let input = NettingInput {
            epoch: 3,
            policy: &policy,
            links: &links,
            destinations: &destinations,
            carries_in: &carries,
        };
        let plan = net(&input, [Flow { payer: "bot", payee: "pub", asset: "EUR", sum: 1_234_567, count: 9 }]).unwrap();
        assert_eq!(plan.payouts[0].amount, 1_230_000);
        assert_eq!(plan.carries_out[0].amount, 8_888);
        assert_eq!(plan.carries_out[0].reason, CarryReason::RailPrecision);
        assert_eq!(plan.carries_in, vec!["carry:2:pub:EUR:below-minimum".to_owned()]);
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(payout_id(1, "a", "USDC", Rail::Evm), payout_id(1, "a", "USDC", Rail::Evm));
        assert_ne!(payout_id(1, "a", "USDC", Rail::Evm), payout_id(2, "a", "USDC", Rail::Evm));
        assert_ne!(payout_id(1, "ab", "USDC", Rail::Evm), payout_id(1, "a", "bUSDC", Rail::Evm));
        assert_eq!(payout_id(1, "a", "USDC", Rail::Evm).len(), 31);
    }

    #[test]
    fn batch_transitions() {
        let prepared =
            BatchState::EvmPrepared { nonce: 1, tx_hash: [0; 32], raw_tx: vec![], signed_for: String::new() };
        let mined = BatchState::EvmMined { tx_hash: [0; 32], block_number: 1, gas_used: 1 };
        assert!(BatchState::Planned.may_become(&prepared));
        assert!(prepared.may_become(&mined));
        assert!(!mined.may_become(&BatchState::Failed("x".into())));
        assert!(!prepared.may_become(&BatchState::Planned));
        assert!(!prepared.may_become(&BatchState::FileWritten { file_name: "f".into(), sha256: [0; 32] }));
        assert!(BatchState::Failed("x".into()).may_become(&mined));
    }

    proptest! {
        #[test]
        fn netting_conserves_value(
            flows in proptest::collection::vec((0u8..6, 0u8..6, 0u64..1_000_000_000_000u64), 0..60),
            carries in proptest::collection::vec((0u8..6, 0u64..1_000_000u64), 0..6),
            fee_bps in 0u32..=10_000,
            min in 0u128..1_000_000,
            multiple in 1u128..10_000,
            linked in proptest::bool::ANY,
        ) {
            let policy = policy(fee_bps, min, multiple);
            let names: Vec<String> = (0..6).map(|i| format!("n{i}")).collect();
            // Even-numbered payees have destinations.
            let destinations: BTreeMap<String, PayoutDestination> =
                (0..6u8).filter(|i| i % 2 == 0).map(|i| (names[usize::from(i)].clone(), evm(i))).collect();
            let links: BTreeMap<String, String> =
                if linked { BTreeMap::from([(names[0].clone(), names[1].clone())]) } else { BTreeMap::new() };
            let carries: Vec<Carry> = carries.iter().enumerate().map(|(i, (payee, amount))| Carry {
                epoch_to: 5, payee: names[usize::from(*payee)].clone(), asset: "USDC".into(),
                amount: u128::from(*amount), reason: CarryReason::BelowMinimum, source: format!("s{i}"),
            }).collect();
            let input = NettingInput { epoch: 5, policy: &policy, links: &links, destinations: &destinations, carries_in: &carries };
            let flow_list: Vec<Flow> = flows.iter().map(|(a, b, sum)| Flow {
                payer: &names[usize::from(*a)], payee: &names[usize::from(*b)], asset: "USDC", sum: u128::from(*sum), count: 1,
            }).collect();
            let plan = net(&input, flow_list.iter().copied()).unwrap();
            let paid: u128 = plan.payouts.iter().map(|p| p.amount).sum();
            let fees: u128 = plan.payouts.iter().map(|p| p.fee).sum();
            let billed: u128 = plan.bills.iter().map(|b| b.amount).sum();
            let carried_out: u128 = plan.carries_out.iter().map(|c| c.amount).sum();
            let carried_in: u128 = carries.iter().map(|c| c.amount).sum();
            prop_assert_eq!(paid + fees + carried_out, billed + carried_in);
            for payout in &plan.payouts {
                prop_assert!(payout.amount >= min && payout.amount % multiple == 0 && payout.amount > 0);
                prop_assert_eq!(payout.fee, payout.net_credit * u128::from(fee_bps) / 10_000);
            }
            // Same inputs in another order: the same plan.
            let reversed = net(&input, flow_list.iter().rev().copied()).unwrap();
            prop_assert_eq!(plan, reversed);
        }
    }
}

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
//! Every id a plan hands to a rail (payout ids, bill ids, EVM batch ids,
//! bank message ids) mixes in the [`LedgerId`], so two ledgers paying from
//! one treasury or bank account never produce the same id.
//!
//! Every amount is an integer in the asset's smallest unit; every sum is
//! checked. Per asset the plan conserves value exactly:
//! `Σ payouts + Σ fees + Σ carried out − Σ billed = Σ carried in`,
//! which [`net`] asserts before it returns.
//!
//! The persisted records of settlement's state machine (epoch status, batch
//! and payout states) are defined here too, with their allowed transitions,
//! so the ledger that stores them and the settler that drives them agree.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::destination::{PayoutDestination, Rail};
use crate::ledger_id::LedgerId;

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
    /// The payee is suspended: what it is owed is held until it is reinstated.
    PayeeSuspended,
}

impl fmt::Display for CarryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CarryReason::BelowMinimum => f.write_str("below minimum payout"),
            CarryReason::NoDestination => f.write_str("no payout destination on the asset's rail"),
            CarryReason::NoRail => f.write_str("asset has no settlement rail"),
            CarryReason::RailPrecision => f.write_str("below the rail's smallest unit"),
            CarryReason::Rejected(reason) => write!(f, "rejected by the bank: {reason}"),
            CarryReason::PayeeSuspended => f.write_str("payee suspended: held until reinstated"),
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
    /// `paid / gross` in parts per million (integer; no floats near money);
    /// `None` when nothing was charged or the product overflows.
    pub fn moved_ppm(&self) -> Option<u128> {
        self.paid.checked_mul(1_000_000)?.checked_div(self.gross)
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
    #[error("bank message id {0:?} is longer than {BANK_MESSAGE_ID_LEN_MAX} characters")]
    MessageIdTooLong(String),
}

/// Longest bank message id (ISO 20022 `MsgId` is `Max35Text`).
pub const BANK_MESSAGE_ID_LEN_MAX: usize = 35;

/// SHA-256 over a domain tag, the ledger id, the epoch and length-prefixed parts.
fn id_digest(tag: &str, ledger: &LedgerId, epoch: u64, parts: &[&str]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(tag.as_bytes());
    hasher.update(ledger.0);
    hasher.update(epoch.to_be_bytes());
    for part in parts {
        let len = u32::try_from(part.len()).expect("id parts are short strings");
        hasher.update(len.to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// A short deterministic id: a letter, then 30 hex digits (120 bits) of
/// [`id_digest`]. 31 characters fit ISO 20022's 35-character EndToEndId.
fn short_id(letter: char, tag: &str, ledger: &LedgerId, epoch: u64, parts: &[&str]) -> String {
    let digest = id_digest(tag, ledger, epoch, parts);
    let mut id = String::with_capacity(31);
    id.push(letter);
    id.push_str(&hex::encode(&digest[..15]));
    id
}

/// The payout id of `(ledger, epoch, payee, asset, rail)`.
pub fn payout_id(ledger: &LedgerId, epoch: u64, payee: &str, asset: &str, rail: Rail) -> String {
    short_id('P', "tally-payout-v2", ledger, epoch, &[payee, asset, rail.as_str()])
}

/// The bill id of `(ledger, epoch, party, asset)`.
pub fn bill_id(ledger: &LedgerId, epoch: u64, party: &Party, asset: &str) -> String {
    short_id('B', "tally-bill-v2", ledger, epoch, &[&party.to_string(), asset])
}

/// `0x`-hex of SHA-256("tally-evm-batch-v2" ‖ ledger id ‖ epoch ‖ index ‖
/// payout ids): the `bytes32` the payout contract refuses to execute twice.
pub fn evm_batch_id(ledger: &LedgerId, epoch: u64, index: u32, payout_ids: &[&str]) -> String {
    let index = index.to_be_bytes();
    let mut parts: Vec<&str> = Vec::with_capacity(payout_ids.len() + 1);
    let index_hex = hex::encode(index);
    parts.push(&index_hex);
    parts.extend_from_slice(payout_ids);
    format!("0x{}", hex::encode(id_digest("tally-evm-batch-v2", ledger, epoch, &parts)))
}

/// A bank file's message id (ISO 20022 `MsgId`, and the file's name):
/// `T<ledger short id>-E<epoch>-<currency>-<chunk>`, e.g. `Ta1b2c3d4-E12-EUR-1`.
/// Readable by finance staff, unique per ledger, at most 35 characters: an
/// epoch or chunk number too long to fit is an error, never a truncation.
pub fn bank_message_id(ledger: &LedgerId, epoch: u64, asset: &str, chunk: usize) -> Result<String, NettingError> {
    let id = format!("T{}-E{epoch}-{asset}-{chunk}", ledger.short());
    if id.len() > BANK_MESSAGE_ID_LEN_MAX {
        return Err(NettingError::MessageIdTooLong(id));
    }
    Ok(id)
}

/// How big batches may be: payouts per EVM transaction, transfers per bank file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchLimits {
    pub payouts_per_evm_tx: u32,
    pub transfers_per_iso20022_file: u32,
    pub transfers_per_nacha_file: u32,
}

/// Cuts a plan's payouts into batches in a fixed order (rail, asset, payout
/// id), so cutting the same plan twice yields the same batches and ids.
pub fn cut_batches(
    plan: &SettlementPlan,
    ledger: &LedgerId,
    limits: BatchLimits,
) -> Result<Vec<RailBatch>, NettingError> {
    let mut groups: BTreeMap<(Rail, &str), Vec<&str>> = BTreeMap::new();
    for payout in &plan.payouts {
        groups.entry((payout.rail, payout.asset.as_str())).or_default().push(payout.id.as_str());
    }
    let mut batches = Vec::new();
    for ((rail, asset), payout_ids) in groups {
        let size = match rail {
            Rail::Evm => limits.payouts_per_evm_tx,
            Rail::Iso20022 => limits.transfers_per_iso20022_file,
            Rail::Nacha => limits.transfers_per_nacha_file,
        }
        .max(1) as usize;
        for (chunk_index, chunk) in payout_ids.chunks(size).enumerate() {
            let index = u32::try_from(batches.len()).map_err(|_| NettingError::Overflow("batch count".into()))?;
            let id = match rail {
                Rail::Evm => evm_batch_id(ledger, plan.epoch, index, chunk),
                Rail::Iso20022 | Rail::Nacha => bank_message_id(ledger, plan.epoch, asset, chunk_index + 1)?,
            };
            batches.push(RailBatch {
                epoch: plan.epoch,
                index,
                id,
                rail,
                asset: asset.to_owned(),
                payout_ids: chunk.iter().map(|s| (*s).to_owned()).collect(),
            });
        }
    }
    Ok(batches)
}

/// Where two plans of one epoch first differ, for a refusal that says what
/// changed (`None`: they are equal).
pub fn plan_difference(expected: &SettlementPlan, proposed: &SettlementPlan) -> Option<String> {
    if expected == proposed {
        return None;
    }
    if expected.epoch != proposed.epoch || expected.fee_bps != proposed.fee_bps {
        return Some(format!(
            "epoch/fee: expected {}/{} bps, got {}/{} bps",
            expected.epoch, expected.fee_bps, proposed.epoch, proposed.fee_bps
        ));
    }
    if expected.figures != proposed.figures {
        return Some(format!("figures: expected {:?}, got {:?}", expected.figures, proposed.figures));
    }
    fn first<T: PartialEq + fmt::Debug>(what: &str, a: &[T], b: &[T]) -> Option<String> {
        if a.len() != b.len() {
            return Some(format!("{what}: expected {} entries, got {}", a.len(), b.len()));
        }
        a.iter().zip(b).find(|(x, y)| x != y).map(|(x, y)| format!("{what}: expected {x:?}, got {y:?}"))
    }
    first("payouts", &expected.payouts, &proposed.payouts)
        .or_else(|| first("bills", &expected.bills, &proposed.bills))
        .or_else(|| first("carries out", &expected.carries_out, &proposed.carries_out))
        .or_else(|| first("carries in", &expected.carries_in, &proposed.carries_in))
        .or_else(|| Some("the plans differ".to_owned()))
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
    /// Mixed into every payout and bill id.
    pub ledger_id: LedgerId,
    pub epoch: u64,
    pub policy: &'a SettlementPolicy,
    /// Payer id → the payee account it nets under.
    pub links: &'a BTreeMap<String, String>,
    /// Payee id → its parsed destination (absent or unparsable: none).
    pub destinations: &'a BTreeMap<String, PayoutDestination>,
    /// Carries into this epoch.
    pub carries_in: &'a [Carry],
    /// Suspended payees: their credit is held (carried), not paid.
    pub held: &'a BTreeSet<String>,
}

fn checked_add(a: u128, b: u128, what: &str) -> Result<u128, NettingError> {
    a.checked_add(b).ok_or_else(|| NettingError::Overflow(what.to_owned()))
}

fn checked_count(a: u64, b: u64, what: &str) -> Result<u64, NettingError> {
    a.checked_add(b).ok_or_else(|| NettingError::Overflow(format!("IOU count of {what}")))
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
        fig.iou_count = checked_count(fig.iou_count, flow.count, flow.asset)?;
        let payer_party = match input.links.get(flow.payer) {
            Some(payee) => Party::Payee(payee.clone()),
            None => Party::Payer(flow.payer.to_owned()),
        };
        let debtor = positions.entry((payer_party, flow.asset.to_owned())).or_default();
        debtor.debit = checked_add(debtor.debit, flow.sum, flow.asset)?;
        debtor.debit_ious = checked_count(debtor.debit_ious, flow.count, flow.asset)?;
        let creditor = positions.entry((Party::Payee(flow.payee.to_owned()), flow.asset.to_owned())).or_default();
        creditor.credit = checked_add(creditor.credit, flow.sum, flow.asset)?;
        creditor.credit_ious = checked_count(creditor.credit_ious, flow.count, flow.asset)?;
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
            fig.bill_count = checked_count(fig.bill_count, 1, &asset)?;
            fig.billed = checked_add(fig.billed, amount, &asset)?;
            plan.bills.push(Bill {
                id: bill_id(&input.ledger_id, epoch, &party, &asset),
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
        if input.held.contains(&payee) {
            carry(net_credit, CarryReason::PayeeSuspended, "suspended", fig)?;
            continue;
        }
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
        fig.payout_count = checked_count(fig.payout_count, 1, &asset)?;
        fig.paid = checked_add(fig.paid, amount, &asset)?;
        fig.fees = checked_add(fig.fees, fee, &asset)?;
        fig.payout_iou_count = checked_count(fig.payout_iou_count, position.credit_ious, &asset)?;
        plan.payouts.push(Payout {
            id: payout_id(&input.ledger_id, epoch, &payee, &asset, asset_policy.rail),
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
    /// Generated; its name, hash and creation time are fixed before the
    /// write, so a resume regenerates exactly the same bytes.
    FilePrepared {
        file_name: String,
        sha256: [u8; 32],
        /// When the file was generated (its creation timestamp; its
        /// execution date counts from here, never from an earlier day).
        created_at_ms: u64,
    },
    FileWritten {
        file_name: String,
        sha256: [u8; 32],
        created_at_ms: u64,
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

/// An epoch's counters as its batch and payout records imply them: what
/// [`EpochSettlement`]'s running counters must equal (`tally ledger verify`
/// recomputes them; the writer keeps them incrementally).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DerivedCounters {
    pub batches_open: u64,
    pub payouts_open: u64,
    pub gas_used: u64,
    /// Σ (amount + fee) of rejected payouts, per asset, sorted by asset.
    pub rejected: Vec<(String, u128)>,
}

/// Recomputes [`DerivedCounters`] from the records; an overflow is an error.
pub fn derive_counters(batches: &[BatchRecord], payouts: &[PayoutRecord]) -> Result<DerivedCounters, NettingError> {
    let overflow = |what: &str| NettingError::Overflow(what.to_owned());
    let mut counters = DerivedCounters::default();
    for batch in batches {
        match &batch.state {
            BatchState::EvmMined { gas_used, .. } => {
                counters.gas_used = counters.gas_used.checked_add(*gas_used).ok_or_else(|| overflow("gas used"))?;
            }
            BatchState::FileWritten { .. } => {}
            _ => counters.batches_open = counters.batches_open.checked_add(1).ok_or_else(|| overflow("batches"))?,
        }
    }
    let mut rejected: BTreeMap<&str, u128> = BTreeMap::new();
    for record in payouts {
        if !record.state.is_final() {
            counters.payouts_open = counters.payouts_open.checked_add(1).ok_or_else(|| overflow("payouts"))?;
        }
        if let PayoutState::Rejected(_) = record.state {
            let amount = record.payout.amount.checked_add(record.payout.fee).ok_or_else(|| overflow("rejected"))?;
            let total = rejected.entry(record.payout.asset.as_str()).or_default();
            *total = total.checked_add(amount).ok_or_else(|| overflow("rejected"))?;
        }
    }
    counters.rejected = rejected.into_iter().map(|(asset, amount)| (asset.to_owned(), amount)).collect();
    Ok(counters)
}

/// The status an epoch's counters imply once every batch is done (`None`
/// while batches are open: then it is planned, submitting or needs attention).
pub fn terminal_status(batches_open: u64, payouts_open: u64) -> Option<SettlementStatus> {
    match (batches_open, payouts_open) {
        (0, 0) => Some(SettlementStatus::Settled),
        (0, _) => Some(SettlementStatus::Submitted),
        _ => None,
    }
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

    const LEDGER: LedgerId = LedgerId([7; 16]);

    fn input<'a>(
        epoch: u64,
        policy: &'a SettlementPolicy,
        links: &'a BTreeMap<String, String>,
        destinations: &'a BTreeMap<String, PayoutDestination>,
        carries_in: &'a [Carry],
        held: &'a BTreeSet<String>,
    ) -> NettingInput<'a> {
        NettingInput { ledger_id: LEDGER, epoch, policy, links, destinations, carries_in, held }
    }

    #[test]
    fn pays_creditors_bills_debtors_and_carries_small_credit() {
        let policy = policy(100, 50, 1);
        let links = BTreeMap::new();
        let destinations = BTreeMap::from([("site-a".to_owned(), evm(1)), ("site-b".to_owned(), evm(2))]);
        let held = BTreeSet::new();
        let input = input(7, &policy, &links, &destinations, &[], &held);
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
        assert_eq!(fig.moved_ppm(), Some(947_368));
        assert_eq!(AssetFigures::default().moved_ppm(), None, "nothing charged: no ratio");
    }

    #[test]
    fn linked_accounts_net_their_flows() {
        let policy = policy(0, 1, 1);
        let links = BTreeMap::from([("agent-key-owner".to_owned(), "agent".to_owned())]);
        let destinations = BTreeMap::from([("agent".to_owned(), evm(9)), ("api".to_owned(), evm(8))]);
        let held = BTreeSet::new();
        let input = input(1, &policy, &links, &destinations, &[], &held);
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
        let held = BTreeSet::new();
        let input = input(3, &policy, &links, &destinations, &carries, &held);
        let plan = net(&input, [Flow { payer: "bot", payee: "pub", asset: "EUR", sum: 1_234_567, count: 9 }]).unwrap();
        assert_eq!(plan.payouts[0].amount, 1_230_000);
        assert_eq!(plan.carries_out[0].amount, 8_888);
        assert_eq!(plan.carries_out[0].reason, CarryReason::RailPrecision);
        assert_eq!(plan.carries_in, vec!["carry:2:pub:EUR:below-minimum".to_owned()]);
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let other = LedgerId([8; 16]);
        assert_eq!(payout_id(&LEDGER, 1, "a", "USDC", Rail::Evm), payout_id(&LEDGER, 1, "a", "USDC", Rail::Evm));
        assert_ne!(payout_id(&LEDGER, 1, "a", "USDC", Rail::Evm), payout_id(&LEDGER, 2, "a", "USDC", Rail::Evm));
        assert_ne!(payout_id(&LEDGER, 1, "ab", "USDC", Rail::Evm), payout_id(&LEDGER, 1, "a", "bUSDC", Rail::Evm));
        assert_eq!(payout_id(&LEDGER, 1, "a", "USDC", Rail::Evm).len(), 31);
        // Two ledgers never share an id: the defect where a second ledger on one treasury
        // reproduced the first one's epoch-1 batch id and was told "already executed".
        assert_ne!(payout_id(&LEDGER, 1, "a", "USDC", Rail::Evm), payout_id(&other, 1, "a", "USDC", Rail::Evm));
        assert_ne!(
            bill_id(&LEDGER, 1, &Party::Payer("b".into()), "USDC"),
            bill_id(&other, 1, &Party::Payer("b".into()), "USDC")
        );
        assert_ne!(evm_batch_id(&LEDGER, 1, 0, &["P1"]), evm_batch_id(&other, 1, 0, &["P1"]));
        assert_ne!(evm_batch_id(&LEDGER, 1, 0, &["P1"]), evm_batch_id(&LEDGER, 1, 1, &["P1"]));
        assert_eq!(evm_batch_id(&LEDGER, 1, 0, &["P1"]).len(), 66);
        assert_ne!(bank_message_id(&LEDGER, 1, "EUR", 1), bank_message_id(&other, 1, "EUR", 1));
        assert_eq!(bank_message_id(&LEDGER, 12, "EUR", 1).unwrap(), "T07070707-E12-EUR-1");
    }

    #[test]
    fn bank_message_ids_never_exceed_35_characters() {
        // 13-digit epochs (a seal a second for 300,000 years) and 100,000 files an epoch fit exactly.
        assert_eq!(bank_message_id(&LEDGER, 9_999_999_999_999, "EUR", 100_000).unwrap().len(), 35);
        assert!(matches!(
            bank_message_id(&LEDGER, 99_999_999_999_999, "EUR", 100_000),
            Err(NettingError::MessageIdTooLong(_))
        ));
    }

    #[test]
    fn batches_are_cut_by_rail_and_size_deterministically() {
        let policy = SettlementPolicy {
            fee_bps: 0,
            assets: BTreeMap::from([
                ("USDC".to_owned(), AssetPolicy { rail: Rail::Evm, payout_min: 0, payable_multiple: 1 }),
                ("EUR".to_owned(), AssetPolicy { rail: Rail::Iso20022, payout_min: 0, payable_multiple: 1 }),
            ]),
        };
        let mut destinations: BTreeMap<String, PayoutDestination> =
            (0..5u8).map(|i| (format!("s{i}"), evm(i + 1))).collect();
        destinations
            .insert("bank".into(), PayoutDestination::Iban { iban: "DE89370400440532013000".into(), bic: None });
        let (links, held) = (BTreeMap::new(), BTreeSet::new());
        let input = input(4, &policy, &links, &destinations, &[], &held);
        let names: Vec<String> = (0..5).map(|i| format!("s{i}")).collect();
        let mut flows: Vec<Flow> =
            names.iter().map(|n| Flow { payer: "bot", payee: n, asset: "USDC", sum: 10, count: 1 }).collect();
        flows.push(Flow { payer: "bot", payee: "bank", asset: "EUR", sum: 10, count: 1 });
        let plan = net(&input, flows).unwrap();
        let limits =
            BatchLimits { payouts_per_evm_tx: 2, transfers_per_iso20022_file: 10, transfers_per_nacha_file: 10 };
        let batches = cut_batches(&plan, &LEDGER, limits).unwrap();
        assert_eq!(batches.len(), 4, "3 EVM transactions of at most 2, one bank file");
        assert_eq!(batches.iter().map(|b| b.payout_ids.len()).sum::<usize>(), 6);
        assert!(batches.iter().enumerate().all(|(i, b)| b.index as usize == i && b.epoch == 4));
        assert_eq!(batches, cut_batches(&plan, &LEDGER, limits).unwrap(), "deterministic");
        assert!(batches.iter().any(|b| b.id == "T07070707-E4-EUR-1"));
    }

    #[test]
    fn a_suspended_payee_is_held_not_paid() {
        let policy = policy(0, 1, 1);
        let links = BTreeMap::new();
        let destinations = BTreeMap::from([("site-a".to_owned(), evm(1)), ("site-b".to_owned(), evm(2))]);
        let held = BTreeSet::from(["site-b".to_owned()]);
        let input = input(2, &policy, &links, &destinations, &[], &held);
        let plan = net(&input, [flow("bot", "site-a", 100), flow("bot", "site-b", 50)]).unwrap();
        assert_eq!(plan.payouts.iter().map(|p| p.payee.as_str()).collect::<Vec<_>>(), ["site-a"]);
        assert_eq!(plan.carries_out.len(), 1);
        assert_eq!((plan.carries_out[0].amount, &plan.carries_out[0].reason), (50, &CarryReason::PayeeSuspended));
    }

    #[test]
    fn plan_differences_name_the_first_change() {
        let policy = policy(0, 1, 1);
        let links = BTreeMap::new();
        let destinations = BTreeMap::from([("site-a".to_owned(), evm(1))]);
        let held = BTreeSet::new();
        let input = input(2, &policy, &links, &destinations, &[], &held);
        let plan = net(&input, [flow("bot", "site-a", 100)]).unwrap();
        assert_eq!(plan_difference(&plan, &plan), None);
        let mut forged = plan.clone();
        forged.payouts[0].destination = evm(9);
        assert!(plan_difference(&plan, &forged).unwrap().starts_with("payouts:"));
        let mut forged = plan.clone();
        forged.figures[0].paid += 1;
        assert!(plan_difference(&plan, &forged).unwrap().starts_with("figures:"));
    }

    #[test]
    fn counters_derive_from_records() {
        let payout = |id: &str, state: PayoutState| PayoutRecord {
            payout: Payout {
                id: id.into(),
                epoch: 1,
                payee: "p".into(),
                asset: "EUR".into(),
                rail: Rail::Iso20022,
                destination: evm(1),
                net_credit: 10,
                fee: 1,
                amount: 9,
                iou_count: 1,
            },
            batch_index: 0,
            state,
        };
        let batch = |state: BatchState| BatchRecord {
            batch: RailBatch {
                epoch: 1,
                index: 0,
                id: "x".into(),
                rail: Rail::Evm,
                asset: "EUR".into(),
                payout_ids: vec![],
            },
            state,
        };
        let counters = derive_counters(
            &[
                batch(BatchState::Planned),
                batch(BatchState::EvmMined { tx_hash: [0; 32], block_number: 1, gas_used: 7 }),
            ],
            &[
                payout("a", PayoutState::Submitted),
                payout("b", PayoutState::Rejected("no".into())),
                payout("c", PayoutState::Settled("r".into())),
            ],
        )
        .unwrap();
        assert_eq!(
            counters,
            DerivedCounters { batches_open: 1, payouts_open: 1, gas_used: 7, rejected: vec![("EUR".into(), 10)] }
        );
        assert_eq!(terminal_status(0, 0), Some(SettlementStatus::Settled));
        assert_eq!(terminal_status(0, 1), Some(SettlementStatus::Submitted));
        assert_eq!(terminal_status(1, 0), None);
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
        assert!(!prepared.may_become(&BatchState::FileWritten {
            file_name: "f".into(),
            sha256: [0; 32],
            created_at_ms: 0
        }));
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
            let held = BTreeSet::new();
            let input = input(5, &policy, &links, &destinations, &carries, &held);
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

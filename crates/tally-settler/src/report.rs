//! Settlement reports and statements: what finance reads.
//!
//! An [`EpochReport`] gives the netting figures (gross IOU volume and count,
//! payouts, value moved and its ratio to gross), fees, bills, carried
//! amounts, per-rail totals, and for the EVM rail the gas used and gas per
//! settled IOU. A [`Statement`] lists, for one payee or payer in one epoch,
//! every aggregate behind its payout or bill, so each payout ties back to
//! the IOUs that produced it.

use std::collections::BTreeMap;

use serde::Serialize;
use tally_core::Rail;
use tally_core::settlement::{AssetFigures, Bill, Carry, Party, PayoutRecord, SettlementStatus};
use tally_ledger::{BalanceFilter, Ledger};

use crate::SettleError;

/// Most aggregate rows one statement returns.
pub const STATEMENT_ROWS_MAX: usize = 1_000_000;

#[derive(Clone, Debug, Serialize)]
pub struct RailTotal {
    pub rail: Rail,
    pub asset: String,
    pub payouts: u64,
    pub amount: u128,
    pub settled: u64,
    pub submitted: u64,
    pub rejected: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    pub epoch: u64,
    pub status: SettlementStatus,
    pub fee_bps: u32,
    pub planned_at_ms: u64,
    pub updated_at_ms: u64,
    pub figures: Vec<AssetFigures>,
    pub rails: Vec<RailTotal>,
    pub batch_count: u64,
    pub batches_open: u64,
    pub payouts_open: u64,
    pub gas_used: u64,
    /// IOUs behind EVM payouts that are settled.
    pub evm_settled_ious: u64,
    /// `gas_used / evm_settled_ious`, rounded down; 0 when nothing settled.
    pub gas_per_settled_iou: u64,
    pub rejected: Vec<(String, u128)>,
}

pub fn report_of(ledger: &Ledger, epoch: u64) -> Result<EpochReport, SettleError> {
    let settlement =
        ledger.settlement(epoch)?.ok_or_else(|| SettleError::NotFound(format!("epoch {epoch} has no settlement")))?;
    let payouts = ledger.payouts(epoch)?;
    let mut rails: BTreeMap<(Rail, String), RailTotal> = BTreeMap::new();
    let mut evm_settled_ious = 0u64;
    for record in &payouts {
        let p = &record.payout;
        let total = rails.entry((p.rail, p.asset.clone())).or_insert_with(|| RailTotal {
            rail: p.rail,
            asset: p.asset.clone(),
            payouts: 0,
            amount: 0,
            settled: 0,
            submitted: 0,
            rejected: 0,
        });
        total.payouts += 1;
        total.amount =
            total.amount.checked_add(p.amount).ok_or_else(|| SettleError::Ledger("total overflows".into()))?;
        match record.state {
            tally_core::settlement::PayoutState::Settled(_) => {
                total.settled += 1;
                if p.rail == Rail::Evm {
                    evm_settled_ious = evm_settled_ious.saturating_add(p.iou_count);
                }
            }
            tally_core::settlement::PayoutState::Submitted => total.submitted += 1,
            tally_core::settlement::PayoutState::Rejected(_) => total.rejected += 1,
            tally_core::settlement::PayoutState::Planned => {}
        }
    }
    Ok(EpochReport {
        epoch,
        status: settlement.status,
        fee_bps: settlement.fee_bps,
        planned_at_ms: settlement.planned_at_ms,
        updated_at_ms: settlement.updated_at_ms,
        figures: settlement.figures,
        rails: rails.into_values().collect(),
        batch_count: settlement.batch_count,
        batches_open: settlement.batches_open,
        payouts_open: settlement.payouts_open,
        gas_used: settlement.gas_used,
        evm_settled_ious,
        gas_per_settled_iou: settlement.gas_used.checked_div(evm_settled_ious).unwrap_or(0),
        rejected: settlement.rejected,
    })
}

/// One aggregate behind a payout or bill.
#[derive(Clone, Debug, Serialize)]
pub struct StatementLine {
    pub epoch: u64,
    pub payer: String,
    pub payee: String,
    pub asset: String,
    pub amount: u128,
    pub iou_count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Statement {
    pub epoch: u64,
    pub party: String,
    /// Aggregates where the party is payee (credits) or payer (debits).
    pub lines: Vec<StatementLine>,
    pub payouts: Vec<PayoutRecord>,
    pub bills: Vec<Bill>,
    /// Credit carried into this epoch for the party, and carried out of it.
    pub carried_in: Vec<Carry>,
    pub carried_out: Vec<Carry>,
}

/// The statement of `party` (a payee id, a payer id, or a linked account)
/// for `epoch`.
pub fn statement(ledger: &Ledger, epoch: u64, party: &Party) -> Result<Statement, SettleError> {
    // A payee account includes the payers linked to it.
    let (payee_ids, payer_ids): (Vec<String>, Vec<String>) = match party {
        Party::Payee(id) => {
            let linked = ledger.payers()?.into_iter().filter(|p| p.settles_with.as_deref() == Some(id.as_str()));
            (vec![id.clone()], linked.map(|p| p.id).collect())
        }
        Party::Payer(id) => (vec![], vec![id.clone()]),
    };
    let mut lines = Vec::new();
    let mut push_rows = |filter: BalanceFilter| -> Result<(), SettleError> {
        for row in ledger.balances_all(&filter, STATEMENT_ROWS_MAX)? {
            lines.push(StatementLine {
                epoch: row.epoch,
                payer: row.payer,
                payee: row.payee,
                asset: row.asset,
                amount: row.sum,
                iou_count: row.count,
            });
        }
        Ok(())
    };
    for payee in &payee_ids {
        push_rows(BalanceFilter { epoch: Some(epoch), payee: Some(payee.clone()), ..Default::default() })?;
    }
    for payer in &payer_ids {
        push_rows(BalanceFilter { epoch: Some(epoch), payer: Some(payer.clone()), ..Default::default() })?;
    }
    let payouts: Vec<PayoutRecord> = ledger
        .payouts(epoch)?
        .into_iter()
        .filter(|p| matches!(party, Party::Payee(id) if *id == p.payout.payee))
        .collect();
    let bills = ledger.bills(epoch)?.into_iter().map(|b| b.bill).filter(|b| b.party == *party).collect();
    let mine = |c: &Carry| matches!(party, Party::Payee(id) if *id == c.payee);
    let carried_in = ledger.carries_into(epoch)?.into_iter().filter(mine).collect();
    // Carries out of this epoch: from its plan (sources name the epoch) and
    // from rejections of its payouts.
    let payout_ids: Vec<String> = payouts.iter().map(|p| p.payout.id.clone()).collect();
    let prefix = format!("carry:{epoch}:");
    let mut carried_out = Vec::new();
    for target in epoch + 1..=ledger.planned_through()?.max(epoch) + 1 {
        for carry in ledger.carries_into(target)? {
            let from_here = carry.source.starts_with(&prefix)
                || carry.source.strip_prefix("rejected:").is_some_and(|id| payout_ids.iter().any(|p| p == id));
            if from_here && mine(&carry) {
                carried_out.push(carry);
            }
        }
    }
    Ok(Statement { epoch, party: party.to_string(), lines, payouts, bills, carried_in, carried_out })
}

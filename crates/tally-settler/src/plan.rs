//! Planning: from a sealed epoch in the ledger to a plan and its batches.
//!
//! This reads everything netting needs (the epoch's aggregates, payer
//! links, payee destinations and statuses, carries into the epoch, asset
//! scales, the ledger id), runs the pure [`tally_core::settlement::net`],
//! and cuts the payouts into [`RailBatch`]es with
//! [`tally_core::settlement::cut_batches`]: EVM transactions of at most
//! `payouts_per_tx` payouts, and bank files of at most `transfers_per_file`
//! transfers, one or more per epoch and currency. Ids are derived from the
//! ledger id, the epoch and the contents, so planning twice yields the same
//! bytes, and two ledgers never the same ids.
//!
//! The plan is a proposal: the ledger's writer nets the epoch again under
//! the same policy and limits and records it only if it is identical
//! (`tally_ledger::writer::settlement`).
//!
//! Memory: the aggregates are read once into interned ids (a `u32` per
//! name), so an epoch with a million payer–payee pairs costs about 50 MB
//! here, not a `String` per pair.

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use tally_core::settlement::BatchLimits;
use tally_core::settlement::{
    AssetPolicy, Flow, NettingInput, RailBatch, SettlementPlan, SettlementPolicy, cut_batches, net,
};
use tally_core::{PayeeStatus, PayoutDestination, Rail, parse_amount};
use tally_ledger::Ledger;

use crate::SettleError;
use crate::config::{SettlementConfig, currency_minor_units};

/// A plan with what it was made from: the writer nets again under `policy`
/// and cuts again by `limits`, and records the plan only if they agree.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    pub plan: SettlementPlan,
    pub batches: Vec<RailBatch>,
    pub policy: SettlementPolicy,
    pub limits: BatchLimits,
}

/// The settlement policy for the ledger's assets under `config`.
pub fn policy(ledger: &Ledger, config: &SettlementConfig) -> Result<SettlementPolicy, SettleError> {
    let scales: HashMap<String, u8> = ledger.assets()?.into_iter().map(|a| (a.code, a.scale)).collect();
    let mut assets = BTreeMap::new();
    for (code, asset_config) in &config.assets {
        let Some(&scale) = scales.get(code) else {
            return Err(SettleError::Config(format!("asset {code} is configured for settlement but not registered")));
        };
        let rail = config.rail_of(code).ok_or_else(|| SettleError::Config(format!("asset {code}: bad rail")))?;
        let payout_min = match &asset_config.payout_min {
            Some(text) => {
                parse_amount(text, scale).map_err(|e| SettleError::Config(format!("{code} payout_min: {e}")))?
            }
            None => 0,
        };
        let rail_scale = match rail {
            Rail::Evm => config.evm.as_ref().map_or(scale, |e| e.token_decimals),
            Rail::Iso20022 | Rail::Nacha => currency_minor_units(code),
        };
        let payable_multiple = if scale > rail_scale { pow10(scale - rail_scale)? } else { 1 };
        assets.insert(code.clone(), AssetPolicy { rail, payout_min, payable_multiple });
    }
    Ok(SettlementPolicy { fee_bps: config.fee_bps, assets })
}

fn pow10(exponent: u8) -> Result<u128, SettleError> {
    10u128.checked_pow(u32::from(exponent)).ok_or_else(|| SettleError::Config(format!("10^{exponent} overflows")))
}

/// Converts a payout amount (asset units) to the rail's units, exactly: an
/// amount the rail cannot represent (the rail's scale changed since the
/// plan) is an error, never a silent truncation.
pub fn to_rail_units(amount: u128, asset_scale: u8, rail_scale: u8) -> Result<u128, SettleError> {
    if rail_scale >= asset_scale {
        amount
            .checked_mul(pow10(rail_scale - asset_scale)?)
            .ok_or_else(|| SettleError::Config(format!("amount {amount} overflows at the rail's scale")))
    } else {
        let divisor = pow10(asset_scale - rail_scale)?;
        if !amount.is_multiple_of(divisor) {
            return Err(SettleError::Config(format!(
                "amount {amount} is not a whole number of the rail's units (scale {rail_scale}); was the rail changed?"
            )));
        }
        Ok(amount / divisor)
    }
}

/// Nets `epoch` (sealed, or the open one for a preview) and batches it.
pub fn plan_epoch(
    ledger: &Ledger,
    config: &SettlementConfig,
    epoch: u64,
    limits: BatchLimits,
) -> Result<Proposal, SettleError> {
    let policy = policy(ledger, config)?;
    let links: BTreeMap<String, String> =
        ledger.payers()?.into_iter().filter_map(|p| p.settles_with.map(|payee| (p.id, payee))).collect();
    let payees = ledger.payees()?;
    let held: BTreeSet<String> =
        payees.iter().filter(|p| p.status == PayeeStatus::Suspended).map(|p| p.id.clone()).collect();
    let destinations: BTreeMap<String, PayoutDestination> = payees
        .into_iter()
        .filter_map(|p| PayoutDestination::parse(&p.payout_destination).ok().map(|d| (p.id, d)))
        .collect();
    let carries = ledger.carries_into(epoch)?;

    let mut names: Vec<String> = Vec::new();
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut intern = |name: &str| -> u32 {
        if let Some(id) = ids.get(name) {
            return *id;
        }
        let id = names.len() as u32;
        names.push(name.to_owned());
        ids.insert(name.to_owned(), id);
        id
    };
    let mut flows: Vec<(u32, u32, u32, u128, u64)> = Vec::new();
    ledger.scan_aggregates(tally_ledger::layout::CF_AGG_BY_PAYER, epoch, None, |payer, payee, asset, value| {
        flows.push((intern(payer), intern(payee), intern(asset), value.sum, value.count));
        true
    })?;
    let input = NettingInput {
        ledger_id: ledger.ledger_id(),
        epoch,
        policy: &policy,
        links: &links,
        destinations: &destinations,
        carries_in: &carries,
        held: &held,
    };
    let plan = net(
        &input,
        flows.iter().map(|&(payer, payee, asset, sum, count)| Flow {
            payer: &names[payer as usize],
            payee: &names[payee as usize],
            asset: &names[asset as usize],
            sum,
            count,
        }),
    )?;
    let batches = cut_batches(&plan, &ledger.ledger_id(), limits)?;
    Ok(Proposal { plan, batches, policy, limits })
}

//! Planning: from a sealed epoch in the ledger to a plan and its batches.
//!
//! This reads everything netting needs (the epoch's aggregates, payer
//! links, payee destinations, carries into the epoch, asset scales), runs
//! the pure [`tally_core::settlement::net`], and cuts the payouts into
//! [`RailBatch`]es: EVM transactions of at most `payouts_per_tx` payouts,
//! and bank files of at most `transfers_per_file` transfers, one or more per
//! epoch and currency. Batch ids are derived from the epoch and contents,
//! so planning twice yields the same bytes.
//!
//! Memory: the aggregates are read once into interned ids (a `u32` per
//! name), so an epoch with a million payer–payee pairs costs about 50 MB
//! here, not a `String` per pair.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};
use tally_core::settlement::{AssetPolicy, Flow, NettingInput, RailBatch, SettlementPlan, SettlementPolicy, net};
use tally_core::{PayoutDestination, Rail, parse_amount};
use tally_ledger::Ledger;

use crate::SettleError;
use crate::config::{SettlementConfig, currency_minor_units};

/// How big batches may be.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub payouts_per_evm_tx: usize,
    pub transfers_per_iso20022_file: usize,
    pub transfers_per_nacha_file: usize,
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
) -> Result<(SettlementPlan, Vec<RailBatch>), SettleError> {
    let policy = policy(ledger, config)?;
    let links: BTreeMap<String, String> =
        ledger.payers()?.into_iter().filter_map(|p| p.settles_with.map(|payee| (p.id, payee))).collect();
    let destinations: BTreeMap<String, PayoutDestination> = ledger
        .payees()?
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
    let input =
        NettingInput { epoch, policy: &policy, links: &links, destinations: &destinations, carries_in: &carries };
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
    let batches = batch(&plan, limits);
    Ok((plan, batches))
}

/// Cuts the plan's payouts into batches, in a fixed order: rail, asset,
/// then payout id.
pub fn batch(plan: &SettlementPlan, limits: BatchLimits) -> Vec<RailBatch> {
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
        .max(1);
        for (chunk_index, chunk) in payout_ids.chunks(size).enumerate() {
            let index = batches.len() as u32;
            let id = match rail {
                Rail::Evm => evm_batch_id(plan.epoch, index, chunk),
                // ≤ 35 characters: "TALLY-E" + epoch (≤ 20) + "-" + asset (≤ 3 on bank rails) + "-" + chunk.
                Rail::Iso20022 | Rail::Nacha => format!("TALLY-E{}-{}-{}", plan.epoch, asset, chunk_index + 1),
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
    batches
}

/// `0x`-hex of SHA-256("tally-evm-batch-v1" ‖ epoch ‖ index ‖ payout ids):
/// the `bytes32` the payout contract refuses to execute twice.
pub fn evm_batch_id(epoch: u64, index: u32, payout_ids: &[&str]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"tally-evm-batch-v1");
    hasher.update(epoch.to_be_bytes());
    hasher.update(index.to_be_bytes());
    for id in payout_ids {
        hasher.update((id.len() as u32).to_be_bytes());
        hasher.update(id.as_bytes());
    }
    format!("0x{}", hex::encode(hasher.finalize()))
}

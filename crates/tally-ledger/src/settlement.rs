//! Settlement records on disk, and how the writer changes them.
//!
//! Settlement state lives in the `settlement` column family, written only
//! by the single writer (invariant 2), so a plan, a batch's progress, a bank
//! status and a carry are ordered with sealing and with each other. The
//! settler proposes; the writer checks each step against the state machine
//! in [`tally_core::settlement`] and either commits it (fsynced, like every
//! group) or refuses it with a typed error. Nothing here talks to a rail.
//!
//! Keys (all integers big-endian):
//!
//! | key | value |
//! |---|---|
//! | `E` ‖ epoch | [`EpochSettlement`] |
//! | `P` ‖ epoch ‖ payout id | [`PayoutRecord`] |
//! | `I` ‖ payout id | epoch (lookup for bank status reports) |
//! | `B` ‖ epoch ‖ bill id | [`BillRecord`] |
//! | `R` ‖ epoch ‖ batch index (u32) | [`BatchRecord`] |
//! | `C` ‖ epoch to ‖ source | [`Carry`] |
//! | `O` ‖ lp(payer) ‖ lp(asset) ‖ epoch ‖ bill id | amount u128: an open bill holding `payer`'s credit; deleted when paid |
//!
//! Within one group commit, earlier commands' settlement writes are not yet
//! in RocksDB; reads go through the group's overlay first, so a plan and a
//! batch update in the same group see each other. A command's own writes
//! are staged apart and join the group only if the command succeeds: a
//! refused command leaves no trace, in RocksDB or in the writer's state.

use std::collections::{BTreeMap, HashMap};

use rocksdb::{Direction, IteratorMode, ReadOptions};
use tally_core::Rail;
use tally_core::settlement::{
    BatchRecord, BatchState, BillRecord, Carry, CarryReason, EpochSettlement, Party, PayoutRecord, PayoutState,
    RailBatch, SettlementPlan, SettlementStatus, bounded_reason,
};

use crate::LedgerError;
use crate::layout::{CF_AGG_BY_PAYER, CF_SETTLEMENT, decode_bincode, encode_bincode, pop_lp, push_lp};
use crate::store::Ledger;
use crate::writer::{AdminError, AdminReply, Group, WriterCore};

/// Most batches one plan may hold (bounds the plan record and the driver's
/// loop). 1,000,000 payouts at 100 per transaction is 10,000.
pub const BATCHES_PER_EPOCH_MAX: usize = 100_000;
/// Most payouts (and bills, and carries) one plan may hold.
pub const PAYOUTS_PER_EPOCH_MAX: usize = 10_000_000;
/// Most bill records (all epochs) read when rebuilding credit exposure.
pub const OPEN_BILLS_SCAN_MAX: usize = 100_000_000;

pub fn epoch_key(epoch: u64) -> Vec<u8> {
    let mut key = vec![b'E'];
    key.extend_from_slice(&epoch.to_be_bytes());
    key
}

fn epoch_prefixed(tag: u8, epoch: u64, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + rest.len());
    key.push(tag);
    key.extend_from_slice(&epoch.to_be_bytes());
    key.extend_from_slice(rest);
    key
}

pub fn payout_key(epoch: u64, payout_id: &str) -> Vec<u8> {
    epoch_prefixed(b'P', epoch, payout_id.as_bytes())
}

pub fn payout_index_key(payout_id: &str) -> Vec<u8> {
    let mut key = vec![b'I'];
    key.extend_from_slice(payout_id.as_bytes());
    key
}

pub fn bill_key(epoch: u64, bill_id: &str) -> Vec<u8> {
    epoch_prefixed(b'B', epoch, bill_id.as_bytes())
}

pub fn batch_key(epoch: u64, index: u32) -> Vec<u8> {
    epoch_prefixed(b'R', epoch, &index.to_be_bytes())
}

pub fn carry_key(epoch_to: u64, source: &str) -> Vec<u8> {
    epoch_prefixed(b'C', epoch_to, source.as_bytes())
}

/// The open-bill index: one key per (holder, bill), so a payer's open bills
/// are one short prefix scan, whatever the history holds.
fn open_bill_prefix(payer: Option<&str>) -> Vec<u8> {
    let mut key = vec![b'O'];
    if let Some(payer) = payer {
        push_lp(&mut key, payer);
    }
    key
}

fn open_bill_key(payer: &str, asset: &str, epoch: u64, bill_id: &str) -> Vec<u8> {
    let mut key = open_bill_prefix(Some(payer));
    push_lp(&mut key, asset);
    key.extend_from_slice(&epoch.to_be_bytes());
    key.extend_from_slice(bill_id.as_bytes());
    key
}

/// A settlement step the writer applies (see [`crate::AdminCommand::Settlement`]).
#[derive(Clone, Debug)]
pub enum SettlementCommand {
    /// Persists an epoch's plan and its batches. The epoch must be sealed,
    /// the next to plan (epochs are planned in order, so carries always land
    /// in an unplanned epoch), and the carries into it unchanged.
    RecordPlan { plan: Box<SettlementPlan>, batches: Vec<RailBatch> },
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

impl Ledger {
    fn settlement_get<T: serde::de::DeserializeOwned>(&self, key: &[u8], what: &str) -> Result<Option<T>, LedgerError> {
        match self.db.get_cf(self.cf(CF_SETTLEMENT), key)? {
            None => Ok(None),
            Some(value) => Ok(Some(decode_bincode(what, &value)?)),
        }
    }

    fn settlement_scan<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        what: &str,
        limit: usize,
    ) -> Result<Vec<T>, LedgerError> {
        let mut read = ReadOptions::default();
        read.set_iterate_range(rocksdb::PrefixRange(prefix));
        let iter =
            self.db.iterator_cf_opt(self.cf(CF_SETTLEMENT), read, IteratorMode::From(prefix, Direction::Forward));
        let mut out = Vec::new();
        for item in iter {
            if out.len() == limit {
                // A silently shortened list could drop a payout or a carry:
                // refuse instead.
                return Err(LedgerError::Unavailable(format!("more than {limit} {what} records under one prefix")));
            }
            let (_, value) = item?;
            out.push(decode_bincode(what, &value)?);
        }
        Ok(out)
    }

    /// The settlement record of `epoch`, if it has been planned.
    pub fn settlement(&self, epoch: u64) -> Result<Option<EpochSettlement>, LedgerError> {
        self.settlement_get(&epoch_key(epoch), "epoch settlement")
    }

    /// Every planned epoch's settlement record, oldest first.
    pub fn settlements(&self) -> Result<Vec<EpochSettlement>, LedgerError> {
        self.settlement_scan(b"E", "epoch settlement", usize::MAX)
    }

    /// The payouts of `epoch`, sorted by id.
    pub fn payouts(&self, epoch: u64) -> Result<Vec<PayoutRecord>, LedgerError> {
        self.settlement_scan(&epoch_prefixed(b'P', epoch, &[]), "payout", PAYOUTS_PER_EPOCH_MAX)
    }

    /// One payout by id, wherever its epoch.
    pub fn payout(&self, payout_id: &str) -> Result<Option<PayoutRecord>, LedgerError> {
        let Some(epoch) = self.payout_epoch(payout_id)? else { return Ok(None) };
        self.settlement_get(&payout_key(epoch, payout_id), "payout")
    }

    fn payout_epoch(&self, payout_id: &str) -> Result<Option<u64>, LedgerError> {
        match self.db.get_cf(self.cf(CF_SETTLEMENT), payout_index_key(payout_id))? {
            None => Ok(None),
            Some(value) => Ok(Some(u64::from_be_bytes(
                value[..].try_into().map_err(|_| LedgerError::Corruption("payout index value".into()))?,
            ))),
        }
    }

    /// The bills of `epoch`, sorted by id.
    pub fn bills(&self, epoch: u64) -> Result<Vec<BillRecord>, LedgerError> {
        self.settlement_scan(&epoch_prefixed(b'B', epoch, &[]), "bill", PAYOUTS_PER_EPOCH_MAX)
    }

    /// The batches of `epoch`, in execution order.
    pub fn batches(&self, epoch: u64) -> Result<Vec<BatchRecord>, LedgerError> {
        self.settlement_scan(&epoch_prefixed(b'R', epoch, &[]), "batch", BATCHES_PER_EPOCH_MAX)
    }

    /// The credit carried into `epoch` (from earlier plans and rejections).
    pub fn carries_into(&self, epoch: u64) -> Result<Vec<Carry>, LedgerError> {
        self.settlement_scan(&epoch_prefixed(b'C', epoch, &[]), "carry", PAYOUTS_PER_EPOCH_MAX)
    }

    /// The highest planned epoch (0 when none is).
    pub fn planned_through(&self) -> Result<u64, LedgerError> {
        let mut iter = self.db.iterator_cf(self.cf(CF_SETTLEMENT), IteratorMode::From(b"F", Direction::Reverse));
        match iter.next() {
            Some(item) => {
                let (key, _) = item?;
                if key.first() != Some(&b'E') {
                    return Ok(0);
                }
                let epoch: [u8; 8] =
                    key[1..].try_into().map_err(|_| LedgerError::Corruption("settlement epoch key".into()))?;
                Ok(u64::from_be_bytes(epoch))
            }
            None => Ok(0),
        }
    }

    /// What payers owe and have not settled, per `(payer, asset)`: IOUs in
    /// epochs not yet planned plus open bills. This is what credit limits
    /// bound; the writer keeps the same figure in memory.
    pub fn unsettled_owed(&self, payer: Option<&str>) -> Result<HashMap<(String, String), u128>, LedgerError> {
        let mut owed = self.owed(payer, self.planned_through()? + 1)?;
        for (key, billed) in self.open_bills_by_payer(payer)? {
            let slot = owed.entry(key).or_default();
            *slot = slot.checked_add(billed).ok_or_else(|| LedgerError::Corruption("exposure overflows".into()))?;
        }
        Ok(owed)
    }

    /// Open bills per holding payer (all payers, or one): `(payer, asset) →
    /// amount`. Reads the open-bill index, never the bill history.
    pub fn open_bills_by_payer(&self, payer: Option<&str>) -> Result<HashMap<(String, String), u128>, LedgerError> {
        let prefix = open_bill_prefix(payer);
        let mut read = ReadOptions::default();
        read.set_iterate_range(rocksdb::PrefixRange(prefix.as_slice()));
        let iter =
            self.db.iterator_cf_opt(self.cf(CF_SETTLEMENT), read, IteratorMode::From(&prefix, Direction::Forward));
        let corrupt = || LedgerError::Corruption("open-bill index entry".into());
        let mut out: HashMap<(String, String), u128> = HashMap::new();
        for (scanned, item) in iter.enumerate() {
            if scanned == OPEN_BILLS_SCAN_MAX {
                return Err(LedgerError::Unavailable(format!("more than {OPEN_BILLS_SCAN_MAX} open bills")));
            }
            let (key, value) = item?;
            let (holder, rest) = pop_lp(&key[1..]).ok_or_else(corrupt)?;
            let (asset, _) = pop_lp(rest).ok_or_else(corrupt)?;
            let amount = u128::from_be_bytes(value[..].try_into().map_err(|_| corrupt())?);
            let slot = out.entry((holder.to_owned(), asset.to_owned())).or_default();
            *slot = slot
                .checked_add(amount)
                .ok_or_else(|| LedgerError::Corruption(format!("open bills of {holder} overflow")))?;
        }
        Ok(out)
    }
}

impl WriterCore {
    fn s_get<T: serde::de::DeserializeOwned>(
        &self,
        group: &Group,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, AdminError> {
        match group.settlement_staged.get(key).or_else(|| group.settlement_overlay.get(key)) {
            Some(Some(value)) => {
                return decode_bincode(what, value).map(Some).map_err(|e| AdminError::Storage(e.to_string()));
            }
            Some(None) => return Ok(None),
            None => {}
        }
        self.ledger.settlement_get(key, what).map_err(|e| AdminError::Storage(e.to_string()))
    }

    /// Stages a write of the current command (see [`WriterCore::apply_settlement`]).
    fn s_put<T: serde::Serialize>(&self, group: &mut Group, key: Vec<u8>, value: &T) {
        group.settlement_staged.insert(key, Some(encode_bincode(value)));
    }

    fn s_epoch(&self, group: &Group, epoch: u64) -> Result<EpochSettlement, AdminError> {
        self.s_get(group, &epoch_key(epoch), "epoch settlement")?
            .ok_or_else(|| AdminError::NotFound(format!("settlement of epoch {epoch}")))
    }

    /// Carries into `epoch` in the database and in this group, by source.
    fn s_carries_into(&self, group: &Group, epoch: u64) -> Result<BTreeMap<String, Carry>, AdminError> {
        let mut carries: BTreeMap<String, Carry> = self
            .ledger
            .carries_into(epoch)
            .map_err(|e| AdminError::Storage(e.to_string()))?
            .into_iter()
            .map(|c| (c.source.clone(), c))
            .collect();
        let prefix = epoch_prefixed(b'C', epoch, &[]);
        for (key, value) in group.settlement_overlay.iter().chain(group.settlement_staged.iter()) {
            // Carries are never deleted, so every staged carry has a value.
            if let (true, Some(value)) = (key.starts_with(&prefix), value) {
                let carry: Carry = decode_bincode("carry", value).map_err(|e| AdminError::Storage(e.to_string()))?;
                carries.insert(carry.source.clone(), carry);
            }
        }
        Ok(carries)
    }

    /// Applies one step. Its writes are staged and join the group only on
    /// success; every step changes the writer's in-memory state only after
    /// its last possible refusal.
    pub(crate) fn apply_settlement(
        &mut self,
        group: &mut Group,
        command: SettlementCommand,
    ) -> Result<AdminReply, AdminError> {
        debug_assert!(group.settlement_staged.is_empty());
        let result = self.apply_settlement_staged(group, command);
        let staged = std::mem::take(&mut group.settlement_staged);
        if result.is_ok() {
            let cf = self.ledger.cf(CF_SETTLEMENT);
            for (key, value) in staged {
                match &value {
                    Some(value) => group.batch.put_cf(cf, &key, value),
                    None => group.batch.delete_cf(cf, &key),
                }
                group.settlement_overlay.insert(key, value);
            }
        }
        result
    }

    fn apply_settlement_staged(
        &mut self,
        group: &mut Group,
        command: SettlementCommand,
    ) -> Result<AdminReply, AdminError> {
        match command {
            SettlementCommand::RecordPlan { plan, batches } => self.record_plan(group, *plan, batches),
            SettlementCommand::SetStatus { epoch, status } => {
                let mut record = self.s_epoch(group, epoch)?;
                let allowed = match (&record.status, &status) {
                    (SettlementStatus::Settled, _) => false,
                    (_, SettlementStatus::Submitting | SettlementStatus::NeedsAttention(_)) => true,
                    _ => false,
                };
                if !allowed {
                    return Err(AdminError::Invalid(format!(
                        "epoch {epoch}: settlement cannot go from {} to {}",
                        record.status.label(),
                        status.label()
                    )));
                }
                record.status = match status {
                    SettlementStatus::NeedsAttention(reason) => {
                        SettlementStatus::NeedsAttention(bounded_reason(&reason))
                    }
                    other => other,
                };
                record.updated_at_ms = group.now_ms;
                self.settle_status(&mut record);
                self.s_put(group, epoch_key(epoch), &record);
                Ok(AdminReply::Done)
            }
            SettlementCommand::UpdateBatch { epoch, index, state } => self.update_batch(group, epoch, index, state),
            SettlementCommand::RecordBankStatus { payout_id, verdict } => {
                self.record_bank_status(group, &payout_id, verdict)
            }
            SettlementCommand::MarkBillPaid { epoch, bill_id } => {
                let key = bill_key(epoch, &bill_id);
                let mut record: BillRecord = self
                    .s_get(group, &key, "bill")?
                    .ok_or_else(|| AdminError::NotFound(format!("bill {bill_id} of epoch {epoch}")))?;
                if record.paid_at_ms.is_some() {
                    return Ok(AdminReply::Done);
                }
                record.paid_at_ms = Some(group.now_ms);
                for payer in &record.holders {
                    let owed = self.state.exposure(payer, &record.bill.asset).saturating_sub(record.bill.amount);
                    self.state.set_exposure(payer, &record.bill.asset, owed);
                    group.settlement_staged.insert(open_bill_key(payer, &record.bill.asset, epoch, &bill_id), None);
                }
                self.s_put(group, key, &record);
                Ok(AdminReply::Done)
            }
        }
    }

    fn record_plan(
        &mut self,
        group: &mut Group,
        plan: SettlementPlan,
        batches: Vec<RailBatch>,
    ) -> Result<AdminReply, AdminError> {
        let epoch = plan.epoch;
        let open = self.state.open_epoch.as_ref().map_or(0, |e| e.epoch);
        if epoch >= open {
            return Err(AdminError::Invalid(format!("epoch {epoch} is not sealed")));
        }
        if epoch <= self.state.planned_through {
            return Err(AdminError::AlreadyExists(format!("the plan of epoch {epoch}")));
        }
        if group.aggregates.has_epoch(epoch) {
            // The plan was netted from disk; IOUs of this epoch still in this
            // group were not in it. (The settler plans only after the seal's
            // reply, so this is a caller's error, refused rather than wrong.)
            return Err(AdminError::Invalid(format!("epoch {epoch} has IOUs not yet durable; plan it again")));
        }
        if epoch != self.state.planned_through + 1 {
            return Err(AdminError::Invalid(format!(
                "epochs are planned in order: plan epoch {} first",
                self.state.planned_through + 1
            )));
        }
        if plan.payouts.len() > PAYOUTS_PER_EPOCH_MAX
            || plan.bills.len() > PAYOUTS_PER_EPOCH_MAX
            || plan.carries_out.len() > PAYOUTS_PER_EPOCH_MAX
            || batches.len() > BATCHES_PER_EPOCH_MAX
        {
            return Err(AdminError::Invalid("plan exceeds the per-epoch bounds".into()));
        }
        let carries = self.s_carries_into(group, epoch)?;
        let present: Vec<&String> = carries.keys().collect();
        let consumed: Vec<&String> = plan.carries_in.iter().collect();
        if present != consumed {
            return Err(AdminError::Invalid(format!(
                "the carries into epoch {epoch} changed while it was being planned; plan it again"
            )));
        }
        // Every payout travels in exactly one batch of its own rail and asset.
        let mut batch_of: HashMap<&str, u32> = HashMap::with_capacity(plan.payouts.len());
        for (position, batch) in batches.iter().enumerate() {
            if batch.epoch != epoch || batch.index as usize != position || batch.payout_ids.is_empty() {
                return Err(AdminError::Invalid(format!("batch {position} is malformed")));
            }
            for id in &batch.payout_ids {
                if batch_of.insert(id.as_str(), batch.index).is_some() {
                    return Err(AdminError::Invalid(format!("payout {id} is in two batches")));
                }
            }
        }
        for payout in &plan.payouts {
            let Some(index) = batch_of.get(payout.id.as_str()) else {
                return Err(AdminError::Invalid(format!("payout {} is in no batch", payout.id)));
            };
            let batch = &batches[*index as usize];
            if batch.rail != payout.rail || batch.asset != payout.asset || payout.epoch != epoch {
                return Err(AdminError::Invalid(format!("payout {} is in a batch of another rail", payout.id)));
            }
        }
        if batch_of.len() != plan.payouts.len() {
            return Err(AdminError::Invalid("a batch names a payout the plan does not have".into()));
        }
        if plan.carries_out.iter().any(|c| c.epoch_to != epoch + 1) {
            return Err(AdminError::Invalid("carried credit must go to the next epoch".into()));
        }
        let unique = |ids: Vec<&str>| {
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.windows(2).all(|w| w[0] != w[1])
        };
        if !unique(plan.bills.iter().map(|b| b.id.as_str()).collect())
            || !unique(plan.carries_out.iter().map(|c| c.source.as_str()).collect())
            || !unique(plan.payouts.iter().map(|p| p.id.as_str()).collect())
        {
            return Err(AdminError::Invalid("bill ids, payout ids and carry sources must be unique".into()));
        }

        // Credit: the epoch's IOUs stop counting against payers; what they
        // still owe is now their bills, which count until collected (a bill
        // of a linked account counts against each payer linked to it).
        // Computed in full before anything is staged, so a refusal here
        // changes nothing.
        let mut exposure: HashMap<(String, String), u128> = HashMap::new();
        self.ledger
            .scan_aggregates(CF_AGG_BY_PAYER, epoch, None, |payer, _, asset, value| {
                let key = (payer.to_owned(), asset.to_owned());
                let current = *exposure.entry(key.clone()).or_insert_with(|| self.state.exposure(payer, asset));
                exposure.insert(key, current.saturating_sub(value.sum));
                true
            })
            .map_err(|e| AdminError::Storage(e.to_string()))?;
        for bill in &plan.bills {
            for payer in self.bill_holders(&bill.party) {
                let key = (payer.clone(), bill.asset.clone());
                let current = *exposure.entry(key.clone()).or_insert_with(|| self.state.exposure(&payer, &bill.asset));
                let owed = current
                    .checked_add(bill.amount)
                    .ok_or_else(|| AdminError::Invalid(format!("the bills of {payer} overflow")))?;
                exposure.insert(key, owed);
            }
        }

        let record = EpochSettlement {
            epoch,
            status: SettlementStatus::Planned,
            fee_bps: plan.fee_bps,
            planned_at_ms: group.now_ms,
            updated_at_ms: group.now_ms,
            figures: plan.figures.clone(),
            payout_count: plan.payouts.len() as u64,
            bill_count: plan.bills.len() as u64,
            batch_count: batches.len() as u64,
            batches_open: batches.len() as u64,
            payouts_open: plan.payouts.len() as u64,
            gas_used: 0,
            rejected: Vec::new(),
        };
        let mut record = record;
        self.settle_status(&mut record);
        self.s_put(group, epoch_key(epoch), &record);
        for payout in plan.payouts {
            let index = batch_of[payout.id.as_str()];
            group.settlement_staged.insert(payout_index_key(&payout.id), Some(epoch.to_be_bytes().to_vec()));
            let key = payout_key(epoch, &payout.id);
            self.s_put(group, key, &PayoutRecord { payout, batch_index: index, state: PayoutState::Planned });
        }
        for batch in batches {
            let key = batch_key(epoch, batch.index);
            self.s_put(group, key, &BatchRecord { batch, state: BatchState::Planned });
        }
        for carry in plan.carries_out {
            let key = carry_key(carry.epoch_to, &carry.source);
            self.s_put(group, key, &carry);
        }
        for bill in plan.bills {
            let key = bill_key(epoch, &bill.id);
            let holders = self.bill_holders(&bill.party);
            for holder in &holders {
                let index = open_bill_key(holder, &bill.asset, epoch, &bill.id);
                group.settlement_staged.insert(index, Some(bill.amount.to_be_bytes().to_vec()));
            }
            self.s_put(group, key, &BillRecord { bill, paid_at_ms: None, holders });
        }
        // Nothing below can fail: now, and only now, change the state.
        for ((payer, asset), owed) in exposure {
            self.state.set_exposure(&payer, &asset, owed);
        }
        self.state.planned_through = epoch;
        Ok(AdminReply::Planned { epoch })
    }

    fn update_batch(
        &mut self,
        group: &mut Group,
        epoch: u64,
        index: u32,
        state: BatchState,
    ) -> Result<AdminReply, AdminError> {
        let key = batch_key(epoch, index);
        let mut batch: BatchRecord = self
            .s_get(group, &key, "batch")?
            .ok_or_else(|| AdminError::NotFound(format!("batch {index} of epoch {epoch}")))?;
        if batch.state == state {
            return Ok(AdminReply::Done);
        }
        let state_rail_ok = match &state {
            BatchState::EvmPrepared { .. } | BatchState::EvmMined { .. } => batch.batch.rail == Rail::Evm,
            BatchState::FilePrepared { .. } | BatchState::FileWritten { .. } => batch.batch.rail != Rail::Evm,
            BatchState::Planned | BatchState::Failed(_) => true,
        };
        if !state_rail_ok {
            return Err(AdminError::Invalid(format!(
                "batch {index} of epoch {epoch} is a {} batch and cannot become {}",
                batch.batch.rail,
                state.label()
            )));
        }
        if !batch.state.may_become(&state) {
            return Err(AdminError::Invalid(format!(
                "batch {index} of epoch {epoch} cannot go from {} to {}",
                batch.state.label(),
                state.label()
            )));
        }
        let mut record = self.s_epoch(group, epoch)?;
        let (payout_state, gas) = match &state {
            BatchState::EvmMined { tx_hash, gas_used, .. } => {
                (Some(PayoutState::Settled(format!("0x{}", hex::encode(tx_hash)))), *gas_used)
            }
            BatchState::FileWritten { .. } => (Some(PayoutState::Submitted), 0),
            BatchState::Failed(reason) => {
                record.status = SettlementStatus::NeedsAttention(bounded_reason(&format!("batch {index}: {reason}")));
                (None, 0)
            }
            _ => (None, 0),
        };
        if let Some(payout_state) = payout_state {
            record.batches_open = record.batches_open.saturating_sub(1);
            record.gas_used = record.gas_used.saturating_add(gas);
            for payout_id in &batch.batch.payout_ids {
                let payout_key = payout_key(epoch, payout_id);
                let mut payout: PayoutRecord = self
                    .s_get(group, &payout_key, "payout")?
                    .ok_or_else(|| AdminError::Storage(format!("payout {payout_id} of batch {index} is missing")))?;
                if payout_state.is_final() && !payout.state.is_final() {
                    record.payouts_open = record.payouts_open.saturating_sub(1);
                }
                payout.state = payout_state.clone();
                self.s_put(group, payout_key, &payout);
            }
        }
        batch.state = state;
        self.s_put(group, key, &batch);
        record.updated_at_ms = group.now_ms;
        self.settle_status(&mut record);
        self.s_put(group, epoch_key(epoch), &record);
        Ok(AdminReply::Done)
    }

    fn record_bank_status(
        &mut self,
        group: &mut Group,
        payout_id: &str,
        verdict: Result<String, String>,
    ) -> Result<AdminReply, AdminError> {
        let index_key = payout_index_key(payout_id);
        let epoch = match group.settlement_overlay.get(&index_key) {
            Some(Some(value)) => Some(u64::from_be_bytes(
                value[..].try_into().map_err(|_| AdminError::Storage("payout index value".into()))?,
            )),
            Some(None) => None,
            None => self.ledger.payout_epoch(payout_id).map_err(|e| AdminError::Storage(e.to_string()))?,
        };
        let epoch = epoch.ok_or_else(|| AdminError::NotFound(format!("payout {payout_id}")))?;
        let key = payout_key(epoch, payout_id);
        let mut payout: PayoutRecord =
            self.s_get(group, &key, "payout")?.ok_or_else(|| AdminError::NotFound(format!("payout {payout_id}")))?;
        let next = match &verdict {
            Ok(reference) => PayoutState::Settled(bounded_reason(reference)),
            Err(reason) => PayoutState::Rejected(bounded_reason(reason)),
        };
        let was_final = payout.state.is_final();
        match &payout.state {
            PayoutState::Submitted => {}
            state if *state == next => return Ok(AdminReply::BankStatus { changed: false }),
            // Banks report acceptance early (ACCP, ACSP) and may still reject
            // later: the later rejection wins and the credit is carried, so
            // the payee is never left unpaid behind a "settled" label.
            PayoutState::Settled(_) if matches!(next, PayoutState::Rejected(_)) && payout.payout.rail != Rail::Evm => {}
            state => {
                return Err(AdminError::Invalid(format!(
                    "payout {payout_id} is {} and cannot take a bank status",
                    state.label()
                )));
            }
        }
        let mut record = self.s_epoch(group, epoch)?;
        if let PayoutState::Rejected(reason) = &next {
            // The payee is owed what it was not paid, fee included: the fee
            // is charged again when a payout succeeds.
            let amount = payout
                .payout
                .amount
                .checked_add(payout.payout.fee)
                .ok_or_else(|| AdminError::Invalid("rejected amount overflows".into()))?;
            let carry = Carry {
                epoch_to: self.state.planned_through + 1,
                payee: payout.payout.payee.clone(),
                asset: payout.payout.asset.clone(),
                amount,
                reason: CarryReason::Rejected(reason.clone()),
                source: format!("rejected:{payout_id}"),
            };
            self.s_put(group, carry_key(carry.epoch_to, &carry.source), &carry);
            match record.rejected.iter_mut().find(|(asset, _)| *asset == carry.asset) {
                Some((_, total)) => *total = total.saturating_add(amount),
                None => record.rejected.push((carry.asset.clone(), amount)),
            }
        }
        payout.state = next;
        self.s_put(group, key, &payout);
        if !was_final {
            record.payouts_open = record.payouts_open.saturating_sub(1);
        }
        record.updated_at_ms = group.now_ms;
        self.settle_status(&mut record);
        self.s_put(group, epoch_key(epoch), &record);
        Ok(AdminReply::BankStatus { changed: true })
    }

    /// The payers whose credit a bill holds: the payer itself, or every
    /// payer linked to the billed payee account.
    fn bill_holders(&self, party: &Party) -> Vec<String> {
        match party {
            Party::Payer(payer) => vec![payer.clone()],
            Party::Payee(payee) => self
                .state
                .payers
                .values()
                .filter(|p| p.settles_with.as_deref() == Some(payee.as_str()))
                .map(|p| p.id.clone())
                .collect(),
        }
    }

    /// Derives the terminal statuses from the counters: all batches done
    /// and all payouts final is `Settled`; all batches done with bank
    /// payouts awaiting status is `Submitted`.
    fn settle_status(&self, record: &mut EpochSettlement) {
        // Settled is final. Needs-attention is about batches: it holds
        // while any batch is open, and gives way once all are done.
        if matches!(record.status, SettlementStatus::Settled) {
            return;
        }
        if record.batches_open == 0 {
            record.status =
                if record.payouts_open == 0 { SettlementStatus::Settled } else { SettlementStatus::Submitted };
        }
    }
}

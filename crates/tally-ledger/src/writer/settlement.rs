//! Settlement decisions: how the writer applies each step of settlement's
//! state machine (`tally_core::settlement`).
//!
//! The settler proposes; the writer checks and either records (journaled,
//! fsynced with the group) or refuses with a typed error:
//!
//! - **A plan is netted again here.** The writer reads the sealed epoch's
//!   aggregates, the payers' links, the payees' destinations and statuses and
//!   the carries into the epoch, runs the same pure `net` under the policy the
//!   settler names, cuts the same batches, and refuses any plan that differs
//!   in any payout, bill, carry, figure or batch ([`AdminError::PlanMismatch`]:
//!   net again). A plan paying anything an epoch's IOUs do not owe can not be
//!   recorded.
//! - Batch progress follows `BatchState::may_become`, bank verdicts settle or
//!   reject submitted payouts exactly once, bills release credit when paid.
//! - Counters (`batches_open`, `payouts_open`, gas, rejected totals) and
//!   exposures change with checked arithmetic: a counter that would go below
//!   zero is [`AdminError::Inconsistent`], never a silent zero.
//!
//! Within one group commit, earlier commands' settlement writes are not yet in
//! RocksDB; reads go through the group's overlay first, so a plan and a batch
//! update in the same group see each other. Every step changes the writer's
//! in-memory state only after its last possible refusal.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tally_core::settlement::{
    BatchLimits, BatchRecord, BatchState, BillRecord, Carry, CarryReason, EpochSettlement, Flow, NettingInput, Party,
    PayoutRecord, PayoutState, RailBatch, SettlementPlan, SettlementPolicy, SettlementStatus, bounded_reason,
    cut_batches, net, plan_difference, terminal_status,
};
use tally_core::{PayeeStatus, PayoutDestination, Rail};

use super::WriterCore;
use super::group::Group;
use crate::command::{AdminError, AdminReply, SettlementCommand};
use crate::journal::EffectCf;
use crate::layout::{CF_AGG_BY_PAYER, decode_bincode, encode_bincode};
use crate::settlement::*;

/// Most batches one plan may hold (bounds the plan record and the driver's
/// loop). 1,000,000 payouts at 100 per transaction is 10,000.
pub const BATCHES_PER_EPOCH_MAX: usize = 100_000;
/// Most payouts (and bills, and carries) one plan may hold.
pub const PAYOUTS_PER_EPOCH_MAX: usize = 10_000_000;

fn inconsistent(what: String) -> AdminError {
    AdminError::Inconsistent(what)
}

impl WriterCore {
    fn s_get<T: serde::de::DeserializeOwned>(
        &self,
        group: &Group,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, AdminError> {
        match group.staged_get(EffectCf::Settlement, key) {
            Some(Some(value)) => decode_bincode(what, value).map(Some).map_err(|e| AdminError::Storage(e.to_string())),
            Some(None) => Ok(None),
            None => self.ledger.settlement_get(key, what).map_err(|e| AdminError::Storage(e.to_string())),
        }
    }

    /// Stages a write of the current command.
    fn s_put<T: serde::Serialize>(&self, group: &mut Group, key: Vec<u8>, value: &T) {
        group.stage(EffectCf::Settlement, key, Some(encode_bincode(value)));
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
        for (_, value) in group.staged_with_prefix(EffectCf::Settlement, &epoch_prefixed(b'C', epoch, &[])) {
            // Carries are never deleted, so every staged carry has a value.
            if let Some(value) = value {
                let carry: Carry = decode_bincode("carry", &value).map_err(|e| AdminError::Storage(e.to_string()))?;
                carries.insert(carry.source.clone(), carry);
            }
        }
        Ok(carries)
    }

    pub(super) fn apply_settlement(
        &mut self,
        group: &mut Group,
        command: SettlementCommand,
    ) -> Result<AdminReply, AdminError> {
        match command {
            SettlementCommand::RecordPlan { plan, batches, policy, limits } => {
                self.record_plan(group, *plan, batches, &policy, limits)
            }
            SettlementCommand::SetStatus { epoch, status } => self.set_status(group, epoch, status),
            SettlementCommand::UpdateBatch { epoch, index, state } => self.update_batch(group, epoch, index, state),
            SettlementCommand::RecordBankStatus { payout_id, verdict } => {
                self.record_bank_status(group, &payout_id, verdict)
            }
            SettlementCommand::MarkBillPaid { epoch, bill_id } => self.mark_bill_paid(group, epoch, &bill_id),
        }
    }

    fn set_status(
        &mut self,
        group: &mut Group,
        epoch: u64,
        status: SettlementStatus,
    ) -> Result<AdminReply, AdminError> {
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
            SettlementStatus::NeedsAttention(reason) => SettlementStatus::NeedsAttention(bounded_reason(&reason)),
            other => other,
        };
        record.updated_at_ms = group.now_ms;
        settle_status(&mut record);
        self.s_put(group, epoch_key(epoch), &record);
        Ok(AdminReply::Done)
    }

    fn mark_bill_paid(&mut self, group: &mut Group, epoch: u64, bill_id: &str) -> Result<AdminReply, AdminError> {
        let key = bill_key(epoch, bill_id);
        let mut record: BillRecord = self
            .s_get(group, &key, "bill")?
            .ok_or_else(|| AdminError::NotFound(format!("bill {bill_id} of epoch {epoch}")))?;
        if record.paid_at_ms.is_some() {
            return Ok(AdminReply::Done);
        }
        // Computed in full before anything changes: a broken invariant refuses the step.
        let mut released = Vec::with_capacity(record.holders.len());
        for payer in &record.holders {
            let owed =
                self.state.exposure(payer, &record.bill.asset).checked_sub(record.bill.amount).ok_or_else(|| {
                    inconsistent(format!("bill {bill_id} holds more of {payer}'s credit than {payer} owes"))
                })?;
            released.push((payer.clone(), owed));
        }
        record.paid_at_ms = Some(group.now_ms);
        for (payer, owed) in released {
            group.stage(EffectCf::Settlement, open_bill_key(&payer, &record.bill.asset, epoch, bill_id), None);
            self.state.set_exposure(&payer, &record.bill.asset, owed);
        }
        self.s_put(group, key, &record);
        Ok(AdminReply::Done)
    }

    /// What netting the sealed `epoch` gives now, under `policy`: the plan a
    /// proposal must equal.
    fn expected_plan(
        &self,
        group: &Group,
        epoch: u64,
        policy: &SettlementPolicy,
        carries: &BTreeMap<String, Carry>,
    ) -> Result<SettlementPlan, AdminError> {
        let links: BTreeMap<String, String> = self
            .state
            .payers
            .values()
            .filter_map(|p| p.settles_with.clone().map(|payee| (p.id.clone(), payee)))
            .collect();
        let destinations: BTreeMap<String, PayoutDestination> = self
            .state
            .payees
            .values()
            .filter_map(|p| PayoutDestination::parse(&p.payout_destination).ok().map(|d| (p.id.clone(), d)))
            .collect();
        let held: BTreeSet<String> =
            self.state.payees.values().filter(|p| p.status == PayeeStatus::Suspended).map(|p| p.id.clone()).collect();
        let carries_in: Vec<Carry> = carries.values().cloned().collect();
        debug_assert!(!group.aggregates.has_epoch(epoch), "checked by the caller");
        let mut flows: Vec<(String, String, String, u128, u64)> = Vec::new();
        self.ledger
            .scan_aggregates(CF_AGG_BY_PAYER, epoch, None, |payer, payee, asset, value| {
                flows.push((payer.to_owned(), payee.to_owned(), asset.to_owned(), value.sum, value.count));
                true
            })
            .map_err(|e| AdminError::Storage(e.to_string()))?;
        let input = NettingInput {
            ledger_id: self.ledger.ledger_id(),
            epoch,
            policy,
            links: &links,
            destinations: &destinations,
            carries_in: &carries_in,
            held: &held,
        };
        net(
            &input,
            flows.iter().map(|(payer, payee, asset, sum, count)| Flow {
                payer,
                payee,
                asset,
                sum: *sum,
                count: *count,
            }),
        )
        .map_err(|e| AdminError::Invalid(format!("netting epoch {epoch}: {e}")))
    }

    fn record_plan(
        &mut self,
        group: &mut Group,
        plan: SettlementPlan,
        batches: Vec<RailBatch>,
        policy: &SettlementPolicy,
        limits: BatchLimits,
    ) -> Result<AdminReply, AdminError> {
        let epoch = plan.epoch;
        if epoch == 0 {
            return Err(AdminError::Invalid("epochs count from 1: there is no epoch 0 to plan".into()));
        }
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
            return Err(AdminError::PlanMismatch(format!("epoch {epoch} has IOUs not yet durable")));
        }
        if epoch != self.state.planned_through + 1 {
            return Err(AdminError::Invalid(format!(
                "epochs are planned in order: plan epoch {} first",
                self.state.planned_through + 1
            )));
        }
        if limits.payouts_per_evm_tx == 0
            || limits.transfers_per_iso20022_file == 0
            || limits.transfers_per_nacha_file == 0
        {
            return Err(AdminError::Invalid("batch limits must be at least 1".into()));
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
            return Err(AdminError::PlanMismatch(format!(
                "the carries into epoch {epoch} changed while it was planned"
            )));
        }
        // The plan must be exactly what the ledger nets to, cut exactly as the limits cut it.
        let expected = self.expected_plan(group, epoch, policy, &carries)?;
        if let Some(difference) = plan_difference(&expected, &plan) {
            return Err(AdminError::PlanMismatch(format!("epoch {epoch}: {difference}")));
        }
        let expected_batches = cut_batches(&expected, &self.ledger.ledger_id(), limits)
            .map_err(|e| AdminError::Invalid(format!("batching epoch {epoch}: {e}")))?;
        if expected_batches != batches {
            return Err(AdminError::PlanMismatch(format!("epoch {epoch}: the batches differ from the plan's")));
        }
        let batch_of: HashMap<&str, u32> =
            batches.iter().flat_map(|b| b.payout_ids.iter().map(|id| (id.as_str(), b.index))).collect();
        debug_assert_eq!(batch_of.len(), plan.payouts.len(), "cut_batches puts every payout in one batch");

        // Credit: the epoch's IOUs stop counting against payers; what they
        // still owe is now their bills, which count until collected (a bill
        // of a linked account counts against each payer linked to it).
        // Computed in full before anything is staged, so a refusal here
        // changes nothing.
        let mut exposure: HashMap<(String, String), u128> = HashMap::new();
        let mut underflow: Option<String> = None;
        self.ledger
            .scan_aggregates(CF_AGG_BY_PAYER, epoch, None, |payer, _, asset, value| {
                let key = (payer.to_owned(), asset.to_owned());
                let current = *exposure.entry(key.clone()).or_insert_with(|| self.state.exposure(payer, asset));
                match current.checked_sub(value.sum) {
                    Some(left) => {
                        exposure.insert(key, left);
                        true
                    }
                    None => {
                        underflow = Some(format!("{payer} owes less {asset} than its epoch-{epoch} IOUs"));
                        false
                    }
                }
            })
            .map_err(|e| AdminError::Storage(e.to_string()))?;
        if let Some(what) = underflow {
            return Err(inconsistent(what));
        }
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

        let mut record = EpochSettlement {
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
        settle_status(&mut record);
        self.s_put(group, epoch_key(epoch), &record);
        for payout in plan.payouts {
            let index = batch_of[payout.id.as_str()];
            group.stage(EffectCf::Settlement, payout_index_key(&payout.id), Some(epoch.to_be_bytes().to_vec()));
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
                group.stage(EffectCf::Settlement, index, Some(bill.amount.to_be_bytes().to_vec()));
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
        // A file is written exactly as it was prepared: its name, hash and time
        // were fixed (and recorded) before its bytes reached the outbox.
        if let BatchState::FileWritten { file_name, sha256, created_at_ms } = &state {
            let prepared = matches!(&batch.state, BatchState::FilePrepared { file_name: f, sha256: h, created_at_ms: t }
                if f == file_name && h == sha256 && t == created_at_ms);
            if !prepared {
                return Err(AdminError::Invalid(format!(
                    "batch {index} of epoch {epoch} can be written only as the file it was prepared as"
                )));
            }
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
            record.batches_open = record
                .batches_open
                .checked_sub(1)
                .ok_or_else(|| inconsistent(format!("epoch {epoch} has no open batch left to complete")))?;
            record.gas_used = record
                .gas_used
                .checked_add(gas)
                .ok_or_else(|| inconsistent(format!("epoch {epoch}: gas used overflows")))?;
            for payout_id in &batch.batch.payout_ids {
                let payout_key = payout_key(epoch, payout_id);
                let mut payout: PayoutRecord = self
                    .s_get(group, &payout_key, "payout")?
                    .ok_or_else(|| inconsistent(format!("payout {payout_id} of batch {index} is missing")))?;
                if payout_state.is_final() && !payout.state.is_final() {
                    record.payouts_open = record
                        .payouts_open
                        .checked_sub(1)
                        .ok_or_else(|| inconsistent(format!("epoch {epoch} has no open payout left to settle")))?;
                }
                payout.state = payout_state.clone();
                self.s_put(group, payout_key, &payout);
            }
        }
        batch.state = state;
        self.s_put(group, key, &batch);
        record.updated_at_ms = group.now_ms;
        settle_status(&mut record);
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
        let epoch = match group.staged_get(EffectCf::Settlement, &index_key) {
            Some(Some(value)) => Some(u64::from_be_bytes(
                value.try_into().map_err(|_| AdminError::Storage("payout index value".into()))?,
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
            let position = record.rejected.binary_search_by(|(asset, _)| asset.as_str().cmp(&carry.asset));
            match position {
                Ok(at) => {
                    record.rejected[at].1 = record.rejected[at]
                        .1
                        .checked_add(amount)
                        .ok_or_else(|| inconsistent(format!("rejected {} overflows", carry.asset)))?;
                }
                // Kept sorted by asset: the audit derives the same list from the payouts.
                Err(at) => record.rejected.insert(at, (carry.asset.clone(), amount)),
            }
        }
        payout.state = next;
        self.s_put(group, key, &payout);
        if !was_final {
            record.payouts_open = record
                .payouts_open
                .checked_sub(1)
                .ok_or_else(|| inconsistent(format!("epoch {epoch} has no open payout left for {payout_id}")))?;
        }
        record.updated_at_ms = group.now_ms;
        settle_status(&mut record);
        self.s_put(group, epoch_key(epoch), &record);
        Ok(AdminReply::BankStatus { changed: true })
    }

    /// The payers whose credit a bill holds: the payer itself, or every
    /// payer linked to the billed payee account.
    fn bill_holders(&self, party: &Party) -> Vec<String> {
        match party {
            Party::Payer(payer) => vec![payer.clone()],
            Party::Payee(payee) => {
                let mut holders: Vec<String> = self
                    .state
                    .payers
                    .values()
                    .filter(|p| p.settles_with.as_deref() == Some(payee.as_str()))
                    .map(|p| p.id.clone())
                    .collect();
                // Deterministic: the same state always yields the same record bytes.
                holders.sort_unstable();
                holders
            }
        }
    }
}

/// Derives the terminal statuses from the counters: all batches done and all
/// payouts final is `Settled`; all batches done with bank payouts awaiting
/// status is `Submitted`. Settled is final; needs-attention is about batches:
/// it holds while any batch is open, and gives way once all are done.
fn settle_status(record: &mut EpochSettlement) {
    if matches!(record.status, SettlementStatus::Settled) {
        return;
    }
    if let Some(status) = terminal_status(record.batches_open, record.payouts_open) {
        record.status = status;
    }
}

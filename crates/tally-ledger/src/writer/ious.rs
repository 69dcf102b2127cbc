//! IOU decisions: replay, validity, accounts and credit, one IOU at a time.
//!
//! The order matters and is the ledger's contract:
//!
//! 1. **Replay first.** A resubmission of an accepted IOU (this group, a group
//!    still in the pipeline, or RocksDB) is answered with its original
//!    acceptance — `DUPLICATE`, the original commitment and charge — whatever
//!    has changed since: a later expiry, a suspension, a spent credit limit.
//!    The same IOU signed differently (in a batch, as a Web Bot Auth
//!    request) is the same promise; a different IOU under the same
//!    `(key, nonce)` is a `CONFLICT`.
//! 2. **The validity window**, judged by the group's time (`max(clock, time
//!    mark)`). Refusing expired IOUs here, at the single point of decision,
//!    is what makes forgetting nonces safe: the replay index forgets only
//!    nonces of IOUs that expired before a durable time mark.
//! 3. The charge, the payer (known, active, key not revoked), the asset
//!    (known, enabled), the payee (known, active), and credit: the payer's
//!    unsettled total plus the charge must stay within its limit (inclusive).
//!
//! An accepted IOU becomes a log record (format 2: with its charge), a nonce
//! entry, and a contribution to the group's aggregates.

use tally_core::evidence::evidence_iou_bytes;
use tally_core::{CommitmentId, Outcome, PayeeStatus, PayerStatus};

use super::WriterCore;
use super::group::{Group, Staged};
use crate::LedgerError;
use crate::command::{AppendItem, AppendResult};
use crate::layout::*;

impl WriterCore {
    /// Decides one append command. Returns its results, how many it
    /// accepted, and a storage error that fails the group (then the results
    /// are partial and never sent).
    pub(super) fn decide_append(
        &mut self,
        group: &mut Group,
        items: Vec<AppendItem>,
        batch: Option<BatchRecord>,
    ) -> (Vec<AppendResult>, u64, Option<LedgerError>) {
        let mut results = Vec::with_capacity(items.len());
        let batch_key_bytes = batch.as_ref().map(|b| batch_key(&b.payer_key, b.batch_seq));
        if let (Some(batch), Some(key)) = (&batch, &batch_key_bytes) {
            match self.batch_root(group, key) {
                // Another batch owns this (key, batch_seq): refuse this one whole.
                Ok(Some(root)) if root != batch.root => {
                    return (vec![AppendResult::rejected(Outcome::Conflict); items.len()], 0, None);
                }
                Ok(_) => {}
                Err(error) => return (results, 0, Some(error)),
            }
        }
        let on_disk = match self.replay_index_entries(&items) {
            Ok(entries) => entries,
            Err(error) => return (results, 0, Some(error)),
        };
        let mut accepted = 0u64;
        for (item, on_disk) in items.into_iter().zip(on_disk) {
            match self.append_one(group, item, on_disk) {
                Ok(result) => {
                    accepted += u64::from(result.outcome == Outcome::Accepted);
                    results.push(result);
                }
                Err(error) => return (results, accepted, Some(error)),
            }
        }
        if let (Some(batch), Some(key)) = (batch, batch_key_bytes)
            && accepted > 0
            && !group.batches.contains_key(&key)
        {
            match self.batch_root(group, &key) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    group.batch.put_cf(self.ledger.cf(CF_BATCHES), key, batch.encode());
                    group.batches.insert(key, batch.root);
                }
                Err(error) => return (results, accepted, Some(error)),
            }
        }
        (results, accepted, None)
    }

    /// The root of the batch stored (or staged in this group) under `key`.
    fn batch_root(&self, group: &Group, key: &[u8; 40]) -> Result<Option<[u8; 32]>, LedgerError> {
        let in_flight = self.in_flight.iter().rev().map(|flight| &flight.batches);
        if let Some(root) = std::iter::once(&group.batches).chain(in_flight).find_map(|batches| batches.get(key)) {
            return Ok(Some(*root));
        }
        match self.ledger.db.get_pinned_cf(self.ledger.cf(CF_BATCHES), key)? {
            None => Ok(None),
            Some(value) => Ok(Some(BatchRecord::decode(key, &value)?.root)),
        }
    }

    /// The replay index's entries for a command's IOUs, read from RocksDB in
    /// one batched lookup (sorted keys share index and filter blocks).
    /// Read before the command is decided, yet exact: anything written
    /// since, by this group or one still in the pipeline, is in the overlay
    /// that `append_one` consults first.
    fn replay_index_entries(&self, items: &[AppendItem]) -> Result<Vec<Option<NonceEntry>>, LedgerError> {
        let mut keys: Vec<(usize, [u8; 48])> = items
            .iter()
            .enumerate()
            .map(|(i, item)| (i, nonce_key(&item.signed.iou.payer_key, &item.signed.iou.nonce)))
            .collect();
        keys.sort_unstable_by_key(|&(_, key)| key);
        let found =
            self.ledger.db.batched_multi_get_cf(self.ledger.cf(CF_NONCES), keys.iter().map(|(_, key)| key), true);
        let mut entries = vec![None; items.len()];
        for ((index, _), value) in keys.iter().zip(found) {
            if let Some(value) = value? {
                entries[*index] = Some(decode_nonce_entry(&value)?);
            }
        }
        Ok(entries)
    }

    /// Decides one IOU. `on_disk` is its replay-index entry as RocksDB held
    /// it when the command's decisions began.
    fn append_one(
        &mut self,
        group: &mut Group,
        item: AppendItem,
        on_disk: Option<NonceEntry>,
    ) -> Result<AppendResult, LedgerError> {
        let iou = &item.signed.iou;
        debug_assert_eq!(
            tally_core::parse_evidence(&item.evidence).map(|e| e.iou).as_ref(),
            Ok(iou),
            "the evidence stands for the IOU"
        );
        let nonce_key_bytes = nonce_key(&iou.payer_key, &iou.nonce);

        // 1. Replay: this group, then the groups still in the pipeline, then the disk.
        let iou_bytes = evidence_iou_bytes(&item.evidence)
            .ok_or_else(|| LedgerError::Corruption("an append carries bytes that are not evidence".into()))?;
        let key = (iou.payer_key, iou.nonce);
        let in_flight = self.in_flight.iter().rev().map(|flight| &flight.staged);
        if let Some(staged) = std::iter::once(&group.staged).chain(in_flight).find_map(|staged| staged.get(&key)) {
            let original = evidence_iou_bytes(&staged.evidence).unwrap_or_default();
            return Ok(replay_answer(staged.commitment, staged.epoch, staged.charge, original, iou_bytes));
        }
        if let Some(entry) = on_disk {
            let original = self
                .ledger
                .record(entry.seq)?
                .ok_or_else(|| LedgerError::Corruption(format!("nonce points at missing record {}", entry.seq)))?;
            let commitment = CommitmentId { seq: entry.seq, hash: entry.hash };
            let original_iou = evidence_iou_bytes(&original.evidence)
                .ok_or_else(|| LedgerError::Corruption(format!("record {} holds no IOU", entry.seq)))?;
            let charge = original.charge()?;
            return Ok(replay_answer(commitment, original.epoch, charge, original_iou, iou_bytes));
        }

        // 2. The validity window, by the group's time (never behind the time mark).
        if let Err(outcome) = self.config.validity.check(iou, group.now_ms / 1000) {
            return Ok(AppendResult::rejected(outcome));
        }
        // 3. Charge, accounts, credit.
        if iou.amount == 0 || item.charge == 0 || item.charge > iou.amount {
            return Ok(AppendResult::rejected(Outcome::InvalidAmount));
        }
        let Some(payer_id) = self.state.key_owner.get(&iou.payer_key) else {
            return Ok(AppendResult::rejected(Outcome::UnknownPayer));
        };
        let payer = self
            .state
            .payers
            .get(payer_id)
            .ok_or_else(|| LedgerError::Corruption(format!("key owner {payer_id} has no payer record")))?;
        if payer.status == PayerStatus::Suspended {
            return Ok(AppendResult::rejected(Outcome::SuspendedPayer));
        }
        if payer.is_revoked(&iou.payer_key) {
            return Ok(AppendResult::rejected(Outcome::KeyRevoked));
        }
        match self.state.assets.get(&iou.asset) {
            None => return Ok(AppendResult::rejected(Outcome::UnknownAsset)),
            Some(asset) if !asset.enabled => return Ok(AppendResult::rejected(Outcome::AssetDisabled)),
            Some(_) => {}
        }
        match self.state.payees.get(&iou.payee) {
            None => return Ok(AppendResult::rejected(Outcome::UnknownPayee)),
            Some(payee) if payee.status == PayeeStatus::Suspended => {
                return Ok(AppendResult::rejected(Outcome::PayeeSuspended));
            }
            Some(_) => {}
        }
        let owed = self.state.exposure(payer_id, &iou.asset);
        let owed_after = match owed.checked_add(u128::from(item.charge)) {
            Some(total) if total <= payer.credit_limit(&iou.asset) => total,
            _ => return Ok(AppendResult::rejected(Outcome::CreditLimitExceeded)),
        };

        let epoch = self.state.open_epoch.as_ref().expect("an epoch is always open").epoch;
        let seq = self.state.head_seq.checked_add(1).ok_or_else(|| LedgerError::Corruption("log full".into()))?;
        let record = StoredIou {
            seq,
            epoch,
            accepted_at_ms: group.now_ms,
            charge: Some(item.charge),
            prev_hash: self.state.head_hash,
            hash: [0; 32],
            signature: item.signed.signature,
            evidence: item.evidence,
        };
        let record = StoredIou { hash: record.computed_hash(), ..record };
        group.scratch.clear();
        encode_log_record(&record, &mut group.scratch);
        group.batch.put_cf(self.ledger.cf(CF_LOG), log_key(seq), &group.scratch);
        let entry = NonceEntry { seq, hash: record.hash, expires_at_s: iou.expires_at_s };
        group.batch.put_cf(self.ledger.cf(CF_NONCES), nonce_key_bytes, encode_nonce_entry(&entry));

        group.aggregates.add(epoch, payer_id, &iou.payee, &iou.asset, item.charge)?;
        let payer_id = payer_id.clone();
        self.state.set_exposure(&payer_id, &iou.asset, owed_after);
        self.state.head_seq = seq;
        self.state.head_hash = record.hash;
        group.records = true;

        let commitment = CommitmentId { seq, hash: record.hash };
        let charge = item.charge;
        // The evidence moves into the replay overlay: no copy on the hot path.
        group
            .staged
            .insert((iou.payer_key, iou.nonce), Staged { commitment, epoch, charge, evidence: record.evidence });
        group.spent.push(item.signed);
        Ok(AppendResult { outcome: Outcome::Accepted, commitment: Some(commitment), epoch, charge })
    }
}

/// A resubmitted `(key, nonce)`: the same IOU (however it was signed: alone, in a batch, as a
/// Web Bot Auth request) is answered with its original commitment and charge; a different one
/// is a conflict.
fn replay_answer(
    commitment: CommitmentId,
    epoch: u64,
    charge: u64,
    original: &[u8],
    resubmitted: &[u8],
) -> AppendResult {
    if original == resubmitted {
        AppendResult { outcome: Outcome::Duplicate, commitment: Some(commitment), epoch, charge }
    } else {
        AppendResult::rejected(Outcome::Conflict)
    }
}

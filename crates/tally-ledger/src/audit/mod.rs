//! `tally ledger verify`: recompute everything derivable and compare.
//!
//! The audit walks the whole log once, in order, and checks:
//!
//! 1. sequence numbers are contiguous from 1;
//! 2. every record's `prev_hash` is its predecessor's hash and its own hash
//!    recomputes from its content (the hash chain);
//! 3. every record parses, names a registered payer key, and lies inside
//!    its epoch's sequence range; a Web Bot Auth record's IOU is re-derived
//!    from its signature base and must equal the stored one;
//! 4. every signature verifies over what it covers (the IOU's signing bytes,
//!    the Web Bot Auth signature base, or a batch statement), in batches like
//!    ingest; a batch member is leaf `index` of its stored batch, whose leaves
//!    hash to the signed root;
//! 5. the replay index points back at the record (or has been pruned,
//!    which is legal only well after the IOU expired);
//! 6. both aggregate column families equal the sums recomputed from the log
//!    (each record's charge), key by key, with nothing missing and nothing extra;
//! 7. the control plane ([`journal`]): the journal's hash chain, every stored
//!    account, epoch, settlement and meta record against the journal's
//!    effects, every plan netted again from the log's aggregates, payouts
//!    against their plans, and every settlement counter against the records.
//!
//! Problems are collected, not fatal: the report lists the first
//! [`PROBLEMS_LISTED_MAX`] and counts all. A read error (RocksDB found a bad
//! checksum, say) ends the audit with that error.

use std::collections::{BTreeMap, HashMap};

use ed25519_dalek::VerifyingKey;
use rocksdb::IteratorMode;
use std::collections::VecDeque;
use tally_core::verify::{VerifyItem, verify_many};

use tally_core::batch::{BatchStatement, leaf_hash, merkle_root};
use tally_core::evidence::Signed;
use tally_core::{EvidenceKind, GENESIS_HASH, PublicKeyBytes};

use crate::LedgerError;
use crate::layout::*;
use crate::store::Ledger;

mod journal;

/// The report lists at most this many problems (all are counted).
pub const PROBLEMS_LISTED_MAX: usize = 100;
/// Signatures are re-verified in batches of this many.
pub const AUDIT_VERIFY_BATCH_LEN: usize = 1024;

#[derive(Clone, Copy, Debug)]
pub struct AuditOptions {
    pub verify_signatures: bool,
}

#[derive(Debug, Default, Clone)]
pub struct AuditReport {
    pub records: u64,
    pub epochs: u64,
    pub aggregates: u64,
    pub signatures_verified: u64,
    pub nonces_pruned: u64,
    /// Records whose evidence is a Web Bot Auth signature base.
    pub web_bot_auth_records: u64,
    /// Records whose evidence is a pay-per-crawl signature base (`tally-ppc-v1`).
    pub pay_per_crawl_records: u64,
    /// Records signed as part of a batch (one signature per batch statement).
    pub batch_member_records: u64,
    /// Journal entries walked, and plans netted again from the log.
    pub journal_entries: u64,
    pub plans_renetted: u64,
    /// Facts an auditor must know that are not faults: IOUs accepted with
    /// signature verification off, plans that predate a migration.
    pub notices: Vec<String>,
    pub problems: Vec<String>,
    pub problems_total: u64,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.problems_total == 0
    }

    pub(crate) fn problem(&mut self, text: String) {
        self.problems_total += 1;
        if self.problems.len() < PROBLEMS_LISTED_MAX {
            self.problems.push(text);
        }
    }
}

/// `(epoch, payer, payee, asset)`.
pub(crate) type AggregateKey = (u64, String, String, String);

struct PendingSignature {
    /// What is signed, for the report ("record 7", "batch 3 of key …").
    what: String,
    key: VerifyingKey,
    signature: [u8; 64],
    /// The signature covers `bytes[start..]`.
    bytes: Vec<u8>,
    start: usize,
}

/// Batches the audit has loaded recently. A batch's members are appended together, so a small
/// cache sees each batch once; an evicted batch met again is simply checked again.
#[derive(Default)]
struct BatchCache {
    loaded: VecDeque<([u8; 40], BatchRecord)>,
    /// Statements of newly loaded batches whose signatures still need checking.
    unverified: Vec<(PublicKeyBytes, BatchStatement, [u8; 64])>,
}

/// Batches kept by the audit's cache.
const AUDIT_BATCHES_CACHED_MAX: usize = 64;

impl BatchCache {
    /// Checks that leaf `index` of batch `(payer_key, batch_seq)` is this IOU. A batch loaded for
    /// the first time also has its root recomputed from its leaves, and its statement queued for
    /// signature verification. `Ok(Some(problem))` is a finding; `Err` a read failure.
    fn check_member(
        &mut self,
        ledger: &Ledger,
        payer_key: &PublicKeyBytes,
        batch_seq: u64,
        index: u32,
        iou_bytes: &[u8],
    ) -> Result<Option<String>, LedgerError> {
        let key = batch_key(payer_key, batch_seq);
        if !self.loaded.iter().any(|(k, _)| *k == key) {
            let Some(batch) = ledger.batch(payer_key, batch_seq)? else {
                return Ok(Some(format!("its batch {batch_seq} is missing")));
            };
            if batch.leaves.is_empty() || merkle_root(&batch.leaves) != batch.root {
                return Ok(Some(format!("batch {batch_seq}: its leaves do not hash to its root")));
            }
            self.unverified.push((*payer_key, batch.statement(), batch.signature));
            if self.loaded.len() == AUDIT_BATCHES_CACHED_MAX {
                self.loaded.pop_front();
            }
            self.loaded.push_back((key, batch));
        }
        let (_, batch) = self.loaded.iter().find(|(k, _)| *k == key).expect("loaded just above");
        Ok(match batch.leaves.get(index as usize) {
            Some(leaf) if *leaf == leaf_hash(iou_bytes) => None,
            Some(_) => Some(format!("it is not leaf {index} of batch {batch_seq}")),
            None => Some(format!("index {index} is outside batch {batch_seq}")),
        })
    }

    fn take_unverified(&mut self) -> Vec<(PublicKeyBytes, BatchStatement, [u8; 64])> {
        std::mem::take(&mut self.unverified)
    }
}

pub fn audit(ledger: &Ledger, options: AuditOptions) -> Result<AuditReport, LedgerError> {
    let mut report = AuditReport::default();
    let time_mark_s = time_mark_ms(ledger)? / 1000;
    let owners: HashMap<PublicKeyBytes, String> = ledger.key_owners()?.into_iter().collect();
    // When each revoked key was revoked: it signs nothing accepted after that.
    let revoked_at_ms: HashMap<PublicKeyBytes, u64> =
        ledger.payers()?.into_iter().flat_map(|payer| payer.revoked_keys).collect();
    let epochs = ledger.epochs()?;
    report.epochs = epochs.len() as u64;
    check_epochs(&epochs, &mut report);

    let mut keys: HashMap<PublicKeyBytes, Option<VerifyingKey>> = HashMap::new();
    let mut computed: BTreeMap<AggregateKey, AggregateValue> = BTreeMap::new();
    let mut pending: Vec<PendingSignature> = Vec::with_capacity(AUDIT_VERIFY_BATCH_LEN);
    let mut batches = BatchCache::default();
    let mut expected_seq = 1u64;
    let mut prev_hash = GENESIS_HASH;
    let mut epoch_index = 0usize;

    for item in ledger.db.iterator_cf(ledger.cf(CF_LOG), IteratorMode::Start) {
        let (key, value) = item?;
        let record = match decode_log_record(&key, &value) {
            Ok(record) => record,
            Err(e) => {
                report.problem(e.to_string());
                continue;
            }
        };
        report.records += 1;
        let seq = record.seq;
        if seq != expected_seq {
            report.problem(format!("log sequence jumps from {} to {seq}", expected_seq - 1));
        }
        expected_seq = seq + 1;
        if record.prev_hash != prev_hash {
            report.problem(format!("record {seq}: prev_hash does not match the previous record's hash"));
        }
        if record.computed_hash() != record.hash {
            report.problem(format!("record {seq}: content does not match its hash (tampered)"));
        }
        prev_hash = record.hash;

        while epoch_index + 1 < epochs.len() && epochs[epoch_index + 1].seq_first <= seq {
            epoch_index += 1;
        }
        match epochs.get(epoch_index) {
            Some(epoch) if epoch.epoch == record.epoch => {}
            _ => report.problem(format!("record {seq}: epoch {} does not cover this sequence", record.epoch)),
        }

        // What the record's signature covers: a suffix of its evidence, or
        // (batch members) its batch's statement, checked once per batch.
        let (iou, message_start) = match record.evidence() {
            Ok(evidence) => match evidence.signed {
                Signed::Message(message) => {
                    if evidence.kind == EvidenceKind::WebBotAuth {
                        report.web_bot_auth_records += 1;
                    }
                    // A pay-per-crawl price was read at a scale the signature cannot prove: it
                    // must be the asset's (scales never change), or the amount is not what was signed.
                    if evidence.kind == EvidenceKind::PayPerCrawl {
                        report.pay_per_crawl_records += 1;
                    }
                    if let Some(scale) = evidence.price_scale {
                        match ledger.asset(&evidence.iou.asset)? {
                            Some(asset) if asset.scale == scale => {}
                            _ => report.problem(format!(
                                "record {seq}: its pay-per-crawl price was read with {scale} decimals, not the asset's"
                            )),
                        }
                    }
                    (evidence.iou, Some(record.evidence.len() - message.len()))
                }
                Signed::Batch { batch_seq, index, iou_bytes } => {
                    report.batch_member_records += 1;
                    let problem = batches.check_member(ledger, &evidence.iou.payer_key, batch_seq, index, iou_bytes)?;
                    if let Some(problem) = problem {
                        report.problem(format!("record {seq}: {problem}"));
                    }
                    (evidence.iou, None)
                }
            },
            Err(e) => {
                report.problem(e.to_string());
                continue;
            }
        };
        let Some(payer) = owners.get(&iou.payer_key) else {
            report.problem(format!("record {seq}: payer key {} is not registered", hex::encode(iou.payer_key)));
            continue;
        };

        match ledger.db.get_pinned_cf(ledger.cf(CF_NONCES), nonce_key(&iou.payer_key, &iou.nonce))? {
            Some(value) => match decode_nonce_entry(&value) {
                Ok(entry) if entry.seq == seq && entry.hash == record.hash => {}
                Ok(entry) => report.problem(format!("record {seq}: replay index points at record {}", entry.seq)),
                Err(e) => report.problem(format!("record {seq}: {e}")),
            },
            // Pruning runs only below the horizon the writer derives from the ledger's time
            // mark (never the wall clock): a missing nonce is legal only below it.
            None if iou
                .expires_at_s
                .checked_add(ledger.nonce_retention_margin_s())
                .is_some_and(|e| e < time_mark_s) =>
            {
                report.nonces_pruned += 1;
            }
            None => report.problem(format!("record {seq}: missing from the replay index before its expiry")),
        }

        // Format 1 below `log_format2_from_seq`, format 2 (with a charge) from there on.
        let format2 = record.charge.is_some();
        if format2 != (seq >= ledger.meta().log_format2_from_seq) {
            report.problem(format!(
                "record {seq}: written in record format {} where the ledger says format {}",
                if format2 { 2 } else { 1 },
                if format2 { 1 } else { 2 }
            ));
        }
        // The writer accepts only inside the validity window judged by the
        // group's time, which it stores as `accepted_at_ms` (format 2 on): a
        // record accepted at or after its expiry was not decided by it.
        if format2 && record.accepted_at_ms / 1000 >= iou.expires_at_s {
            report.problem(format!(
                "record {seq}: accepted at {} ms, not before its IOU expired at {} s",
                record.accepted_at_ms, iou.expires_at_s
            ));
        }
        if let Some(&revoked) = revoked_at_ms.get(&iou.payer_key)
            && record.accepted_at_ms > revoked
        {
            report.problem(format!(
                "record {seq}: accepted at {} ms from a key revoked at {revoked} ms",
                record.accepted_at_ms
            ));
        }
        let charge = record.charge.unwrap_or(iou.amount);
        if charge == 0 || charge > iou.amount {
            report.problem(format!("record {seq}: charges {charge}, outside 1..={} the IOU commits", iou.amount));
        }
        let total = computed.entry((record.epoch, payer.clone(), iou.payee.clone(), iou.asset.clone())).or_default();
        match total.checked_add(AggregateValue { sum: u128::from(charge), count: 1 }) {
            Some(sum) => *total = sum,
            None => report.problem(format!("record {seq}: aggregate overflows")),
        }

        if options.verify_signatures {
            let key = *keys.entry(iou.payer_key).or_insert_with(|| VerifyingKey::from_bytes(&iou.payer_key).ok());
            match (key, message_start) {
                (Some(key), Some(start)) => pending.push(PendingSignature {
                    what: format!("record {seq}"),
                    key,
                    signature: record.signature,
                    bytes: record.evidence,
                    start,
                }),
                // The batch's signature covers it; a newly loaded batch queued its statement.
                (Some(_), None) => {}
                (None, _) => report.problem(format!("record {seq}: payer key is not a valid point")),
            }
            for (payer_key, statement, signature) in batches.take_unverified() {
                match keys.entry(payer_key).or_insert_with(|| VerifyingKey::from_bytes(&payer_key).ok()) {
                    Some(key) => pending.push(PendingSignature {
                        what: format!("batch {} of key {}", statement.batch_seq, hex::encode(payer_key)),
                        key: *key,
                        signature,
                        bytes: statement.to_bytes().to_vec(),
                        start: 0,
                    }),
                    None => report.problem(format!("batch key {} is not a valid point", hex::encode(payer_key))),
                }
            }
            if pending.len() == AUDIT_VERIFY_BATCH_LEN {
                verify_pending(&mut pending, &mut report);
            }
        }
    }
    verify_pending(&mut pending, &mut report);

    compare_aggregates(ledger, CF_AGG_BY_PAYER, false, &computed, &mut report)?;
    compare_aggregates(ledger, CF_AGG_BY_PAYEE, true, &computed, &mut report)?;
    report.aggregates = computed.len() as u64;
    journal::audit_journal(ledger, &computed, options.verify_signatures, &mut report)?;
    Ok(report)
}

/// The ledger's time mark: the later of its last log record's and last journal entry's times.
fn time_mark_ms(ledger: &Ledger) -> Result<u64, LedgerError> {
    let (head_seq, _) = ledger.head()?;
    let head_at_ms = ledger.record(head_seq)?.map_or(0, |record| record.accepted_at_ms);
    Ok(head_at_ms.max(ledger.journal_head()?.at_ms))
}

fn check_epochs(epochs: &[EpochRecord], report: &mut AuditReport) {
    let Some(last) = epochs.last() else {
        return;
    };
    if last.status != EpochStatus::Open {
        report.problem(format!("the last epoch ({}) is not open", last.epoch));
    }
    for (i, epoch) in epochs.iter().enumerate() {
        if epoch.epoch != i as u64 + 1 {
            report.problem(format!("epoch numbers are not contiguous at {}", epoch.epoch));
        }
        if i + 1 < epochs.len() {
            if epoch.status == EpochStatus::Open {
                report.problem(format!("epoch {} is open but is not the last", epoch.epoch));
            }
            match epoch.seq_last {
                Some(last) if last + 1 == epochs[i + 1].seq_first => {}
                _ => {
                    report.problem(format!("epoch {} does not end where epoch {} begins", epoch.epoch, epoch.epoch + 1))
                }
            }
        }
    }
}

fn verify_pending(pending: &mut Vec<PendingSignature>, report: &mut AuditReport) {
    let items: Vec<VerifyItem> = pending
        .iter()
        .map(|p| VerifyItem { key: &p.key, message: &p.bytes[p.start..], signature: &p.signature })
        .collect();
    let valid = verify_many(&items);
    for (p, ok) in pending.iter().zip(valid) {
        if !ok {
            report.problem(format!("{}: signature does not verify", p.what));
        }
    }
    report.signatures_verified += pending.len() as u64;
    pending.clear();
}

fn compare_aggregates(
    ledger: &Ledger,
    cf_name: &str,
    payee_first: bool,
    computed: &BTreeMap<AggregateKey, AggregateValue>,
    report: &mut AuditReport,
) -> Result<(), LedgerError> {
    let mut seen = 0usize;
    for item in ledger.db.iterator_cf(ledger.cf(cf_name), IteratorMode::Start) {
        let (key, value) = item?;
        let (epoch, first, second, asset) = match decode_aggregate_key(&key) {
            Ok(parts) => parts,
            Err(e) => {
                report.problem(format!("{cf_name}: {e}"));
                continue;
            }
        };
        let (payer, payee) = if payee_first { (second, first) } else { (first, second) };
        let stored = AggregateValue::decode(&value);
        let lookup = (epoch, payer.to_owned(), payee.to_owned(), asset.to_owned());
        match (computed.get(&lookup), stored) {
            (Some(expected), Some(stored)) if *expected == stored => seen += 1,
            (Some(expected), stored) => {
                seen += 1;
                report.problem(format!(
                    "{cf_name}: epoch {epoch} {payer} -> {payee} {asset}: stored {stored:?}, log says {expected:?}"
                ));
            }
            (None, _) => {
                report.problem(format!("{cf_name}: epoch {epoch} {payer} -> {payee} {asset}: no IOUs behind it"))
            }
        }
    }
    if seen != computed.len() {
        report.problem(format!("{cf_name}: {} aggregates are missing", computed.len() - seen));
    }
    Ok(())
}

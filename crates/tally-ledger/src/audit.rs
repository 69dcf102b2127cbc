//! `tally ledger verify`: recompute everything derivable and compare.
//!
//! The audit walks the whole log once, in order, and checks:
//!
//! 1. sequence numbers are contiguous from 1;
//! 2. every record's `prev_hash` is its predecessor's hash and its own hash
//!    recomputes from its content (the hash chain);
//! 3. every record parses, names a registered payer key, and lies inside
//!    its epoch's sequence range;
//! 4. every signature verifies (in batches, like ingest does);
//! 5. the replay index points back at the record (or has been pruned,
//!    which is legal only well after the IOU expired);
//! 6. both aggregate column families equal the sums recomputed from the log,
//!    key by key, with nothing missing and nothing extra.
//!
//! Problems are collected, not fatal: the report lists the first
//! [`PROBLEMS_LISTED_MAX`] and counts all. A read error (RocksDB found a bad
//! checksum, say) ends the audit with that error.

use std::collections::{BTreeMap, HashMap};

use ed25519_dalek::VerifyingKey;
use rocksdb::IteratorMode;
use tally_core::verify::{VerifyItem, verify_many};
use tally_core::{GENESIS_HASH, PublicKeyBytes};

use crate::LedgerError;
use crate::layout::*;
use crate::store::Ledger;

/// The report lists at most this many problems (all are counted).
pub const PROBLEMS_LISTED_MAX: usize = 100;
/// Signatures are re-verified in batches of this many.
pub const AUDIT_VERIFY_BATCH_LEN: usize = 1024;

#[derive(Clone, Copy, Debug)]
pub struct AuditOptions {
    pub verify_signatures: bool,
    /// Unix seconds, for judging whether a missing nonce was pruned legally.
    pub now_s: u64,
    pub nonce_retention_margin_s: u64,
}

#[derive(Debug, Default, Clone)]
pub struct AuditReport {
    pub records: u64,
    pub epochs: u64,
    pub aggregates: u64,
    pub signatures_verified: u64,
    pub nonces_pruned: u64,
    pub problems: Vec<String>,
    pub problems_total: u64,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.problems_total == 0
    }

    fn problem(&mut self, text: String) {
        self.problems_total += 1;
        if self.problems.len() < PROBLEMS_LISTED_MAX {
            self.problems.push(text);
        }
    }
}

type AggregateKey = (u64, String, String, String);

struct PendingSignature {
    seq: u64,
    key: VerifyingKey,
    signature: [u8; 64],
    signing_bytes: Vec<u8>,
}

pub fn audit(ledger: &Ledger, options: AuditOptions) -> Result<AuditReport, LedgerError> {
    let mut report = AuditReport::default();
    let owners: HashMap<PublicKeyBytes, String> = ledger.key_owners()?.into_iter().collect();
    let epochs = ledger.epochs()?;
    report.epochs = epochs.len() as u64;
    check_epochs(&epochs, &mut report);

    let mut keys: HashMap<PublicKeyBytes, Option<VerifyingKey>> = HashMap::new();
    let mut computed: BTreeMap<AggregateKey, AggregateValue> = BTreeMap::new();
    let mut pending: Vec<PendingSignature> = Vec::with_capacity(AUDIT_VERIFY_BATCH_LEN);
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

        let iou = match record.iou() {
            Ok(iou) => iou,
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
            None if iou.expires_at_s.saturating_add(options.nonce_retention_margin_s) < options.now_s => {
                report.nonces_pruned += 1;
            }
            None => report.problem(format!("record {seq}: missing from the replay index before its expiry")),
        }

        let total = computed.entry((record.epoch, payer.clone(), iou.payee.clone(), iou.asset.clone())).or_default();
        match total.checked_add(AggregateValue { sum: u128::from(iou.amount), count: 1 }) {
            Some(sum) => *total = sum,
            None => report.problem(format!("record {seq}: aggregate overflows")),
        }

        if options.verify_signatures {
            let key = *keys.entry(iou.payer_key).or_insert_with(|| VerifyingKey::from_bytes(&iou.payer_key).ok());
            match key {
                Some(key) => pending.push(PendingSignature {
                    seq,
                    key,
                    signature: record.signature,
                    signing_bytes: record.signing_bytes,
                }),
                None => report.problem(format!("record {seq}: payer key is not a valid point")),
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
    Ok(report)
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
        .map(|p| VerifyItem { key: &p.key, message: &p.signing_bytes, signature: &p.signature })
        .collect();
    let valid = verify_many(&items);
    for (p, ok) in pending.iter().zip(valid) {
        if !ok {
            report.problem(format!("record {}: signature does not verify", p.seq));
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

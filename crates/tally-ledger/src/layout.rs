//! Column families, key encodings and value encodings.
//!
//! All integers on disk are big-endian, so that keys sort numerically.
//! Variable-length strings inside keys are length-prefixed with one byte
//! (`lp(s) = len(s) as u8 || s`); ids are at most 64 bytes, so one byte
//! always suffices, and the prefix keeps `"ab"` from being a key prefix of
//! `"abc"` in a scan. The table in `ARCHITECTURE.md` mirrors this file.

use serde::{Deserialize, Serialize};
use tally_core::batch::BatchStatement;
use tally_core::{Evidence, Iou, PublicKeyBytes, RecordHash, SignatureBytes, parse_evidence};

use crate::LedgerError;

/// What the `meta` column family says about a ledger (`crate::format` reads
/// and writes it). Here, beside the other encodings, so that the store can
/// hold it without depending on the code that migrates ledgers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub format: u32,
    pub ledger_id: tally_core::LedgerId,
    pub created_at_ms: u64,
    /// Log records below this sequence number are format 1, the rest format 2.
    pub log_format2_from_seq: u64,
    pub migrated_from: Option<u32>,
}

/// `seq (u64 BE)` → log record (see [`encode_log_record`]). Append-only.
pub const CF_LOG: &str = "log";
/// `payer key (32) || nonce (16)` → `seq (8) || hash (32) || expires_at_s (8)`.
pub const CF_NONCES: &str = "nonces";
/// `epoch (8) || lp(payer) || lp(payee) || lp(asset)` → aggregate (merge).
pub const CF_AGG_BY_PAYER: &str = "agg_by_payer";
/// `epoch (8) || lp(payee) || lp(payer) || lp(asset)` → aggregate (merge).
pub const CF_AGG_BY_PAYEE: &str = "agg_by_payee";
/// `"asset/" code | "payer/" id | "payee/" id | "key/" pubkey` → bincode record.
pub const CF_ACCOUNTS: &str = "accounts";
/// `epoch (u64 BE)` → bincode [`EpochRecord`].
pub const CF_EPOCHS: &str = "epochs";

/// Settlement plans, batches, payouts, bills and carries (see [`crate::settlement`]).
pub const CF_SETTLEMENT: &str = "settlement";

/// Batch-signed commitments: `payer key ‖ batch_seq` → the statement's count and root, the payer's
/// signature and every leaf hash (see [`BatchRecord`]). Put once, never updated.
pub const CF_BATCHES: &str = "batches";

/// The ledger's identity and format: `format`, `ledger_id`, … (see [`crate::format`]).
pub const CF_META: &str = "meta";

/// The control-plane journal: `seq (u64 BE)` → one hash-chained record of an
/// admin change or settlement step, with who made it (see [`crate::journal`]).
pub const CF_JOURNAL: &str = "journal";

/// Every column family, in creation order.
pub const COLUMN_FAMILIES: [&str; 10] = [
    CF_LOG,
    CF_NONCES,
    CF_AGG_BY_PAYER,
    CF_AGG_BY_PAYEE,
    CF_ACCOUNTS,
    CF_EPOCHS,
    CF_SETTLEMENT,
    CF_BATCHES,
    CF_META,
    CF_JOURNAL,
];

pub const ACCOUNT_ASSET_PREFIX: &[u8] = b"asset/";
pub const ACCOUNT_PAYER_PREFIX: &[u8] = b"payer/";
pub const ACCOUNT_PAYEE_PREFIX: &[u8] = b"payee/";
pub const ACCOUNT_KEY_PREFIX: &[u8] = b"key/";
/// `"agent/" signature agent` → the id (UTF-8) of the payer it belongs to; an
/// index the writer keeps in step with [`tally_core::Payer::signature_agent`].
pub const ACCOUNT_AGENT_PREFIX: &[u8] = b"agent/";
/// `"qtoken/" SHA-256(token)` → bincode [`crate::tokens::QueryToken`]: the
/// query service's scoped bearer tokens, stored hashed.
pub const ACCOUNT_QUERY_TOKEN_PREFIX: &[u8] = b"qtoken/";

/// The index record `"agent/" agent` of a payer's signature agent.
pub fn agent_index_key(agent: &str) -> Vec<u8> {
    let mut key = ACCOUNT_AGENT_PREFIX.to_vec();
    key.extend_from_slice(agent.as_bytes());
    key
}

/// `prefix ‖ id`: the key of an account record.
pub fn account_key(prefix: &[u8], id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + id.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(id);
    key
}

/// Appends `len(s) as u8 || s`.
pub(crate) fn push_lp(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() <= usize::from(u8::MAX), "ids are validated to at most 64 bytes");
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// Reads one length-prefixed string from the front of `bytes`.
pub(crate) fn pop_lp(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let len = usize::from(len);
    if rest.len() < len {
        return None;
    }
    let (s, rest) = rest.split_at(len);
    Some((std::str::from_utf8(s).ok()?, rest))
}

pub fn log_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn nonce_key(payer_key: &[u8; 32], nonce: &[u8; 16]) -> [u8; 48] {
    let mut key = [0u8; 48];
    key[..32].copy_from_slice(payer_key);
    key[32..].copy_from_slice(nonce);
    key
}

/// What the replay index remembers of an accepted IOU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonceEntry {
    pub seq: u64,
    pub hash: RecordHash,
    pub expires_at_s: u64,
}

pub const NONCE_ENTRY_LEN: usize = 48;

pub fn encode_nonce_entry(entry: &NonceEntry) -> [u8; NONCE_ENTRY_LEN] {
    let mut value = [0u8; NONCE_ENTRY_LEN];
    value[..8].copy_from_slice(&entry.seq.to_be_bytes());
    value[8..40].copy_from_slice(&entry.hash);
    value[40..].copy_from_slice(&entry.expires_at_s.to_be_bytes());
    value
}

pub fn decode_nonce_entry(value: &[u8]) -> Result<NonceEntry, LedgerError> {
    if value.len() != NONCE_ENTRY_LEN {
        return Err(LedgerError::Corruption(format!("nonce entry of {} bytes", value.len())));
    }
    Ok(NonceEntry {
        seq: u64::from_be_bytes(value[..8].try_into().expect("8 bytes")),
        hash: value[8..40].try_into().expect("32 bytes"),
        expires_at_s: u64::from_be_bytes(value[40..].try_into().expect("8 bytes")),
    })
}

/// The expiry stored in a nonce entry, for the pruning compaction filter.
pub fn nonce_entry_expiry(value: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = value.get(40..48)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// One aggregate key, in either order. `first` is the payer in
/// [`CF_AGG_BY_PAYER`] and the payee in [`CF_AGG_BY_PAYEE`].
pub fn aggregate_key(epoch: u64, first: &str, second: &str, asset: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + 3 + first.len() + second.len() + asset.len());
    aggregate_key_into(&mut key, epoch, first, second, asset);
    key
}

/// [`aggregate_key`], appended to `out`.
pub fn aggregate_key_into(out: &mut Vec<u8>, epoch: u64, first: &str, second: &str, asset: &str) {
    out.extend_from_slice(&epoch.to_be_bytes());
    push_lp(out, first);
    push_lp(out, second);
    push_lp(out, asset);
}

/// The scan prefix for one epoch, optionally narrowed to one leading id.
pub fn aggregate_prefix(epoch: u64, first: Option<&str>) -> Vec<u8> {
    let mut key = epoch.to_be_bytes().to_vec();
    if let Some(first) = first {
        push_lp(&mut key, first);
    }
    key
}

/// The inverse of [`aggregate_key`]: `(epoch, first, second, asset)`.
pub fn decode_aggregate_key(key: &[u8]) -> Result<(u64, &str, &str, &str), LedgerError> {
    let corrupt = || LedgerError::Corruption(format!("aggregate key {}", hex::encode(key)));
    let epoch = u64::from_be_bytes(key.get(..8).ok_or_else(corrupt)?.try_into().expect("8 bytes"));
    let (first, rest) = pop_lp(&key[8..]).ok_or_else(corrupt)?;
    let (second, rest) = pop_lp(rest).ok_or_else(corrupt)?;
    let (asset, rest) = pop_lp(rest).ok_or_else(corrupt)?;
    if !rest.is_empty() {
        return Err(corrupt());
    }
    Ok((epoch, first, second, asset))
}

/// Sum and count of the IOUs behind one aggregate key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggregateValue {
    pub sum: u128,
    pub count: u64,
}

pub const AGGREGATE_VALUE_LEN: usize = 24;

impl AggregateValue {
    pub fn encode(&self) -> [u8; AGGREGATE_VALUE_LEN] {
        let mut value = [0u8; AGGREGATE_VALUE_LEN];
        value[..16].copy_from_slice(&self.sum.to_be_bytes());
        value[16..].copy_from_slice(&self.count.to_be_bytes());
        value
    }

    pub fn decode(value: &[u8]) -> Option<AggregateValue> {
        if value.len() != AGGREGATE_VALUE_LEN {
            return None;
        }
        Some(AggregateValue {
            sum: u128::from_be_bytes(value[..16].try_into().ok()?),
            count: u64::from_be_bytes(value[16..].try_into().ok()?),
        })
    }

    /// Adds another aggregate; `None` on overflow. A `u128` sum of `u64`
    /// amounts cannot overflow before 2^64 IOUs, but overflow is still an
    /// error, never a wrap.
    pub fn checked_add(self, other: AggregateValue) -> Option<AggregateValue> {
        Some(AggregateValue { sum: self.sum.checked_add(other.sum)?, count: self.count.checked_add(other.count)? })
    }
}

/// The merge operator of both aggregate column families: operands are
/// [`AggregateValue`]s and merging adds them. Associative, so RocksDB may
/// combine operands in any grouping. A malformed operand or an overflow
/// returns `None`, which RocksDB surfaces as a corruption error on read
/// rather than a silently wrong balance.
pub fn merge_aggregates(_key: &[u8], existing: Option<&[u8]>, operands: &rocksdb::MergeOperands) -> Option<Vec<u8>> {
    let mut total = match existing {
        Some(bytes) => AggregateValue::decode(bytes)?,
        None => AggregateValue::default(),
    };
    for operand in operands {
        total = total.checked_add(AggregateValue::decode(operand)?)?;
    }
    Some(total.encode().to_vec())
}

/// Offsets inside a log record value (format 2, written from ledger format 2 on).
///
/// ```text
///   0   1  record version, 2
///   1   8  epoch, u64 BE
///   9   8  accepted_at_ms, u64 BE
///  17   8  charge, u64 BE: what the payee charged (≤ the IOU's amount)
///  25  32  prev_hash
///  57  32  hash (see tally_core::chain)
///  89  64  signature
/// 153   .  the evidence: what the payer signed (tally_core::evidence):
///           the IOU's canonical signing bytes, or a Web Bot Auth record
/// ```
///
/// A format-1 record (written by ledger format 1, kept as it was) has no
/// version byte and no charge: `epoch ‖ accepted_at_ms ‖ prev_hash ‖ hash ‖
/// signature ‖ evidence`, 144 header bytes; its charge is the IOU's amount.
/// Its first byte is the high byte of its epoch, which is zero for every
/// epoch below 2⁵⁶ (epochs count up from 1 by one per seal), so the first
/// byte tells the two apart: 0 is format 1, 2 is format 2, anything else is
/// corruption.
pub const LOG_HEADER_LEN: usize = 153;
/// The header of a format-1 record.
pub const LOG_HEADER_LEN_V1: usize = 144;
/// The version byte that opens a format-2 log record.
pub const LOG_RECORD_V2: u8 = 2;

/// One IOU as the log holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredIou {
    pub seq: u64,
    pub epoch: u64,
    pub accepted_at_ms: u64,
    /// What the payee charged; `None` for a format-1 record, whose charge is
    /// the IOU's amount (see [`StoredIou::charge`]).
    pub charge: Option<u64>,
    pub prev_hash: RecordHash,
    pub hash: RecordHash,
    pub signature: SignatureBytes,
    pub evidence: Vec<u8>,
}

impl StoredIou {
    /// Parses the stored evidence: the IOU and the message its signature
    /// covers. Web Bot Auth evidence is re-derived from its signature base.
    pub fn evidence(&self) -> Result<Evidence<'_>, LedgerError> {
        parse_evidence(&self.evidence).map_err(|e| LedgerError::Corruption(format!("log record {}: {e}", self.seq)))
    }

    /// The IOU this record holds.
    pub fn iou(&self) -> Result<Iou, LedgerError> {
        self.evidence().map(|evidence| evidence.iou)
    }

    /// What the payee charged: the recorded charge, or for a format-1
    /// record the IOU's amount (format 1 always charged the whole amount).
    pub fn charge(&self) -> Result<u64, LedgerError> {
        match self.charge {
            Some(charge) => Ok(charge),
            None => Ok(self.iou()?.amount),
        }
    }

    /// Recomputes this record's hash from its content and `prev_hash`.
    pub fn computed_hash(&self) -> RecordHash {
        let content = tally_core::LinkContent {
            seq: self.seq,
            epoch: self.epoch,
            accepted_at_ms: self.accepted_at_ms,
            charge: self.charge,
            signature: &self.signature,
            evidence: &self.evidence,
        };
        tally_core::link_hash(&self.prev_hash, &content)
    }
}

/// Encodes a log record value in the format its `charge` says (format 2
/// with a charge; format 1 without, which only tests that build old ledgers
/// write). The evidence is stored verbatim: what was signed and hashed is
/// exactly what is kept.
pub fn encode_log_record(record: &StoredIou, out: &mut Vec<u8>) {
    if let Some(charge) = record.charge {
        out.push(LOG_RECORD_V2);
        out.extend_from_slice(&record.epoch.to_be_bytes());
        out.extend_from_slice(&record.accepted_at_ms.to_be_bytes());
        out.extend_from_slice(&charge.to_be_bytes());
    } else {
        out.extend_from_slice(&record.epoch.to_be_bytes());
        out.extend_from_slice(&record.accepted_at_ms.to_be_bytes());
    }
    out.extend_from_slice(&record.prev_hash);
    out.extend_from_slice(&record.hash);
    out.extend_from_slice(&record.signature);
    out.extend_from_slice(&record.evidence);
}

pub fn decode_log_record(key: &[u8], value: &[u8]) -> Result<StoredIou, LedgerError> {
    let seq = u64::from_be_bytes(
        key.try_into().map_err(|_| LedgerError::Corruption(format!("log key {}", hex::encode(key))))?,
    );
    let u64_at = |at: usize| u64::from_be_bytes(value[at..at + 8].try_into().expect("8 bytes"));
    let (epoch, accepted_at_ms, charge, rest) = match value.first().copied() {
        Some(LOG_RECORD_V2) if value.len() >= LOG_HEADER_LEN => (u64_at(1), u64_at(9), Some(u64_at(17)), 25),
        Some(0) if value.len() >= LOG_HEADER_LEN_V1 => (u64_at(0), u64_at(8), None, 16),
        Some(0 | LOG_RECORD_V2) => {
            return Err(LedgerError::Corruption(format!("log record {seq} is {} bytes", value.len())));
        }
        Some(version) => {
            return Err(LedgerError::Corruption(format!("log record {seq} has unknown version byte {version}")));
        }
        None => return Err(LedgerError::Corruption(format!("log record {seq} is empty"))),
    };
    Ok(StoredIou {
        seq,
        epoch,
        accepted_at_ms,
        charge,
        prev_hash: value[rest..rest + 32].try_into().expect("32 bytes"),
        hash: value[rest + 32..rest + 64].try_into().expect("32 bytes"),
        signature: value[rest + 64..rest + 128].try_into().expect("64 bytes"),
        evidence: value[rest + 128..].to_vec(),
    })
}

/// A batch-signed commitment as stored: enough to re-verify the payer's signature and to serve an
/// inclusion proof for any IOU of the batch, including those the engine refused (they are leaves too).
///
/// ```text
/// key:   payer key 32 ‖ batch_seq u64 BE
/// value: count u32 BE ‖ root 32 ‖ signature 64 ‖ leaf hashes (32 × count)
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    pub payer_key: PublicKeyBytes,
    pub batch_seq: u64,
    pub root: [u8; 32],
    pub signature: SignatureBytes,
    pub leaves: Vec<[u8; 32]>,
}

pub const BATCH_RECORD_HEADER_LEN: usize = 4 + 32 + 64;

pub fn batch_key(payer_key: &PublicKeyBytes, batch_seq: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(payer_key);
    key[32..].copy_from_slice(&batch_seq.to_be_bytes());
    key
}

impl BatchRecord {
    /// The statement the payer signed.
    pub fn statement(&self) -> BatchStatement {
        BatchStatement {
            payer_key: self.payer_key,
            batch_seq: self.batch_seq,
            count: u32::try_from(self.leaves.len()).expect("a batch is bounded"),
            root: self.root,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BATCH_RECORD_HEADER_LEN + 32 * self.leaves.len());
        out.extend_from_slice(&u32::try_from(self.leaves.len()).expect("a batch is bounded").to_be_bytes());
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.signature);
        for leaf in &self.leaves {
            out.extend_from_slice(leaf);
        }
        out
    }

    pub fn decode(key: &[u8], value: &[u8]) -> Result<BatchRecord, LedgerError> {
        let bad = || LedgerError::Corruption(format!("batch record {}", hex::encode(key)));
        let key: &[u8; 40] = key.try_into().map_err(|_| bad())?;
        if value.len() < BATCH_RECORD_HEADER_LEN {
            return Err(bad());
        }
        let count = u32::from_be_bytes(value[0..4].try_into().expect("4 bytes")) as usize;
        if value.len() != BATCH_RECORD_HEADER_LEN + 32 * count {
            return Err(bad());
        }
        Ok(BatchRecord {
            payer_key: key[..32].try_into().expect("32 bytes"),
            batch_seq: u64::from_be_bytes(key[32..].try_into().expect("8 bytes")),
            root: value[4..36].try_into().expect("32 bytes"),
            signature: value[36..100].try_into().expect("64 bytes"),
            leaves: value[BATCH_RECORD_HEADER_LEN..]
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32 bytes"))
                .collect(),
        })
    }
}

/// Where an epoch is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EpochStatus {
    /// Accepting IOUs. Exactly one epoch is open at any time: the last.
    Open,
    /// Closed to new IOUs; its aggregates are final and await settlement.
    Sealed,
}

/// An epoch's bookkeeping. Epochs cover contiguous ranges of the log:
/// `seq_first ..= seq_last` (empty when `seq_last < seq_first`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: u64,
    pub status: EpochStatus,
    pub opened_at_ms: u64,
    pub sealed_at_ms: Option<u64>,
    /// The first sequence number that belongs (or would belong) to it.
    pub seq_first: u64,
    /// The last sequence number in it; set when sealed.
    pub seq_last: Option<u64>,
}

pub fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode_bincode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode_config()).expect("in-memory encoding cannot fail")
}

pub fn decode_bincode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, LedgerError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode_config())
        .map_err(|e| LedgerError::Corruption(format!("{what}: {e}")))?;
    if read != bytes.len() {
        return Err(LedgerError::Corruption(format!("{what}: {} trailing bytes", bytes.len() - read)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn aggregate_keys_round_trip(
            epoch in any::<u64>(),
            a in "[A-Za-z0-9._-]{1,64}",
            b in "[A-Za-z0-9._-]{1,64}",
            asset in "[A-Z0-9]{1,12}",
        ) {
            let key = aggregate_key(epoch, &a, &b, &asset);
            prop_assert_eq!(decode_aggregate_key(&key).unwrap(), (epoch, a.as_str(), b.as_str(), asset.as_str()));
            prop_assert!(key.starts_with(&aggregate_prefix(epoch, Some(&a))));
        }

        #[test]
        fn aggregate_values_round_trip(sum in any::<u128>(), count in any::<u64>()) {
            let value = AggregateValue { sum, count };
            prop_assert_eq!(AggregateValue::decode(&value.encode()), Some(value));
        }

        #[test]
        fn nonce_entries_round_trip(seq in any::<u64>(), hash in any::<[u8; 32]>(), expires in any::<u64>()) {
            let entry = NonceEntry { seq, hash, expires_at_s: expires };
            let bytes = encode_nonce_entry(&entry);
            prop_assert_eq!(decode_nonce_entry(&bytes).unwrap(), entry);
            prop_assert_eq!(nonce_entry_expiry(&bytes), Some(expires));
        }

        #[test]
        fn log_records_round_trip(
            seq in 1u64.., epoch in 0u64..(1 << 56), at in any::<u64>(), charge in proptest::option::of(any::<u64>()),
            prev in any::<[u8; 32]>(), hash in any::<[u8; 32]>(),
            sig in proptest::collection::vec(any::<u8>(), 64), body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let record = StoredIou {
                seq, epoch, accepted_at_ms: at, charge, prev_hash: prev, hash,
                signature: sig.try_into().unwrap(), evidence: body,
            };
            let mut value = Vec::new();
            encode_log_record(&record, &mut value);
            prop_assert_eq!(decode_log_record(&log_key(seq), &value).unwrap(), record);
        }
    }

    #[test]
    fn batch_records_round_trip_and_refuse_damage() {
        let record = BatchRecord {
            payer_key: [1; 32],
            batch_seq: 77,
            root: [2; 32],
            signature: [3; 64],
            leaves: vec![[4; 32], [5; 32], [6; 32]],
        };
        let key = batch_key(&record.payer_key, record.batch_seq);
        let value = record.encode();
        assert_eq!(BatchRecord::decode(&key, &value).unwrap(), record);
        assert_eq!(record.statement().count, 3);
        assert!(BatchRecord::decode(&key, &value[..value.len() - 1]).is_err());
        assert!(BatchRecord::decode(&key[1..], &value).is_err());
    }

    #[test]
    fn prefixes_do_not_confuse_ids() {
        let key = aggregate_key(1, "abc", "x", "USD");
        assert!(!key.starts_with(&aggregate_prefix(1, Some("ab"))));
        assert!(key.starts_with(&aggregate_prefix(1, None)));
        assert!(!key.starts_with(&aggregate_prefix(2, None)));
    }

    #[test]
    fn damaged_values_are_corruption_not_panics() {
        assert!(decode_log_record(&[0; 8], &[0; 10]).is_err());
        assert!(decode_log_record(&[0; 7], &[0; 200]).is_err());
        assert!(decode_log_record(&[0; 8], &[]).is_err());
        let mut v2 = vec![LOG_RECORD_V2];
        v2.extend_from_slice(&[0; 150]);
        assert!(decode_log_record(&[0; 8], &v2).is_err(), "a format-2 record shorter than its header");
        assert!(decode_log_record(&[0; 8], &[1; 200]).is_err(), "unknown version byte");
        assert!(decode_nonce_entry(&[0; 47]).is_err());
        assert!(decode_aggregate_key(&[0; 9]).is_err());
        assert!(AggregateValue::decode(&[0; 23]).is_none());
        assert!(decode_bincode::<EpochRecord>("epoch", &[0xff; 3]).is_err());
    }
}

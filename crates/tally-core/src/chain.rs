//! The ledger's hash chain and the commitment identifier.
//!
//! Every record appended to the IOU log carries the hash of the record
//! before it, so rewriting any past record (or reordering, inserting or
//! deleting one) changes every hash after it. A record's hash is
//!
//! ```text
//! SHA-256( "tally-log-v2"            12 bytes, domain tag
//!        || prev_hash                32 bytes (all zero for the first record)
//!        || seq                       8 bytes, u64 big-endian, first record is 1
//!        || epoch                     8 bytes, u64 big-endian
//!        || accepted_at_ms            8 bytes, u64 big-endian, Unix milliseconds
//!        || charge                    8 bytes, u64 big-endian: what the payee
//!                                    charged, at most the IOU's amount
//!        || signature                64 bytes
//!        || evidence                 what the payer signed, as stored: the IOU's
//!                                    signing bytes, or a Web Bot Auth record
//!                                    (see `crate::evidence`) )
//! ```
//!
//! Records written by ledger format 1 have no charge (it was always the IOU's
//! amount) and hash with the tag `"tally-log-v1"` and without the charge
//! field ([`link_hash_v1`]). They stay as written: the log is append-only, so
//! a format change never rewrites history, and a reader tells the two apart by
//! the record's version byte (`tally_ledger::layout`).
//!
//! The pair `(seq, hash)` is the IOU's **commitment identifier**: its place
//! in the log and a digest that binds it to everything before it. x402
//! `batch-settlement` returns it to clients in `transaction`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::iou::SignatureBytes;

/// A record's link in the chain.
pub type RecordHash = [u8; 32];

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: RecordHash = [0; 32];

/// Domain tag of a format-1 record's hash.
pub const LOG_DOMAIN_TAG_V1: &[u8; 12] = b"tally-log-v1";
/// Domain tag of the record hash (format 2 on).
pub const LOG_DOMAIN_TAG: &[u8; 12] = b"tally-log-v2";

/// The fields a record's hash covers besides its predecessor's hash.
#[derive(Clone, Copy, Debug)]
pub struct LinkContent<'a> {
    pub seq: u64,
    pub epoch: u64,
    pub accepted_at_ms: u64,
    /// What the payee charged: `Some` from format 2 on, `None` for a format-1 record.
    pub charge: Option<u64>,
    pub signature: &'a SignatureBytes,
    pub evidence: &'a [u8],
}

/// Computes a record's hash from its predecessor's hash and its content.
pub fn link_hash(prev_hash: &RecordHash, content: &LinkContent<'_>) -> RecordHash {
    let mut hasher = Sha256::new();
    match content.charge {
        Some(_) => hasher.update(LOG_DOMAIN_TAG),
        None => hasher.update(LOG_DOMAIN_TAG_V1),
    }
    hasher.update(prev_hash);
    hasher.update(content.seq.to_be_bytes());
    hasher.update(content.epoch.to_be_bytes());
    hasher.update(content.accepted_at_ms.to_be_bytes());
    if let Some(charge) = content.charge {
        hasher.update(charge.to_be_bytes());
    }
    hasher.update(content.signature);
    hasher.update(content.evidence);
    hasher.finalize().into()
}

/// The hash of a format-1 record (no charge field), as ledger format 1 wrote it.
pub fn link_hash_v1(
    prev_hash: &RecordHash,
    seq: u64,
    epoch: u64,
    accepted_at_ms: u64,
    signature: &SignatureBytes,
    evidence: &[u8],
) -> RecordHash {
    link_hash(prev_hash, &LinkContent { seq, epoch, accepted_at_ms, charge: None, signature, evidence })
}

/// Where an accepted IOU sits in the ledger, and the chain hash binding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CommitmentId {
    pub seq: u64,
    pub hash: RecordHash,
}

impl fmt::Display for CommitmentId {
    /// `"<seq>:<64 hex digits>"`, e.g. `"42:9f86d0…"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, hex::encode(self.hash))
    }
}

/// Why a string is not a commitment identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a commitment id is <seq>:<64 hex digits>")]
pub struct BadCommitmentId;

impl FromStr for CommitmentId {
    type Err = BadCommitmentId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (seq, hash) = text.split_once(':').ok_or(BadCommitmentId)?;
        let seq = seq.parse::<u64>().map_err(|_| BadCommitmentId)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hash, &mut bytes).map_err(|_| BadCommitmentId)?;
        Ok(CommitmentId { seq, hash: bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(prev: &RecordHash, seq: u64, epoch: u64, at: u64, charge: Option<u64>, sig: u8, body: &[u8]) -> RecordHash {
        let signature = [sig; 64];
        link_hash(prev, &LinkContent { seq, epoch, accepted_at_ms: at, charge, signature: &signature, evidence: body })
    }

    #[test]
    fn every_input_changes_the_hash() {
        for charge in [None, Some(7)] {
            let base = hash(&GENESIS_HASH, 1, 1, 5, charge, 1, b"iou");
            assert_ne!(base, hash(&[1; 32], 1, 1, 5, charge, 1, b"iou"));
            assert_ne!(base, hash(&GENESIS_HASH, 2, 1, 5, charge, 1, b"iou"));
            assert_ne!(base, hash(&GENESIS_HASH, 1, 2, 5, charge, 1, b"iou"));
            assert_ne!(base, hash(&GENESIS_HASH, 1, 1, 6, charge, 1, b"iou"));
            assert_ne!(base, hash(&GENESIS_HASH, 1, 1, 5, charge, 2, b"iou"));
            assert_ne!(base, hash(&GENESIS_HASH, 1, 1, 5, charge, 1, b"iov"));
        }
        assert_ne!(hash(&GENESIS_HASH, 1, 1, 5, Some(7), 1, b"iou"), hash(&GENESIS_HASH, 1, 1, 5, Some(8), 1, b"iou"));
        // A format-2 record never hashes like a format-1 record with the same content.
        assert_ne!(hash(&GENESIS_HASH, 1, 1, 5, None, 1, b"iou"), hash(&GENESIS_HASH, 1, 1, 5, Some(0), 1, b"iou"));
    }

    #[test]
    fn format_1_hashes_are_unchanged() {
        // The value format 1 computed for this record (tag "tally-log-v1", no charge): old
        // ledgers' chains must keep verifying.
        let mut hasher = Sha256::new();
        hasher.update(b"tally-log-v1");
        hasher.update(GENESIS_HASH);
        hasher.update(1u64.to_be_bytes());
        hasher.update(1u64.to_be_bytes());
        hasher.update(5u64.to_be_bytes());
        hasher.update([1u8; 64]);
        hasher.update(b"iou");
        let expected: RecordHash = hasher.finalize().into();
        assert_eq!(link_hash_v1(&GENESIS_HASH, 1, 1, 5, &[1; 64], b"iou"), expected);
    }

    #[test]
    fn commitment_id_round_trips() {
        let id = CommitmentId { seq: 42, hash: [0xab; 32] };
        let text = id.to_string();
        assert_eq!(text, format!("42:{}", "ab".repeat(32)));
        assert_eq!(text.parse::<CommitmentId>(), Ok(id));
        assert!("42".parse::<CommitmentId>().is_err());
        assert!("x:00".parse::<CommitmentId>().is_err());
    }
}

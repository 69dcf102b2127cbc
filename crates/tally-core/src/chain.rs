//! The ledger's hash chain and the commitment identifier.
//!
//! Every record appended to the IOU log carries the hash of the record
//! before it, so rewriting any past record (or reordering, inserting or
//! deleting one) changes every hash after it. A record's hash is
//!
//! ```text
//! SHA-256( "tally-log-v1"            12 bytes, domain tag
//!        || prev_hash                32 bytes (all zero for the first record)
//!        || seq                       8 bytes, u64 big-endian, first record is 1
//!        || epoch                     8 bytes, u64 big-endian
//!        || accepted_at_ms            8 bytes, u64 big-endian, Unix milliseconds
//!        || signature                64 bytes
//!        || evidence                 what the payer signed, as stored: the IOU's
//!                                    signing bytes, or a Web Bot Auth record
//!                                    (see `crate::evidence`) )
//! ```
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

/// Domain tag of the record hash.
pub const LOG_DOMAIN_TAG: &[u8; 12] = b"tally-log-v1";

/// Computes a record's hash from its predecessor's hash and its content.
pub fn link_hash(
    prev_hash: &RecordHash,
    seq: u64,
    epoch: u64,
    accepted_at_ms: u64,
    signature: &SignatureBytes,
    evidence: &[u8],
) -> RecordHash {
    let mut hasher = Sha256::new();
    hasher.update(LOG_DOMAIN_TAG);
    hasher.update(prev_hash);
    hasher.update(seq.to_be_bytes());
    hasher.update(epoch.to_be_bytes());
    hasher.update(accepted_at_ms.to_be_bytes());
    hasher.update(signature);
    hasher.update(evidence);
    hasher.finalize().into()
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

    #[test]
    fn every_input_changes_the_hash() {
        let base = link_hash(&GENESIS_HASH, 1, 1, 5, &[1; 64], b"iou");
        assert_ne!(base, link_hash(&[1; 32], 1, 1, 5, &[1; 64], b"iou"));
        assert_ne!(base, link_hash(&GENESIS_HASH, 2, 1, 5, &[1; 64], b"iou"));
        assert_ne!(base, link_hash(&GENESIS_HASH, 1, 2, 5, &[1; 64], b"iou"));
        assert_ne!(base, link_hash(&GENESIS_HASH, 1, 1, 6, &[1; 64], b"iou"));
        assert_ne!(base, link_hash(&GENESIS_HASH, 1, 1, 5, &[2; 64], b"iou"));
        assert_ne!(base, link_hash(&GENESIS_HASH, 1, 1, 5, &[1; 64], b"iov"));
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

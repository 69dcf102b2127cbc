//! Batch-signed commitments: one signature over a whole batch of IOUs.
//!
//! Verifying one Ed25519 signature per IOU is the first wall of ingest (about 65k per second per
//! core in batches). A crawler that sends IOUs in batches can instead sign one **batch
//! statement**: its key, a per-key batch sequence number, the number of IOUs and the **Merkle
//! root** of their canonical signing bytes. Tally verifies one signature and recomputes one root
//! per batch, and every IOU in it stays individually provable: an **inclusion proof** (the sibling
//! hashes on the path from its leaf to the root) shows that the payer signed that very IOU.
//!
//! ```text
//! batch statement (88 bytes, what the payer signs)
//! offset  size  field
//!      0    12  domain tag, ASCII "tally-bat-v1"
//!     12    32  payer public key
//!     44     8  batch_seq, u64 big-endian (per key; (key, batch_seq) names one batch forever)
//!     52     4  count, u32 big-endian: IOUs in the batch (1..=BATCH_IOUS_MAX)
//!     56    32  root: the Merkle tree hash of the IOUs' signing bytes, in batch order
//! ```
//!
//! The tree is RFC 9162's (Certificate Transparency v2, §2.1.1): a leaf is
//! `SHA-256(0x00 ‖ signing bytes)`, an inner node `SHA-256(0x01 ‖ left ‖ right)`, and a list of
//! `n > 1` leaves splits at the largest power of two smaller than `n`. Inclusion proofs and their
//! verification follow RFC 9162 §2.1.3, so any CT library can check a Tally receipt.
//!
//! A batch member's **evidence** in the log (see [`crate::evidence`]) is
//! `"tally-bam-v1" ‖ batch_seq u64 ‖ index u32 ‖ the IOU's signing bytes`; the batch itself
//! (statement fields, signature and every leaf hash) is stored once, beside the log.

use sha2::{Digest, Sha256};

use crate::iou::PublicKeyBytes;

/// The tag that opens a batch statement.
pub const BATCH_DOMAIN_TAG: &[u8; 12] = b"tally-bat-v1";
/// Length of a batch statement.
pub const STATEMENT_LEN: usize = 12 + 32 + 8 + 4 + 32;
/// Most IOUs one batch statement may cover.
pub const BATCH_IOUS_MAX: usize = 65_536;
/// Longest inclusion proof: the depth of a tree of [`BATCH_IOUS_MAX`] leaves.
pub const PROOF_HASHES_MAX: usize = 16;

/// A Merkle tree hash.
pub type Hash = [u8; 32];

/// What the payer signs for a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchStatement {
    pub payer_key: PublicKeyBytes,
    pub batch_seq: u64,
    pub count: u32,
    pub root: Hash,
}

/// Why bytes are not a batch statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("a batch statement is {STATEMENT_LEN} bytes")]
    BadLength,
    #[error("a batch statement starts with \"tally-bat-v1\"")]
    BadDomainTag,
    #[error("a batch holds 1..={BATCH_IOUS_MAX} IOUs")]
    BadCount,
}

impl BatchStatement {
    /// The 88 signed bytes.
    pub fn to_bytes(&self) -> [u8; STATEMENT_LEN] {
        let mut out = [0u8; STATEMENT_LEN];
        out[..12].copy_from_slice(BATCH_DOMAIN_TAG);
        out[12..44].copy_from_slice(&self.payer_key);
        out[44..52].copy_from_slice(&self.batch_seq.to_be_bytes());
        out[52..56].copy_from_slice(&self.count.to_be_bytes());
        out[56..88].copy_from_slice(&self.root);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<BatchStatement, BatchError> {
        let bytes: &[u8; STATEMENT_LEN] = bytes.try_into().map_err(|_| BatchError::BadLength)?;
        if &bytes[..12] != BATCH_DOMAIN_TAG {
            return Err(BatchError::BadDomainTag);
        }
        let statement = BatchStatement {
            payer_key: bytes[12..44].try_into().expect("32 bytes"),
            batch_seq: u64::from_be_bytes(bytes[44..52].try_into().expect("8 bytes")),
            count: u32::from_be_bytes(bytes[52..56].try_into().expect("4 bytes")),
            root: bytes[56..88].try_into().expect("32 bytes"),
        };
        if statement.count == 0 || statement.count as usize > BATCH_IOUS_MAX {
            return Err(BatchError::BadCount);
        }
        Ok(statement)
    }
}

/// The leaf hash of one IOU: `SHA-256(0x00 ‖ signing bytes)`.
pub fn leaf_hash(signing_bytes: &[u8]) -> Hash {
    Sha256::new().chain_update([0u8]).chain_update(signing_bytes).finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new().chain_update([1u8]).chain_update(left).chain_update(right).finalize().into()
}

/// The largest power of two strictly smaller than `n` (`n > 1`).
fn split_point(n: usize) -> usize {
    debug_assert!(n > 1);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// RFC 9162 Merkle tree hash of `leaves` (leaf hashes). Bottom-up, in place over one buffer:
/// pairing left to right and promoting a lone last node gives exactly the RFC's split rule.
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    assert!(!leaves.is_empty(), "a batch has at least one IOU");
    let mut level: Vec<Hash> = leaves.to_vec();
    while level.len() > 1 {
        let mut next = 0;
        let mut i = 0;
        while i < level.len() {
            level[next] = if i + 1 < level.len() { node_hash(&level[i], &level[i + 1]) } else { level[i] };
            next += 1;
            i += 2;
        }
        level.truncate(next);
    }
    level[0]
}

/// The RFC 9162 inclusion proof (audit path) of leaf `index` among `leaves`, leaf side first.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Vec<Hash> {
    assert!(index < leaves.len(), "the index is inside the tree");
    let mut proof = Vec::new();
    let (mut lo, mut hi, mut at) = (0usize, leaves.len(), index);
    // Descend from the root, remembering each sibling subtree; the proof lists them bottom-up.
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if at < k {
            proof.push(merkle_root(&leaves[lo + k..hi]));
            hi = lo + k;
        } else {
            proof.push(merkle_root(&leaves[lo..lo + k]));
            lo += k;
            at -= k;
        }
    }
    proof.reverse();
    proof
}

/// RFC 9162 §2.1.3.2: whether `proof` shows `leaf` at `index` in a tree of `count` leaves with
/// `root`.
pub fn verify_inclusion(leaf: &Hash, index: u64, count: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= count || proof.len() > PROOF_HASHES_MAX {
        return false;
    }
    let (mut fn_, mut sn) = (index, count - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&(i as u64).to_be_bytes())).collect()
    }

    /// RFC 9162's recursive definition, written out literally, to check the in-place version.
    fn mth(leaves: &[Hash]) -> Hash {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let k = split_point(leaves.len());
        node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
    }

    #[test]
    fn rfc_6962_empty_leaf_and_two_leaf_tree() {
        // The hash of the empty leaf, as in RFC 6962's test data (SHA-256 of a single zero byte).
        assert_eq!(hex::encode(leaf_hash(b"")), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
        let two = leaves(2);
        assert_eq!(merkle_root(&two), node_hash(&two[0], &two[1]));
    }

    #[test]
    fn statements_round_trip_and_refuse_junk() {
        let s = BatchStatement { payer_key: [4; 32], batch_seq: 9, count: 3, root: [5; 32] };
        assert_eq!(BatchStatement::from_bytes(&s.to_bytes()), Ok(s.clone()));
        assert_eq!(BatchStatement::from_bytes(&s.to_bytes()[1..]), Err(BatchError::BadLength));
        let mut bad = s.to_bytes();
        bad[0] ^= 1;
        assert_eq!(BatchStatement::from_bytes(&bad), Err(BatchError::BadDomainTag));
        let zero = BatchStatement { count: 0, ..s };
        assert_eq!(BatchStatement::from_bytes(&zero.to_bytes()), Err(BatchError::BadCount));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn root_matches_the_recursive_definition_and_every_proof_verifies(n in 1usize..200) {
            let l = leaves(n);
            let root = merkle_root(&l);
            prop_assert_eq!(root, mth(&l));
            for i in 0..n {
                let proof = inclusion_proof(&l, i);
                prop_assert!(verify_inclusion(&l[i], i as u64, n as u64, &proof, &root));
                // The same proof does not work for another leaf, index or size.
                let other = leaf_hash(b"not in the tree");
                prop_assert!(!verify_inclusion(&other, i as u64, n as u64, &proof, &root));
                if n > 1 {
                    prop_assert!(!verify_inclusion(&l[i], ((i + 1) % n) as u64, n as u64, &proof, &root));
                }
            }
        }
    }
}

//! Property checks for hostile input, shared by the cargo-fuzz targets in `fuzz/` and by the
//! regression tests that replay their corpora under `cargo test`.
//!
//! Each function takes arbitrary bytes, exactly as libFuzzer hands them over. Bad input must come
//! back as a typed error, never a panic; a panic here therefore means either the code under test
//! panicked, or one of the properties asserted below does not hold. Keeping the checks in the crate
//! (rather than in the fuzz targets) lets a crashing input found by the fuzzer be replayed on stable
//! Rust, in the ordinary test suite, through the very same code.
//!
//! Not part of Tally's API: hidden from the documentation and free to change.

use crate::iou::{DOMAIN_TAG, FIXED_HEAD_LEN, Iou, IouError, SIGNING_BYTES_LEN_MAX, ValidityPolicy};
use crate::verify::parse_registration_key;

/// The IOU decoder (`Iou::from_signing_bytes`), the ledger's only encoding of an IOU.
///
/// Properties: decoding never panics; whatever decodes has a valid shape and re-encodes to exactly
/// the input (one IOU, one byte string: the bytes hashed and signed are the bytes kept); short or
/// mistagged input is refused with the matching error; the timestamp and key checks a decoded IOU
/// goes through next never panic either.
pub fn iou_decode(data: &[u8]) {
    let decoded = Iou::from_signing_bytes(data);
    if data.len() < DOMAIN_TAG.len() {
        assert_eq!(decoded, Err(IouError::Truncated), "input shorter than the domain tag");
        return;
    }
    if &data[..DOMAIN_TAG.len()] != DOMAIN_TAG {
        assert_eq!(decoded, Err(IouError::BadDomainTag), "input without the domain tag");
        return;
    }
    let iou = match decoded {
        Ok(iou) => iou,
        Err(error) => {
            // Nothing but lengths is read before the network's length byte, so input that stops
            // before it can only be truncated.
            if data.len() <= FIXED_HEAD_LEN {
                assert_eq!(error, IouError::Truncated, "input no longer than the fixed head");
            }
            return;
        }
    };
    assert_eq!(iou.check_shape(), Ok(()), "a decoded IOU has a valid shape");
    assert!(data.len() <= SIGNING_BYTES_LEN_MAX, "decoded {} bytes, more than the maximum", data.len());
    assert_eq!(iou.signing_bytes(), data, "decode then encode gives back the same bytes");
    assert_eq!(Iou::from_signing_bytes(&iou.signing_bytes()), Ok(iou.clone()), "encode then decode");

    // What ingest does with a decoded IOU next: the validity window at any clock, and the key.
    let policy = ValidityPolicy::default();
    let extremes = [0, iou.issued_at_s, iou.expires_at_s, iou.issued_at_s.wrapping_sub(1), u64::MAX];
    for now_s in extremes {
        if policy.check(&iou, now_s).is_ok() {
            assert!(iou.issued_at_s < iou.expires_at_s && now_s < iou.expires_at_s, "window accepted at {now_s}");
        }
    }
    let _ = parse_registration_key(&iou.payer_key);
}

/// The evidence and batch decoders: [`crate::evidence::parse_evidence`] (every form, the Web Bot
/// Auth derivation rule included), [`crate::evidence::evidence_iou_bytes`],
/// [`crate::batch::BatchStatement::from_bytes`], and RFC 9162 inclusion proofs.
///
/// Properties: nothing panics; parsed evidence's IOU bytes, found without derivation, are exactly the
/// parsed IOU's signing bytes, and its signed message is a suffix of it; a statement that parses
/// re-encodes to the input; any bytes read as a signature base yield an IOU or a typed error; over a
/// tree built from the input, every leaf's proof verifies and no other leaf's does.
pub fn evidence_decode(data: &[u8]) {
    use crate::batch::{BatchStatement, inclusion_proof, leaf_hash, merkle_root, verify_inclusion};
    use crate::evidence::{derive_web_bot_auth_iou, evidence_iou_bytes, parse_evidence, signature_base_value};

    if let Ok(evidence) = parse_evidence(data) {
        let iou_bytes = evidence_iou_bytes(data).expect("parsed evidence has IOU bytes");
        assert_eq!(iou_bytes, &evidence.iou.signing_bytes()[..], "IOU bytes found without derivation");
        if let Some(message) = evidence.signed_message() {
            assert!(data.ends_with(message), "the signed message is a suffix of the evidence");
        }
    }
    if let Ok(statement) = BatchStatement::from_bytes(data) {
        assert_eq!(&statement.to_bytes()[..], data, "a statement re-encodes to its bytes");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = derive_web_bot_auth_iou(text, &[9; 32]);
        let _ = signature_base_value(text, "payment-signature");
    }
    // A tree over the input's 8-byte chunks (at most 40 leaves).
    let leaves: Vec<[u8; 32]> = data.chunks(8).take(40).map(leaf_hash).collect();
    if !leaves.is_empty() {
        let root = merkle_root(&leaves);
        let count = leaves.len() as u64;
        for (index, leaf) in leaves.iter().enumerate() {
            let proof = inclusion_proof(&leaves, index);
            assert!(verify_inclusion(leaf, index as u64, count, &proof, &root), "leaf {index} of {count}");
            let other = leaf_hash(b"not a leaf of this tree");
            if !leaves.contains(&other) {
                assert!(!verify_inclusion(&other, index as u64, count, &proof, &root), "a foreign leaf");
            }
        }
        // Arbitrary proofs from the input never panic.
        let proof: Vec<[u8; 32]> = data.chunks_exact(32).take(20).map(|c| c.try_into().expect("32 bytes")).collect();
        let index = u64::from(data[0]);
        let _ = verify_inclusion(&leaves[0], index, count.max(index), &proof, &root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_iou_passes_and_damage_is_refused_without_panic() {
        let iou = Iou {
            network: "tally:local".into(),
            payer_key: [7; 32],
            payee: "news.example".into(),
            asset: "USD".into(),
            amount: 1_000,
            nonce: [9; 16],
            issued_at_s: 1_700_000_000,
            expires_at_s: 1_700_000_600,
            resource: "https://news.example/a/1".into(),
        };
        let bytes = iou.signing_bytes();
        iou_decode(&bytes);
        for len in 0..bytes.len() {
            iou_decode(&bytes[..len]);
        }
        let mut flipped = bytes.clone();
        flipped[FIXED_HEAD_LEN] = 0xff;
        iou_decode(&flipped);
    }
}

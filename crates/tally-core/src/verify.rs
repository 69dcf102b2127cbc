//! Ed25519 verification: keys at registration, signatures on the hot path.
//!
//! **The validity rule.** An IOU signature `(R, s)` under key `A` over
//! message `M` is valid when `s` is canonical (`s < ℓ`), `R` and `A` decode
//! to curve points, and the *cofactored* equation holds:
//! `[8]([s]B − [k]A − R) = 0` with `k = SHA-512(R ‖ A ‖ M) mod ℓ`.
//! Every signature an RFC 8032 signer produces satisfies it.
//!
//! **Why cofactored, and why it makes batching exact.** ed25519-dalek's batch
//! verifier checks `Σ zᵢ([sᵢ]B − [kᵢ]Aᵢ − Rᵢ) = 0` with random 128-bit `zᵢ`
//! and no cofactor. If any term has a component of large order, the sum
//! vanishes with probability about 2⁻¹²⁸, so a passing batch means every
//! term is of small order: every signature satisfies the cofactored rule.
//! A term that is small-order but non-zero (a signature crafted with a
//! torsion component in `R`) may make a batch fail by chance; the fallback
//! then decides each signature with [`verify_one`], the exact cofactored
//! check. So the verdict on a signature never depends on which other
//! signatures shared its batch, and `tally ledger verify` re-derives exactly
//! the verdicts ingest gave. A cofactorless single check (`verify_strict`)
//! would not: a payer could craft signatures that a lucky batch accepts and
//! a later audit rejects, and repudiate IOUs it had been served for.
//!
//! **Weak keys.** Under a small-order public key anyone can forge
//! signatures. [`parse_registration_key`] refuses such keys, and only
//! registered keys ever reach verification.
//!
//! **Batches.** [`verify_many`] checks a whole slice in one multiscalar
//! multiplication (~3x cheaper per signature than one at a time). When the
//! batch fails it re-checks fixed-size chunks and then single signatures in
//! the failing chunks, so the cost of finding bad signatures is bounded by
//! the chunk size rather than growing with the batch.

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};

use crate::iou::{PublicKeyBytes, SignatureBytes};

/// When a batch fails, it is re-verified in chunks of this many signatures
/// before falling back to single verification inside failing chunks.
pub const FALLBACK_CHUNK_LEN: usize = 32;

/// Why a key was refused at registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("bytes are not a valid compressed Edwards point")]
    NotAPoint,
    #[error("key has small order: signatures under it can be forged")]
    WeakKey,
    #[error("key is not the canonical encoding of its point")]
    NonCanonical,
}

/// Decodes a public key for registration, refusing invalid and weak ones.
pub fn parse_registration_key(bytes: &PublicKeyBytes) -> Result<VerifyingKey, KeyError> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::NotAPoint)?;
    if key.is_weak() {
        return Err(KeyError::WeakKey);
    }
    // Several byte strings decode to the same point (y ≥ p, or x = 0 with the sign bit set). One
    // payer key must have one spelling, or the key index, JWK thumbprints and replay index could be
    // split across aliases of the same key.
    if key.to_edwards().compress().to_bytes() != *bytes {
        return Err(KeyError::NonCanonical);
    }
    Ok(key)
}

/// One signature to check: key, message, signature.
pub struct VerifyItem<'a> {
    pub key: &'a VerifyingKey,
    pub message: &'a [u8],
    pub signature: &'a SignatureBytes,
}

/// Verifies one signature under the cofactored validity rule above, exactly.
pub fn verify_one(item: &VerifyItem<'_>) -> bool {
    let (r_bytes, s_bytes) = item.signature.split_at(32);
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes.try_into().expect("32 bytes"))) else {
        return false;
    };
    let Some(r) = CompressedEdwardsY(r_bytes.try_into().expect("32 bytes")).decompress() else {
        return false;
    };
    let Some(a) = CompressedEdwardsY(item.key.to_bytes()).decompress() else {
        return false;
    };
    let mut hasher = Sha512::new();
    hasher.update(r_bytes);
    hasher.update(item.key.as_bytes());
    hasher.update(item.message);
    let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
    // [s]B - [k]A - R, then clear the cofactor.
    let difference = curve25519_dalek::EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-a, &s) - r;
    difference.mul_by_cofactor().is_identity()
}

/// Whether `s` is canonical (< ℓ). Checked before batching, so that the
/// batch and the single check agree on non-canonical encodings too.
fn has_canonical_s(signature: &SignatureBytes) -> bool {
    let s: [u8; 32] = signature[32..].try_into().expect("32 bytes");
    bool::from(Scalar::from_canonical_bytes(s).is_some())
}

/// Verifies every item; `result[i]` says whether `items[i]` is valid.
pub fn verify_many(items: &[VerifyItem<'_>]) -> Vec<bool> {
    if items.is_empty() {
        return Vec::new();
    }
    if items.iter().all(|item| has_canonical_s(item.signature)) && batch_ok(items) {
        return vec![true; items.len()];
    }
    let mut valid = Vec::with_capacity(items.len());
    for chunk in items.chunks(FALLBACK_CHUNK_LEN) {
        if chunk.len() > 1 && chunk.iter().all(|item| has_canonical_s(item.signature)) && batch_ok(chunk) {
            valid.extend(std::iter::repeat_n(true, chunk.len()));
        } else {
            valid.extend(chunk.iter().map(verify_one));
        }
    }
    debug_assert_eq!(valid.len(), items.len());
    valid
}

fn batch_ok(items: &[VerifyItem<'_>]) -> bool {
    let messages: Vec<&[u8]> = items.iter().map(|item| item.message).collect();
    let signatures: Vec<Signature> = items.iter().map(|item| Signature::from_bytes(item.signature)).collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|item| *item.key).collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn refuses_weak_and_invalid_keys() {
        // The identity point (y = 1) has order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(parse_registration_key(&identity), Err(KeyError::WeakKey));
        // A point of order 2: y = -1.
        let mut order_two = [0xffu8; 32];
        order_two[0] = 0xec;
        order_two[31] = 0x7f;
        assert_eq!(parse_registration_key(&order_two), Err(KeyError::WeakKey));
        // y = 2 is not on the curve.
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        assert_eq!(parse_registration_key(&off_curve), Err(KeyError::NotAPoint));
        assert!(parse_registration_key(&key(1).verifying_key().to_bytes()).is_ok());
    }

    #[test]
    fn batch_finds_exactly_the_bad_signatures() {
        let signers: Vec<SigningKey> = (1..=5).map(key).collect();
        let verifying: Vec<VerifyingKey> = signers.iter().map(|s| s.verifying_key()).collect();
        let messages: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut signatures: Vec<SignatureBytes> =
            messages.iter().enumerate().map(|(i, m)| signers[i % 5].sign(m).to_bytes()).collect();
        signatures[3][0] ^= 1; // corrupt R
        signatures[70][40] ^= 1; // corrupt s
        let items: Vec<VerifyItem> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| VerifyItem { key: &verifying[i % 5], message: m, signature: &signatures[i] })
            .collect();
        let valid = verify_many(&items);
        for (i, ok) in valid.iter().enumerate() {
            assert_eq!(*ok, i != 3 && i != 70, "item {i}");
        }
        assert!(verify_many(&items[4..60]).iter().all(|ok| *ok));
        assert!(verify_many(&[]).is_empty());
    }

    #[test]
    fn torsion_crafted_signatures_get_the_same_verdict_alone_and_in_any_batch() {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
        // A signer who knows its secret scalar adds a small-order point T to
        // R: the cofactored equation still holds, the cofactorless one does
        // not. Such signatures must be valid everywhere, or nowhere.
        let signer = key(3);
        let public = signer.verifying_key();
        let a_scalar = signer.to_scalar();
        let honest: Vec<Vec<u8>> = (0..40u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let honest_sigs: Vec<SignatureBytes> = honest.iter().map(|m| signer.sign(m).to_bytes()).collect();
        for (t, torsion) in EIGHT_TORSION.iter().enumerate().skip(1) {
            let message = format!("crafted {t}").into_bytes();
            let r_scalar = Scalar::from(1_000u64 + t as u64);
            let r = (ED25519_BASEPOINT_POINT * r_scalar + torsion).compress();
            let mut hasher = Sha512::new();
            hasher.update(r.as_bytes());
            hasher.update(public.as_bytes());
            hasher.update(&message);
            let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
            let s = r_scalar + k * a_scalar;
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(r.as_bytes());
            signature[32..].copy_from_slice(s.as_bytes());
            let crafted = VerifyItem { key: &public, message: &message, signature: &signature };
            assert!(verify_one(&crafted), "torsion {t}: the cofactored rule accepts it");
            for neighbours in [0usize, 1, 7, 40] {
                let mut items: Vec<VerifyItem> = honest[..neighbours]
                    .iter()
                    .zip(&honest_sigs)
                    .map(|(m, sig)| VerifyItem { key: &public, message: m, signature: sig })
                    .collect();
                items.push(VerifyItem { key: &public, message: &message, signature: &signature });
                assert!(verify_many(&items).iter().all(|ok| *ok), "torsion {t} with {neighbours} neighbours");
            }
        }
    }

    #[test]
    fn non_canonical_s_is_refused_alone_and_in_batches() {
        let signer = key(4);
        let public = signer.verifying_key();
        let message = b"iou";
        let mut signature = signer.sign(message).to_bytes();
        // s + l encodes the same scalar non-canonically.
        let s = Scalar::from_bytes_mod_order(signature[32..].try_into().unwrap());
        // ℓ = 2^252 + 27742317777372353535851937790883648493, little-endian.
        let mut l_bytes = [0u8; 32];
        hex::decode_to_slice("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010", &mut l_bytes).unwrap();
        let mut carry = 0u16;
        let s_bytes = s.to_bytes();
        for i in 0..32 {
            let sum = u16::from(s_bytes[i]) + u16::from(l_bytes[i]) + carry;
            signature[32 + i] = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0, "s + l < 2^254 always fits 32 bytes");
        let item = VerifyItem { key: &public, message, signature: &signature };
        assert!(!verify_one(&item));
        assert_eq!(verify_many(&[item]), vec![false]);
    }

    #[test]
    fn a_signature_by_another_key_fails() {
        let message = b"tally";
        let signature = key(1).sign(message).to_bytes();
        let other = key(2).verifying_key();
        assert!(!verify_one(&VerifyItem { key: &other, message, signature: &signature }));
    }
}

//! Ed25519 verification: keys at registration, signatures on the hot path.
//!
//! **The validity rule.** An IOU signature `(R, s)` under key `A` over
//! message `M` is valid when `s` is canonical (`s < ℓ`), `R` is the canonical
//! encoding of a curve point (RFC 8032 §5.1.3: `y < p`, no sign bit on
//! `x = 0`), `A` is a registered key, and the *cofactored* equation holds:
//! `[8]([s]B − [k]A − R) = 0` with `k = SHA-512(R ‖ A ‖ M) mod ℓ`.
//! Every signature an RFC 8032 signer produces satisfies it.
//!
//! **Why cofactored, and why it makes batching exact.** A batch of `n`
//! signatures passes when `[8] Σ zᵢ([sᵢ]B − [kᵢ]Aᵢ − Rᵢ) = 0` for 128-bit
//! coefficients `zᵢ` the signer cannot predict. If every signature is valid,
//! every term is a small-order point and the cofactor clears the sum. If any
//! term has a component of large order, the sum survives the cofactor except
//! with probability about 2⁻¹²⁸. So a batch passes exactly when every one of
//! its signatures satisfies the single rule, and the verdict on a signature
//! never depends on which other signatures shared its batch: `tally ledger
//! verify` re-derives exactly the verdicts ingest gave. A cofactorless single
//! check (`verify_strict`) would not: a payer could craft signatures (with a
//! torsion component in `R`) that a lucky batch accepts and a later audit
//! rejects, and repudiate IOUs it had been served for.
//!
//! **Why Tally builds the batch equation itself.** ed25519-dalek's
//! `verify_batch` puts every signature's key into the multiscalar
//! multiplication (`2n + 1` points). A crawler signs thousands of IOUs with one
//! key, so the terms of one key are gathered first: `Σᵢ [zᵢkᵢ]A` becomes
//! `[Σᵢ zᵢkᵢ]A`, and a batch of `n` signatures by `m` keys multiplies
//! `n + m + 1` points, about half as many. The coefficients `zᵢ` are drawn
//! from SHA-512 over every `(R, A, M, s)` of the batch (as ed25519-dalek
//! does, but without its STROBE transcript, which cost a tenth of the check):
//! they are fixed only once every input is, so a signer cannot choose
//! signatures that cancel, and verification needs no randomness from the
//! operating system. `benches/verify.rs` measures both side by side.
//!
//! **Weak keys.** Under a small-order public key anyone can forge
//! signatures. [`parse_registration_key`] refuses such keys, and only
//! registered keys ever reach verification.
//!
//! **Batches.** [`verify_many`] checks a whole slice in one multiscalar
//! multiplication (~4.5x cheaper per signature than one at a time for 1,024
//! signatures by 16 keys; 1.5x cheaper than ed25519-dalek's `verify_batch`
//! on the same signatures, see `benches/verify.rs`). When the
//! batch fails it re-checks fixed-size chunks and then single signatures in
//! the failing chunks, so the cost of finding bad signatures is bounded by
//! the chunk size rather than growing with the batch.

use std::collections::HashMap;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::VerifyingKey;
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
    #[error("key has a small-order (torsion) component: it is not a point an Ed25519 signer produces")]
    TorsionComponent,
}

/// Decodes a public key for registration, refusing invalid and weak ones.
pub fn parse_registration_key(bytes: &PublicKeyBytes) -> Result<VerifyingKey, KeyError> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::NotAPoint)?;
    if key.is_weak() {
        return Err(KeyError::WeakKey);
    }
    // A key A + T (T of small order) is not weak, yet under the cofactored rule it
    // verifies the same signatures as A, while cofactorless checkers (most Ed25519
    // libraries) disagree with each other about them. No RFC 8032 signer produces
    // such a key, so refusing it costs nothing and keeps every verifier in agreement.
    if !key.to_edwards().is_torsion_free() {
        return Err(KeyError::TorsionComponent);
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
    if !has_canonical_encoding(item.signature) {
        return false;
    }
    let (r_bytes, s_bytes) = item.signature.split_at(32);
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes.try_into().expect("32 bytes"))) else {
        return false;
    };
    let Some(r) = CompressedEdwardsY(r_bytes.try_into().expect("32 bytes")).decompress() else {
        return false;
    };
    // A `VerifyingKey` holds its point already decompressed (a third of the cost of one check).
    let a = item.key.to_edwards();
    let mut hasher = Sha512::new();
    hasher.update(r_bytes);
    hasher.update(item.key.as_bytes());
    hasher.update(item.message);
    let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
    // [s]B - [k]A - R, then clear the cofactor.
    let difference = curve25519_dalek::EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-a, &s) - r;
    difference.mul_by_cofactor().is_identity()
}

/// The field prime p = 2²⁵⁵ − 19, little-endian.
const FIELD_PRIME_LE: [u8; 32] = {
    let mut p = [0xff; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// Whether 32 bytes are the one canonical encoding of a point's y and x-sign
/// (RFC 8032 §5.1.3): y < p, and no sign bit on x = 0 (the points y = ±1).
/// curve25519-dalek's `decompress` accepts the other spellings; a second
/// spelling of R would let two byte strings be "the same" signature and let a
/// strict checker disagree with the engine. Byte comparisons only: no field
/// arithmetic on the hot path.
fn is_canonical_point(bytes: &[u8; 32]) -> bool {
    let mut y = *bytes;
    let sign = y[31] >> 7 == 1;
    y[31] &= 0x7f;
    // y < p, comparing little-endian from the most significant byte.
    let below_p = y.iter().rev().zip(FIELD_PRIME_LE.iter().rev()).find(|(a, b)| a != b).is_some_and(|(a, b)| a < b);
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut minus_one = FIELD_PRIME_LE;
    minus_one[0] -= 1;
    below_p && !(sign && (y == one || y == minus_one))
}

/// Whether `s` is canonical (< ℓ) and `R` is canonically encoded. Checked
/// before batching, so that the batch and the single check agree on
/// non-canonical encodings too.
fn has_canonical_encoding(signature: &SignatureBytes) -> bool {
    let s: [u8; 32] = signature[32..].try_into().expect("32 bytes");
    let r: [u8; 32] = signature[..32].try_into().expect("32 bytes");
    bool::from(Scalar::from_canonical_bytes(s).is_some()) && is_canonical_point(&r)
}

/// Verifies every item; `result[i]` says whether `items[i]` is valid.
pub fn verify_many(items: &[VerifyItem<'_>]) -> Vec<bool> {
    if items.is_empty() {
        return Vec::new();
    }
    if items.iter().all(|item| has_canonical_encoding(item.signature)) && batch_ok(items) {
        return vec![true; items.len()];
    }
    let mut valid = Vec::with_capacity(items.len());
    for chunk in items.chunks(FALLBACK_CHUNK_LEN) {
        if chunk.len() > 1 && chunk.iter().all(|item| has_canonical_encoding(item.signature)) && batch_ok(chunk) {
            valid.extend(std::iter::repeat_n(true, chunk.len()));
        } else {
            valid.extend(chunk.iter().map(verify_one));
        }
    }
    debug_assert_eq!(valid.len(), items.len());
    valid
}

/// Domain tag of the hash the batch coefficients `zᵢ` are drawn from.
const BATCH_COEFFICIENTS_TAG: &[u8] = b"tally batch verification v1";

/// `k = SHA-512(R ‖ A ‖ M)`, unreduced: the coefficient hash also absorbs it.
fn challenge_hash(item: &VerifyItem<'_>) -> [u8; 64] {
    let mut hasher = Sha512::new();
    hasher.update(&item.signature[..32]);
    hasher.update(item.key.as_bytes());
    hasher.update(item.message);
    hasher.finalize().into()
}

/// Whether the cofactored batch equation holds for every item at once (see
/// the module docs). The caller has checked that every `s` is canonical.
fn batch_ok(items: &[VerifyItem<'_>]) -> bool {
    debug_assert!(items.iter().all(|item| has_canonical_encoding(item.signature)));
    let challenges: Vec<[u8; 64]> = items.iter().map(challenge_hash).collect();

    // Coefficients: 128 bits each, from a hash over every input of the batch.
    let mut transcript = Sha512::new();
    transcript.update(BATCH_COEFFICIENTS_TAG);
    transcript.update((items.len() as u64).to_le_bytes());
    for (item, challenge) in items.iter().zip(&challenges) {
        transcript.update(challenge);
        transcript.update(&item.signature[32..]);
    }
    let seed = transcript.finalize();
    let mut coefficients: Vec<Scalar> = Vec::with_capacity(items.len());
    for block in 0..items.len().div_ceil(4) as u64 {
        let mut expand = Sha512::new();
        expand.update(seed);
        expand.update(block.to_le_bytes());
        let wide = expand.finalize();
        for quarter in wide.chunks_exact(16) {
            if coefficients.len() == items.len() {
                break;
            }
            coefficients.push(Scalar::from(u128::from_le_bytes(quarter.try_into().expect("16 bytes"))));
        }
    }
    debug_assert_eq!(coefficients.len(), items.len());

    // Points: B, then every R, then each distinct key once.
    let mut scalars: Vec<Scalar> = Vec::with_capacity(items.len() + 1);
    let mut points: Vec<EdwardsPoint> = Vec::with_capacity(items.len() + 1);
    scalars.push(Scalar::ZERO);
    points.push(ED25519_BASEPOINT_POINT);
    let mut basepoint_coefficient = Scalar::ZERO;
    let mut key_slots: HashMap<[u8; 32], usize> = HashMap::new();
    let mut key_coefficients: Vec<Scalar> = Vec::new();
    let mut key_points: Vec<EdwardsPoint> = Vec::new();
    for ((item, challenge), z) in items.iter().zip(&challenges).zip(&coefficients) {
        let Some(r) = CompressedEdwardsY(item.signature[..32].try_into().expect("32 bytes")).decompress() else {
            return false;
        };
        let s = Scalar::from_bytes_mod_order(item.signature[32..].try_into().expect("32 bytes"));
        let k = Scalar::from_bytes_mod_order_wide(challenge);
        basepoint_coefficient += z * s;
        scalars.push(*z);
        points.push(r);
        let slot = *key_slots.entry(*item.key.as_bytes()).or_insert_with(|| {
            key_coefficients.push(Scalar::ZERO);
            key_points.push(item.key.to_edwards());
            key_points.len() - 1
        });
        key_coefficients[slot] += z * k;
    }
    // Σ zᵢ([sᵢ]B − [kᵢ]Aᵢ − Rᵢ) = 0  ⇔  [−Σ zᵢsᵢ]B + Σ [zᵢ]Rᵢ + Σ_A [Σ zᵢkᵢ]A = 0.
    scalars[0] = -basepoint_coefficient;
    scalars.extend(key_coefficients);
    points.extend(key_points);
    debug_assert_eq!(scalars.len(), points.len());
    EdwardsPoint::vartime_multiscalar_mul(&scalars, &points).mul_by_cofactor().is_identity()
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
    fn non_canonical_r_encodings_are_refused_alone_and_in_batches() {
        // A signature whose R is the identity (r = 0): s = k·a. Valid with the canonical
        // encoding of R; each other spelling of the same point is refused, alone and batched.
        let signing = key(9);
        let a = signing.to_scalar();
        let public = signing.verifying_key();
        let message = b"non-canonical R";
        let signature_with = |r_bytes: [u8; 32]| {
            let mut hasher = Sha512::new();
            hasher.update(r_bytes);
            hasher.update(public.as_bytes());
            hasher.update(message);
            let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(&r_bytes);
            signature[32..].copy_from_slice((k * a).as_bytes());
            signature
        };
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let canonical = signature_with(identity);
        assert!(verify_one(&VerifyItem { key: &public, message, signature: &canonical }));
        let mut signed_zero_x = identity;
        signed_zero_x[31] |= 0x80;
        let mut y_plus_p = FIELD_PRIME_LE;
        y_plus_p[0] += 1; // p + 1 ≡ 1
        for spelling in [signed_zero_x, y_plus_p] {
            let forged = signature_with(spelling);
            let item = VerifyItem { key: &public, message, signature: &forged };
            assert!(!verify_one(&item), "{}", hex::encode(spelling));
            let honest = signing.sign(b"honest").to_bytes();
            let batch = [VerifyItem { key: &public, message: b"honest", signature: &honest }, item];
            assert_eq!(verify_many(&batch), vec![true, false]);
        }
        assert!(is_canonical_point(&public.to_bytes()));
    }

    #[test]
    fn refuses_keys_with_a_torsion_component() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        let honest = key(3).verifying_key().to_edwards();
        for torsion in &EIGHT_TORSION[1..] {
            let mixed = (honest + torsion).compress().to_bytes();
            assert_eq!(parse_registration_key(&mixed), Err(KeyError::TorsionComponent));
        }
        assert!(parse_registration_key(&honest.compress().to_bytes()).is_ok());
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// The batch gathers each key's terms into one point; whatever mix of
        /// keys and corruptions a batch holds, its verdicts are exactly the
        /// single checks'.
        #[test]
        fn batch_verdicts_equal_single_verdicts(
            payers in 1usize..5,
            corruptions in proptest::collection::vec((0usize..48, 0u8..4), 0..4),
            len in 1usize..48,
        ) {
            let signers: Vec<SigningKey> = (0..payers).map(|p| key(10 + p as u8)).collect();
            let verifying: Vec<VerifyingKey> = signers.iter().map(|s| s.verifying_key()).collect();
            let mut messages: Vec<Vec<u8>> = (0..len).map(|i| format!("iou {i}").into_bytes()).collect();
            let mut signatures: Vec<SignatureBytes> =
                messages.iter().enumerate().map(|(i, m)| signers[i % payers].sign(m).to_bytes()).collect();
            let mut signer: Vec<usize> = (0..len).map(|i| i % payers).collect();
            for (index, kind) in corruptions {
                let i = index % len;
                match kind {
                    0 => signatures[i][5] ^= 0x10,             // R
                    1 => signatures[i][33] ^= 0x01,            // s
                    2 => messages[i].push(b'!'),               // the signed bytes
                    _ => signer[i] = (signer[i] + 1) % payers, // the key (a no-op with one payer)
                }
            }
            let items: Vec<VerifyItem> = (0..len)
                .map(|i| VerifyItem { key: &verifying[signer[i]], message: &messages[i], signature: &signatures[i] })
                .collect();
            let single: Vec<bool> = items.iter().map(verify_one).collect();
            // Not only the verdicts: an all-valid batch passes in one equation, with no fallback.
            if single.iter().all(|ok| *ok) {
                proptest::prop_assert!(batch_ok(&items));
            }
            proptest::prop_assert_eq!(verify_many(&items), single);
        }
    }

    #[test]
    fn a_signature_by_another_key_fails() {
        let message = b"tally";
        let signature = key(1).sign(message).to_bytes();
        let other = key(2).verifying_key();
        assert!(!verify_one(&VerifyItem { key: &other, message, signature: &signature }));
    }
}

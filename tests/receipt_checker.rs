//! The receipt checker Tally ships for payees and auditors,
//! `scripts/interop/verify_receipt.py`, against a real engine: it must apply
//! the engine's own signature rule, the *cofactored* Ed25519 equation
//! `[8]([s]B − [k]A − R) = 0` (crates/tally-core/src/verify.rs), not the
//! cofactorless one most libraries implement.
//!
//! - An ordinary RFC 8032 signature: accepted, served by `GetReceipt`, OK.
//! - A signature whose `R` carries a point of order 8: the engine accepts it
//!   (cofactored), the checker agrees, and ed25519-dalek's cofactorless
//!   `verify_strict` refuses it, so the case really separates the two rules.
//! - The same for a batch statement's signature (`tally-batch-v1` receipts,
//!   with an inclusion proof).
//! - A bit flipped in the signature or in the signed bytes, or `s` replaced
//!   by the non-canonical `s + ℓ`: the checker refuses (and the engine refuses
//!   the non-canonical `s` too).

mod common;

use std::io::Write as _;
use std::ops::{Add, Mul};
use std::process::{Command, Stdio};

use common::*;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde_json::Value;
use sha2::{Digest as _, Sha512};
use tally_core::Iou;
use tally_core::batch::{BatchStatement, leaf_hash, merkle_root};
use tally_ingest::proto::query_client::QueryClient;
use tally_ingest::proto::{self, GetIouRequest, IouCode, SubmitBatchRequest, SubmitSignedBatchRequest};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const PAYEE: &str = "site-a.example";

/// The base point B (RFC 8032, section 5.1), compressed.
const BASE_POINT: [u8; 32] = [
    0x58, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
    0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
];

/// The neutral element (0, 1), compressed.
const IDENTITY: [u8; 32] = {
    let mut bytes = [0u8; 32];
    bytes[0] = 1;
    bytes
};

/// A point of order 8 on Edwards25519, compressed (one of the curve's eight
/// torsion points; the test checks its order rather than trusting this).
const ORDER_8_POINT: &str = "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05";

/// ℓ, the order of B, little-endian.
const ELL: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

type AdminQuery = QueryClient<InterceptedService<Channel, TokenInterceptor>>;

/// An in-process engine with crawler-1 (key `signer(1)`) and the two payees,
/// and a Query client carrying the admin token.
async fn engine() -> (InProcess, Clients, AdminQuery) {
    let engine = InProcess::start().await;
    let mut c = clients(&engine.addr).await;
    register_basics(&mut c.admin, 1, 1_000_000).await;
    let query = QueryClient::with_interceptor(connect(&engine.addr).await, TokenInterceptor(TOKEN.into()));
    (engine, c, query)
}

fn iou(key: &SigningKey, amount: u64, nonce: [u8; 16]) -> Iou {
    let now = now_s();
    Iou {
        network: NETWORK.into(),
        payer_key: key.verifying_key().to_bytes(),
        payee: PAYEE.into(),
        asset: "USD".into(),
        amount,
        nonce,
        issued_at_s: now,
        expires_at_s: now + 600,
        resource: format!("https://{PAYEE}/receipts"),
    }
}

/// Submits one IOU with `signature` and returns the engine's verdict.
async fn submit(c: &mut Clients, iou: &Iou, signature: [u8; 64], batch_id: u64) -> IouCode {
    let wire = tally_ingest::convert::iou_to_proto(&tally_core::SignedIou { iou: iou.clone(), signature });
    let answer = c.ingest.submit_batch(SubmitBatchRequest { batch_id, ious: vec![wire] }).await.unwrap().into_inner();
    assert_eq!(answer.results.len(), 1);
    answer.results[0].code()
}

async fn get_receipt(query: &mut AdminQuery, iou: &Iou) -> proto::Receipt {
    let request = GetIouRequest { payer_key: iou.payer_key.to_vec(), nonce: iou.nonce.to_vec() };
    let receipt = query.get_receipt(request).await.unwrap().into_inner();
    assert!(receipt.found, "the engine has a receipt for the accepted IOU");
    receipt
}

/// The receipt as `tally receipt` prints it (src/finance.rs), the checker's input.
fn receipt_json(receipt: &proto::Receipt) -> Value {
    serde_json::json!({
        "commitment": receipt.commitment.as_ref().map(|c| format!("{}:{}", c.seq, hex::encode(&c.hash))),
        "epoch": receipt.epoch,
        "charged": receipt.charged,
        "evidence_format": receipt.evidence_format,
        "iou_signing_bytes": hex::encode(&receipt.iou_signing_bytes),
        "signature": hex::encode(&receipt.signature),
        "signed_message": hex::encode(&receipt.signed_message),
        "batch_statement": hex::encode(&receipt.batch_statement),
        "leaf_index": receipt.leaf_index,
        "inclusion_proof": receipt.inclusion_proof.iter().map(hex::encode).collect::<Vec<_>>(),
    })
}

/// `tally receipt` against the in-process engine: the JSON a payee pipes into
/// the checker must carry what `GetReceipt` served, and Tally's own check passes.
async fn tally_receipt_agrees(addr: &str, iou: &Iou, expected: &Value) {
    let args = vec![
        "receipt".to_owned(),
        "--payer-key".to_owned(),
        hex::encode(iou.payer_key),
        "--nonce".to_owned(),
        hex::encode(iou.nonce),
        "--server".to_owned(),
        format!("http://{addr}"),
        "--admin-token".to_owned(),
        TOKEN.to_owned(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        Command::new(tally_binary())
            .args(&args)
            .env("TALLY_LOG", "warn")
            .env_remove("TALLY_TOKEN")
            .env_remove("TALLY_ADMIN_ADDR")
            .env_remove("TALLY_TLS_CA")
            .output()
            .expect("running tally receipt")
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "tally receipt failed: {stdout} {stderr}");
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed["verified"], Value::from(true), "Tally's own check of the receipt");
    for field in [
        "evidence_format",
        "iou_signing_bytes",
        "signature",
        "signed_message",
        "batch_statement",
        "leaf_index",
        "inclusion_proof",
    ] {
        assert_eq!(printed[field], expected[field], "tally receipt's {field}");
    }
}

/// What the checker said: `Ok(stdout)` for exit 0, `Err(stdout)` for exit 1.
/// Anything else (another status, a traceback on stderr) fails the test.
fn python_check(receipt: &Value) -> Result<String, String> {
    let mut python = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/interop/verify_receipt.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    python.stdin.take().unwrap().write_all(receipt.to_string().as_bytes()).unwrap();
    let out = python.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.is_empty(), "the checker wrote to stderr: {stderr}\nstdout: {stdout}");
    match out.status.code() {
        Some(0) => {
            assert!(stdout.starts_with("OK "), "exit 0 without OK: {stdout}");
            Ok(stdout)
        }
        Some(1) => {
            assert!(stdout.starts_with("FAIL "), "exit 1 without FAIL: {stdout}");
            Err(stdout)
        }
        other => panic!("the checker exited with {other:?}: {stdout}"),
    }
}

/// `receipt` with one bit of the hex field `field` flipped.
fn flipped(receipt: &Value, field: &str, byte: usize, bit: u8) -> Value {
    let mut bytes = hex::decode(receipt[field].as_str().unwrap()).unwrap();
    bytes[byte] ^= 1 << bit;
    let mut changed = receipt.clone();
    changed[field] = Value::from(hex::encode(bytes));
    changed
}

/// `signature` with `s` replaced by `s + ℓ`: the same scalar, non-canonically encoded.
fn with_s_plus_ell(signature: &[u8; 64]) -> [u8; 64] {
    let mut out = *signature;
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(signature[32 + i]) + u16::from(ELL[i]) + carry;
        out[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0, "s + ℓ < 2²⁵⁶ since s < ℓ < 2²⁵³");
    out
}

/// A little-endian integer reduced mod ℓ, in the scalar type of `_like`:
/// curve25519-dalek's `Scalar`, which this crate has no direct dependency on
/// and reaches only through ed25519-dalek's API (`SigningKey::to_scalar`), so
/// the reduction is done with `Scalar`'s own (mod ℓ) arithmetic, Horner's way.
fn reduce<S>(_like: &S, little_endian: &[u8]) -> S
where
    S: Copy + From<u16> + Add<Output = S> + Mul<Output = S>,
{
    let radix = S::from(256);
    little_endian.iter().rev().fold(S::from(0), |acc, byte| acc * radix + S::from(u16::from(*byte)))
}

/// A signature by `key` over `message` whose `R` is `[r]B + T`, `T` of order 8.
///
/// With `a` the key's secret scalar (`A = [a]B`), `k = SHA-512(R ‖ A ‖ M) mod ℓ`
/// computed over this very `R`, and `s = r + k·a mod ℓ`:
/// `[s]B − [k]A − R = [r + k·a]B − [k·a]B − [r]B − T = −T`, and `[8](−T) = 0`.
/// So the cofactored equation holds, while the cofactorless one,
/// `[s]B = R + [k]A`, would need `T = 0`.
fn torsion_signature(key: &SigningKey, message: &[u8]) -> [u8; 64] {
    let point = |bytes: &[u8; 32]| VerifyingKey::from_bytes(bytes).expect("a curve point").to_edwards();
    let base = point(&BASE_POINT);
    let torsion = point(&hex::decode(ORDER_8_POINT).unwrap().try_into().unwrap());
    let public = key.verifying_key();

    // T has order exactly 8: [8]T = 0, [4]T ≠ 0.
    assert_eq!(torsion.mul_by_cofactor().compress().to_bytes(), IDENTITY);
    let four_t = torsion + torsion + torsion + torsion;
    assert_ne!(four_t.compress().to_bytes(), IDENTITY, "T has order 8, not 4 or less");

    // a per RFC 8032, section 5.1.5: the first half of SHA-512(seed), clamped.
    let a = key.to_scalar();
    let digest = Sha512::digest(key.to_bytes());
    let mut clamped: [u8; 32] = digest[..32].try_into().unwrap();
    clamped[0] &= 248;
    clamped[31] &= 127;
    clamped[31] |= 64;
    assert_eq!(key.to_scalar_bytes(), <[u8; 32]>::try_from(&digest[..32]).unwrap());
    assert_eq!(reduce(&a, &clamped), a, "ed25519-dalek derives a as RFC 8032 does");
    assert_eq!((base * a).compress().to_bytes(), public.to_bytes(), "A = [a]B");

    // A deterministic nonce, then R = [r]B + T, k over that R, s = r + k·a.
    let nonce_hash = Sha512::new().chain_update(b"receipt_checker torsion nonce").chain_update(message).finalize();
    let r = reduce(&a, &nonce_hash);
    let r_point = base * r + torsion;
    assert!(!r_point.is_torsion_free(), "R has a small-order component");
    let r_bytes = r_point.compress().to_bytes();
    let challenge =
        Sha512::new().chain_update(r_bytes).chain_update(public.as_bytes()).chain_update(message).finalize();
    let k = reduce(&a, &challenge);
    let s = r + k * a;
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&r_bytes);
    signature[32..].copy_from_slice(&s.to_bytes());
    signature
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_receipt_is_served_and_checks_ok() {
    let (mut engine, mut c, mut query) = engine().await;
    let key = signer(1);
    let iou = iou(&key, 1_234, nonce(700, 1));
    let signature = key.sign(&iou.signing_bytes()).to_bytes();
    assert_eq!(submit(&mut c, &iou, signature, 1).await, IouCode::Accepted);

    let receipt = get_receipt(&mut query, &iou).await;
    assert_eq!(receipt.evidence_format, "tally-iou-v1");
    assert_eq!(receipt.iou_signing_bytes, iou.signing_bytes());
    assert_eq!(receipt.signed_message, iou.signing_bytes());
    assert_eq!(receipt.signature, signature.to_vec());
    let json = receipt_json(&receipt);
    tally_receipt_agrees(&engine.addr, &iou, &json).await;
    assert_eq!(python_check(&json), Ok("OK tally-iou-v1\n".to_owned()));
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_with_a_torsion_component_in_r_is_valid_to_engine_and_checker_alike() {
    let (mut engine, mut c, mut query) = engine().await;
    let key = signer(1);
    let iou = iou(&key, 4_321, nonce(701, 1));
    let message = iou.signing_bytes();
    let crafted = torsion_signature(&key, &message);

    // The two rules really disagree on it: the engine's accepts, the cofactorless ones refuse.
    let public = key.verifying_key();
    let item = tally_core::verify::VerifyItem { key: &public, message: &message, signature: &crafted };
    assert!(tally_core::verify::verify_one(&item), "the cofactored rule accepts it");
    assert!(public.verify_strict(&message, &Signature::from_bytes(&crafted)).is_err(), "verify_strict refuses it");
    let honest = key.sign(&message).to_bytes();
    assert!(public.verify_strict(&message, &Signature::from_bytes(&honest)).is_ok());

    assert_eq!(submit(&mut c, &iou, crafted, 1).await, IouCode::Accepted, "the engine accepts it");
    let receipt = get_receipt(&mut query, &iou).await;
    assert_eq!(receipt.evidence_format, "tally-iou-v1");
    assert_eq!(receipt.signature, crafted.to_vec(), "the stored signature is the crafted one");
    assert_eq!(receipt.iou_signing_bytes, message);
    let json = receipt_json(&receipt);
    tally_receipt_agrees(&engine.addr, &iou, &json).await;
    assert_eq!(python_check(&json), Ok("OK tally-iou-v1\n".to_owned()), "the checker applies the engine's rule");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_receipts_are_refused() {
    let (mut engine, mut c, mut query) = engine().await;
    let key = signer(1);
    let honest_iou = iou(&key, 55, nonce(702, 1));
    let honest = key.sign(&honest_iou.signing_bytes()).to_bytes();
    let crafted_iou = iou(&key, 66, nonce(702, 2));
    let crafted = torsion_signature(&key, &crafted_iou.signing_bytes());
    assert_eq!(submit(&mut c, &honest_iou, honest, 1).await, IouCode::Accepted);
    assert_eq!(submit(&mut c, &crafted_iou, crafted, 2).await, IouCode::Accepted);

    for (name, iou) in [("ordinary", &honest_iou), ("torsion", &crafted_iou)] {
        let json = receipt_json(&get_receipt(&mut query, iou).await);
        assert_eq!(python_check(&json), Ok("OK tally-iou-v1\n".to_owned()), "{name}");
        let signing_len = iou.signing_bytes().len();
        let bad_signature = "FAIL the signature does not verify\n".to_owned();

        // One bit of s (low byte: s stays canonical), then one bit of R.
        assert_eq!(python_check(&flipped(&json, "signature", 40, 0)), Err(bad_signature.clone()), "{name}: s");
        let verdict = python_check(&flipped(&json, "signature", 5, 3));
        assert!(verdict.is_err(), "{name}: a bit of R: {verdict:?}");

        // One bit of the signing bytes (the resource's last byte): alone, the
        // signed message no longer is the IOU; flipped in both, the signature fails.
        let iou_changed = flipped(&json, "iou_signing_bytes", signing_len - 1, 0);
        let verdict = python_check(&iou_changed);
        assert!(verdict.is_err(), "{name}: IOU bytes: {verdict:?}");
        let both_changed = flipped(&iou_changed, "signed_message", signing_len - 1, 0);
        assert_eq!(python_check(&both_changed), Err(bad_signature), "{name}: signed bytes");

        // The same s encoded as s + ℓ: refused as non-canonical.
        let signature: [u8; 64] = hex::decode(json["signature"].as_str().unwrap()).unwrap().try_into().unwrap();
        let mut non_canonical = json.clone();
        non_canonical["signature"] = Value::from(hex::encode(with_s_plus_ell(&signature)));
        let verdict = python_check(&non_canonical);
        assert_eq!(verdict, Err("FAIL the signature's s is not canonical (s >= L)\n".to_owned()), "{name}");
    }

    // The engine refuses a non-canonical s just the same.
    let third = iou(&key, 77, nonce(702, 3));
    let signature = with_s_plus_ell(&key.sign(&third.signing_bytes()).to_bytes());
    assert_eq!(submit(&mut c, &third, signature, 3).await, IouCode::BadSignature);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_statement_signed_with_a_torsion_component_checks_ok() {
    let (mut engine, mut c, mut query) = engine().await;
    let key = signer(1);
    let ious: Vec<Iou> = (0..5).map(|n| iou(&key, 10 + n, nonce(703, n))).collect();
    let leaves: Vec<_> = ious.iter().map(|i| leaf_hash(&i.signing_bytes())).collect();
    let statement = BatchStatement {
        payer_key: key.verifying_key().to_bytes(),
        batch_seq: 1,
        count: 5,
        root: merkle_root(&leaves),
    };
    let crafted = torsion_signature(&key, &statement.to_bytes());
    let public = key.verifying_key();
    assert!(public.verify_strict(&statement.to_bytes(), &Signature::from_bytes(&crafted)).is_err());
    let unsigned = |iou: &Iou| {
        let mut wire =
            tally_ingest::convert::iou_to_proto(&tally_core::SignedIou { iou: iou.clone(), signature: [0; 64] });
        wire.signature.clear();
        wire
    };
    let request = SubmitSignedBatchRequest {
        batch_id: 1,
        batch_seq: 1,
        root: statement.root.to_vec(),
        signature: crafted.to_vec(),
        ious: ious.iter().map(unsigned).collect(),
    };
    let answer = c.ingest.submit_signed_batch(request).await.unwrap().into_inner();
    let codes: Vec<IouCode> = answer.results.iter().map(|r| r.code()).collect();
    assert_eq!(codes, vec![IouCode::Accepted; 5], "the engine accepts the batch");

    let member = &ious[3];
    let receipt = get_receipt(&mut query, member).await;
    assert_eq!(receipt.evidence_format, "tally-batch-v1");
    assert_eq!(receipt.signature, crafted.to_vec(), "the stored signature is the crafted one");
    assert_eq!(receipt.batch_statement, statement.to_bytes().to_vec());
    assert_eq!(receipt.leaf_index, 3);
    let json = receipt_json(&receipt);
    tally_receipt_agrees(&engine.addr, member, &json).await;
    assert_eq!(python_check(&json), Ok("OK tally-batch-v1\n".to_owned()));
    // A changed root (statement bytes 56..88) no longer matches the proof; a changed s fails the signature.
    let verdict = python_check(&flipped(&json, "batch_statement", 70, 2));
    assert_eq!(verdict, Err("FAIL the inclusion proof does not lead to the signed root\n".to_owned()));
    let verdict = python_check(&flipped(&json, "signature", 40, 0));
    assert_eq!(verdict, Err("FAIL the signature does not verify\n".to_owned()));
    engine.stop().await;
}

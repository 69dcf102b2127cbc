//! Batch-signed commitments against a real `tally serve`: one Ed25519 signature over a batch
//! statement (key, batch sequence, count, Merkle root) covers every IOU of the batch. The same
//! replay, credit and durability rules as single IOUs; whole-batch refusals for a bad signature,
//! a wrong root, a foreign IOU or a reused batch sequence; per-IOU refusals for the rest; receipts
//! with inclusion proofs that an independent Python checker accepts (and refuses once tampered);
//! and `tally ledger verify` re-checking every batch from the ledger alone.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::*;
use ed25519_dalek::{Signer as _, SigningKey};
use futures::StreamExt;
use serde_json::Value;
use tally_core::Iou;
use tally_core::batch::{BatchStatement, leaf_hash, merkle_root};
use tally_ingest::proto::{self, BalancesRequest, IouCode, SubmitBatchRequest, SubmitSignedBatchRequest};

const PAYEE: &str = "site-a.example";

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
        resource: format!("https://{PAYEE}/page"),
    }
}

/// Signs `ious` as batch `batch_seq` of `key` (each IOU's own signature left empty).
fn signed_batch(key: &SigningKey, batch_seq: u64, ious: &[Iou]) -> SubmitSignedBatchRequest {
    let leaves: Vec<_> = ious.iter().map(|i| leaf_hash(&i.signing_bytes())).collect();
    let statement = BatchStatement {
        payer_key: key.verifying_key().to_bytes(),
        batch_seq,
        count: ious.len() as u32,
        root: merkle_root(&leaves),
    };
    SubmitSignedBatchRequest {
        batch_id: batch_seq,
        batch_seq,
        root: statement.root.to_vec(),
        signature: key.sign(&statement.to_bytes()).to_bytes().to_vec(),
        ious: ious.iter().map(unsigned).collect(),
    }
}

fn unsigned(iou: &Iou) -> proto::Iou {
    let mut wire = tally_ingest::convert::iou_to_proto(&tally_core::SignedIou { iou: iou.clone(), signature: [0; 64] });
    wire.signature.clear();
    wire
}

fn codes(response: &proto::SubmitBatchResponse) -> Vec<IouCode> {
    response.results.iter().map(|r| r.code()).collect()
}

fn owed(rows: &[proto::BalanceRow]) -> Vec<(String, String)> {
    let mut owed: Vec<_> = rows.iter().map(|r| (r.payer.clone(), r.amount.clone())).collect();
    owed.sort();
    owed
}

/// `tally receipt` for one IOU, and the independent Python checker's verdict on it.
fn receipt_checked_by_python(server: &ServerProcess, iou: &Iou, tamper: impl Fn(&mut Value)) -> (Value, bool, String) {
    let (ok, stdout, stderr) = run_tally(&[
        "receipt",
        "--payer-key",
        &hex::encode(iou.payer_key),
        "--nonce",
        &hex::encode(iou.nonce),
        "--server",
        &format!("http://{}", server.addr),
        "--token",
        TOKEN,
    ]);
    assert!(ok, "tally receipt failed: {stdout} {stderr}");
    let mut receipt: Value = serde_json::from_str(&stdout).unwrap();
    tamper(&mut receipt);
    let mut python = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/interop/verify_receipt.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    python.stdin.take().unwrap().write_all(receipt.to_string().as_bytes()).unwrap();
    let out = python.wait_with_output().unwrap();
    let verdict = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (receipt, out.status.success(), verdict)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_signed_commitments_are_recorded_provable_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    let server = ServerProcess::start(&data);
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 3, 100_000).await;
    let (one, two) = (signer(1), signer(2));

    // One signature for 100 IOUs: all accepted, each with its own commitment.
    let batch_one: Vec<Iou> = (0..100).map(|n| iou(&one, 10 + n, nonce(80, n))).collect();
    let request = signed_batch(&one, 1, &batch_one);
    let first = c.ingest.submit_signed_batch(request.clone()).await.unwrap().into_inner();
    assert_eq!(codes(&first), vec![IouCode::Accepted; 100]);
    let total_one: u64 = batch_one.iter().map(|i| i.amount).sum();

    // The same batch again: every IOU a duplicate with its original commitment.
    let again = c.ingest.submit_signed_batch(request.clone()).await.unwrap().into_inner();
    assert_eq!(codes(&again), vec![IouCode::Duplicate; 100]);
    assert_eq!(again.results.iter().map(|r| r.commitment.clone()).collect::<Vec<_>>(), {
        first.results.iter().map(|r| r.commitment.clone()).collect::<Vec<_>>()
    });
    // One of its IOUs signed alone is the same promise: a duplicate too.
    let alone = signed_with(&one, batch_one[37].clone());
    let single = c.ingest.submit_batch(SubmitBatchRequest { batch_id: 9, ious: vec![alone] }).await.unwrap();
    assert_eq!(single.into_inner().results[0].code(), IouCode::Duplicate);

    // Whole-batch refusals, each recording nothing.
    let fresh: Vec<Iou> = (0..10).map(|n| iou(&one, 1, nonce(81, n))).collect();
    let mut reused_seq = signed_batch(&one, 1, &fresh);
    reused_seq.batch_id = 50;
    let mut wrong_key = signed_batch(&two, 2, &fresh);
    wrong_key.batch_id = 51;
    let mut tampered = signed_batch(&one, 3, &fresh);
    tampered.ious[4].amount += 1;
    let mut foreign = fresh.clone();
    foreign[2] = iou(&two, 1, nonce(81, 2));
    let foreign = signed_batch(&one, 4, &foreign);
    let mut signed_member = signed_batch(&one, 5, &fresh);
    signed_member.ious[0].signature = vec![1; 64];
    let mut short_root = signed_batch(&one, 6, &fresh);
    short_root.root.pop();
    for (name, request, code) in [
        ("another batch under a used sequence", reused_seq, IouCode::Conflict),
        ("signed by another key", wrong_key, IouCode::BadSignature),
        ("an IOU changed after signing", tampered, IouCode::BadSignature),
        ("an IOU of another payer", foreign, IouCode::Malformed),
        ("an IOU with its own signature", signed_member, IouCode::Malformed),
        ("a root of 31 bytes", short_root, IouCode::Malformed),
    ] {
        let answer = c.ingest.submit_signed_batch(request).await.unwrap().into_inner();
        assert_eq!(codes(&answer), vec![code; 10], "{name}");
    }
    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    assert_eq!(owed(&rows), vec![("crawler-1".into(), total_one.to_string())]);

    // Per-IOU refusals inside a valid batch; the rest is accepted. crawler-2's limit
    // (100,000) admits the first two 40,000 IOUs, not the third.
    let mut mixed: Vec<Iou> = (0..6).map(|n| iou(&two, 40_000, nonce(82, n))).collect();
    mixed[0].payee = "nobody.example".into();
    mixed[1].expires_at_s = mixed[1].issued_at_s; // an empty validity window
    mixed[5].amount = 7;
    let answer = c.ingest.submit_signed_batch(signed_batch(&two, 1, &mixed)).await.unwrap().into_inner();
    assert_eq!(
        codes(&answer),
        vec![
            IouCode::UnknownPayee,
            codes(&answer)[1],
            IouCode::Accepted,
            IouCode::Accepted,
            IouCode::CreditLimitExceeded,
            IouCode::Accepted,
        ]
    );
    assert_ne!(codes(&answer)[1], IouCode::Accepted, "an empty window is refused");

    // Streamed batches, four in flight.
    let streamed: Vec<SubmitSignedBatchRequest> = (0..8u64)
        .map(|b| {
            let ious: Vec<Iou> = (0..64).map(|n| iou(&one, 1, nonce(90 + b, n))).collect();
            signed_batch(&one, 100 + b, &ious)
        })
        .collect();
    let mut answers = c.ingest.stream_signed_batches(futures::stream::iter(streamed)).await.unwrap().into_inner();
    let mut streamed_ok = 0;
    while let Some(answer) = answers.next().await {
        let answer = answer.unwrap();
        assert_eq!(codes(&answer), vec![IouCode::Accepted; 64], "batch {}", answer.batch_id);
        streamed_ok += 1;
    }
    assert_eq!(streamed_ok, 8);
    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    assert_eq!(
        owed(&rows),
        vec![("crawler-1".into(), (total_one + 8 * 64).to_string()), ("crawler-2".into(), "80007".into())]
    );

    // A receipt proves one IOU of the batch; an independent checker agrees, and refuses it
    // once any part is changed.
    let member = &batch_one[37];
    let (receipt, ok, verdict) = receipt_checked_by_python(&server, member, |_| {});
    assert!(ok, "{verdict}");
    assert!(verdict.starts_with("OK tally-batch-v1"), "{verdict}");
    assert_eq!(
        (&receipt["evidence_format"], &receipt["leaf_index"], &receipt["verified"]),
        (&Value::from("tally-batch-v1"), &Value::from(37), &Value::from(true))
    );
    assert_eq!(receipt["inclusion_proof"].as_array().unwrap().len(), 7, "a tree of 100 leaves is 7 deep");
    let flip = |field: &'static str| {
        move |r: &mut Value| {
            let text = r[field].as_str().unwrap().to_owned();
            let mut bytes = hex::decode(text).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
            r[field] = Value::from(hex::encode(bytes));
        }
    };
    for tamper in [flip("iou_signing_bytes"), flip("signature"), flip("batch_statement")] {
        let (_, ok, verdict) = receipt_checked_by_python(&server, member, tamper);
        assert!(!ok, "a tampered receipt must fail: {verdict}");
    }
    let (_, ok, verdict) = receipt_checked_by_python(&server, member, |r| {
        let mut proof = r["inclusion_proof"].as_array().unwrap().clone();
        proof.swap(0, 1);
        r["inclusion_proof"] = Value::from(proof);
    });
    assert!(!ok, "a reordered proof must fail: {verdict}");
    let (_, ok, _) = receipt_checked_by_python(&server, member, |r| r["leaf_index"] = Value::from(36));
    assert!(!ok, "another index must fail");
    // A single IOU's receipt needs no proof.
    let single = iou(&two, 3, nonce(83, 0));
    c.ingest
        .submit_batch(SubmitBatchRequest { batch_id: 1, ious: vec![signed_with(&two, single.clone())] })
        .await
        .unwrap();
    let (_, ok, verdict) = receipt_checked_by_python(&server, &single, |_| {});
    assert!(ok && verdict.starts_with("OK tally-iou-v1"), "{verdict}");

    // The audit re-checks every batch (root and signature) and every member from the ledger.
    server.terminate();
    let (ok, stdout, stderr) = run_tally(&["ledger", "verify", "--json", "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{stdout} {stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["clean"], true);
    assert_eq!(report["records"], 100 + 3 + 8 * 64 + 1);
    assert_eq!(report["batch_member_records"], 100 + 3 + 8 * 64);
    // One signature per batch (10 batches) plus the single IOU.
    assert_eq!(report["signatures_verified"], 10 + 1);
}

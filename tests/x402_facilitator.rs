//! The x402 facilitator API of a real `tally serve` process, over real HTTP
//! on 127.0.0.1: `/supported`, `/verify`, `/settle` with Tally IOU
//! commitments, every reason code, one payment settling one request, and the
//! `payment-identifier` extension's idempotency across a SIGKILL and restart.

mod common;

use common::*;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use tally_core::SignedIou;
use tally_ingest::proto::{BalancesRequest, ExposureRequest};
use tally_x402::commitment::{TallyIouPayload, nonce_for_payment_id};

const PAYEE: &str = "site-a.example";

fn iou_with(key: &ed25519_dalek::SigningKey, amount: u64, nonce: [u8; 16]) -> SignedIou {
    signed_domain_iou(key, PAYEE, amount, nonce)
}

/// What a resource server selling `https://PAYEE/article` asks, naming the
/// resource it sells (so a payment identifier's retry can be answered from
/// the ledger).
fn requirements(amount: u64) -> Value {
    json!({
        "scheme": "batch-settlement", "network": NETWORK, "amount": amount.to_string(), "asset": "USD", "payTo": PAYEE,
        "extra": { "resource": format!("https://{PAYEE}/article") },
    })
}

/// A request offering exactly what the IOU commits.
fn req(signed: &SignedIou, payment_id: Option<&str>) -> Value {
    request(signed, signed.iou.amount, payment_id)
}

fn request(signed: &SignedIou, max_amount: u64, payment_id: Option<&str>) -> Value {
    let mut payload = json!({
        "x402Version": 2,
        "resource": { "url": format!("https://{PAYEE}/article") },
        "accepted": requirements(max_amount),
        "payload": TallyIouPayload::from_signed(signed),
    });
    if let Some(id) = payment_id {
        payload["extensions"] = json!({ "payment-identifier": { "info": { "id": id, "required": true } } });
    }
    json!({ "x402Version": 2, "paymentPayload": payload, "paymentRequirements": requirements(max_amount) })
}

async fn post(http: &reqwest::Client, addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = http.post(format!("http://{addr}{path}")).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path} answered non-JSON ({status}): {text}")))
}

async fn registered_server(data: &std::path::Path) -> ServerProcess {
    let server = ServerProcess::start(data);
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 3, 10_000).await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supported_verify_settle_and_every_reason_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = registered_server(&dir.path().join("ledger")).await;
    let http = reqwest::Client::new();
    let addr = server.http_addr.clone();

    let supported: Value = http.get(format!("http://{addr}/supported")).send().await.unwrap().json().await.unwrap();
    assert_eq!(supported["kinds"][0]["scheme"], "batch-settlement");
    assert_eq!(supported["kinds"][0]["network"], NETWORK);
    assert_eq!(supported["kinds"][0]["x402Version"], 2);
    assert_eq!(supported["extensions"], json!(["payment-identifier", "http-message-signatures"]));

    let key = signer(1);
    let signed = iou_with(&key, 700, nonce(40, 1));

    // /verify checks and records nothing.
    let (status, verdict) = post(&http, &addr, "/verify", &req(&signed, None)).await;
    assert_eq!((status, &verdict["isValid"], &verdict["payer"]), (200, &json!(true), &json!("crawler-1")));
    let mut c = clients(&server.addr).await;
    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    assert!(rows.is_empty(), "verify recorded nothing");

    // /settle records, through the same ledger as gRPC.
    let (status, settled) = post(&http, &addr, "/settle", &req(&signed, None)).await;
    assert_eq!(status, 200, "{settled}");
    assert_eq!(settled["success"], true);
    assert_eq!(settled["network"], NETWORK);
    assert_eq!(settled["amount"], "700");
    assert_eq!(settled["payer"], "crawler-1");
    let transaction = settled["transaction"].as_str().unwrap().to_owned();
    assert!(transaction.starts_with("1:") && transaction.len() == 2 + 64, "{transaction}");
    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    assert_eq!((rows.len(), rows[0].amount.as_str(), rows[0].count), (1, "700", 1));

    // The same payment again, without a payment identifier, buys nothing more.
    let (_, again) = post(&http, &addr, "/settle", &req(&signed, None)).await;
    assert_eq!(
        (again["success"].as_bool(), again["errorReason"].as_str()),
        (Some(false), Some("tally_payment_already_used"))
    );
    let (_, verified_again) = post(&http, &addr, "/verify", &req(&signed, None)).await;
    assert_eq!(verified_again["invalidReason"], "tally_payment_already_used");
    let exposure = c.query.exposure(ExposureRequest { payer: "crawler-1".into() }).await.unwrap().into_inner();
    assert_eq!(exposure.rows[0].owed, "700");

    // Every refusal has its reason code.
    let fresh = |n: u64, amount: u64| iou_with(&key, amount, nonce(41, n));
    let mut cases: Vec<(&str, Value, u16, &str)> = Vec::new();
    let mut wrong_version = req(&fresh(1, 10), None);
    wrong_version["x402Version"] = json!(1);
    cases.push(("version", wrong_version, 200, "invalid_x402_version"));
    let mut wrong_scheme = req(&fresh(2, 10), None);
    wrong_scheme["paymentRequirements"]["scheme"] = json!("exact");
    cases.push(("scheme", wrong_scheme, 200, "unsupported_scheme"));
    let mut wrong_network = req(&fresh(3, 10), None);
    wrong_network["paymentRequirements"]["network"] = json!("eip155:8453");
    cases.push(("network", wrong_network, 200, "invalid_network"));
    let mut not_echoed = req(&fresh(4, 10), None);
    not_echoed["paymentRequirements"]["amount"] = json!("999");
    cases.push(("echo", not_echoed, 200, "invalid_payment_requirements"));
    cases.push(("price", request(&fresh(5, 1), 1_000, None), 200, "price_not_acceptable"));
    let mut bad_signature = fresh(6, 10);
    bad_signature.signature[0] ^= 1;
    cases.push(("signature", req(&bad_signature, None), 200, "invalid_signature"));
    let stranger = iou_with(&SigningKey::from_bytes(&[99; 32]), 10, nonce(41, 7));
    cases.push(("unknown payer", req(&stranger, None), 200, "tally_payer_key_unknown"));
    cases.push(("credit", req(&fresh(8, 9_500), None), 200, "insufficient_funds"));
    let mut bad_hex = req(&fresh(9, 10), None);
    bad_hex["paymentPayload"]["payload"]["signature"] = json!("not hex");
    cases.push(("hex", bad_hex, 200, "invalid_payload"));
    cases.push(("json", json!({"hello": "world"}), 400, "invalid_payload"));
    let mut no_id = req(&fresh(10, 10), None);
    no_id["paymentPayload"]["extensions"] = json!({ "payment-identifier": { "info": { "required": true } } });
    cases.push(("id required", no_id, 400, "tally_payment_identifier_required"));
    cases.push(("id not the nonce", req(&fresh(11, 10), Some("order-000000000001")), 400, "invalid_payload"));
    for (name, body, status, reason) in cases {
        for path in ["/verify", "/settle"] {
            let (got, answer) = post(&http, &addr, path, &body).await;
            let field = if path == "/verify" { "invalidReason" } else { "errorReason" };
            assert_eq!((got, answer[field].as_str()), (status, Some(reason)), "{name} on {path}: {answer}");
        }
    }
    // Nothing refused was recorded.
    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    assert_eq!(rows[0].count, 1);

    // An oversized body is refused before parsing.
    let huge = "x".repeat(70 * 1024);
    let response = http.post(format!("http://{addr}/settle")).body(huge).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 413);
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_identifier_is_idempotent_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    let server = registered_server(&data).await;
    let http = reqwest::Client::new();
    let key = signer(2);
    let id = "order-2026-11-22-000042";
    let signed = iou_with(&key, 250, nonce_for_payment_id(id));
    let (status, first) = post(&http, &server.http_addr, "/settle", &req(&signed, Some(id))).await;
    assert_eq!((status, &first["success"]), (200, &json!(true)), "{first}");

    // The engine dies (SIGKILL) and comes back; the identifier is remembered.
    server.kill();
    let server = ServerProcess::start(&data);
    let (status, retried) = post(&http, &server.http_addr, "/settle", &req(&signed, Some(id))).await;
    assert_eq!(status, 200);
    assert_eq!(retried["transaction"], first["transaction"], "the cached result, not a second charge");

    // Same identifier, different payload (another amount): 409 on both routes.
    let other = iou_with(&key, 300, nonce_for_payment_id(id));
    for path in ["/settle", "/verify"] {
        let (status, conflict) = post(&http, &server.http_addr, path, &req(&other, Some(id))).await;
        let field = if path == "/verify" { "invalidReason" } else { "errorReason" };
        assert_eq!((status, conflict[field].as_str()), (409, Some("tally_payment_identifier_conflict")), "{path}");
    }
    let mut c = clients(&server.addr).await;
    let exposure = c.query.exposure(ExposureRequest { payer: "crawler-2".into() }).await.unwrap().into_inner();
    assert_eq!(exposure.rows[0].owed, "250", "charged exactly once");
    server.kill();
}

/// The body a resource server selling `signed.iou.resource` at the IOU's
/// amount sends, for whatever payee and asset the IOU names.
fn request_for(signed: &SignedIou) -> Value {
    let iou = &signed.iou;
    let offer = json!({
        "scheme": "batch-settlement", "network": NETWORK, "amount": iou.amount.to_string(),
        "asset": iou.asset, "payTo": iou.payee,
    });
    let payload = json!({
        "x402Version": 2,
        "resource": { "url": iou.resource },
        "accepted": offer,
        "payload": TallyIouPayload::from_signed(signed),
    });
    json!({ "x402Version": 2, "paymentPayload": payload, "paymentRequirements": offer })
}

/// `/verify` previews exactly what `/settle` decides about the accounts: a
/// suspended payer, a revoked key, a disabled or unknown asset, a suspended
/// or unknown payee are refused alike by both, and nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_settle_refuse_the_same_account_states() {
    use tally_ingest::proto::{
        self, RevokePayerKeyRequest, SetPayeeStatusRequest, SetPayerStatusRequest, UpsertAssetRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let server = registered_server(&dir.path().join("ledger")).await;
    let mut c = clients(&server.addr).await;
    let eur = proto::Asset { code: "EUR".into(), scale: 2, enabled: false };
    c.admin.upsert_asset(UpsertAssetRequest { asset: Some(eur) }).await.unwrap();
    let suspended = proto::PayerStatus::Suspended as i32;
    c.admin.set_payer_status(SetPayerStatusRequest { payer_id: "crawler-3".into(), status: suspended }).await.unwrap();
    let key_2 = signer(2).verifying_key().to_bytes().to_vec();
    c.admin.revoke_payer_key(RevokePayerKeyRequest { payer_id: "crawler-2".into(), key: key_2 }).await.unwrap();
    let payee_suspended = proto::PayeeStatus::Suspended as i32;
    c.admin
        .set_payee_status(SetPayeeStatusRequest { payee_id: "site-b.example".into(), status: payee_suspended })
        .await
        .unwrap();

    let iou = |seed: u8, payee: &str, asset: &str, n: u64| {
        let mut signed = signed_domain_iou(&signer(seed), payee, 10, nonce(60, n));
        signed.iou.asset = asset.into();
        use ed25519_dalek::Signer;
        signed.signature = signer(seed).sign(&signed.iou.signing_bytes()).to_bytes();
        signed
    };
    let cases = [
        ("suspended payer", iou(3, PAYEE, "USD", 1), "tally_payer_suspended"),
        ("revoked key", iou(2, PAYEE, "USD", 2), "tally_key_revoked"),
        ("disabled asset", iou(1, PAYEE, "EUR", 3), "invalid_payment_requirements"),
        ("unknown asset", iou(1, PAYEE, "GBP", 4), "invalid_payment_requirements"),
        ("suspended payee", iou(1, "site-b.example", "USD", 5), "tally_payee_suspended"),
        ("unknown payee", iou(1, "site-z.example", "USD", 6), "invalid_payment_requirements"),
    ];
    let http = reqwest::Client::new();
    for (name, signed, reason) in &cases {
        for (path, field) in [("/verify", "invalidReason"), ("/settle", "errorReason")] {
            let (status, answer) = post(&http, &server.http_addr, path, &request_for(signed)).await;
            assert_eq!((status, answer[field].as_str()), (200, Some(*reason)), "{name} on {path}: {answer}");
        }
    }
    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    assert!(rows.is_empty(), "nothing refused was recorded: {rows:?}");
    // And an active payer paying an active payee in an enabled asset passes both.
    let fine = iou(1, PAYEE, "USD", 7);
    let (_, verified) = post(&http, &server.http_addr, "/verify", &request_for(&fine)).await;
    assert_eq!(verified["isValid"], true, "{verified}");
    server.kill();
}

//! Web Bot Auth payments through the facilitator of a real `tally serve`, over real HTTP on
//! 127.0.0.1: the crawler signs the HTTP request (RFC 9421, Ed25519) and that signature, which
//! covers `PAYMENT-SIGNATURE`, is the commitment. Recorded through the same pipeline as every IOU,
//! answered with a commitment identifier, idempotent under payment identifiers, refused with the
//! binding's reason codes, and re-verifiable from the ledger alone (`GetIou` evidence and
//! `tally ledger verify`). Then the whole path with the crawler client and the paywall.

mod common;

use axum::Router;
use axum::routing::get;
use common::*;
use ed25519_dalek::{SigningKey, Verifier as _};
use serde_json::{Value, json};
use tally_core::evidence::{EvidenceKind, nonce_for_payment_id, parse_evidence};
use tally_ingest::proto::{BalancesRequest, GetIouRequest, SetSignatureAgentRequest};
use tally_x402::client::{Crawler, PaymentFormat};
use tally_x402::middleware::{PaywallConfig, PaywallLayer, encode_header_json};
use tally_x402::webbotauth::sign_web_bot_auth;

const PAYEE: &str = "site-a.example";
const AUTHORITY: &str = "site-a.example";
const AGENT_ONE: &str = "https://crawler-one.example";

/// The offer for the article (the resource server names the resource it sells).
fn requirements(price: u64) -> Value {
    json!({
        "scheme": "batch-settlement", "network": NETWORK, "amount": price.to_string(), "asset": "USD", "payTo": PAYEE,
        "extra": { "resource": format!("https://{PAYEE}/article") },
    })
}

/// What the crawler puts in `PAYMENT-SIGNATURE`: the offer it accepts and the amount it commits.
fn payment_signature(amount: u64, price: u64, payment_id: Option<&str>) -> String {
    let mut payload = json!({
        "x402Version": 2,
        "resource": { "url": format!("https://{PAYEE}/article") },
        "accepted": requirements(price),
        "payload": { "amount": amount.to_string(), "asset": "USD" },
    });
    if let Some(id) = payment_id {
        payload["extensions"] = json!({ "payment-identifier": { "info": { "id": id } } });
    }
    encode_header_json(&payload)
}

/// `PAYMENT-SIGNATURE` with a memo in its payload: another payment of the same terms.
fn with_memo(payment_signature: &str, memo: u64) -> String {
    let bytes = tally_core::evidence::decode_header_base64(payment_signature.as_bytes()).unwrap();
    let mut payload: Value = serde_json::from_slice(&bytes).unwrap();
    payload["payload"]["memo"] = json!(memo);
    encode_header_json(&payload)
}

/// A signed request as a resource server forwards it to `/verify` or `/settle`.
struct Signed {
    key: SigningKey,
    agent: String,
    payment_signature: String,
    created_s: u64,
    expires_s: u64,
}

impl Signed {
    fn new(key: &SigningKey, agent: &str, payment_signature: String) -> Signed {
        let now = now_s();
        Signed {
            key: key.clone(),
            agent: format!("\"{agent}\""),
            payment_signature,
            created_s: now,
            expires_s: now + 60,
        }
    }

    fn body(&self, price: u64) -> Value {
        self.body_charging(price, price)
    }

    /// The forwarded payment, with the server charging `charge` of the `price` it offered.
    fn body_charging(&self, price: u64, charge: u64) -> Value {
        let headers = sign_web_bot_auth(
            &self.key,
            AUTHORITY,
            &self.agent,
            &self.payment_signature,
            self.created_s,
            self.expires_s,
            None,
        )
        .unwrap();
        let forwarded = json!({
            "format": "web-bot-auth",
            "authority": AUTHORITY,
            "signatureAgent": self.agent,
            "signatureInput": headers.signature_input,
            "signature": headers.signature,
            "paymentSignature": self.payment_signature,
        });
        json!({
            "x402Version": 2,
            "paymentPayload": { "x402Version": 2, "accepted": requirements(price), "payload": forwarded },
            "paymentRequirements": requirements(charge),
        })
    }
}

async fn post(http: &reqwest::Client, addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = http.post(format!("http://{addr}{path}")).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path} answered non-JSON ({status}): {text}")))
}

fn owed(rows: &[tally_ingest::proto::BalanceRow]) -> Vec<(String, String)> {
    let mut owed: Vec<_> = rows.iter().map(|r| (r.payer.clone(), r.amount.clone())).collect();
    owed.sort();
    owed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_bot_auth_payments_are_verified_recorded_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    let server = ServerProcess::start(&data);
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 3, 10_000).await;
    c.admin
        .set_signature_agent(SetSignatureAgentRequest {
            payer_id: "crawler-1".into(),
            signature_agent: AGENT_ONE.into(),
        })
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let addr = server.http_addr.clone();
    let (one, two) = (signer(1), signer(2));

    let supported: Value = http.get(format!("http://{addr}/supported")).send().await.unwrap().json().await.unwrap();
    assert_eq!(supported["kinds"][0]["extra"]["formats"], json!(["tally-iou-v1", "web-bot-auth", "pay-per-crawl"]));
    assert_eq!(supported["extensions"], json!(["payment-identifier", "http-message-signatures"]));

    // /verify checks everything and records nothing.
    let payment = Signed::new(&one, AGENT_ONE, payment_signature(1_000, 1_000, None));
    let (status, verdict) = post(&http, &addr, "/verify", &payment.body(1_000)).await;
    assert_eq!((status, &verdict["isValid"], &verdict["payer"]), (200, &json!(true), &json!("crawler-1")), "{verdict}");
    assert!(c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows.is_empty());

    // /settle records what the server charges: 300 of the 1,000 it offered and the payload commits.
    let body = payment.body_charging(1_000, 300);
    let (status, settled) = post(&http, &addr, "/settle", &body).await;
    assert_eq!((status, &settled["success"], &settled["amount"]), (200, &json!(true), &json!("300")), "{settled}");
    assert_eq!(settled["payer"], "crawler-1");
    let first_tx = settled["transaction"].as_str().unwrap().to_owned();
    // The same signed request again buys nothing more (no payment identifier).
    let (_, again) = post(&http, &addr, "/settle", &body).await;
    assert_eq!(again["errorReason"], "tally_payment_already_used", "{again}");
    assert!(!first_tx.is_empty());
    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    assert_eq!(owed(&rows), vec![("crawler-1".into(), "300".into())]);

    // A payment identifier: a retry re-signed a second later (a different HTTP signature, the same
    // payload) gets the cached result; a different payload under the id is a 409.
    let id = "wba-payment-000000000001";
    let mut with_id = Signed::new(&two, "https://crawler-two.example", payment_signature(1_000, 1_000, Some(id)));
    let (status, paid) = post(&http, &addr, "/settle", &with_id.body_charging(1_000, 500)).await;
    assert_eq!((status, &paid["success"]), (200, &json!(true)), "{paid}");
    let id_tx = paid["transaction"].as_str().unwrap().to_owned();
    with_id.created_s += 1;
    let (status, retried) = post(&http, &addr, "/settle", &with_id.body_charging(1_000, 500)).await;
    assert_eq!((status, &retried["transaction"], &retried["amount"]), (200, &json!(id_tx), &json!("500")), "{retried}");
    let (_, verified) = post(&http, &addr, "/verify", &with_id.body(1_000)).await;
    assert_eq!(verified["isValid"], true, "{verified}");
    // (A Web Bot Auth payload commits exactly the offer: the derivation rule refuses more. So the
    // different payload differs elsewhere, and was signed at another time.)
    let other_payload = with_memo(&payment_signature(1_000, 1_000, Some(id)), 1);
    let mut changed = Signed::new(&two, "https://crawler-two.example", other_payload);
    changed.created_s += 2;
    let (status, conflict) = post(&http, &addr, "/settle", &changed.body(1_000)).await;
    assert_eq!((status, &conflict["errorReason"]), (409, &json!("tally_payment_identifier_conflict")), "{conflict}");
    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    assert_eq!(owed(&rows), vec![("crawler-1".into(), "300".into()), ("crawler-2".into(), "500".into())]);

    // Every refusal has its reason code, and none records anything.
    // Each commits the 1,000 offered, and differs from the others by a memo.
    let fresh = |n: u64| with_memo(&payment_signature(1_000, 1_000, None), n);
    let mut cases: Vec<(&str, Value, &str)> = vec![
        // crawler-1 registered its agent: it must sign as that agent.
        ("wrong agent", Signed::new(&one, "https://someone.example", fresh(7)).body(1_000), "signature_agent_unknown"),
        // crawler-2 registered none, and may not claim crawler-1's.
        ("borrowed agent", Signed::new(&two, AGENT_ONE, fresh(8)).body(1_000), "signature_agent_unknown"),
        ("unknown key", Signed::new(&signer(9), AGENT_ONE, fresh(9)).body(1_000), "signature_agent_unknown"),
        (
            "under the price",
            Signed::new(&one, AGENT_ONE, payment_signature(999, 1_000, None)).body(1_000),
            "price_not_acceptable",
        ),
    ];
    let mut not_base64 = Signed::new(&one, AGENT_ONE, fresh(6)).body(1_000);
    not_base64["paymentPayload"]["payload"]["paymentSignature"] = json!("!!! not base64");
    cases.push(("payment signature not base64", not_base64, "invalid_payment_signature"));
    let mut expired = Signed::new(&one, AGENT_ONE, fresh(10));
    (expired.created_s, expired.expires_s) = (now_s() - 1_000, now_s() - 900);
    cases.push(("expired", expired.body(1_000), "invalid_signature"));
    let mut too_long = Signed::new(&one, AGENT_ONE, fresh(11));
    too_long.expires_s = too_long.created_s + 3_600;
    cases.push(("validity too long", too_long.body(1_000), "invalid_signature"));
    // Tampering after signing: the amount in PAYMENT-SIGNATURE changes, the signature does not.
    let mut tampered = Signed::new(&one, AGENT_ONE, fresh(12)).body(1_000);
    tampered["paymentPayload"]["payload"]["paymentSignature"] = json!(fresh(13));
    cases.push(("tampered payment", tampered, "invalid_signature"));
    let mut other_host = Signed::new(&one, AGENT_ONE, fresh(14)).body(1_000);
    other_host["paymentPayload"]["payload"]["authority"] = json!("elsewhere.example");
    cases.push(("other authority", other_host, "invalid_signature"));
    let mut untagged = Signed::new(&one, AGENT_ONE, fresh(15)).body(1_000);
    let input = untagged["paymentPayload"]["payload"]["signatureInput"].as_str().unwrap().replace("web-bot-auth", "x");
    untagged["paymentPayload"]["payload"]["signatureInput"] = json!(input);
    cases.push(("not web-bot-auth", untagged, "invalid_signature"));
    let mut unsigned_agent = Signed::new(&one, AGENT_ONE, fresh(16)).body(1_000);
    let input = unsigned_agent["paymentPayload"]["payload"]["signatureInput"]
        .as_str()
        .unwrap()
        .replace(" \"signature-agent\"", "");
    unsigned_agent["paymentPayload"]["payload"]["signatureInput"] = json!(input);
    cases.push(("agent not covered", unsigned_agent, "invalid_payment_signature"));
    let mut bad_field = Signed::new(&one, AGENT_ONE, fresh(17)).body(1_000);
    bad_field["paymentPayload"]["payload"]["signature"] = json!(12);
    cases.push(("malformed forward", bad_field, "invalid_payload"));
    for (name, body, reason) in cases {
        for path in ["/verify", "/settle"] {
            let (status, answer) = post(&http, &addr, path, &body).await;
            let field = if path == "/verify" { "invalidReason" } else { "errorReason" };
            assert_eq!((status, answer[field].as_str()), (200, Some(reason)), "{name} {path}: {answer}");
        }
    }
    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    assert_eq!(owed(&rows), vec![("crawler-1".into(), "300".into()), ("crawler-2".into(), "500".into())]);

    // The ledger keeps what was signed: anyone can re-derive the IOU and re-check the signature.
    let found = c
        .query
        .get_iou(GetIouRequest {
            payer_key: two.verifying_key().to_bytes().to_vec(),
            nonce: nonce_for_payment_id(id).to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(found.found);
    assert_eq!(found.evidence_format, "web-bot-auth");
    assert_eq!(found.commitment.as_ref().map(|c| c.seq), Some(2));
    let evidence = parse_evidence(&found.evidence).unwrap();
    assert_eq!(
        (evidence.kind, evidence.iou.amount, evidence.iou.payee.as_str()),
        (EvidenceKind::WebBotAuth, 1_000, PAYEE)
    );
    assert_eq!(found.charged, 500, "the ledger records the charge, the evidence the commitment");
    let signature = ed25519_dalek::Signature::from_slice(&found.iou.unwrap().signature).unwrap();
    let base = evidence.signed_message().expect("a Web Bot Auth record holds its base");
    two.verifying_key().verify(base, &signature).expect("the stored base verifies");
    let base = std::str::from_utf8(base).unwrap();
    assert!(base.starts_with("\"@authority\": site-a.example\n"), "{base}");

    // The audit re-derives and re-verifies every record, Web Bot Auth ones included.
    server.terminate();
    let (ok, stdout, stderr) = run_tally(&["ledger", "verify", "--json", "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{stdout} {stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (&report["clean"], &report["records"], &report["web_bot_auth_records"]),
        (&json!(true), &json!(2), &json!(2))
    );
    assert_eq!(report["signatures_verified"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawler_pays_with_its_request_signature() {
    const PRICE: u64 = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("ledger"));
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 2, 2_000).await;
    c.admin
        .set_signature_agent(SetSignatureAgentRequest {
            payer_id: "crawler-1".into(),
            signature_agent: AGENT_ONE.into(),
        })
        .await
        .unwrap();

    let paywall = PaywallLayer::new(PaywallConfig {
        facilitator_url: format!("http://{}", server.http_addr),
        network: NETWORK.into(),
        asset: "USD".into(),
        pay_to: PAYEE.into(),
        price: PRICE,
        pricing: tally_x402::middleware::Pricing::Fixed,
        payment_id_required: false,
        description: "an article".into(),
        http: reqwest::Client::new(),
        registration_url: None,
        asset_scale: 6,
    });
    let app = Router::new().route("/article", get(|| async { "the article" })).route_layer(paywall);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{site}/article");

    let crawler = Crawler::new(signer(1), NETWORK)
        .with_format(PaymentFormat::WebBotAuth)
        .with_signature_agent(&format!("\"{AGENT_ONE}\""));
    let paid = crawler.fetch(&url).await.unwrap();
    assert_eq!(paid.status, 200, "{:?}", paid.error());
    assert_eq!(paid.body, b"the article");
    let receipt = paid.payment_response.expect("PAYMENT-RESPONSE");
    assert_eq!((receipt.payer.as_deref(), receipt.amount.as_str()), (Some("crawler-1"), "1500"));

    // The same crawler under another agent is refused; nothing is served or owed.
    let impostor = Crawler::new(signer(1), NETWORK)
        .with_format(PaymentFormat::WebBotAuth)
        .with_signature_agent("\"https://impostor.example\"");
    let refused = impostor.fetch(&url).await.unwrap();
    assert_eq!((refused.status, refused.error()), (402, Some("signature_agent_unknown")));
    assert_ne!(refused.body, b"the article");

    // Over the credit limit: insufficient_funds, exactly as for IOUs.
    let refused = crawler.fetch(&url).await.unwrap();
    assert_eq!((refused.status, refused.error()), (402, Some("insufficient_funds")));

    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    assert_eq!(owed(&rows), vec![("crawler-1".into(), "1500".into())]);
    assert_eq!(rows[0].payee, PAYEE);
}

//! One payment buys one resource at its price: the x402 door of a real
//! `tally serve` over HTTP on 127.0.0.1, directly (`/verify`, `/settle`) and
//! behind `PaywallLayer` on a real axum site. Each test pins one defect that
//! was reproduced against the engine before the fix:
//!
//! - **The crawler set the price**: a 1-unit IOU bought a 1,500-unit article.
//!   Now a commitment below the offer is `price_not_acceptable`, and nothing
//!   is recorded.
//! - **One IOU bought many resources**: the same `PAYMENT-SIGNATURE` unlocked
//!   `/article` and then `/other`, charged once. Now a commitment for another
//!   resource is `resource_mismatch`, and a payment already settled buys no
//!   second response without a payment identifier (`payment_already_used`).
//! - **Retries under a payment identifier** are served from the ledger (the
//!   cached result: the same commitment, charged once); a different payload
//!   under the id is a 409.
//! - **Dynamic pricing**: the server may charge less than it offered at
//!   settle time (what the official SDKs' settlement overrides send); the
//!   ledger records the lower charge and `PAYMENT-RESPONSE` reports it. An
//!   error response is never charged.
//! - Amounts are canonical decimal strings.
//! - `PaywallLayer` serves only what was charged its price: a facilitator
//!   that answers `success` with another amount (buggy, or not Tally's) gets
//!   a 502 and the page stays shut.

mod common;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use common::*;
use serde_json::{Value, json};
use tally_core::SignedIou;
use tally_ingest::proto::ExposureRequest;
use tally_x402::client::Crawler;
use tally_x402::commitment::{TallyIouPayload, nonce_for_payment_id, payment_identifier_echo};
use tally_x402::middleware::{
    Charge, HEADER_PAYMENT_SIGNATURE, PaymentResponse, PaywallConfig, PaywallLayer, Pricing, decode_header_json,
    encode_header_json,
};
use tally_x402::types::PaymentRequired;

const PAYEE: &str = "site-a.example";
const PRICE: u64 = 1_500;

fn requirements(amount: &str, resource: Option<&str>) -> Value {
    let mut requirements =
        json!({ "scheme": "batch-settlement", "network": NETWORK, "amount": amount, "asset": "USD", "payTo": PAYEE });
    if let Some(resource) = resource {
        requirements["extra"] = json!({ "resource": resource });
    }
    requirements
}

/// An IOU of `key` for `resource`, committing `amount`.
fn iou_for(key: &ed25519_dalek::SigningKey, amount: u64, nonce: [u8; 16], resource: &str) -> SignedIou {
    let mut signed = signed_domain_iou(key, PAYEE, amount, nonce);
    signed.iou.resource = resource.to_owned();
    use ed25519_dalek::Signer;
    signed.signature = key.sign(&signed.iou.signing_bytes()).to_bytes();
    signed
}

/// A facilitator body: the client accepted an offer of `offered`; the server asks `charge` now.
fn body(signed: &SignedIou, offered: &str, charge: &str, resource: &str, payment_id: Option<&str>) -> Value {
    let mut payload = json!({
        "x402Version": 2,
        "resource": { "url": resource },
        "accepted": requirements(offered, None),
        "payload": TallyIouPayload::from_signed(signed),
    });
    if let Some(id) = payment_id {
        payload["extensions"] = json!({ "payment-identifier": payment_identifier_echo(false, id) });
    }
    json!({ "x402Version": 2, "paymentPayload": payload, "paymentRequirements": requirements(charge, Some(resource)) })
}

async fn post(http: &reqwest::Client, addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = http.post(format!("http://{addr}{path}")).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn owed(server: &ServerProcess, payer: &str) -> String {
    let mut c = clients(&server.addr).await;
    let rows = c.query.exposure(ExposureRequest { payer: payer.into() }).await.unwrap().into_inner().rows;
    rows.first().map(|r| r.owed.clone()).unwrap_or_else(|| "0".into())
}

async fn registered_server(dir: &std::path::Path) -> ServerProcess {
    let server = ServerProcess::start(&dir.join("ledger"));
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 3, 100_000).await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commitment_below_the_price_buys_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = registered_server(dir.path()).await;
    let http = reqwest::Client::new();
    let article = format!("https://{PAYEE}/article");
    // The defect's exact request: a 1-unit IOU offered against a 1,500 price.
    let cheap = iou_for(&signer(1), 1, nonce(1, 1), &article);
    let mut lying = body(&cheap, "1500", "1500", &article, None);
    for path in ["/verify", "/settle"] {
        let (status, answer) = post(&http, &server.http_addr, path, &lying).await;
        let field = if path == "/verify" { "invalidReason" } else { "errorReason" };
        assert_eq!((status, answer[field].as_str()), (200, Some("price_not_acceptable")), "{path}: {answer}");
    }
    // Nor may the client lower the offer it claims to have accepted.
    lying["paymentPayload"]["accepted"]["amount"] = json!("1");
    let (_, answer) = post(&http, &server.http_addr, "/settle", &lying).await;
    assert_eq!(answer["errorReason"], "invalid_payment_requirements", "{answer}");
    assert_eq!(owed(&server, "crawler-1").await, "0", "nothing was recorded");

    // Amounts have one spelling.
    let fair = iou_for(&signer(1), PRICE, nonce(1, 2), &article);
    for (offered, charge) in [("+1500", "1500"), ("01500", "1500"), ("1500", "01500"), ("1500", "1500.0")] {
        let (_, answer) =
            post(&http, &server.http_addr, "/settle", &body(&fair, offered, charge, &article, None)).await;
        assert_eq!(answer["errorReason"], "invalid_payment_requirements", "{offered}/{charge}: {answer}");
    }
    let mut payload = TallyIouPayload::from_signed(&fair);
    payload.iou.amount = "+1500".into();
    let mut non_canonical_iou = body(&fair, "1500", "1500", &article, None);
    non_canonical_iou["paymentPayload"]["payload"] = serde_json::to_value(payload).unwrap();
    let (_, answer) = post(&http, &server.http_addr, "/settle", &non_canonical_iou).await;
    assert_eq!(answer["errorReason"], "invalid_payload", "{answer}");

    // The fair payment pays: the charge is the price.
    let (status, answer) =
        post(&http, &server.http_addr, "/settle", &body(&fair, "1500", "1500", &article, None)).await;
    assert_eq!((status, answer["success"].as_bool(), answer["amount"].as_str()), (200, Some(true), Some("1500")));
    assert_eq!(owed(&server, "crawler-1").await, "1500");
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_payment_settles_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = registered_server(dir.path()).await;
    let http = reqwest::Client::new();
    let (article, other) = (format!("https://{PAYEE}/article"), format!("https://{PAYEE}/other"));
    let signed = iou_for(&signer(1), PRICE, nonce(2, 1), &article);
    let (status, first) =
        post(&http, &server.http_addr, "/settle", &body(&signed, "1500", "1500", &article, None)).await;
    assert_eq!((status, first["success"].as_bool()), (200, Some(true)), "{first}");

    // The same payment for another resource: its IOU names /article.
    let (_, answer) = post(&http, &server.http_addr, "/settle", &body(&signed, "1500", "1500", &other, None)).await;
    assert_eq!(answer["errorReason"], "tally_resource_mismatch", "{answer}");
    // A server that names the resource and a payload that names another disagree.
    let mut disagreeing = body(&signed, "1500", "1500", &article, None);
    disagreeing["paymentRequirements"]["extra"]["resource"] = json!(other);
    let (_, answer) = post(&http, &server.http_addr, "/settle", &disagreeing).await;
    assert_eq!(answer["errorReason"], "tally_resource_mismatch", "{answer}");
    // The same payment for the same resource again, without a payment identifier:
    // already used, for a server that names its resource and for one that does not
    // (an official SDK server forwards the client's payload as it came).
    for (path, field) in [("/settle", "errorReason"), ("/verify", "invalidReason")] {
        let (_, answer) = post(&http, &server.http_addr, path, &body(&signed, "1500", "1500", &article, None)).await;
        assert_eq!(answer[field], "tally_payment_already_used", "{path}: {answer}");
        let mut unnamed = body(&signed, "1500", "1500", &article, None);
        unnamed["paymentRequirements"].as_object_mut().unwrap().remove("extra");
        let (_, answer) = post(&http, &server.http_addr, path, &unnamed).await;
        assert_eq!(answer[field], "tally_payment_already_used", "{path} without extra.resource: {answer}");
    }
    // An IOU naming no resource buys nothing.
    let nameless = iou_for(&signer(1), PRICE, nonce(2, 2), "");
    let mut no_resource = body(&nameless, "1500", "1500", "", None);
    no_resource["paymentRequirements"].as_object_mut().unwrap().remove("extra");
    no_resource["paymentPayload"].as_object_mut().unwrap().remove("resource");
    let (_, answer) = post(&http, &server.http_addr, "/settle", &no_resource).await;
    assert_eq!(answer["errorReason"], "tally_resource_mismatch", "{answer}");
    assert_eq!(owed(&server, "crawler-1").await, "1500", "charged once, for one request");
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_under_a_payment_identifier_is_answered_from_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let server = registered_server(dir.path()).await;
    let http = reqwest::Client::new();
    let article = format!("https://{PAYEE}/article");
    let id = "pay_7d5d747be160e280504c099d984bcfe0";
    let signed = iou_for(&signer(2), PRICE, nonce_for_payment_id(id), &article);
    let request = body(&signed, "1500", "1500", &article, Some(id));
    let (status, first) = post(&http, &server.http_addr, "/settle", &request).await;
    assert_eq!((status, first["success"].as_bool()), (200, Some(true)), "{first}");
    // The same id and payload: the cached result, on both routes.
    let (status, again) = post(&http, &server.http_addr, "/settle", &request).await;
    assert_eq!((status, &again["transaction"], &again["amount"]), (200, &first["transaction"], &json!("1500")));
    let (_, verified) = post(&http, &server.http_addr, "/verify", &request).await;
    assert_eq!(verified["isValid"], true, "{verified}");
    // The same id with another payload: 409; the same id for another resource: refused.
    let other_payload = iou_for(&signer(2), PRICE + 1, nonce_for_payment_id(id), &article);
    let (status, conflict) =
        post(&http, &server.http_addr, "/settle", &body(&other_payload, "1500", "1500", &article, Some(id))).await;
    assert_eq!((status, conflict["errorReason"].as_str()), (409, Some("tally_payment_identifier_conflict")));
    let (_, elsewhere) = post(
        &http,
        &server.http_addr,
        "/settle",
        &body(&signed, "1500", "1500", &format!("https://{PAYEE}/other"), Some(id)),
    )
    .await;
    assert_eq!(elsewhere["errorReason"], "tally_resource_mismatch", "{elsewhere}");
    // `info.required: true` and no id: 400.
    let mut required = body(&iou_for(&signer(2), PRICE, nonce(3, 1), &article), "1500", "1500", &article, None);
    required["paymentPayload"]["extensions"] = json!({ "payment-identifier": { "info": { "required": true } } });
    let (status, answer) = post(&http, &server.http_addr, "/settle", &required).await;
    assert_eq!((status, answer["errorReason"].as_str()), (400, Some("tally_payment_identifier_required")));
    assert_eq!(owed(&server, "crawler-2").await, "1500", "charged exactly once");
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_time_lower_charge_is_recorded_as_the_lower_amount() {
    let dir = tempfile::tempdir().unwrap();
    let server = registered_server(dir.path()).await;
    let http = reqwest::Client::new();
    let article = format!("https://{PAYEE}/article");
    let signed = iou_for(&signer(3), PRICE, nonce(4, 1), &article);
    // /verify previews the offer; /settle may charge less, never more.
    let (_, verified) = post(&http, &server.http_addr, "/verify", &body(&signed, "1500", "1500", &article, None)).await;
    assert_eq!(verified["isValid"], true, "{verified}");
    let (_, lower_at_verify) =
        post(&http, &server.http_addr, "/verify", &body(&signed, "1500", "700", &article, None)).await;
    assert_eq!(lower_at_verify["invalidReason"], "invalid_payment_requirements");
    for too_much in ["1501", "0"] {
        let (_, answer) =
            post(&http, &server.http_addr, "/settle", &body(&signed, "1500", too_much, &article, None)).await;
        assert_eq!(answer["errorReason"], "invalid_payment_requirements", "{too_much}: {answer}");
    }
    let (status, settled) =
        post(&http, &server.http_addr, "/settle", &body(&signed, "1500", "700", &article, None)).await;
    assert_eq!((status, settled["success"].as_bool(), settled["amount"].as_str()), (200, Some(true), Some("700")));
    assert_eq!(owed(&server, "crawler-3").await, "700", "the ledger records the server's charge");
    // The receipt of the commitment says what was charged.
    let mut c = clients(&server.addr).await;
    let receipt = c
        .query
        .get_receipt(tally_ingest::proto::GetIouRequest {
            payer_key: signed.iou.payer_key.to_vec(),
            nonce: signed.iou.nonce.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((receipt.found, receipt.charged), (true, 700));
    server.kill();
}

/// A payment identifier's cached result answers only a retry of the same
/// request: the same charge, for a resource the server named. Two ways it
/// used to leak, each reproduced here first:
///
/// - the crawler settles its own payment at a charge of 1 (`/settle` is
///   public), then presents it to the server, whose 1,500 `/settle` got the
///   cached `success` (charged 1);
/// - with a server that names no resource (the client's `resource.url` is all
///   the facilitator sees), the same payload and id unlocked any route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_identifier_retry_is_cached_only_for_the_same_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = registered_server(dir.path()).await;
    let http = reqwest::Client::new();
    let article = format!("https://{PAYEE}/article");

    // The crawler's own settle at 1, then the server's at the price.
    let id = "pay_00000000000000000000000000000001";
    let signed = iou_for(&signer(1), PRICE, nonce_for_payment_id(id), &article);
    let (_, own) = post(&http, &server.http_addr, "/settle", &body(&signed, "1500", "1", &article, Some(id))).await;
    assert_eq!((own["success"].as_bool(), own["amount"].as_str()), (Some(true), Some("1")), "{own}");
    let at_price = body(&signed, "1500", "1500", &article, Some(id));
    let (status, answer) = post(&http, &server.http_addr, "/settle", &at_price).await;
    assert_eq!((status, answer["errorReason"].as_str()), (409, Some("tally_payment_identifier_conflict")), "{answer}");
    // (`/verify` previews at the offer, which a lower recorded charge is within:
    // under dynamic pricing the charge is known only at `/settle`, which checks it.)
    // The crawler's own retry at its own charge is still the cached result.
    let (_, again) = post(&http, &server.http_addr, "/settle", &body(&signed, "1500", "1", &article, Some(id))).await;
    assert_eq!((again["success"].as_bool(), &again["transaction"]), (Some(true), &own["transaction"]));
    assert_eq!(owed(&server, "crawler-1").await, "1", "recorded once, at the charge first settled");

    // A server that names no resource: the first settle records; the same
    // payment and id again buys nothing more (it may be for another route).
    let id = "pay_00000000000000000000000000000002";
    let signed = iou_for(&signer(2), PRICE, nonce_for_payment_id(id), &article);
    let mut unnamed = body(&signed, "1500", "1500", &article, Some(id));
    unnamed["paymentRequirements"].as_object_mut().unwrap().remove("extra");
    let (_, first) = post(&http, &server.http_addr, "/settle", &unnamed).await;
    assert_eq!(first["success"], true, "{first}");
    let (_, second) = post(&http, &server.http_addr, "/settle", &unnamed).await;
    assert_eq!(second["errorReason"], "tally_payment_already_used", "{second}");
    let (_, previewed) = post(&http, &server.http_addr, "/verify", &unnamed).await;
    assert_eq!(previewed["invalidReason"], "tally_payment_already_used", "{previewed}");
    assert_eq!(owed(&server, "crawler-2").await, "1500");
    server.kill();
}

/// A paywall that requires a payment identifier refuses a payment without
/// one (400), even when the client leaves the extension out altogether.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paywall_requiring_a_payment_identifier_refuses_a_payment_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = registered_server(dir.path()).await;
    let config = PaywallConfig {
        facilitator_url: format!("http://{}", server.http_addr),
        network: NETWORK.into(),
        asset: "USD".into(),
        pay_to: PAYEE.into(),
        price: PRICE,
        pricing: Pricing::Fixed,
        payment_id_required: true,
        description: "a page".into(),
        http: reqwest::Client::new(),
        registration_url: None,
        asset_scale: 6,
    };
    let app = Router::new().route("/article", get(|| async { "the article" })).route_layer(PaywallLayer::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let unpaid = http.get(format!("{site}/article")).send().await.unwrap();
    let required: PaymentRequired =
        decode_header_json(unpaid.headers()["payment-required"].as_bytes(), 16 * 1024).unwrap();
    let payment = crawler_payment(&required, &signer(3), &format!("{site}/article"));
    let answered = http.get(format!("{site}/article")).header(HEADER_PAYMENT_SIGNATURE, &payment).send().await.unwrap();
    assert_eq!(
        (answered.status().as_u16(), error_of(&answered).as_deref()),
        (400, Some("tally_payment_identifier_required"))
    );
    assert_eq!(owed(&server, "crawler-3").await, "0", "nothing was settled");
    // A URL too long to name exactly is refused, never cut to a shorter name.
    let long = format!("{site}/article?q={}", "x".repeat(800));
    let answered = http.get(long).header(HEADER_PAYMENT_SIGNATURE, &payment).send().await.unwrap();
    assert_eq!(answered.status().as_u16(), 414);
    server.kill();
}

/// A facilitator that answers every `/settle` with `success` but reports
/// another charge than the one asked: `answer_amount` (a faulty peer, as a
/// fault test injects one; the site under test is the real `PaywallLayer`).
async fn start_misreporting_facilitator(answer_amount: &'static str) -> String {
    let app = Router::new().route(
        "/settle",
        axum::routing::post(move || async move {
            axum::Json(json!({
                "success": true,
                "transaction": format!("1:{}", "ab".repeat(32)),
                "network": NETWORK,
                "payer": "crawler-1",
                "amount": answer_amount,
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paywall_serves_nothing_a_facilitator_charged_differently() {
    let http = reqwest::Client::new();
    for (answer, what) in [("1", "less than the price"), ("1501", "more than the price")] {
        let facilitator = start_misreporting_facilitator(answer).await;
        let site = start_site(&facilitator).await;
        let unpaid = http.get(format!("{site}/article")).send().await.unwrap();
        let required: PaymentRequired =
            decode_header_json(unpaid.headers()["payment-required"].as_bytes(), 16 * 1024).unwrap();
        let payment = crawler_payment(&required, &signer(1), &format!("{site}/article"));
        let answered =
            http.get(format!("{site}/article")).header(HEADER_PAYMENT_SIGNATURE, &payment).send().await.unwrap();
        assert_eq!(answered.status().as_u16(), 502, "{what}");
        assert!(answered.headers().get("payment-response").is_none(), "{what}");
        let text = answered.text().await.unwrap();
        assert!(!text.contains("the article") && text.contains("tally_facilitator_charge_mismatch"), "{what}: {text}");
    }
}

/// A site with a fixed-price `/article` and `/other`, and a metered `/metered`
/// (up to the price; the handler says what it charges), behind `PaywallLayer`.
async fn start_site(facilitator: &str) -> String {
    let config = |price: u64, pricing: Pricing| PaywallConfig {
        facilitator_url: format!("http://{facilitator}"),
        network: NETWORK.into(),
        asset: "USD".into(),
        pay_to: PAYEE.into(),
        price,
        pricing,
        payment_id_required: false,
        description: "a page".into(),
        http: reqwest::Client::new(),
        registration_url: None,
        asset_scale: 6,
    };
    let metered = Router::new()
        .route("/metered", get(|| async { (axum::Extension(Charge(700)), "700 units of work") }))
        .route("/broken", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "failed").into_response() }))
        .route_layer(PaywallLayer::new(config(PRICE, Pricing::UpTo)));
    let app = Router::new()
        .route("/article", get(|| async { "the article" }))
        .route("/other", get(|| async { "another article" }))
        .route_layer(PaywallLayer::new(config(PRICE, Pricing::Fixed)))
        .merge(metered);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn error_of(response: &reqwest::Response) -> Option<String> {
    let header = response.headers().get("payment-required")?;
    let required: PaymentRequired = decode_header_json(header.as_bytes(), 16 * 1024).ok()?;
    required.error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_paywall_a_payment_opens_one_page_and_pays_what_it_is_charged() {
    let dir = tempfile::tempdir().unwrap();
    let server = registered_server(dir.path()).await;
    let site = start_site(&server.http_addr).await;
    let http = reqwest::Client::new();

    // The offer names the resource and the payment-identifier extension in the spec's shape.
    let unpaid = http.get(format!("{site}/article")).send().await.unwrap();
    let required: PaymentRequired =
        decode_header_json(unpaid.headers()["payment-required"].as_bytes(), 16 * 1024).unwrap();
    assert_eq!(required.accepts[0].extra.as_ref().unwrap()["resource"], format!("{site}/article"));
    let extension = &required.extensions.as_ref().unwrap()["payment-identifier"];
    assert_eq!((&extension["info"]["required"], extension["schema"]["type"].as_str()), (&json!(false), Some("object")));

    // A crawler pays for /article, and reads it.
    let crawler = Crawler::new(signer(1), NETWORK);
    let paid = crawler.fetch(&format!("{site}/article")).await.unwrap();
    assert_eq!((paid.status, paid.body.as_slice()), (200, b"the article".as_slice()), "{:?}", paid.error());
    // Its PAYMENT-SIGNATURE, replayed: not for /other, and not twice for /article.
    let payment = crawler_payment(&required, &signer(1), &format!("{site}/article"));
    let replay = http.get(format!("{site}/article")).header(HEADER_PAYMENT_SIGNATURE, &payment).send().await.unwrap();
    assert_eq!(replay.status().as_u16(), 200, "a fresh payment for /article pays");
    let again = http.get(format!("{site}/article")).header(HEADER_PAYMENT_SIGNATURE, &payment).send().await.unwrap();
    assert_eq!((again.status().as_u16(), error_of(&again).as_deref()), (402, Some("tally_payment_already_used")));
    let elsewhere = http.get(format!("{site}/other")).header(HEADER_PAYMENT_SIGNATURE, &payment).send().await.unwrap();
    assert_eq!((elsewhere.status().as_u16(), error_of(&elsewhere).as_deref()), (402, Some("tally_resource_mismatch")));
    assert!(!elsewhere.text().await.unwrap().contains("another article"));
    assert_eq!(owed(&server, "crawler-1").await, "3000", "two payments, two pages");

    // Metered: the handler charges 700 of the 1,500 offered; the receipt and the ledger say 700.
    let metered = Crawler::new(signer(2), NETWORK);
    let paid = metered.fetch(&format!("{site}/metered")).await.unwrap();
    assert_eq!(paid.status, 200, "{:?}", paid.error());
    let receipt: &PaymentResponse = paid.payment_response.as_ref().expect("PAYMENT-RESPONSE");
    assert_eq!(receipt.amount, "700");
    assert_eq!(owed(&server, "crawler-2").await, "700");
    // An error response is never charged.
    let broken = metered.fetch(&format!("{site}/broken")).await.unwrap();
    assert_eq!(broken.status, 500);
    assert!(broken.payment_response.is_none());
    assert_eq!(owed(&server, "crawler-2").await, "700");
    server.kill();
}

/// A `PAYMENT-SIGNATURE` for the offer, as a crawler builds it: a fresh IOU for `resource`.
fn crawler_payment(required: &PaymentRequired, key: &ed25519_dalek::SigningKey, resource: &str) -> String {
    let offer = required.accepts[0].clone();
    let signed = iou_for(key, PRICE, nonce(9, 9), resource);
    let payload = tally_x402::types::PaymentPayload {
        x402_version: 2,
        resource: Some(required.resource.clone()),
        accepted: offer,
        payload: serde_json::to_value(TallyIouPayload::from_signed(&signed)).unwrap(),
        extensions: None,
    };
    encode_header_json(&payload)
}

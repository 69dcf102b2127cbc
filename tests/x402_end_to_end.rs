//! The whole x402 path over real HTTP on 127.0.0.1: a crawler
//! ([`tally_x402::client::Crawler`]) fetches an article from a site behind
//! [`tally_x402::middleware::PaywallLayer`], which settles with a real
//! `tally serve` process as its facilitator. Paid requests are served with a
//! commitment receipt and show up in `tally balance`; unknown crawlers,
//! crawlers over their credit and malformed payments get 402 with a reason and
//! nothing; with the facilitator gone, nothing is served (serve after settle).

mod common;

use axum::Router;
use axum::routing::get;
use common::*;
use ed25519_dalek::SigningKey;
use serde_json::Value;
use tally_x402::client::Crawler;
use tally_x402::middleware::{
    HEADER_PAYMENT_REQUIRED, PaymentResponse, PaywallConfig, PaywallLayer, decode_header_json,
};
use tally_x402::types::PaymentRequired;

const PAYEE: &str = "site-a.example";
const PRICE: u64 = 1500;
const ARTICLE: &str = "the paid article text";

/// The site, in process on 127.0.0.1:0; returns its base URL.
async fn start_site(facilitator: &str) -> String {
    let paywall = PaywallLayer::new(PaywallConfig {
        facilitator_url: format!("http://{facilitator}"),
        network: NETWORK.into(),
        asset: "USD".into(),
        pay_to: PAYEE.into(),
        price: PRICE,
        pricing: tally_x402::middleware::Pricing::Fixed,
        payment_id_required: false,
        description: "an article".into(),
        http: reqwest::Client::new(),
        registration_url: Some("https://tally.example/register".into()),
        asset_scale: 6,
    });
    let app = Router::new().route("/article", get(|| async { ARTICLE })).route_layer(paywall);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn owed_to_site(grpc: &str) -> Vec<(String, String)> {
    let server = format!("http://{grpc}");
    let (ok, stdout, stderr) =
        run_tally(&["balance", "--payee", PAYEE, "--json", "--server", &server, "--token", TOKEN]);
    assert!(ok, "tally balance failed: {stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["payer"].as_str().unwrap().to_owned(), r["amount_units"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawler_pays_site_serves_after_settle() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("ledger"));
    let mut c = clients(&server.addr).await;
    // Room for one article per crawler, not two.
    register_basics(&mut c.admin, 2, 2_000).await;
    let site = start_site(&server.http_addr).await;
    let url = format!("{site}/article");
    let http = reqwest::Client::new();

    // Unpaid: 402 with a decodable offer, and no article.
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 402);
    let header = response.headers().get(HEADER_PAYMENT_REQUIRED).expect("PAYMENT-REQUIRED").clone();
    let required: PaymentRequired = decode_header_json(header.as_bytes(), 16 * 1024).unwrap();
    assert_eq!(required.x402_version, 2);
    assert_eq!(required.error, None);
    assert_eq!(required.resource.url, url);
    let offer = &required.accepts[0];
    assert_eq!(
        (offer.scheme.as_str(), offer.network.as_str(), offer.amount.as_str(), offer.asset.as_str()),
        ("batch-settlement", NETWORK, "1500", "USD")
    );
    assert_eq!(offer.pay_to, PAYEE);
    let extensions = required.extensions.unwrap();
    assert_eq!(extensions["http-message-signatures"]["info"]["tags"][0], "web-bot-auth");
    assert_eq!(extensions["payment-identifier"]["info"]["required"], false);
    assert!(!response.text().await.unwrap().contains(ARTICLE));

    // Malformed payments are 402 invalid_payload, never 500, never served.
    for junk in ["!!! not base64", "eyJoZWxsbyI6MX0=", ""] {
        let response = http.get(&url).header("payment-signature", junk).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 402, "{junk:?}");
        let required: PaymentRequired =
            decode_header_json(response.headers()[HEADER_PAYMENT_REQUIRED].as_bytes(), 16 * 1024).unwrap();
        assert_eq!(required.error.as_deref(), Some("invalid_payload"), "{junk:?}");
        assert!(!response.text().await.unwrap().contains(ARTICLE));
    }
    let oversized = "A".repeat(17 * 1024);
    let response = http.get(&url).header("payment-signature", oversized).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 402);

    // Paid: 200, the article, and a receipt naming the commitment.
    let crawler = Crawler::new(signer(1), NETWORK);
    let paid = crawler.fetch(&url).await.unwrap();
    assert_eq!(paid.status, 200, "{:?}", paid.error());
    assert!(paid.paid);
    assert_eq!(paid.body, ARTICLE.as_bytes());
    let receipt: &PaymentResponse = paid.payment_response.as_ref().expect("PAYMENT-RESPONSE");
    assert!(receipt.success);
    let (seq, hash) = receipt.transaction.split_once(':').expect("<seq>:<hash>");
    assert!(seq.parse::<u64>().is_ok() && hash.len() == 64 && hex::decode(hash).is_ok(), "{}", receipt.transaction);
    assert_eq!(receipt.network, NETWORK);
    assert_eq!(receipt.payer.as_deref(), Some("crawler-1"));
    assert_eq!((receipt.amount.as_str(), receipt.asset.as_str()), ("1500", "USD"));
    assert!(receipt.extra.timestamp > 0);
    assert_eq!(owed_to_site(&server.addr), vec![("crawler-1".to_owned(), "1500".to_owned())]);

    // An unknown key: 402 tally_payer_key_unknown, nothing served or owed.
    let stranger = Crawler::new(SigningKey::from_bytes(&[99; 32]), NETWORK);
    let refused = stranger.fetch(&url).await.unwrap();
    assert_eq!((refused.status, refused.error()), (402, Some("tally_payer_key_unknown")));
    assert!(refused.paid && refused.payment_response.is_none());
    assert!(!String::from_utf8_lossy(&refused.body).contains(ARTICLE));

    // Over the credit limit (1500 + 1500 > 2000): 402 insufficient_funds.
    let refused = crawler.fetch(&url).await.unwrap();
    assert_eq!((refused.status, refused.error()), (402, Some("insufficient_funds")));
    assert!(!String::from_utf8_lossy(&refused.body).contains(ARTICLE));
    assert_eq!(owed_to_site(&server.addr), vec![("crawler-1".to_owned(), "1500".to_owned())]);

    // A payment identifier: the retry is answered from the replay index, not charged again.
    let second = Crawler::new(signer(2), NETWORK);
    let id = "article-read-000000000001";
    let first = second.fetch_with_payment_id(&url, id).await.unwrap();
    assert_eq!(first.status, 200, "{:?}", first.error());
    let first_tx = first.payment_response.unwrap().transaction;
    let mut owed = owed_to_site(&server.addr);
    owed.sort();
    assert_eq!(owed, vec![("crawler-1".into(), "1500".into()), ("crawler-2".into(), "1500".into())]);

    // Retrying under the same identifier never charges twice: within the same second the
    // re-signed IOU is byte-identical (the original commitment comes back); later it differs
    // and the conflict passes through as 409.
    let again = second.fetch_with_payment_id(&url, id).await.unwrap();
    match again.status {
        200 => assert_eq!(again.payment_response.unwrap().transaction, first_tx),
        409 => assert_eq!(again.error(), Some("tally_payment_identifier_conflict")),
        other => panic!("unexpected status {other}"),
    }
    let mut owed = owed_to_site(&server.addr);
    owed.sort();
    assert_eq!(owed, vec![("crawler-1".into(), "1500".into()), ("crawler-2".into(), "1500".into())]);

    // The facilitator dies: the site refuses to serve (502/503) rather than serve unpaid.
    server.kill();
    let down = crawler.fetch(&url).await.unwrap();
    assert!(matches!(down.status, 502 | 503), "status {}", down.status);
    assert!(down.payment_response.is_none());
    assert!(!String::from_utf8_lossy(&down.body).contains(ARTICLE));
    let down = second.fetch_with_payment_id(&url, id).await.unwrap();
    assert!(matches!(down.status, 502 | 503), "status {}", down.status);
    assert!(!String::from_utf8_lossy(&down.body).contains(ARTICLE));
}

//! `tally gate` in front of a real origin server, against a real `tally serve`:
//! standalone (its own process, a remote facilitator) and inside `tally serve`
//! (`--gate`, the engine's facilitator in process).
//!
//! What is proved, end to end over real sockets:
//! - free paths pass unpaid, and the origin's bytes come back unchanged;
//! - a priced path answers 402 (x402's `PAYMENT-REQUIRED` and pay-per-crawl's
//!   `crawler-price`), then 200 with the origin's bytes once paid, and the
//!   ledger holds exactly that charge;
//! - an origin error is passed on and never charged;
//! - a payment replayed for another path, or again for the same path, buys nothing;
//! - a range-priced route is charged what the origin narrowed it to;
//! - a denied payer is refused before the origin is asked;
//! - a pay-per-crawl crawler signed by an independent RFC 9421 implementation
//!   (PyPI `http-message-signatures`) is charged, gets `crawler-charged`, and is
//!   recorded; its replay is refused;
//! - HTTP/2 (prior knowledge) works; per-route metrics count what happened.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use common::*;
use serde_json::Value;
use tally_x402::client::Crawler;
use tally_x402::middleware::{HEADER_PAYMENT_REQUIRED, HEADER_PAYMENT_SIGNATURE};
use tally_x402::types::PaymentRequired;

const PAYEE: &str = "site-a.example";

/// The origin: a few routes and a count of the requests that reached it.
async fn start_origin() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = |hits: Arc<AtomicUsize>| {
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                next.run(request).await
            }
        }
    };
    let app = Router::new()
        .route("/robots.txt", get(|| async { "User-agent: *\nAllow: /\n" }))
        .route(
            "/articles/{id}",
            get(|UrlPath(id): UrlPath<String>, headers: axum::http::HeaderMap| async move {
                let payer = headers.get("tally-payer").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let leaked = headers.contains_key("payment-signature");
                format!("article {id} for {payer} leaked={leaked}")
            }),
        )
        .route("/broken", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "origin failed").into_response() }))
        .route(
            "/search",
            get(|uri: axum::http::Uri| async move {
                // The origin narrows the route's range per response (`?charge=` here, its own logic in life).
                let charge = uri.query().and_then(|q| q.strip_prefix("charge=")).unwrap_or_default().to_owned();
                ([("tally-charge", charge)], "search results").into_response()
            }),
        )
        .route("/big", get(|| async { vec![b'x'; 3 * 1024 * 1024] }))
        .layer(axum::middleware::from_fn(counted(hits.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

fn price_list(dir: &Path, upstream: &str) -> PathBuf {
    let text = format!(
        r#"
upstream = "{upstream}"
network = "{NETWORK}"
pay_to = "{PAYEE}"
asset = "USD"
[assets]
USD = 6

[[route]]
name = "articles"
path = "/articles/*"
price = "0.01"

[[route]]
name = "broken"
path = "/broken"
price = "0.01"

[[route]]
name = "big"
path = "/big"
price = "0.000001"

[[route]]
name = "search"
path = "/search"
price_min = "0.001"
price_max = "0.005"
deny = ["crawler-3"]
"#
    );
    let path = dir.join("prices.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `tally gate` as its own process, stopped by pid when dropped.
struct GateProcess {
    child: Child,
    addr: String,
    metrics_addr: String,
}

impl GateProcess {
    fn start(prices: &Path, facilitator_http: &str, dir: &Path) -> GateProcess {
        let ready = dir.join("gate.ready");
        let _ = std::fs::remove_file(&ready);
        let facilitator = format!("http://{facilitator_http}");
        let mut child = Command::new(tally_binary())
            .args(["gate", "--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--facilitator", &facilitator])
            .arg("--prices")
            .arg(prices)
            .arg("--ready-file")
            .arg(&ready)
            .env("TALLY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tally gate");
        let text = poll(Duration::from_secs(60), || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("tally gate exited before it was ready: {status:?}");
            }
            std::fs::read_to_string(&ready).ok()
        });
        let ready: Value = serde_json::from_str(&text).unwrap();
        GateProcess {
            child,
            addr: ready["gate_addr"].as_str().unwrap().to_owned(),
            metrics_addr: ready["metrics_addr"].as_str().unwrap().to_owned(),
        }
    }
}

impl Drop for GateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (payer, smallest units) owed to the payee, from the ledger through `tally balance`.
fn owed(grpc: &str) -> Vec<(String, String)> {
    let server = format!("http://{grpc}");
    let (ok, stdout, stderr) =
        run_tally(&["balance", "--payee", PAYEE, "--json", "--server", &server, "--token", TOKEN]);
    assert!(ok, "tally balance failed: {stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    let mut rows: Vec<(String, String)> = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["payer"].as_str().unwrap().to_owned(), r["amount_units"].as_str().unwrap().to_owned()))
        .collect();
    rows.sort();
    rows
}

fn owed_by(grpc: &str, payer: &str) -> u64 {
    owed(grpc).iter().find(|(p, _)| p == payer).map_or(0, |(_, units)| units.parse().unwrap())
}

async fn get_raw(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// The scenario both deployments must pass.
async fn gated_site_is_paid_and_never_gives_away_a_page(gate: &str, grpc: &str, origin_hits: &AtomicUsize) {
    let base = format!("http://{gate}");

    // Free paths pass unpaid.
    let robots = get_raw(&format!("{base}/robots.txt"), &[]).await;
    assert_eq!(robots.status(), 200);
    assert!(robots.headers().get("payment-response").is_none());
    assert_eq!(robots.text().await.unwrap(), "User-agent: *\nAllow: /\n");

    // A priced path: 402 in both dialects, and the origin is not asked.
    let hits_before = origin_hits.load(Ordering::SeqCst);
    let offer = get_raw(&format!("{base}/articles/1"), &[]).await;
    assert_eq!(offer.status(), 402);
    assert_eq!(offer.headers()["crawler-price"], "USD 0.01");
    let required: PaymentRequired =
        tally_x402::middleware::decode_header_json(offer.headers()[HEADER_PAYMENT_REQUIRED].as_bytes(), 16 * 1024)
            .unwrap();
    assert_eq!(required.accepts[0].amount, "10000");
    assert_eq!(required.accepts[0].extra.as_ref().unwrap()["resource"], format!("{base}/articles/1"));
    assert_eq!(origin_hits.load(Ordering::SeqCst), hits_before, "an unpaid request never reaches the origin");

    // Paid: the origin's bytes, with the receipt; the origin learns who paid, never the payment.
    let crawler = Crawler::new(signer(1), NETWORK);
    let paid = crawler.fetch(&format!("{base}/articles/1")).await.unwrap();
    assert_eq!(paid.status, 200, "{}", String::from_utf8_lossy(&paid.body));
    assert_eq!(paid.body, b"article 1 for crawler-1 leaked=false");
    let receipt = paid.payment_response.expect("PAYMENT-RESPONSE");
    assert_eq!((receipt.amount.as_str(), receipt.payer.as_deref()), ("10000", Some("crawler-1")));
    assert_eq!(owed_by(grpc, "crawler-1"), 10_000);

    // An origin error is passed on, uncharged.
    let broken = crawler.fetch(&format!("{base}/broken")).await.unwrap();
    assert_eq!(broken.status, 500);
    assert!(broken.payment_response.is_none());
    assert_eq!(owed_by(grpc, "crawler-1"), 10_000, "an error response is never charged");

    // One payment, one response: the same PAYMENT-SIGNATURE for another path, or again, buys nothing.
    let offer = get_raw(&format!("{base}/articles/2"), &[]).await;
    let required: PaymentRequired =
        tally_x402::middleware::decode_header_json(offer.headers()[HEADER_PAYMENT_REQUIRED].as_bytes(), 16 * 1024)
            .unwrap();
    let payment = Crawler::new(signer(2), NETWORK).payment_for(&required).unwrap();
    let first = get_raw(&format!("{base}/articles/2"), &[(HEADER_PAYMENT_SIGNATURE, &payment)]).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "article 2 for crawler-2 leaked=false");
    let replayed = get_raw(&format!("{base}/articles/3"), &[(HEADER_PAYMENT_SIGNATURE, &payment)]).await;
    assert_eq!(replayed.status(), 402);
    assert_eq!(replayed.json::<Value>().await.unwrap()["error"], "tally_resource_mismatch");
    let again = get_raw(&format!("{base}/articles/2"), &[(HEADER_PAYMENT_SIGNATURE, &payment)]).await;
    assert_eq!(again.status(), 402);
    assert_eq!(again.json::<Value>().await.unwrap()["error"], "tally_payment_already_used");
    assert_eq!(owed_by(grpc, "crawler-2"), 10_000, "charged once");

    // A range: the origin narrows the charge; outside the range nothing is delivered or charged.
    let narrowed = crawler.fetch(&format!("{base}/search?charge=0.002")).await.unwrap();
    assert_eq!((narrowed.status, narrowed.body.as_slice()), (200, b"search results".as_slice()));
    assert_eq!(narrowed.payment_response.unwrap().amount, "2000");
    let outside = crawler.fetch(&format!("{base}/search?charge=0.009")).await.unwrap();
    assert_eq!(outside.status, 502);
    assert_eq!(owed_by(grpc, "crawler-1"), 12_000);

    // A denied payer is refused after verify, before the origin.
    let hits_before = origin_hits.load(Ordering::SeqCst);
    let denied = Crawler::new(signer(3), NETWORK).fetch(&format!("{base}/search?charge=0.002")).await.unwrap();
    assert_eq!(denied.status, 403);
    assert_eq!(origin_hits.load(Ordering::SeqCst), hits_before);
    assert_eq!(owed_by(grpc, "crawler-3"), 0);

    // A large body streams through whole.
    let big = crawler.fetch(&format!("{base}/big")).await.unwrap();
    assert_eq!((big.status, big.body.len()), (200, 3 * 1024 * 1024));

    // A request body over the bound is refused before the origin sees it.
    let hits_before = origin_hits.load(Ordering::SeqCst);
    // (Declared, not sent: the gateway answers from the head, so the test never races a reset.)
    let stream = tokio::net::TcpStream::connect(gate).await.unwrap();
    let head =
        format!("POST /robots.txt HTTP/1.1\r\nHost: {gate}\r\nContent-Length: 2097152\r\nConnection: close\r\n\r\n");
    let (status, _) = http_exchange(stream, head.as_bytes()).await.unwrap();
    assert_eq!(status, 413);
    assert_eq!(origin_hits.load(Ordering::SeqCst), hits_before);

    // A path is priced as the origin will read it: no dot segment, `//` or
    // escape slips a priced page through a free pattern or past every route.
    let raw = |target: &'static str| {
        let head = format!("GET {target} HTTP/1.1\r\nHost: {gate}\r\nConnection: close\r\n\r\n");
        async move {
            let stream = tokio::net::TcpStream::connect(gate).await.unwrap();
            http_exchange(stream, head.as_bytes()).await.unwrap().0
        }
    };
    let hits_before = origin_hits.load(Ordering::SeqCst);
    for sneaky in ["/.well-known/../articles/1", "/.well-known/%2e%2e/articles/1", "//articles/1", "/./articles/1"] {
        assert_eq!(raw(sneaky).await, 400, "{sneaky}");
    }
    assert_eq!(raw("/%61rticles/1").await, 402, "an escaped letter is the same priced page");
    assert_eq!(origin_hits.load(Ordering::SeqCst), hits_before, "none of them reached the origin");

    // The discovery listing names every priced route with its offer.
    let listing: Value = get_raw(&format!("{base}/.well-known/x402/resources"), &[]).await.json().await.unwrap();
    let items = listing["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{listing}");
    let articles = items.iter().find(|i| i["resource"] == format!("{base}/articles/*")).unwrap();
    assert_eq!(
        (articles["accepts"][0]["amount"].as_str(), articles["metadata"]["pattern"].as_bool()),
        (Some("10000"), Some(true))
    );
    let search = items.iter().find(|i| i["resource"] == format!("{base}/search")).unwrap();
    assert_eq!(
        (search["accepts"][0]["amount"].as_str(), search["metadata"]["priceRange"].as_bool()),
        (Some("5000"), Some(true))
    );
}

/// A pay-per-crawl crawler, signed by an independent RFC 9421 implementation.
fn pay_per_crawl(seed: u8, url: &str, price: &[&str], replay_to: Option<&str>) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/interop/pay_per_crawl.py");
    let mut command = Command::new("python3");
    command.arg(script).args(["--seed", &hex::encode([seed; 32]), "--url", url]).args(price);
    if let Some(replay) = replay_to {
        command.args(["--replay-to", replay]);
    }
    let output = command.output().expect("python3");
    assert!(output.status.success(), "pay_per_crawl.py: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_gate_charges_only_what_it_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("ledger"));
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 4, 1_000_000).await;
    let (origin, hits) = start_origin().await;
    let gate = GateProcess::start(&price_list(dir.path(), &origin), &server.http_addr, dir.path());

    gated_site_is_paid_and_never_gives_away_a_page(&gate.addr, &server.addr, &hits).await;

    // Cloudflare's dialect: a crawler that only knows pay-per-crawl pays, with a ceiling.
    let url = format!("http://{}/articles/9", gate.addr);
    let replay = format!("http://{}/articles/10", gate.addr);
    let answers = pay_per_crawl(4, &url, &["--max-price", "USD 0.05"], Some(&replay));
    assert_eq!(answers[0]["status"], 402);
    assert_eq!(answers[0]["crawler_price"], "USD 0.01");
    assert_eq!(answers[1]["status"], 200, "{answers:?}");
    assert_eq!(answers[1]["crawler_charged"], "USD 0.01");
    assert_eq!(answers[1]["body_head"], "article 9 for crawler-4 leaked=false");
    assert_eq!(answers[2]["status"], 402, "the same signed request again buys nothing: {answers:?}");
    assert_eq!(owed_by(&server.addr, "crawler-4"), 10_000, "charged the price, not the ceiling");
    // An exact price that is not the price, and a ceiling below it, are refused as Cloudflare names it.
    let wrong = pay_per_crawl(4, &url, &["--exact-price", "USD 0.02"], None);
    assert_eq!(
        (wrong[1]["status"].as_u64(), wrong[1]["crawler_error"].as_str()),
        (Some(402), Some("InvalidCrawlerExactPrice"))
    );
    let low = pay_per_crawl(4, &url, &["--max-price", "USD 0.001"], None);
    assert_eq!(
        (low[1]["status"].as_u64(), low[1]["crawler_error"].as_str()),
        (Some(402), Some("InvalidCrawlerMaxPrice"))
    );
    let exact = pay_per_crawl(4, &format!("http://{}/articles/11", gate.addr), &["--exact-from-offer"], None);
    assert_eq!((exact[1]["status"].as_u64(), exact[1]["crawler_charged"].as_str()), (Some(200), Some("USD 0.01")));
    assert_eq!(owed_by(&server.addr, "crawler-4"), 20_000);

    // The ledger re-derives and re-verifies every record, pay-per-crawl ones included.
    let data = dir.path().join("ledger");
    let (ok, stdout, stderr) = run_tally(&["ledger", "verify", "--json", "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "ledger verify: {stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (report["clean"].as_bool(), report["pay_per_crawl_records"].as_u64()),
        (Some(true), Some(2)),
        "{report}"
    );

    // HTTP/2 with prior knowledge, to a free path.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<String>();
    let response = h2.get(format!("http://{}/robots.txt", gate.addr).parse().unwrap()).await.unwrap();
    assert_eq!((response.status(), response.version()), (StatusCode::OK, axum::http::Version::HTTP_2));
    // And paid over HTTP/2: the host comes from `:authority`, the offer names it, the payment buys it.
    let url = format!("http://{}/articles/h2", gate.addr);
    let offer = h2.get(url.parse().unwrap()).await.unwrap();
    assert_eq!((offer.status(), offer.version()), (StatusCode::PAYMENT_REQUIRED, axum::http::Version::HTTP_2));
    let required: PaymentRequired =
        tally_x402::middleware::decode_header_json(offer.headers()[HEADER_PAYMENT_REQUIRED].as_bytes(), 16 * 1024)
            .unwrap();
    assert_eq!(required.accepts[0].extra.as_ref().unwrap()["resource"], url);
    let payment = Crawler::new(signer(4), NETWORK).payment_for(&required).unwrap();
    let request = axum::http::Request::builder()
        .uri(url.as_str())
        .header(HEADER_PAYMENT_SIGNATURE, payment)
        .body(String::new())
        .unwrap();
    let paid = h2.request(request).await.unwrap();
    assert_eq!((paid.status(), paid.version()), (StatusCode::OK, axum::http::Version::HTTP_2));
    assert!(paid.headers().contains_key("payment-response"));
    assert_eq!(owed_by(&server.addr, "crawler-4"), 30_000, "the HTTP/2 page was charged once");

    // Per-route metrics.
    let metrics = reqwest::get(format!("http://{}/metrics", gate.metrics_addr)).await.unwrap().text().await.unwrap();
    let value = |needle: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{needle} not in\n{metrics}"))
    };
    assert_eq!(value(r#"tally_gate_requests_total{route="articles",outcome="paid"}"#), 5);
    assert_eq!(value(r#"tally_gate_requests_total{route="broken",outcome="origin_error"}"#), 1);
    assert_eq!(value(r#"tally_gate_revenue_total{route="articles",asset="USD"}"#), 50_000);
    assert_eq!(value(r#"tally_gate_revenue_total{route="search",asset="USD"}"#), 2_000);
    assert_eq!(value(r#"tally_gate_refusals_total{route="articles",reason="tally_resource_mismatch"}"#), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_inside_tally_serve_uses_the_engines_facilitator() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, hits) = start_origin().await;
    let prices = price_list(dir.path(), &origin);
    // The gateway's own listener on a free port: the price list names it.
    let text = std::fs::read_to_string(&prices).unwrap().replacen("[assets]", "listen = \"127.0.0.1:0\"\n[assets]", 1);
    std::fs::write(&prices, text).unwrap();
    let (server, ready) = ServerProcess::start_opts(
        &dir.path().join("ledger"),
        &ServeOptions { args: &["--gate", prices.to_str().unwrap()], ..ServeOptions::default() },
    );
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 4, 1_000_000).await;
    let gate = ready["gate_addr"].as_str().expect("the ready file names the gateway").to_owned();
    gated_site_is_paid_and_never_gives_away_a_page(&gate, &server.addr, &hits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_refuses_to_start_in_front_of_another_network_or_scale() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("ledger"));
    let (origin, _hits) = start_origin().await;
    let prices = price_list(dir.path(), &origin);
    let output = Command::new(tally_binary())
        .args(["gate", "--listen", "127.0.0.1:0", "--metrics-addr", "off", "--network", "tally:other"])
        .args(["--facilitator", &format!("http://{}", server.http_addr)])
        .arg("--prices")
        .arg(&prices)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not the gateway's network"), "{stderr}");

    // Nor with prices read at another scale than the ledger registered.
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 1, 1_000).await;
    let text = std::fs::read_to_string(&prices).unwrap().replace("USD = 6", "USD = 7");
    std::fs::write(&prices, text).unwrap();
    let output = Command::new(tally_binary())
        .args(["gate", "--listen", "127.0.0.1:0", "--metrics-addr", "off"])
        .args(["--facilitator", &format!("http://{}", server.http_addr)])
        .arg("--prices")
        .arg(&prices)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the facilitator's ledger has 6"), "{stderr}");
}

/// `PaywallLayer` speaks pay-per-crawl too: a tower-layer site charges a
/// crawler that knows only Cloudflare's headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paywall_layer_charges_a_pay_per_crawl_crawler() {
    use tally_x402::middleware::{PaywallConfig, PaywallLayer, Pricing};
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("ledger"));
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 4, 1_000_000).await;
    let paywall = PaywallLayer::new(PaywallConfig {
        facilitator_url: format!("http://{}", server.http_addr),
        network: NETWORK.into(),
        asset: "USD".into(),
        pay_to: PAYEE.into(),
        price: 2_500,
        pricing: Pricing::Fixed,
        payment_id_required: false,
        description: "an article".into(),
        http: reqwest::Client::new(),
        registration_url: None,
        asset_scale: 6,
    });
    let app = Router::new().route("/article", get(|| async { "the paid article" })).route_layer(paywall);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let url = format!("http://{addr}/article");
    let answers = pay_per_crawl(4, &url, &["--exact-from-offer"], Some(&url));
    assert_eq!((answers[0]["status"].as_u64(), answers[0]["crawler_price"].as_str()), (Some(402), Some("USD 0.0025")));
    assert_eq!(answers[1]["status"], 200, "{answers:?}");
    assert_eq!(
        (answers[1]["crawler_charged"].as_str(), answers[1]["body_head"].as_str()),
        (Some("USD 0.0025"), Some("the paid article"))
    );
    assert_eq!(answers[2]["status"], 402, "a replay buys nothing");
    assert_eq!(answers[2]["crawler_error"], "PaymentFailed");
    assert_eq!(owed_by(&server.addr, "crawler-4"), 2_500);
    let low = pay_per_crawl(4, &url, &["--max-price", "USD 0.002"], None);
    assert_eq!(low[1]["crawler_error"], "InvalidCrawlerMaxPrice");
    assert_eq!(owed_by(&server.addr, "crawler-4"), 2_500);
}

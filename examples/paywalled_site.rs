//! # A paywalled site: one article behind an x402 `batch-settlement` paywall
//!
//! An axum app whose `/article` is wrapped in [`tally_x402::middleware::PaywallLayer`]
//! and settles with a local `tally serve` as its facilitator; `/` is free.
//! A request without payment gets `402` and a `PAYMENT-REQUIRED` offer; a
//! request whose `PAYMENT-SIGNATURE` the facilitator settles gets the article
//! and a `PAYMENT-RESPONSE` receipt. If the facilitator is down, the article is
//! not served (502/503).
//!
//! Run it against a local engine (four terminals, or background the servers):
//!
//! ```text
//! # 1. The engine, with its facilitator on 127.0.0.1:8402 and network tally:local.
//! cargo run --release -- serve --data-dir tally-data
//!
//! # 2. Accounts: the asset, the site (payee) and a crawler (payer) with a key.
//! cargo run --release -- keygen --out crawler.key          # prints the public key
//! cargo run --release -- asset register USD --scale 6
//! cargo run --release -- payee register daily.example --name "The Daily"
//! cargo run --release -- payer register crawler-1 --key <public key from keygen> --limit USD=10.00
//!
//! # 3. The site (price in smallest units: 1500 = $0.0015 at scale 6).
//! cargo run --release --example paywalled_site -- --pay-to daily.example --price 1500
//!
//! # 4. A crawler pays for the article (see examples/crawler.rs).
//! cargo run --release --example crawler -- --key-file crawler.key http://127.0.0.1:8080/article
//! cargo run --release -- balance --payee daily.example
//! ```
//!
//! Options (and environment variables): `--facilitator` (`TALLY_FACILITATOR`,
//! default `http://127.0.0.1:8402`), `--addr` (`SITE_ADDR`, default
//! `127.0.0.1:8080`), `--price` (`SITE_PRICE`, default 1500), `--pay-to`
//! (`SITE_PAY_TO`, default `daily.example`), `--asset` (default `USD`),
//! `--network` (default `tally:local`).

use axum::Router;
use axum::routing::get;
use clap::Parser;
use tally_x402::middleware::{PaywallConfig, PaywallLayer};

#[derive(Parser, Debug)]
#[command(about = "An article behind an x402 batch-settlement paywall, settled by Tally")]
struct Args {
    /// The facilitator's base URL (`tally serve --http-addr`).
    #[arg(long, env = "TALLY_FACILITATOR", default_value = "http://127.0.0.1:8402")]
    facilitator: String,
    /// Where the site listens.
    #[arg(long, env = "SITE_ADDR", default_value = "127.0.0.1:8080")]
    addr: String,
    /// The article's price in the asset's smallest units.
    #[arg(long, env = "SITE_PRICE", default_value_t = 1500)]
    price: u64,
    /// The payee account the site is paid as.
    #[arg(long, env = "SITE_PAY_TO", default_value = "daily.example")]
    pay_to: String,
    #[arg(long, default_value = "USD")]
    asset: String,
    /// The asset's decimals (as registered), for pay-per-crawl's display prices.
    #[arg(long, default_value_t = 6)]
    asset_scale: u8,
    #[arg(long, default_value = "tally:local")]
    network: String,
    /// Where crawlers register their keys (advertised in the 402).
    #[arg(long)]
    registration_url: Option<String>,
}

async fn article() -> &'static str {
    "<h1>The article</h1><p>Paid for with a Tally IOU, settled before it was served.</p>\n"
}

async fn index() -> &'static str {
    "Free front page. The article is at /article (x402, batch-settlement).\n"
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let paywall = PaywallLayer::new(PaywallConfig {
        facilitator_url: args.facilitator.clone(),
        network: args.network,
        asset: args.asset,
        pay_to: args.pay_to,
        price: args.price,
        pricing: tally_x402::middleware::Pricing::Fixed,
        payment_id_required: false,
        description: "One article".into(),
        http: reqwest::Client::new(),
        registration_url: args.registration_url,
        asset_scale: args.asset_scale,
    });
    let app = Router::new().route("/article", get(article)).route_layer(paywall).route("/", get(index));
    let listener = tokio::net::TcpListener::bind(&args.addr).await?;
    let addr = listener.local_addr()?;
    println!("paywalled site on http://{addr}/article (price {} units, facilitator {})", args.price, args.facilitator);
    axum::serve(listener, app).await?;
    Ok(())
}

//! # A paying crawler: fetch one URL, paying with a Tally IOU if asked
//!
//! Uses [`tally_x402::client::Crawler`]: a plain GET; on `402` it signs a
//! Tally IOU for the offered price, sends it in `PAYMENT-SIGNATURE` (with Web
//! Bot Auth `Signature-Agent` / `Signature-Input` / `Signature` headers), and
//! retries once. It prints the status, the `PAYMENT-RESPONSE` receipt (the
//! commitment identifier is its `transaction`) or the refusal's reason code,
//! and the body.
//!
//! The key is a 32-byte Ed25519 seed in hex, as `tally keygen --out` writes it.
//! Its public key must belong to a payer registered in the engine. With the
//! engine and `examples/paywalled_site.rs` running (see that file for the full
//! setup):
//!
//! ```text
//! cargo run --release -- keygen --out crawler.key          # prints the public key
//! cargo run --release -- asset register USD --scale 6
//! cargo run --release -- payee register daily.example
//! cargo run --release -- payer register crawler-1 --key <public key> --limit USD=10.00
//! cargo run --release --example crawler -- --key-file crawler.key http://127.0.0.1:8080/article
//! ```
//!
//! `--seed <64 hex>` gives the seed inline instead; `--network` (default
//! `tally:local`), `--max-price` (smallest units) and `--payment-id` (an
//! idempotency key, 16..=128 of `[A-Za-z0-9_-]`) are optional.
//! `--web-bot-auth` pays the Cloudflare way instead: `PAYMENT-SIGNATURE`
//! carries only the amount, and the RFC 9421 request signature is the
//! commitment; `--signature-agent URL` names the crawler's key directory (a
//! payer that registered one with `tally payer set-agent` must use it). Exit status: 0
//! when the final answer is 2xx, 1 otherwise.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use ed25519_dalek::SigningKey;
use tally_x402::client::{Crawler, PaymentFormat};

#[derive(Parser, Debug)]
#[command(about = "Fetch a URL, paying with a Tally IOU over x402 when asked")]
struct Args {
    /// The URL to fetch.
    url: String,
    /// A file holding the 32-byte secret seed in hex (`tally keygen --out`).
    #[arg(long, conflicts_with = "seed", required_unless_present = "seed")]
    key_file: Option<PathBuf>,
    /// The 32-byte secret seed in hex.
    #[arg(long, env = "CRAWLER_SEED", hide_env_values = true)]
    seed: Option<String>,
    #[arg(long, default_value = "tally:local")]
    network: String,
    /// Refuse offers above this many smallest units.
    #[arg(long)]
    max_price: Option<u64>,
    /// Pay under this payment identifier (retries are never charged twice).
    #[arg(long)]
    payment_id: Option<String>,
    /// Commit with the Web Bot Auth request signature instead of a signed IOU.
    #[arg(long)]
    web_bot_auth: bool,
    /// The crawler's signature agent (key directory URL), sent in `Signature-Agent`.
    #[arg(long)]
    signature_agent: Option<String>,
}

fn load_key(args: &Args) -> anyhow::Result<SigningKey> {
    let text = match (&args.key_file, &args.seed) {
        (Some(path), _) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        (None, Some(seed)) => seed.clone(),
        (None, None) => anyhow::bail!("give --key-file or --seed"),
    };
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).context("the seed is 64 hex digits")?;
    Ok(SigningKey::from_bytes(&seed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let key = load_key(&args)?;
    let mut crawler = Crawler::new(key, &args.network);
    if args.web_bot_auth {
        crawler = crawler.with_format(PaymentFormat::WebBotAuth);
    }
    if let Some(agent) = &args.signature_agent {
        crawler = crawler.with_signature_agent(&format!("\"{agent}\""));
    }
    if let Some(max) = args.max_price {
        crawler = crawler.with_max_price(max);
    }
    println!("crawler key {}", hex::encode(crawler.public_key()));
    let response = match &args.payment_id {
        Some(id) => crawler.fetch_with_payment_id(&args.url, id).await?,
        None => crawler.fetch(&args.url).await?,
    };
    println!("status {}{}", response.status, if response.paid { " (after paying)" } else { "" });
    if let Some(receipt) = &response.payment_response {
        println!("PAYMENT-RESPONSE {}", serde_json::to_string_pretty(receipt)?);
    }
    if let Some(reason) = response.error() {
        println!("refused: {reason}");
    }
    println!("{}", String::from_utf8_lossy(&response.body));
    if !(200..300).contains(&response.status) {
        std::process::exit(1);
    }
    Ok(())
}

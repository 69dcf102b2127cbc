//! The gateway benchmark: paid requests through `tally gate` against unpaid
//! pass-through to the same origin, in one run on one machine.
//!
//! Not a criterion bench: it starts a release `tally serve --gate` (the
//! gateway in process, sharing the engine's pipeline), optionally a
//! standalone `tally gate` in front of the same origin, and an origin server
//! inside this process, then drives them with keep-alive HTTP/1.1 clients:
//!
//! 1. **peak, closed loop**: `--concurrency` workers send `--requests`
//!    requests as fast as answers come back: free (pass-through) and paid,
//!    each paid request with its own pre-signed payment for its own URL;
//! 2. **latency at half of the paid peak, open loop**: requests start on a
//!    fixed schedule at half the paid peak, paid and free alike, so the
//!    latency the gateway adds is measured without queueing behind itself.
//!
//! Every paid answer must be 200 with `PAYMENT-RESPONSE`, or the run fails.
//!
//! ```sh
//! cargo build --release && cargo bench --bench gate_load -- --tally target/release/tally
//! ```
//! (`scripts/bench-gate.sh` does both and prints the table.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use ed25519_dalek::SigningKey;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tally_x402::client::Crawler;
use tally_x402::types::{PaymentRequired, PaymentRequirements, ResourceInfo};

#[derive(Parser, Debug)]
struct Args {
    /// Run (cargo test --all-targets runs bench targets without it).
    #[arg(long)]
    bench: bool,
    /// The release `tally` binary.
    #[arg(long, default_value = "target/release/tally")]
    tally: PathBuf,
    /// Requests per closed-loop phase.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Closed-loop workers (keep-alive connections).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of each open-loop phase.
    #[arg(long, default_value_t = 10)]
    open_loop_s: u64,
    /// Also measure a standalone `tally gate` (its own process, remote facilitator).
    #[arg(long)]
    standalone: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

const TOKEN: &str = "bench-admin-token-0123456789";
const NETWORK: &str = "tally:bench";
const PAYEE: &str = "site.example";
/// The price of one paid page: 0.0001 USD.
const PRICE_UNITS: u64 = 100;
const BODY: &[u8] = &[b'x'; 2048];

fn tally(binary: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(binary).args(args).env("TALLY_ADMIN_TOKEN", TOKEN).output()?;
    anyhow::ensure!(output.status.success(), "tally {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A child process killed when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(child: &mut Child, ready: &Path) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("exited before it was ready: {status}");
        }
        if let Ok(text) = std::fs::read_to_string(ready) {
            return Ok(serde_json::from_str(&text)?);
        }
        anyhow::ensure!(Instant::now() < deadline, "not ready within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn start_origin() -> anyhow::Result<String> {
    use axum::routing::get;
    let app = axum::Router::new().route("/free/{n}", get(|| async { BODY })).route("/paid/{n}", get(|| async { BODY }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// What one phase measured.
struct Measured {
    requests: usize,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Measured {
    fn per_s(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn json(&self) -> Value {
        json!({
            "requests": self.requests,
            "per_s": self.per_s().round(),
            "latency_us_p50": self.latency_us.value_at_quantile(0.5),
            "latency_us_p99": self.latency_us.value_at_quantile(0.99),
            "latency_us_max": self.latency_us.max(),
        })
    }
}

/// One request: the URL and, for a paid one, its `PAYMENT-SIGNATURE`.
type Job = (String, Option<String>);

async fn send(http: &reqwest::Client, job: &Job) -> anyhow::Result<()> {
    let mut request = http.get(&job.0);
    if let Some(payment) = &job.1 {
        request = request.header("payment-signature", payment);
    }
    let response = request.send().await?;
    let status = response.status();
    let paid = response.headers().contains_key("payment-response");
    let body = response.bytes().await?;
    anyhow::ensure!(status == 200 && body.len() == BODY.len(), "{} answered {status}", job.0);
    anyhow::ensure!(job.1.is_none() || paid, "{} served without PAYMENT-RESPONSE", job.0);
    Ok(())
}

/// Closed loop: `concurrency` workers drain the jobs.
async fn closed_loop(jobs: Vec<Job>, concurrency: usize) -> anyhow::Result<Measured> {
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (jobs, next) = (jobs.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().pool_max_idle_per_host(1).build()?;
            let mut latency = Histogram::<u64>::new(3)?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let sent = Instant::now();
                send(&http, job).await?;
                latency.record(sent.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(latency)
        }));
    }
    let mut latency_us = Histogram::<u64>::new(3)?;
    for worker in workers {
        latency_us.add(worker.await??)?;
    }
    Ok(Measured { requests: jobs.len(), elapsed: started.elapsed(), latency_us })
}

/// Open loop: one request starts every `1 / rate` s, whatever the answers do.
async fn open_loop(jobs: Vec<Job>, rate_per_s: f64) -> anyhow::Result<Measured> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let interval = Duration::from_secs_f64(1.0 / rate_per_s);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(jobs.len());
    let count = jobs.len();
    for (i, job) in jobs.into_iter().enumerate() {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            send(&http, &job).await?;
            anyhow::Ok(sent.elapsed().as_micros() as u64)
        }));
    }
    let mut latency_us = Histogram::<u64>::new(3)?;
    for task in tasks {
        latency_us.record(task.await??)?;
    }
    Ok(Measured { requests: count, elapsed: started.elapsed(), latency_us })
}

fn free_jobs(gate: &str, n: usize, tag: &str) -> Vec<Job> {
    (0..n).map(|i| (format!("http://{gate}/free/{tag}{i}"), None)).collect()
}

/// Pre-signed payments, one per URL (a payment buys one response), spread over `payers` keys.
fn paid_jobs(gate: &str, n: usize, tag: &str, payers: &[SigningKey]) -> anyhow::Result<Vec<Job>> {
    let crawlers: Vec<Crawler> = payers.iter().map(|k| Crawler::new(k.clone(), NETWORK)).collect();
    (0..n)
        .map(|i| {
            let url = format!("http://{gate}/paid/{tag}{i}");
            let required = PaymentRequired {
                x402_version: 2,
                error: None,
                resource: ResourceInfo { url: url.clone(), description: None, mime_type: None },
                accepts: vec![PaymentRequirements {
                    scheme: "batch-settlement".into(),
                    network: NETWORK.into(),
                    amount: PRICE_UNITS.to_string(),
                    asset: "USD".into(),
                    pay_to: PAYEE.into(),
                    max_timeout_seconds: Some(60),
                    extra: Some(json!({ "resource": url })),
                }],
                extensions: None,
            };
            let payment = crawlers[i % crawlers.len()].payment_for(&required)?;
            Ok((url, Some(payment)))
        })
        .collect()
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.tally.exists(), "{} not found: build it with cargo build --release", args.tally.display());
    let dir = tempfile::tempdir()?;
    let origin = start_origin().await?;
    let prices = dir.path().join("prices.toml");
    std::fs::write(
        &prices,
        format!(
            "upstream = \"{origin}\"\nnetwork = \"{NETWORK}\"\npay_to = \"{PAYEE}\"\nlisten = \"127.0.0.1:0\"\n\
             [assets]\nUSD = 6\n[[route]]\nname = \"paid\"\npath = \"/paid/*\"\nprice = \"0.0001\"\n\
             [limits]\nconnections_max = 4096\n"
        ),
    )?;
    let ready = dir.path().join("serve.ready");
    let mut serve = Command::new(&args.tally)
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--metrics-addr", "off"])
        .args(["--network", NETWORK, "--data-dir"])
        .arg(dir.path().join("ledger"))
        .arg("--gate")
        .arg(&prices)
        .arg("--ready-file")
        .arg(&ready)
        .env("TALLY_ADMIN_TOKEN", TOKEN)
        .env("TALLY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()?;
    let serve_ready = wait_ready(&mut serve, &ready)?;
    let _serve = Peer(serve);
    let grpc = format!("http://{}", serve_ready["grpc_addr"].as_str().unwrap_or_default());
    let facilitator = format!("http://{}", serve_ready["http_addr"].as_str().unwrap_or_default());
    let in_process = serve_ready["gate_addr"].as_str().unwrap_or_default().to_owned();

    let payers: Vec<SigningKey> = (1..=8u8).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
    tally(&args.tally, &["asset", "register", "USD", "--scale", "6", "--server", &grpc])?;
    tally(&args.tally, &["payee", "register", PAYEE, "--server", &grpc])?;
    for (i, key) in payers.iter().enumerate() {
        let hex_key = hex::encode(key.verifying_key().to_bytes());
        let id = format!("crawler-{i}");
        tally(
            &args.tally,
            &["payer", "register", &id, "--key", &hex_key, "--limit", "USD=1000000", "--server", &grpc],
        )?;
    }

    let mut gates = vec![("in tally serve", in_process)];
    let mut _standalone = None;
    if args.standalone {
        let ready = dir.path().join("gate.ready");
        let mut gate = Command::new(&args.tally)
            .args(["gate", "--listen", "127.0.0.1:0", "--metrics-addr", "off", "--facilitator", &facilitator])
            .arg("--prices")
            .arg(&prices)
            .arg("--ready-file")
            .arg(&ready)
            .env("TALLY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()?;
        let gate_ready = wait_ready(&mut gate, &ready)?;
        _standalone = Some(Peer(gate));
        gates.push(("standalone", gate_ready["gate_addr"].as_str().unwrap_or_default().to_owned()));
    }

    let mut rows = Vec::new();
    for (round, (label, gate)) in gates.iter().enumerate() {
        let tag = format!("r{round}-");
        // Warm both paths (connections, caches) before measuring.
        closed_loop(free_jobs(gate, 1_000, &format!("{tag}warm")), args.concurrency).await?;
        closed_loop(paid_jobs(gate, 1_000, &format!("{tag}warm"), &payers)?, args.concurrency).await?;
        let free = closed_loop(free_jobs(gate, args.requests, &tag), args.concurrency).await?;
        let paid = closed_loop(paid_jobs(gate, args.requests, &tag, &payers)?, args.concurrency).await?;
        let rate = paid.per_s() / 2.0;
        let n = (rate * args.open_loop_s as f64) as usize;
        let free_half = open_loop(free_jobs(gate, n, &format!("{tag}half")), rate).await?;
        let paid_half = open_loop(paid_jobs(gate, n, &format!("{tag}half"), &payers)?, rate).await?;
        rows.push(json!({
            "gate": label,
            "concurrency": args.concurrency,
            "free_peak": free.json(),
            "paid_peak": paid.json(),
            "paid_over_free": (paid.per_s() / free.per_s() * 1000.0).round() / 1000.0,
            "half_rate_per_s": rate.round(),
            "free_at_half": free_half.json(),
            "paid_at_half": paid_half.json(),
            "added_latency_us_p50": paid_half.latency_us.value_at_quantile(0.5) as i64
                - free_half.latency_us.value_at_quantile(0.5) as i64,
            "added_latency_us_p99": paid_half.latency_us.value_at_quantile(0.99) as i64
                - free_half.latency_us.value_at_quantile(0.99) as i64,
        }));
    }
    // Every paid request was recorded exactly once at its price.
    let balance: Value = serde_json::from_str(&tally(
        &args.tally,
        &["balance", "--payee", PAYEE, "--json", "--server", &grpc, "--token", TOKEN],
    )?)?;
    let recorded: u64 = balance["rows"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["amount_units"].as_str()?.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    let paid_requests: u64 = rows
        .iter()
        .map(|r| {
            1_000
                + r["paid_peak"]["requests"].as_u64().unwrap_or(0)
                + r["paid_at_half"]["requests"].as_u64().unwrap_or(0)
        })
        .sum();
    anyhow::ensure!(
        recorded == paid_requests * PRICE_UNITS,
        "recorded {recorded}, expected {}",
        paid_requests * PRICE_UNITS
    );

    if args.json {
        println!("{}", json!({ "rows": rows, "recorded_units": recorded }));
        return Ok(());
    }
    println!(
        "| gateway | free peak req/s | paid peak req/s | paid / free | rate (½ paid peak) | free p50 / p99 µs | paid p50 / p99 µs | added p99 µs |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1} % | {}/s | {} / {} | {} / {} | {} |",
            r["gate"].as_str().unwrap_or_default(),
            r["free_peak"]["per_s"],
            r["paid_peak"]["per_s"],
            r["paid_over_free"].as_f64().unwrap_or(0.0) * 100.0,
            r["half_rate_per_s"],
            r["free_at_half"]["latency_us_p50"],
            r["free_at_half"]["latency_us_p99"],
            r["paid_at_half"]["latency_us_p50"],
            r["paid_at_half"]["latency_us_p99"],
            r["added_latency_us_p99"],
        );
    }
    println!("\nrecorded: {recorded} units for {paid_requests} paid requests at {PRICE_UNITS} each (every one, once)");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.bench {
        println!("gate_load: run by scripts/bench-gate.sh (or `cargo bench --bench gate_load`, which passes --bench)");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

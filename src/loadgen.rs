//! `tally loadgen`: simulated crawlers streaming pre-signed IOUs.
//!
//! Signing costs about as much as verifying, so every IOU is signed before
//! the clock starts (on all cores), or the load generator would measure its
//! own signing. Then `--streams` bidirectional streams, spread over
//! `--connections` HTTP/2 connections, each keep up to `--window` batches in
//! flight. Latency is per batch: from handing the batch to the stream to
//! receiving its per-IOU results, which the server sends only after the
//! fsync. Optionally `--measure-verify` measures, in the same run, the raw
//! batch-verification rate of all cores: the ceiling ingest is judged by.
//!
//! With `--http URL`, the same pre-signed IOUs go to an x402 facilitator
//! instead: one `POST /settle` per IOU (a Tally IOU commitment), from
//! `--streams × --window` concurrent requests over keep-alive connections.
//! Latency is then per request, again answered only after the fsync.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ed25519_dalek::{Signer, SigningKey};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tally_core::batch::{BatchStatement, leaf_hash, merkle_root};
use tally_core::verify::{VerifyItem, verify_many};
use tally_core::{Iou, Outcome};
use tally_ingest::convert::code_from_proto;
use tally_ingest::proto::ingest_client::IngestClient;
use tally_ingest::proto::{self, *};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{self, AdminArgs};
use crate::output::table;

#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Total IOUs to send.
    #[arg(long, default_value_t = 500_000)]
    pub ious: u64,
    /// IOUs per batch (the server's default limit is 4096).
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// Concurrent bidirectional streams.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// HTTP/2 connections the streams share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Batches in flight per stream.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Simulated crawlers (payers).
    #[arg(long, default_value_t = 64)]
    pub payers: usize,
    /// Simulated sites (payees).
    #[arg(long, default_value_t = 256)]
    pub payees: usize,
    /// Price per request: uniform in 1..=this, in smallest units.
    #[arg(long, default_value_t = 2_000)]
    pub amount_max: u64,
    /// Asset of the IOUs (registered with scale 6 by --register).
    #[arg(long, default_value = "USD")]
    pub asset: String,
    /// Network id the server expects.
    #[arg(long, default_value = crate::config::DEFAULT_NETWORK)]
    pub network: String,
    /// Seed for keys and amounts (runs are reproducible).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Target IOUs per second across all streams (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Register the asset, payers and payees first (idempotent).
    #[arg(long)]
    pub register: bool,
    /// Credit limit per payer, smallest units, when registering.
    #[arg(long, default_value_t = 1_000_000_000_000_000)]
    pub credit_limit: u128,
    /// Also measure the raw batch-verification rate of all cores.
    #[arg(long)]
    pub measure_verify: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Send to this x402 facilitator (e.g. http://127.0.0.1:8402) with one
    /// `POST /settle` per IOU, instead of gRPC batches.
    #[arg(long)]
    pub http: Option<String>,
    /// Batch-signed commitments: each batch is one payer's IOUs under one
    /// signature over their Merkle root (`StreamSignedBatches`).
    #[arg(long, conflicts_with = "http")]
    pub batch_signed: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadgenReport {
    pub ious: u64,
    pub elapsed_s: f64,
    pub ious_per_s: f64,
    pub outcomes: BTreeMap<String, u64>,
    pub batch_latency_us_p50: u64,
    pub batch_latency_us_p99: u64,
    pub batch_latency_us_p999: u64,
    pub batch_latency_us_max: u64,
    /// Tally's batch verifier on every core: the bound ingest is measured against.
    pub verify_batch_rate_all_cores: Option<f64>,
    /// ed25519-dalek's `verify_batch` on every core, for reference.
    pub dalek_verify_batch_rate_all_cores: Option<f64>,
    pub cores: usize,
}

/// SplitMix64: a tiny deterministic generator for keys and amounts, so a
/// seed reproduces a run exactly.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        out
    }
}

pub fn payer_id(i: usize) -> String {
    format!("crawler-{i:03}")
}

pub fn payee_id(j: usize) -> String {
    format!("site-{j:03}.example")
}

/// The simulated crawlers' signing keys, derived from the seed.
pub fn payer_keys(seed: u64, payers: usize) -> Vec<SigningKey> {
    let mut rng = SplitMix64(seed ^ 0x7A11_7A11);
    (0..payers).map(|_| SigningKey::from_bytes(&rng.bytes32())).collect()
}

/// Registers the asset (scale 6), payers and payees; existing ones are kept.
pub async fn register(args: &LoadgenArgs, admin: &mut client::Admin) -> anyhow::Result<()> {
    let ignore_exists = |result: Result<tonic::Response<AdminResponse>, tonic::Status>| match result {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(status) => Err(status),
    };
    let asset = proto::Asset { code: args.asset.clone(), scale: 6, enabled: true };
    admin.upsert_asset(UpsertAssetRequest { asset: Some(asset) }).await?;
    for (i, key) in payer_keys(args.seed, args.payers).iter().enumerate() {
        ignore_exists(
            admin
                .register_payer(RegisterPayerRequest {
                    id: payer_id(i),
                    display_name: format!("Simulated crawler {i}"),
                    keys: vec![key.verifying_key().to_bytes().to_vec()],
                    credit_limits: vec![CreditLimit {
                        asset: args.asset.clone(),
                        limit: args.credit_limit.to_string(),
                    }],
                })
                .await,
        )?;
    }
    for j in 0..args.payees {
        ignore_exists(
            admin
                .register_payee(RegisterPayeeRequest {
                    payee: Some(proto::Payee {
                        id: payee_id(j),
                        display_name: format!("Simulated site {j}"),
                        payout_destination: String::new(),
                        status: proto::PayeeStatus::Active as i32,
                    }),
                })
                .await,
        )?;
    }
    Ok(())
}

/// One pre-signed request of either kind.
enum Presigned {
    Single(SubmitBatchRequest),
    Signed(SubmitSignedBatchRequest),
}

/// The IOU's evidence of payment: its own signature, or (batch-signed) none,
/// the batch's signature covering it.
fn wire_iou(iou: Iou, key: Option<&SigningKey>) -> proto::Iou {
    let signature = key.map_or([0; 64], |key| key.sign(&iou.signing_bytes()).to_bytes());
    let mut wire = tally_ingest::convert::iou_to_proto(&tally_core::SignedIou { iou, signature });
    if key.is_none() {
        wire.signature.clear();
    }
    wire
}

/// Signs every IOU of the run (or, batch-signed, every batch) on all cores,
/// already cut into batches.
fn presign(args: &LoadgenArgs, keys: &[SigningKey]) -> anyhow::Result<Vec<Presigned>> {
    let mut run_id = [0u8; 8];
    getrandom::fill(&mut run_id).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let now_s = tally_ledger::unix_now_ms() / 1000;
    let batches = args.ious.div_ceil(args.batch as u64) as usize;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_thread = batches.div_ceil(threads);
    let mut out: Vec<Presigned> = Vec::with_capacity(batches);
    // (key, batch_seq) names a batch forever: this run's sequence numbers start at a random base.
    let batch_seq_base = u64::from_be_bytes(run_id) & 0xffff_ffff_0000_0000;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let first = t * per_thread;
                let last = ((t + 1) * per_thread).min(batches);
                scope.spawn(move || {
                    let mut rng = SplitMix64(args.seed.wrapping_mul(1_000_003).wrapping_add(t as u64));
                    (first..last)
                        .map(|b| {
                            let start = b as u64 * args.batch as u64;
                            let end = (start + args.batch as u64).min(args.ious);
                            // A signed batch is one payer's; single IOUs mix payers.
                            let batch_key = &keys[b % keys.len()];
                            let ious: Vec<(&SigningKey, Iou)> = (start..end)
                                .map(|n| {
                                    let key = if args.batch_signed {
                                        batch_key
                                    } else {
                                        &keys[(rng.next() % keys.len() as u64) as usize]
                                    };
                                    let mut nonce = [0u8; 16];
                                    nonce[..8].copy_from_slice(&run_id);
                                    nonce[8..].copy_from_slice(&n.to_be_bytes());
                                    let payee = (rng.next() % args.payees as u64) as usize;
                                    let iou = Iou {
                                        network: args.network.clone(),
                                        payer_key: key.verifying_key().to_bytes(),
                                        payee: payee_id(payee),
                                        asset: args.asset.clone(),
                                        amount: 1 + rng.next() % args.amount_max,
                                        nonce,
                                        issued_at_s: now_s,
                                        expires_at_s: now_s + 3_600,
                                        resource: format!("https://{}/page/{n}", payee_id(payee)),
                                    };
                                    (key, iou)
                                })
                                .collect();
                            if !args.batch_signed {
                                let ious = ious.into_iter().map(|(key, iou)| wire_iou(iou, Some(key))).collect();
                                return Presigned::Single(SubmitBatchRequest { batch_id: b as u64, ious });
                            }
                            let leaves: Vec<_> = ious.iter().map(|(_, iou)| leaf_hash(&iou.signing_bytes())).collect();
                            let statement = BatchStatement {
                                payer_key: batch_key.verifying_key().to_bytes(),
                                batch_seq: batch_seq_base + b as u64,
                                count: leaves.len() as u32,
                                root: merkle_root(&leaves),
                            };
                            Presigned::Signed(SubmitSignedBatchRequest {
                                batch_id: b as u64,
                                batch_seq: statement.batch_seq,
                                root: statement.root.to_vec(),
                                signature: batch_key.sign(&statement.to_bytes()).to_bytes().to_vec(),
                                ious: ious.into_iter().map(|(_, iou)| wire_iou(iou, None)).collect(),
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            out.extend(handle.join().expect("a signing thread panicked"));
        }
    });
    Ok(out)
}

/// The machine's raw verification rates, signatures per second on all cores.
#[derive(Debug, Clone, Copy)]
pub struct VerifyRates {
    /// Tally's batch verifier (`verify_many`), which ingest runs.
    pub tally: f64,
    /// ed25519-dalek's `verify_batch` on the same signatures, for reference.
    pub dalek: f64,
}

/// Raw batch verification (batches of 1024 signatures by `payers` keys, as
/// the load's) on every core at once, `duration` for each verifier.
pub fn measure_verify_rate(duration: Duration, payers: usize) -> VerifyRates {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let keys = payer_keys(99, payers.max(1));
    let verifying: Vec<_> = keys.iter().map(|k| k.verifying_key()).collect();
    let messages: Vec<Vec<u8>> = (0..1024u32)
        .map(|i| {
            format!("tally-iou-v1 a typical {i:08} IOU of about one hundred bytes, https://example.com/x").into_bytes()
        })
        .collect();
    let signer = |i: usize| i % keys.len();
    let signatures: Vec<[u8; 64]> =
        messages.iter().enumerate().map(|(i, m)| keys[signer(i)].sign(m).to_bytes()).collect();
    let items: Vec<VerifyItem> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| VerifyItem { key: &verifying[signer(i)], message: m, signature: &signatures[i] })
        .collect();
    let dalek_messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let dalek_signatures: Vec<ed25519_dalek::Signature> =
        signatures.iter().map(ed25519_dalek::Signature::from_bytes).collect();
    let dalek_keys: Vec<_> = (0..messages.len()).map(|i| verifying[signer(i)]).collect();
    let on_all_cores = |check: &(dyn Fn() + Sync)| -> f64 {
        let verified: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let started = Instant::now();
                        let mut count = 0u64;
                        while started.elapsed() < duration {
                            check();
                            count += messages.len() as u64;
                        }
                        count
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("verify thread")).sum()
        });
        verified as f64 / duration.as_secs_f64()
    };
    VerifyRates {
        tally: on_all_cores(&|| assert!(verify_many(&items).iter().all(|ok| *ok))),
        dalek: on_all_cores(&|| {
            assert!(ed25519_dalek::verify_batch(&dalek_messages, &dalek_signatures, &dalek_keys).is_ok())
        }),
    }
}

struct StreamStats {
    latency_us: Histogram<u64>,
    outcomes: BTreeMap<String, u64>,
}

/// Paced sending: one batch every `period`, first at `phase` after start.
/// Streams get evenly spread phases, so a paced run offers a smooth load
/// instead of every stream's batch arriving at the same instant.
#[derive(Clone, Copy)]
struct Pace {
    period: Duration,
    phase: Duration,
}

/// Opens a stream of requests `R` and returns its responses.
type OpenStream<R> =
    fn(
        IngestClient<tonic::transport::Channel>,
        ReceiverStream<R>,
    ) -> futures::future::BoxFuture<'static, Result<tonic::Streaming<SubmitBatchResponse>, tonic::Status>>;

fn open_single(
    mut client: IngestClient<tonic::transport::Channel>,
    requests: ReceiverStream<SubmitBatchRequest>,
) -> futures::future::BoxFuture<'static, Result<tonic::Streaming<SubmitBatchResponse>, tonic::Status>> {
    Box::pin(async move { Ok(client.stream_batches(requests).await?.into_inner()) })
}

fn open_signed(
    mut client: IngestClient<tonic::transport::Channel>,
    requests: ReceiverStream<SubmitSignedBatchRequest>,
) -> futures::future::BoxFuture<'static, Result<tonic::Streaming<SubmitBatchResponse>, tonic::Status>> {
    Box::pin(async move { Ok(client.stream_signed_batches(requests).await?.into_inner()) })
}

async fn drive_stream<R: Send + 'static>(
    client: IngestClient<tonic::transport::Channel>,
    batches: Vec<R>,
    open: OpenStream<R>,
    window: usize,
    pace: Option<Pace>,
    progress: ProgressBar,
) -> anyhow::Result<StreamStats> {
    let total = batches.len();
    let (sender, receiver) = mpsc::channel(window);
    let sent_at: Arc<Mutex<VecDeque<Instant>>> = Arc::new(Mutex::new(VecDeque::with_capacity(window)));
    let permits = Arc::new(Semaphore::new(window));
    let feeder = {
        let sent_at = sent_at.clone();
        let permits = permits.clone();
        tokio::spawn(async move {
            let mut ticker = pace.map(|p| {
                let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + p.phase, p.period);
                // A late tick is not made up for with a burst.
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker
            });
            for batch in batches {
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                }
                let Ok(permit) = permits.acquire().await else { return };
                permit.forget();
                sent_at.lock().expect("latency queue").push_back(Instant::now());
                if sender.send(batch).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut responses = open(client, ReceiverStream::new(receiver)).await?;
    let mut stats = StreamStats {
        latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
        outcomes: BTreeMap::new(),
    };
    let mut received = 0;
    while received < total {
        let response = responses.message().await?.context("the server closed the stream early")?;
        let started = sent_at.lock().expect("latency queue").pop_front().context("a response without a request")?;
        permits.add_permits(1);
        stats.latency_us.saturating_record(started.elapsed().as_micros() as u64);
        for result in &response.results {
            let name = code_from_proto(result.code).map_or("unknown", Outcome::as_str);
            *stats.outcomes.entry(name.to_owned()).or_default() += 1;
        }
        progress.inc(response.results.len() as u64);
        received += 1;
    }
    feeder.abort();
    Ok(stats)
}

/// Runs the load and returns the report (also printed unless `quiet`).
/// Most IOUs one run pre-signs: they are held in memory (~450 bytes each)
/// before the clock starts.
pub const LOADGEN_IOUS_MAX: u64 = 20_000_000;

pub async fn run_load(args: &LoadgenArgs, quiet: bool) -> anyhow::Result<LoadgenReport> {
    anyhow::ensure!(
        args.ious <= LOADGEN_IOUS_MAX,
        "--ious is at most {LOADGEN_IOUS_MAX} (pre-signed IOUs are held in memory)"
    );
    anyhow::ensure!(
        args.batch > 0 && args.streams > 0 && args.connections > 0 && args.window > 0,
        "sizes must be positive"
    );
    anyhow::ensure!(
        args.payers > 0 && args.payees > 0 && args.amount_max > 0,
        "payers, payees and amount must be positive"
    );
    if args.register {
        register(args, &mut client::admin(&args.admin).await?).await?;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let verify_rate = if args.measure_verify {
        if !quiet {
            eprintln!("measuring raw batch verification on {cores} cores ...");
        }
        let payers = args.payers;
        Some(tokio::task::spawn_blocking(move || measure_verify_rate(Duration::from_secs(3), payers)).await?)
    } else {
        None
    };
    let keys = payer_keys(args.seed, args.payers);
    if !quiet {
        eprintln!("pre-signing {} IOUs on {cores} cores ...", args.ious);
    }
    let args_for_signing = args.clone();
    let batches = tokio::task::spawn_blocking(move || presign(&args_for_signing, &keys)).await??;

    if let Some(url) = &args.http {
        let batches = batches
            .into_iter()
            .filter_map(|b| match b {
                Presigned::Single(batch) => Some(batch),
                Presigned::Signed(_) => None,
            })
            .collect();
        return run_http(args, url, batches, verify_rate, cores, quiet).await;
    }
    let connections = args.connections.min(args.streams);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(client::channel(&args.admin.server).await?);
    }
    let mut per_stream: Vec<Vec<Presigned>> = (0..args.streams).map(|_| Vec::new()).collect();
    for (i, batch) in batches.into_iter().enumerate() {
        per_stream[i % args.streams].push(batch);
    }
    let period = args.rate.map(|rate| {
        let batches_per_s_per_stream = rate as f64 / args.batch as f64 / args.streams as f64;
        Duration::from_secs_f64(1.0 / batches_per_s_per_stream.max(1e-3))
    });
    let progress = if quiet { ProgressBar::hidden() } else { ProgressBar::new(args.ious) };
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {human_pos}/{human_len} IOUs ({per_sec})")
            .expect("valid template"),
    );
    let started = Instant::now();
    let tasks: Vec<_> = per_stream
        .into_iter()
        .enumerate()
        .map(|(s, batches)| {
            let client = IngestClient::new(channels[s % connections].clone())
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024);
            let pace = period.map(|period| Pace { period, phase: period.mul_f64(s as f64 / args.streams as f64) });
            let progress = progress.clone();
            if args.batch_signed {
                let batches = batches.into_iter().filter_map(|b| match b {
                    Presigned::Signed(batch) => Some(batch),
                    Presigned::Single(_) => None,
                });
                tokio::spawn(drive_stream(client, batches.collect(), open_signed, args.window, pace, progress))
            } else {
                let batches = batches.into_iter().filter_map(|b| match b {
                    Presigned::Single(batch) => Some(batch),
                    Presigned::Signed(_) => None,
                });
                tokio::spawn(drive_stream(client, batches.collect(), open_single, args.window, pace, progress))
            }
        })
        .collect();
    gather(tasks, started, progress, verify_rate, cores).await
}

/// Waits for every sender task and merges their latencies and outcomes
/// into the report (shared by the gRPC and HTTP modes).
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<StreamStats>>>,
    started: Instant,
    progress: ProgressBar,
    verify_rate: Option<VerifyRates>,
    cores: usize,
) -> anyhow::Result<LoadgenReport> {
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
    let mut outcomes = BTreeMap::new();
    for task in tasks {
        let stats = task.await??;
        latency_us.add(&stats.latency_us).expect("same bounds");
        for (name, count) in stats.outcomes {
            *outcomes.entry(name).or_default() += count;
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let answered: u64 = outcomes.values().sum();
    Ok(LoadgenReport {
        ious: answered,
        elapsed_s,
        ious_per_s: answered as f64 / elapsed_s,
        outcomes,
        batch_latency_us_p50: latency_us.value_at_quantile(0.50),
        batch_latency_us_p99: latency_us.value_at_quantile(0.99),
        batch_latency_us_p999: latency_us.value_at_quantile(0.999),
        batch_latency_us_max: latency_us.max(),
        verify_batch_rate_all_cores: verify_rate.map(|rates| rates.tally),
        dalek_verify_batch_rate_all_cores: verify_rate.map(|rates| rates.dalek),
        cores,
    })
}

/// The x402 body of one IOU, as a resource server selling the IOU's
/// resource at the IOU's amount would send it: requirements that ask exactly
/// the amount and name the resource (`extra.resource`), and a payload that
/// accepted them for that resource.
fn settle_body(iou: proto::Iou) -> anyhow::Result<Vec<u8>> {
    let signed = tally_ingest::convert::iou_from_proto(iou).map_err(|o| anyhow::anyhow!("presigned IOU: {o:?}"))?;
    let iou = &signed.iou;
    let requirements = serde_json::json!({
        "scheme": "batch-settlement", "network": iou.network, "amount": iou.amount.to_string(),
        "asset": iou.asset, "payTo": iou.payee, "extra": { "resource": iou.resource },
    });
    let body = serde_json::json!({
        "x402Version": 2,
        "paymentPayload": {
            "x402Version": 2,
            "resource": { "url": iou.resource },
            "accepted": requirements,
            "payload": tally_x402::commitment::TallyIouPayload::from_signed(&signed),
        },
        "paymentRequirements": requirements,
    });
    Ok(serde_json::to_vec(&body)?)
}

async fn run_http(
    args: &LoadgenArgs,
    url: &str,
    batches: Vec<SubmitBatchRequest>,
    verify_rate: Option<VerifyRates>,
    cores: usize,
    quiet: bool,
) -> anyhow::Result<LoadgenReport> {
    let workers = args.streams * args.window;
    let mut per_worker: Vec<Vec<Vec<u8>>> = (0..workers).map(|_| Vec::new()).collect();
    let mut n = 0usize;
    for batch in batches {
        for iou in batch.ious {
            per_worker[n % workers].push(settle_body(iou)?);
            n += 1;
        }
    }
    let http = reqwest::Client::builder().pool_max_idle_per_host(workers).tcp_nodelay(true).build()?;
    let endpoint = format!("{}/settle", url.trim_end_matches('/'));
    let progress = if quiet { ProgressBar::hidden() } else { ProgressBar::new(args.ious) };
    let started = Instant::now();
    let tasks: Vec<_> = per_worker
        .into_iter()
        .map(|bodies| {
            let http = http.clone();
            let endpoint = endpoint.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut stats = StreamStats {
                    latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
                    outcomes: BTreeMap::new(),
                };
                for body in bodies {
                    let sent = Instant::now();
                    let response = http
                        .post(&endpoint)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .context("POST /settle")?;
                    let answer: serde_json::Value = response.json().await.context("/settle answer")?;
                    stats.latency_us.saturating_record(sent.elapsed().as_micros() as u64);
                    let outcome = match answer["success"].as_bool() {
                        Some(true) => "settled".to_owned(),
                        _ => answer["errorReason"].as_str().unwrap_or("unknown").to_owned(),
                    };
                    *stats.outcomes.entry(outcome).or_default() += 1;
                    progress.inc(1);
                }
                Ok(stats)
            })
        })
        .collect();
    gather(tasks, started, progress, verify_rate, cores).await
}

pub fn print_report(report: &LoadgenReport, args: &LoadgenArgs) {
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    let mut rows = vec![
        vec!["IOUs answered".into(), report.ious.to_string()],
        vec!["elapsed".into(), format!("{:.2} s", report.elapsed_s)],
        vec!["throughput".into(), format!("{:.0} IOUs/s", report.ious_per_s)],
        vec![
            "shape".into(),
            match &args.http {
                Some(url) => format!("{} concurrent POST {url}/settle, one IOU each", args.streams * args.window),
                None => format!(
                    "{} streams x {} batches in flight x {} IOUs, {} connections{}",
                    args.streams,
                    args.window,
                    args.batch,
                    args.connections.min(args.streams),
                    if args.batch_signed { ", one signature per batch" } else { "" }
                ),
            },
        ],
        vec!["batch ack latency p50".into(), ms(report.batch_latency_us_p50)],
        vec!["batch ack latency p99".into(), ms(report.batch_latency_us_p99)],
        vec!["batch ack latency p99.9".into(), ms(report.batch_latency_us_p999)],
        vec!["batch ack latency max".into(), ms(report.batch_latency_us_max)],
    ];
    for (name, count) in &report.outcomes {
        rows.push(vec![format!("outcome {name}"), count.to_string()]);
    }
    if let Some(rate) = report.verify_batch_rate_all_cores {
        rows.push(vec![format!("raw batch verify, {} cores", report.cores), format!("{rate:.0} signatures/s")]);
        rows.push(vec!["ingest / raw verify".into(), format!("{:.1} %", 100.0 * report.ious_per_s / rate)]);
    }
    if let Some(rate) = report.dalek_verify_batch_rate_all_cores {
        rows.push(vec![
            format!("ed25519-dalek verify_batch, {} cores", report.cores),
            format!("{rate:.0} signatures/s"),
        ]);
    }
    println!("{}", table(&["loadgen", "value"], &["value"], rows));
}

pub async fn run(args: LoadgenArgs) -> anyhow::Result<LoadgenReport> {
    let report = run_load(&args, args.json).await?;
    if args.json {
        crate::output::print_json(&serde_json::to_value(&report)?);
    } else {
        print_report(&report, &args);
    }
    Ok(report)
}

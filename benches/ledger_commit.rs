//! Ledger commit throughput through the real single writer.
//!
//! Every accepted IOU goes through one thread that checks replay and credit,
//! chains the record hash, and commits the whole group as one RocksDB
//! `WriteBatch` with `sync = true`. The fsync is a fixed cost per group, so
//! IOUs/s should grow almost linearly with the group size until the per-IOU
//! work (nonce lookup, encoding, hashing, aggregate merge) dominates. This
//! bench measures `WriterHandle::append_blocking` of 1, 100, 1000 and 4096
//! IOUs on a fresh RocksDB in a temporary directory, which says how large
//! the front doors' batches must be for the writer not to be the bottleneck.
//!
//! Setup: one asset (USD, scale 6), 64 payers with huge credit limits and
//! 256 payees. Every iteration appends IOUs with fresh nonces (from a
//! counter), so all of them are accepted, none is a duplicate; they carry
//! real signatures over their signing bytes. Building and signing the items
//! happens outside the timed region (`iter_custom`). Each iteration is one
//! fsync: sample counts and measurement times are kept small.
//!
//! Run: `CARGO_TARGET_DIR=$HOME/.cache/tally-target cargo bench --workspace --bench ledger_commit`

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tally_core::{Asset, Iou, Outcome, Payee, SignedIou};
use tally_ledger::{AdminCommand, AppendItem, Ledger, LedgerOptions, Writer, WriterConfig, WriterHandle};

const PAYERS: usize = 64;
const PAYEES: usize = 256;
const BATCH_SIZES: [usize; 4] = [1, 100, 1000, 4096];

/// A ledger in a temporary directory with its writer running. Fields drop in
/// order: the writer stops before the directory is removed.
struct Fixture {
    writer: Writer,
    _ledger: Ledger,
    _dir: tempfile::TempDir,
}

fn setup(payers: &[SigningKey], payees: &[String]) -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ledger = Ledger::open(dir.path(), LedgerOptions::default()).expect("open ledger");
    let writer = Writer::start(ledger.clone(), WriterConfig::default()).expect("start writer");
    let admin = writer.handle();
    admin.admin_blocking(test_actor(), AdminCommand::UpsertAsset(Asset::new("USD", 6, true).unwrap())).unwrap();
    for (i, key) in payers.iter().enumerate() {
        let id = format!("crawler-{i:02}");
        admin
            .admin_blocking(
                test_actor(),
                AdminCommand::RegisterPayer {
                    id: id.clone(),
                    display_name: id,
                    keys: vec![key.verifying_key().to_bytes()],
                    credit_limits: vec![("USD".into(), u128::from(u64::MAX) * 1_000)],
                },
            )
            .unwrap();
    }
    for id in payees {
        admin
            .admin_blocking(
                test_actor(),
                AdminCommand::RegisterPayee(Payee {
                    id: id.clone(),
                    display_name: id.clone(),
                    payout_destination: String::new(),
                    status: tally_core::PayeeStatus::Active,
                }),
            )
            .unwrap();
    }
    Fixture { writer, _ledger: ledger, _dir: dir }
}

/// Builds signed IOUs with never-repeating nonces.
struct Generator {
    rng: ChaCha20Rng,
    payers: Vec<SigningKey>,
    payees: Vec<String>,
    next_nonce: u128,
}

impl Generator {
    fn new() -> Generator {
        let mut rng = ChaCha20Rng::seed_from_u64(0x1ed9_e7c0);
        let payers = (0..PAYERS).map(|_| SigningKey::from_bytes(&rng.random::<[u8; 32]>())).collect();
        let payees = (0..PAYEES).map(|i| format!("site-{i:03}.example")).collect();
        Generator { rng, payers, payees, next_nonce: 1 }
    }

    fn batch(&mut self, len: usize) -> Vec<AppendItem> {
        let now_s = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs();
        (0..len)
            .map(|_| {
                let key = &self.payers[self.rng.random_range(0..PAYERS)];
                let payee = &self.payees[self.rng.random_range(0..PAYEES)];
                let article: u32 = self.rng.random_range(0..1_000_000);
                let nonce = self.next_nonce.to_be_bytes();
                self.next_nonce += 1;
                let iou = Iou {
                    network: "tally:mainnet".into(),
                    payer_key: key.verifying_key().to_bytes(),
                    payee: payee.clone(),
                    asset: "USD".into(),
                    amount: self.rng.random_range(1..=50_000),
                    nonce,
                    issued_at_s: now_s,
                    expires_at_s: now_s + 3_600,
                    resource: format!("https://news.example.com/articles/{article:06}"),
                };
                let signing_bytes = iou.signing_bytes();
                let signature = key.sign(&signing_bytes).to_bytes();
                AppendItem { charge: iou.amount, signed: SignedIou { iou, signature }, evidence: signing_bytes }
            })
            .collect()
    }
}

/// Appends `iters` fresh batches of `len` IOUs, timing only the appends.
fn timed_appends(writer: &WriterHandle, generator: &mut Generator, len: usize, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let items = generator.batch(len);
        let started = Instant::now();
        let results = writer.append_blocking(items).expect("group commit");
        total += started.elapsed();
        assert!(results.iter().all(|r| r.outcome == Outcome::Accepted), "every IOU with a fresh nonce is accepted");
    }
    total
}

fn bench_commit(c: &mut Criterion) {
    let mut generator = Generator::new();
    let fixture = setup(&generator.payers, &generator.payees);
    let writer = fixture.writer.handle();

    let mut group = c.benchmark_group("ledger_commit");
    // Each iteration is at least one fsync (milliseconds): few, flat samples.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    for len in BATCH_SIZES {
        let (warm_up, measure) = if len >= 1000 { (1, 3) } else { (1, 2) };
        group.warm_up_time(Duration::from_secs(warm_up));
        group.measurement_time(Duration::from_secs(measure));
        group.throughput(Throughput::Elements(len as u64));
        group.bench_with_input(BenchmarkId::new("append_blocking", len), &len, |b, &len| {
            b.iter_custom(|iters| timed_appends(&writer, &mut generator, len, iters))
        });
    }
    group.finish();
    drop(fixture);
}

criterion_group!(benches, bench_commit);
criterion_main!(benches);

/// Who the tests' admin commands are recorded as.
fn test_actor() -> tally_core::Actor {
    tally_core::Actor::admin_token("test")
}

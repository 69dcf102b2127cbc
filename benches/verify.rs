//! Ed25519 verification of IOU signing bytes: one at a time vs batched.
//!
//! Signature verification is the CPU bottleneck of ingest: every IOU is
//! checked before it reaches the ledger writer, and the writer itself is
//! cheap per IOU (one fsync per group). `tally_core::verify::verify_many`
//! checks a whole slice with one multiscalar multiplication, which should be
//! worth roughly 3x per signature over `verify_one`; this bench measures how
//! much, at the batch sizes the front doors use (64, 256, 1024).
//! `batch_with_one_bad` measures the price of the fallback path: one corrupt
//! signature in 1024 makes the batch fail, re-check in chunks of
//! `FALLBACK_CHUNK_LEN`, then single-verify the failing chunk.
//!
//! `dalek_verify_batch` runs ed25519-dalek's own batch verifier on the same
//! signatures. Tally's batch gathers the terms of each key into one point of
//! the multiscalar multiplication, so it gains most when few keys sign many
//! IOUs (as crawlers do); `batch_distinct_keys` is the worst case for that,
//! every signature under its own key.
//!
//! Throughput is reported in elements, so criterion prints signatures/s.
//! Keys, IOUs and signatures are deterministic (fixed seeds) and are all
//! built before any timing starts.
//!
//! Run: `CARGO_TARGET_DIR=$HOME/.cache/tally-target cargo bench --workspace --bench verify`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tally_core::verify::{VerifyItem, verify_many, verify_one};
use tally_core::{Iou, SignatureBytes};

/// Distinct payer keys the signatures are spread over.
const PAYERS: usize = 16;
/// Batch sizes measured for both `single` and `batch`.
const BATCH_SIZES: [usize; 3] = [64, 256, 1024];
/// Size of the batch holding one corrupted signature.
const BAD_BATCH: usize = 1024;

/// Pre-signed IOUs: everything verification needs, owned.
struct Corpus {
    keys: Vec<VerifyingKey>,
    /// Index into `keys` of each message's signer.
    signer: Vec<usize>,
    messages: Vec<Vec<u8>>,
    signatures: Vec<SignatureBytes>,
}

impl Corpus {
    fn new(count: usize, payers: usize) -> Corpus {
        let mut rng = ChaCha20Rng::seed_from_u64(0x7a11_7e51);
        let signing: Vec<SigningKey> = (0..payers).map(|_| SigningKey::from_bytes(&rng.random::<[u8; 32]>())).collect();
        let keys = signing.iter().map(SigningKey::verifying_key).collect();
        let mut signer = Vec::with_capacity(count);
        let mut messages = Vec::with_capacity(count);
        let mut signatures = Vec::with_capacity(count);
        for i in 0..count {
            let payer = rng.random_range(0..payers);
            let article: u32 = rng.random_range(0..1_000_000);
            let iou = Iou {
                network: "tally:mainnet".into(),
                payer_key: signing[payer].verifying_key().to_bytes(),
                payee: format!("site-{:03}.example", i % 256),
                asset: "USD".into(),
                amount: rng.random_range(1..=50_000),
                nonce: rng.random(),
                issued_at_s: 1_800_000_000,
                expires_at_s: 1_800_000_600,
                // 40 bytes: "https://news.example.com/articles/012345".
                resource: format!("https://news.example.com/articles/{article:06}"),
            };
            let bytes = iou.signing_bytes();
            signatures.push(signing[payer].sign(&bytes).to_bytes());
            messages.push(bytes);
            signer.push(payer);
        }
        Corpus { keys, signer, messages, signatures }
    }

    fn items(&self, count: usize) -> Vec<VerifyItem<'_>> {
        (0..count)
            .map(|i| VerifyItem {
                key: &self.keys[self.signer[i]],
                message: &self.messages[i],
                signature: &self.signatures[i],
            })
            .collect()
    }
}

fn bench_verify(c: &mut Criterion) {
    let largest = BATCH_SIZES.into_iter().chain([BAD_BATCH]).max().unwrap();
    let corpus = Corpus::new(largest, PAYERS);
    let all = corpus.items(largest);
    assert!(verify_many(&all).iter().all(|ok| *ok), "every pre-signed IOU verifies");

    let mut group = c.benchmark_group("verify");
    // Iterations take milliseconds (1024 single verifications take ~40 ms):
    // flat sampling keeps the run short without losing precision.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));

    for size in BATCH_SIZES {
        let items = &all[..size];
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("single", size), items, |b, items| {
            b.iter(|| {
                for item in items {
                    black_box(verify_one(black_box(item)));
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("batch", size), items, |b, items| {
            b.iter(|| black_box(verify_many(black_box(items))))
        });
        let messages: Vec<&[u8]> = items.iter().map(|item| item.message).collect();
        let signatures: Vec<Signature> = items.iter().map(|item| Signature::from_bytes(item.signature)).collect();
        let keys: Vec<VerifyingKey> = items.iter().map(|item| *item.key).collect();
        assert!(ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok());
        group.bench_function(BenchmarkId::new("dalek_verify_batch", size), |b| {
            b.iter(|| black_box(ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()))
        });
    }

    let distinct = Corpus::new(BAD_BATCH, BAD_BATCH);
    let distinct_items = distinct.items(BAD_BATCH);
    assert!(verify_many(&distinct_items).iter().all(|ok| *ok));
    group.throughput(Throughput::Elements(BAD_BATCH as u64));
    group.bench_with_input(BenchmarkId::new("batch_distinct_keys", BAD_BATCH), &distinct_items[..], |b, items| {
        b.iter(|| black_box(verify_many(black_box(items))))
    });

    // One corrupted signature (a flipped bit in `s`) in the middle of the
    // batch: the whole batch fails, 1024/32 chunks are re-checked and the
    // failing chunk of 32 is verified one by one.
    let mut bad_signatures = corpus.signatures[..BAD_BATCH].to_vec();
    let bad_index = BAD_BATCH / 2 + 7;
    bad_signatures[bad_index][40] ^= 0x01;
    let bad_items: Vec<VerifyItem> = (0..BAD_BATCH)
        .map(|i| VerifyItem {
            key: &corpus.keys[corpus.signer[i]],
            message: &corpus.messages[i],
            signature: &bad_signatures[i],
        })
        .collect();
    let verdicts = verify_many(&bad_items);
    assert!(verdicts.iter().enumerate().all(|(i, ok)| *ok == (i != bad_index)), "exactly one signature is bad");
    group.throughput(Throughput::Elements(BAD_BATCH as u64));
    group.bench_with_input(BenchmarkId::new("batch_with_one_bad", BAD_BATCH), &bad_items[..], |b, items| {
        b.iter(|| black_box(verify_many(black_box(items))))
    });
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);

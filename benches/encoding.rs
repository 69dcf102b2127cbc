//! Per-IOU encoding costs on the hot path: canonical signing bytes, their
//! parser, and the hash-chain link.
//!
//! Every IOU is turned into its canonical signing bytes once at ingest (to
//! verify the signature and to store them), the ledger and the audit parse
//! those bytes back, and the writer computes one SHA-256 chain link per
//! accepted record. These run once per IOU next to an Ed25519 verification
//! (tens of microseconds), so they should stay in the sub-microsecond range;
//! this bench keeps an eye on that. Each case reports one element per
//! iteration, so criterion's time is ns per IOU.
//!
//! Run: `CARGO_TARGET_DIR=$HOME/.cache/tally-target cargo bench --workspace --bench encoding`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use tally_core::iou::SIGNING_BYTES_LEN_MAX;
use tally_core::{GENESIS_HASH, Iou, LinkContent, link_hash};

/// A realistic IOU: a crawler paying a news site for one article.
fn sample_iou(key: &SigningKey) -> Iou {
    Iou {
        network: "tally:mainnet".into(),
        payer_key: key.verifying_key().to_bytes(),
        payee: "news.example.com".into(),
        asset: "USD".into(),
        amount: 2_500,
        nonce: *b"\x01\x23\x45\x67\x89\xab\xcd\xef\xfe\xdc\xba\x98\x76\x54\x32\x10",
        issued_at_s: 1_800_000_000,
        expires_at_s: 1_800_000_600,
        // 40 bytes.
        resource: "https://news.example.com/articles/012345".into(),
    }
}

fn bench_encoding(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[0x42; 32]);
    let iou = sample_iou(&key);
    let bytes = iou.signing_bytes();
    let signature = key.sign(&bytes).to_bytes();
    assert_eq!(Iou::from_signing_bytes(&bytes).as_ref(), Ok(&iou));

    let mut group = c.benchmark_group("encoding");
    group.throughput(Throughput::Elements(1));

    let mut buffer = Vec::with_capacity(SIGNING_BYTES_LEN_MAX);
    group.bench_function("signing_bytes/write_reused_buffer", |b| {
        b.iter(|| {
            buffer.clear();
            black_box(&iou).write_signing_bytes(&mut buffer);
            black_box(buffer.as_slice());
        })
    });
    group.bench_function("signing_bytes/fresh_vec", |b| b.iter(|| black_box(black_box(&iou).signing_bytes())));
    group.bench_function("from_signing_bytes", |b| b.iter(|| black_box(Iou::from_signing_bytes(black_box(&bytes)))));
    // A mid-ledger record: non-genesis predecessor, large seq.
    let content = |seq: u64, at: u64| LinkContent {
        seq,
        epoch: 1,
        accepted_at_ms: at,
        charge: Some(1_000),
        signature: &signature,
        evidence: &bytes,
    };
    let prev_hash = link_hash(&GENESIS_HASH, &content(1, 1_800_000_000_000));
    group.bench_function("link_hash", |b| {
        b.iter(|| black_box(link_hash(black_box(&prev_hash), black_box(&content(1_234_567, 1_800_000_000_123)))))
    });
    group.finish();
}

criterion_group!(benches, bench_encoding);
criterion_main!(benches);

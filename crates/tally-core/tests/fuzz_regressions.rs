//! Replays the `iou_decode` and `evidence_decode` fuzz targets' inputs on stable Rust, in the
//! ordinary test suite.
//!
//! Each fuzz target (`fuzz/fuzz_targets/<target>.rs`) and these tests run the same checks,
//! `tally_core::fuzzing::<target>`. Every file under `fuzz/corpus/<target>/` (the committed
//! seed corpus) and `fuzz/regressions/<target>/` (inputs that once crashed the target) goes
//! through them, so a crash found by the fuzzer stays fixed.
//!
//! The seed corpus is generated from the IOU test vectors of `docs/iou-format.md` plus edge cases;
//! `seed_corpus_is_current` fails if the committed files drift from [`seeds`]. After a deliberate
//! change, rewrite them with
//! `cargo test --workspace --test fuzz_regressions -- --ignored write_iou_decode_seed_corpus`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use tally_core::Iou;

const TARGET: &str = "iou_decode";
const EVIDENCE_TARGET: &str = "evidence_decode";

fn fuzz_dir(kind: &str) -> PathBuf {
    target_dir(kind, TARGET)
}

fn target_dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz").join(kind).join(target)
}

/// The files of one input directory, sorted; none if the directory does not exist.
fn inputs(kind: &str) -> Vec<PathBuf> {
    target_inputs(kind, TARGET)
}

fn target_inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = target_dir(kind, target);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", dir.display()),
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file() && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    files
}

/// Runs the target's checks on every file; fails naming each input that panicked.
fn replay(files: &[PathBuf]) {
    replay_with(TARGET, files, tally_core::fuzzing::iou_decode);
}

fn replay_with(target: &str, files: &[PathBuf], check: fn(&[u8])) {
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("read input");
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{} of {} inputs fail the {target} checks: {failed:#?}", failed.len(), files.len());
}

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("hex")
}

/// The seed corpus: real IOUs (the three published vectors, one at every maximum length) and a few
/// near misses, by file name.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let vector_1 = "74616c6c792d696f752d7631d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a000102030405060708090a0b0c0d0e0f0000000000000001000000006553f100000000006553f13c0a74616c6c793a7465737403555344057075622d310000";
    let vector_2 = "74616c6c792d696f752d76313d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c8f3a5c1e0b7d4962a1e8c3f05d2b9e470000000000000064000000006774858000000000677486ac0d74616c6c793a6d61696e6e657404555344430c6e6577732e6578616d706c65003368747470733a2f2f6e6577732e6578616d706c652f323032352f30312f30312f6d61726b6574732e68746d6c3f706167653d32";
    let vector_3 = "74616c6c792d696f752d7631fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025ffffffffffffffffffffffffffffffffffffffffffffffff000000006955b9000000000069570a804074616c6c793a73746167696e672e65752d776573742d313a656467655f636173652d6e6574776f726b2e76313a4142434445464748494a4b4c4d4e4f505152530c4142434445464748494a3132407075626c69736865725f776974682e612d766572792d6c6f6e672e6163636f756e742d69645f746861742d69732d65786163746c792d36342d62797465732e78002568747470733a2f2fe4be8be381882e6a702fe8a898e4ba8b2ff09fa6803f713d636166c3a9";
    let longest = Iou {
        network: "n".repeat(tally_core::iou::NETWORK_LEN_MAX),
        payer_key: [0xab; 32],
        payee: "p".repeat(64),
        asset: "A".repeat(12),
        amount: u64::MAX,
        nonce: [0; 16],
        issued_at_s: 0,
        expires_at_s: u64::MAX,
        resource: "r".repeat(tally_core::iou::RESOURCE_LEN_MAX),
    };
    let mut trailing = unhex(vector_1);
    trailing.push(0);
    let mut bad_utf8 = unhex(vector_2);
    let resource_at = bad_utf8.len() - 51;
    bad_utf8[resource_at] = 0xff;
    vec![
        ("vector-1-minimal", unhex(vector_1)),
        ("vector-2-crawler", unhex(vector_2)),
        ("vector-3-edges", unhex(vector_3)),
        ("every-field-at-its-maximum", longest.signing_bytes()),
        ("near-miss-trailing-byte", trailing),
        ("near-miss-resource-not-utf8", bad_utf8),
        ("near-miss-domain-tag-only", b"tally-iou-v1".to_vec()),
    ]
}

#[test]
fn seeds_are_what_they_claim() {
    for (name, data) in seeds() {
        let decoded = Iou::from_signing_bytes(&data);
        assert_eq!(decoded.is_ok(), !name.starts_with("near-miss"), "{name}: {decoded:?}");
    }
}

#[test]
fn seed_corpus_is_current() {
    for (name, data) in seeds() {
        let path = fuzz_dir("corpus").join(name);
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(committed == data, "{} differs from the generated seed", path.display());
    }
}

#[test]
#[ignore = "writes the seed corpus into fuzz/corpus; run by hand after a deliberate change"]
fn write_iou_decode_seed_corpus() {
    let dir = fuzz_dir("corpus");
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    for (name, data) in seeds() {
        std::fs::write(dir.join(name), data).expect("write seed");
    }
}

#[test]
fn corpus_passes() {
    let files = inputs("corpus");
    assert!(files.len() >= seeds().len(), "the seed corpus is missing: {}", fuzz_dir("corpus").display());
    replay(&files);
}

#[test]
fn regressions_pass() {
    replay(&inputs("regressions"));
}

/// Seeds for `evidence_decode`: each evidence form, a batch statement, and a signature base.
fn evidence_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use base64::Engine as _;
    use tally_core::batch::BatchStatement;
    use tally_core::evidence::{Commitment, batch_member_evidence, jwk_thumbprint};
    let key = [7u8; 32];
    let iou = Iou::from_signing_bytes(&unhex(VECTOR_1)).expect("vector 1");
    let payment = base64::engine::general_purpose::STANDARD.encode(
        r#"{"x402Version":2,"accepted":{"scheme":"batch-settlement","network":"tally:test","amount":"9","asset":"USD","payTo":"pub-1"},"payload":{"amount":"9","asset":"USD"}}"#,
    );
    let base = format!(
        "\"@authority\": pub-1.example\n\"signature-agent\": \"https://crawler.example\"\n\"payment-signature\": {payment}\n\"@signature-params\": (\"@authority\" \"signature-agent\" \"payment-signature\");created=1;keyid=\"{}\";expires=2;tag=\"web-bot-auth\"",
        jwk_thumbprint(&key)
    );
    let web_bot_auth = Commitment::web_bot_auth(key, [0; 64], &base).expect("a valid base").evidence;
    let statement = BatchStatement { payer_key: key, batch_seq: 3, count: 2, root: [5; 32] };
    vec![
        ("tally-iou-evidence", unhex(VECTOR_1)),
        ("batch-member-evidence", batch_member_evidence(3, 1, &iou.signing_bytes())),
        ("web-bot-auth-evidence", web_bot_auth),
        ("web-bot-auth-signature-base", base.into_bytes()),
        ("batch-statement", statement.to_bytes().to_vec()),
    ]
}

const VECTOR_1: &str = "74616c6c792d696f752d7631d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a000102030405060708090a0b0c0d0e0f0000000000000001000000006553f100000000006553f13c0a74616c6c793a7465737403555344057075622d310000";

#[test]
fn evidence_seed_corpus_is_current() {
    for (name, data) in evidence_seeds() {
        let path = target_dir("corpus", EVIDENCE_TARGET).join(name);
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(committed == data, "{} differs from the generated seed", path.display());
    }
}

#[test]
#[ignore = "writes the evidence_decode seed corpus into fuzz/corpus; run by hand after a deliberate change"]
fn write_evidence_decode_seed_corpus() {
    let dir = target_dir("corpus", EVIDENCE_TARGET);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    for (name, data) in evidence_seeds() {
        std::fs::write(dir.join(name), data).expect("write seed");
    }
}

#[test]
fn evidence_corpus_and_regressions_pass() {
    let corpus = target_inputs("corpus", EVIDENCE_TARGET);
    assert!(corpus.len() >= evidence_seeds().len(), "the evidence_decode seed corpus is missing");
    replay_with(EVIDENCE_TARGET, &corpus, tally_core::fuzzing::evidence_decode);
    replay_with(EVIDENCE_TARGET, &target_inputs("regressions", EVIDENCE_TARGET), tally_core::fuzzing::evidence_decode);
}

//! The IOU test vectors published in `docs/iou-format.md`.
//!
//! Every value here is hex (lower case) or a plain field value, exactly as
//! the document prints it. The tests check that tally-core produces these
//! bytes, signatures and hashes, and that the document shows exactly these
//! vectors, so the two cannot drift apart.
//!
//! The log record hashes come in two chains: format 1 (no charge, what ledger
//! format 1 wrote; these values must never change, or old ledgers would stop
//! verifying) and format 2 (with the charge).
//!
//! To regenerate the document's vector blocks after a deliberate format
//! change, run
//! `cargo test -p tally-core --test vectors -- --ignored --nocapture print_vectors`
//! and paste its output into the document and the constants below.

use ed25519_dalek::{Signer, SigningKey};
use tally_core::chain::{CommitmentId, GENESIS_HASH, LOG_DOMAIN_TAG, LOG_DOMAIN_TAG_V1, RecordHash};
use tally_core::iou::Iou;
use tally_core::verify::{VerifyItem, parse_registration_key, verify_one};
use tally_core::{LinkContent, link_hash, link_hash_v1};

/// The document, compiled in so the drift check needs no file access.
const DOC: &str = include_str!("../../../docs/iou-format.md");

/// One IOU vector: inputs, then the expected outputs.
#[derive(Clone, Copy)]
struct Vector {
    name: &'static str,
    /// The 32-byte Ed25519 secret seed (RFC 8032 "secret key").
    seed: &'static str,
    /// The public key derived from `seed`.
    payer_key: &'static str,
    network: &'static str,
    payee: &'static str,
    asset: &'static str,
    amount: u64,
    nonce: &'static str,
    issued_at: u64,
    expires_at: u64,
    resource: &'static str,
    /// The canonical signing bytes.
    signing_bytes: &'static str,
    /// Ed25519 signature over `signing_bytes`, R || s.
    signature: &'static str,
}

/// Vector 1: minimal, empty resource. Key: RFC 8032 section 7.1, TEST 1.
const VECTOR_1: Vector = Vector {
    name: "Vector 1: minimal",
    seed: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    payer_key: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    network: "tally:test",
    payee: "pub-1",
    asset: "USD",
    amount: 1,
    nonce: "000102030405060708090a0b0c0d0e0f",
    issued_at: 1_700_000_000,
    expires_at: 1_700_000_060,
    resource: "",
    signing_bytes: "74616c6c792d696f752d7631d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a000102030405060708090a0b0c0d0e0f0000000000000001000000006553f100000000006553f13c0a74616c6c793a7465737403555344057075622d310000",
    signature: "82cd6114d40b9fa1324dc411e8ccce833451a8789f838cb17c53f526883def26f97b18aeb33587282bab8f5f0f5e0f7f46a0300a63dffa77ad33ad9ffb264308",
};

/// Vector 2: a typical crawler IOU for one page. Key: RFC 8032 TEST 2.
const VECTOR_2: Vector = Vector {
    name: "Vector 2: a crawler paying for a page",
    seed: "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
    payer_key: "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
    network: "tally:mainnet",
    payee: "news.example",
    asset: "USDC",
    amount: 100,
    nonce: "8f3a5c1e0b7d4962a1e8c3f05d2b9e47",
    issued_at: 1_735_689_600,
    expires_at: 1_735_689_900,
    resource: "https://news.example/2025/01/01/markets.html?page=2",
    signing_bytes: "74616c6c792d696f752d76313d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c8f3a5c1e0b7d4962a1e8c3f05d2b9e470000000000000064000000006774858000000000677486ac0d74616c6c793a6d61696e6e657404555344430c6e6577732e6578616d706c65003368747470733a2f2f6e6577732e6578616d706c652f323032352f30312f30312f6d61726b6574732e68746d6c3f706167653d32",
    signature: "5a6fe55f63c69df97ae3cf5c132dce60c2981a340a7106fda48fab1db245433aeb1c6551a40b42ebe5b6e000b265d69026112d2adb763da204b2ce0cd3e05c07",
};

/// Vector 3: edge values. Key: RFC 8032 TEST 3.
const VECTOR_3: Vector = Vector {
    name: "Vector 3: edge values",
    seed: "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
    payer_key: "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
    network: "tally:staging.eu-west-1:edge_case-network.v1:ABCDEFGHIJKLMNOPQRS",
    payee: "publisher_with.a-very-long.account-id_that-is-exactly-64-bytes.x",
    asset: "ABCDEFGHIJ12",
    amount: u64::MAX,
    nonce: "ffffffffffffffffffffffffffffffff",
    issued_at: 1_767_225_600,
    expires_at: 1_767_312_000,
    resource: "https://例え.jp/記事/🦀?q=café",
    signing_bytes: "74616c6c792d696f752d7631fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025ffffffffffffffffffffffffffffffffffffffffffffffff000000006955b9000000000069570a804074616c6c793a73746167696e672e65752d776573742d313a656467655f636173652d6e6574776f726b2e76313a4142434445464748494a4b4c4d4e4f505152530c4142434445464748494a3132407075626c69736865725f776974682e612d766572792d6c6f6e672e6163636f756e742d69645f746861742d69732d65786163746c792d36342d62797465732e78002568747470733a2f2fe4be8be381882e6a702fe8a898e4ba8b2ff09fa6803f713d636166c3a9",
    signature: "3260a1b8ec530673accbec841bd146f375f6934ec0b4767d408f40b70fa1c345466b40539758784f516041dcf2ee0643acc5c01b209c969a6eb3dcd333b31609",
};

const VECTORS: [&Vector; 3] = [&VECTOR_1, &VECTOR_2, &VECTOR_3];

/// One log record: which IOU vector it holds, where, and its hash.
struct ChainVector {
    name: &'static str,
    iou: &'static Vector,
    prev_hash: &'static str,
    seq: u64,
    epoch: u64,
    accepted_at_ms: u64,
    /// What the payee charged: `Some` for a format-2 record, `None` for a
    /// format-1 record (which has no charge field; it charged the whole amount).
    charge: Option<u64>,
    hash: &'static str,
}

/// Format 1: the first record of a log holds vector 1.
const CHAIN_V1_1: ChainVector = ChainVector {
    name: "Format 1, record 1 (vector 1, first record of the log)",
    iou: &VECTOR_1,
    prev_hash: "0000000000000000000000000000000000000000000000000000000000000000",
    seq: 1,
    epoch: 1,
    accepted_at_ms: 1_700_000_000_123,
    charge: None,
    hash: "4b8e2714f67428053267db73f0e21c57ca1c9977c75ffd8eb797541520bbaa32",
};

/// Format 1: the second record holds vector 2 and links to record 1.
const CHAIN_V1_2: ChainVector = ChainVector {
    name: "Format 1, record 2 (vector 2, links to record 1)",
    iou: &VECTOR_2,
    prev_hash: "4b8e2714f67428053267db73f0e21c57ca1c9977c75ffd8eb797541520bbaa32",
    seq: 2,
    epoch: 1,
    accepted_at_ms: 1_735_689_601_234,
    charge: None,
    hash: "c8e258fb06e35fcd15070c7ddb7ca6b4e832dc116d7fbd96489ec9813af8e8c8",
};

/// Format 2: the same two IOUs at the same places and times, now with a
/// charge. Vector 1 is charged its whole amount.
const CHAIN_V2_1: ChainVector = ChainVector {
    name: "Format 2, record 1 (vector 1, charged its whole amount)",
    iou: &VECTOR_1,
    prev_hash: "0000000000000000000000000000000000000000000000000000000000000000",
    seq: 1,
    epoch: 1,
    accepted_at_ms: 1_700_000_000_123,
    charge: Some(1),
    hash: "6f228a2b199023a961cee6f084d59bbb476114a2fa875ed33e8af0227aef0ca9",
};

/// Format 2: vector 2 commits to 100 but the payee charges 60 (dynamic
/// pricing), and the record links to record 1.
const CHAIN_V2_2: ChainVector = ChainVector {
    name: "Format 2, record 2 (vector 2, charged 60 of its 100, links to record 1)",
    iou: &VECTOR_2,
    prev_hash: "6f228a2b199023a961cee6f084d59bbb476114a2fa875ed33e8af0227aef0ca9",
    seq: 2,
    epoch: 1,
    accepted_at_ms: 1_735_689_601_234,
    charge: Some(60),
    hash: "29d0f08fabba3d6ad009df01f2d790a74c8041341d2c0ac80b059ea6f10e3cf8",
};

/// The format-1 chain: what ledger format 1 wrote. Its hashes never change.
const CHAIN_V1: [&ChainVector; 2] = [&CHAIN_V1_1, &CHAIN_V1_2];
/// The format-2 chain.
const CHAIN_V2: [&ChainVector; 2] = [&CHAIN_V2_1, &CHAIN_V2_2];
/// Both chains, each starting from the genesis hash.
const CHAINS: [&[&ChainVector; 2]; 2] = [&CHAIN_V1, &CHAIN_V2];

/// Every record of both chains.
fn chain_records() -> impl Iterator<Item = &'static ChainVector> {
    CHAINS.into_iter().flatten().copied()
}

/// A record's hash: format 1 (no charge) with [`link_hash_v1`], format 2 with
/// [`link_hash`] and the charge.
fn record_hash(c: &ChainVector, prev: &RecordHash, signature: &[u8; 64], evidence: &[u8]) -> RecordHash {
    let (seq, epoch, accepted_at_ms) = (c.seq, c.epoch, c.accepted_at_ms);
    match c.charge {
        None => link_hash_v1(prev, seq, epoch, accepted_at_ms, signature, evidence),
        Some(charge) => {
            link_hash(prev, &LinkContent { seq, epoch, accepted_at_ms, charge: Some(charge), signature, evidence })
        }
    }
}

fn unhex<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).unwrap_or_else(|e| panic!("{text:?} is not {N} bytes of hex: {e}"));
    out
}

fn iou_of(v: &Vector) -> Iou {
    Iou {
        network: v.network.into(),
        payer_key: unhex(v.payer_key),
        payee: v.payee.into(),
        asset: v.asset.into(),
        amount: v.amount,
        nonce: unhex(v.nonce),
        issued_at_s: v.issued_at,
        expires_at_s: v.expires_at,
        resource: v.resource.into(),
    }
}

fn signing_key_of(v: &Vector) -> SigningKey {
    SigningKey::from_bytes(&unhex(v.seed))
}

/// A vector's block as the document prints it: one `name = value` per line.
fn render_vector(v: &Vector) -> String {
    for text in [v.network, v.payee, v.asset, v.resource] {
        assert!(!text.contains(['"', '\\']), "quoted values stay unescaped");
    }
    format!(
        "seed          = {}\n\
         payer_key     = {}\n\
         network       = \"{}\"\n\
         payee         = \"{}\"\n\
         asset         = \"{}\"\n\
         amount        = {}\n\
         nonce         = {}\n\
         issued_at     = {}\n\
         expires_at    = {}\n\
         resource      = \"{}\"\n\
         resource_hex  = {}\n\
         signing_bytes = {}\n\
         signature     = {}\n",
        v.seed,
        v.payer_key,
        v.network,
        v.payee,
        v.asset,
        v.amount,
        v.nonce,
        v.issued_at,
        v.expires_at,
        v.resource,
        if v.resource.is_empty() { "(empty)".to_owned() } else { hex::encode(v.resource) },
        v.signing_bytes,
        v.signature,
    )
}

/// A record's block as the document prints it, in the order the hash reads
/// its fields. A format-1 record has no `charge` line.
fn render_chain(c: &ChainVector) -> String {
    let tag = match c.charge {
        None => LOG_DOMAIN_TAG_V1,
        Some(_) => LOG_DOMAIN_TAG,
    };
    let charge = c.charge.map_or(String::new(), |charge| format!("charge         = {charge}\n"));
    format!(
        "domain_tag     = \"{}\"\n\
         prev_hash      = {}\n\
         seq            = {}\n\
         epoch          = {}\n\
         accepted_at_ms = {}\n\
         {charge}\
         signature      = {}\n\
         signing_bytes  = {}\n\
         record_hash    = {}\n\
         commitment_id  = {}:{}\n",
        std::str::from_utf8(tag).expect("ASCII"),
        c.prev_hash,
        c.seq,
        c.epoch,
        c.accepted_at_ms,
        c.iou.signature,
        c.iou.signing_bytes,
        c.hash,
        c.seq,
        c.hash,
    )
}

/// A text field's label in the worked example: its value when short.
fn text_label(field: &str, value: &str) -> String {
    if value.chars().count() <= 16 { format!("{field} \"{value}\"") } else { format!("{field} (UTF-8)") }
}

/// The worked example: a vector's signing bytes cut into their fields.
fn render_breakdown(v: &Vector) -> String {
    let fields: [(usize, String); 14] = [
        (12, "domain tag \"tally-iou-v1\"".into()),
        (32, "payer_key".into()),
        (16, "nonce".into()),
        (8, format!("amount = {}", v.amount)),
        (8, format!("issued_at = {}", v.issued_at)),
        (8, format!("expires_at = {}", v.expires_at)),
        (1, format!("n = {} (network length)", v.network.len())),
        (v.network.len(), text_label("network", v.network)),
        (1, format!("a = {} (asset length)", v.asset.len())),
        (v.asset.len(), text_label("asset", v.asset)),
        (1, format!("p = {} (payee length)", v.payee.len())),
        (v.payee.len(), text_label("payee", v.payee)),
        (2, format!("r = {} (resource length)", v.resource.len())),
        (v.resource.len(), text_label("resource", v.resource)),
    ];
    let width = fields.iter().map(|(_, label)| label.chars().count()).max().unwrap_or(0);
    let mut out = format!("offset  size  {:<width$}  bytes (hex)\n", "field");
    let mut offset = 0;
    for (size, label) in fields {
        let hex = &v.signing_bytes[2 * offset..2 * (offset + size)];
        let pad = width - label.chars().count();
        let line = format!("{offset:>6}  {size:>4}  {label}{:pad$}  {hex}", "");
        out.push_str(line.trim_end());
        out.push('\n');
        offset += size;
    }
    assert_eq!(2 * offset, v.signing_bytes.len(), "the fields cover the signing bytes");
    out.push_str(&format!("total {offset} bytes\n"));
    out
}

#[test]
fn signing_bytes_match_the_document() {
    for v in VECTORS {
        let iou = iou_of(v);
        assert_eq!(iou.check_shape(), Ok(()), "{}", v.name);
        assert_eq!(hex::encode(iou.signing_bytes()), v.signing_bytes, "{}", v.name);
    }
}

#[test]
fn public_keys_derive_from_the_seeds() {
    for v in VECTORS {
        assert_eq!(hex::encode(signing_key_of(v).verifying_key().to_bytes()), v.payer_key, "{}", v.name);
    }
}

#[test]
fn signatures_match_the_document() {
    for v in VECTORS {
        let bytes = hex::decode(v.signing_bytes).expect("hex");
        let signature = signing_key_of(v).sign(&bytes).to_bytes();
        assert_eq!(hex::encode(signature), v.signature, "{}", v.name);
    }
}

#[test]
fn the_engine_accepts_every_vector() {
    for v in VECTORS {
        let key = parse_registration_key(&unhex(v.payer_key)).expect("vector keys are registrable");
        let message = hex::decode(v.signing_bytes).expect("hex");
        let signature: [u8; 64] = unhex(v.signature);
        assert!(verify_one(&VerifyItem { key: &key, message: &message, signature: &signature }), "{}", v.name);
        // The document's section 6: RFC 8032 signatures satisfy the strict
        // (cofactorless) equation, so every verifier accepts them.
        let strict = key.verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&signature));
        assert!(strict.is_ok(), "{}: {strict:?}", v.name);
    }
}

#[test]
fn any_changed_bit_is_refused() {
    for v in VECTORS {
        let key = parse_registration_key(&unhex(v.payer_key)).expect("registrable");
        let message = hex::decode(v.signing_bytes).expect("hex");
        let signature: [u8; 64] = unhex(v.signature);
        for i in [0, 12, 44, 60, 68, 76, 84, message.len() - 1] {
            let mut changed = message.clone();
            changed[i] ^= 0x01;
            assert!(
                !verify_one(&VerifyItem { key: &key, message: &changed, signature: &signature }),
                "{} byte {i}",
                v.name
            );
        }
        for i in [0, 31, 32, 63] {
            let mut changed = signature;
            changed[i] ^= 0x01;
            assert!(
                !verify_one(&VerifyItem { key: &key, message: &message, signature: &changed }),
                "{} sig byte {i}",
                v.name
            );
        }
    }
}

#[test]
fn signing_bytes_round_trip() {
    for v in VECTORS {
        let bytes = hex::decode(v.signing_bytes).expect("hex");
        assert_eq!(Iou::from_signing_bytes(&bytes), Ok(iou_of(v)), "{}", v.name);
    }
}

#[test]
fn vector_3_sits_on_the_edges() {
    let v = &VECTOR_3;
    assert_eq!(v.amount, u64::MAX);
    assert_eq!(v.network.len(), 64);
    assert_eq!(v.payee.len(), 64);
    assert_eq!(v.asset.len(), 12);
    assert!(!v.resource.is_ascii());
    // The document says "37 bytes for 25 characters".
    assert_eq!((v.resource.len(), v.resource.chars().count()), (37, 25));
    // Characters of 2, 3 and 4 UTF-8 bytes.
    for len in 2..=4 {
        assert!(v.resource.chars().any(|c| c.len_utf8() == len), "a {len}-byte character");
    }
    assert_eq!(v.expires_at - v.issued_at, 86_400, "exactly the default maximum validity");
    assert!(VECTOR_1.resource.is_empty());
}

#[test]
fn chain_hashes_match_the_document() {
    for chain in CHAINS {
        assert_eq!(chain[0].prev_hash, hex::encode(GENESIS_HASH), "{}", chain[0].name);
        assert_eq!(chain[1].prev_hash, chain[0].hash, "{} links to record 1", chain[1].name);
        for (c, seq) in chain.iter().zip(1..) {
            assert_eq!(c.seq, seq, "{}", c.name);
        }
    }
    for c in chain_records() {
        let prev: RecordHash = unhex(c.prev_hash);
        let signature: [u8; 64] = unhex(c.iou.signature);
        let bytes = hex::decode(c.iou.signing_bytes).expect("hex");
        let hash = record_hash(c, &prev, &signature, &bytes);
        assert_eq!(hex::encode(hash), c.hash, "{}", c.name);
        let id = CommitmentId { seq: c.seq, hash };
        assert_eq!(id.to_string(), format!("{}:{}", c.seq, c.hash));
        assert_eq!(format!("{}:{}", c.seq, c.hash).parse::<CommitmentId>(), Ok(id));
    }
}

#[test]
fn format_1_records_keep_their_hash() {
    // `link_hash` without a charge is the format-1 hash, and the format-1
    // vectors are the values format 1 wrote (tag "tally-log-v1", no charge).
    for c in CHAIN_V1 {
        assert_eq!(c.charge, None, "{}", c.name);
        let prev: RecordHash = unhex(c.prev_hash);
        let signature: [u8; 64] = unhex(c.iou.signature);
        let bytes = hex::decode(c.iou.signing_bytes).expect("hex");
        let content = LinkContent {
            seq: c.seq,
            epoch: c.epoch,
            accepted_at_ms: c.accepted_at_ms,
            charge: None,
            signature: &signature,
            evidence: &bytes,
        };
        assert_eq!(hex::encode(link_hash(&prev, &content)), c.hash, "{}", c.name);
    }
    assert_eq!(CHAIN_V1_1.hash, "4b8e2714f67428053267db73f0e21c57ca1c9977c75ffd8eb797541520bbaa32");
    assert_eq!(CHAIN_V1_2.hash, "c8e258fb06e35fcd15070c7ddb7ca6b4e832dc116d7fbd96489ec9813af8e8c8");
}

#[test]
fn format_2_vectors_show_the_charge() {
    for c in CHAIN_V2 {
        let charge = c.charge.expect("a format-2 record has a charge");
        assert!((1..=c.iou.amount).contains(&charge), "{}: a charge is 1..=the IOU's amount", c.name);
    }
    // Dynamic pricing: one record is charged less than its IOU commits to.
    assert!(CHAIN_V2.iter().any(|c| c.charge < Some(c.iou.amount)), "a record charged below its amount");
    // The format-2 chain holds the format-1 chain's IOUs at the same places
    // and times, so only the tag and the charge tell their hashes apart.
    for (v1, v2) in CHAIN_V1.iter().zip(CHAIN_V2) {
        assert_eq!(
            (v1.iou.name, v1.seq, v1.epoch, v1.accepted_at_ms),
            (v2.iou.name, v2.seq, v2.epoch, v2.accepted_at_ms)
        );
        assert_ne!(v1.hash, v2.hash, "{}", v2.name);
    }
}

/// Values of the document's `key = value` lines for `key`, inside its
/// ```` ```text ```` blocks (where the vectors are).
fn doc_values(key: &str) -> Vec<&'static str> {
    let mut in_text_block = false;
    let mut values = Vec::new();
    for line in DOC.lines() {
        if line.starts_with("```") {
            in_text_block = line == "```text";
        } else if in_text_block
            && let Some((k, value)) = line.split_once('=')
            && k.trim() == key
        {
            values.push(value.trim());
        }
    }
    values
}

#[test]
fn the_document_shows_exactly_these_vectors() {
    for v in VECTORS {
        assert!(!v.signing_bytes.is_empty() && !v.signature.is_empty(), "{} is filled in", v.name);
        assert!(DOC.contains(v.signing_bytes), "{}: signing bytes missing from the document", v.name);
        assert!(DOC.contains(v.signature), "{}: signature missing from the document", v.name);
        assert!(DOC.contains(&render_vector(v)), "{}: the document's block differs from\n{}", v.name, render_vector(v));
    }
    let breakdown = render_breakdown(&VECTOR_2);
    assert!(DOC.contains(&breakdown), "the worked example differs from\n{breakdown}");
    for c in chain_records() {
        assert!(DOC.contains(&render_chain(c)), "{}: the document's block differs from\n{}", c.name, render_chain(c));
    }
    // And the other way round: every hex value the document lists is one of
    // ours, so no stale vector lingers in the text.
    let mut ours: Vec<&str> = VECTORS.iter().map(|v| v.signing_bytes).collect();
    let mut listed = doc_values("signing_bytes");
    ours.extend(chain_records().map(|c| c.iou.signing_bytes));
    ours.sort_unstable();
    listed.sort_unstable();
    assert_eq!(listed, ours, "signing_bytes lines in the document");
    let mut ours: Vec<&str> = VECTORS.iter().map(|v| v.signature).collect();
    let mut listed = doc_values("signature");
    ours.extend(chain_records().map(|c| c.iou.signature));
    ours.sort_unstable();
    listed.sort_unstable();
    assert_eq!(listed, ours, "signature lines in the document");
    let mut ours: Vec<&str> = chain_records().map(|c| c.hash).collect();
    let mut listed = doc_values("record_hash");
    ours.sort_unstable();
    listed.sort_unstable();
    assert_eq!(listed, ours, "record_hash lines in the document");
    let mut ours: Vec<String> = chain_records().filter_map(|c| c.charge).map(|c| c.to_string()).collect();
    let mut listed = doc_values("charge");
    ours.sort_unstable();
    listed.sort_unstable();
    assert_eq!(listed, ours, "charge lines in the document");
}

/// Prints the document's vector blocks, computed from the inputs above.
#[test]
#[ignore = "a generator, run by hand when the format changes"]
fn print_vectors() {
    let mut computed = Vec::new();
    for v in VECTORS {
        let bytes = iou_of(v).signing_bytes();
        let key = signing_key_of(v);
        let filled = Vector {
            payer_key: hex::encode(key.verifying_key().to_bytes()).leak(),
            signing_bytes: hex::encode(&bytes).leak(),
            signature: hex::encode(key.sign(&bytes).to_bytes()).leak(),
            ..*v
        };
        println!("### {}\n\n```text\n{}```\n", v.name, render_vector(&filled));
        println!("```text\n{}```\n", render_breakdown(&filled));
        computed.push(filled);
    }
    for chain in CHAINS {
        let mut prev = GENESIS_HASH;
        for c in chain {
            let v = computed.iter().find(|v| v.name == c.iou.name).expect("a listed vector");
            let signature: [u8; 64] = unhex(v.signature);
            let bytes = hex::decode(v.signing_bytes).expect("hex");
            let hash = record_hash(c, &prev, &signature, &bytes);
            let filled = ChainVector {
                iou: Box::leak(Box::new(*v)),
                prev_hash: hex::encode(prev).leak(),
                hash: hex::encode(hash).leak(),
                ..**c
            };
            println!("### {}\n\n```text\n{}```\n", c.name, render_chain(&filled));
            prev = hash;
        }
    }
}

/// The batch-signed vector of section 13: Vector 1's key signs a batch of three IOUs (Vector 1's
/// IOU, then the same IOU with amounts 2 and 3 and nonces ending in 10 and 11).
fn batch_vector_values() -> Vec<(&'static str, String)> {
    use tally_core::batch::{BatchStatement, inclusion_proof, leaf_hash, merkle_root};
    let key = SigningKey::from_bytes(&hex::decode(VECTOR_1.seed).unwrap().try_into().unwrap());
    let first = Iou::from_signing_bytes(&hex::decode(VECTOR_1.signing_bytes).unwrap()).unwrap();
    let ious: Vec<Iou> = (0..3u8)
        .map(|i| {
            let mut iou = first.clone();
            iou.amount = u64::from(i) + 1;
            if i > 0 {
                iou.nonce[15] = 0x0f + i;
            }
            iou
        })
        .collect();
    let leaves: Vec<[u8; 32]> = ious.iter().map(|iou| leaf_hash(&iou.signing_bytes())).collect();
    let statement = BatchStatement {
        payer_key: key.verifying_key().to_bytes(),
        batch_seq: 1,
        count: 3,
        root: merkle_root(&leaves),
    };
    let signature = key.sign(&statement.to_bytes()).to_bytes();
    let proof: Vec<String> = inclusion_proof(&leaves, 2).iter().map(hex::encode).collect();
    vec![
        ("batch_leaf_0", hex::encode(leaves[0])),
        ("batch_leaf_1", hex::encode(leaves[1])),
        ("batch_leaf_2", hex::encode(leaves[2])),
        ("batch_root", hex::encode(statement.root)),
        ("batch_statement", hex::encode(statement.to_bytes())),
        ("batch_signature", hex::encode(signature)),
        ("batch_proof_of_leaf_2", proof.join(" ")),
    ]
}

#[test]
fn batch_vector_matches_the_document() {
    for (name, value) in batch_vector_values() {
        assert_eq!(doc_values(name), vec![value.as_str()], "{name} in docs/iou-format.md section 13");
    }
}

#[test]
#[ignore = "prints the batch vector for docs/iou-format.md"]
fn print_batch_vector() {
    for (name, value) in batch_vector_values() {
        println!("{name:<22}= {value}");
    }
}

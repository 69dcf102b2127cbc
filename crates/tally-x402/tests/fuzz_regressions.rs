//! Replays the x402 fuzz targets' inputs on stable Rust, in the ordinary test suite.
//!
//! The fuzz targets in `fuzz/fuzz_targets/` (`x402_json`, `signature_input`, `jwks`) and these tests
//! run the same checks, `tally_x402::fuzzing::*`. Every file under `fuzz/corpus/<target>/` (the
//! committed seed corpus) and `fuzz/regressions/<target>/` (inputs that once crashed the target)
//! goes through them, so a crash found by the fuzzer stays fixed.
//!
//! The seed corpora are real, valid inputs built here (a signed facilitator request, the three
//! x402 headers, Web Bot Auth requests signed with the RFC 9421 test key, the RFC 9421 B.2.6
//! example, key directories); `seed_corpus_is_current` fails if the committed files drift from
//! them. After a deliberate change, rewrite them with
//! `cargo test --workspace --test fuzz_regressions -- --ignored write_x402_seed_corpora`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::json;
use tally_core::{Iou, SignedIou};
use tally_x402::commitment::{TallyIouPayload, nonce_for_payment_id};
use tally_x402::fuzzing::{FUZZ_NOW_S, FUZZ_WEAK_KEYID, fuzz_keyid, fuzz_sign};
use tally_x402::jwks::jwks_for;
use tally_x402::middleware::{PaymentResponse, PaymentResponseExtra, encode_header_json};
use tally_x402::types::*;
use tally_x402::webbotauth::signature_base;

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 3] = [
    ("x402_json", tally_x402::fuzzing::x402_json),
    ("signature_input", tally_x402::fuzzing::signature_input),
    ("jwks", tally_x402::fuzzing::jwks),
];

fn fuzz_dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz").join(kind).join(target)
}

/// The files of one input directory, sorted; none if the directory does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir(kind, target);
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

/// Runs one target's checks on every file; fails naming each input that panicked.
fn replay(target: &str, files: &[PathBuf]) {
    let check = TARGETS.iter().find(|(name, _)| *name == target).expect("known target").1;
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

fn replay_regressions(target: &str) {
    replay(target, &inputs("regressions", target));
}

fn replay_corpus(target: &str) {
    let files = inputs("corpus", target);
    let seeds = seeds().into_iter().filter(|(t, _, _)| *t == target).count();
    assert!(files.len() >= seeds, "the {target} seed corpus is missing: {}", fuzz_dir("corpus", target).display());
    replay(target, &files);
}

// ---- seeds ------------------------------------------------------------------------------------

const AUTHORITY: &str = "publisher.example";
const AGENT: &str = "\"https://crawler.example\"";
const PAYMENT_ID: &str = "order-2026-11-22_0001";

/// The RFC 9421 Appendix B.1.4 test key (private key published in the RFC), which the fuzz
/// targets' directory holds under its thumbprint.
fn rfc9421_key() -> SigningKey {
    let secret = URL_SAFE_NO_PAD.decode("n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU").unwrap();
    SigningKey::from_bytes(&secret.try_into().unwrap())
}

fn requirements() -> PaymentRequirements {
    PaymentRequirements {
        scheme: SCHEME_BATCH_SETTLEMENT.into(),
        network: "tally:test".into(),
        amount: "1500".into(),
        asset: "USD".into(),
        pay_to: "site.example".into(),
        max_timeout_seconds: Some(60),
        extra: None,
    }
}

/// A payment as the crawler builds it: an IOU signed by RFC 8032 TEST 2's key, under a payment id.
fn payment_payload() -> PaymentPayload {
    let key = SigningKey::from_bytes(
        &hex::decode("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb").unwrap().try_into().unwrap(),
    );
    let iou = Iou {
        network: "tally:test".into(),
        payer_key: key.verifying_key().to_bytes(),
        payee: "site.example".into(),
        asset: "USD".into(),
        amount: 1500,
        nonce: nonce_for_payment_id(PAYMENT_ID),
        issued_at_s: FUZZ_NOW_S,
        expires_at_s: FUZZ_NOW_S + 120,
        resource: "http://site.example/a".into(),
    };
    let signature = key.sign(&iou.signing_bytes()).to_bytes();
    let commitment = TallyIouPayload::from_signed(&SignedIou { iou, signature });
    PaymentPayload {
        x402_version: X402_VERSION,
        resource: Some(ResourceInfo { url: "http://site.example/a".into(), description: None, mime_type: None }),
        accepted: requirements(),
        payload: serde_json::to_value(commitment).unwrap(),
        extensions: Some(json!({ EXTENSION_PAYMENT_IDENTIFIER: { "info": { "id": PAYMENT_ID } } })),
    }
}

fn x402_json_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let payment = payment_payload();
    let request = FacilitatorRequest {
        x402_version: X402_VERSION,
        payment_payload: payment.clone(),
        payment_requirements: requirements(),
    };
    let required = PaymentRequired {
        x402_version: X402_VERSION,
        error: Some("insufficient_funds".into()),
        resource: ResourceInfo {
            url: "http://site.example/a".into(),
            description: Some("an article".into()),
            mime_type: None,
        },
        accepts: vec![requirements()],
        extensions: Some(json!({
            "http-message-signatures": { "info": { "signatureSchemes": ["ed25519"], "tags": ["web-bot-auth"] } },
            EXTENSION_PAYMENT_IDENTIFIER: { "required": false },
        })),
    };
    let response = PaymentResponse {
        success: true,
        transaction: format!("42:{}", "ab".repeat(32)),
        network: "tally:test".into(),
        payer: Some(hex::encode(payment_payload_payer(&payment))),
        amount: "1500".into(),
        asset: "USD".into(),
        extra: PaymentResponseExtra { timestamp: FUZZ_NOW_S },
    };
    vec![
        ("facilitator-request", serde_json::to_vec(&request).unwrap()),
        ("payment-payload", serde_json::to_vec(&payment).unwrap()),
        ("commitment-tally-iou-v1", serde_json::to_vec(&payment.payload).unwrap()),
        ("header-payment-signature", encode_header_json(&payment).into_bytes()),
        ("header-payment-required", encode_header_json(&required).into_bytes()),
        ("header-payment-response", encode_header_json(&response).into_bytes()),
    ]
}

fn payment_payload_payer(payment: &PaymentPayload) -> [u8; 32] {
    let commitment: TallyIouPayload = serde_json::from_value(payment.payload.clone()).unwrap();
    commitment.to_signed().unwrap().iou.payer_key
}

/// A short `PAYMENT-SIGNATURE` value for the signature seeds (the content is not what they test).
fn short_payment() -> String {
    STANDARD.encode(br#"{"x402Version":2,"payload":{"amount":"5","asset":"USD"}}"#)
}

fn signature_input_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let payment = short_payment();
    let web_bot_auth = |agent: &str, input: &str, signature: &str| {
        format!("0{AUTHORITY}\n{agent}\n{input}\n{signature}\n{payment}").into_bytes()
    };
    let plain = fuzz_sign(AUTHORITY, AGENT, &payment, FUZZ_NOW_S, FUZZ_NOW_S + 60, None).unwrap();
    let nonce = fuzz_sign(AUTHORITY, AGENT, &payment, FUZZ_NOW_S - 10, FUZZ_NOW_S + 50, Some("n-1")).unwrap();

    // Newer drafts: `Signature-Agent: sig1="https://..."`, covered as `"signature-agent";key="sig1"`.
    let dictionary_agent = "sig1=\"https://crawler.example\"";
    let params = format!(
        r#"("@authority" "signature-agent";key="sig1" "payment-signature");created={FUZZ_NOW_S};expires={};keyid="{}";tag="web-bot-auth""#,
        FUZZ_NOW_S + 60,
        fuzz_keyid()
    );
    let base = format!(
        "\"@authority\": {AUTHORITY}\n\"signature-agent\";key=\"sig1\": \"https://crawler.example\"\n\"payment-signature\": {payment}\n\"@signature-params\": {params}"
    );
    let dictionary_signature = format!("sig1=:{}:", STANDARD.encode(rfc9421_key().sign(base.as_bytes()).to_bytes()));

    // A small-order key in the directory: must be refused whatever the signature.
    let weak_params = format!(
        r#"("@authority" "signature-agent" "payment-signature");created={FUZZ_NOW_S};expires={};keyid="{FUZZ_WEAK_KEYID}";tag="web-bot-auth""#,
        FUZZ_NOW_S + 60
    );
    let weak_base = signature_base(
        &[("@authority", AUTHORITY), ("signature-agent", AGENT), ("payment-signature", &payment)],
        &weak_params,
    )
    .unwrap();
    let weak_signature = format!("sig1=:{}:", STANDARD.encode(rfc9421_key().sign(weak_base.as_bytes()).to_bytes()));

    // RFC 9421 B.2.6, verified without the Web Bot Auth rules.
    let rfc_b26 = "1sig-b26\n\
        sig-b26=(\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"\n\
        sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:\n\
        date: Tue, 20 Apr 2021 02:07:55 GMT\n@method: POST\n@path: /foo\n@authority: example.com\n\
        content-type: application/json\ncontent-length: 18";

    vec![
        ("web-bot-auth-signed", web_bot_auth(AGENT, &plain.signature_input, &plain.signature)),
        ("web-bot-auth-signed-with-nonce", web_bot_auth(AGENT, &nonce.signature_input, &nonce.signature)),
        (
            "web-bot-auth-two-labels",
            web_bot_auth(
                AGENT,
                &format!(r#"other=("@authority");created=1;tag="x", {}"#, plain.signature_input),
                &format!("other=:AAAA:, {}", plain.signature),
            ),
        ),
        (
            "web-bot-auth-dictionary-agent",
            web_bot_auth(dictionary_agent, &format!("sig1={params}"), &dictionary_signature),
        ),
        ("web-bot-auth-small-order-key", web_bot_auth(AGENT, &format!("sig1={weak_params}"), &weak_signature)),
        ("rfc9421-b26", rfc_b26.as_bytes().to_vec()),
        (
            "sign-then-verify",
            format!("2{AUTHORITY}\n{AGENT}\n{payment}\n{FUZZ_NOW_S}\n{}\nn-1", FUZZ_NOW_S + 60).into_bytes(),
        ),
    ]
}

fn jwks_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let fixture = include_bytes!("fixtures/rfc9421-test-key-ed25519.jwks.json").to_vec();
    let rfc8037 = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},{"kty":"OKP","crv":"X25519","x":"hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"},{"kty":"RSA","n":"0vx7","e":"AQAB"}]}"#;
    let served = jwks_for(&[rfc9421_key().verifying_key().to_bytes(), [9u8; 32]]);
    vec![
        ("rfc9421-test-key-directory", fixture),
        ("rfc8037-keys-of-several-types", rfc8037.to_vec()),
        ("served-directory", served.into_bytes()),
    ]
}

/// Every seed: (target, file name, bytes).
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut all = Vec::new();
    for (target, seeds) in
        [("x402_json", x402_json_seeds()), ("signature_input", signature_input_seeds()), ("jwks", jwks_seeds())]
    {
        all.extend(seeds.into_iter().map(|(name, data)| (target, name, data)));
    }
    all
}

// ---- tests ------------------------------------------------------------------------------------

#[test]
fn signature_seeds_are_real_signed_requests() {
    use tally_x402::webbotauth::{SignedRequestParts, VerifyPolicy, verify_web_bot_auth};
    let policy = VerifyPolicy { now_s: FUZZ_NOW_S, skew_max_s: 30, validity_max_s: 300 };
    let public = rfc9421_key().verifying_key().to_bytes();
    for (target, name, data) in seeds() {
        if target != "signature_input" || !name.starts_with("web-bot-auth") {
            continue;
        }
        let text = String::from_utf8(data[1..].to_vec()).unwrap();
        let fields: Vec<&str> = text.split('\n').collect();
        let parts = SignedRequestParts {
            authority: fields[0].into(),
            signature_agent: Some(fields[1].into()),
            signature_input: fields[2].into(),
            signature: fields[3].into(),
            payment_signature: fields[4].into(),
        };
        let result = verify_web_bot_auth(&parts, &policy, |keyid| {
            (keyid == fuzz_keyid()).then_some(public).or((keyid == FUZZ_WEAK_KEYID).then_some([0; 32]))
        });
        assert_eq!(result.is_ok(), name != "web-bot-auth-small-order-key", "{name}: {result:?}");
    }
}

#[test]
fn seed_corpus_is_current() {
    for (target, name, data) in seeds() {
        let path = fuzz_dir("corpus", target).join(name);
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(committed == data, "{} differs from the generated seed", path.display());
    }
}

#[test]
#[ignore = "writes the seed corpora into fuzz/corpus; run by hand after a deliberate change"]
fn write_x402_seed_corpora() {
    for (target, name, data) in seeds() {
        let dir = fuzz_dir("corpus", target);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        std::fs::write(dir.join(name), data).expect("write seed");
    }
}

#[test]
fn x402_json_corpus_passes() {
    replay_corpus("x402_json");
}

#[test]
fn x402_json_regressions_pass() {
    replay_regressions("x402_json");
}

#[test]
fn signature_input_corpus_passes() {
    replay_corpus("signature_input");
}

#[test]
fn signature_input_regressions_pass() {
    replay_regressions("signature_input");
}

#[test]
fn jwks_corpus_passes() {
    replay_corpus("jwks");
}

#[test]
fn jwks_regressions_pass() {
    replay_regressions("jwks");
}

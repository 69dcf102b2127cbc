//! Property checks for hostile input at the x402 front door, shared by the cargo-fuzz targets in
//! `fuzz/` and by the regression tests that replay their corpora under `cargo test`.
//!
//! Each function takes arbitrary bytes, exactly as libFuzzer hands them over, and feeds them to the
//! real parsers: the facilitator's JSON bodies, the base64 JSON headers the paywall and the crawler
//! decode, Tally's IOU commitment inside a payment payload, RFC 9421 `Signature-Input` /
//! `Signature` with Web Bot Auth, and JWKS key directories. Bad input must come back as a typed
//! error; a panic here means the code under test panicked or a property asserted below is broken.
//! The checks live in the crate so that a crashing input replays on stable Rust, in the ordinary
//! test suite, through the very same code.
//!
//! Not part of Tally's API: hidden from the documentation and free to change.

use std::fmt::Debug;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use ed25519_dalek::SigningKey;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tally_core::Iou;
use tally_core::verify::{VerifyItem, verify_one};

use crate::client::{PAYMENT_REQUIRED_HEADER_BYTES_MAX, PAYMENT_RESPONSE_HEADER_BYTES_MAX};
use crate::commitment::{FORMAT_TALLY_IOU, TallyIouPayload, nonce_for_payment_id, payment_id_is_valid};
use crate::jwks::{JWKS_BYTES_MAX, JWKS_KEYS_MAX, JwksError, jwks_for, parse_jwks, thumbprint};
use crate::middleware::{
    HeaderDecodeError, PAYMENT_SIGNATURE_HEADER_BYTES_MAX, PaymentResponse, decode_header_json, encode_header_json,
};
use crate::types::{EXTENSION_PAYMENT_IDENTIFIER, FacilitatorRequest, PaymentPayload, PaymentRequired, Reason};
use crate::webbotauth::{
    COVERED_COMPONENTS_MAX, SignedRequestParts, VerifyPolicy, WebBotAuthError, check_web_bot_auth, sign_web_bot_auth,
    signature_base, verify_http_message_signature, verify_web_bot_auth,
};

// ---- x402 JSON bodies and headers -------------------------------------------------------------

/// The x402 JSON a facilitator, a paywall and a crawler parse: the input as a `POST /verify` /
/// `/settle` body ([`FacilitatorRequest`]), as a bare [`PaymentPayload`], as Tally's
/// `tally-iou-v1` commitment; and as the three headers (`PAYMENT-SIGNATURE`, `PAYMENT-REQUIRED`,
/// `PAYMENT-RESPONSE`), both as received and wrapped in base64 (so JSON mutations reach the header
/// decoders' JSON layer too).
///
/// Properties: what decodes re-encodes to an equal value (values holding JSON floats are skipped:
/// serde_json's default float parsing is best-effort); a commitment that decodes has a valid IOU
/// whose canonical encodings (JSON and signing bytes) round-trip, and one that does not is
/// `invalid_payload`; oversized headers are refused as such; and a `PAYMENT-SIGNATURE` the paywall
/// decodes is also one Web Bot Auth accepts as base64 (the two must not disagree on one header).
pub fn x402_json(data: &[u8]) {
    if let Ok(request) = serde_json::from_slice::<FacilitatorRequest>(data) {
        assert_json_round_trip(&request);
        payment_payload(&request.payment_payload);
    }
    if let Ok(payload) = serde_json::from_slice::<PaymentPayload>(data) {
        assert_json_round_trip(&payload);
        payment_payload(&payload);
    }
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        commitment(&value);
    }
    headers(data);
    headers(STANDARD.encode(data).as_bytes());
    // The paywall also accepts the URL-safe alphabet.
    headers(URL_SAFE.encode(data).as_bytes());
}

fn payment_payload(payload: &PaymentPayload) {
    commitment(&payload.payload);
    // The payment identifier, read the way the facilitator reads it.
    let id = payload
        .extensions
        .as_ref()
        .and_then(|e| e.get(EXTENSION_PAYMENT_IDENTIFIER))
        .and_then(|e| e.get("info"))
        .and_then(|i| i.get("id"))
        .and_then(Value::as_str);
    if let Some(id) = id
        && payment_id_is_valid(id)
    {
        assert!(id.is_ascii(), "a valid payment identifier is ASCII");
        assert_eq!(nonce_for_payment_id(id), nonce_for_payment_id(id));
    }
}

/// Tally's commitment inside `paymentPayload.payload`.
fn commitment(value: &Value) {
    let Ok(payload) = serde_json::from_value::<TallyIouPayload>(value.clone()) else {
        return;
    };
    let signed = match payload.to_signed() {
        Ok(signed) => signed,
        Err(reason) => {
            assert_eq!(reason, Reason::InvalidPayload, "a malformed commitment is invalid_payload");
            return;
        }
    };
    assert_eq!(payload.format, FORMAT_TALLY_IOU);
    assert_eq!(signed.iou.check_shape(), Ok(()), "a decoded commitment holds a well-shaped IOU");
    let canonical = TallyIouPayload::from_signed(&signed);
    assert_eq!(canonical.to_signed().as_ref(), Ok(&signed), "canonical commitment round trip");
    let json = serde_json::to_vec(&canonical).expect("a commitment serializes");
    let back: TallyIouPayload = serde_json::from_slice(&json).expect("a serialized commitment parses");
    assert_eq!(back, canonical, "commitment JSON round trip");
    let bytes = signed.iou.signing_bytes();
    assert_eq!(Iou::from_signing_bytes(&bytes).as_ref(), Ok(&signed.iou), "signing bytes round trip");
}

fn headers(value: &[u8]) {
    if let Some(payment) = header::<PaymentPayload>(value, PAYMENT_SIGNATURE_HEADER_BYTES_MAX) {
        payment_payload(&payment);
        payment_signature_agrees_with_web_bot_auth(value);
    }
    header::<PaymentRequired>(value, PAYMENT_REQUIRED_HEADER_BYTES_MAX);
    header::<PaymentResponse>(value, PAYMENT_RESPONSE_HEADER_BYTES_MAX);
}

/// Decodes one header with the paywall's / crawler's decoder and checks what comes out.
fn header<T>(value: &[u8], max: usize) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let decoded = decode_header_json::<T>(value, max);
    if value.len() > max {
        assert!(matches!(decoded, Err(HeaderDecodeError::TooLarge { .. })), "an oversized header is refused as such");
        return None;
    }
    let decoded = decoded.ok()?;
    if !has_float(&serde_json::to_value(&decoded).expect("x402 objects serialize")) {
        let again = decode_header_json::<T>(encode_header_json(&decoded).as_bytes(), usize::MAX);
        assert_eq!(again.as_ref(), Ok(&decoded), "header encode then decode");
    }
    Some(decoded)
}

/// A `PAYMENT-SIGNATURE` that the paywall decodes, and that HTTP can carry (a single line of
/// visible ASCII), must pass Web Bot Auth's own check of that header: otherwise a crawler's
/// payment is accepted by one layer and refused by the other.
fn payment_signature_agrees_with_web_bot_auth(value: &[u8]) {
    if !value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        return;
    }
    let parts = SignedRequestParts {
        authority: "publisher.example".into(),
        signature_agent: Some("\"https://crawler.example\"".into()),
        signature_input: "sig1=()".into(),
        signature: "sig1=:AAAA:".into(),
        payment_signature: String::from_utf8(value.to_vec()).expect("checked ASCII"),
    };
    let result = verify_web_bot_auth(&parts, &policy(), |_| None);
    assert!(
        !matches!(
            result,
            Err(WebBotAuthError::InvalidPaymentSignature(_))
                | Err(WebBotAuthError::HeaderTooLarge { header: "payment-signature", .. })
        ),
        "the paywall decodes this PAYMENT-SIGNATURE but Web Bot Auth refuses it: {result:?}"
    );
}

fn assert_json_round_trip<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let json = serde_json::to_value(value).expect("x402 objects serialize");
    if has_float(&json) {
        return;
    }
    let text = serde_json::to_vec(value).expect("x402 objects serialize");
    let back: T = serde_json::from_slice(&text).expect("what was serialized parses back");
    assert_eq!(&back, value, "JSON round trip");
}

fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(members) => members.values().any(has_float),
        _ => false,
    }
}

// ---- RFC 9421 signatures and Web Bot Auth -----------------------------------------------------

/// The clock every signature check here runs at.
pub const FUZZ_NOW_S: u64 = 1_750_000_000;
/// `keyid` under which [`signature_input`]'s directory holds a small-order key.
pub const FUZZ_WEAK_KEYID: &str = "weak";
/// RFC 9421 Appendix B.1.4 `test-key-ed25519` (the RFC publishes the private key): its signatures
/// over the RFC's own examples verify, so seeds can be real signed requests.
const RFC9421_TEST_KEY_SECRET: [u8; 32] = [
    0x9f, 0x83, 0x62, 0xf8, 0x7a, 0x48, 0x4a, 0x95, 0x4e, 0x6e, 0x74, 0x0c, 0x5b, 0x4c, 0x0e, 0x84, 0x22, 0x91, 0x39,
    0xa2, 0x0a, 0xa8, 0xab, 0x56, 0xff, 0x66, 0x58, 0x6f, 0x6a, 0x7d, 0x29, 0xc5,
];
/// The Ed25519 identity point: a small-order key, under which anything verifies.
const SMALL_ORDER_KEY: [u8; 32] = {
    let mut key = [0u8; 32];
    key[0] = 1;
    key
};

struct FixedKeys {
    signing: SigningKey,
    public: [u8; 32],
    keyid: String,
    other_public: [u8; 32],
}

fn keys() -> &'static FixedKeys {
    static KEYS: OnceLock<FixedKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let signing = SigningKey::from_bytes(&RFC9421_TEST_KEY_SECRET);
        let public = signing.verifying_key().to_bytes();
        let other_public = SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes();
        FixedKeys { keyid: thumbprint(&public), signing, public, other_public }
    })
}

/// The JWK thumbprint (Web Bot Auth `keyid`) of the key [`signature_input`] signs and looks up with.
pub fn fuzz_keyid() -> &'static str {
    &keys().keyid
}

/// Signs a request with the fixed key (for seeds): see [`sign_web_bot_auth`].
pub fn fuzz_sign(
    authority: &str,
    signature_agent: &str,
    payment_signature: &str,
    created_s: u64,
    expires_s: u64,
    nonce: Option<&str>,
) -> Result<crate::webbotauth::SignatureHeaders, WebBotAuthError> {
    sign_web_bot_auth(&keys().signing, authority, signature_agent, payment_signature, created_s, expires_s, nonce)
}

fn policy() -> VerifyPolicy {
    VerifyPolicy { now_s: FUZZ_NOW_S, skew_max_s: 30, validity_max_s: 300 }
}

/// The directory the verifier looks keys up in: the fixed key under its thumbprint, and a
/// small-order key under [`FUZZ_WEAK_KEYID`].
fn lookup(keyid: &str) -> Option<[u8; 32]> {
    if keyid == keys().keyid {
        Some(keys().public)
    } else if keyid == FUZZ_WEAK_KEYID {
        Some(SMALL_ORDER_KEY)
    } else {
        None
    }
}

/// Most `\n`-separated fields read from one input.
const FIELDS_MAX: usize = 3 + COVERED_COMPONENTS_MAX + 1;

/// RFC 9421 `Signature-Input` / `Signature` parsing and verification, with and without the Web Bot
/// Auth rules. The first byte picks a mode (its value modulo 3); the rest is UTF-8 (lossily), split
/// into fields at `\n` (header values never contain one):
///
/// - `0`, Web Bot Auth: `authority`, `signature-agent` (empty: absent), `signature-input`,
///   `signature`, `payment-signature`, verified by [`verify_web_bot_auth`] at [`FUZZ_NOW_S`] against
///   the fixed directory. If it verifies: the key and window are the expected ones, the plain RFC
///   9421 layer agrees, and another authority or another key does not verify.
/// - `1`, RFC 9421 alone: `label`, `signature-input`, `signature`, then components as
///   `name: value`, verified by [`verify_http_message_signature`] with the fixed key (another key
///   must then fail); the signature base builder runs on the same components too.
/// - `2`, sign then verify: `authority`, `signature-agent`, `payment-signature`, `created`,
///   `expires`, and an optional `nonce`. Whatever [`sign_web_bot_auth`] signs must verify (or be
///   refused only for its validity window, when that is outside the policy).
pub fn signature_input(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let fields: Vec<&str> = text.split('\n').take(FIELDS_MAX).collect();
    match mode % 3 {
        0 => web_bot_auth(&fields),
        1 => message_signature(&fields),
        _ => sign_then_verify(&fields),
    }
}

fn field<'a>(fields: &[&'a str], index: usize) -> &'a str {
    fields.get(index).copied().unwrap_or("")
}

fn web_bot_auth(fields: &[&str]) {
    let agent = field(fields, 1);
    let parts = SignedRequestParts {
        authority: field(fields, 0).to_owned(),
        signature_agent: (!agent.is_empty()).then(|| agent.to_owned()),
        signature_input: field(fields, 2).to_owned(),
        signature: field(fields, 3).to_owned(),
        payment_signature: field(fields, 4).to_owned(),
    };
    let result = verify_web_bot_auth(&parts, &policy(), lookup);
    assert_eq!(
        result.is_ok(),
        tally_verdict(&parts),
        "web-bot-auth's verdict {result:?} differs from the facilitator's (check_web_bot_auth, then Tally's own \
         Ed25519 check over the signature base Tally rebuilds)"
    );
    let verified = match result {
        Ok(verified) => verified,
        Err(error) => {
            let _ = error.reason_code();
            return;
        }
    };
    let keys = keys();
    assert_eq!(verified.public_key, keys.public, "verified under the directory's key");
    assert_eq!(verified.keyid, keys.keyid);
    assert_eq!(verified.signature_agent, parts.signature_agent);
    let policy = policy();
    assert!(verified.created_s < verified.expires_s, "window {verified:?}");
    assert!(verified.expires_s - verified.created_s <= policy.validity_max_s, "window {verified:?}");
    assert!(verified.created_s <= policy.now_s + policy.skew_max_s, "not yet valid: {verified:?}");
    assert!(verified.expires_s + policy.skew_max_s >= policy.now_s, "expired: {verified:?}");

    // The plain RFC 9421 layer agrees on the same label and component values.
    let mut components =
        vec![("@authority", parts.authority.as_str()), ("payment-signature", parts.payment_signature.as_str())];
    if let Some(agent) = &parts.signature_agent {
        components.push(("signature-agent", agent));
    }
    let plain = verify_http_message_signature(
        &components,
        &parts.signature_input,
        &parts.signature,
        &verified.label,
        &keys.public,
    );
    assert_eq!(plain, Ok(()), "Web Bot Auth verified {verified:?} but RFC 9421 alone does not");

    // `@authority` is covered, so the signature does not travel to another host; nor does it
    // verify under another key.
    let moved = SignedRequestParts { authority: format!("{}x", parts.authority), ..parts.clone() };
    assert!(verify_web_bot_auth(&moved, &policy, lookup).is_err(), "signature verified for another authority");
    let other = verify_web_bot_auth(&parts, &policy, |_| Some(keys.other_public));
    assert!(other.is_err(), "signature verified under another key");
}

/// The facilitator's path: every Web Bot Auth rule ([`check_web_bot_auth`]), then Tally's own
/// cofactored Ed25519 check over the signature base Tally rebuilds (what the pipeline batch-verifies
/// and `tally ledger verify` re-checks). Must agree with web-bot-auth's verdict.
fn tally_verdict(parts: &SignedRequestParts) -> bool {
    let Ok(checked) = check_web_bot_auth(parts, &policy(), lookup) else {
        return false;
    };
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&checked.verified.public_key) else {
        return false;
    };
    verify_one(&VerifyItem { key: &key, message: checked.signature_base.as_bytes(), signature: &checked.signature })
}

fn message_signature(fields: &[&str]) {
    let label = field(fields, 0);
    let signature_input = field(fields, 1);
    let signature = field(fields, 2);
    let components: Vec<(&str, &str)> =
        fields.iter().skip(3).map(|line| line.split_once(": ").unwrap_or((line, ""))).collect();
    let params = signature_input.split_once('=').map(|(_, params)| params).unwrap_or(signature_input);
    let _ = signature_base(&components, params);
    let keys = keys();
    if verify_http_message_signature(&components, signature_input, signature, label, &keys.public).is_ok() {
        let other = verify_http_message_signature(&components, signature_input, signature, label, &keys.other_public);
        assert!(other.is_err(), "signature verified under another key");
    }
}

fn sign_then_verify(fields: &[&str]) {
    let authority = field(fields, 0);
    let agent = field(fields, 1);
    let payment_signature = field(fields, 2);
    let created_s = field(fields, 3).parse::<u64>().unwrap_or(FUZZ_NOW_S);
    let expires_s = field(fields, 4).parse::<u64>().unwrap_or(created_s.saturating_add(60));
    let nonce = fields.get(5).copied();
    let Ok(headers) = fuzz_sign(authority, agent, payment_signature, created_s, expires_s, nonce) else {
        return;
    };
    let parts = SignedRequestParts {
        authority: authority.to_owned(),
        signature_agent: Some(agent.to_owned()),
        signature_input: headers.signature_input,
        signature: headers.signature,
        payment_signature: payment_signature.to_owned(),
    };
    let policy = policy();
    let window_ok = created_s < expires_s
        && expires_s - created_s <= policy.validity_max_s
        && created_s <= policy.now_s + policy.skew_max_s
        && expires_s.saturating_add(policy.skew_max_s) >= policy.now_s;
    let result = verify_web_bot_auth(&parts, &policy, lookup);
    assert_eq!(result.is_ok(), tally_verdict(&parts), "web-bot-auth says {result:?}, the facilitator's check differs");
    match result {
        Ok(verified) => {
            assert!(window_ok, "verified outside the policy's window: {verified:?}");
            assert_eq!((verified.created_s, verified.expires_s), (created_s, expires_s));
            assert_eq!(verified.keyid, keys().keyid);
        }
        Err(error) => {
            let window_error = matches!(
                error,
                WebBotAuthError::BadValidityWindow { .. }
                    | WebBotAuthError::NotYetValid { .. }
                    | WebBotAuthError::Expired { .. }
            );
            assert!(!window_ok && window_error, "signed {parts:?}, but verification refuses it: {error:?}");
        }
    }
}

// ---- JWKS key directories ---------------------------------------------------------------------

/// Key directories ([`parse_jwks`]). Properties: the size bound is the first check; what parses
/// holds at most [`JWKS_KEYS_MAX`] distinct keys, each named by its own thumbprint; and the
/// directory Tally serves for those keys ([`jwks_for`]) parses back to the same list.
pub fn jwks(data: &[u8]) {
    let parsed = parse_jwks(data);
    if data.len() > JWKS_BYTES_MAX {
        assert!(matches!(parsed, Err(JwksError::TooLarge { .. })), "an oversized directory is refused as such");
        return;
    }
    let keys = match parsed {
        Ok(keys) => keys,
        Err(error) => {
            assert_eq!(error.reason_code(), "signature_agent_unknown");
            return;
        }
    };
    assert!(keys.len() <= JWKS_KEYS_MAX, "{} keys", keys.len());
    for (index, key) in keys.iter().enumerate() {
        assert_eq!(key.thumbprint, thumbprint(&key.public_key), "key {index} is named by its thumbprint");
        assert_eq!(key.thumbprint.len(), 43, "a thumbprint is 43 base64url characters");
        assert!(keys[..index].iter().all(|k| k.public_key != key.public_key), "key {index} is a duplicate");
    }
    let public_keys: Vec<[u8; 32]> = keys.iter().map(|k| k.public_key).collect();
    let served = jwks_for(&public_keys);
    assert_eq!(parse_jwks(served.as_bytes()).as_ref(), Ok(&keys), "served directory parses back");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_request_seed_verifies_and_reaches_every_check() {
        let payment = STANDARD.encode(br#"{"x402Version":2}"#);
        let agent = "\"https://crawler.example\"";
        let headers = fuzz_sign("publisher.example", agent, &payment, FUZZ_NOW_S, FUZZ_NOW_S + 60, None).unwrap();
        let parts = SignedRequestParts {
            authority: "publisher.example".into(),
            signature_agent: Some(agent.into()),
            signature_input: headers.signature_input.clone(),
            signature: headers.signature.clone(),
            payment_signature: payment.clone(),
        };
        verify_web_bot_auth(&parts, &policy(), lookup).unwrap();
        let input =
            format!("0publisher.example\n{agent}\n{}\n{}\n{payment}", headers.signature_input, headers.signature);
        signature_input(input.as_bytes());
        signature_input(format!("2publisher.example\n{agent}\n{payment}\n{FUZZ_NOW_S}").as_bytes());
    }

    #[test]
    fn json_and_jwks_accept_garbage_without_panic() {
        for input in [&b""[..], b"{}", b"null", b"[1,2", b"e30=", b"{\"keys\":[]}"] {
            x402_json(input);
            jwks(input);
            signature_input(input);
        }
    }
}

//! Web Bot Auth (HTTP Message Signatures, RFC 9421) for the Cloudflare x402 binding.
//!
//! A crawler signs each paid request with Ed25519; the covered components MUST include `@authority`,
//! `signature-agent` and `payment-signature`, so the amount in `PAYMENT-SIGNATURE` is bound to the
//! crawler's key. The resource server forwards the relevant header values ([`SignedRequestParts`])
//! and Tally checks them with [`verify_web_bot_auth`].
//!
//! What comes from Cloudflare's `web-bot-auth` crate (built on `sfv`): parsing `Signature-Input` and
//! `Signature` (structured-field dictionaries), the covered-component model, building the signature
//! base from the component values, and the Ed25519 check over it (`MessageVerifier`). What is glue
//! here: the Web Bot Auth rules (tag, covered components, freshness, key lookup), bounds on every
//! input, the mapping of failures to x402 reason codes, and the signer.
//!
//! Why the signer is hand-written: `web_bot_auth::message_signatures::MessageSigner` stamps `created`
//! and `expires` from the wall clock and always emits a nonce, while a Tally signer must be
//! deterministic for a given `created_s`/`expires_s` (tests, replays of recorded requests); and the
//! crate's base serializer (`SignatureBase::into_ascii`) is private. [`signature_base`] therefore
//! mirrors it (same `sfv` serialization of the component identifiers and of `@signature-params`);
//! sign → verify round trips prove the two agree, and the RFC 9421 B.2.6 vector checks both.

use ed25519_dalek::Signer as _;
use sfv::SerializeValue as _;
use web_bot_auth::ImplementationError;
use web_bot_auth::components::{CoveredComponent, DerivedComponent, HTTPField, HTTPFieldParameters};
use web_bot_auth::keyring::{Algorithm, KeyRing};
use web_bot_auth::message_signatures::{MessageVerifier, SignedMessage};

use crate::jwks::thumbprint;

/// Largest `@authority` value (a host name of at most 253 bytes, a port, and some slack).
pub const AUTHORITY_BYTES_MAX: usize = 270;
/// Largest `Signature-Agent` value (a URL, or a small inline `data:` directory).
pub const SIGNATURE_AGENT_BYTES_MAX: usize = 4096;
/// Largest `Signature-Input` value.
pub const SIGNATURE_INPUT_BYTES_MAX: usize = 4096;
/// Largest `Signature` value (one Ed25519 signature is 88 base64 bytes; a few labels fit).
pub const SIGNATURE_BYTES_MAX: usize = 1024;
/// Largest `PAYMENT-SIGNATURE` value (a base64 x402 payment payload).
pub const PAYMENT_SIGNATURE_BYTES_MAX: usize = 16 * 1024;
/// Largest value of any other covered component given to [`verify_http_message_signature`].
pub const COMPONENT_VALUE_BYTES_MAX: usize = 8 * 1024;
/// Most labels accepted in one `Signature-Input`.
pub const SIGNATURE_LABELS_MAX: usize = 8;
/// Most covered components accepted in one signature.
pub const COVERED_COMPONENTS_MAX: usize = 16;
/// Longest `keyid` (a JWK thumbprint is 43 bytes).
pub const KEYID_BYTES_MAX: usize = 128;
/// Longest `nonce`.
pub const NONCE_BYTES_MAX: usize = 256;
/// The `tag` Web Bot Auth requires.
pub const WEB_BOT_AUTH_TAG: &str = "web-bot-auth";
/// The label [`sign_web_bot_auth`] uses.
pub const SIGNATURE_LABEL: &str = "sig1";

/// The header values a resource server forwards for one signed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRequestParts {
    /// The request's `@authority` (host, lowercase, with a non-default port).
    pub authority: String,
    /// The `Signature-Agent` header, if any (it must be present and covered to verify).
    pub signature_agent: Option<String>,
    /// The `Signature-Input` header.
    pub signature_input: String,
    /// The `Signature` header.
    pub signature: String,
    /// The `PAYMENT-SIGNATURE` header value.
    pub payment_signature: String,
}

/// Freshness policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// Now, in Unix seconds.
    pub now_s: u64,
    /// Clock skew tolerated on `created` and `expires` (e.g. 30).
    pub skew_max_s: u64,
    /// Largest `expires - created` accepted (e.g. 300).
    pub validity_max_s: u64,
}

/// A signature that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedSignature {
    /// The `keyid` (the key's JWK thumbprint).
    pub keyid: String,
    /// The key it resolved to.
    pub public_key: [u8; 32],
    /// `created`, Unix seconds.
    pub created_s: u64,
    /// `expires`, Unix seconds.
    pub expires_s: u64,
    /// The `Signature-Agent` header as received.
    pub signature_agent: Option<String>,
    /// The label of the verified signature.
    pub label: String,
}

/// `Signature-Input` and `Signature` header values produced by [`sign_web_bot_auth`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureHeaders {
    pub signature_input: String,
    pub signature: String,
}

/// Why a Web Bot Auth signature was refused. [`WebBotAuthError::reason_code`] gives the x402 /
/// Cloudflare error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebBotAuthError {
    #[error("{header} is {len} bytes, more than {max}")]
    HeaderTooLarge { header: &'static str, len: usize, max: usize },
    #[error("malformed {header}: {reason}")]
    Malformed { header: &'static str, reason: String },
    #[error("malformed PAYMENT-SIGNATURE: {0}")]
    InvalidPaymentSignature(&'static str),
    #[error("no signature tagged \"web-bot-auth\" in Signature-Input")]
    NotWebBotAuth,
    #[error("covered components do not include {0}")]
    MissingCoveredComponent(&'static str),
    #[error("covered component {0} has no value in the request")]
    MissingComponentValue(String),
    #[error("signature parameter `{0}` is missing or has the wrong type")]
    MissingParameter(&'static str),
    #[error("unsupported signature algorithm {0:?} (only ed25519)")]
    UnsupportedAlgorithm(String),
    #[error("signature is not yet valid: created {created_s} is after now {now_s} plus skew")]
    NotYetValid { created_s: u64, now_s: u64 },
    #[error("signature expired: expires {expires_s} is before now {now_s} minus skew")]
    Expired { expires_s: u64, now_s: u64 },
    #[error("signature validity window {created_s}..{expires_s} is invalid or longer than {max_s} s")]
    BadValidityWindow { created_s: i64, expires_s: i64, max_s: u64 },
    #[error("signature agent key {0:?} is unknown")]
    UnknownKey(String),
    #[error("signature agent key {0:?} is not a usable Ed25519 key")]
    WeakKey(String),
    #[error("signature verification failed: {0}")]
    BadSignature(String),
}

impl WebBotAuthError {
    /// The x402 / Cloudflare reason code: `invalid_payload` (malformed headers),
    /// `invalid_payment_signature` (PAYMENT-SIGNATURE malformed, or a required component not
    /// covered or absent), `signature_agent_unknown` (keyid not in the agent's directory), or
    /// `invalid_signature` (everything else, including expired and not-yet-valid signatures).
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::HeaderTooLarge { header: "payment-signature", .. } | Self::InvalidPaymentSignature(_) => {
                "invalid_payment_signature"
            }
            Self::MissingCoveredComponent(_) | Self::MissingComponentValue(_) => "invalid_payment_signature",
            Self::HeaderTooLarge { .. } | Self::Malformed { .. } => "invalid_payload",
            Self::UnknownKey(_) => "signature_agent_unknown",
            Self::NotWebBotAuth
            | Self::MissingParameter(_)
            | Self::UnsupportedAlgorithm(_)
            | Self::NotYetValid { .. }
            | Self::Expired { .. }
            | Self::BadValidityWindow { .. }
            | Self::WeakKey(_)
            | Self::BadSignature(_) => "invalid_signature",
        }
    }
}

/// Check a value's size and that it is a single-line HTTP field value (visible ASCII, SP, HTAB),
/// which is also what keeps a value from injecting lines into the signature base.
fn check_value(header: &'static str, value: &str, max: usize) -> Result<(), WebBotAuthError> {
    if value.len() > max {
        return Err(WebBotAuthError::HeaderTooLarge { header, len: value.len(), max });
    }
    if !value.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        return Err(WebBotAuthError::Malformed { header, reason: "not a single-line visible-ASCII value".into() });
    }
    Ok(())
}

fn check_payment_signature(value: &str) -> Result<(), WebBotAuthError> {
    check_value("payment-signature", value, PAYMENT_SIGNATURE_BYTES_MAX).map_err(|e| {
        if e.reason_code() == "invalid_payload" {
            WebBotAuthError::InvalidPaymentSignature("not visible ASCII")
        } else {
            e
        }
    })?;
    if value.trim().is_empty() {
        return Err(WebBotAuthError::InvalidPaymentSignature("empty"));
    }
    // x402 carries the payment payload as base64 JSON; its content is the facilitator's business,
    // but a value that is not even base64 is refused here (by the decoder every part uses).
    tally_core::evidence::decode_header_base64(value.as_bytes())
        .ok_or(WebBotAuthError::InvalidPaymentSignature("not base64"))?;
    Ok(())
}

/// The request as `web-bot-auth` sees it: component values by identifier name.
struct Message<'a> {
    components: &'a [(&'a str, &'a str)],
    signature_input: &'a str,
    signature: &'a str,
}

impl SignedMessage for Message<'_> {
    fn lookup_component(&self, component: &CoveredComponent) -> Vec<String> {
        let (name, dictionary_key) = match component {
            CoveredComponent::HTTP(HTTPField { name, parameters }) => {
                let key = match parameters.0.as_slice() {
                    [] => None,
                    [HTTPFieldParameters::Key(key)] => Some(key.as_str()),
                    // `sf`, `bs`, `tr`, `req` are not used by Web Bot Auth; an absent value makes the
                    // crate report the component as not found.
                    _ => return vec![],
                };
                match (name.as_str(), key) {
                    ("signature-input", None) => return vec![self.signature_input.to_owned()],
                    ("signature", None) => return vec![self.signature.to_owned()],
                    _ => (name.as_str(), key),
                }
            }
            CoveredComponent::Derived(derived) => {
                let name = match derived {
                    DerivedComponent::Authority { req: false } => "@authority",
                    DerivedComponent::Method { req: false } => "@method",
                    DerivedComponent::Path { req: false } => "@path",
                    DerivedComponent::TargetUri { req: false } => "@target-uri",
                    DerivedComponent::Scheme { req: false } => "@scheme",
                    DerivedComponent::Query { req: false } => "@query",
                    DerivedComponent::RequestTarget { req: false } => "@request-target",
                    _ => return vec![],
                };
                (name, None)
            }
        };
        let Some(value) = self.components.iter().find(|(n, _)| *n == name).map(|(_, v)| v.trim_matches([' ', '\t']))
        else {
            return vec![];
        };
        match dictionary_key {
            None => vec![value.to_owned()],
            // RFC 9421 §2.1.2: the `key` parameter selects one member of a Dictionary field,
            // re-serialized (e.g. `"signature-agent";key="sig1"`).
            Some(key) => sfv::Parser::new(value)
                .parse_dictionary()
                .ok()
                .and_then(|dict| dict.get(key).cloned())
                .and_then(|entry| vec![entry].serialize_value())
                .into_iter()
                .collect(),
        }
    }
}

fn map_crate_error(e: ImplementationError) -> WebBotAuthError {
    match e {
        ImplementationError::LookupError(component) => {
            let item = match component {
                CoveredComponent::HTTP(field) => sfv::Item::try_from(field),
                CoveredComponent::Derived(derived) => sfv::Item::try_from(derived),
            };
            let name = item.map(|i| i.serialize_value()).unwrap_or_else(|_| "?".to_owned());
            WebBotAuthError::MissingComponentValue(name)
        }
        ImplementationError::ParsingError(reason) => {
            WebBotAuthError::Malformed { header: "signature-input/signature", reason }
        }
        ImplementationError::NonAsciiContentFound => {
            WebBotAuthError::Malformed { header: "signature base", reason: "non-ASCII content".into() }
        }
        other => WebBotAuthError::BadSignature(other.to_string()),
    }
}

/// Parse `Signature-Input`/`Signature` for `label` and build its signature base (web-bot-auth).
fn parse_label(message: &Message<'_>, label: &str) -> Result<MessageVerifier, WebBotAuthError> {
    check_value("signature-input", message.signature_input, SIGNATURE_INPUT_BYTES_MAX)?;
    check_value("signature", message.signature, SIGNATURE_BYTES_MAX)?;
    MessageVerifier::parse(message, |(l, _)| l.as_str() == label).map_err(map_crate_error)
}

/// Check the Ed25519 signature over the crate-built base with `public_key`.
fn verify_parsed(verifier: MessageVerifier, keyid: &str, public_key: &[u8; 32]) -> Result<(), WebBotAuthError> {
    // web-bot-auth verifies with ed25519-dalek 2's `verify`, which accepts small-order keys; refuse
    // those here (Tally's own ed25519-dalek), whatever the directory holds.
    match ed25519_dalek::VerifyingKey::from_bytes(public_key) {
        Ok(key) if !key.is_weak() => {}
        _ => return Err(WebBotAuthError::WeakKey(keyid.to_owned())),
    }
    let mut keyring = KeyRing::default();
    keyring.import_raw(keyid.to_owned(), Algorithm::Ed25519, public_key.to_vec());
    verifier.verify(&keyring, Some(keyid.to_owned())).map(|_timing| ()).map_err(|e| match e {
        ImplementationError::FailedToVerify(_) => WebBotAuthError::BadSignature("signature does not match".into()),
        other => map_crate_error(other),
    })
}

/// Verify one RFC 9421 signature (no Web Bot Auth rules, no freshness): the signature labelled
/// `label`, over `components` (identifier name such as `"@method"` or `"content-type"` → value),
/// with `public_key`. This is the layer [`verify_web_bot_auth`] builds on.
pub fn verify_http_message_signature(
    components: &[(&str, &str)],
    signature_input: &str,
    signature: &str,
    label: &str,
    public_key: &[u8; 32],
) -> Result<(), WebBotAuthError> {
    if components.len() > COVERED_COMPONENTS_MAX {
        return Err(WebBotAuthError::Malformed { header: "components", reason: "too many".into() });
    }
    for (_, value) in components {
        check_value("component", value, COMPONENT_VALUE_BYTES_MAX)?;
    }
    let verifier = parse_label(&Message { components, signature_input, signature }, label)?;
    verify_parsed(verifier, "key", public_key)
}

/// The RFC 9421 signature base for `components` (identifier name → value, in order) and the
/// serialized `@signature-params` inner list. Mirrors web-bot-auth's private
/// `SignatureBase::into_ascii`; used by the signer.
pub fn signature_base(components: &[(&str, &str)], signature_params: &str) -> Result<String, WebBotAuthError> {
    let mut base = String::new();
    for (name, value) in components {
        check_value("component", value, COMPONENT_VALUE_BYTES_MAX)?;
        let id = sfv::StringRef::from_str(name)
            .map_err(|_| WebBotAuthError::Malformed { header: "component", reason: "bad component name".into() })?;
        base.push_str(&sfv::Item::new(id).serialize_value());
        base.push_str(": ");
        // RFC 9421 §2.1: leading and trailing whitespace is not part of a component value (the
        // verifier strips it too).
        base.push_str(value.trim_matches([' ', '\t']));
        base.push('\n');
    }
    check_value("signature-params", signature_params, SIGNATURE_INPUT_BYTES_MAX)?;
    base.push_str("\"@signature-params\": ");
    base.push_str(signature_params);
    Ok(base)
}

fn covers(verifier: &MessageVerifier, wanted: &str) -> bool {
    verifier.parsed.base.components.keys().any(|c| match c {
        CoveredComponent::Derived(DerivedComponent::Authority { req: false }) => wanted == "@authority",
        CoveredComponent::HTTP(HTTPField { name, .. }) => name == wanted,
        _ => false,
    })
}

fn int_param(verifier: &MessageVerifier, name: &'static str) -> Result<i64, WebBotAuthError> {
    verifier
        .parsed
        .base
        .parameters
        .raw
        .get(name)
        .and_then(|v| v.as_integer())
        .map(i64::from)
        .ok_or(WebBotAuthError::MissingParameter(name))
}

/// Verify a Web Bot Auth signature for the Cloudflare x402 binding.
///
/// The first `Signature-Input` label tagged `web-bot-auth` is checked: it must cover `@authority`,
/// `signature-agent` and `payment-signature`; `alg`, if present, must be `ed25519`; `created` and
/// `expires` must be present and fresh under `policy`; `keyid` must resolve through `lookup`; and the
/// Ed25519 signature must hold over the RFC 9421 signature base.
pub fn verify_web_bot_auth(
    parts: &SignedRequestParts,
    policy: &VerifyPolicy,
    lookup: impl Fn(&str) -> Option<[u8; 32]>,
) -> Result<VerifiedSignature, WebBotAuthError> {
    let (verifier, verified) = check_rules(parts, policy, lookup)?;
    verify_parsed(verifier, &verified.keyid, &verified.public_key)?;
    Ok(verified)
}

/// A Web Bot Auth signature that passed every rule, with what its Ed25519 check needs, the check
/// itself left to the caller (the facilitator hands it to the pipeline, which batch-verifies it with
/// Tally's cofactored rule, the same rule `tally ledger verify` applies to the stored base).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedSignature {
    pub verified: VerifiedSignature,
    /// The RFC 9421 signature base: exactly the bytes the signature covers.
    pub signature_base: String,
    pub signature: [u8; 64],
}

/// Every rule of [`verify_web_bot_auth`] except the Ed25519 check, plus the refusal of weak keys;
/// returns the signature base and signature for the caller to verify.
pub fn check_web_bot_auth(
    parts: &SignedRequestParts,
    policy: &VerifyPolicy,
    lookup: impl Fn(&str) -> Option<[u8; 32]>,
) -> Result<CheckedSignature, WebBotAuthError> {
    finish_check(check_rules(parts, policy, lookup)?)
}

/// Refuses weak keys and returns the base and signature for the caller's Ed25519 check.
fn finish_check(
    (verifier, verified): (MessageVerifier, VerifiedSignature),
) -> Result<CheckedSignature, WebBotAuthError> {
    match ed25519_dalek::VerifyingKey::from_bytes(&verified.public_key) {
        Ok(key) if !key.is_weak() => {}
        _ => return Err(WebBotAuthError::WeakKey(verified.keyid)),
    }
    let signature: [u8; 64] = verifier
        .parsed
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| WebBotAuthError::BadSignature("an Ed25519 signature is 64 bytes".into()))?;
    let signature_base = base_ascii(&verifier.parsed.base)?;
    Ok(CheckedSignature { verified, signature_base, signature })
}

/// The ASCII signature base web-bot-auth verifies against. Mirrors the crate's private
/// `SignatureBase::into_ascii`; a test proves the two agree (a base built here verifies under the
/// crate's check and under Tally's).
fn base_ascii(base: &web_bot_auth::message_signatures::SignatureBase) -> Result<String, WebBotAuthError> {
    let mut out = String::new();
    let mut items = Vec::with_capacity(base.components.len());
    for (component, value) in &base.components {
        let item = match component.clone() {
            CoveredComponent::HTTP(field) => sfv::Item::try_from(field),
            CoveredComponent::Derived(derived) => sfv::Item::try_from(derived),
        }
        .map_err(map_crate_error)?;
        out.push_str(&item.serialize_value());
        out.push_str(": ");
        out.push_str(value);
        out.push('\n');
        items.push(item);
    }
    let params = vec![sfv::ListEntry::InnerList(sfv::InnerList::with_params(items, base.parameters.raw.clone()))]
        .serialize_value()
        .ok_or_else(|| WebBotAuthError::Malformed { header: "signature-input", reason: "cannot serialize".into() })?;
    out.push_str("\"@signature-params\": ");
    out.push_str(&params);
    if !out.is_ascii() {
        return Err(WebBotAuthError::Malformed { header: "signature base", reason: "non-ASCII content".into() });
    }
    Ok(out)
}

/// The pay-per-crawl price headers a signature may cover in place of `payment-signature`.
pub const PAY_PER_CRAWL_PRICE_HEADERS: [&str; 2] = ["crawler-exact-price", "crawler-max-price"];
/// Longest pay-per-crawl price header value (`USD 0.01`).
pub const CRAWLER_PRICE_BYTES_MAX: usize = 64;

/// A pay-per-crawl request's signed parts: the Web Bot Auth headers and the
/// one price header (`crawler-exact-price` or `crawler-max-price`) the
/// signature covers instead of `PAYMENT-SIGNATURE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayPerCrawlParts {
    pub authority: String,
    pub signature_agent: Option<String>,
    pub signature_input: String,
    pub signature: String,
    /// One of [`PAY_PER_CRAWL_PRICE_HEADERS`].
    pub price_header: String,
    /// Its value, verbatim (`USD 0.01`).
    pub price: String,
}

/// Every Web Bot Auth rule of [`check_web_bot_auth`], for a pay-per-crawl
/// request: the signature must cover `@authority`, `signature-agent` and its
/// price header. The Ed25519 check is left to the caller, as there.
pub fn check_pay_per_crawl(
    parts: &PayPerCrawlParts,
    policy: &VerifyPolicy,
    lookup: impl Fn(&str) -> Option<[u8; 32]>,
) -> Result<CheckedSignature, WebBotAuthError> {
    let Some(price_header) = PAY_PER_CRAWL_PRICE_HEADERS.iter().find(|h| **h == parts.price_header) else {
        return Err(WebBotAuthError::Malformed {
            header: "price header",
            reason: "not a pay-per-crawl price header".into(),
        });
    };
    check_value(price_header, &parts.price, CRAWLER_PRICE_BYTES_MAX)?;
    let covered = Covered {
        authority: &parts.authority,
        signature_agent: parts.signature_agent.as_deref(),
        signature_input: &parts.signature_input,
        signature: &parts.signature,
        payment: (price_header, &parts.price),
    };
    finish_check(check_covered(&covered, policy, lookup)?)
}

/// What a Web Bot Auth payment signature covers: the request's parts and the
/// component that names the payment (`payment-signature`, or a price header).
struct Covered<'a> {
    authority: &'a str,
    signature_agent: Option<&'a str>,
    signature_input: &'a str,
    signature: &'a str,
    payment: (&'static str, &'a str),
}

/// The Web Bot Auth rules on a request, up to (not including) the Ed25519 check.
fn check_rules(
    parts: &SignedRequestParts,
    policy: &VerifyPolicy,
    lookup: impl Fn(&str) -> Option<[u8; 32]>,
) -> Result<(MessageVerifier, VerifiedSignature), WebBotAuthError> {
    check_payment_signature(&parts.payment_signature)?;
    let covered = Covered {
        authority: &parts.authority,
        signature_agent: parts.signature_agent.as_deref(),
        signature_input: &parts.signature_input,
        signature: &parts.signature,
        payment: ("payment-signature", &parts.payment_signature),
    };
    check_covered(&covered, policy, lookup)
}

fn check_covered(
    parts: &Covered<'_>,
    policy: &VerifyPolicy,
    lookup: impl Fn(&str) -> Option<[u8; 32]>,
) -> Result<(MessageVerifier, VerifiedSignature), WebBotAuthError> {
    check_value("authority", parts.authority, AUTHORITY_BYTES_MAX)?;
    if let Some(agent) = parts.signature_agent {
        check_value("signature-agent", agent, SIGNATURE_AGENT_BYTES_MAX)?;
    }
    check_value("signature-input", parts.signature_input, SIGNATURE_INPUT_BYTES_MAX)?;
    check_value("signature", parts.signature, SIGNATURE_BYTES_MAX)?;

    // Pick the label (web-bot-auth would report a missing tag only as "no matching label").
    let malformed = |reason: String| WebBotAuthError::Malformed { header: "signature-input", reason };
    let inputs = sfv::Parser::new(parts.signature_input).parse_dictionary().map_err(|e| malformed(e.to_string()))?;
    if inputs.is_empty() {
        return Err(malformed("no signature".into()));
    }
    if inputs.len() > SIGNATURE_LABELS_MAX {
        return Err(malformed(format!("more than {SIGNATURE_LABELS_MAX} labels")));
    }
    let (label, covered) = inputs
        .iter()
        .find_map(|(label, entry)| match entry {
            sfv::ListEntry::InnerList(list)
                if list
                    .params
                    .get("tag")
                    .and_then(|t| t.as_string())
                    .is_some_and(|t| t.as_str() == WEB_BOT_AUTH_TAG) =>
            {
                Some((label.as_str(), &list.items))
            }
            _ => None,
        })
        .ok_or(WebBotAuthError::NotWebBotAuth)?;
    if covered.len() > COVERED_COMPONENTS_MAX {
        return Err(malformed(format!("more than {COVERED_COMPONENTS_MAX} covered components")));
    }
    // RFC 9421 §2.1: component names are lowercase. web-bot-auth lowercases them silently, which
    // would let one signature travel under several spellings of its Signature-Input.
    let lowercase = |item: &sfv::Item| {
        item.bare_item.as_string().is_some_and(|s| !s.as_str().bytes().any(|b| b.is_ascii_uppercase()))
    };
    if !covered.iter().all(lowercase) {
        return Err(malformed("component names must be lowercase strings".into()));
    }

    let mut components = vec![("@authority", parts.authority), parts.payment];
    if let Some(agent) = parts.signature_agent {
        components.push(("signature-agent", agent));
    }
    let message =
        Message { components: &components, signature_input: parts.signature_input, signature: parts.signature };
    let verifier = parse_label(&message, label)?;

    for required in ["@authority", "signature-agent", parts.payment.0] {
        if !covers(&verifier, required) {
            return Err(WebBotAuthError::MissingCoveredComponent(required));
        }
    }
    let params = &verifier.parsed.base.parameters.raw;
    if let Some(alg) = params.get("alg") {
        match alg.as_string() {
            Some(s) if s.as_str() == "ed25519" => {}
            Some(s) => return Err(WebBotAuthError::UnsupportedAlgorithm(s.as_str().to_owned())),
            None => return Err(WebBotAuthError::MissingParameter("alg")),
        }
    }
    if let Some(nonce) = params.get("nonce") {
        match nonce.as_string() {
            Some(s) if s.as_str().len() <= NONCE_BYTES_MAX => {}
            _ => return Err(WebBotAuthError::MissingParameter("nonce")),
        }
    }
    let keyid = params
        .get("keyid")
        .and_then(|k| k.as_string())
        .map(|k| k.as_str().to_owned())
        .filter(|k| !k.is_empty() && k.len() <= KEYID_BYTES_MAX)
        .ok_or(WebBotAuthError::MissingParameter("keyid"))?;

    let created = int_param(&verifier, "created")?;
    let expires = int_param(&verifier, "expires")?;
    let bad_window =
        WebBotAuthError::BadValidityWindow { created_s: created, expires_s: expires, max_s: policy.validity_max_s };
    let (Ok(created_s), Ok(expires_s)) = (u64::try_from(created), u64::try_from(expires)) else {
        return Err(bad_window);
    };
    if expires_s <= created_s || expires_s - created_s > policy.validity_max_s {
        return Err(bad_window);
    }
    if created_s > policy.now_s.saturating_add(policy.skew_max_s) {
        return Err(WebBotAuthError::NotYetValid { created_s, now_s: policy.now_s });
    }
    if expires_s.saturating_add(policy.skew_max_s) < policy.now_s {
        return Err(WebBotAuthError::Expired { expires_s, now_s: policy.now_s });
    }

    let public_key = lookup(&keyid).ok_or_else(|| WebBotAuthError::UnknownKey(keyid.clone()))?;
    let label = label.to_owned();
    let verified = VerifiedSignature {
        keyid,
        public_key,
        created_s,
        expires_s,
        signature_agent: parts.signature_agent.map(str::to_owned),
        label,
    };
    Ok((verifier, verified))
}

/// Sign a request the way [`verify_web_bot_auth`] wants it: label `sig1`, covering `@authority`,
/// `signature-agent` and `payment-signature`, with `created`, `keyid` (the key's JWK thumbprint),
/// `alg="ed25519"`, `expires`, an optional `nonce`, and `tag="web-bot-auth"`.
///
/// `signature_agent` is the `Signature-Agent` header value exactly as it will be sent (for example
/// `"https://crawler.example"`, a structured-field string with its quotes).
pub fn sign_web_bot_auth(
    key: &ed25519_dalek::SigningKey,
    authority: &str,
    signature_agent: &str,
    payment_signature: &str,
    created_s: u64,
    expires_s: u64,
    nonce: Option<&str>,
) -> Result<SignatureHeaders, WebBotAuthError> {
    check_value("authority", authority, AUTHORITY_BYTES_MAX)?;
    check_value("signature-agent", signature_agent, SIGNATURE_AGENT_BYTES_MAX)?;
    check_payment_signature(payment_signature)?;
    let bad = |header: &'static str, reason: &str| WebBotAuthError::Malformed { header, reason: reason.to_owned() };
    let integer = |v: u64| -> Result<sfv::BareItem, WebBotAuthError> {
        let v = i64::try_from(v).map_err(|_| bad("signature-input", "time out of range"))?;
        sfv::Integer::try_from(v).map(sfv::BareItem::Integer).map_err(|_| bad("signature-input", "time out of range"))
    };
    let string = |v: &str| -> Result<sfv::BareItem, WebBotAuthError> {
        sfv::String::from_string(v.to_owned())
            .map(sfv::BareItem::String)
            .map_err(|_| bad("signature-input", "parameter is not a printable ASCII string"))
    };
    let param = |name: &'static str| sfv::KeyRef::constant(name).to_owned();

    let keyid = thumbprint(&key.verifying_key().to_bytes());
    let mut params = sfv::Parameters::new();
    params.insert(param("created"), integer(created_s)?);
    params.insert(param("keyid"), string(&keyid)?);
    params.insert(param("alg"), string("ed25519")?);
    params.insert(param("expires"), integer(expires_s)?);
    if let Some(nonce) = nonce {
        if nonce.len() > NONCE_BYTES_MAX {
            return Err(WebBotAuthError::HeaderTooLarge { header: "nonce", len: nonce.len(), max: NONCE_BYTES_MAX });
        }
        params.insert(param("nonce"), string(nonce)?);
    }
    params.insert(param("tag"), string(WEB_BOT_AUTH_TAG)?);

    let components =
        [("@authority", authority), ("signature-agent", signature_agent), ("payment-signature", payment_signature)];
    let items = components.iter().map(|(name, _)| sfv::Item::new(sfv::StringRef::constant(name))).collect();
    let signature_params = vec![sfv::ListEntry::InnerList(sfv::InnerList::with_params(items, params))]
        .serialize_value()
        .ok_or_else(|| bad("signature-input", "cannot serialize"))?;
    let base = signature_base(&components, &signature_params)?;
    let signature = key.sign(base.as_bytes()).to_bytes();
    let signature = sfv::Item::new(sfv::BareItem::ByteSequence(signature.to_vec())).serialize_value();
    Ok(SignatureHeaders {
        signature_input: format!("{SIGNATURE_LABEL}={signature_params}"),
        signature: format!("{SIGNATURE_LABEL}={signature}"),
    })
}

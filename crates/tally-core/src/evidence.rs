//! Evidence: the exact bytes a payer signed, as the ledger keeps them.
//!
//! Every log record holds one IOU and the proof that its payer committed to it. The proof is
//! the payer's Ed25519 signature over a **signed message**, and the record stores that message
//! verbatim, so anyone holding a copy of the ledger can re-check every commitment without
//! trusting Tally. Two forms exist, told apart by their first 12 bytes:
//!
//! - **`tally-iou-v1`**: the IOU's canonical signing bytes (`docs/iou-format.md`). The evidence
//!   *is* the signed message, and the IOU is parsed from it.
//! - **`tally-wba-v1`**: a Web Bot Auth payment (x402 over an RFC 9421 HTTP message signature).
//!   The payer signed an HTTP request, not an IOU: the signature covers the request's
//!   **signature base**, whose covered components include `payment-signature` (the x402 payment
//!   payload: network, amount, asset, payTo). Tally derives the IOU from the base by one fixed
//!   rule, [`derive_web_bot_auth_iou`], and keeps both the derived IOU's canonical bytes (so every
//!   reader sees an ordinary IOU) and the base (what was signed). [`parse_evidence`] re-runs the
//!   rule and refuses a record whose stored IOU differs from what the base says, so a record can
//!   never claim more than its payer signed.
//!
//! ```text
//! tally-wba-v1 evidence
//! offset  size  field
//!      0    12  "tally-wba-v1"
//!     12     2  m, u16 BE: length of the derived IOU's canonical bytes
//!     14     m  the derived IOU's canonical bytes (a tally-iou-v1 message, never signed as such)
//!      .     4  b, u32 BE: length of the signature base (≤ SIGNATURE_BASE_LEN_MAX)
//!      .     b  the RFC 9421 signature base, ASCII, exactly the bytes the signature covers
//! ```
//!
//! - **`tally-bam-v1`**: one IOU of a batch-signed commitment (`crate::batch`):
//!   `"tally-bam-v1" ‖ batch_seq u64 ‖ index u32 ‖ the IOU's signing bytes`. The record's
//!   signature is the batch's, over the batch statement, whose Merkle root covers the IOU as leaf
//!   `index`; the statement and the leaves are stored once per batch, beside the log.
//!
//! For the first two forms the signed message is a suffix of the evidence (all of it, or the
//! base), which is what [`Commitment::signed_message`] and [`Evidence::signed_message`] return.
//!
//! ## The derivation rule (Web Bot Auth → IOU)
//! The base's last line is `"@signature-params": (<covered components>);<params>`, and every other
//! line is `<component identifier>: <value>` for the covered components, in order. The rule
//! requires: the covered components include `@authority`, `signature-agent` and
//! `payment-signature`; `tag="web-bot-auth"`; `created` and `expires` integers with
//! `created < expires`; `keyid` equal to the RFC 7638 JWK thumbprint of the payer's key; `alg`, if
//! present, `ed25519`. The `payment-signature` value is base64 of an x402 v2 `PaymentPayload` with
//! `accepted` (scheme `batch-settlement`, `network`, `amount`, `asset`, `payTo`) and
//! `payload: {amount, asset}` where `payload.asset == accepted.asset` and
//! `0 < payload.amount ≤ accepted.amount`. The IOU is then:
//!
//! | IOU field | from |
//! |---|---|
//! | network, payee | `accepted.network`, `accepted.payTo` |
//! | asset, amount | `payload.asset`, `payload.amount` |
//! | payer_key | the key whose thumbprint is `keyid` |
//! | issued_at, expires_at | `created`, `expires` |
//! | resource | `resource.url` of the payment payload, or empty |
//! | nonce | with a payment identifier `id`: `SHA-256("tally-payment-id-v1" ‖ id)[..16]`; otherwise `SHA-256("tally-wba-nonce-v1" ‖ base)[..16]` |
//!
//! So one signed request is one payment (replaying it is a duplicate), and with a payment
//! identifier, retries of one payment share one nonce, whatever their signatures.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::iou::{DOMAIN_TAG, Iou, IouError, Nonce, PublicKeyBytes, SIGNING_BYTES_LEN_MAX, SignatureBytes, SignedIou};

/// The tag that opens Web Bot Auth evidence.
pub const WBA_EVIDENCE_TAG: &[u8; 12] = b"tally-wba-v1";
/// Longest signature base accepted: the covered header values Tally bounds (authority 270 B,
/// signature agent 4 KiB, payment signature 16 KiB) plus identifiers and parameters.
pub const SIGNATURE_BASE_LEN_MAX: usize = 24 * 1024;
/// Longest evidence record of any form.
pub const EVIDENCE_LEN_MAX: usize = 12 + 2 + SIGNING_BYTES_LEN_MAX + 1 + 4 + SIGNATURE_BASE_LEN_MAX;
/// Most lines (covered components plus `@signature-params`) in a base.
pub const SIGNATURE_BASE_LINES_MAX: usize = 17;
/// The `tag` a Web Bot Auth signature carries.
pub const WEB_BOT_AUTH_TAG: &str = "web-bot-auth";
/// The x402 scheme a Web Bot Auth payment must name.
pub const SCHEME_BATCH_SETTLEMENT: &str = "batch-settlement";
/// Payment identifiers: 16..=128 characters of `[A-Za-z0-9_-]`.
pub const PAYMENT_ID_LEN_MIN: usize = 16;
pub const PAYMENT_ID_LEN_MAX: usize = 128;

/// The tag that opens pay-per-crawl evidence (`crate::pay_per_crawl`).
pub const PPC_EVIDENCE_TAG: &[u8; 12] = b"tally-ppc-v1";

/// The tag that opens the evidence of an IOU signed as part of a batch.
pub const BATCH_MEMBER_EVIDENCE_TAG: &[u8; 12] = b"tally-bam-v1";
/// Bytes before the IOU's signing bytes in batch-member evidence.
pub const BATCH_MEMBER_HEADER_LEN: usize = 12 + 8 + 4;

/// Which form a piece of evidence has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvidenceKind {
    TallyIou,
    WebBotAuth,
    /// One IOU of a batch-signed commitment (`crate::batch`).
    BatchMember,
    /// A pay-per-crawl request: a Web Bot Auth signature over a price header (`crate::pay_per_crawl`).
    PayPerCrawl,
}

impl EvidenceKind {
    /// The format name used in JSON and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceKind::TallyIou => "tally-iou-v1",
            EvidenceKind::WebBotAuth => "web-bot-auth",
            EvidenceKind::BatchMember => "tally-batch-v1",
            EvidenceKind::PayPerCrawl => "pay-per-crawl",
        }
    }
}

/// What a record's signature covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signed<'a> {
    /// These bytes, directly (a suffix of the evidence).
    Message(&'a [u8]),
    /// The batch statement of `(payer key, batch_seq)`, whose Merkle root covers this IOU's
    /// signing bytes as leaf `index` (the statement and leaves are stored beside the log).
    Batch { batch_seq: u64, index: u32, iou_bytes: &'a [u8] },
}

/// Batch-member evidence: `"tally-bam-v1" ‖ batch_seq u64 ‖ index u32 ‖ the IOU's signing bytes`.
pub fn batch_member_evidence(batch_seq: u64, index: u32, iou_signing_bytes: &[u8]) -> Vec<u8> {
    let mut evidence = Vec::with_capacity(BATCH_MEMBER_HEADER_LEN + iou_signing_bytes.len());
    evidence.extend_from_slice(BATCH_MEMBER_EVIDENCE_TAG);
    evidence.extend_from_slice(&batch_seq.to_be_bytes());
    evidence.extend_from_slice(&index.to_be_bytes());
    evidence.extend_from_slice(iou_signing_bytes);
    evidence
}

/// Why bytes are not valid evidence, or a signature base does not yield an IOU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("evidence is {0} bytes, more than the maximum")]
    TooLong(usize),
    #[error("evidence has an unknown tag")]
    UnknownTag,
    #[error("evidence is truncated")]
    Truncated,
    #[error("IOU: {0}")]
    Iou(#[from] IouError),
    #[error("signature base: {0}")]
    Base(&'static str),
    #[error("payment-signature: {0}")]
    PaymentSignature(&'static str),
    #[error("keyid is not the payer key's JWK thumbprint")]
    KeyidMismatch,
    #[error("the stored IOU is not the one its signature base yields")]
    NotDerived,
}

/// Parsed evidence: the IOU it stands for and what its signature covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence<'a> {
    pub kind: EvidenceKind,
    pub iou: Iou,
    pub signed: Signed<'a>,
    /// Pay-per-crawl only: the decimals the signed price was read with. The
    /// evidence cannot prove them (the crawler signed `USD 0.05`, not a
    /// scale), so an auditor checks them against the asset's registered scale.
    pub price_scale: Option<u8>,
}

impl Evidence<'_> {
    /// The message the record's signature covers directly; `None` for a batch member.
    pub fn signed_message(&self) -> Option<&[u8]> {
        match self.signed {
            Signed::Message(message) => Some(message),
            Signed::Batch { .. } => None,
        }
    }
}

/// Parses stored evidence of either form. For Web Bot Auth evidence this re-derives the IOU from
/// the signature base and refuses a mismatch ([`EvidenceError::NotDerived`]).
pub fn parse_evidence(bytes: &[u8]) -> Result<Evidence<'_>, EvidenceError> {
    if bytes.len() > EVIDENCE_LEN_MAX {
        return Err(EvidenceError::TooLong(bytes.len()));
    }
    if bytes.starts_with(DOMAIN_TAG) {
        let iou = Iou::from_signing_bytes(bytes)?;
        return Ok(Evidence { kind: EvidenceKind::TallyIou, iou, signed: Signed::Message(bytes), price_scale: None });
    }
    if bytes.starts_with(BATCH_MEMBER_EVIDENCE_TAG) {
        if bytes.len() < BATCH_MEMBER_HEADER_LEN {
            return Err(EvidenceError::Truncated);
        }
        let batch_seq = u64::from_be_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let index = u32::from_be_bytes(bytes[20..24].try_into().expect("4 bytes"));
        let iou_bytes = &bytes[BATCH_MEMBER_HEADER_LEN..];
        let iou = Iou::from_signing_bytes(iou_bytes)?;
        return Ok(Evidence {
            kind: EvidenceKind::BatchMember,
            iou,
            signed: Signed::Batch { batch_seq, index, iou_bytes },
            price_scale: None,
        });
    }
    let pay_per_crawl = bytes.starts_with(PPC_EVIDENCE_TAG);
    if !pay_per_crawl && !bytes.starts_with(WBA_EVIDENCE_TAG) {
        return Err(EvidenceError::UnknownTag);
    }
    let rest = &bytes[WBA_EVIDENCE_TAG.len()..];
    let (iou_len, rest) = split_len::<2>(rest)?;
    if rest.len() < iou_len {
        return Err(EvidenceError::Truncated);
    }
    let (iou_bytes, rest) = rest.split_at(iou_len);
    let (scale, rest) = match (pay_per_crawl, rest.split_first()) {
        (false, _) => (None, rest),
        (true, Some((scale, rest))) => (Some(*scale), rest),
        (true, None) => return Err(EvidenceError::Truncated),
    };
    let (base_len, base) = split_len::<4>(rest)?;
    if base.len() != base_len {
        return Err(EvidenceError::Truncated);
    }
    let iou = Iou::from_signing_bytes(iou_bytes)?;
    let base_text = std::str::from_utf8(base).map_err(|_| EvidenceError::Base("not ASCII"))?;
    let (kind, derived) = match scale {
        None => (EvidenceKind::WebBotAuth, derive_web_bot_auth_iou(base_text, &iou.payer_key)?),
        Some(scale) => {
            // What the signature does not cover comes from the stored IOU; the rule checks the rest.
            let terms = crate::pay_per_crawl::PayPerCrawlTerms {
                network: iou.network.clone(),
                payee: iou.payee.clone(),
                resource: iou.resource.clone(),
                scale,
            };
            (
                EvidenceKind::PayPerCrawl,
                crate::pay_per_crawl::derive_pay_per_crawl_iou(base_text, &iou.payer_key, &terms)?,
            )
        }
    };
    if derived != iou {
        return Err(EvidenceError::NotDerived);
    }
    Ok(Evidence { kind, iou, signed: Signed::Message(base), price_scale: scale })
}

/// The IOU's signing bytes inside evidence of any form, found without re-deriving or checking
/// anything (the replay index compares these: the same IOU is the same promise, however it was
/// signed). `None` for bytes that are not evidence.
pub fn evidence_iou_bytes(evidence: &[u8]) -> Option<&[u8]> {
    if evidence.starts_with(DOMAIN_TAG) {
        Some(evidence)
    } else if evidence.starts_with(BATCH_MEMBER_EVIDENCE_TAG) {
        evidence.get(BATCH_MEMBER_HEADER_LEN..)
    } else if evidence.starts_with(WBA_EVIDENCE_TAG) || evidence.starts_with(PPC_EVIDENCE_TAG) {
        let (len, rest) = split_len::<2>(&evidence[WBA_EVIDENCE_TAG.len()..]).ok()?;
        rest.get(..len)
    } else {
        None
    }
}

fn split_len<const N: usize>(bytes: &[u8]) -> Result<(usize, &[u8]), EvidenceError> {
    if bytes.len() < N {
        return Err(EvidenceError::Truncated);
    }
    let (len, rest) = bytes.split_at(N);
    let len = len.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Ok((len, rest))
}

/// A commitment on its way into the ledger: the IOU, the payer's signature, and the evidence
/// that will be stored (whose suffix from `message_start` is what the signature covers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commitment {
    pub signed: SignedIou,
    pub evidence: Vec<u8>,
    message_start: usize,
    kind: EvidenceKind,
}

impl Commitment {
    /// A Tally IOU: the evidence is its canonical signing bytes, which only a well-shaped IOU has.
    pub fn tally_iou(signed: SignedIou) -> Result<Commitment, IouError> {
        signed.iou.check_shape()?;
        let evidence = signed.iou.signing_bytes();
        Ok(Commitment { signed, evidence, message_start: 0, kind: EvidenceKind::TallyIou })
    }

    /// A Web Bot Auth payment: derives the IOU from `signature_base` for `payer_key` and packs the
    /// evidence. The signature is not checked here (the pipeline batch-verifies it).
    pub fn web_bot_auth(
        payer_key: PublicKeyBytes,
        signature: SignatureBytes,
        signature_base: &str,
    ) -> Result<Commitment, EvidenceError> {
        let iou = derive_web_bot_auth_iou(signature_base, &payer_key)?;
        Ok(Commitment::over_base(EvidenceKind::WebBotAuth, iou, signature, &[], signature_base))
    }

    /// A pay-per-crawl payment (`crate::pay_per_crawl`): derives the IOU from `signature_base` and
    /// the unsigned `terms`, and packs the evidence. The signature is checked by the pipeline.
    pub fn pay_per_crawl(
        payer_key: PublicKeyBytes,
        signature: SignatureBytes,
        signature_base: &str,
        terms: &crate::pay_per_crawl::PayPerCrawlTerms,
    ) -> Result<Commitment, EvidenceError> {
        let iou = crate::pay_per_crawl::derive_pay_per_crawl_iou(signature_base, &payer_key, terms)?;
        Ok(Commitment::over_base(EvidenceKind::PayPerCrawl, iou, signature, &[terms.scale], signature_base))
    }

    /// `tag ‖ u16 m ‖ IOU bytes ‖ context ‖ u32 b ‖ base`: the two base-signed forms.
    fn over_base(
        kind: EvidenceKind,
        iou: Iou,
        signature: SignatureBytes,
        context: &[u8],
        signature_base: &str,
    ) -> Commitment {
        let tag = if kind == EvidenceKind::PayPerCrawl { PPC_EVIDENCE_TAG } else { WBA_EVIDENCE_TAG };
        let iou_bytes = iou.signing_bytes();
        let base = signature_base.as_bytes();
        let mut evidence = Vec::with_capacity(tag.len() + 2 + iou_bytes.len() + context.len() + 4 + base.len());
        evidence.extend_from_slice(tag);
        let iou_len = u16::try_from(iou_bytes.len()).expect("signing bytes are bounded below 64 KiB");
        evidence.extend_from_slice(&iou_len.to_be_bytes());
        evidence.extend_from_slice(&iou_bytes);
        evidence.extend_from_slice(context);
        let base_len = u32::try_from(base.len()).expect("base length was bounded");
        evidence.extend_from_slice(&base_len.to_be_bytes());
        let message_start = evidence.len();
        evidence.extend_from_slice(base);
        debug_assert!(evidence.len() <= EVIDENCE_LEN_MAX);
        Commitment { signed: SignedIou { iou, signature }, evidence, message_start, kind }
    }

    /// The bytes the payer's signature covers.
    pub fn signed_message(&self) -> &[u8] {
        &self.evidence[self.message_start..]
    }

    pub fn kind(&self) -> EvidenceKind {
        self.kind
    }
}

/// RFC 7638 JWK thumbprint of an Ed25519 public key: base64url (no padding) of SHA-256 over
/// `{"crv":"Ed25519","kty":"OKP","x":"<base64url key>"}` (members in lexicographic order, no
/// whitespace). Web Bot Auth's `keyid`.
pub fn jwk_thumbprint(public_key: &PublicKeyBytes) -> String {
    let jwk = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, URL_SAFE_NO_PAD.encode(public_key));
    URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

/// Checks a payment identifier's syntax (the x402 `payment-identifier` extension).
pub fn payment_id_is_valid(id: &str) -> bool {
    (PAYMENT_ID_LEN_MIN..=PAYMENT_ID_LEN_MAX).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The IOU nonce a payment identifier stands for: the first 16 bytes of
/// SHA-256("tally-payment-id-v1" ‖ id). It maps the extension onto the ledger's replay index.
pub fn nonce_for_payment_id(id: &str) -> Nonce {
    let digest = Sha256::new().chain_update(b"tally-payment-id-v1").chain_update(id.as_bytes()).finalize();
    digest[..16].try_into().expect("16 of 32 bytes")
}

/// The nonce of a Web Bot Auth payment without a payment identifier: one signed request, one
/// payment.
fn nonce_for_signature_base(base: &str) -> Nonce {
    let digest = Sha256::new().chain_update(b"tally-wba-nonce-v1").chain_update(base.as_bytes()).finalize();
    digest[..16].try_into().expect("16 of 32 bytes")
}

/// The value of the covered component `name` (without parameters) in a signature base, if the
/// base covers it exactly once.
pub fn signature_base_value<'a>(base: &'a str, name: &str) -> Option<&'a str> {
    let mut found = base.split('\n').take(SIGNATURE_BASE_LINES_MAX).filter_map(|line| {
        let (id, value) = line.split_once(": ")?;
        let item = sfv::Parser::new(id).parse_item().ok()?;
        (item.params.is_empty() && component_name(&item) == Some(name)).then_some(value)
    });
    match (found.next(), found.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}

/// Decodes an x402 header value (`PAYMENT-SIGNATURE`, `PAYMENT-REQUIRED`, `PAYMENT-RESPONSE`): base64
/// in the standard or the URL-safe alphabet, padded or not, surrounding whitespace ignored. The one
/// decoder every part of Tally uses, so the paywall, the Web Bot Auth checks and the derivation rule
/// can never disagree on what a header says.
pub fn decode_header_base64(value: &[u8]) -> Option<Vec<u8>> {
    let config = base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
    let standard = base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, config);
    let url_safe = base64::engine::GeneralPurpose::new(&base64::alphabet::URL_SAFE, config);
    let value = value.trim_ascii();
    standard.decode(value).or_else(|_| url_safe.decode(value)).ok()
}

/// One covered component of a base: its identifier (as an sfv item) and value.
struct BaseLine<'a> {
    item: sfv::Item,
    value: &'a str,
}

fn component_name(item: &sfv::Item) -> Option<&str> {
    item.bare_item.as_string().map(|s| s.as_str())
}

/// A signature base that passed the rules every Web Bot Auth payment shares (shape, `tag`, `alg`,
/// `keyid`, `created < expires`), with its covered components' values.
pub(crate) struct ParsedBase<'a> {
    components: Vec<BaseLine<'a>>,
    pub created_s: u64,
    pub expires_s: u64,
}

impl<'a> ParsedBase<'a> {
    /// The value of the covered component `wanted`, which must be covered exactly once.
    pub fn value_of(&self, wanted: &str) -> Result<&'a str, EvidenceError> {
        let mut found = self.components.iter().filter(|c| component_name(&c.item) == Some(wanted));
        match (found.next(), found.next()) {
            (Some(line), None) => Ok(line.value),
            (None, _) => Err(EvidenceError::Base("a required component is not covered")),
            (Some(_), Some(_)) => Err(EvidenceError::Base("a component is covered twice")),
        }
    }

    /// Whether the component `wanted` is covered.
    pub fn covers(&self, wanted: &str) -> bool {
        self.components.iter().any(|c| component_name(&c.item) == Some(wanted))
    }
}

/// The rules shared by every Web Bot Auth derivation: the base's shape, its parameters, and that
/// `keyid` is `payer_key`'s thumbprint. Also requires `@authority` and `signature-agent` covered.
pub(crate) fn parse_base<'a>(base: &'a str, payer_key: &PublicKeyBytes) -> Result<ParsedBase<'a>, EvidenceError> {
    if base.len() > SIGNATURE_BASE_LEN_MAX {
        return Err(EvidenceError::Base("too long"));
    }
    if !base.bytes().all(|b| b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b)) {
        return Err(EvidenceError::Base("not visible ASCII"));
    }
    let mut lines: Vec<&str> = Vec::new();
    for line in base.split('\n') {
        if lines.len() == SIGNATURE_BASE_LINES_MAX {
            return Err(EvidenceError::Base("too many lines"));
        }
        lines.push(line);
    }
    let (params_line, component_lines) = lines.split_last().ok_or(EvidenceError::Base("empty"))?;
    let params_value =
        params_line.strip_prefix("\"@signature-params\": ").ok_or(EvidenceError::Base("no @signature-params line"))?;

    let mut components = Vec::with_capacity(component_lines.len());
    for line in component_lines {
        let (id, value) = line.split_once(": ").ok_or(EvidenceError::Base("a line without \": \""))?;
        let item = sfv::Parser::new(id).parse_item().map_err(|_| EvidenceError::Base("bad component identifier"))?;
        if component_name(&item).is_none() {
            return Err(EvidenceError::Base("component identifier is not a string"));
        }
        components.push(BaseLine { item, value });
    }

    let list = sfv::Parser::new(params_value).parse_list().map_err(|_| EvidenceError::Base("bad @signature-params"))?;
    let [sfv::ListEntry::InnerList(inner)] = list.as_slice() else {
        return Err(EvidenceError::Base("@signature-params is not one inner list"));
    };
    if inner.items.len() != components.len() || inner.items.iter().zip(&components).any(|(a, b)| *a != b.item) {
        return Err(EvidenceError::Base("@signature-params does not list the covered components in order"));
    }
    let params = &inner.params;
    let string_param = |name: &str| params.get(name).and_then(|v| v.as_string()).map(|s| s.as_str());
    let int_param =
        |name: &str| params.get(name).and_then(|v| v.as_integer()).and_then(|i| u64::try_from(i64::from(i)).ok());
    if string_param("tag") != Some(WEB_BOT_AUTH_TAG) {
        return Err(EvidenceError::Base("tag is not web-bot-auth"));
    }
    if params.get("alg").is_some() && string_param("alg") != Some("ed25519") {
        return Err(EvidenceError::Base("alg is not ed25519"));
    }
    if string_param("keyid") != Some(jwk_thumbprint(payer_key).as_str()) {
        return Err(EvidenceError::KeyidMismatch);
    }
    let created_s = int_param("created").ok_or(EvidenceError::Base("created is missing or negative"))?;
    let expires_s = int_param("expires").ok_or(EvidenceError::Base("expires is missing or negative"))?;
    if expires_s <= created_s {
        return Err(EvidenceError::Base("expires is not after created"));
    }

    let parsed = ParsedBase { components, created_s, expires_s };
    parsed.value_of("@authority")?;
    parsed.value_of("signature-agent")?;
    Ok(parsed)
}

/// Applies the derivation rule in this module's documentation: the IOU a Web Bot Auth signature
/// base commits `payer_key` to.
pub fn derive_web_bot_auth_iou(base: &str, payer_key: &PublicKeyBytes) -> Result<Iou, EvidenceError> {
    let parsed = parse_base(base, payer_key)?;
    let payment_signature = parsed.value_of("payment-signature")?;
    let (created_s, expires_s) = (parsed.created_s, parsed.expires_s);
    let payment = decode_payment_signature(payment_signature)?;
    let nonce = match &payment.payment_id {
        Some(id) => nonce_for_payment_id(id),
        None => nonce_for_signature_base(base),
    };
    let iou = Iou {
        network: payment.network,
        payer_key: *payer_key,
        payee: payment.pay_to,
        asset: payment.asset,
        amount: payment.amount,
        nonce,
        issued_at_s: created_s,
        expires_at_s: expires_s,
        resource: payment.resource,
    };
    iou.check_shape()?;
    Ok(iou)
}

/// What the rule reads from the `PAYMENT-SIGNATURE` payload.
struct PaymentTerms {
    network: String,
    pay_to: String,
    asset: String,
    amount: u64,
    resource: String,
    payment_id: Option<String>,
}

fn decode_payment_signature(value: &str) -> Result<PaymentTerms, EvidenceError> {
    use EvidenceError::PaymentSignature as Bad;
    let json = decode_header_base64(value.as_bytes()).ok_or(Bad("not base64"))?;
    let payload: Value = serde_json::from_slice(&json).map_err(|_| Bad("not JSON"))?;
    if payload.get("x402Version").and_then(Value::as_u64) != Some(2) {
        return Err(Bad("x402Version is not 2"));
    }
    let text = |v: Option<&Value>, what: &'static str| v.and_then(Value::as_str).map(str::to_owned).ok_or(Bad(what));
    let accepted = payload.get("accepted").ok_or(Bad("no accepted"))?;
    if accepted.get("scheme").and_then(Value::as_str) != Some(SCHEME_BATCH_SETTLEMENT) {
        return Err(Bad("scheme is not batch-settlement"));
    }
    let network = text(accepted.get("network"), "accepted.network")?;
    let pay_to = text(accepted.get("payTo"), "accepted.payTo")?;
    let accepted_asset = text(accepted.get("asset"), "accepted.asset")?;
    let price: u64 =
        text(accepted.get("amount"), "accepted.amount")?.parse().map_err(|_| Bad("accepted.amount is not a u64"))?;
    let committed = payload.get("payload").ok_or(Bad("no payload"))?;
    let asset = text(committed.get("asset"), "payload.asset")?;
    let amount: u64 =
        text(committed.get("amount"), "payload.amount")?.parse().map_err(|_| Bad("payload.amount is not a u64"))?;
    if asset != accepted_asset {
        return Err(Bad("payload.asset differs from accepted.asset"));
    }
    if amount == 0 || amount > price {
        return Err(Bad("payload.amount is zero or above accepted.amount"));
    }
    let resource = match payload.get("resource") {
        None | Some(Value::Null) => String::new(),
        Some(resource) => text(resource.get("url"), "resource.url")?,
    };
    let payment_id = match payload.get("extensions").and_then(|e| e.get("payment-identifier")) {
        None | Some(Value::Null) => None,
        Some(extension) => match extension.get("info").and_then(|i| i.get("id")) {
            None | Some(Value::Null) => None,
            Some(id) => {
                let id = id.as_str().filter(|id| payment_id_is_valid(id)).ok_or(Bad("malformed payment identifier"))?;
                Some(id.to_owned())
            }
        },
    };
    Ok(PaymentTerms { network, pay_to, asset, amount, resource, payment_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: PublicKeyBytes = [7; 32];

    fn payment(amount: &str, extra: &str) -> String {
        let json = format!(
            r#"{{"x402Version":2,"accepted":{{"scheme":"batch-settlement","network":"tally:test","amount":"1000","asset":"USD","payTo":"site.example"}},"payload":{{"amount":"{amount}","asset":"USD"}}{extra}}}"#
        );
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    fn base_with(payment_signature: &str, params: &str) -> String {
        format!(
            "\"@authority\": site.example\n\"signature-agent\": \"https://crawler.example\"\n\"payment-signature\": {payment_signature}\n\"@signature-params\": (\"@authority\" \"signature-agent\" \"payment-signature\"){params}"
        )
    }

    fn base(payment_signature: &str) -> String {
        let keyid = jwk_thumbprint(&KEY);
        base_with(
            payment_signature,
            &format!(";created=100;keyid=\"{keyid}\";alg=\"ed25519\";expires=160;tag=\"web-bot-auth\""),
        )
    }

    #[test]
    fn derives_the_iou_the_payload_names() {
        let b = base(&payment("250", r#","resource":{"url":"https://site.example/a"}"#));
        let iou = derive_web_bot_auth_iou(&b, &KEY).unwrap();
        assert_eq!(
            (iou.network.as_str(), iou.payee.as_str(), iou.asset.as_str()),
            ("tally:test", "site.example", "USD")
        );
        assert_eq!((iou.amount, iou.issued_at_s, iou.expires_at_s), (250, 100, 160));
        assert_eq!(iou.resource, "https://site.example/a");
        assert_eq!(iou.nonce, nonce_for_signature_base(&b));
        assert_eq!(signature_base_value(&b, "@authority"), Some("site.example"));
        assert_eq!(signature_base_value(&b, "@method"), None);
    }

    #[test]
    fn a_payment_identifier_fixes_the_nonce() {
        let id = "retry-safe-payment-0001";
        let extra = format!(r#","extensions":{{"payment-identifier":{{"info":{{"id":"{id}"}}}}}}"#);
        let iou = derive_web_bot_auth_iou(&base(&payment("5", &extra)), &KEY).unwrap();
        assert_eq!(iou.nonce, nonce_for_payment_id(id));
    }

    #[test]
    fn evidence_round_trips_and_binds_the_iou() {
        let b = base(&payment("250", ""));
        let commitment = Commitment::web_bot_auth(KEY, [1; 64], &b).unwrap();
        assert_eq!(commitment.signed_message(), b.as_bytes());
        assert_eq!(evidence_iou_bytes(&commitment.evidence), Some(&commitment.signed.iou.signing_bytes()[..]));
        let parsed = parse_evidence(&commitment.evidence).unwrap();
        assert_eq!(
            (parsed.kind, &parsed.iou, parsed.signed_message()),
            (EvidenceKind::WebBotAuth, &commitment.signed.iou, Some(b.as_bytes()))
        );

        // A stored IOU that claims more than the base says is refused.
        let mut forged = commitment.signed.iou.clone();
        forged.amount = 999;
        let forged_bytes = forged.signing_bytes();
        let mut evidence = WBA_EVIDENCE_TAG.to_vec();
        evidence.extend_from_slice(&(forged_bytes.len() as u16).to_be_bytes());
        evidence.extend_from_slice(&forged_bytes);
        evidence.extend_from_slice(&(b.len() as u32).to_be_bytes());
        evidence.extend_from_slice(b.as_bytes());
        assert_eq!(parse_evidence(&evidence), Err(EvidenceError::NotDerived));
        // Every truncation is refused, never a panic.
        for len in 0..commitment.evidence.len() {
            assert!(parse_evidence(&commitment.evidence[..len]).is_err());
        }
    }

    #[test]
    fn the_rule_refuses_what_it_must() {
        let keyid = jwk_thumbprint(&KEY);
        let good = payment("250", "");
        let cases = [
            base(&payment("0", "")),
            base(&payment("1001", "")),
            base("not base64!"),
            base_with(&good, &format!(";created=100;keyid=\"{keyid}\";expires=160;tag=\"other\"")),
            base_with(&good, &format!(";created=100;keyid=\"{keyid}\";expires=100;tag=\"web-bot-auth\"")),
            base_with(&good, ";created=100;keyid=\"someone-else\";expires=160;tag=\"web-bot-auth\""),
            base_with(&good, &format!(";created=100;keyid=\"{keyid}\";alg=\"rsa\";expires=160;tag=\"web-bot-auth\"")),
            base(&good).replace("\"signature-agent\": \"https://crawler.example\"\n", ""),
            base(&good).replace("(\"@authority\" ", "(\"@method\" "),
        ];
        for case in cases {
            assert!(derive_web_bot_auth_iou(&case, &KEY).is_err(), "{case}");
        }
    }

    #[test]
    fn tally_iou_evidence_is_the_signing_bytes() {
        let iou = Iou {
            network: "tally:test".into(),
            payer_key: KEY,
            payee: "site.example".into(),
            asset: "USD".into(),
            amount: 5,
            nonce: [3; 16],
            issued_at_s: 1,
            expires_at_s: 2,
            resource: String::new(),
        };
        let commitment = Commitment::tally_iou(SignedIou { iou: iou.clone(), signature: [0; 64] }).unwrap();
        let mut malformed = iou.clone();
        malformed.payee = "a payee with spaces".into();
        assert_eq!(Commitment::tally_iou(SignedIou { iou: malformed, signature: [0; 64] }), Err(IouError::BadPayee));
        let parsed = parse_evidence(&commitment.evidence).unwrap();
        assert_eq!(
            (parsed.kind, &parsed.iou, parsed.signed_message()),
            (EvidenceKind::TallyIou, &iou, Some(&commitment.evidence[..]))
        );
        assert_eq!(parse_evidence(b"garbage-tag-and-more"), Err(EvidenceError::UnknownTag));

        let member = batch_member_evidence(7, 3, &iou.signing_bytes());
        let parsed = parse_evidence(&member).unwrap();
        let expected = Signed::Batch { batch_seq: 7, index: 3, iou_bytes: &member[BATCH_MEMBER_HEADER_LEN..] };
        assert_eq!((parsed.kind, &parsed.iou, &parsed.signed), (EvidenceKind::BatchMember, &iou, &expected));
        assert_eq!(parsed.signed_message(), None);
        for len in 0..member.len() {
            assert!(parse_evidence(&member[..len]).is_err());
        }
    }

    #[test]
    fn thumbprint_matches_rfc_8037_appendix_a3() {
        // RFC 8037 A.3: the thumbprint of the RFC's Ed25519 example key.
        let mut key = [0u8; 32];
        hex::decode_to_slice("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", &mut key).unwrap();
        assert_eq!(jwk_thumbprint(&key), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }
}

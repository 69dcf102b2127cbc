//! The facilitator's checks that need no ledger: what a request asks, and
//! whether its commitment covers it.
//!
//! Three things bind a payment to one request at one price:
//!
//! - **The offer and the charge.** `paymentPayload.accepted` is the offer the
//!   client accepted; `paymentRequirements` is what the resource server asks
//!   now. At `/verify` they must be equal. At `/settle` the server may charge
//!   less than it offered (the batch-settlement scheme's dynamic pricing: the
//!   official SDKs send their settlement override as a lower
//!   `paymentRequirements.amount`), never more: `1 ≤ amount ≤ accepted.amount`.
//!   That amount is the **charge** the ledger records.
//! - **The commitment covers the offer.** The client's IOU (or Web Bot Auth
//!   payload) must commit at least `accepted.amount`; a 1-unit IOU does not pay
//!   a 1,500-unit article (`price_not_acceptable`).
//! - **The resource.** The commitment's signed `resource` must be the
//!   resource the request buys: `paymentRequirements.extra.resource` when the
//!   server names it (Tally's `PaywallLayer` does), else the payload's
//!   `resource.url`; when both are present they must agree. Anything else is
//!   `resource_mismatch`.
//!
//! Every amount on the wire is a canonical decimal string (no sign, no
//! leading zeros): one amount, one spelling.

use axum::http::StatusCode;
use serde_json::Value;
use tally_core::{Commitment, parse_canonical_units};

use super::{Facilitator, Refusal, WebBotAuthRequest};
use crate::commitment::{
    FORMAT_PAY_PER_CRAWL, FORMAT_TALLY_IOU, FORMAT_WEB_BOT_AUTH, PayPerCrawlPayload, TallyIouPayload,
    WebBotAuthPayload, nonce_for_payment_id, payment_id_is_valid,
};
use crate::middleware::decode_header_json;
use crate::types::*;
use crate::webbotauth::{
    PAYMENT_SIGNATURE_BYTES_MAX, PayPerCrawlParts, SignedRequestParts, VerifyPolicy, check_pay_per_crawl,
    check_web_bot_auth,
};

/// Which call is checking: `/verify` previews the offer, `/settle` may charge less.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Verify,
    Settle,
}

/// A request that passed every check that needs no ledger.
pub(super) struct Checked {
    pub(super) commitment: Commitment,
    /// What the payee charges (`1..=` the committed amount).
    pub(super) charge: u64,
    pub(super) payment_id: Option<String>,
    pub(super) phase: Phase,
    /// Whether the resource server named the resource (`extra.resource`). A
    /// payment identifier's retry is answered from the ledger only then: when
    /// only the client says what it buys, the facilitator cannot tell a retry
    /// of the same request from the same payment presented for another route.
    pub(super) resource_named_by_server: bool,
    /// Set for Web Bot Auth payments.
    pub(super) web_bot_auth: Option<WebBotAuthRequest>,
}

/// What decides whether a recorded payment may answer this request from the
/// cache (`ledger::cached_retry`).
#[derive(Clone, Copy, Debug)]
pub(super) struct RetryTerms {
    pub(super) has_payment_id: bool,
    pub(super) resource_named_by_server: bool,
    /// `/verify` asks the offer; `/settle` the charge.
    pub(super) phase: Phase,
    pub(super) charge: u64,
}

impl Checked {
    pub(super) fn retry_terms(&self) -> RetryTerms {
        RetryTerms {
            has_payment_id: self.payment_id.is_some(),
            resource_named_by_server: self.resource_named_by_server,
            phase: self.phase,
            charge: self.charge,
        }
    }
}

/// What a request's parts say, once the envelope is checked.
struct Terms<'a> {
    request: &'a FacilitatorRequest,
    /// The offer the client accepted.
    offered: u64,
    /// What the server charges now.
    charge: u64,
    /// The resource the request buys.
    resource: String,
    /// See [`Checked::resource_named_by_server`].
    resource_named_by_server: bool,
    phase: Phase,
}

impl Terms<'_> {
    /// The checked request, once its format's checks passed.
    fn checked(
        &self,
        commitment: Commitment,
        payment_id: Option<String>,
        web_bot_auth: Option<WebBotAuthRequest>,
    ) -> Checked {
        Checked {
            commitment,
            charge: self.charge,
            payment_id,
            phase: self.phase,
            resource_named_by_server: self.resource_named_by_server,
            web_bot_auth,
        }
    }
}

/// The `payment-identifier` extension: a well-formed id, or none (400 when it is required).
/// The spec's shape is `{"info": {"required", "id"?}, "schema"}`; a bare top-level
/// `required` (an older Tally shape) is read too.
pub(super) fn payment_identifier(extensions: Option<&Value>) -> Result<Option<String>, Refusal> {
    let extension = extensions.and_then(|e| e.get(EXTENSION_PAYMENT_IDENTIFIER));
    let info = extension.and_then(|e| e.get("info"));
    let required = [info, extension]
        .into_iter()
        .flatten()
        .find_map(|object| object.get("required").and_then(Value::as_bool))
        .unwrap_or(false);
    match info.and_then(|i| i.get("id")) {
        None | Some(Value::Null) if required => Err(Refusal::bad_request(Reason::PaymentIdentifierRequired)),
        None | Some(Value::Null) => Ok(None),
        Some(id) => match id.as_str() {
            Some(id) if payment_id_is_valid(id) => Ok(Some(id.to_owned())),
            _ => Err(Refusal::bad_request(Reason::InvalidPayload)),
        },
    }
}

/// Scheme, network, asset and payee the same; the amount as the phase allows.
fn echoes(accepted: &PaymentRequirements, requirements: &PaymentRequirements) -> bool {
    accepted.scheme == requirements.scheme
        && accepted.network == requirements.network
        && accepted.asset == requirements.asset
        && accepted.pay_to == requirements.pay_to
}

/// The resource the request buys: the server's `extra.resource`, else the payload's `resource.url`.
fn requested_resource(request: &FacilitatorRequest) -> Result<(String, bool), Refusal> {
    let named = request.payment_requirements.extra.as_ref().and_then(|extra| extra.get("resource"));
    let server = match named {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_str().ok_or_else(|| Refusal::ok(Reason::InvalidPaymentRequirements))?),
    };
    let client = request.payment_payload.resource.as_ref().map(|r| r.url.as_str());
    match (server, client) {
        (Some(server), Some(client)) if server != client => Err(Refusal::ok(Reason::ResourceMismatch)),
        (Some(resource), _) if !resource.is_empty() => Ok((resource.to_owned(), true)),
        (None, Some(resource)) if !resource.is_empty() => Ok((resource.to_owned(), false)),
        _ => Err(Refusal::ok(Reason::ResourceMismatch)),
    }
}

/// Everything that needs no ledger: version, scheme, network, the offer and
/// the charge, the resource, the payload's format and fields, the payment
/// identifier; for Web Bot Auth also the RFC 9421 rules.
pub(super) fn check_request(facilitator: &super::Facilitator, body: &[u8], phase: Phase) -> Result<Checked, Refusal> {
    let request: FacilitatorRequest =
        serde_json::from_slice(body).map_err(|_| Refusal::bad_request(Reason::InvalidPayload))?;
    if request.x402_version != X402_VERSION || request.payment_payload.x402_version != X402_VERSION {
        return Err(Refusal::ok(Reason::InvalidX402Version));
    }
    let requirements = &request.payment_requirements;
    if requirements.scheme != SCHEME_BATCH_SETTLEMENT {
        return Err(Refusal::ok(Reason::UnsupportedScheme));
    }
    if requirements.network != facilitator.config.network {
        return Err(Refusal::ok(Reason::InvalidNetwork));
    }
    let accepted = &request.payment_payload.accepted;
    let bad_requirements = || Refusal::ok(Reason::InvalidPaymentRequirements);
    let charge = parse_canonical_units(&requirements.amount).ok_or_else(bad_requirements)?;
    let offered = parse_canonical_units(&accepted.amount).ok_or_else(bad_requirements)?;
    let amount_ok = match phase {
        Phase::Verify => charge == offered,
        Phase::Settle => charge <= offered,
    };
    if !echoes(accepted, requirements) || !amount_ok || charge == 0 {
        return Err(bad_requirements());
    }
    let (resource, resource_named_by_server) = requested_resource(&request)?;
    let terms = Terms { request: &request, offered, charge, resource, resource_named_by_server, phase };
    match request.payment_payload.payload.get("format").and_then(Value::as_str) {
        Some(FORMAT_TALLY_IOU) => check_tally_iou(&terms),
        Some(FORMAT_WEB_BOT_AUTH) => check_web_bot_auth_payment(facilitator, &terms),
        Some(FORMAT_PAY_PER_CRAWL) => check_pay_per_crawl_payment(facilitator, &terms),
        _ => Err(Refusal::ok(Reason::InvalidPayload)),
    }
}

fn check_tally_iou(terms: &Terms<'_>) -> Result<Checked, Refusal> {
    let request = terms.request;
    let requirements = &request.payment_requirements;
    let payload: TallyIouPayload = serde_json::from_value(request.payment_payload.payload.clone())
        .map_err(|_| Refusal::ok(Reason::InvalidPayload))?;
    let signed = payload.to_signed().map_err(Refusal::ok)?;
    let iou = &signed.iou;
    if iou.network != requirements.network {
        return Err(Refusal::ok(Reason::InvalidNetwork));
    }
    if iou.asset != requirements.asset || iou.payee != requirements.pay_to {
        return Err(Refusal::ok(Reason::InvalidPaymentRequirements));
    }
    if iou.amount < terms.offered {
        return Err(Refusal::ok(Reason::PriceNotAcceptable));
    }
    if iou.resource != terms.resource {
        return Err(Refusal::ok(Reason::ResourceMismatch));
    }
    let payment_id = payment_identifier(request.payment_payload.extensions.as_ref())?;
    if let Some(id) = &payment_id
        && nonce_for_payment_id(id) != iou.nonce
    {
        return Err(Refusal::bad_request(Reason::InvalidPayload));
    }
    let commitment = Commitment::tally_iou(signed).map_err(|_| Refusal::ok(Reason::InvalidPayload))?;
    Ok(terms.checked(commitment, payment_id, None))
}

/// A Web Bot Auth payment: the crawler's `PAYMENT-SIGNATURE` payload names
/// the amount; the RFC 9421 signature over the request binds it to the
/// crawler's key. The IOU is derived from the signature base, and the
/// signature itself is verified by the pipeline.
fn check_web_bot_auth_payment(facilitator: &super::Facilitator, terms: &Terms<'_>) -> Result<Checked, Refusal> {
    let request = terms.request;
    let requirements = &request.payment_requirements;
    let forwarded: WebBotAuthPayload = serde_json::from_value(request.payment_payload.payload.clone())
        .map_err(|_| Refusal::ok(Reason::InvalidPayload))?;
    // The crawler's own payload, which its signature covers.
    let signed_payload: PaymentPayload =
        decode_header_json(forwarded.payment_signature.as_bytes(), PAYMENT_SIGNATURE_BYTES_MAX)
            .map_err(|_| Refusal::ok(Reason::InvalidPaymentSignature))?;
    if signed_payload.x402_version != X402_VERSION {
        return Err(Refusal::ok(Reason::InvalidX402Version));
    }
    // The signed offer is the one the forwarded payload claims the client accepted.
    if signed_payload.accepted != request.payment_payload.accepted {
        return Err(Refusal::ok(Reason::InvalidPaymentRequirements));
    }
    let committed = &signed_payload.payload;
    let asset = committed.get("asset").and_then(Value::as_str);
    let amount = committed.get("amount").and_then(Value::as_str).and_then(parse_canonical_units);
    let (Some(asset), Some(amount)) = (asset, amount) else {
        return Err(Refusal::ok(Reason::InvalidPaymentSignature));
    };
    if asset != requirements.asset {
        return Err(Refusal::ok(Reason::InvalidPaymentRequirements));
    }
    if amount < terms.offered {
        return Err(Refusal::ok(Reason::PriceNotAcceptable));
    }
    // The derived IOU's resource is the signed payload's `resource.url`.
    if signed_payload.resource.as_ref().map(|r| r.url.as_str()) != Some(terms.resource.as_str()) {
        return Err(Refusal::ok(Reason::ResourceMismatch));
    }
    let payment_id = payment_identifier(signed_payload.extensions.as_ref())?;

    let parts = SignedRequestParts {
        authority: forwarded.authority,
        signature_agent: forwarded.signature_agent,
        signature_input: forwarded.signature_input,
        signature: forwarded.signature,
        payment_signature: forwarded.payment_signature,
    };
    let policy = VerifyPolicy {
        now_s: facilitator.pipeline.now_s(),
        skew_max_s: facilitator.config.web_bot_auth_skew_max_s,
        validity_max_s: facilitator.config.web_bot_auth_validity_max_s,
    };
    let directory = facilitator.pipeline.writer().directory();
    let checked = check_web_bot_auth(&parts, &policy, |keyid| directory.lookup_thumbprint(keyid))
        .map_err(|e| Refusal::ok(super::ledger::web_bot_auth_reason(&e)))?;
    let commitment = Commitment::web_bot_auth(checked.verified.public_key, checked.signature, &checked.signature_base)
        .map_err(|_| Refusal::ok(Reason::InvalidPaymentSignature))?;
    // The derivation rule must have produced exactly what was checked above.
    if commitment.signed.iou.amount != amount || commitment.signed.iou.resource != terms.resource {
        return Err(Refusal::ok(Reason::InvalidPaymentSignature));
    }
    let request =
        WebBotAuthRequest { signature_agent: parts.signature_agent, payment_signature: parts.payment_signature };
    Ok(terms.checked(commitment, payment_id, Some(request)))
}

/// A pay-per-crawl payment (Cloudflare's dialect): the crawler's RFC 9421
/// signature covers a price header instead of `PAYMENT-SIGNATURE`. The
/// signed price must pay the offer (`crawler-exact-price` equal to it,
/// `crawler-max-price` at least it); the IOU is derived from the base
/// (`tally_core::pay_per_crawl`), with the payee and resource the server's
/// requirements name, and its signature is verified by the pipeline.
fn check_pay_per_crawl_payment(facilitator: &super::Facilitator, terms: &Terms<'_>) -> Result<Checked, Refusal> {
    let request = terms.request;
    let requirements = &request.payment_requirements;
    let forwarded: PayPerCrawlPayload = serde_json::from_value(request.payment_payload.payload.clone())
        .map_err(|_| Refusal::ok(Reason::InvalidPayload))?;
    // The price is read at the asset's scale, which only the ledger knows. A point read of the
    // small assets column family (block cache), not a scan.
    let scale = match facilitator.ledger.asset(&requirements.asset) {
        Ok(Some(asset)) => asset.scale,
        Ok(None) => return Err(Refusal::ok(Reason::InvalidPaymentRequirements)),
        Err(_) if terms.phase == Phase::Verify => return Err(Facilitator::unavailable(Reason::UnexpectedVerifyError)),
        Err(_) => return Err(Facilitator::unavailable(Reason::UnexpectedSettleError)),
    };
    let parts = PayPerCrawlParts {
        authority: forwarded.authority,
        signature_agent: forwarded.signature_agent,
        signature_input: forwarded.signature_input,
        signature: forwarded.signature,
        price_header: forwarded.price_header,
        price: forwarded.price,
    };
    let policy = VerifyPolicy {
        now_s: facilitator.pipeline.now_s(),
        skew_max_s: facilitator.config.web_bot_auth_skew_max_s,
        validity_max_s: facilitator.config.web_bot_auth_validity_max_s,
    };
    let directory = facilitator.pipeline.writer().directory();
    let checked = check_pay_per_crawl(&parts, &policy, |keyid| directory.lookup_thumbprint(keyid))
        .map_err(|e| Refusal::ok(super::ledger::web_bot_auth_reason(&e)))?;
    let key = checked.verified.public_key;
    let price = tally_core::pay_per_crawl::signed_price(&checked.signature_base, &key, scale)
        .map_err(|_| Refusal::ok(Reason::PriceNotAcceptable))?;
    if price.asset != requirements.asset {
        return Err(Refusal::ok(Reason::InvalidPaymentRequirements));
    }
    let pays = if price.header == tally_core::pay_per_crawl::PRICE_HEADER_EXACT {
        price.amount == terms.offered
    } else {
        price.amount >= terms.offered
    };
    if !pays {
        return Err(Refusal::ok(Reason::PriceNotAcceptable));
    }
    // The signature covers the host, not the path: the URL sold must be on that host.
    let on_signed_host = tally_core::pay_per_crawl::resource_authority(&terms.resource)
        .is_some_and(|authority| authority.eq_ignore_ascii_case(&parts.authority));
    if !on_signed_host {
        return Err(Refusal::ok(Reason::ResourceMismatch));
    }
    let deal = tally_core::pay_per_crawl::PayPerCrawlTerms {
        network: requirements.network.clone(),
        payee: requirements.pay_to.clone(),
        resource: terms.resource.clone(),
        scale,
    };
    let commitment = Commitment::pay_per_crawl(key, checked.signature, &checked.signature_base, &deal)
        .map_err(|_| Refusal::ok(Reason::InvalidPayload))?;
    let request = WebBotAuthRequest { signature_agent: parts.signature_agent, payment_signature: String::new() };
    Ok(terms.checked(commitment, None, Some(request)))
}

impl Refusal {
    pub(super) fn ok(reason: Reason) -> Refusal {
        Refusal { reason, status: StatusCode::OK, payer: None }
    }

    pub(super) fn bad_request(reason: Reason) -> Refusal {
        Refusal { reason, status: StatusCode::BAD_REQUEST, payer: None }
    }
}

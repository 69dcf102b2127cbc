//! The facilitator's reads of the ledger: who the payer is, whether it may
//! sign as the signature agent it claims, and what an earlier use of the
//! commitment's nonce means.
//!
//! `/verify` previews the writer's decisions from these reads (recording
//! nothing); Web Bot Auth `/settle` needs them before the writer, because a
//! payment identifier's retry under a fresh HTTP signature is answered from
//! the record instead of being submitted again.

use axum::http::StatusCode;
use tally_core::evidence::{evidence_iou_bytes, signature_base_value};
use tally_core::{EvidenceKind, Outcome, Payer};
use tally_ledger::{Ledger, LedgerError, StoredIou};

use super::Refusal;
use super::check::{Checked, Phase, RetryTerms};
use crate::types::Reason;
use crate::webbotauth::WebBotAuthError;

/// What a key's earlier use of the same nonce means for a new commitment.
pub(super) enum Replay {
    /// No earlier use.
    Fresh,
    /// The same payment again (the original record).
    Same(StoredIou),
    /// A different payment under the same nonce.
    Conflict,
}

/// Compares a stored record with a new commitment under the same `(key, nonce)`. Identical
/// IOUs are the same payment. So is a Web Bot Auth payment with a payment identifier whose
/// retry carries the same `PAYMENT-SIGNATURE` under a fresh HTTP signature (the id fixes the nonce).
fn classify_replay(stored: Option<StoredIou>, checked: &Checked) -> Replay {
    let Some(stored) = stored else { return Replay::Fresh };
    // The writer's rule: the same IOU is the same promise, however it was signed.
    if evidence_iou_bytes(&stored.evidence) == evidence_iou_bytes(&checked.commitment.evidence) {
        return Replay::Same(stored);
    }
    let same_payment = match (&checked.web_bot_auth, &checked.payment_id, stored.evidence()) {
        (Some(request), Some(_), Ok(evidence)) if evidence.kind == EvidenceKind::WebBotAuth => evidence
            .signed_message()
            .and_then(|base| std::str::from_utf8(base).ok())
            .and_then(|base| signature_base_value(base, "payment-signature"))
            .is_some_and(|value| value == request.payment_signature),
        _ => false,
    };
    if same_payment { Replay::Same(stored) } else { Replay::Conflict }
}

/// The `Signature-Agent` value as a plain URL: a structured-field string (`"https://…"`), a
/// dictionary with one string member (`agent1="https://…"`), or a bare value.
fn unquote_signature_agent(value: &str) -> String {
    if let Ok(item) = sfv::Parser::new(value).parse_item()
        && let Some(text) = item.bare_item.as_string()
    {
        return text.as_str().to_owned();
    }
    if let Ok(dictionary) = sfv::Parser::new(value).parse_dictionary()
        && dictionary.len() == 1
        && let Some((_, sfv::ListEntry::Item(item))) = dictionary.iter().next()
        && let Some(text) = item.bare_item.as_string()
    {
        return text.as_str().to_owned();
    }
    value.to_owned()
}

/// Web Bot Auth's identity rule: a payer that registered a signature agent must sign as that agent;
/// a payer that did not may not claim an agent registered to someone else.
/// `Ok(false)` is a refusal; `Err` means the ledger could not answer.
fn signature_agent_allowed(ledger: &Ledger, payer: &Payer, claimed: Option<&str>) -> Result<bool, LedgerError> {
    let claimed = claimed.map(unquote_signature_agent);
    Ok(match (&payer.signature_agent, claimed) {
        (Some(registered), Some(claimed)) => *registered == claimed,
        (Some(_), None) => false,
        (None, Some(claimed)) => ledger.payer_by_signature_agent(&claimed)?.is_none_or(|owner| owner.id == payer.id),
        (None, None) => true,
    })
}

/// A Web Bot Auth refusal's x402 reason (the Cloudflare binding's codes).
pub(super) fn web_bot_auth_reason(error: &WebBotAuthError) -> Reason {
    match error.reason_code() {
        "invalid_payment_signature" => Reason::InvalidPaymentSignature,
        "invalid_payload" => Reason::InvalidPayload,
        "signature_agent_unknown" => Reason::SignatureAgentUnknown,
        _ => Reason::InvalidSignature,
    }
}

/// The x402 reason for a writer's refusal.
pub(super) fn outcome_reason(outcome: Outcome) -> Reason {
    match outcome {
        Outcome::Accepted | Outcome::Duplicate => unreachable!("successes carry no reason"),
        Outcome::Conflict => Reason::InvalidTransactionState,
        Outcome::BadSignature => Reason::InvalidSignature,
        // A Tally IOU's key (Web Bot Auth keys are looked up before the writer runs).
        Outcome::UnknownPayer => Reason::PayerKeyUnknown,
        Outcome::SuspendedPayer => Reason::PayerSuspended,
        Outcome::KeyRevoked => Reason::KeyRevoked,
        Outcome::PayeeSuspended => Reason::PayeeSuspended,
        Outcome::UnknownPayee | Outcome::UnknownAsset | Outcome::AssetDisabled => Reason::InvalidPaymentRequirements,
        Outcome::Expired | Outcome::NotYetValid | Outcome::ValidityTooLong => Reason::Expired,
        Outcome::InvalidAmount | Outcome::Malformed => Reason::InvalidPayload,
        Outcome::CreditLimitExceeded => Reason::InsufficientFunds,
        Outcome::WrongNetwork => Reason::InvalidNetwork,
    }
}

/// A different payment under a used nonce: 409 with a payment identifier, otherwise a plain refusal.
pub(super) fn conflict(has_payment_id: bool, payer: Option<String>) -> Refusal {
    if has_payment_id {
        Refusal { reason: Reason::PaymentIdentifierConflict, status: StatusCode::CONFLICT, payer }
    } else {
        Refusal { reason: Reason::InvalidTransactionState, status: StatusCode::OK, payer }
    }
}

/// Whether an already-recorded payment may be answered with its cached
/// result (the `payment-identifier` rules), given what was recorded.
///
/// Only a retry of *the same request* is: the client sent a payment id, the
/// resource server named the resource it sells (so the IOU's resource, which
/// the checks compared with it, is this request's), and the server asks the
/// charge that was recorded. A different charge under the same id is a
/// different request (409): answering it from the cache would let whoever
/// settled first (the crawler itself, `/settle` is public) set the price.
/// Without a server-named resource, the same payment might be presented for
/// another route, so it buys nothing more (`payment_already_used`).
pub(super) fn cached_retry(terms: RetryTerms, recorded_charge: u64, payer: Option<String>) -> Result<(), Refusal> {
    if !terms.has_payment_id || !terms.resource_named_by_server {
        return Err(Refusal { reason: Reason::PaymentAlreadyUsed, status: StatusCode::OK, payer });
    }
    // `/verify` previews at the offer; under dynamic pricing the recorded
    // charge may be lower, and `/settle` then checks it exactly.
    let same_request = match terms.phase {
        Phase::Verify => recorded_charge <= terms.charge,
        Phase::Settle => recorded_charge == terms.charge,
    };
    if !same_request {
        return Err(conflict(true, payer));
    }
    Ok(())
}

/// The ledger reads shared by `/verify` and Web Bot Auth `/settle`: the payer
/// behind the key, its signature agent, and any earlier use of the nonce. The
/// outer `Err` is a ledger failure; the inner one a refusal.
pub(super) fn ledger_checks(
    ledger: &Ledger,
    checked: &Checked,
) -> Result<Result<(Payer, Replay), Refusal>, LedgerError> {
    let iou = &checked.commitment.signed.iou;
    // An unknown key is the binding's `signature_agent_unknown` only for an
    // HTTP signature; a Tally IOU's unknown key has Tally's own code.
    let unknown = if checked.web_bot_auth.is_some() { Reason::SignatureAgentUnknown } else { Reason::PayerKeyUnknown };
    let Some(payer_id) = ledger.key_owner(&iou.payer_key)? else {
        return Ok(Err(Refusal::ok(unknown)));
    };
    let Some(payer) = ledger.payer(&payer_id)? else {
        return Ok(Err(Refusal::ok(unknown)));
    };
    if let Some(request) = &checked.web_bot_auth
        && !signature_agent_allowed(ledger, &payer, request.signature_agent.as_deref())?
    {
        return Ok(Err(Refusal {
            reason: Reason::SignatureAgentUnknown,
            status: StatusCode::OK,
            payer: Some(payer.id),
        }));
    }
    let replay = classify_replay(ledger.lookup_iou(&iou.payer_key, &iou.nonce)?, checked);
    Ok(Ok((payer, replay)))
}

//! The x402 v2 objects, exactly as the protocol names them (camelCase JSON,
//! amounts as decimal strings), and the reason codes Tally answers with.
//!
//! Unknown fields are accepted and ignored (clients add extensions), but
//! every field Tally reads is typed: a wrong type is `invalid_payload`, not
//! a guess.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The only protocol version Tally speaks.
pub const X402_VERSION: u32 = 2;
/// The deferred scheme.
pub const SCHEME_BATCH_SETTLEMENT: &str = "batch-settlement";
/// The idempotency extension's key.
pub const EXTENSION_PAYMENT_IDENTIFIER: &str = "payment-identifier";

/// `PaymentRequirements`: one way a resource server accepts payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    pub scheme: String,
    pub network: String,
    /// Smallest units of `asset`, as a decimal string.
    pub amount: String,
    pub asset: String,
    pub pay_to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// `resource` of a `PaymentRequired` or `PaymentPayload`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// `PaymentRequired`: the body of a 402 (base64 JSON in `PAYMENT-REQUIRED`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    pub x402_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub resource: ResourceInfo,
    pub accepts: Vec<PaymentRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
}

/// `PaymentPayload`: what the client sends (base64 JSON in `PAYMENT-SIGNATURE`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    pub x402_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceInfo>,
    pub accepted: PaymentRequirements,
    /// Scheme-specific: for Tally, see [`crate::commitment`].
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
}

/// The body of `POST /verify` and `POST /settle`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest {
    pub x402_version: u32,
    pub payment_payload: PaymentPayload,
    pub payment_requirements: PaymentRequirements,
}

/// `POST /verify`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    pub is_valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// A sentence saying why, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
}

/// `POST /settle`'s answer. `transaction` is the commitment identifier
/// (`<seq>:<hash>`), or `""` on failure; `amount` is what was charged (the
/// server's settle-time amount, at most what the client committed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// A sentence saying why, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    pub transaction: String,
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
}

/// One entry of `GET /supported`'s `kinds`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    pub x402_version: u32,
    pub scheme: String,
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// `GET /supported`'s answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedResponse {
    pub kinds: Vec<SupportedKind>,
    pub extensions: Vec<String>,
    /// Pattern → signer addresses. Tally signs nothing on chain at commit
    /// time, so the map is empty.
    pub signers: serde_json::Map<String, Value>,
}

/// Why a payment was refused, in three families:
///
/// - **x402's generic codes** (the protocol's own list) wherever one fits:
///   `invalid_payload`, `invalid_payment_requirements`, `invalid_scheme`,
///   `unsupported_scheme`, `invalid_network`, `invalid_x402_version`,
///   `insufficient_funds`, `invalid_transaction_state`,
///   `unexpected_verify_error`, `unexpected_settle_error`;
/// - **the `batch-settlement` binding's codes** (the Cloudflare binding names
///   them): `price_not_acceptable`, `invalid_signature`,
///   `signature_agent_unknown` (Web Bot Auth only: an HTTP signature whose
///   agent or key is not registered), `invalid_payment_signature`;
/// - **Tally's own**, prefixed `tally_` so no client mistakes them for the
///   protocol's: what a credit-backed ledger refuses that the protocol has no
///   name for (`docs/x402-binding.md` lists each).
///
/// Every refusal also carries a sentence ([`Reason::message`]) in
/// `invalidMessage` / `errorMessage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    InvalidPayload,
    InvalidPaymentRequirements,
    InvalidScheme,
    UnsupportedScheme,
    InvalidNetwork,
    InvalidX402Version,
    InsufficientFunds,
    InvalidTransactionState,
    UnexpectedVerifyError,
    UnexpectedSettleError,
    PriceNotAcceptable,
    InvalidSignature,
    /// Web Bot Auth: the signature agent (or the key `keyid` names) is not registered.
    SignatureAgentUnknown,
    InvalidPaymentSignature,
    /// A Tally IOU signed by a key no payer has registered.
    PayerKeyUnknown,
    /// The IOU's validity window is closed or not yet open.
    Expired,
    /// The payer is registered but suspended.
    PayerSuspended,
    /// The payment identifier was used with a different payload.
    PaymentIdentifierConflict,
    /// The requirements demand a payment identifier and none came.
    PaymentIdentifierRequired,
    /// The commitment names another resource than the request buys (or none).
    ResourceMismatch,
    /// The payment was already settled for a request; without a payment
    /// identifier it buys no second one.
    PaymentAlreadyUsed,
    /// The payer revoked the key that signed the commitment.
    KeyRevoked,
    /// The payee is suspended.
    PayeeSuspended,
}

impl Reason {
    /// Every reason, for documentation and tests.
    pub const ALL: [Reason; 23] = [
        Reason::InvalidPayload,
        Reason::InvalidPaymentRequirements,
        Reason::InvalidScheme,
        Reason::UnsupportedScheme,
        Reason::InvalidNetwork,
        Reason::InvalidX402Version,
        Reason::InsufficientFunds,
        Reason::InvalidTransactionState,
        Reason::UnexpectedVerifyError,
        Reason::UnexpectedSettleError,
        Reason::PriceNotAcceptable,
        Reason::InvalidSignature,
        Reason::SignatureAgentUnknown,
        Reason::InvalidPaymentSignature,
        Reason::PayerKeyUnknown,
        Reason::Expired,
        Reason::PayerSuspended,
        Reason::PaymentIdentifierConflict,
        Reason::PaymentIdentifierRequired,
        Reason::ResourceMismatch,
        Reason::PaymentAlreadyUsed,
        Reason::KeyRevoked,
        Reason::PayeeSuspended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidPayload => "invalid_payload",
            Reason::InvalidPaymentRequirements => "invalid_payment_requirements",
            Reason::InvalidScheme => "invalid_scheme",
            Reason::UnsupportedScheme => "unsupported_scheme",
            Reason::InvalidNetwork => "invalid_network",
            Reason::InvalidX402Version => "invalid_x402_version",
            Reason::InsufficientFunds => "insufficient_funds",
            Reason::InvalidTransactionState => "invalid_transaction_state",
            Reason::UnexpectedVerifyError => "unexpected_verify_error",
            Reason::UnexpectedSettleError => "unexpected_settle_error",
            Reason::PriceNotAcceptable => "price_not_acceptable",
            Reason::InvalidSignature => "invalid_signature",
            Reason::SignatureAgentUnknown => "signature_agent_unknown",
            Reason::InvalidPaymentSignature => "invalid_payment_signature",
            Reason::PayerKeyUnknown => "tally_payer_key_unknown",
            Reason::Expired => "tally_expired",
            Reason::PayerSuspended => "tally_payer_suspended",
            Reason::PaymentIdentifierConflict => "tally_payment_identifier_conflict",
            Reason::PaymentIdentifierRequired => "tally_payment_identifier_required",
            Reason::ResourceMismatch => "tally_resource_mismatch",
            Reason::PaymentAlreadyUsed => "tally_payment_already_used",
            Reason::KeyRevoked => "tally_key_revoked",
            Reason::PayeeSuspended => "tally_payee_suspended",
        }
    }

    /// The reason with this wire code, if it is one of Tally's.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == code)
    }

    /// The sentence that goes with the code (`invalidMessage`, `errorMessage`).
    pub fn message(self) -> &'static str {
        match self {
            Reason::InvalidPayload => "the request or its payment payload is malformed",
            Reason::InvalidPaymentRequirements => {
                "the payment does not match the requirements, or names an asset or payee this network does not take"
            }
            Reason::InvalidScheme => "the scheme is not valid",
            Reason::UnsupportedScheme => "this facilitator settles only the batch-settlement scheme",
            Reason::InvalidNetwork => "the payment is for another network than this facilitator's",
            Reason::InvalidX402Version => "only x402 version 2 is supported",
            Reason::InsufficientFunds => "the payer's credit limit for this asset does not cover the charge",
            Reason::InvalidTransactionState => {
                "a different payment was already recorded under this payer key and nonce"
            }
            Reason::UnexpectedVerifyError => "the ledger could not be read; try again",
            Reason::UnexpectedSettleError => "the ledger could not record the payment; try again",
            Reason::PriceNotAcceptable => "the commitment does not cover the price",
            Reason::InvalidSignature => "the signature does not verify, or its parameters are out of bounds",
            Reason::SignatureAgentUnknown => {
                "the Web Bot Auth signature agent or key is not registered with this network"
            }
            Reason::InvalidPaymentSignature => "the signed payment-signature does not commit to this payment",
            Reason::PayerKeyUnknown => "the IOU's payer key is not registered with this network",
            Reason::Expired => "the commitment is outside its validity window",
            Reason::PayerSuspended => "the payer is suspended",
            Reason::PaymentIdentifierConflict => "this payment identifier was used for a different payment or charge",
            Reason::PaymentIdentifierRequired => "the offer requires a payment identifier",
            Reason::ResourceMismatch => "the commitment names another resource than the one requested",
            Reason::PaymentAlreadyUsed => "this payment was already used for a request; it buys no second one",
            Reason::KeyRevoked => "the key that signed the commitment has been revoked",
            Reason::PayeeSuspended => "the payee is suspended",
        }
    }
}

/// A facilitator's reason code as a resource server may echo it: a short
/// identifier, or `unexpected_settle_error` for anything else (never a
/// facilitator's free text in a header, a body or a metric label).
pub fn echoable_reason(reason: Option<&str>) -> &str {
    match reason {
        Some(reason) if reason.len() <= 64 && reason.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => reason,
        _ => Reason::UnexpectedSettleError.as_str(),
    }
}

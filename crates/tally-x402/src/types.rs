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

/// Why a payment was refused. The wire strings are the protocol's (the
/// generic codes) or the Cloudflare binding's (the Web Bot Auth codes), plus
/// Tally's own per-IOU codes for what those do not name.
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
    SignatureAgentUnknown,
    InvalidPaymentSignature,
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
            Reason::Expired => "expired",
            Reason::PayerSuspended => "payer_suspended",
            Reason::PaymentIdentifierConflict => "payment_identifier_conflict",
            Reason::PaymentIdentifierRequired => "payment_identifier_required",
            Reason::ResourceMismatch => "resource_mismatch",
            Reason::PaymentAlreadyUsed => "payment_already_used",
            Reason::KeyRevoked => "key_revoked",
            Reason::PayeeSuspended => "payee_suspended",
        }
    }
}

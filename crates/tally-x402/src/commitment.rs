//! Tally's commitment formats inside `paymentPayload.payload`.
//!
//! **`tally-iou-v1`**: the same canonical signed IOU as over gRPC
//! (`docs/iou-format.md`), with binary fields in lower-case hex and the
//! amount as a decimal string:
//!
//! ```json
//! {"format":"tally-iou-v1",
//!  "iou":{"network":"tally:local","payerKey":"<64 hex>","payee":"site.example","asset":"USD",
//!         "amount":"1000","nonce":"<32 hex>","issuedAt":1767225600,"expiresAt":1767225900,
//!         "resource":"https://site.example/page"},
//!  "signature":"<128 hex>"}
//! ```
//!
//! **`web-bot-auth`**: a Web Bot Auth payment ([`WebBotAuthPayload`]): the
//! resource server forwards `@authority`, `Signature-Agent`, `Signature-Input`,
//! `Signature` and the `PAYMENT-SIGNATURE` value; the IOU is derived from the
//! signature base (`tally_core::evidence`).
//!
//! **Payment identifiers** (the `payment-identifier` extension, shaped
//! `{"info": {"required": bool, "id"?: string}, "schema": …}` in offers and
//! payloads) map onto the ledger's replay index: the IOU's nonce must be
//! [`nonce_for_payment_id`]`(id)`. The same id with the same payload is then
//! a duplicate the ledger answers with the original commitment (the cached
//! result); the same id with a different payload is a conflict (HTTP 409).
//! Both hold across restarts, because the replay index is durable.

use serde::{Deserialize, Serialize};
use tally_core::{Iou, SignedIou};

use crate::types::Reason;

pub const FORMAT_TALLY_IOU: &str = "tally-iou-v1";
/// The Web Bot Auth format: the resource server forwards the signed request's parts.
pub const FORMAT_WEB_BOT_AUTH: &str = "web-bot-auth";
/// A pay-per-crawl request: a Web Bot Auth signature covering a `crawler-exact-price` or
/// `crawler-max-price` header (Cloudflare's dialect) instead of `PAYMENT-SIGNATURE`.
pub const FORMAT_PAY_PER_CRAWL: &str = "pay-per-crawl";
pub use tally_core::evidence::{PAYMENT_ID_LEN_MAX, PAYMENT_ID_LEN_MIN};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IouJson {
    pub network: String,
    pub payer_key: String,
    pub payee: String,
    pub asset: String,
    pub amount: String,
    pub nonce: String,
    pub issued_at: u64,
    pub expires_at: u64,
    pub resource: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TallyIouPayload {
    pub format: String,
    pub iou: IouJson,
    pub signature: String,
}

fn hex_array<const N: usize>(text: &str) -> Result<[u8; N], Reason> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| Reason::InvalidPayload)?;
    Ok(out)
}

impl TallyIouPayload {
    /// Encodes a signed IOU for JSON.
    pub fn from_signed(signed: &SignedIou) -> TallyIouPayload {
        let iou = &signed.iou;
        TallyIouPayload {
            format: FORMAT_TALLY_IOU.to_owned(),
            iou: IouJson {
                network: iou.network.clone(),
                payer_key: hex::encode(iou.payer_key),
                payee: iou.payee.clone(),
                asset: iou.asset.clone(),
                amount: iou.amount.to_string(),
                nonce: hex::encode(iou.nonce),
                issued_at: iou.issued_at_s,
                expires_at: iou.expires_at_s,
                resource: iou.resource.clone(),
            },
            signature: hex::encode(signed.signature),
        }
    }

    /// Decodes, refusing anything malformed with `invalid_payload`.
    pub fn to_signed(&self) -> Result<SignedIou, Reason> {
        if self.format != FORMAT_TALLY_IOU {
            return Err(Reason::InvalidPayload);
        }
        let j = &self.iou;
        // One spelling per amount: "+5" or "05" is refused, not read as 5.
        let amount = tally_core::parse_canonical_units(&j.amount).ok_or(Reason::InvalidPayload)?;
        let iou = Iou {
            network: j.network.clone(),
            payer_key: hex_array(&j.payer_key)?,
            payee: j.payee.clone(),
            asset: j.asset.clone(),
            amount,
            nonce: hex_array(&j.nonce)?,
            issued_at_s: j.issued_at,
            expires_at_s: j.expires_at,
            resource: j.resource.clone(),
        };
        iou.check_shape().map_err(|_| Reason::InvalidPayload)?;
        Ok(SignedIou { iou, signature: hex_array(&self.signature)? })
    }
}

pub use tally_core::evidence::{nonce_for_payment_id, payment_id_is_valid};

/// The `payment-identifier` extension's JSON schema, as the x402 spec gives it.
pub fn payment_identifier_schema() -> serde_json::Value {
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "required": { "type": "boolean" },
            "id": { "type": "string", "minLength": PAYMENT_ID_LEN_MIN, "maxLength": PAYMENT_ID_LEN_MAX }
        },
        "required": ["required"]
    })
}

/// The extension as a server offers it: `{"info": {"required": …}, "schema": …}`.
pub fn payment_identifier_offer(required: bool) -> serde_json::Value {
    serde_json::json!({ "info": { "required": required }, "schema": payment_identifier_schema() })
}

/// The extension as a client echoes it with its `id`.
pub fn payment_identifier_echo(required: bool, id: &str) -> serde_json::Value {
    serde_json::json!({ "info": { "required": required, "id": id }, "schema": payment_identifier_schema() })
}

/// The `info` object of the `payment-identifier` extension among `extensions`
/// (an offer's or a payload's), if there is one.
pub fn payment_identifier_info(extensions: Option<&serde_json::Value>) -> Option<&serde_json::Value> {
    extensions?.get(crate::types::EXTENSION_PAYMENT_IDENTIFIER)?.get("info")
}

/// `paymentPayload.payload` for a Web Bot Auth payment: what the resource server forwards from the
/// crawler's signed request. The commitment is the RFC 9421 signature itself; the crawler's own
/// `PAYMENT-SIGNATURE` payload (`{"amount", "asset"}` plus `accepted`) is one of the covered
/// components, so the amount is bound to the crawler's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebBotAuthPayload {
    pub format: String,
    /// The request's `@authority` (host, lowercase, non-default port kept).
    pub authority: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_agent: Option<String>,
    pub signature_input: String,
    pub signature: String,
    /// The `PAYMENT-SIGNATURE` header value, verbatim (base64 JSON).
    pub payment_signature: String,
}

/// `paymentPayload.payload` for a pay-per-crawl payment: the crawler's signed request's parts and
/// the one price header its signature covers (`crawler-exact-price` or `crawler-max-price`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PayPerCrawlPayload {
    pub format: String,
    pub authority: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_agent: Option<String>,
    pub signature_input: String,
    pub signature: String,
    pub price_header: String,
    /// The price header's value, verbatim (`USD 0.01`).
    pub price: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SignedIou {
        SignedIou {
            iou: Iou {
                network: "tally:test".into(),
                payer_key: [7; 32],
                payee: "site.example".into(),
                asset: "USD".into(),
                amount: 1_000,
                nonce: [9; 16],
                issued_at_s: 1_700_000_000,
                expires_at_s: 1_700_000_300,
                resource: "https://site.example/a".into(),
            },
            signature: [3; 64],
        }
    }

    #[test]
    fn round_trips_through_json() {
        let payload = TallyIouPayload::from_signed(&sample());
        let json = serde_json::to_value(&payload).unwrap();
        assert_eq!(json["iou"]["payerKey"], hex::encode([7u8; 32]));
        assert_eq!(json["iou"]["amount"], "1000");
        let back: TallyIouPayload = serde_json::from_value(json).unwrap();
        assert_eq!(back.to_signed().unwrap(), sample());
    }

    #[test]
    fn refuses_malformed_fields() {
        for amount in ["-1", "+1000", "01000", " 1000", ""] {
            let mut payload = TallyIouPayload::from_signed(&sample());
            payload.iou.amount = amount.into();
            assert_eq!(payload.to_signed(), Err(Reason::InvalidPayload), "{amount:?}");
        }
        let mut payload = TallyIouPayload::from_signed(&sample());
        payload.signature = "zz".into();
        assert_eq!(payload.to_signed(), Err(Reason::InvalidPayload));
        let mut payload = TallyIouPayload::from_signed(&sample());
        payload.format = "other".into();
        assert_eq!(payload.to_signed(), Err(Reason::InvalidPayload));
    }

    #[test]
    fn payment_ids() {
        assert!(payment_id_is_valid("order-2026-11-22_0001"));
        assert!(!payment_id_is_valid("short"));
        assert!(!payment_id_is_valid("has space in it, too long"));
        assert_ne!(nonce_for_payment_id("abcdefghijklmnop"), nonce_for_payment_id("abcdefghijklmnoq"));
    }
}

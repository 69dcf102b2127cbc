//! # Crawler client: fetch a paywalled URL, paying with a Tally IOU
//!
//! [`Crawler::fetch`] runs the client's half of the x402 v2 handshake against
//! a resource server that offers `batch-settlement` on Tally's network:
//!
//! 1. `GET url`. Anything but `402` is returned as is (nothing is paid).
//! 2. On `402`, decode `PAYMENT-REQUIRED` (bounded by
//!    [`PAYMENT_REQUIRED_HEADER_BYTES_MAX`]) and pick the offer whose scheme is
//!    `batch-settlement` and whose network is the crawler's. Refuse it if it
//!    asks more than [`Crawler::with_max_price`].
//! 3. Build and sign a Tally IOU (`tally-iou-v1`): amount = the price,
//!    payee = `payTo`, the asset, a fresh random 16-byte nonce (or
//!    [`nonce_for_payment_id`] with [`Crawler::fetch_with_payment_id`]), valid
//!    from now for [`IOU_VALIDITY_S`], resource = the offer's `resource.url`
//!    (what the server sells, byte for byte: the facilitator refuses an IOU
//!    for any other resource). Wrap it in a [`PaymentPayload`] that echoes the
//!    offer in `accepted` (and the `payment-identifier` extension with its
//!    `id`), base64 its JSON into `PAYMENT-SIGNATURE`, and retry **exactly once**.
//! 4. The retry is also signed with **Web Bot Auth** (RFC 9421): the
//!    `Signature-Agent`, `Signature-Input` and `Signature` headers cover
//!    `@authority`, `signature-agent` and `payment-signature`, binding the
//!    payment to the crawler's key. With [`PaymentFormat::WebBotAuth`] that
//!    signature *is* the commitment: `PAYMENT-SIGNATURE` carries only
//!    `{amount, asset}` (the Cloudflare binding), and Tally's facilitator
//!    verifies the request signature and records the IOU it implies.
//!
//! The answer ([`PaidResponse`]) carries the status, the body (bounded by
//! [`Crawler::with_body_bytes_max`]), the decoded `PAYMENT-RESPONSE` receipt on
//! success, and the decoded `PAYMENT-REQUIRED` (with its `error` reason code)
//! when the payment was refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::json;
use tally_core::{Iou, SignedIou};

use crate::commitment::{TallyIouPayload, nonce_for_payment_id, payment_id_is_valid};
use crate::middleware::{
    HEADER_PAYMENT_REQUIRED, HEADER_PAYMENT_RESPONSE, HEADER_PAYMENT_SIGNATURE, PaymentResponse, decode_header_json,
    encode_header_json,
};
use crate::types::*;
use crate::webbotauth::{PAYMENT_SIGNATURE_BYTES_MAX, sign_web_bot_auth};

/// Largest `PAYMENT-REQUIRED` header the crawler decodes.
pub const PAYMENT_REQUIRED_HEADER_BYTES_MAX: usize = 16 * 1024;
/// Largest `PAYMENT-RESPONSE` header the crawler decodes.
pub const PAYMENT_RESPONSE_HEADER_BYTES_MAX: usize = 8 * 1024;
/// Default largest response body read.
pub const BODY_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;
/// How long each IOU (and each Web Bot Auth signature) stays valid.
pub const IOU_VALIDITY_S: u64 = 120;
/// Default per-request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Placeholder `Signature-Agent` (a structured-field string, quotes included)
/// until [`Crawler::with_signature_agent`] names the crawler's key directory.
pub const SIGNATURE_AGENT_DEFAULT: &str = "\"https://crawler.invalid\"";

/// Why a fetch failed before it produced a response to show.
#[derive(Debug, thiserror::Error)]
pub enum CrawlerError {
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("response body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("402 without a decodable PAYMENT-REQUIRED header: {0}")]
    MalformedPaymentRequired(String),
    #[error("malformed PAYMENT-RESPONSE header: {0}")]
    MalformedPaymentResponse(String),
    #[error("no batch-settlement offer on network {0}")]
    NoAcceptableOffer(String),
    #[error("the offer is malformed: {0}")]
    InvalidOffer(String),
    #[error("the price {price} is above this crawler's maximum {max}")]
    PriceTooHigh { price: u64, max: u64 },
    #[error("invalid payment identifier")]
    InvalidPaymentId,
    #[error("cannot sign the request: {0}")]
    Signing(String),
    #[error("no system randomness: {0}")]
    Randomness(String),
}

/// The outcome of [`Crawler::fetch`].
#[derive(Clone, Debug)]
pub struct PaidResponse {
    /// The final HTTP status (after the paid retry, if there was one).
    pub status: u16,
    /// The final body.
    pub body: Vec<u8>,
    /// Whether a paid retry was sent.
    pub paid: bool,
    /// The decoded `PAYMENT-RESPONSE` receipt, if the server sent one.
    pub payment_response: Option<PaymentResponse>,
    /// The decoded `PAYMENT-REQUIRED` of a final 402/409, if any.
    pub payment_required: Option<PaymentRequired>,
}

impl PaidResponse {
    /// The reason code a refused payment came back with (`PAYMENT-REQUIRED.error`).
    pub fn error(&self) -> Option<&str> {
        self.payment_required.as_ref().and_then(|r| r.error.as_deref())
    }
}

/// How a crawler commits to a payment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PaymentFormat {
    /// A signed Tally IOU inside `PAYMENT-SIGNATURE` (`tally-iou-v1`).
    #[default]
    TallyIou,
    /// The Cloudflare binding: `PAYMENT-SIGNATURE` carries only `{amount, asset}`, and the Web Bot
    /// Auth signature over the request (which covers it) is the commitment.
    WebBotAuth,
}

/// A crawler that pays for what it fetches with Tally IOUs or Web Bot Auth commitments.
#[derive(Clone, Debug)]
pub struct Crawler {
    key: SigningKey,
    network: String,
    http: reqwest::Client,
    signature_agent: String,
    max_price: Option<u64>,
    body_bytes_max: usize,
    format: PaymentFormat,
}

fn unix_now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Reads at most `max` bytes of a response body.
async fn read_bounded(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, CrawlerError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Err(CrawlerError::BodyTooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `@authority` for Web Bot Auth: the lowercase host, with the port if it is not the default.
fn authority(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?.to_ascii_lowercase();
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

impl Crawler {
    /// A crawler signing with `key` on `network` (e.g. `tally:local`).
    pub fn new(key: SigningKey, network: &str) -> Crawler {
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap_or_default();
        Crawler {
            key,
            network: network.to_owned(),
            http,
            signature_agent: SIGNATURE_AGENT_DEFAULT.to_owned(),
            max_price: None,
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            format: PaymentFormat::default(),
        }
    }

    /// Commits with `format` (default: a Tally IOU).
    pub fn with_format(mut self, format: PaymentFormat) -> Crawler {
        self.format = format;
        self
    }

    /// Uses this HTTP client instead of the default one.
    pub fn with_http(mut self, http: reqwest::Client) -> Crawler {
        self.http = http;
        self
    }

    /// The `Signature-Agent` header value, exactly as sent: a structured-field
    /// string naming the key directory, quotes included, e.g.
    /// `"\"https://crawler.example\""`.
    pub fn with_signature_agent(mut self, signature_agent: &str) -> Crawler {
        self.signature_agent = signature_agent.to_owned();
        self
    }

    /// Refuses offers above `max` smallest units.
    pub fn with_max_price(mut self, max: u64) -> Crawler {
        self.max_price = Some(max);
        self
    }

    /// Reads at most `max` bytes of each response body.
    pub fn with_body_bytes_max(mut self, max: usize) -> Crawler {
        self.body_bytes_max = max;
        self
    }

    /// The crawler's public key (what `tally payer register --key` wants).
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Fetches `url`, paying once with a fresh random nonce if asked to.
    pub async fn fetch(&self, url: &str) -> Result<PaidResponse, CrawlerError> {
        self.fetch_inner(url, None).await
    }

    /// Fetches `url`, paying under a payment identifier (16..=128 of
    /// `[A-Za-z0-9_-]`): the IOU's nonce is derived from it, so the same
    /// identifier is never charged twice. The IOU is re-signed with the current
    /// time on each call: a retry within the same second is byte-identical and
    /// gets the original commitment back; a later one is a different payload
    /// under the same identifier, which the facilitator refuses (the site
    /// passes that through as 409 `payment_identifier_conflict`).
    pub async fn fetch_with_payment_id(&self, url: &str, payment_id: &str) -> Result<PaidResponse, CrawlerError> {
        if !payment_id_is_valid(payment_id) {
            return Err(CrawlerError::InvalidPaymentId);
        }
        self.fetch_inner(url, Some(payment_id)).await
    }

    async fn fetch_inner(&self, url: &str, payment_id: Option<&str>) -> Result<PaidResponse, CrawlerError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| CrawlerError::InvalidUrl(url.to_owned()))?;
        let authority = authority(&parsed).ok_or_else(|| CrawlerError::InvalidUrl(url.to_owned()))?;

        let first = self.http.get(parsed.clone()).send().await?;
        if first.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
            return self.finish(first, false).await;
        }
        let required: PaymentRequired = first
            .headers()
            .get(HEADER_PAYMENT_REQUIRED)
            .ok_or_else(|| CrawlerError::MalformedPaymentRequired("header missing".into()))
            .and_then(|h| {
                decode_header_json(h.as_bytes(), PAYMENT_REQUIRED_HEADER_BYTES_MAX)
                    .map_err(|e| CrawlerError::MalformedPaymentRequired(e.to_string()))
            })?;
        let offer = required
            .accepts
            .iter()
            .find(|o| o.scheme == SCHEME_BATCH_SETTLEMENT && o.network == self.network)
            .ok_or_else(|| CrawlerError::NoAcceptableOffer(self.network.clone()))?
            .clone();
        let price = tally_core::parse_canonical_units(&offer.amount)
            .ok_or_else(|| CrawlerError::InvalidOffer("amount".into()))?;
        if let Some(max) = self.max_price
            && price > max
        {
            return Err(CrawlerError::PriceTooHigh { price, max });
        }

        let payment_signature = self.payment_signature(&required, &offer, price, payment_id)?;
        let now = unix_now_s();
        // A fresh signature nonce makes every signed request distinct: under Web Bot Auth the
        // signature is the payment, and two fetches within one second must be two payments.
        let mut signature_nonce = [0u8; 16];
        getrandom::fill(&mut signature_nonce).map_err(|e| CrawlerError::Randomness(e.to_string()))?;
        let signature_nonce = hex::encode(signature_nonce);
        let headers = sign_web_bot_auth(
            &self.key,
            &authority,
            &self.signature_agent,
            &payment_signature,
            now,
            now + IOU_VALIDITY_S,
            Some(&signature_nonce),
        )
        .map_err(|e| CrawlerError::Signing(e.to_string()))?;
        let retry = self
            .http
            .get(parsed)
            .header(HEADER_PAYMENT_SIGNATURE, &payment_signature)
            .header("signature-agent", &self.signature_agent)
            .header("signature-input", headers.signature_input)
            .header("signature", headers.signature)
            .send()
            .await?;
        self.finish(retry, true).await
    }

    /// The `PAYMENT-SIGNATURE` value this crawler would send for `required`'s
    /// offer on its network (a Tally IOU payload; no Web Bot Auth headers):
    /// for callers that send the request themselves.
    pub fn payment_for(&self, required: &PaymentRequired) -> Result<String, CrawlerError> {
        let offer = required
            .accepts
            .iter()
            .find(|o| o.scheme == SCHEME_BATCH_SETTLEMENT && o.network == self.network)
            .ok_or_else(|| CrawlerError::NoAcceptableOffer(self.network.clone()))?;
        let price = tally_core::parse_canonical_units(&offer.amount)
            .ok_or_else(|| CrawlerError::InvalidOffer("amount".into()))?;
        self.payment_signature(required, offer, price, None)
    }

    /// Builds, signs and encodes the `PAYMENT-SIGNATURE` header value.
    fn payment_signature(
        &self,
        required: &PaymentRequired,
        offer: &PaymentRequirements,
        price: u64,
        payment_id: Option<&str>,
    ) -> Result<String, CrawlerError> {
        let payload = match self.format {
            PaymentFormat::TallyIou => self.signed_iou_payload(&required.resource.url, offer, price, payment_id)?,
            // The amount is committed by the Web Bot Auth signature, which covers this header.
            PaymentFormat::WebBotAuth => json!({ "amount": price.to_string(), "asset": offer.asset }),
        };
        // The client echoes the server's extension and adds its id (the spec's shape).
        let offered_required = crate::commitment::payment_identifier_info(required.extensions.as_ref())
            .and_then(|i| i.get("required"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        let extensions = payment_id.map(|id| {
            json!({ EXTENSION_PAYMENT_IDENTIFIER: crate::commitment::payment_identifier_echo(offered_required, id) })
        });
        let payment = PaymentPayload {
            x402_version: X402_VERSION,
            resource: Some(required.resource.clone()),
            accepted: offer.clone(),
            payload,
            extensions,
        };
        let encoded = encode_header_json(&payment);
        if encoded.len() > PAYMENT_SIGNATURE_BYTES_MAX {
            return Err(CrawlerError::InvalidOffer("the payment header would be too large".into()));
        }
        Ok(encoded)
    }

    /// A signed Tally IOU for the offer, as a `tally-iou-v1` payload, for `resource`.
    fn signed_iou_payload(
        &self,
        resource: &str,
        offer: &PaymentRequirements,
        price: u64,
        payment_id: Option<&str>,
    ) -> Result<serde_json::Value, CrawlerError> {
        let nonce = match payment_id {
            Some(id) => nonce_for_payment_id(id),
            None => {
                let mut nonce = [0u8; 16];
                getrandom::fill(&mut nonce).map_err(|e| CrawlerError::Randomness(e.to_string()))?;
                nonce
            }
        };
        let now = unix_now_s();
        let iou = Iou {
            network: offer.network.clone(),
            payer_key: self.public_key(),
            payee: offer.pay_to.clone(),
            asset: offer.asset.clone(),
            amount: price,
            nonce,
            issued_at_s: now,
            expires_at_s: now + IOU_VALIDITY_S,
            resource: resource.to_owned(),
        };
        iou.check_shape().map_err(|e| CrawlerError::InvalidOffer(e.to_string()))?;
        let signature = self.key.sign(&iou.signing_bytes()).to_bytes();
        let payload = TallyIouPayload::from_signed(&SignedIou { iou, signature });
        serde_json::to_value(payload).map_err(|e| CrawlerError::Signing(e.to_string()))
    }

    async fn finish(&self, response: reqwest::Response, paid: bool) -> Result<PaidResponse, CrawlerError> {
        let status = response.status().as_u16();
        let payment_response = match response.headers().get(HEADER_PAYMENT_RESPONSE) {
            None => None,
            Some(h) => Some(
                decode_header_json(h.as_bytes(), PAYMENT_RESPONSE_HEADER_BYTES_MAX)
                    .map_err(|e| CrawlerError::MalformedPaymentResponse(e.to_string()))?,
            ),
        };
        // A refusal's reason is informative; an undecodable one is simply absent.
        let payment_required = response
            .headers()
            .get(HEADER_PAYMENT_REQUIRED)
            .and_then(|h| decode_header_json(h.as_bytes(), PAYMENT_REQUIRED_HEADER_BYTES_MAX).ok());
        let body = read_bounded(response, self.body_bytes_max).await?;
        Ok(PaidResponse { status, body, paid, payment_response, payment_required })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_keeps_non_default_ports_only() {
        let url = reqwest::Url::parse("http://Site.Example:8080/a").unwrap();
        assert_eq!(authority(&url).as_deref(), Some("site.example:8080"));
        let url = reqwest::Url::parse("https://site.example/a").unwrap();
        assert_eq!(authority(&url).as_deref(), Some("site.example"));
    }

    #[test]
    fn payment_signature_is_a_decodable_signed_iou() {
        let crawler = Crawler::new(SigningKey::from_bytes(&[5; 32]), "tally:test");
        let offer = PaymentRequirements {
            scheme: SCHEME_BATCH_SETTLEMENT.into(),
            network: "tally:test".into(),
            amount: "1500".into(),
            asset: "USD".into(),
            pay_to: "site.example".into(),
            max_timeout_seconds: Some(60),
            extra: None,
        };
        let required = PaymentRequired {
            x402_version: 2,
            error: None,
            resource: ResourceInfo { url: "http://site.example/a".into(), description: None, mime_type: None },
            accepts: vec![offer.clone()],
            extensions: None,
        };
        let id = "order-0000000000000001";
        let header = crawler.payment_signature(&required, &offer, 1500, Some(id)).unwrap();
        let payment: PaymentPayload = decode_header_json(header.as_bytes(), PAYMENT_SIGNATURE_BYTES_MAX).unwrap();
        assert_eq!(payment.accepted, offer);
        let payload: TallyIouPayload = serde_json::from_value(payment.payload).unwrap();
        let signed = payload.to_signed().unwrap();
        assert_eq!(signed.iou.nonce, nonce_for_payment_id(id));
        assert_eq!(signed.iou.amount, 1500);
        assert_eq!(signed.iou.resource, "http://site.example/a", "the offer's resource, byte for byte");
        let echoed = &payment.extensions.unwrap()[EXTENSION_PAYMENT_IDENTIFIER];
        assert_eq!(echoed["info"]["id"], id);
        assert_eq!(echoed["info"]["required"], false);
        let key = ed25519_dalek::VerifyingKey::from_bytes(&crawler.public_key()).unwrap();
        let signature = ed25519_dalek::Signature::from_bytes(&signed.signature);
        assert!(key.verify_strict(&signed.iou.signing_bytes(), &signature).is_ok());
    }
}

//! Cloudflare's pay-per-crawl dialect, beside x402 v2.
//!
//! Crawlers written for pay-per-crawl never send `PAYMENT-SIGNATURE`. They
//! read the price from `crawler-price: USD 0.01` on a 402, and retry with one
//! of two headers covered by their Web Bot Auth signature (RFC 9421):
//!
//! - `crawler-exact-price: USD 0.01`: pay exactly this (it must equal the price);
//! - `crawler-max-price: USD 0.05`: pay up to this (it must cover the price).
//!
//! A success carries `crawler-charged: USD 0.01`; a refusal `crawler-error`
//! with Cloudflare's code ([`CrawlerError`]). Error responses are free, as
//! under x402.
//!
//! A resource server (the gateway, `PaywallLayer`) turns such a request into
//! a facilitator payment of format `pay-per-crawl`: the signed request's
//! parts, verbatim, plus which price header the signature covers. The facilitator checks the signature (the
//! same Web Bot Auth rules as x402's, with the price header in place of
//! `PAYMENT-SIGNATURE`), derives an IOU whose amount is the signed price, and
//! records the route's charge (at most that). Nothing cryptographic happens
//! here: the facilitator is the one place that decides.

use axum::http::{HeaderMap, StatusCode};
use serde_json::json;

use crate::middleware::{HEADER_SIGNATURE, HEADER_SIGNATURE_AGENT, HEADER_SIGNATURE_INPUT, HOST_HEADER_BYTES_MAX};
use crate::types::{PaymentPayload, PaymentRequirements, Reason, ResourceInfo, X402_VERSION};

/// On a 402: the price of the resource, `<ASSET> <display amount>`.
pub const HEADER_CRAWLER_PRICE: &str = "crawler-price";
/// From the crawler: the exact price it pays.
pub const HEADER_CRAWLER_EXACT_PRICE: &str = "crawler-exact-price";
/// From the crawler: the most it pays.
pub const HEADER_CRAWLER_MAX_PRICE: &str = "crawler-max-price";
/// On success: what was charged.
pub const HEADER_CRAWLER_CHARGED: &str = "crawler-charged";
/// On a refusal: why, in Cloudflare's words.
pub const HEADER_CRAWLER_ERROR: &str = "crawler-error";
/// The facilitator payload format of a pay-per-crawl payment.
pub const FORMAT_PAY_PER_CRAWL: &str = crate::commitment::FORMAT_PAY_PER_CRAWL;
/// Longest price header read.
pub const PRICE_HEADER_BYTES_MAX: usize = 64;

/// Cloudflare's `crawler-error` codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrawlerError {
    MissingCrawlerPrice,
    InvalidCrawlerExactPrice,
    InvalidCrawlerMaxPrice,
    ConflictingPriceHeaders,
    PaymentFailed,
    CrawlerForbidden,
    InvalidSignature,
    StrongAuthRequired,
    InvalidContentPrice,
}

impl CrawlerError {
    /// Every code, for bounded metric labels.
    pub const ALL: [CrawlerError; 9] = [
        CrawlerError::MissingCrawlerPrice,
        CrawlerError::InvalidCrawlerExactPrice,
        CrawlerError::InvalidCrawlerMaxPrice,
        CrawlerError::ConflictingPriceHeaders,
        CrawlerError::PaymentFailed,
        CrawlerError::CrawlerForbidden,
        CrawlerError::InvalidSignature,
        CrawlerError::StrongAuthRequired,
        CrawlerError::InvalidContentPrice,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CrawlerError::MissingCrawlerPrice => "MissingCrawlerPrice",
            CrawlerError::InvalidCrawlerExactPrice => "InvalidCrawlerExactPrice",
            CrawlerError::InvalidCrawlerMaxPrice => "InvalidCrawlerMaxPrice",
            CrawlerError::ConflictingPriceHeaders => "ConflictingPriceHeaders",
            CrawlerError::PaymentFailed => "PaymentFailed",
            CrawlerError::CrawlerForbidden => "CrawlerForbidden",
            CrawlerError::InvalidSignature => "InvalidSignature",
            CrawlerError::StrongAuthRequired => "StrongAuthRequired",
            CrawlerError::InvalidContentPrice => "InvalidContentPrice",
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(self) -> StatusCode {
        match self {
            CrawlerError::CrawlerForbidden => StatusCode::FORBIDDEN,
            CrawlerError::InvalidSignature | CrawlerError::StrongAuthRequired => StatusCode::UNAUTHORIZED,
            CrawlerError::ConflictingPriceHeaders => StatusCode::BAD_REQUEST,
            _ => StatusCode::PAYMENT_REQUIRED,
        }
    }

    /// The x402 reason code put beside it in the body and `PAYMENT-REQUIRED`.
    pub fn reason(self) -> &'static str {
        match self {
            CrawlerError::InvalidCrawlerExactPrice
            | CrawlerError::InvalidCrawlerMaxPrice
            | CrawlerError::MissingCrawlerPrice => Reason::PriceNotAcceptable.as_str(),
            CrawlerError::ConflictingPriceHeaders | CrawlerError::InvalidContentPrice => {
                Reason::InvalidPayload.as_str()
            }
            CrawlerError::InvalidSignature | CrawlerError::StrongAuthRequired => Reason::InvalidSignature.as_str(),
            CrawlerError::CrawlerForbidden => "tally_payer_forbidden",
            CrawlerError::PaymentFailed => "tally_payment_failed",
        }
    }
}

/// The `crawler-error` for a facilitator's x402 reason code.
pub fn error_for_reason(reason: &str) -> CrawlerError {
    match reason {
        "price_not_acceptable" => CrawlerError::InvalidCrawlerMaxPrice,
        "invalid_signature" | "signature_agent_unknown" | "invalid_payment_signature" => CrawlerError::InvalidSignature,
        "tally_payer_forbidden" => CrawlerError::CrawlerForbidden,
        _ => CrawlerError::PaymentFailed,
    }
}

/// `<ASSET> <amount>` with the amount in display units, trailing zeros
/// dropped (`USD 0.01`, `USD 1`): how pay-per-crawl writes a price.
pub fn price_header(asset: &str, units: u64, scale: u8) -> String {
    let formatted = tally_core::amount::format_amount(u128::from(units), scale);
    let trimmed =
        if formatted.contains('.') { formatted.trim_end_matches('0').trim_end_matches('.') } else { &formatted };
    format!("{asset} {trimmed}")
}

/// A price a crawler sent, as it sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrawlerPrice {
    /// Which header: [`HEADER_CRAWLER_EXACT_PRICE`] or [`HEADER_CRAWLER_MAX_PRICE`].
    pub header: &'static str,
    /// The header's value, verbatim (what the signature covers).
    pub value: String,
    pub asset: String,
    /// The amount in display units, as written.
    pub amount: String,
}

impl CrawlerPrice {
    fn invalid(&self) -> CrawlerError {
        if self.header == HEADER_CRAWLER_EXACT_PRICE {
            CrawlerError::InvalidCrawlerExactPrice
        } else {
            CrawlerError::InvalidCrawlerMaxPrice
        }
    }
}

/// Reads a request's pay-per-crawl price headers: `None` if it has neither.
pub fn price_headers(headers: &HeaderMap) -> Result<Option<CrawlerPrice>, CrawlerError> {
    let exact = headers.get(HEADER_CRAWLER_EXACT_PRICE);
    let max = headers.get(HEADER_CRAWLER_MAX_PRICE);
    let (header, value, invalid) = match (exact, max) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => return Err(CrawlerError::ConflictingPriceHeaders),
        (Some(v), None) => (HEADER_CRAWLER_EXACT_PRICE, v, CrawlerError::InvalidCrawlerExactPrice),
        (None, Some(v)) => (HEADER_CRAWLER_MAX_PRICE, v, CrawlerError::InvalidCrawlerMaxPrice),
    };
    if headers.get_all(header).iter().count() != 1 {
        return Err(CrawlerError::ConflictingPriceHeaders);
    }
    let value = value.to_str().map_err(|_| invalid)?;
    if value.len() > PRICE_HEADER_BYTES_MAX {
        return Err(invalid);
    }
    let (asset, amount) = value.split_once(' ').ok_or(invalid)?;
    let asset_ok =
        !asset.is_empty() && asset.len() <= 12 && asset.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if !asset_ok || amount.is_empty() || !amount.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(invalid);
    }
    // A price without a signature over it is a claim by anyone.
    if !headers.contains_key(HEADER_SIGNATURE_INPUT) || !headers.contains_key(HEADER_SIGNATURE) {
        return Err(CrawlerError::StrongAuthRequired);
    }
    Ok(Some(CrawlerPrice { header, value: value.to_owned(), asset: asset.to_owned(), amount: amount.to_owned() }))
}

/// Whether the crawler's price pays an offer of `offer` smallest units of
/// `asset` (with `scale` decimals). The facilitator checks the same against
/// the signed value; this answers the crawler in its own words first.
pub fn accepts(asked: &CrawlerPrice, asset: &str, scale: u8, offer: u64) -> Result<(), CrawlerError> {
    if asked.asset != asset {
        return Err(asked.invalid());
    }
    let units = tally_core::amount::parse_amount(&asked.amount, scale).map_err(|_| asked.invalid())?;
    let offer = u128::from(offer);
    let pays = if asked.header == HEADER_CRAWLER_EXACT_PRICE { units == offer } else { units >= offer };
    if pays { Ok(()) } else { Err(asked.invalid()) }
}

/// A request's pay-per-crawl payment for `offered` (whose asset has `scale`
/// decimals) at `url`: `Ok(None)` when it carries no price header, the
/// crawler's refusal when its price does not pay the offer or the signed
/// parts are unusable. The gateway and `PaywallLayer` both call this.
pub fn payment(
    headers: &HeaderMap,
    scale: u8,
    offered: &PaymentRequirements,
    url: &str,
) -> Result<Option<PaymentPayload>, CrawlerError> {
    let Some(asked) = price_headers(headers)? else {
        return Ok(None);
    };
    let offer = tally_core::parse_canonical_units(&offered.amount).ok_or(CrawlerError::InvalidContentPrice)?;
    accepts(&asked, &offered.asset, scale, offer)?;
    payment_payload(headers, &asked, offered, url).map(Some).ok_or(CrawlerError::InvalidSignature)
}

/// The facilitator payment of a pay-per-crawl request: the offer, and the
/// signed request's parts verbatim. `None` if a header is not visible ASCII.
pub fn payment_payload(
    headers: &HeaderMap,
    asked: &CrawlerPrice,
    offered: &PaymentRequirements,
    url: &str,
) -> Option<PaymentPayload> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().map(str::to_owned)).transpose();
    let authority = text(axum::http::header::HOST.as_str())
        .ok()
        .flatten()
        .filter(|h| !h.is_empty() && h.len() <= HOST_HEADER_BYTES_MAX)?
        .to_ascii_lowercase();
    Some(PaymentPayload {
        x402_version: X402_VERSION,
        resource: Some(ResourceInfo { url: url.to_owned(), description: None, mime_type: None }),
        accepted: offered.clone(),
        payload: json!({
            "format": FORMAT_PAY_PER_CRAWL,
            "authority": authority,
            "signatureAgent": text(HEADER_SIGNATURE_AGENT).ok()?,
            "signatureInput": text(HEADER_SIGNATURE_INPUT).ok()??,
            "signature": text(HEADER_SIGNATURE).ok()??,
            "priceHeader": asked.header,
            "price": asked.value,
        }),
        extensions: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn prices_are_written_the_way_pay_per_crawl_writes_them() {
        assert_eq!(price_header("USD", 10_000, 6), "USD 0.01");
        assert_eq!(price_header("USD", 1_000_000, 6), "USD 1");
        assert_eq!(price_header("USD", 1_234_567, 6), "USD 1.234567");
        assert_eq!(price_header("JPY", 5, 0), "JPY 5");
    }

    #[test]
    fn price_headers_are_read_strictly() {
        let with = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(
                    axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            price_headers(&headers)
        };
        let signed = [("signature-input", "sig1=()"), ("signature", "sig1=:AA==:")];
        assert_eq!(with(&[]), Ok(None));
        let exact = with(&[signed[0], signed[1], ("crawler-exact-price", "USD 0.01")]).unwrap().unwrap();
        assert_eq!(
            (exact.header, exact.asset.as_str(), exact.amount.as_str()),
            (HEADER_CRAWLER_EXACT_PRICE, "USD", "0.01")
        );
        assert_eq!(
            with(&[signed[0], signed[1], ("crawler-exact-price", "USD 0.01"), ("crawler-max-price", "USD 1")]),
            Err(CrawlerError::ConflictingPriceHeaders)
        );
        assert_eq!(
            with(&[signed[0], signed[1], ("crawler-max-price", "usd 1")]),
            Err(CrawlerError::InvalidCrawlerMaxPrice)
        );
        assert_eq!(
            with(&[signed[0], signed[1], ("crawler-max-price", "USD -1")]),
            Err(CrawlerError::InvalidCrawlerMaxPrice)
        );
        assert_eq!(with(&[("crawler-max-price", "USD 1")]), Err(CrawlerError::StrongAuthRequired));
    }
}

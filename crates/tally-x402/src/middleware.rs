//! # Resource-server middleware: a paywall in front of any axum route
//!
//! [`PaywallLayer`] is a tower [`Layer`] that turns an ordinary axum handler
//! into an x402 `batch-settlement` resource priced in one asset, with Tally as
//! the facilitator. It runs the server's half of the x402 v2 handshake:
//!
//! 1. A request **without** `PAYMENT-SIGNATURE` is answered `402 Payment
//!    Required`. The `PAYMENT-REQUIRED` header carries base64 JSON
//!    [`PaymentRequired`]: the resource, one [`PaymentRequirements`] offer
//!    (`scheme: batch-settlement`, this network, the price in the asset's
//!    smallest units, `payTo`), and the extensions a crawler needs
//!    (`http-message-signatures` for Web Bot Auth, `payment-identifier` for
//!    idempotent retries). A small JSON body says the same for humans.
//! 2. A request **with** `PAYMENT-SIGNATURE` is decoded (bounded by
//!    [`PAYMENT_SIGNATURE_HEADER_BYTES_MAX`]) into a [`PaymentPayload`] and
//!    sent to the facilitator together with the **server's own**
//!    requirements, which name the resource being bought
//!    (`extra.resource`, the request's URL). The facilitator refuses a payload
//!    whose `accepted` differs from them, a commitment below the price, and a
//!    commitment for another resource: a client cannot choose its own price,
//!    and one payment cannot unlock another page.
//! 3. Only when the payment is settled does the client get the inner
//!    service's response, with a `PAYMENT-RESPONSE` header (base64 JSON
//!    [`PaymentResponse`]: the commitment identifier in `transaction`, the
//!    payer, the amount charged).
//!
//! **Two pricings** ([`Pricing`]). `Fixed` (the default) is *settle, then
//! serve*: `/settle` charges the price, and the inner service runs only
//! after it answered `success`. `UpTo` is the scheme's dynamic pricing: the
//! price is a maximum; the paywall `/verify`s the payment, runs the inner
//! service, reads what its response charges ([`Charge`] in the response's
//! extensions; the full price when absent), and `/settle`s that amount. An
//! error response (status ≥ 400) is never charged; a response whose charge
//! cannot be settled is never delivered.
//!
//! Tally's `/settle` answers after the commitment is fsynced, so a response
//! is never given away for a payment that was not recorded. If the
//! facilitator cannot be reached, times out or answers 5xx, the paywall
//! answers `502 Bad Gateway` / `503 Service Unavailable` and delivers nothing.
//!
//! Refusals map as follows: a malformed header, base64 or JSON is `402` with
//! `error: "invalid_payload"` (never a 500); a facilitator verdict of
//! `success: false` is `402` with `error` set to its reason code (for example
//! `signature_agent_unknown`, `insufficient_funds`); a payment identifier
//! reused with a different payload is passed through as `409`.
//!
//! **Two payment forms.** A `PAYMENT-SIGNATURE` payload in the `tally-iou-v1`
//! format carries its own signed IOU and is forwarded as is. Any other payload
//! (the Cloudflare binding's `{"amount", "asset"}`) on a request that carries
//! Web Bot Auth headers is a Web Bot Auth payment: the paywall forwards the
//! request's `@authority`, `Signature-Agent`, `Signature-Input`, `Signature` and
//! the raw `PAYMENT-SIGNATURE` value (format `web-bot-auth`), and the
//! facilitator verifies the RFC 9421 signature and records the payment. The
//! paywall itself checks nothing cryptographic: the facilitator is the one
//! place that decides, so the two can never disagree.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower::{Layer, Service};

use crate::commitment::{FORMAT_TALLY_IOU, FORMAT_WEB_BOT_AUTH, WebBotAuthPayload};
use crate::pay_per_crawl;
use crate::types::*;

/// The request header carrying the client's base64 JSON [`PaymentPayload`].
pub const HEADER_PAYMENT_SIGNATURE: &str = "payment-signature";
/// Web Bot Auth's request headers (RFC 9421 and the signature-agent draft).
pub const HEADER_SIGNATURE_AGENT: &str = "signature-agent";
pub const HEADER_SIGNATURE_INPUT: &str = "signature-input";
pub const HEADER_SIGNATURE: &str = "signature";
/// The 402 header carrying base64 JSON [`PaymentRequired`].
pub const HEADER_PAYMENT_REQUIRED: &str = "payment-required";
/// The success header carrying base64 JSON [`PaymentResponse`].
pub const HEADER_PAYMENT_RESPONSE: &str = "payment-response";
/// The Web Bot Auth extension's key in `PaymentRequired.extensions`.
pub const EXTENSION_HTTP_MESSAGE_SIGNATURES: &str = "http-message-signatures";

/// Largest `PAYMENT-SIGNATURE` header accepted (base64 text).
pub const PAYMENT_SIGNATURE_HEADER_BYTES_MAX: usize = crate::webbotauth::PAYMENT_SIGNATURE_BYTES_MAX;
/// Largest `Host` header used to build the resource URL.
pub const HOST_HEADER_BYTES_MAX: usize = 270;
/// Largest request path and query used to build the resource URL (the IOU's
/// `resource` field holds at most 1024 bytes, scheme and host included).
pub const PATH_BYTES_MAX: usize = 700;
/// Largest facilitator answer read.
pub const FACILITATOR_ANSWER_BYTES_MAX: usize = 64 * 1024;
/// How long one `/settle` call may take before the paywall gives up (503).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// `maxTimeoutSeconds` offered in the requirements.
pub const MAX_TIMEOUT_SECONDS: u64 = 60;

/// How a paywall prices its resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pricing {
    /// Every request is charged the price: settle, then serve.
    #[default]
    Fixed,
    /// The price is a maximum; the inner service's response says what it
    /// charges ([`Charge`]): verify, serve, settle the charge, deliver.
    UpTo,
}

/// What a response charges under [`Pricing::UpTo`], in smallest units (at
/// most the price): put it in the response's extensions, e.g. by returning
/// `(axum::Extension(Charge(700)), body)` from the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge(pub u64);

/// What one paywall charges and where it settles.
#[derive(Clone, Debug)]
pub struct PaywallConfig {
    /// The facilitator's base URL, e.g. `http://127.0.0.1:8402` (no trailing slash needed).
    pub facilitator_url: String,
    /// The x402 network id, e.g. `tally:local`.
    pub network: String,
    /// The asset code, e.g. `USD`.
    pub asset: String,
    /// The payee's account id in Tally, e.g. `daily.example`.
    pub pay_to: String,
    /// The price in the asset's smallest units (the maximum, under [`Pricing::UpTo`]).
    pub price: u64,
    pub pricing: Pricing,
    /// Whether clients must send a payment identifier (`payment-identifier`
    /// extension, `info.required`).
    pub payment_id_required: bool,
    /// A human description of what is sold.
    pub description: String,
    /// The HTTP client used to reach the facilitator.
    pub http: reqwest::Client,
    /// Where crawlers register their Web Bot Auth keys, advertised in the 402.
    pub registration_url: Option<String>,
    /// The asset's decimals: pay-per-crawl writes prices in display units
    /// (`crawler-price: USD 0.01`), and reads the crawler's the same way.
    pub asset_scale: u8,
}

/// `PAYMENT-RESPONSE`: what the paywall tells the client after settling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentResponse {
    pub success: bool,
    /// The commitment identifier `<seq>:<hash>`.
    pub transaction: String,
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// The amount charged, smallest units, decimal string.
    pub amount: String,
    pub asset: String,
    pub extra: PaymentResponseExtra,
}

/// `PAYMENT-RESPONSE.extra`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentResponseExtra {
    /// When the paywall received the facilitator's answer, Unix seconds.
    pub timestamp: u64,
}

/// Why a base64 JSON header could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderDecodeError {
    #[error("header is {len} bytes, more than {max}")]
    TooLarge { len: usize, max: usize },
    #[error("header is not base64")]
    NotBase64,
    #[error("header is not the expected JSON: {0}")]
    NotJson(String),
}

/// Encodes a value as an x402 header: base64 (standard alphabet, padded) of its JSON.
pub fn encode_header_json<T: Serialize>(value: &T) -> String {
    // Serializing these plain data types cannot fail; an empty object is a safe fallback.
    let json = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    base64::engine::general_purpose::STANDARD.encode(json)
}

/// Decodes an x402 header (base64 of JSON), refusing anything over `max` bytes.
pub fn decode_header_json<T: DeserializeOwned>(value: &[u8], max: usize) -> Result<T, HeaderDecodeError> {
    if value.len() > max {
        return Err(HeaderDecodeError::TooLarge { len: value.len(), max });
    }
    let bytes = tally_core::evidence::decode_header_base64(value).ok_or(HeaderDecodeError::NotBase64)?;
    serde_json::from_slice(&bytes).map_err(|e| HeaderDecodeError::NotJson(e.to_string()))
}

/// The tower layer: wrap a router or route with `.layer(PaywallLayer::new(config))`.
#[derive(Clone, Debug)]
pub struct PaywallLayer {
    config: Arc<PaywallConfig>,
}

impl PaywallLayer {
    pub fn new(config: PaywallConfig) -> PaywallLayer {
        PaywallLayer { config: Arc::new(config) }
    }
}

impl<S> Layer<S> for PaywallLayer {
    type Service = Paywall<S>;

    fn layer(&self, inner: S) -> Paywall<S> {
        Paywall { inner, config: self.config.clone() }
    }
}

/// The service [`PaywallLayer`] produces.
#[derive(Clone, Debug)]
pub struct Paywall<S> {
    inner: S,
    config: Arc<PaywallConfig>,
}

impl<S> Service<Request<Body>> for Paywall<S>
where
    S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this request; a fresh clone stays behind.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let config = self.config.clone();
        Box::pin(async move { paywall(config, inner, request).await })
    }
}

/// The requirements this paywall offers for `resource` (and settles against,
/// with `amount` lowered to the charge under [`Pricing::UpTo`]).
pub fn requirements(config: &PaywallConfig, resource: &str) -> PaymentRequirements {
    PaymentRequirements {
        scheme: SCHEME_BATCH_SETTLEMENT.to_owned(),
        network: config.network.clone(),
        amount: config.price.to_string(),
        asset: config.asset.clone(),
        pay_to: config.pay_to.clone(),
        max_timeout_seconds: Some(MAX_TIMEOUT_SECONDS),
        // The resource this payment buys, for the facilitator to bind the commitment to.
        extra: Some(json!({ "resource": resource })),
    }
}

/// The resource URL: the request URI if absolute, otherwise `http://<Host><path>`.
///
/// `None` when the request cannot be named exactly (a path and query longer
/// than [`PATH_BYTES_MAX`], a `Host` that is too long or malformed): cutting
/// the name short would make two resources one, and one payment would buy both.
fn resource_url(request: &Request<Body>) -> Option<String> {
    let uri = request.uri();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if path.len() > PATH_BYTES_MAX {
        return None;
    }
    if let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) {
        return (authority.as_str().len() <= HOST_HEADER_BYTES_MAX).then(|| format!("{scheme}://{authority}{path}"));
    }
    let host = match request.headers().get(header::HOST) {
        // HTTP/1.0 without Host: the server has one name.
        None => "localhost",
        Some(host) => host
            .to_str()
            .ok()
            .filter(|h| !h.is_empty() && h.len() <= HOST_HEADER_BYTES_MAX && !h.contains(['/', '@', ' ']))?,
    };
    Some(format!("http://{host}{path}"))
}

/// The answer to a request whose resource cannot be named exactly.
fn unnameable() -> Response {
    let body = json!({
        "error": "tally_uri_too_long",
        "message": "the request's URL is too long (or its Host malformed) to name the resource a payment buys",
    });
    (StatusCode::URI_TOO_LONG, axum::Json(body)).into_response()
}

/// Whether the payload carries a payment identifier (`payment-identifier`
/// extension, `info.id`), which a paywall configured to require one demands.
pub fn has_payment_id(payload: &PaymentPayload) -> bool {
    crate::commitment::payment_identifier_info(payload.extensions.as_ref())
        .and_then(|info| info.get("id"))
        .is_some_and(serde_json::Value::is_string)
}

fn payment_required(config: &PaywallConfig, url: String, error: Option<&str>) -> PaymentRequired {
    let mut info = json!({ "signatureSchemes": ["ed25519"], "tags": [crate::webbotauth::WEB_BOT_AUTH_TAG] });
    if let Some(registration) = &config.registration_url {
        info["registrationUrl"] = json!(registration);
    }
    PaymentRequired {
        x402_version: X402_VERSION,
        error: error.map(str::to_owned),
        accepts: vec![requirements(config, &url)],
        resource: ResourceInfo { url, description: Some(config.description.clone()), mime_type: None },
        extensions: Some(json!({
            EXTENSION_HTTP_MESSAGE_SIGNATURES: { "info": info },
            EXTENSION_PAYMENT_IDENTIFIER: crate::commitment::payment_identifier_offer(config.payment_id_required),
        })),
    }
}

/// A 402 (or another status carrying the same offer) with `PAYMENT-REQUIRED`.
fn refuse(config: &PaywallConfig, url: String, status: StatusCode, error: Option<&str>) -> Response {
    let required = payment_required(config, url, error);
    let encoded = encode_header_json(&required);
    let body = json!({
        "error": error.unwrap_or("payment_required"),
        "message": "this resource requires an x402 payment; see the PAYMENT-REQUIRED header",
        "accepts": required.accepts,
    });
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert(HEADER_PAYMENT_REQUIRED, value);
    }
    // Cloudflare's pay-per-crawl dialect, beside x402's.
    let price = pay_per_crawl::price_header(&config.asset, config.price, config.asset_scale);
    if let Ok(value) = HeaderValue::from_str(&price) {
        headers.insert(pay_per_crawl::HEADER_CRAWLER_PRICE, value);
    }
    if let Some(error) = error {
        headers.insert(
            pay_per_crawl::HEADER_CRAWLER_ERROR,
            HeaderValue::from_static(pay_per_crawl::error_for_reason(error).as_str()),
        );
    }
    response
}

/// A pay-per-crawl request refused in Cloudflare's words (`crawler-error`) and x402's.
fn crawler_refusal(config: &PaywallConfig, url: String, error: pay_per_crawl::CrawlerError) -> Response {
    let mut response = refuse(config, url, error.status(), Some(error.reason()));
    response.headers_mut().insert(pay_per_crawl::HEADER_CRAWLER_ERROR, HeaderValue::from_static(error.as_str()));
    response
}

/// The facilitator could not give a verdict: never serve.
fn upstream_failure(status: StatusCode, error: &str) -> Response {
    let body = json!({ "error": error, "message": "the payment could not be settled; the resource was not served" });
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Now, Unix seconds (`PAYMENT-RESPONSE.extra.timestamp`).
pub fn unix_now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Reads at most `max` bytes of a response body; `None` if it is larger or broken.
async fn read_bounded(mut response: reqwest::Response, max: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        if body.len() + chunk.len() > max {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

fn payment_header(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(HEADER_PAYMENT_SIGNATURE)
}

/// The facilitator payload of a Web Bot Auth payment: the signed request's parts, verbatim.
/// `None` when a header is not visible ASCII or the request names no usable host; sizes are
/// bounded by the facilitator (which answers with a reason code) and by the server's header limit.
pub fn web_bot_auth_payload(
    headers: &HeaderMap,
    payment_signature: &HeaderValue,
    signed_payload: PaymentPayload,
) -> Option<PaymentPayload> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().map(str::to_owned)).transpose();
    // `@authority` is the Host the crawler signed, lowercased (RFC 9421 §2.2.3).
    let authority = text(header::HOST.as_str())
        .ok()
        .flatten()
        .filter(|h| !h.is_empty() && h.len() <= HOST_HEADER_BYTES_MAX)?
        .to_ascii_lowercase();
    let forwarded = WebBotAuthPayload {
        format: FORMAT_WEB_BOT_AUTH.to_owned(),
        authority,
        signature_agent: text(HEADER_SIGNATURE_AGENT).ok()?,
        signature_input: text(HEADER_SIGNATURE_INPUT).ok()??,
        signature: text(HEADER_SIGNATURE).ok()??,
        payment_signature: payment_signature.to_str().ok()?.to_owned(),
    };
    Some(PaymentPayload { payload: serde_json::to_value(forwarded).ok()?, ..signed_payload })
}

/// What asking the facilitator came to.
enum Verdict<T> {
    Yes(T),
    /// Refused, or the facilitator failed: answer this, deliver nothing.
    No(Response),
}

/// POSTs `body` to the facilitator's `route` and decodes its answer, bounded.
async fn ask<T: DeserializeOwned>(
    config: &PaywallConfig,
    route: &str,
    body: &FacilitatorRequest,
) -> Result<(StatusCode, T), Response> {
    let endpoint = format!("{}/{route}", config.facilitator_url.trim_end_matches('/'));
    let answer = match config.http.post(&endpoint).timeout(SETTLE_TIMEOUT).json(body).send().await {
        Ok(answer) => answer,
        Err(error) => {
            tracing::warn!(%error, %endpoint, "facilitator unreachable; not serving");
            let status = if error.is_timeout() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::BAD_GATEWAY };
            return Err(upstream_failure(status, "tally_facilitator_unavailable"));
        }
    };
    let status = answer.status();
    if status.is_server_error() {
        tracing::warn!(%status, "facilitator failed; not serving");
        return Err(upstream_failure(StatusCode::SERVICE_UNAVAILABLE, "tally_facilitator_unavailable"));
    }
    match read_bounded(answer, FACILITATOR_ANSWER_BYTES_MAX).await.and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(decoded) => Ok((status, decoded)),
        None if status == StatusCode::PAYLOAD_TOO_LARGE => Err(upstream_failure(status, "tally_payload_too_large")),
        None => {
            tracing::warn!(%status, "facilitator answered something that is not a {route} response; not serving");
            Err(upstream_failure(StatusCode::BAD_GATEWAY, "tally_facilitator_invalid_answer"))
        }
    }
}

/// A refusal's answer to the client: 409 passes through, verdicts become 402.
fn refusal(config: &PaywallConfig, url: String, status: StatusCode, reason: Option<String>) -> Response {
    let reason = echoable_reason(reason.as_deref()).to_owned();
    match status {
        StatusCode::CONFLICT => refuse(config, url, StatusCode::CONFLICT, Some(&reason)),
        StatusCode::OK | StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
            refuse(config, url, StatusCode::PAYMENT_REQUIRED, Some(&reason))
        }
        _ => {
            tracing::warn!(%status, "facilitator answered an unexpected status; not serving");
            upstream_failure(StatusCode::BAD_GATEWAY, "tally_facilitator_invalid_answer")
        }
    }
}

/// Settles `body`; `Yes` carries the `PAYMENT-RESPONSE` to attach.
async fn settle_payment(config: &PaywallConfig, url: &str, body: &FacilitatorRequest) -> Verdict<PaymentResponse> {
    let (status, settled): (StatusCode, SettleResponse) = match ask(config, "settle", body).await {
        Ok(answer) => answer,
        Err(response) if response.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let reason = Reason::InvalidPayload.as_str();
            return Verdict::No(refuse(config, url.to_owned(), StatusCode::PAYMENT_REQUIRED, Some(reason)));
        }
        Err(response) => return Verdict::No(response),
    };
    if status == StatusCode::OK && settled.success && !settled.transaction.is_empty() {
        // The facilitator must have recorded exactly the charge asked for: a
        // lower one underpays the payee (the crawler set the price), a higher
        // one overcharges the client. Either way the request is not served.
        let asked = &body.payment_requirements.amount;
        if let Some(recorded) = settled.amount.as_ref().filter(|recorded| *recorded != asked) {
            tracing::error!(%recorded, %asked, transaction = %settled.transaction,
                "the facilitator recorded another charge than the one asked; not serving");
            return Verdict::No(upstream_failure(StatusCode::BAD_GATEWAY, "tally_facilitator_charge_mismatch"));
        }
        return Verdict::Yes(PaymentResponse {
            success: true,
            transaction: settled.transaction,
            network: settled.network,
            payer: settled.payer,
            // A facilitator that does not report the amount recorded the one asked.
            amount: settled.amount.unwrap_or_else(|| asked.clone()),
            asset: config.asset.clone(),
            extra: PaymentResponseExtra { timestamp: unix_now_s() },
        });
    }
    Verdict::No(refusal(config, url.to_owned(), status, settled.error_reason))
}

fn with_receipt(config: &PaywallConfig, mut response: Response, receipt: &PaymentResponse, crawler: bool) -> Response {
    if let Ok(value) = HeaderValue::from_str(&encode_header_json(receipt)) {
        response.headers_mut().insert(HEADER_PAYMENT_RESPONSE, value);
    }
    if crawler {
        let charged = tally_core::parse_canonical_units(&receipt.amount).unwrap_or(0);
        let charged = pay_per_crawl::price_header(&config.asset, charged, config.asset_scale);
        if let Ok(value) = HeaderValue::from_str(&charged) {
            response.headers_mut().insert(pay_per_crawl::HEADER_CRAWLER_CHARGED, value);
        }
    }
    response
}

/// The facilitator payment of an x402 request: its `PAYMENT-SIGNATURE`
/// payload, or (a Web Bot Auth payment) the signed request's parts. `Err`
/// carries the status and reason code to refuse with.
///
/// The gateway (`tally-gate`) calls this too, so both resource servers read
/// a payment the same way.
pub fn x402_payment(
    payment_id_required: bool,
    request: &Request<Body>,
    header_value: &HeaderValue,
) -> Result<PaymentPayload, (StatusCode, &'static str)> {
    let payload: PaymentPayload = decode_header_json(header_value.as_bytes(), PAYMENT_SIGNATURE_HEADER_BYTES_MAX)
        .map_err(|error| {
            tracing::debug!(%error, "malformed PAYMENT-SIGNATURE");
            (StatusCode::PAYMENT_REQUIRED, Reason::InvalidPayload.as_str())
        })?;
    // The offer says a payment identifier is required: a client that leaves
    // the extension out does not get to skip the rule.
    if payment_id_required && !has_payment_id(&payload) {
        return Err((StatusCode::BAD_REQUEST, Reason::PaymentIdentifierRequired.as_str()));
    }
    let is_tally_iou = payload.payload.get("format").and_then(serde_json::Value::as_str) == Some(FORMAT_TALLY_IOU);
    if !is_tally_iou && request.headers().contains_key(HEADER_SIGNATURE_INPUT) {
        return web_bot_auth_payload(request.headers(), header_value, payload)
            .ok_or((StatusCode::PAYMENT_REQUIRED, Reason::InvalidPayload.as_str()));
    }
    Ok(payload)
}

async fn paywall<S>(config: Arc<PaywallConfig>, mut inner: S, request: Request<Body>) -> Result<Response, S::Error>
where
    S: Service<Request<Body>, Response = Response>,
{
    let Some(url) = resource_url(&request) else {
        return Ok(unnameable());
    };
    let (payment_payload, crawler) = match payment_header(request.headers()) {
        Some(header_value) => match x402_payment(config.payment_id_required, &request, header_value) {
            Ok(payload) => (payload, false),
            Err(refused) => return Ok(refuse(&config, url, refused.0, Some(refused.1))),
        },
        // No x402 payment: a pay-per-crawl crawler's price headers, or a 402.
        None => {
            let offered = requirements(&config, &url);
            match pay_per_crawl::payment(request.headers(), config.asset_scale, &offered, &url) {
                Ok(None) => return Ok(refuse(&config, url, StatusCode::PAYMENT_REQUIRED, None)),
                Ok(Some(payload)) => (payload, true),
                Err(error) => return Ok(crawler_refusal(&config, url, error)),
            }
        }
    };
    let mut body = FacilitatorRequest {
        x402_version: X402_VERSION,
        payment_payload,
        payment_requirements: requirements(&config, &url),
    };

    if config.pricing == Pricing::Fixed {
        return Ok(match settle_payment(&config, &url, &body).await {
            Verdict::Yes(receipt) => with_receipt(&config, inner.call(request).await?, &receipt, crawler),
            Verdict::No(response) => response,
        });
    }

    // Up to the price: verify, serve, settle what the response charges, deliver.
    match ask::<VerifyResponse>(&config, "verify", &body).await {
        Ok((StatusCode::OK, VerifyResponse { is_valid: true, .. })) => {}
        Ok((status, verified)) => return Ok(refusal(&config, url, status, verified.invalid_reason)),
        Err(response) => return Ok(response),
    }
    let response = inner.call(request).await?;
    if response.status().is_client_error() || response.status().is_server_error() {
        // An error response is never charged.
        return Ok(response);
    }
    let charge = response.extensions().get::<Charge>().map_or(config.price, |charge| charge.0);
    if charge == 0 || charge > config.price {
        tracing::warn!(charge, price = config.price, "the handler's charge is outside 1..=price; not delivering");
        return Ok(upstream_failure(StatusCode::INTERNAL_SERVER_ERROR, "tally_invalid_charge"));
    }
    body.payment_requirements.amount = charge.to_string();
    Ok(match settle_payment(&config, &url, &body).await {
        Verdict::Yes(receipt) => with_receipt(&config, response, &receipt, crawler),
        Verdict::No(refused) => refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PaywallConfig {
        PaywallConfig {
            facilitator_url: "http://127.0.0.1:9".into(),
            network: "tally:test".into(),
            asset: "USD".into(),
            pay_to: "site.example".into(),
            price: 1500,
            pricing: Pricing::Fixed,
            payment_id_required: false,
            description: "an article".into(),
            http: reqwest::Client::new(),
            registration_url: Some("https://tally.example/register".into()),
            asset_scale: 6,
        }
    }

    #[test]
    fn header_json_round_trips_and_refuses_junk() {
        let required = payment_required(&config(), "http://site.example/a".into(), Some("expired"));
        let encoded = encode_header_json(&required);
        let back: PaymentRequired = decode_header_json(encoded.as_bytes(), 16 * 1024).unwrap();
        assert_eq!(back, required);
        assert_eq!(back.accepts[0].amount, "1500");
        let ext = back.extensions.unwrap();
        assert_eq!(ext["http-message-signatures"]["info"]["registrationUrl"], "https://tally.example/register");
        assert_eq!(ext["payment-identifier"]["info"]["required"], false);
        assert_eq!(ext["payment-identifier"]["schema"]["properties"]["id"]["minLength"], 16);
        assert_eq!(back.accepts[0].extra.as_ref().unwrap()["resource"], "http://site.example/a");

        assert!(matches!(decode_header_json::<PaymentRequired>(b"!!!", 100), Err(HeaderDecodeError::NotBase64)));
        assert!(matches!(
            decode_header_json::<PaymentRequired>(&[b'A'; 101], 100),
            Err(HeaderDecodeError::TooLarge { len: 101, max: 100 })
        ));
        assert!(matches!(decode_header_json::<PaymentRequired>(b"e30=", 100), Err(HeaderDecodeError::NotJson(_))));
    }

    #[test]
    fn resource_url_uses_host_and_bounds_it() {
        let request = Request::builder().uri("/article?x=1").header("host", "site.example:8080").body(Body::empty());
        assert_eq!(resource_url(&request.unwrap()).as_deref(), Some("http://site.example:8080/article?x=1"));
        let long = "h".repeat(HOST_HEADER_BYTES_MAX + 1);
        let request = Request::builder().uri("/a").header("host", long).body(Body::empty()).unwrap();
        assert_eq!(resource_url(&request), None, "an unusable Host names nothing");
        let request = Request::builder().uri("/a").body(Body::empty()).unwrap();
        assert_eq!(resource_url(&request).as_deref(), Some("http://localhost/a"));
        let request = Request::builder().uri("http://other.example/b").body(Body::empty()).unwrap();
        assert_eq!(resource_url(&request).as_deref(), Some("http://other.example/b"));
        // Two long URLs that differ only past the bound are never one resource.
        for query in ["a", "b"] {
            let uri = format!("/search?q={}{query}", "x".repeat(PATH_BYTES_MAX));
            let request = Request::builder().uri(uri).header("host", "site.example").body(Body::empty()).unwrap();
            assert_eq!(resource_url(&request), None);
        }
        let at_the_bound = format!("/{}", "x".repeat(PATH_BYTES_MAX - 1));
        let request = Request::builder().uri(&at_the_bound).header("host", "s.example").body(Body::empty()).unwrap();
        assert_eq!(resource_url(&request), Some(format!("http://s.example{at_the_bound}")));
    }
}

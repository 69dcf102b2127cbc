//! The request path: classify, ask for payment, forward, charge, stream.
//!
//! A paid request goes through five steps, and the order is the guarantee:
//!
//! 1. **Offer.** Without a payment, the gateway answers `402` with the
//!    route's offer (`PAYMENT-REQUIRED`, and `crawler-price` for
//!    pay-per-crawl crawlers); the offer names the exact URL being sold.
//! 2. **Verify.** With a payment, the facilitator checks it against the
//!    gateway's own requirements (price, payee, resource) and says who pays.
//!    Nothing is recorded yet. The payer rules (allow / deny) apply here.
//! 3. **Fetch.** Only then is the origin asked, with the request's method,
//!    headers (`PAYMENT-SIGNATURE` removed, `tally-payer` added) and body (at most
//!    [`crate::config::Limits::request_body_bytes_max`]).
//! 4. **Charge.** Only a successful response (2xx) is charged: the payment is
//!    settled, fsynced by the ledger, at the route's price (or the charge the
//!    origin narrowed it to with a `tally-charge` header). An error response is
//!    passed on and charged nothing. If settling fails (the payment was used
//!    meanwhile, the payer ran out of credit), the origin's response is dropped
//!    and the client gets the refusal: nothing is given away unpaid.
//! 5. **Stream.** The origin's body is streamed through, never buffered, with
//!    `PAYMENT-RESPONSE` (and `crawler-charged`) added.
//!
//! So one payment buys one response: a second request with the same payment
//! passes verify only while the first has not settled, and then fails to
//! settle (`tally_payment_already_used`), so only one response is delivered.
//! The `payment-identifier` extension is the deliberate exception: a retry of
//! the same URL with the same payment and id is answered from the record and
//! served again, charged once (docs/x402-binding.md, the gateway).
//!
//! Before any of this, `handle` fixes one truth for host and path: the path
//! in normal form ([`normalize_path`]), the authority from the request target,
//! and both written back into the request, so the origin serves exactly what
//! was priced.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tally_x402::commitment::payment_identifier_offer;
use tally_x402::middleware::{
    EXTENSION_HTTP_MESSAGE_SIGNATURES, HEADER_PAYMENT_REQUIRED, HEADER_PAYMENT_RESPONSE, HEADER_PAYMENT_SIGNATURE,
    HOST_HEADER_BYTES_MAX, PATH_BYTES_MAX, PaymentResponse, PaymentResponseExtra, encode_header_json, unix_now_s,
    x402_payment,
};
use tally_x402::types::*;

use crate::config::{GateConfig, Price, Route};
use crate::facilitator::{FacilitatorLink, Unavailable};
use crate::metrics::{Outcome, count, count_refusal, count_revenue};
use crate::rules::{Decision, decide};
use tally_x402::pay_per_crawl::{self as crawler, CrawlerError};

/// The response header an origin narrows a range-priced route's charge with
/// (display units of the route's asset, e.g. `0.002`). Never passed to the client.
pub const HEADER_TALLY_CHARGE: &str = "tally-charge";
/// The request header telling the origin who paid (the payer's id in Tally).
pub const HEADER_TALLY_PAYER: &str = "tally-payer";
/// `maxTimeoutSeconds` offered.
pub const MAX_TIMEOUT_SECONDS: u64 = 60;

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The gateway: its price list, where verdicts come from, and the origin's connection pool.
pub struct Gate {
    pub(crate) config: Arc<GateConfig>,
    pub(crate) facilitator: FacilitatorLink,
    origin: Client<HttpConnector, Body>,
}

impl Gate {
    pub fn new(config: GateConfig, facilitator: FacilitatorLink) -> Arc<Gate> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.limits.origin_timeout));
        let origin = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(config.limits.origin_connections_idle_max)
            .build(connector);
        Arc::new(Gate { config: Arc::new(config), facilitator, origin })
    }

    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// The router: every path goes through [`handle`].
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(handle).with_state(self.clone())
    }
}

/// What the request names: its host (for matching, lowercase, no port), and
/// the URL a payment buys.
struct Named {
    host: String,
    /// Host and port, lowercase, without a trailing dot.
    authority: String,
}

fn name_request(request: &Request<Body>) -> Option<Named> {
    // RFC 9112 §3.2.2: an absolute request target's authority is the host, whatever `Host` says.
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str().to_owned(),
        None => request.headers().get(header::HOST)?.to_str().ok()?.to_owned(),
    };
    if authority.is_empty() || authority.len() > HOST_HEADER_BYTES_MAX || authority.contains(['/', '@', ' ', '\\']) {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (host, Some(port)),
        _ => (authority.as_str(), None),
    };
    // `daily.example.` is `daily.example` to DNS and to the origin's virtual hosts.
    let host = host.strip_suffix('.').unwrap_or(host).to_owned();
    if host.is_empty() {
        return None;
    }
    let authority = match port {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    Some(Named { host, authority })
}

/// The path as every origin will read it, or `None` for one that two
/// readers could read differently. Percent-encoded unreserved characters are
/// decoded (`/%61rticles` is `/articles`), other escapes upper-cased; a path
/// with a dot segment (`/./`, `/../`, even encoded), an empty segment
/// (`//`), an encoded `/` or `\`, or a backslash is refused: the gateway
/// prices what it matches, and the origin must serve exactly that.
pub fn normalize_path(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                match value {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(char::from(value)),
                    b'/' | b'\\' => return None,
                    _ => out.push_str(&format!("%{value:02X}")),
                }
                i += 3;
            }
            b'\\' => return None,
            byte if byte.is_ascii_graphic() => {
                out.push(char::from(byte));
                i += 1;
            }
            _ => return None,
        }
    }
    let segments: Vec<&str> = out[1..].split('/').collect();
    let last = segments.len() - 1;
    for (index, segment) in segments.iter().enumerate() {
        // An empty last segment is a trailing slash; any other empty one is `//`.
        if *segment == "." || *segment == ".." || (segment.is_empty() && index != last) {
            return None;
        }
    }
    Some(out)
}

/// Every request enters here.
pub async fn handle(State(gate): State<Arc<Gate>>, mut request: Request<Body>) -> Response {
    let config = &gate.config;
    let Some(named) = name_request(&request) else {
        return plain(StatusCode::BAD_REQUEST, "tally_bad_host", "the request has no usable Host");
    };
    let Some(path) = normalize_path(request.uri().path()) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "tally_bad_path",
            "the path is not in normal form (dot segments, //, encoded / or \\)",
        );
    };
    // From here on there is one truth for host and path: the origin, the
    // resource name and Web Bot Auth's `@authority` all read `Host` and the
    // origin-form target, both rewritten from what was priced.
    let target = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.clone(),
    };
    match (target.parse::<Uri>(), HeaderValue::from_str(&named.authority)) {
        (Ok(uri), Ok(host)) => {
            *request.uri_mut() = uri;
            request.headers_mut().insert(header::HOST, host);
        }
        _ => return plain(StatusCode::BAD_REQUEST, "tally_bad_path", "the request target cannot be forwarded"),
    }
    // Too long to name exactly: cutting it would make two resources one.
    let url =
        (target.len() <= PATH_BYTES_MAX).then(|| format!("{}://{}{target}", config.public_scheme, named.authority));
    if path == config.discovery_path && request.method() == Method::GET {
        return crate::discovery::listing(config, &named.host, &named.authority);
    }
    match decide(config, &named.host, &path) {
        Decision::Free => {
            count("free", Outcome::Free);
            let mut response = forward(&gate, request, None).await.unwrap_or_else(|response| response);
            response.headers_mut().remove(HEADER_TALLY_CHARGE);
            response
        }
        Decision::Unmatched => {
            count("unmatched", Outcome::Forbidden);
            plain(StatusCode::FORBIDDEN, "tally_not_for_sale", "this gateway sells no such resource")
        }
        Decision::Priced(route) => {
            let Some(url) = url else {
                count(&route.name, Outcome::Refused);
                return plain(StatusCode::URI_TOO_LONG, "tally_uri_too_long", "the URL is too long to name exactly");
            };
            paid(&gate, route, url, request).await
        }
    }
}

/// The requirements the gateway offers for `url` and settles against.
pub fn requirements(config: &GateConfig, route: &Route, url: &str, amount: u64) -> PaymentRequirements {
    PaymentRequirements {
        scheme: SCHEME_BATCH_SETTLEMENT.to_owned(),
        network: config.network.clone(),
        amount: amount.to_string(),
        asset: route.asset.clone(),
        pay_to: route.pay_to.clone(),
        max_timeout_seconds: Some(MAX_TIMEOUT_SECONDS),
        extra: Some(json!({ "resource": url })),
    }
}

fn price_of(route: &Route) -> &Price {
    route.price.as_ref().expect("a priced route has a price")
}

/// The 402 (or 409, 400) carrying the offer, in both dialects.
fn offer(gate: &Gate, route: &Route, url: &str, status: StatusCode, error: Option<&str>) -> Response {
    let config = &gate.config;
    let price = price_of(route);
    let mut info = json!({ "signatureSchemes": ["ed25519"], "tags": ["web-bot-auth"] });
    if let Some(registration) = &config.registration_url {
        info["registrationUrl"] = json!(registration);
    }
    let required = PaymentRequired {
        x402_version: X402_VERSION,
        error: error.map(str::to_owned),
        accepts: vec![requirements(config, route, url, price.offer())],
        resource: ResourceInfo {
            url: url.to_owned(),
            description: Some(route.description.clone()).filter(|d| !d.is_empty()),
            mime_type: None,
        },
        extensions: Some(json!({
            EXTENSION_HTTP_MESSAGE_SIGNATURES: { "info": info },
            EXTENSION_PAYMENT_IDENTIFIER: payment_identifier_offer(config.payment_id_required),
        })),
    };
    let body = json!({
        "error": error.unwrap_or("payment_required"),
        "message": error.and_then(Reason::from_code).map(Reason::message).unwrap_or("this resource requires an x402 payment; see the PAYMENT-REQUIRED header"),
        "accepts": required.accepts,
    });
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&encode_header_json(&required)) {
        headers.insert(HEADER_PAYMENT_REQUIRED, value);
    }
    if let Ok(value) = HeaderValue::from_str(&crawler::price_header(&route.asset, price.offer(), route.scale)) {
        headers.insert(crawler::HEADER_CRAWLER_PRICE, value);
    }
    if let Some(code) = error.map(crawler::error_for_reason)
        && let Ok(value) = HeaderValue::from_str(code.as_str())
    {
        headers.insert(crawler::HEADER_CRAWLER_ERROR, value);
    }
    response
}

fn plain(status: StatusCode, error: &str, message: &str) -> Response {
    (status, axum::Json(json!({ "error": error, "message": message }))).into_response()
}

/// The facilitator gave no verdict: nothing is served.
fn unavailable(route: &Route, unavailable: Unavailable) -> Response {
    count(&route.name, Outcome::Unavailable);
    let status = if unavailable.timed_out { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::BAD_GATEWAY };
    let mut response =
        plain(status, "tally_facilitator_unavailable", "the payment could not be checked; nothing was served");
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// A facilitator verdict of "no", as the client sees it.
fn refused(gate: &Gate, route: &Route, url: &str, status: StatusCode, reason: Option<&str>) -> Response {
    let reason = echoable_reason(reason);
    count(&route.name, Outcome::Refused);
    count_refusal(&route.name, reason);
    match status {
        StatusCode::CONFLICT => offer(gate, route, url, StatusCode::CONFLICT, Some(reason)),
        StatusCode::OK | StatusCode::PAYMENT_REQUIRED | StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
            offer(gate, route, url, StatusCode::PAYMENT_REQUIRED, Some(reason))
        }
        _ => {
            tracing::warn!(%status, "facilitator answered an unexpected status; not serving");
            unavailable(route, Unavailable { timed_out: false })
        }
    }
}

async fn paid(gate: &Gate, route: &Route, url: String, request: Request<Body>) -> Response {
    let config = &gate.config;
    let price = price_of(route).clone();
    let offered = requirements(config, route, &url, price.offer());
    // The same readers `PaywallLayer` uses: one way to read a payment in both resource servers.
    let (payment_payload, pay_per_crawl) = match request.headers().get(HEADER_PAYMENT_SIGNATURE) {
        Some(value) => match x402_payment(config.payment_id_required, &request, value) {
            Ok(payload) => (payload, false),
            Err((status, reason)) => return refused(gate, route, &url, status, Some(reason)),
        },
        None => match crawler::payment(request.headers(), route.scale, &offered, &url) {
            Ok(Some(payload)) => (payload, true),
            Ok(None) => {
                count(&route.name, Outcome::PaymentRequired);
                return offer(gate, route, &url, StatusCode::PAYMENT_REQUIRED, None);
            }
            Err(error) => return crawler_refusal(gate, route, &url, error),
        },
    };
    let mut body = FacilitatorRequest { x402_version: X402_VERSION, payment_payload, payment_requirements: offered };

    // 2. Verify: nothing is recorded, and the payer is named.
    let payer = match gate.facilitator.verify(&body).await {
        Ok((StatusCode::OK, VerifyResponse { is_valid: true, payer, .. })) => payer.unwrap_or_default(),
        Ok((status, verdict)) => return refused(gate, route, &url, status, verdict.invalid_reason.as_deref()),
        Err(error) => return unavailable(route, error),
    };
    if !config.payers.admits(&payer) || !route.payers.admits(&payer) {
        count(&route.name, Outcome::Forbidden);
        count_refusal(&route.name, "tally_payer_forbidden");
        let mut response =
            plain(StatusCode::FORBIDDEN, "tally_payer_forbidden", "this payer may not buy this resource");
        response.headers_mut().insert(crawler::HEADER_CRAWLER_ERROR, HeaderValue::from_static("CrawlerForbidden"));
        return response;
    }

    // 3. Fetch from the origin.
    let mut response = match forward(gate, request, Some(&payer)).await {
        Ok(response) => response,
        Err(response) => {
            count(&route.name, Outcome::OriginError);
            return response;
        }
    };
    if !response.status().is_success() {
        // An error response (or a redirect) is never charged.
        count(&route.name, Outcome::OriginError);
        response.headers_mut().remove(HEADER_TALLY_CHARGE);
        return response;
    }

    // 4. Charge what the response costs.
    let (mut parts, origin_body) = response.into_parts();
    let charge = match charge(&price, route.scale, parts.headers.remove(HEADER_TALLY_CHARGE)) {
        Some(charge) => charge,
        None => {
            tracing::warn!(route = %route.name, "the origin's tally-charge is outside the route's range; not delivering");
            count(&route.name, Outcome::OriginError);
            return plain(
                StatusCode::BAD_GATEWAY,
                "tally_invalid_charge",
                "the origin asked a charge outside the route's price",
            );
        }
    };
    body.payment_requirements.amount = charge.to_string();
    let settled = match gate.facilitator.settle(&body).await {
        Ok((StatusCode::OK, settled)) if settled.success && !settled.transaction.is_empty() => settled,
        Ok((status, settled)) => return refused(gate, route, &url, status, settled.error_reason.as_deref()),
        Err(error) => return unavailable(route, error),
    };
    // Tally always reports the charge it recorded; an answer without one is not trusted.
    if settled.amount.as_deref() != Some(body.payment_requirements.amount.as_str()) {
        tracing::error!(transaction = %settled.transaction, "the facilitator recorded another charge than asked; not serving");
        count(&route.name, Outcome::Unavailable);
        return plain(
            StatusCode::BAD_GATEWAY,
            "tally_facilitator_charge_mismatch",
            "the payment was recorded at another charge",
        );
    }
    count(&route.name, Outcome::Paid);
    count_revenue(&route.name, &route.asset, charge);

    // 5. Stream the origin's body with the receipt.
    let receipt = PaymentResponse {
        success: true,
        transaction: settled.transaction,
        network: settled.network,
        payer: settled.payer,
        amount: charge.to_string(),
        asset: route.asset.clone(),
        extra: PaymentResponseExtra { timestamp: unix_now_s() },
    };
    if let Ok(value) = HeaderValue::from_str(&encode_header_json(&receipt)) {
        parts.headers.insert(HEADER_PAYMENT_RESPONSE, value);
    }
    if pay_per_crawl && let Ok(value) = HeaderValue::from_str(&crawler::price_header(&route.asset, charge, route.scale))
    {
        parts.headers.insert(crawler::HEADER_CRAWLER_CHARGED, value);
    }
    Response::from_parts(parts, origin_body)
}

fn crawler_refusal(gate: &Gate, route: &Route, url: &str, error: CrawlerError) -> Response {
    count(&route.name, Outcome::Refused);
    count_refusal(&route.name, error.as_str());
    let mut response = offer(gate, route, url, error.status(), Some(error.reason()));
    if let Ok(value) = HeaderValue::from_str(error.as_str()) {
        response.headers_mut().insert(crawler::HEADER_CRAWLER_ERROR, value);
    }
    response
}

/// The charge of one response: the exact price, or the origin's narrowing of a range.
/// `None` when the origin asked something outside the range (or unreadable).
fn charge(price: &Price, scale: u8, asked: Option<HeaderValue>) -> Option<u64> {
    match (price, asked) {
        (Price::Exact(price), _) => Some(*price),
        (Price::Range { max, .. }, None) => Some(*max),
        (Price::Range { min, max }, Some(asked)) => {
            let units = tally_core::amount::parse_amount(asked.to_str().ok()?.trim(), scale).ok()?;
            let units = u64::try_from(units).ok()?;
            (*min..=*max).contains(&units).then_some(units)
        }
    }
}

/// Removes hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Sends the request to the origin and returns its response (body streaming),
/// or the error response to give the client.
async fn forward(gate: &Gate, request: Request<Body>, payer: Option<&str>) -> Result<Response, Response> {
    let config = &gate.config;
    let limits = &config.limits;
    let (mut parts, body) = request.into_parts();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.request_body_bytes_max as u64) {
        return Err(plain(StatusCode::PAYLOAD_TOO_LARGE, "tally_body_too_large", "the request body is too large"));
    }
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let uri: Uri = match format!("{}{path}", config.upstream).parse() {
        Ok(uri) => uri,
        Err(_) => return Err(plain(StatusCode::BAD_REQUEST, "tally_bad_path", "the request path cannot be forwarded")),
    };
    // `handle` set `Host` to what was priced; a `Connection: host` cannot take it away.
    let host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    // The origin sees the request, not the payment: its headers are the gateway's business.
    for name in [HEADER_PAYMENT_SIGNATURE, HEADER_TALLY_PAYER] {
        parts.headers.remove(name);
    }
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }
    if let Some(value) = parts.headers.get(header::HOST).cloned() {
        parts.headers.insert("x-forwarded-host", value);
    }
    parts.headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if config.public_scheme == "https" { "https" } else { "http" }),
    );
    if let Some(payer) = payer.and_then(|p| HeaderValue::from_str(p).ok()) {
        parts.headers.insert(HEADER_TALLY_PAYER, payer);
    }
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let body = Body::new(http_body_util::Limited::new(body, limits.request_body_bytes_max));
    let outgoing = Request::from_parts(parts, body);
    let answer = tokio::time::timeout(limits.origin_timeout, gate.origin.request(outgoing)).await;
    let response = match answer {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            tracing::warn!(%error, upstream = %config.upstream, "origin request failed");
            return Err(plain(StatusCode::BAD_GATEWAY, "tally_origin_unavailable", "the origin could not be reached"));
        }
        Err(_) => {
            tracing::warn!(upstream = %config.upstream, "origin timed out");
            return Err(plain(
                StatusCode::GATEWAY_TIMEOUT,
                "tally_origin_timeout",
                "the origin did not answer in time",
            ));
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_narrows_a_range_and_nothing_else() {
        let range = Price::Range { min: 1_000, max: 50_000 };
        let asked = |text: &str| Some(HeaderValue::from_str(text).unwrap());
        assert_eq!(charge(&range, 6, None), Some(50_000), "no narrowing: the offer");
        assert_eq!(charge(&range, 6, asked("0.002")), Some(2_000));
        assert_eq!(charge(&range, 6, asked("0.0005")), None, "below the minimum");
        assert_eq!(charge(&range, 6, asked("0.06")), None, "above the offer");
        assert_eq!(charge(&range, 6, asked("0.0000001")), None, "finer than the asset");
        assert_eq!(charge(&range, 6, asked("-1")), None);
        assert_eq!(charge(&Price::Exact(7), 6, asked("0.000001")), Some(7), "an exact route ignores it");
    }

    #[test]
    fn a_path_is_priced_as_the_origin_reads_it() {
        assert_eq!(normalize_path("/articles/1").as_deref(), Some("/articles/1"));
        assert_eq!(normalize_path("/%61rticles/1").as_deref(), Some("/articles/1"));
        assert_eq!(normalize_path("/a%2a%7e").as_deref(), Some("/a%2A~"));
        assert_eq!(normalize_path("/articles/").as_deref(), Some("/articles/"));
        assert_eq!(normalize_path("/").as_deref(), Some("/"));
        for bad in [
            "/.well-known/../articles/1",
            "/.well-known/%2e%2e/articles/1",
            "//articles/1",
            "/./articles/1",
            "/articles/.",
            "/a%2fb",
            "/a%5cb",
            "/a\\b",
            "/a%zz",
            "/a%4",
            "articles",
        ] {
            assert_eq!(normalize_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::ACCEPT));
    }
}

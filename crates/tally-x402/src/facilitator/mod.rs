//! The facilitator HTTP API (x402 v2) for `batch-settlement` on Tally's
//! network: `GET /supported`, `POST /verify`, `POST /settle`.
//!
//! `/settle` records the commitment through the **same pipeline and writer
//! as gRPC IOUs**: the same stateless checks, key directory, batch
//! verification, replay index, credit limits and group commit, and it
//! answers only after the IOU is fsynced. `transaction` is the commitment
//! identifier (`<seq>:<hash>`), `amount` what was charged. `/verify` runs the
//! same checks up to the commit and previews replay and credit from the
//! ledger, recording nothing.
//!
//! How the pieces meet: [`check`] binds a request to its offer, its charge
//! and its resource without touching the ledger; [`ledger`] reads who pays and
//! what an earlier use of the nonce means; this module orchestrates the two
//! calls, and [`coalesce`] merges concurrent `/settle` requests into pipeline
//! batches (so signatures are batch-verified as on the gRPC door, with a few
//! batches in flight). Each request still gets its own per-IOU answer, after
//! the fsync.
//!
//! **One payment, one request.** A commitment already recorded buys nothing
//! more: a resubmission *without* a payment identifier is refused
//! (`payment_already_used`), so the same `PAYMENT-SIGNATURE` cannot unlock a
//! second response; *with* one, the identical payload is answered from the
//! ledger with the cached result (the original commitment and charge), as the
//! `payment-identifier` extension prescribes, and a different payload under
//! the id is a 409.
//!
//! HTTP statuses: 200 for every verdict (`isValid`/`success` say what it
//! is); 400 for a body that is not a facilitator request, or a required
//! payment identifier that is missing or malformed; 409 for a payment
//! identifier reused with a different payload; 413 for a body over
//! [`FacilitatorConfig::body_bytes_max`]; 503 when the ledger cannot answer.
//! Never 500, never a panic: every failure carries a reason code.

mod check;
mod coalesce;
mod ledger;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tally_core::{CommitmentId, Outcome, PayeeStatus, PayerStatus};
use tally_ingest::Pipeline;
use tally_ingest::pipeline::Charged;
use tally_ledger::Ledger;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::commitment::{FORMAT_TALLY_IOU, FORMAT_WEB_BOT_AUTH};
use crate::types::*;
use check::{Phase, check_request};
use coalesce::{SettleItem, coalesce};
use ledger::{Replay, cached_retry, conflict, ledger_checks, outcome_reason};

/// Bounds and identity of the facilitator.
#[derive(Clone, Debug)]
pub struct FacilitatorConfig {
    /// The x402 network id Tally answers for (CAIP-2 style), which is also
    /// the network every IOU names.
    pub network: String,
    /// Largest request body.
    pub body_bytes_max: usize,
    /// Web Bot Auth: clock skew tolerated on `created` and `expires`.
    pub web_bot_auth_skew_max_s: u64,
    /// Web Bot Auth: largest `expires - created`.
    pub web_bot_auth_validity_max_s: u64,
}

impl FacilitatorConfig {
    pub fn new(network: &str) -> FacilitatorConfig {
        FacilitatorConfig {
            network: network.to_owned(),
            body_bytes_max: 64 * 1024,
            web_bot_auth_skew_max_s: 30,
            web_bot_auth_validity_max_s: 300,
        }
    }
}

pub use coalesce::{SETTLE_BATCH_IOUS_MAX, SETTLE_BATCHES_INFLIGHT_MAX, SETTLE_QUEUE_DEPTH_MAX};

pub struct Facilitator {
    config: FacilitatorConfig,
    pipeline: Arc<Pipeline>,
    ledger: Ledger,
    settle_queue: mpsc::Sender<SettleItem>,
}

/// A refusal: the reason code and the HTTP status it travels with.
struct Refusal {
    reason: Reason,
    status: StatusCode,
    payer: Option<String>,
}

/// What the ledger-side checks of a Web Bot Auth payment need from the request.
struct WebBotAuthRequest {
    /// The `Signature-Agent` value, unquoted (checked against the payer's registered agent).
    signature_agent: Option<String>,
    /// The `PAYMENT-SIGNATURE` value: a payment identifier's retries must repeat it.
    payment_signature: String,
}

impl Facilitator {
    /// Must be called inside a tokio runtime: it starts the coalescer.
    pub fn new(config: FacilitatorConfig, pipeline: Arc<Pipeline>, ledger: Ledger) -> Arc<Facilitator> {
        let (settle_queue, queue) = mpsc::channel(SETTLE_QUEUE_DEPTH_MAX);
        tokio::spawn(coalesce(pipeline.clone(), queue));
        Arc::new(Facilitator { config, pipeline, ledger, settle_queue })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/supported", get(supported))
            .route("/verify", post(verify))
            .route("/settle", post(settle))
            .layer(DefaultBodyLimit::max(self.config.body_bytes_max))
            .with_state(self.clone())
    }

    /// `assets` maps each enabled asset code to its decimals, so a resource
    /// server that prices in display units (the gateway) can check its scales.
    fn supported(&self, assets: serde_json::Map<String, serde_json::Value>) -> SupportedResponse {
        SupportedResponse {
            kinds: vec![SupportedKind {
                x402_version: X402_VERSION,
                scheme: SCHEME_BATCH_SETTLEMENT.to_owned(),
                network: self.config.network.clone(),
                extra: Some(json!({
                    "formats": [FORMAT_TALLY_IOU, FORMAT_WEB_BOT_AUTH, crate::commitment::FORMAT_PAY_PER_CRAWL],
                    "trustModel": "credit-backed",
                    // The server may charge less than it offered, at settle time.
                    "dynamicPricing": true,
                    "assets": assets,
                    "webBotAuth": {
                        "signatureSchemes": ["ed25519"],
                        "tags": [crate::webbotauth::WEB_BOT_AUTH_TAG],
                        "clockSkewMaxSeconds": self.config.web_bot_auth_skew_max_s,
                        "validityMaxSeconds": self.config.web_bot_auth_validity_max_s,
                    },
                })),
            }],
            extensions: vec![
                EXTENSION_PAYMENT_IDENTIFIER.to_owned(),
                crate::middleware::EXTENSION_HTTP_MESSAGE_SIGNATURES.to_owned(),
            ],
            signers: serde_json::Map::new(),
        }
    }

    fn unavailable(reason: Reason) -> Refusal {
        Refusal { reason, status: StatusCode::SERVICE_UNAVAILABLE, payer: None }
    }

    /// `/verify`: the pipeline's checks, then a read-only preview of the
    /// writer's decisions in its order: replay, validity window, accounts, credit.
    async fn verify(&self, body: &[u8]) -> Result<String, Refusal> {
        let checked = check_request(self, body, Phase::Verify)?;
        let outcome = self
            .pipeline
            .verify_only(checked.commitment.clone())
            .await
            .map_err(|_| Facilitator::unavailable(Reason::UnexpectedVerifyError))?;
        if outcome != Outcome::Accepted {
            return Err(Refusal::ok(outcome_reason(outcome)));
        }
        let ledger = self.ledger.clone();
        let pipeline = self.pipeline.clone();
        tokio::task::spawn_blocking(move || -> Result<String, Refusal> {
            let unavailable = |_| Facilitator::unavailable(Reason::UnexpectedVerifyError);
            let (payer, replay) = ledger_checks(&ledger, &checked).map_err(unavailable)??;
            let with_payer =
                |reason: Reason, status: StatusCode| Refusal { reason, status, payer: Some(payer.id.clone()) };
            match replay {
                // Already recorded: a retry of the same request is answered
                // from the ledger; anything else buys nothing more.
                Replay::Same(stored) => {
                    let recorded = stored.charge().map_err(unavailable)?;
                    return cached_retry(checked.retry_terms(), recorded, Some(payer.id.clone())).map(|()| payer.id);
                }
                Replay::Conflict => return Err(conflict(checked.payment_id.is_some(), Some(payer.id.clone()))),
                Replay::Fresh => {}
            }
            let iou = &checked.commitment.signed.iou;
            if let Err(outcome) = pipeline.check_window(iou) {
                return Err(with_payer(outcome_reason(outcome), StatusCode::OK));
            }
            if payer.status != PayerStatus::Active {
                return Err(with_payer(Reason::PayerSuspended, StatusCode::OK));
            }
            if payer.is_revoked(&iou.payer_key) {
                return Err(with_payer(Reason::KeyRevoked, StatusCode::OK));
            }
            // The writer's account checks, in its order (`writer/ious.rs`): asset, payee.
            match ledger.asset(&iou.asset).map_err(unavailable)? {
                Some(asset) if asset.enabled => {}
                // Unknown or disabled: the offer names what this network does not take.
                _ => return Err(with_payer(Reason::InvalidPaymentRequirements, StatusCode::OK)),
            }
            match ledger.payee(&iou.payee).map_err(unavailable)? {
                None => return Err(with_payer(Reason::InvalidPaymentRequirements, StatusCode::OK)),
                Some(payee) if payee.status == PayeeStatus::Suspended => {
                    return Err(with_payer(Reason::PayeeSuspended, StatusCode::OK));
                }
                Some(_) => {}
            }
            // The writer's own total (its last decided group), not a scan of the aggregates.
            let owed = pipeline.writer().exposure(&payer.id, &iou.asset);
            let within =
                owed.checked_add(u128::from(checked.charge)).is_some_and(|t| t <= payer.credit_limit(&iou.asset));
            if !within {
                return Err(with_payer(Reason::InsufficientFunds, StatusCode::OK));
            }
            Ok(payer.id)
        })
        .await
        .map_err(|_| Facilitator::unavailable(Reason::UnexpectedVerifyError))?
    }

    /// `/settle`: records through the pipeline; answers after the fsync.
    async fn settle(&self, body: &[u8]) -> Result<SettleResponse, Refusal> {
        let mut checked = check_request(self, body, Phase::Settle)?;
        // Web Bot Auth needs the ledger before the writer: the signature
        // agent belongs to the payer, and a payment identifier's retry under
        // a fresh signature is answered from the record, not re-submitted.
        if checked.web_bot_auth.is_some() {
            let ledger = self.ledger.clone();
            let (returned, verdict) = tokio::task::spawn_blocking(move || {
                let verdict = ledger_checks(&ledger, &checked);
                (checked, verdict)
            })
            .await
            .map_err(|_| Facilitator::unavailable(Reason::UnexpectedSettleError))?;
            checked = returned;
            let (payer, replay) = verdict.map_err(|_| Facilitator::unavailable(Reason::UnexpectedSettleError))??;
            match replay {
                Replay::Same(stored) => {
                    let charge =
                        stored.charge().map_err(|_| Facilitator::unavailable(Reason::UnexpectedSettleError))?;
                    cached_retry(checked.retry_terms(), charge, Some(payer.id.clone()))?;
                    return Ok(self.success(
                        Some(payer.id),
                        CommitmentId { seq: stored.seq, hash: stored.hash },
                        charge,
                    ));
                }
                Replay::Conflict => return Err(conflict(checked.payment_id.is_some(), Some(payer.id))),
                Replay::Fresh => {}
            }
        }
        let payer_key = checked.commitment.signed.iou.payer_key;
        let has_payment_id = checked.payment_id.is_some();
        let retry_terms = checked.retry_terms();
        let (reply, answer) = oneshot::channel();
        let item = Charged { commitment: checked.commitment, charge: checked.charge };
        self.settle_queue
            .send((item, reply))
            .await
            .map_err(|_| Facilitator::unavailable(Reason::UnexpectedSettleError))?;
        let result =
            answer.await.ok().flatten().ok_or_else(|| Facilitator::unavailable(Reason::UnexpectedSettleError))?;
        let ledger = self.ledger.clone();
        let payer =
            tokio::task::spawn_blocking(move || ledger.key_owner(&payer_key).ok().flatten()).await.ok().flatten();
        match (result.outcome, result.commitment) {
            (Outcome::Accepted, Some(commitment)) => Ok(self.success(payer, commitment, result.charge)),
            // The cached result of the same request's retry: the original commitment and charge.
            (Outcome::Duplicate, Some(commitment)) => {
                cached_retry(retry_terms, result.charge, payer.clone())?;
                Ok(self.success(payer, commitment, result.charge))
            }
            (Outcome::Duplicate, None) => {
                Err(Refusal { reason: Reason::PaymentAlreadyUsed, status: StatusCode::OK, payer })
            }
            (Outcome::Conflict, _) => Err(conflict(has_payment_id, payer)),
            (outcome, _) if outcome.is_success() => Err(Facilitator::unavailable(Reason::UnexpectedSettleError)),
            (outcome, _) => Err(Refusal { reason: outcome_reason(outcome), status: StatusCode::OK, payer }),
        }
    }

    fn success(&self, payer: Option<String>, commitment: CommitmentId, charge: u64) -> SettleResponse {
        SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer,
            transaction: commitment.to_string(),
            network: self.config.network.clone(),
            amount: Some(charge.to_string()),
        }
    }
}

async fn supported(State(facilitator): State<Arc<Facilitator>>) -> Response {
    let ledger = facilitator.ledger.clone();
    let assets = tokio::task::spawn_blocking(move || ledger.assets()).await;
    let Ok(Ok(assets)) = assets else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let assets = assets.into_iter().filter(|a| a.enabled).map(|a| (a.code, json!(a.scale))).collect();
    axum::Json(facilitator.supported(assets)).into_response()
}

/// A body axum could not read (over the size limit, or cut off): its status (413 for an oversized
/// body) with the x402 reason code, never axum's plain-text answer.
fn unreadable_body(rejection: &BytesRejection) -> Refusal {
    Refusal { reason: Reason::InvalidPayload, status: rejection.status(), payer: None }
}

async fn verify(State(facilitator): State<Arc<Facilitator>>, body: Result<Bytes, BytesRejection>) -> Response {
    let (status, answer) = match &body {
        Ok(body) => facilitator.answer_verify(body).await,
        Err(rejection) => verify_refused(unreadable_body(rejection)),
    };
    metrics::counter!("tally_x402_requests_total", "route" => "verify", "status" => status.as_str().to_owned())
        .increment(1);
    (status, axum::Json(answer)).into_response()
}

async fn settle(State(facilitator): State<Arc<Facilitator>>, body: Result<Bytes, BytesRejection>) -> Response {
    let (status, answer) = match &body {
        Ok(body) => facilitator.answer_settle(body).await,
        Err(rejection) => facilitator.settle_refused(unreadable_body(rejection)),
    };
    metrics::counter!("tally_x402_requests_total", "route" => "settle", "status" => status.as_str().to_owned())
        .increment(1);
    (status, axum::Json(answer)).into_response()
}

fn verify_refused(refusal: Refusal) -> (StatusCode, VerifyResponse) {
    let answer = VerifyResponse {
        is_valid: false,
        invalid_reason: Some(refusal.reason.as_str().to_owned()),
        invalid_message: Some(refusal.reason.message().to_owned()),
        payer: refusal.payer,
    };
    (refusal.status, answer)
}

impl Facilitator {
    /// `POST /verify` on `body`, answered in process: the status and answer
    /// the HTTP route gives. A resource server inside `tally serve` (the
    /// gateway) calls this, sharing the engine's pipeline without a hop.
    pub async fn answer_verify(&self, body: &[u8]) -> (StatusCode, VerifyResponse) {
        match self.verify(body).await {
            Ok(payer) => (
                StatusCode::OK,
                VerifyResponse { is_valid: true, invalid_reason: None, invalid_message: None, payer: Some(payer) },
            ),
            Err(refusal) => verify_refused(refusal),
        }
    }

    /// `POST /settle` on `body`, answered in process (see [`Facilitator::answer_verify`]).
    pub async fn answer_settle(&self, body: &[u8]) -> (StatusCode, SettleResponse) {
        match self.settle(body).await {
            Ok(answer) => (StatusCode::OK, answer),
            Err(refusal) => self.settle_refused(refusal),
        }
    }

    fn settle_refused(&self, refusal: Refusal) -> (StatusCode, SettleResponse) {
        let answer = SettleResponse {
            success: false,
            error_reason: Some(refusal.reason.as_str().to_owned()),
            error_message: Some(refusal.reason.message().to_owned()),
            payer: refusal.payer,
            transaction: String::new(),
            network: self.config.network.clone(),
            amount: None,
        };
        (refusal.status, answer)
    }

    /// The network this facilitator records payments for.
    pub fn network(&self) -> &str {
        &self.config.network
    }
}

/// A running HTTP listener.
pub struct RunningHttp {
    pub local_addr: SocketAddr,
    server: tally_ingest::server::http::RunningHttpServer,
}

impl RunningHttp {
    /// Stops accepting and lets in-flight requests finish.
    pub async fn stop(self) -> std::io::Result<()> {
        self.server.stop().await;
        Ok(())
    }
}

/// Binds `addr` and serves the facilitator until stopped, in plaintext with
/// the default HTTP limits ([`tally_ingest::server::http::HttpLimits`]).
pub async fn serve_http(facilitator: &Arc<Facilitator>, addr: SocketAddr) -> std::io::Result<RunningHttp> {
    serve_http_with(facilitator, addr, tally_ingest::server::http::HttpOptions::default()).await
}

/// Binds `addr` and serves the facilitator until stopped, on the hardened
/// listener of `tally_ingest::server::http` (connection, header, request and
/// size bounds; TLS if `options.tls` is set).
pub async fn serve_http_with(
    facilitator: &Arc<Facilitator>,
    addr: SocketAddr,
    options: tally_ingest::server::http::HttpOptions,
) -> std::io::Result<RunningHttp> {
    let listener = TcpListener::bind(addr).await?;
    let tls = options.tls.is_some();
    let server = tally_ingest::server::http::serve_router(listener, facilitator.router(), options)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let local_addr = server.local_addr;
    tracing::info!(%local_addr, tls, "x402 facilitator listening");
    Ok(RunningHttp { local_addr, server })
}

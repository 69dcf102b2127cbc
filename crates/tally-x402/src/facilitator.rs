//! The facilitator HTTP API (x402 v2) for `batch-settlement` on Tally's
//! network: `GET /supported`, `POST /verify`, `POST /settle`.
//!
//! `/settle` records the commitment through the **same pipeline and writer
//! as gRPC IOUs**: the same stateless checks, key directory, batch
//! verification, replay index, credit limits and group commit, and it
//! answers only after the IOU is fsynced. `transaction` is the commitment
//! identifier (`<seq>:<hash>`). `/verify` runs the same checks up to the
//! commit and previews replay and credit from the ledger, recording nothing.
//!
//! Concurrent `/settle` requests are **coalesced**: each hands its IOU to a
//! bounded queue, and a coalescer submits whatever is waiting (up to
//! [`SETTLE_BATCH_IOUS_MAX`]) as one pipeline batch, so signatures are
//! batch-verified as on the gRPC door, with a few batches in flight. Each
//! request still gets its own per-IOU answer, after the fsync.
//!
//! HTTP statuses: 200 for every verdict (`isValid`/`success` say what it
//! is); 400 for a body that is not a facilitator request, or a required
//! payment identifier that is missing or malformed; 409 for a payment
//! identifier reused with a different payload; 413 for a body over
//! [`FacilitatorConfig::body_bytes_max`]; 503 when the ledger cannot answer.
//! Never 500, never a panic: every failure carries a reason code.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tally_core::{Outcome, PayerStatus, SignedIou};
use tally_ingest::Pipeline;
use tally_ledger::AppendResult;
use tally_ledger::Ledger;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::commitment::{FORMAT_TALLY_IOU, TallyIouPayload, nonce_for_payment_id, payment_id_is_valid};
use crate::types::*;

/// Bounds and identity of the facilitator.
#[derive(Clone, Debug)]
pub struct FacilitatorConfig {
    /// The x402 network id Tally answers for (CAIP-2 style), which is also
    /// the network every IOU names.
    pub network: String,
    /// Largest request body.
    pub body_bytes_max: usize,
}

impl FacilitatorConfig {
    pub fn new(network: &str) -> FacilitatorConfig {
        FacilitatorConfig { network: network.to_owned(), body_bytes_max: 64 * 1024 }
    }
}

/// Most IOUs the coalescer puts in one pipeline batch.
pub const SETTLE_BATCH_IOUS_MAX: usize = 1_024;
/// Coalesced batches in the pipeline at once (verification of the next
/// overlaps the fsync of the previous).
pub const SETTLE_BATCHES_INFLIGHT_MAX: usize = 4;
/// `/settle` requests waiting for a batch before new ones wait for room.
pub const SETTLE_QUEUE_DEPTH_MAX: usize = 4_096;

type SettleReply = oneshot::Sender<Option<AppendResult>>;

pub struct Facilitator {
    config: FacilitatorConfig,
    pipeline: Arc<Pipeline>,
    ledger: Ledger,
    settle_queue: mpsc::Sender<(SignedIou, SettleReply)>,
}

/// Drains the settle queue into pipeline batches until every sender is gone.
async fn coalesce(pipeline: Arc<Pipeline>, mut queue: mpsc::Receiver<(SignedIou, SettleReply)>) {
    let inflight = Arc::new(Semaphore::new(SETTLE_BATCHES_INFLIGHT_MAX));
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < SETTLE_BATCH_IOUS_MAX {
            match queue.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let Ok(permit) = inflight.clone().acquire_owned().await else { return };
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            let (ious, replies): (Vec<SignedIou>, Vec<SettleReply>) = batch.into_iter().unzip();
            let results = pipeline.submit(ious.into_iter().map(Ok).collect()).await;
            drop(permit);
            match results {
                Ok(results) => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(Some(result));
                    }
                }
                // Nothing of the batch was written: every request hears so.
                Err(error) => {
                    tracing::warn!(%error, "a coalesced /settle batch failed");
                    for reply in replies {
                        let _ = reply.send(None);
                    }
                }
            }
        });
    }
}

/// A refusal: the reason code and the HTTP status it travels with.
struct Refusal {
    reason: Reason,
    status: StatusCode,
    payer: Option<String>,
}

impl Refusal {
    fn ok(reason: Reason) -> Refusal {
        Refusal { reason, status: StatusCode::OK, payer: None }
    }

    fn bad_request(reason: Reason) -> Refusal {
        Refusal { reason, status: StatusCode::BAD_REQUEST, payer: None }
    }
}

/// A request that passed every check that needs no ledger.
struct Checked {
    signed: SignedIou,
    payment_id: Option<String>,
}

fn outcome_reason(outcome: Outcome) -> Reason {
    match outcome {
        Outcome::Accepted | Outcome::Duplicate => unreachable!("successes carry no reason"),
        Outcome::Conflict => Reason::InvalidTransactionState,
        Outcome::BadSignature => Reason::InvalidSignature,
        Outcome::UnknownPayer => Reason::SignatureAgentUnknown,
        Outcome::SuspendedPayer => Reason::PayerSuspended,
        Outcome::UnknownPayee | Outcome::UnknownAsset | Outcome::AssetDisabled => Reason::InvalidPaymentRequirements,
        Outcome::Expired | Outcome::NotYetValid | Outcome::ValidityTooLong => Reason::Expired,
        Outcome::InvalidAmount | Outcome::Malformed => Reason::InvalidPayload,
        Outcome::CreditLimitExceeded => Reason::InsufficientFunds,
        Outcome::WrongNetwork => Reason::InvalidNetwork,
    }
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

    fn supported(&self) -> SupportedResponse {
        SupportedResponse {
            kinds: vec![SupportedKind {
                x402_version: X402_VERSION,
                scheme: SCHEME_BATCH_SETTLEMENT.to_owned(),
                network: self.config.network.clone(),
                extra: Some(json!({ "formats": [FORMAT_TALLY_IOU], "trustModel": "credit-backed" })),
            }],
            extensions: vec![EXTENSION_PAYMENT_IDENTIFIER.to_owned()],
            signers: serde_json::Map::new(),
        }
    }

    /// Everything that needs no ledger: version, scheme, network, the
    /// requirements echo, the payload's format and fields, the amount cap,
    /// the payment identifier.
    fn check_request(&self, body: &[u8]) -> Result<Checked, Refusal> {
        let request: FacilitatorRequest =
            serde_json::from_slice(body).map_err(|_| Refusal::bad_request(Reason::InvalidPayload))?;
        if request.x402_version != X402_VERSION || request.payment_payload.x402_version != X402_VERSION {
            return Err(Refusal::ok(Reason::InvalidX402Version));
        }
        let requirements = &request.payment_requirements;
        if requirements.scheme != SCHEME_BATCH_SETTLEMENT {
            return Err(Refusal::ok(Reason::UnsupportedScheme));
        }
        if requirements.network != self.config.network {
            return Err(Refusal::ok(Reason::InvalidNetwork));
        }
        let accepted = &request.payment_payload.accepted;
        if accepted.scheme != requirements.scheme
            || accepted.network != requirements.network
            || accepted.amount != requirements.amount
            || accepted.asset != requirements.asset
            || accepted.pay_to != requirements.pay_to
        {
            return Err(Refusal::ok(Reason::InvalidPaymentRequirements));
        }
        let max_amount: u64 =
            requirements.amount.parse().map_err(|_| Refusal::ok(Reason::InvalidPaymentRequirements))?;

        let payload = &request.payment_payload.payload;
        match payload.get("format").and_then(Value::as_str) {
            Some(FORMAT_TALLY_IOU) => {}
            _ => return Err(Refusal::ok(Reason::InvalidPayload)),
        }
        let payload: TallyIouPayload =
            serde_json::from_value(payload.clone()).map_err(|_| Refusal::ok(Reason::InvalidPayload))?;
        let signed = payload.to_signed().map_err(Refusal::ok)?;
        let iou = &signed.iou;
        if iou.network != requirements.network {
            return Err(Refusal::ok(Reason::InvalidNetwork));
        }
        if iou.asset != requirements.asset || iou.payee != requirements.pay_to {
            return Err(Refusal::ok(Reason::InvalidPaymentRequirements));
        }
        if iou.amount > max_amount {
            return Err(Refusal::ok(Reason::PriceNotAcceptable));
        }

        let extension = request.payment_payload.extensions.as_ref().and_then(|e| e.get(EXTENSION_PAYMENT_IDENTIFIER));
        let required = extension.and_then(|e| e.get("required")).and_then(Value::as_bool).unwrap_or(false);
        let payment_id = extension.and_then(|e| e.get("info")).and_then(|i| i.get("id")).and_then(Value::as_str);
        let payment_id = match payment_id {
            None if required => return Err(Refusal::bad_request(Reason::PaymentIdentifierRequired)),
            None => None,
            Some(id) => {
                if !payment_id_is_valid(id) || nonce_for_payment_id(id) != iou.nonce {
                    return Err(Refusal::bad_request(Reason::InvalidPayload));
                }
                Some(id.to_owned())
            }
        };
        Ok(Checked { signed, payment_id })
    }

    fn unavailable(reason: Reason) -> Refusal {
        Refusal { reason, status: StatusCode::SERVICE_UNAVAILABLE, payer: None }
    }

    /// `/verify`: the pipeline's checks, then a read-only preview of the
    /// writer's replay and credit decisions.
    async fn verify(&self, body: &[u8]) -> Result<String, Refusal> {
        let checked = self.check_request(body)?;
        let outcome = self
            .pipeline
            .verify_only(checked.signed.clone())
            .await
            .map_err(|_| Facilitator::unavailable(Reason::UnexpectedVerifyError))?;
        if outcome != Outcome::Accepted {
            return Err(Refusal::ok(outcome_reason(outcome)));
        }
        let ledger = self.ledger.clone();
        let signed = checked.signed;
        let has_payment_id = checked.payment_id.is_some();
        tokio::task::spawn_blocking(move || -> Result<String, Refusal> {
            let unavailable = |_| Facilitator::unavailable(Reason::UnexpectedVerifyError);
            let iou = &signed.iou;
            let payer_id = ledger
                .key_owner(&iou.payer_key)
                .map_err(unavailable)?
                .ok_or_else(|| Refusal::ok(Reason::SignatureAgentUnknown))?;
            let with_payer =
                |reason: Reason, status: StatusCode| Refusal { reason, status, payer: Some(payer_id.clone()) };
            if let Some(stored) = ledger.lookup_iou(&iou.payer_key, &iou.nonce).map_err(unavailable)? {
                // Already recorded: the same IOU verifies (a retry), a
                // different one under the same nonce never will.
                if stored.signing_bytes == iou.signing_bytes() {
                    return Ok(payer_id);
                }
                let status = if has_payment_id { StatusCode::CONFLICT } else { StatusCode::OK };
                let reason =
                    if has_payment_id { Reason::PaymentIdentifierConflict } else { Reason::InvalidTransactionState };
                return Err(with_payer(reason, status));
            }
            let payer = ledger
                .payer(&payer_id)
                .map_err(unavailable)?
                .ok_or_else(|| Refusal::ok(Reason::SignatureAgentUnknown))?;
            if payer.status != PayerStatus::Active {
                return Err(with_payer(Reason::PayerSuspended, StatusCode::OK));
            }
            let owed = ledger.unsettled_owed(Some(&payer_id)).map_err(unavailable)?;
            let owed = owed.get(&(payer_id.clone(), iou.asset.clone())).copied().unwrap_or(0);
            let within = owed.checked_add(u128::from(iou.amount)).is_some_and(|t| t <= payer.credit_limit(&iou.asset));
            if !within {
                return Err(with_payer(Reason::InsufficientFunds, StatusCode::OK));
            }
            Ok(payer_id)
        })
        .await
        .map_err(|_| Facilitator::unavailable(Reason::UnexpectedVerifyError))?
    }

    /// `/settle`: records through the pipeline; answers after the fsync.
    async fn settle(&self, body: &[u8]) -> Result<SettleResponse, Refusal> {
        let checked = self.check_request(body)?;
        let amount = checked.signed.iou.amount.to_string();
        let payer_key = checked.signed.iou.payer_key;
        let (reply, answer) = oneshot::channel();
        self.settle_queue
            .send((checked.signed, reply))
            .await
            .map_err(|_| Facilitator::unavailable(Reason::UnexpectedSettleError))?;
        let result =
            answer.await.ok().flatten().ok_or_else(|| Facilitator::unavailable(Reason::UnexpectedSettleError))?;
        let ledger = self.ledger.clone();
        let payer =
            tokio::task::spawn_blocking(move || ledger.key_owner(&payer_key).ok().flatten()).await.ok().flatten();
        match (result.outcome, result.commitment) {
            (Outcome::Accepted | Outcome::Duplicate, Some(commitment)) => Ok(SettleResponse {
                success: true,
                error_reason: None,
                payer,
                transaction: commitment.to_string(),
                network: self.config.network.clone(),
                amount: Some(amount),
            }),
            (Outcome::Conflict, _) if checked.payment_id.is_some() => {
                Err(Refusal { reason: Reason::PaymentIdentifierConflict, status: StatusCode::CONFLICT, payer })
            }
            (outcome, _) if outcome.is_success() => Err(Facilitator::unavailable(Reason::UnexpectedSettleError)),
            (outcome, _) => Err(Refusal { reason: outcome_reason(outcome), status: StatusCode::OK, payer }),
        }
    }
}

async fn supported(State(facilitator): State<Arc<Facilitator>>) -> Response {
    axum::Json(facilitator.supported()).into_response()
}

async fn verify(State(facilitator): State<Arc<Facilitator>>, body: Bytes) -> Response {
    let (status, answer) = match facilitator.verify(&body).await {
        Ok(payer) => (StatusCode::OK, VerifyResponse { is_valid: true, invalid_reason: None, payer: Some(payer) }),
        Err(refusal) => (
            refusal.status,
            VerifyResponse {
                is_valid: false,
                invalid_reason: Some(refusal.reason.as_str().to_owned()),
                payer: refusal.payer,
            },
        ),
    };
    metrics::counter!("tally_x402_requests_total", "route" => "verify", "status" => status.as_str().to_owned())
        .increment(1);
    (status, axum::Json(answer)).into_response()
}

async fn settle(State(facilitator): State<Arc<Facilitator>>, body: Bytes) -> Response {
    let network = facilitator.config.network.clone();
    let (status, answer) = match facilitator.settle(&body).await {
        Ok(answer) => (StatusCode::OK, answer),
        Err(refusal) => (
            refusal.status,
            SettleResponse {
                success: false,
                error_reason: Some(refusal.reason.as_str().to_owned()),
                payer: refusal.payer,
                transaction: String::new(),
                network,
                amount: None,
            },
        ),
    };
    metrics::counter!("tally_x402_requests_total", "route" => "settle", "status" => status.as_str().to_owned())
        .increment(1);
    (status, axum::Json(answer)).into_response()
}

/// A running HTTP listener.
pub struct RunningHttp {
    pub local_addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningHttp {
    /// Stops accepting and lets in-flight requests finish.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(());
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Binds `addr` and serves the facilitator until stopped.
pub async fn serve_http(facilitator: &Arc<Facilitator>, addr: SocketAddr) -> std::io::Result<RunningHttp> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let router = facilitator.router();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(%local_addr, "x402 facilitator listening");
    Ok(RunningHttp { local_addr, shutdown, task })
}

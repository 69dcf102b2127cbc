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
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tally_core::evidence::{evidence_iou_bytes, signature_base_value};
use tally_core::{Commitment, CommitmentId, EvidenceKind, Outcome, Payer, PayerStatus};
use tally_ingest::Pipeline;
use tally_ledger::{AppendResult, Ledger, LedgerError, StoredIou};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::commitment::{
    FORMAT_TALLY_IOU, FORMAT_WEB_BOT_AUTH, TallyIouPayload, WebBotAuthPayload, nonce_for_payment_id,
    payment_id_is_valid,
};
use crate::middleware::decode_header_json;
use crate::types::*;
use crate::webbotauth::{
    PAYMENT_SIGNATURE_BYTES_MAX, SignedRequestParts, VerifyPolicy, WebBotAuthError, check_web_bot_auth,
};

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
    settle_queue: mpsc::Sender<(Commitment, SettleReply)>,
}

/// Drains the settle queue into pipeline batches until every sender is gone.
async fn coalesce(pipeline: Arc<Pipeline>, mut queue: mpsc::Receiver<(Commitment, SettleReply)>) {
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
            let (commitments, replies): (Vec<Commitment>, Vec<SettleReply>) = batch.into_iter().unzip();
            let results = pipeline.submit_commitments(commitments.into_iter().map(Ok).collect()).await;
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
    commitment: Commitment,
    payment_id: Option<String>,
    /// Set for Web Bot Auth payments.
    web_bot_auth: Option<WebBotAuthRequest>,
}

/// What the ledger-side checks of a Web Bot Auth payment need from the request.
struct WebBotAuthRequest {
    /// The `Signature-Agent` value, unquoted (checked against the payer's registered agent).
    signature_agent: Option<String>,
    /// The `PAYMENT-SIGNATURE` value: a payment identifier's retries must repeat it.
    payment_signature: String,
}

/// What a key's earlier use of the same nonce means for a new commitment.
enum Replay {
    /// No earlier use.
    Fresh,
    /// The same payment again: answer with the original commitment.
    Same(StoredIou),
    /// A different payment under the same nonce.
    Conflict,
}

/// Compares a stored record with a new commitment under the same `(key, nonce)`. Identical
/// evidence is the same payment. So is a Web Bot Auth payment with a payment identifier whose
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
fn web_bot_auth_reason(error: &WebBotAuthError) -> Reason {
    match error.reason_code() {
        "invalid_payment_signature" => Reason::InvalidPaymentSignature,
        "invalid_payload" => Reason::InvalidPayload,
        "signature_agent_unknown" => Reason::SignatureAgentUnknown,
        _ => Reason::InvalidSignature,
    }
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
                extra: Some(json!({
                    "formats": [FORMAT_TALLY_IOU, FORMAT_WEB_BOT_AUTH],
                    "trustModel": "credit-backed",
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

    /// Everything that needs no ledger: version, scheme, network, the
    /// requirements echo, the payload's format and fields, the amount cap,
    /// the payment identifier; for Web Bot Auth also the RFC 9421 rules.
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
        if !echoes(&request.payment_payload.accepted, requirements) {
            return Err(Refusal::ok(Reason::InvalidPaymentRequirements));
        }
        let max_amount: u64 =
            requirements.amount.parse().map_err(|_| Refusal::ok(Reason::InvalidPaymentRequirements))?;

        match request.payment_payload.payload.get("format").and_then(Value::as_str) {
            Some(FORMAT_TALLY_IOU) => self.check_tally_iou(&request, max_amount),
            Some(FORMAT_WEB_BOT_AUTH) => self.check_web_bot_auth(&request, max_amount),
            _ => Err(Refusal::ok(Reason::InvalidPayload)),
        }
    }

    fn check_tally_iou(&self, request: &FacilitatorRequest, max_amount: u64) -> Result<Checked, Refusal> {
        let requirements = &request.payment_requirements;
        let payload: TallyIouPayload = serde_json::from_value(request.payment_payload.payload.clone())
            .map_err(|_| Refusal::ok(Reason::InvalidPayload))?;
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
        let payment_id = payment_identifier(request.payment_payload.extensions.as_ref())?;
        if let Some(id) = &payment_id
            && nonce_for_payment_id(id) != iou.nonce
        {
            return Err(Refusal::bad_request(Reason::InvalidPayload));
        }
        let commitment = Commitment::tally_iou(signed).map_err(|_| Refusal::ok(Reason::InvalidPayload))?;
        Ok(Checked { commitment, payment_id, web_bot_auth: None })
    }

    /// A Web Bot Auth payment: the crawler's `PAYMENT-SIGNATURE` payload
    /// names the amount; the RFC 9421 signature over the request binds it to
    /// the crawler's key. The IOU is derived from the signature base, and the
    /// signature itself is verified by the pipeline.
    fn check_web_bot_auth(&self, request: &FacilitatorRequest, max_amount: u64) -> Result<Checked, Refusal> {
        let requirements = &request.payment_requirements;
        let forwarded: WebBotAuthPayload = serde_json::from_value(request.payment_payload.payload.clone())
            .map_err(|_| Refusal::ok(Reason::InvalidPayload))?;
        // The crawler's own payload, which its signature covers.
        let signed_payload: PaymentPayload =
            decode_header_json(forwarded.payment_signature.as_bytes(), PAYMENT_SIGNATURE_BYTES_MAX)
                .map_err(|_| Refusal::ok(Reason::InvalidPaymentSignature))?;
        if signed_payload.x402_version != X402_VERSION {
            return Err(Refusal::ok(Reason::InvalidX402Version));
        }
        if !echoes(&signed_payload.accepted, requirements) {
            return Err(Refusal::ok(Reason::InvalidPaymentRequirements));
        }
        let committed = &signed_payload.payload;
        let asset = committed.get("asset").and_then(Value::as_str);
        let amount = committed.get("amount").and_then(Value::as_str).and_then(|a| a.parse::<u64>().ok());
        let (Some(asset), Some(amount)) = (asset, amount) else {
            return Err(Refusal::ok(Reason::InvalidPaymentSignature));
        };
        if asset != requirements.asset {
            return Err(Refusal::ok(Reason::InvalidPaymentRequirements));
        }
        if amount > max_amount {
            return Err(Refusal::ok(Reason::PriceNotAcceptable));
        }
        let payment_id = payment_identifier(signed_payload.extensions.as_ref())?;

        let parts = SignedRequestParts {
            authority: forwarded.authority,
            signature_agent: forwarded.signature_agent,
            signature_input: forwarded.signature_input,
            signature: forwarded.signature,
            payment_signature: forwarded.payment_signature,
        };
        let policy = VerifyPolicy {
            now_s: self.pipeline.now_s(),
            skew_max_s: self.config.web_bot_auth_skew_max_s,
            validity_max_s: self.config.web_bot_auth_validity_max_s,
        };
        let directory = self.pipeline.writer().directory();
        let checked = check_web_bot_auth(&parts, &policy, |keyid| directory.lookup_thumbprint(keyid))
            .map_err(|e| Refusal::ok(web_bot_auth_reason(&e)))?;
        let commitment =
            Commitment::web_bot_auth(checked.verified.public_key, checked.signature, &checked.signature_base)
                .map_err(|_| Refusal::ok(Reason::InvalidPaymentSignature))?;
        Ok(Checked {
            commitment,
            payment_id,
            web_bot_auth: Some(WebBotAuthRequest {
                signature_agent: parts.signature_agent,
                payment_signature: parts.payment_signature,
            }),
        })
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
            .verify_only(checked.commitment.clone())
            .await
            .map_err(|_| Facilitator::unavailable(Reason::UnexpectedVerifyError))?;
        if outcome != Outcome::Accepted {
            return Err(Refusal::ok(outcome_reason(outcome)));
        }
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || -> Result<String, Refusal> {
            let unavailable = |_| Facilitator::unavailable(Reason::UnexpectedVerifyError);
            let (payer, replay) = ledger_checks(&ledger, &checked).map_err(unavailable)??;
            let with_payer =
                |reason: Reason, status: StatusCode| Refusal { reason, status, payer: Some(payer.id.clone()) };
            match replay {
                // Already recorded: a retry verifies (and settles to the
                // original commitment); a different payment never will.
                Replay::Same(_) => return Ok(payer.id),
                Replay::Conflict => return Err(conflict(checked.payment_id.is_some(), Some(payer.id.clone()))),
                Replay::Fresh => {}
            }
            if payer.status != PayerStatus::Active {
                return Err(with_payer(Reason::PayerSuspended, StatusCode::OK));
            }
            let iou = &checked.commitment.signed.iou;
            let owed = ledger.unsettled_owed(Some(&payer.id)).map_err(unavailable)?;
            let owed = owed.get(&(payer.id.clone(), iou.asset.clone())).copied().unwrap_or(0);
            let within = owed.checked_add(u128::from(iou.amount)).is_some_and(|t| t <= payer.credit_limit(&iou.asset));
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
        let mut checked = self.check_request(body)?;
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
                    let iou = stored.iou().map_err(|_| Facilitator::unavailable(Reason::UnexpectedSettleError))?;
                    return Ok(self.success(
                        Some(payer.id),
                        CommitmentId { seq: stored.seq, hash: stored.hash },
                        iou.amount,
                    ));
                }
                Replay::Conflict => return Err(conflict(checked.payment_id.is_some(), Some(payer.id))),
                Replay::Fresh => {}
            }
        }
        let amount = checked.commitment.signed.iou.amount;
        let payer_key = checked.commitment.signed.iou.payer_key;
        let has_payment_id = checked.payment_id.is_some();
        let (reply, answer) = oneshot::channel();
        self.settle_queue
            .send((checked.commitment, reply))
            .await
            .map_err(|_| Facilitator::unavailable(Reason::UnexpectedSettleError))?;
        let result =
            answer.await.ok().flatten().ok_or_else(|| Facilitator::unavailable(Reason::UnexpectedSettleError))?;
        let ledger = self.ledger.clone();
        let payer =
            tokio::task::spawn_blocking(move || ledger.key_owner(&payer_key).ok().flatten()).await.ok().flatten();
        match (result.outcome, result.commitment) {
            (Outcome::Accepted | Outcome::Duplicate, Some(commitment)) => Ok(self.success(payer, commitment, amount)),
            (Outcome::Conflict, _) => Err(conflict(has_payment_id, payer)),
            (outcome, _) if outcome.is_success() => Err(Facilitator::unavailable(Reason::UnexpectedSettleError)),
            (outcome, _) => Err(Refusal { reason: outcome_reason(outcome), status: StatusCode::OK, payer }),
        }
    }

    fn success(&self, payer: Option<String>, commitment: CommitmentId, amount: u64) -> SettleResponse {
        SettleResponse {
            success: true,
            error_reason: None,
            payer,
            transaction: commitment.to_string(),
            network: self.config.network.clone(),
            amount: Some(amount.to_string()),
        }
    }
}

/// Whether a payload's `accepted` echoes the server's requirements.
fn echoes(accepted: &PaymentRequirements, requirements: &PaymentRequirements) -> bool {
    accepted.scheme == requirements.scheme
        && accepted.network == requirements.network
        && accepted.amount == requirements.amount
        && accepted.asset == requirements.asset
        && accepted.pay_to == requirements.pay_to
}

/// The `payment-identifier` extension: a well-formed id, or none (400 when it is required).
fn payment_identifier(extensions: Option<&Value>) -> Result<Option<String>, Refusal> {
    let extension = extensions.and_then(|e| e.get(EXTENSION_PAYMENT_IDENTIFIER));
    let required = extension.and_then(|e| e.get("required")).and_then(Value::as_bool).unwrap_or(false);
    match extension.and_then(|e| e.get("info")).and_then(|i| i.get("id")) {
        None | Some(Value::Null) if required => Err(Refusal::bad_request(Reason::PaymentIdentifierRequired)),
        None | Some(Value::Null) => Ok(None),
        Some(id) => match id.as_str() {
            Some(id) if payment_id_is_valid(id) => Ok(Some(id.to_owned())),
            _ => Err(Refusal::bad_request(Reason::InvalidPayload)),
        },
    }
}

/// A different payment under a used nonce: 409 with a payment identifier, otherwise a plain refusal.
fn conflict(has_payment_id: bool, payer: Option<String>) -> Refusal {
    if has_payment_id {
        Refusal { reason: Reason::PaymentIdentifierConflict, status: StatusCode::CONFLICT, payer }
    } else {
        Refusal { reason: Reason::InvalidTransactionState, status: StatusCode::OK, payer }
    }
}

/// The ledger reads shared by `/verify` and Web Bot Auth `/settle`: the payer
/// behind the key, its signature agent, and any earlier use of the nonce. The
/// outer `Err` is a ledger failure; the inner one a refusal.
fn ledger_checks(ledger: &Ledger, checked: &Checked) -> Result<Result<(Payer, Replay), Refusal>, LedgerError> {
    let iou = &checked.commitment.signed.iou;
    let Some(payer_id) = ledger.key_owner(&iou.payer_key)? else {
        return Ok(Err(Refusal::ok(Reason::SignatureAgentUnknown)));
    };
    let Some(payer) = ledger.payer(&payer_id)? else {
        return Ok(Err(Refusal::ok(Reason::SignatureAgentUnknown)));
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

async fn supported(State(facilitator): State<Arc<Facilitator>>) -> Response {
    axum::Json(facilitator.supported()).into_response()
}

/// A body axum could not read (over the size limit, or cut off): its status (413 for an oversized
/// body) with the x402 reason code, never axum's plain-text answer.
fn unreadable_body(rejection: &BytesRejection) -> Refusal {
    Refusal { reason: Reason::InvalidPayload, status: rejection.status(), payer: None }
}

async fn verify(State(facilitator): State<Arc<Facilitator>>, body: Result<Bytes, BytesRejection>) -> Response {
    let verdict = match &body {
        Ok(body) => facilitator.verify(body).await,
        Err(rejection) => Err(unreadable_body(rejection)),
    };
    let (status, answer) = match verdict {
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

async fn settle(State(facilitator): State<Arc<Facilitator>>, body: Result<Bytes, BytesRejection>) -> Response {
    let network = facilitator.config.network.clone();
    let verdict = match &body {
        Ok(body) => facilitator.settle(body).await,
        Err(rejection) => Err(unreadable_body(rejection)),
    };
    let (status, answer) = match verdict {
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

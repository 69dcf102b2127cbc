//! The query service: read-only views of the ledger, for whoever holds a token.
//!
//! Every call presents a bearer token ([`QueryAuth`]): the admin token reads
//! everything; a query token scoped to a payee or payer reads only the rows
//! where it is that payee or payer (a balance filter naming anyone else is
//! `PERMISSION_DENIED`; someone else's IOU is simply not found, so a scoped
//! caller learns nothing of others, not even that a nonce was used).
//!
//! Reads are RocksDB iterations, so they run on tokio's blocking pool and
//! never stall the async workers that carry ingest. Every listing is bounded
//! by rows returned ([`BALANCE_ROWS_MAX`]) *and* by records examined, each
//! epoch visited and each aggregate read ([`BALANCE_SCANNED_MAX`]), and
//! leaves the block cache alone, so a query that matches nothing costs a
//! bounded read and evicts nothing ingest needs.

use std::collections::HashMap;

use tally_core::batch::inclusion_proof;
use tally_core::evidence::Signed;
use tally_core::format_amount;
use tally_ledger::{BalanceFilter, EpochStatus, Ledger, LedgerError, QueryScope, StoredIou};
use tonic::{Request, Response, Status};

use super::auth::QueryAuth;
use crate::convert::{commitment_to_proto, iou_to_proto};
use crate::proto::query_server::Query;
use crate::proto::*;

/// Most rows one balance query returns.
pub const BALANCE_ROWS_MAX: usize = 10_000;
/// Most records one balance query examines: epochs visited and aggregates
/// read, matching or not.
pub const BALANCE_SCANNED_MAX: usize = 100_000;

pub struct QueryService {
    ledger: Ledger,
    auth: QueryAuth,
}

/// A failure inside a query's blocking read: the ledger's, or a refusal.
enum ReadError {
    Ledger(LedgerError),
    Refused(Status),
}

impl From<LedgerError> for ReadError {
    fn from(error: LedgerError) -> ReadError {
        ReadError::Ledger(error)
    }
}

impl QueryService {
    pub fn new(ledger: Ledger, auth: QueryAuth) -> QueryService {
        QueryService { ledger, auth }
    }

    /// Authorizes the caller and reads, both on the blocking pool.
    async fn read<T: Send + 'static, R>(
        &self,
        request: &Request<R>,
        work: impl FnOnce(Ledger, QueryScope) -> Result<T, ReadError> + Send + 'static,
    ) -> Result<T, Status> {
        let ledger = self.ledger.clone();
        let auth = self.auth.clone();
        let presented = request.metadata().get("authorization").map(|v| v.as_bytes().to_vec());
        tokio::task::spawn_blocking(move || {
            let scope = auth.scope(presented.as_deref()).map_err(ReadError::Refused)?;
            work(ledger, scope)
        })
        .await
        .map_err(|e| Status::internal(format!("query task failed: {e}")))?
        .map_err(|error| match error {
            ReadError::Ledger(error) => super::ledger_status(error),
            ReadError::Refused(status) => status,
        })
    }
}

fn denied(what: &str, scope: &QueryScope) -> ReadError {
    ReadError::Refused(Status::permission_denied(format!("a token scoped to {scope} cannot read {what}")))
}

/// Narrows a balance filter to what `scope` may see.
fn scoped_filter(mut filter: BalanceFilter, scope: &QueryScope) -> Result<BalanceFilter, ReadError> {
    match scope {
        QueryScope::All => {}
        QueryScope::Payer(id) => {
            if filter.payer.as_ref().is_some_and(|p| p != id) {
                return Err(denied("another payer's balances", scope));
            }
            filter.payer = Some(id.clone());
        }
        QueryScope::Payee(id) => {
            if filter.payee.as_ref().is_some_and(|p| p != id) {
                return Err(denied("another payee's balances", scope));
            }
            filter.payee = Some(id.clone());
        }
    }
    Ok(filter)
}

/// Whether `scope` may see this record (its payer is the key's owner, its payee the IOU's).
fn visible(ledger: &Ledger, scope: &QueryScope, record: &StoredIou) -> Result<bool, LedgerError> {
    if *scope == QueryScope::All {
        return Ok(true);
    }
    let iou = record.iou()?;
    let payer = ledger.key_owner(&iou.payer_key)?.unwrap_or_default();
    Ok(scope.sees(&payer, &iou.payee))
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

fn scales(ledger: &Ledger) -> Result<HashMap<String, u8>, LedgerError> {
    Ok(ledger.assets()?.into_iter().map(|a| (a.code, a.scale)).collect())
}

/// The scale of `asset`. Assets are never removed, so an aggregate or limit
/// naming an unregistered one is damage; a guessed scale would misstate the
/// amount by powers of ten.
fn scale_of(scales: &HashMap<String, u8>, asset: &str) -> Result<u32, Status> {
    scales
        .get(asset)
        .map(|scale| u32::from(*scale))
        .ok_or_else(|| Status::data_loss(format!("asset {asset} is named in the ledger but not registered")))
}

#[tonic::async_trait]
impl Query for QueryService {
    async fn balances(&self, request: Request<BalancesRequest>) -> Result<Response<BalancesResponse>, Status> {
        let limit = match request.get_ref().limit as usize {
            0 => BALANCE_ROWS_MAX,
            n => n.min(BALANCE_ROWS_MAX),
        };
        let body = request.get_ref().clone();
        let filter = BalanceFilter {
            epoch: if body.epoch == 0 { None } else { Some(body.epoch) },
            payer: non_empty(body.payer),
            payee: non_empty(body.payee),
            asset: non_empty(body.asset),
        };
        let page_token = body.page_token;
        let (page, scales) = self
            .read(&request, move |ledger, scope| {
                let filter = scoped_filter(filter, &scope)?;
                let after = if page_token.is_empty() { None } else { Some(page_token.as_slice()) };
                Ok((ledger.balances(&filter, limit, BALANCE_SCANNED_MAX, after)?, scales(&ledger)?))
            })
            .await?;
        let truncated = page.next.is_some();
        let scanned = page.scanned as u64;
        let next_page_token = page.next.unwrap_or_default();
        let rows = page
            .rows
            .into_iter()
            .map(|row| {
                Ok(BalanceRow {
                    scale: scale_of(&scales, &row.asset)?,
                    epoch: row.epoch,
                    payer: row.payer,
                    payee: row.payee,
                    asset: row.asset,
                    amount: row.sum.to_string(),
                    count: row.count,
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(Response::new(BalancesResponse { rows, truncated, next_page_token, scanned }))
    }

    async fn epochs(&self, request: Request<EpochsRequest>) -> Result<Response<EpochsResponse>, Status> {
        let epochs = self.read(&request, |ledger, _| Ok(ledger.epochs()?)).await?;
        let epochs = epochs
            .into_iter()
            .map(|e| Epoch {
                epoch: e.epoch,
                status: match e.status {
                    EpochStatus::Open => "open".into(),
                    EpochStatus::Sealed => "sealed".into(),
                },
                opened_at_ms: e.opened_at_ms,
                sealed_at_ms: e.sealed_at_ms.unwrap_or(0),
                seq_first: e.seq_first,
                seq_last: e.seq_last.unwrap_or(0),
            })
            .collect();
        Ok(Response::new(EpochsResponse { epochs }))
    }

    async fn exposure(&self, request: Request<ExposureRequest>) -> Result<Response<ExposureResponse>, Status> {
        let payer_id = request.get_ref().payer.clone();
        let lookup = payer_id.clone();
        let (payer, owed, scales) = self
            .read(&request, move |ledger, scope| {
                match &scope {
                    QueryScope::All => {}
                    QueryScope::Payer(id) if *id == lookup => {}
                    other => return Err(denied("this payer's exposure", other)),
                }
                let payer = ledger.payer(&lookup)?;
                Ok((payer, ledger.unsettled_owed(Some(&lookup))?, scales(&ledger)?))
            })
            .await?;
        let payer = payer.ok_or_else(|| Status::not_found(format!("payer {payer_id}")))?;
        let mut assets: Vec<String> = payer.credit_limits.iter().map(|(a, _)| a.clone()).collect();
        assets.extend(owed.keys().map(|(_, asset)| asset.clone()));
        assets.sort();
        assets.dedup();
        let rows = assets
            .into_iter()
            .map(|asset| {
                Ok(ExposureRow {
                    // No unsettled IOU of this asset: nothing is owed.
                    owed: owed.get(&(payer_id.clone(), asset.clone())).copied().unwrap_or(0).to_string(),
                    limit: payer.credit_limit(&asset).to_string(),
                    scale: scale_of(&scales, &asset)?,
                    asset,
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(Response::new(ExposureResponse { rows }))
    }

    async fn get_receipt(&self, request: Request<GetIouRequest>) -> Result<Response<Receipt>, Status> {
        let (payer_key, nonce) = iou_key(request.get_ref().clone())?;
        let found = self
            .read(&request, move |ledger, scope| {
                let Some(record) = ledger.lookup_iou(&payer_key, &nonce)? else { return Ok(None) };
                if !visible(&ledger, &scope, &record)? {
                    return Ok(None);
                }
                let batch = match record.evidence()?.signed {
                    Signed::Batch { batch_seq, .. } => Some(ledger.batch(&payer_key, batch_seq)?.ok_or_else(|| {
                        LedgerError::Corruption(format!("record {} names a missing batch {batch_seq}", record.seq))
                    })?),
                    Signed::Message(_) => None,
                };
                Ok(Some((record, batch)))
            })
            .await?;
        let Some((record, batch)) = found else {
            return Ok(Response::new(Receipt::default()));
        };
        let evidence = record.evidence().map_err(super::ledger_status)?;
        let charged = record.charge().map_err(super::ledger_status)?;
        let mut receipt = Receipt {
            found: true,
            charged,
            commitment: Some(commitment_to_proto(&tally_core::CommitmentId { seq: record.seq, hash: record.hash })),
            epoch: record.epoch,
            evidence_format: evidence.kind.as_str().to_owned(),
            iou_signing_bytes: evidence.iou.signing_bytes(),
            signature: record.signature.to_vec(),
            ..Receipt::default()
        };
        match (&evidence.signed, batch) {
            (Signed::Message(message), _) => receipt.signed_message = message.to_vec(),
            (Signed::Batch { index, .. }, Some(batch)) => {
                let leaf = *index as usize;
                if leaf >= batch.leaves.len() {
                    return Err(Status::data_loss(format!("record {} is outside its batch", record.seq)));
                }
                receipt.batch_statement = batch.statement().to_bytes().to_vec();
                receipt.leaf_index = *index;
                receipt.inclusion_proof =
                    inclusion_proof(&batch.leaves, leaf).into_iter().map(|hash| hash.to_vec()).collect();
            }
            (Signed::Batch { .. }, None) => unreachable!("a batch member's batch was read above"),
        }
        Ok(Response::new(receipt))
    }

    async fn get_iou(&self, request: Request<GetIouRequest>) -> Result<Response<GetIouResponse>, Status> {
        let (payer_key, nonce) = iou_key(request.get_ref().clone())?;
        let found = self
            .read(&request, move |ledger, scope| {
                let Some(record) = ledger.lookup_iou(&payer_key, &nonce)? else { return Ok(None) };
                Ok(visible(&ledger, &scope, &record)?.then_some(record))
            })
            .await?;
        let Some(record) = found else {
            return Ok(Response::new(GetIouResponse::default()));
        };
        let evidence = record.evidence().map_err(super::ledger_status)?;
        let charged = record.charge().map_err(super::ledger_status)?;
        let evidence_format = evidence.kind.as_str().to_owned();
        let signed = tally_core::SignedIou { iou: evidence.iou, signature: record.signature };
        Ok(Response::new(GetIouResponse {
            found: true,
            iou: Some(iou_to_proto(&signed)),
            commitment: Some(commitment_to_proto(&tally_core::CommitmentId { seq: record.seq, hash: record.hash })),
            epoch: record.epoch,
            accepted_at_ms: record.accepted_at_ms,
            evidence: record.evidence.clone(),
            evidence_format,
            charged,
        }))
    }
}

/// The `(payer key, nonce)` an IOU is looked up by.
fn iou_key(request: GetIouRequest) -> Result<([u8; 32], [u8; 16]), Status> {
    let payer_key =
        request.payer_key.as_slice().try_into().map_err(|_| Status::invalid_argument("payer_key must be 32 bytes"))?;
    let nonce = request.nonce.as_slice().try_into().map_err(|_| Status::invalid_argument("nonce must be 16 bytes"))?;
    Ok((payer_key, nonce))
}

/// Formats a decimal amount string from a query with its scale, for tools.
pub fn display_amount(units: &str, scale: u32) -> String {
    match units.parse::<u128>() {
        Ok(units) => format_amount(units, scale.min(u32::from(tally_core::amount::SCALE_MAX)) as u8),
        Err(_) => units.to_owned(),
    }
}

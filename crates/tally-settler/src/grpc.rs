//! The `Settlement` gRPC service (`proto/tally/v1/settlement.proto`).
//!
//! A thin layer: it converts between protobuf messages and the driver's and
//! ledger's types, runs blocking ledger reads off the async threads, and
//! maps errors to gRPC statuses. `tally serve` mounts it behind the admin
//! token beside the ingest services.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tally_core::Actor;
use tally_core::settlement::{
    AssetFigures, BatchRecord, BatchState, Bill, BillRecord, Carry, Party, PayoutRecord, PayoutState,
};
use tally_ledger::{AdminCommand, Ledger, SettlementCommand, WriterHandle};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::driver::{Progress, SettleRequest, Settler};
use crate::report::{EpochReport, report_of, statement};
use crate::{SettleError, bank};

pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tally.v1");

    /// Encoded descriptors of `settlement.proto`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("settlement_descriptor");
}

use proto::settlement_server::Settlement;
pub use proto::settlement_server::SettlementServer;

/// Largest status report accepted (the parser's own bound).
pub const STATUS_REPORT_BYTES_MAX: usize = bank::PAIN002_BYTES_MAX;
/// Progress events buffered per `Settle` call before the driver waits.
const SETTLE_EVENTS_BUFFERED_MAX: usize = 64;

pub struct SettlementService {
    settler: Arc<Settler>,
    ledger: Ledger,
    writer: WriterHandle,
}

impl SettlementService {
    pub fn new(settler: Arc<Settler>, ledger: Ledger, writer: WriterHandle) -> SettlementService {
        SettlementService { settler, ledger, writer }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(Ledger) -> Result<T, SettleError> + Send + 'static,
    ) -> Result<T, Status> {
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || f(ledger))
            .await
            .map_err(|e| Status::internal(format!("read task: {e}")))?
            .map_err(to_status)
    }
}

pub fn to_status(error: SettleError) -> Status {
    match &error {
        SettleError::NotFound(_) => Status::not_found(error.to_string()),
        SettleError::Busy(_) => Status::failed_precondition(error.to_string()),
        SettleError::Config(_) => Status::failed_precondition(error.to_string()),
        SettleError::BankFile(_) => Status::invalid_argument(error.to_string()),
        SettleError::Evm(_) | SettleError::Rail(_) | SettleError::Outbox(_) => Status::unavailable(error.to_string()),
        SettleError::Ledger(_) | SettleError::Netting(_) => Status::internal(error.to_string()),
    }
}

fn scales(ledger: &Ledger) -> Result<HashMap<String, u8>, SettleError> {
    Ok(ledger.assets()?.into_iter().map(|a| (a.code, a.scale)).collect())
}

/// The scale of `asset`. Assets are never removed, so a settlement record
/// naming an unregistered one is damage; a guessed scale would misstate the
/// amount by powers of ten.
fn scale_of(scales: &HashMap<String, u8>, asset: &str) -> Result<u32, SettleError> {
    scales
        .get(asset)
        .map(|scale| u32::from(*scale))
        .ok_or_else(|| SettleError::Ledger(format!("asset {asset} is named in a settlement record but not registered")))
}

fn figures_to_proto(
    figures: &[AssetFigures],
    scales: &HashMap<String, u8>,
) -> Result<Vec<proto::AssetFigures>, SettleError> {
    figures
        .iter()
        .map(|f| {
            Ok(proto::AssetFigures {
                asset: f.asset.clone(),
                scale: scale_of(scales, &f.asset)?,
                gross: f.gross.to_string(),
                iou_count: f.iou_count,
                payout_count: f.payout_count,
                paid: f.paid.to_string(),
                fees: f.fees.to_string(),
                bill_count: f.bill_count,
                billed: f.billed.to_string(),
                carried_in: f.carried_in.to_string(),
                carried_out: f.carried_out.to_string(),
                payout_iou_count: f.payout_iou_count,
                // 0 when nothing was charged (the ratio is undefined).
                moved_ppm: f.moved_ppm().and_then(|ppm| u64::try_from(ppm).ok()).unwrap_or(0),
            })
        })
        .collect()
}

pub fn report_to_proto(
    report: &EpochReport,
    scales: &HashMap<String, u8>,
) -> Result<proto::SettlementReport, SettleError> {
    let attention = match &report.status {
        tally_core::settlement::SettlementStatus::NeedsAttention(reason) => reason.clone(),
        _ => String::new(),
    };
    Ok(proto::SettlementReport {
        epoch: report.epoch,
        status: report.status.label().to_owned(),
        attention,
        fee_bps: report.fee_bps,
        planned_at_ms: report.planned_at_ms,
        updated_at_ms: report.updated_at_ms,
        figures: figures_to_proto(&report.figures, scales)?,
        rails: report
            .rails
            .iter()
            .map(|r| proto::RailTotal {
                rail: r.rail.to_string(),
                asset: r.asset.clone(),
                payouts: r.payouts,
                amount: r.amount.to_string(),
                settled: r.settled,
                submitted: r.submitted,
                rejected: r.rejected,
            })
            .collect(),
        batch_count: report.batch_count,
        batches_open: report.batches_open,
        payouts_open: report.payouts_open,
        gas_used: report.gas_used,
        evm_settled_ious: report.evm_settled_ious,
        gas_per_settled_iou: report.gas_per_settled_iou,
    })
}

/// Who is calling the settlement service: the admin token's holder, from the
/// caller's address (recorded with every step it causes).
fn actor_of<T>(request: &Request<T>) -> Actor {
    match request.remote_addr() {
        Some(addr) => Actor::admin_token(&addr.to_string()),
        None => Actor::admin_token("local"),
    }
}

/// The file a bank batch went into (empty for EVM batches and files not yet prepared).
fn batch_file(batch: Option<&BatchRecord>) -> String {
    match batch.map(|b| &b.state) {
        Some(BatchState::FilePrepared { file_name, .. } | BatchState::FileWritten { file_name, .. }) => {
            file_name.clone()
        }
        _ => String::new(),
    }
}

fn payout_to_proto(record: &PayoutRecord, scales: &HashMap<String, u8>) -> Result<proto::Payout, SettleError> {
    let p = &record.payout;
    let reference = match &record.state {
        PayoutState::Settled(reference) | PayoutState::Rejected(reference) => reference.clone(),
        _ => String::new(),
    };
    Ok(proto::Payout {
        id: p.id.clone(),
        epoch: p.epoch,
        payee: p.payee.clone(),
        asset: p.asset.clone(),
        scale: scale_of(scales, &p.asset)?,
        rail: p.rail.to_string(),
        destination: p.destination.to_string(),
        net_credit: p.net_credit.to_string(),
        fee: p.fee.to_string(),
        amount: p.amount.to_string(),
        iou_count: p.iou_count,
        state: record.state.label().to_owned(),
        reference,
        batch_index: record.batch_index,
        file_name: String::new(),
    })
}

fn bill_to_proto(
    bill: &Bill,
    paid_at_ms: Option<u64>,
    scales: &HashMap<String, u8>,
) -> Result<proto::Bill, SettleError> {
    Ok(proto::Bill {
        id: bill.id.clone(),
        epoch: bill.epoch,
        party: bill.party.to_string(),
        asset: bill.asset.clone(),
        scale: scale_of(scales, &bill.asset)?,
        amount: bill.amount.to_string(),
        iou_count: bill.iou_count,
        paid_at_ms: paid_at_ms.unwrap_or(0),
    })
}

fn carry_to_proto(carry: &Carry, scales: &HashMap<String, u8>) -> Result<proto::Carry, SettleError> {
    Ok(proto::Carry {
        epoch_to: carry.epoch_to,
        payee: carry.payee.clone(),
        asset: carry.asset.clone(),
        scale: scale_of(scales, &carry.asset)?,
        amount: carry.amount.to_string(),
        reason: carry.reason.to_string(),
        source: carry.source.clone(),
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::SettleEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Settlement for SettlementService {
    type SettleStream = EventStream;

    async fn settle(&self, request: Request<proto::SettleRequest>) -> Result<Response<EventStream>, Status> {
        let requested_by = actor_of(&request).to_string();
        let resume_only = request.into_inner().resume_only;
        let (sender, receiver) = tokio::sync::mpsc::channel(SETTLE_EVENTS_BUFFERED_MAX);
        let settler = self.settler.clone();
        let ledger = self.ledger.clone();
        // The settlement runs to completion even if the caller disconnects:
        // stopping halfway is safe, but finishing is what was asked.
        tokio::spawn(async move {
            use proto::settle_event::Event;
            let progress_sender = sender.clone();
            let progress = move |event: Progress| {
                let event = match event {
                    Progress::Sealed { epoch } => Event::SealedEpoch(epoch),
                    Progress::Planned { epoch, payouts, batches } => {
                        Event::Planned(proto::PlannedEvent { epoch, payouts, batches })
                    }
                    Progress::Batch { epoch, done, total } => Event::Batch(proto::BatchProgress { epoch, done, total }),
                    Progress::Finished { .. } => return,
                };
                // A slow or vanished client must not stall settlement.
                let _ = progress_sender.try_send(Ok(proto::SettleEvent { event: Some(event) }));
            };
            let result = settler.settle(SettleRequest::new(!resume_only, &requested_by), &progress).await;
            match result {
                Ok(reports) => {
                    let converted: Result<Vec<_>, SettleError> = scales(&ledger)
                        .and_then(|scales| reports.iter().map(|report| report_to_proto(report, &scales)).collect());
                    match converted {
                        Ok(reports) => {
                            for report in reports {
                                let event = Event::Report(report);
                                if sender.send(Ok(proto::SettleEvent { event: Some(event) })).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Err(error) => {
                            let _ = sender.send(Err(to_status(error))).await;
                        }
                    }
                }
                Err(error) => {
                    let _ = sender.send(Err(to_status(error))).await;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn preview(
        &self,
        _request: Request<proto::PreviewRequest>,
    ) -> Result<Response<proto::PreviewResponse>, Status> {
        let settler = self.settler.clone();
        let response = self
            .read(move |ledger| {
                let proposal = settler.preview()?;
                let (plan, scales) = (proposal.plan, scales(&ledger)?);
                Ok(proto::PreviewResponse {
                    epoch: plan.epoch,
                    figures: figures_to_proto(&plan.figures, &scales)?,
                    payouts: plan
                        .payouts
                        .iter()
                        .map(|p| {
                            payout_to_proto(
                                &PayoutRecord { payout: p.clone(), batch_index: 0, state: PayoutState::Planned },
                                &scales,
                            )
                        })
                        .collect::<Result<_, _>>()?,
                    bills: plan.bills.iter().map(|b| bill_to_proto(b, None, &scales)).collect::<Result<_, _>>()?,
                    carries: plan.carries_out.iter().map(|c| carry_to_proto(c, &scales)).collect::<Result<_, _>>()?,
                    batches: proposal.batches.len() as u64,
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn reports(
        &self,
        request: Request<proto::ReportsRequest>,
    ) -> Result<Response<proto::ReportsResponse>, Status> {
        let epoch = request.into_inner().epoch;
        let reports = self
            .read(move |ledger| {
                let scales = scales(&ledger)?;
                let epochs: Vec<u64> =
                    if epoch == 0 { ledger.settlements()?.into_iter().map(|s| s.epoch).collect() } else { vec![epoch] };
                epochs.into_iter().map(|e| report_to_proto(&report_of(&ledger, e)?, &scales)).collect()
            })
            .await?;
        Ok(Response::new(proto::ReportsResponse { reports }))
    }

    async fn payouts(
        &self,
        request: Request<proto::PayoutsRequest>,
    ) -> Result<Response<proto::PayoutsResponse>, Status> {
        let epoch = request.into_inner().epoch;
        let payouts = self
            .read(move |ledger| {
                let scales = scales(&ledger)?;
                let batches = ledger.batches(epoch)?;
                ledger
                    .payouts(epoch)?
                    .iter()
                    .map(|p| {
                        Ok(proto::Payout {
                            file_name: batch_file(batches.get(p.batch_index as usize)),
                            ..payout_to_proto(p, &scales)?
                        })
                    })
                    .collect::<Result<_, SettleError>>()
            })
            .await?;
        Ok(Response::new(proto::PayoutsResponse { payouts }))
    }

    async fn bills(&self, request: Request<proto::BillsRequest>) -> Result<Response<proto::BillsResponse>, Status> {
        let epoch = request.into_inner().epoch;
        let bills = self
            .read(move |ledger| {
                let scales = scales(&ledger)?;
                ledger
                    .bills(epoch)?
                    .iter()
                    .map(|BillRecord { bill, paid_at_ms, .. }| bill_to_proto(bill, *paid_at_ms, &scales))
                    .collect::<Result<_, SettleError>>()
            })
            .await?;
        Ok(Response::new(proto::BillsResponse { bills }))
    }

    async fn mark_bill_paid(
        &self,
        request: Request<proto::MarkBillPaidRequest>,
    ) -> Result<Response<proto::MarkBillPaidResponse>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let command = SettlementCommand::MarkBillPaid { epoch: request.epoch, bill_id: request.bill_id };
        self.writer.admin(actor, AdminCommand::Settlement(command)).await.map_err(|e| match e {
            tally_ledger::AdminError::NotFound(m) => Status::not_found(m),
            other => Status::failed_precondition(other.to_string()),
        })?;
        Ok(Response::new(proto::MarkBillPaidResponse {}))
    }

    async fn open_bills(
        &self,
        request: Request<proto::OpenBillsRequest>,
    ) -> Result<Response<proto::OpenBillsResponse>, Status> {
        let as_of_ms = match request.into_inner().as_of_ms {
            0 => tally_ledger::unix_now_ms(),
            at => at,
        };
        let response = self
            .read(move |ledger| {
                let scales = scales(&ledger)?;
                let aged = crate::aging::open_bills(&ledger, as_of_ms)?;
                let bills = aged
                    .listed
                    .iter()
                    .map(|b| {
                        Ok(proto::AgedBill {
                            bill: Some(bill_to_proto(&b.record.bill, b.record.paid_at_ms, &scales)?),
                            issued_at_ms: b.issued_at_ms,
                            age_days: b.age_days,
                            bucket: b.bucket.label().to_owned(),
                        })
                    })
                    .collect::<Result<_, SettleError>>()?;
                let totals = aged
                    .totals
                    .iter()
                    .map(|((asset, bucket), total)| {
                        Ok(proto::AgingTotal {
                            asset: asset.clone(),
                            scale: scale_of(&scales, asset)?,
                            bucket: bucket.label().to_owned(),
                            count: total.count,
                            amount: total.amount.to_string(),
                        })
                    })
                    .collect::<Result<_, SettleError>>()?;
                Ok(proto::OpenBillsResponse {
                    as_of_ms: aged.as_of_ms,
                    bills,
                    totals,
                    open_count: aged.open_count,
                    truncated: aged.truncated,
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn statement(
        &self,
        request: Request<proto::StatementRequest>,
    ) -> Result<Response<proto::StatementResponse>, Status> {
        let request = request.into_inner();
        let party = Party::parse(&request.party)
            .ok_or_else(|| Status::invalid_argument("party must be payee:<id> or payer:<id>"))?;
        let epoch = request.epoch;
        let (statement, scales) =
            self.read(move |ledger| Ok((statement(&ledger, epoch, &party)?, scales(&ledger)?))).await?;
        let convert = || -> Result<proto::StatementResponse, SettleError> {
            Ok(proto::StatementResponse {
                epoch: statement.epoch,
                party: statement.party,
                lines: statement
                    .lines
                    .iter()
                    .map(|l| {
                        Ok(proto::StatementLine {
                            epoch: l.epoch,
                            payer: l.payer.clone(),
                            payee: l.payee.clone(),
                            asset: l.asset.clone(),
                            scale: scale_of(&scales, &l.asset)?,
                            amount: l.amount.to_string(),
                            iou_count: l.iou_count,
                        })
                    })
                    .collect::<Result<_, SettleError>>()?,
                payouts: statement.payouts.iter().map(|p| payout_to_proto(p, &scales)).collect::<Result<_, _>>()?,
                bills: statement.bills.iter().map(|b| bill_to_proto(b, None, &scales)).collect::<Result<_, _>>()?,
                carried_in: statement
                    .carried_in
                    .iter()
                    .map(|c| carry_to_proto(c, &scales))
                    .collect::<Result<_, _>>()?,
                carried_out: statement
                    .carried_out
                    .iter()
                    .map(|c| carry_to_proto(c, &scales))
                    .collect::<Result<_, _>>()?,
            })
        };
        Ok(Response::new(convert().map_err(to_status)?))
    }

    async fn import_bank_status(
        &self,
        request: Request<proto::ImportBankStatusRequest>,
    ) -> Result<Response<proto::ImportBankStatusResponse>, Status> {
        let actor = actor_of(&request);
        let bytes = request.into_inner().pain002;
        if bytes.len() > STATUS_REPORT_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "status reports are limited to {STATUS_REPORT_BYTES_MAX} bytes"
            )));
        }
        let summary = self.settler.import_bank_status(&bytes, &actor).await.map_err(to_status)?;
        Ok(Response::new(proto::ImportBankStatusResponse {
            epoch: summary.epoch,
            original_message_id: summary.original_message_id,
            accepted: summary.accepted,
            rejected: summary.rejected,
            pending: summary.pending,
            unchanged: summary.unchanged,
            refused: summary.refused,
        }))
    }
}

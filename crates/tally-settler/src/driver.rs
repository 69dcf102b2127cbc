//! The settlement driver: seal, plan, submit, exactly once.
//!
//! [`Settler::settle`] walks each epoch through the persisted state machine
//! (`tally_core::settlement`), making every step durable in the ledger
//! before the next begins:
//!
//! 1. **Seal** the open epoch (one atomic writer command; IOUs arriving from
//!    now on land in the next epoch).
//! 2. **Plan** each sealed, unplanned epoch in order: net it, batch it, and
//!    record the plan (payouts, bills, carries, batches) in one fsynced write.
//! 3. **Submit** each batch not yet done:
//!    - EVM: sign locally with an explicit nonce and *record the signed
//!      bytes* (with the chain, contract and treasury they were signed for),
//!      then broadcast, then wait for the receipt and record it. On resume,
//!      the chain is asked first: if the payout contract has executed the
//!      batch id, its transaction is recorded; otherwise the recorded bytes
//!      are rebroadcast (same hash, so at most one of them can ever be mined);
//!      if their nonce was taken by something else, or they were mined but
//!      reverted (an allowance or balance short, say, since fixed), the batch
//!      is signed again with a fresh nonce. The contract refuses a batch id
//!      twice per treasury, and batch ids carry the ledger id, so two ledgers
//!      on one treasury never share one.
//!      A batch signed for another chain, contract or treasury than the one
//!      configured now is never signed again: the epoch needs attention, since
//!      the old transaction could still be mined.
//!    - Bank files: generate the bytes (deterministic, stamped with the time of
//!      preparation, and asking for an execution date no earlier than that
//!      day plus the configured delay), record name, hash and that time, write
//!      atomically into the outbox (readable by its owner only), record it. On
//!      resume the file is regenerated from the recorded time; identical bytes
//!      already in the outbox are recognised, different bytes stop with
//!      needs-attention. A file prepared but never published whose execution
//!      date has passed is prepared again, with a new date, under the same name.
//! 4. The writer derives `submitted` / `settled` from the batches and payouts.
//!
//! A failure leaves the batch's recorded state untouched and marks the epoch
//! needs-attention with the reason. A crash anywhere leaves a state from which [`Settler::settle`] with
//! `seal = false` (`tally settle --resume`, and `tally serve` at startup)
//! completes the epoch. Only one settlement runs at a time (a mutex), so a
//! schedule and a finance user never race.
//!
//! Every step is recorded through the writer on behalf of an [`Actor`]: the
//! settler, acting for whoever asked (an admin caller, the schedule, the
//! engine resuming at startup), so the journal says who moved money.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use alloy::primitives::{Address, B256, U256};
use tally_core::settlement::{BatchRecord, BatchState, PayoutRecord, RailBatch, SettlementStatus};
use tally_core::{Actor, PayoutDestination, Rail};
use tally_ledger::{AdminCommand, AdminError, AdminReply, Ledger, SettlementCommand, WriterHandle};
use tokio::sync::{Mutex, OnceCell};

use crate::SettleError;
use crate::bank;
use crate::config::{SettlementConfig, currency_minor_units};
use crate::evm::{EvmClient, EvmConfig, EvmError, parse_address};
use crate::failpoint;
use crate::outbox::{self, OutboxWrite};
use crate::plan::{BatchLimits, Proposal, plan_epoch, to_rail_units};
use crate::report::{EpochReport, report_of};

/// What to do, and for whom.
#[derive(Clone, Debug)]
pub struct SettleRequest {
    /// Seal the open epoch first (end-of-day). `false` only resumes.
    pub seal: bool,
    /// Who asked: recorded with every step (`settler (<requested_by>)`), e.g.
    /// `admin-token@10.0.0.5:51234`, `schedule daily@02:00`, `startup resume`.
    pub requested_by: String,
}

impl SettleRequest {
    pub fn new(seal: bool, requested_by: &str) -> SettleRequest {
        SettleRequest { seal, requested_by: requested_by.to_owned() }
    }
}

/// Progress for a bar or a log.
#[derive(Clone, Debug)]
pub enum Progress {
    Sealed { epoch: u64 },
    Planned { epoch: u64, payouts: u64, batches: u64 },
    Batch { epoch: u64, done: u64, total: u64 },
    Finished { epoch: u64, status: String },
}

pub struct Settler {
    ledger: Ledger,
    writer: WriterHandle,
    config: SettlementConfig,
    evm_target: Option<EvmTarget>,
    evm: OnceCell<EvmClient>,
    outbox: PathBuf,
    limits: BatchLimits,
    running: Mutex<()>,
}

/// Where the EVM rail connects; the key stays in memory only (never logged:
/// no `Debug`).
struct EvmTarget {
    config: EvmConfig,
    key: String,
}

fn admin_error(error: AdminError) -> SettleError {
    SettleError::Ledger(error.to_string())
}

/// Runs a settlement failpoint (see [`crate::failpoint`]); an injected error
/// fails the step as a rail failure would.
fn fail_at(name: &'static str) -> Result<(), SettleError> {
    failpoint::hit(name).map_err(|e| SettleError::Rail(e.to_string()))
}

impl Settler {
    /// Validates the configuration and tries to connect the EVM rail, if
    /// any. An unreachable chain does not stop the engine from starting
    /// (ingest must not depend on it): the rail connects when a batch first
    /// needs it, and until then its batches wait with needs-attention.
    pub async fn new(
        ledger: Ledger,
        writer: WriterHandle,
        config: SettlementConfig,
        data_dir: &std::path::Path,
    ) -> Result<Arc<Settler>, SettleError> {
        config.validate().map_err(|e| SettleError::Config(e.to_string()))?;
        let evm = match &config.evm {
            Some(settings) => {
                let evm_config = EvmConfig {
                    rpc_url: settings.rpc_url.clone(),
                    chain_id: settings.chain_id,
                    token: parse_address(&settings.token)?,
                    token_decimals: settings.token_decimals,
                    payout_contract: parse_address(&settings.payout_contract)?,
                    gas_per_tx_max: settings.gas_per_tx_max,
                    receipt_timeout: settings.receipt_timeout(),
                };
                let key = settings.treasury_key().map_err(|e| SettleError::Config(e.to_string()))?;
                Some(EvmTarget { config: evm_config, key })
            }
            None => None,
        };
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let limits = BatchLimits {
            payouts_per_evm_tx: to_u32(match &config.evm {
                Some(settings) => {
                    settings.payouts_per_tx_max.min(crate::evm::recipients_per_tx_max(settings.gas_per_tx_max))
                }
                None => crate::config::PAYOUTS_PER_EVM_TX_DEFAULT,
            }),
            transfers_per_iso20022_file: to_u32(config.iso20022.as_ref().map_or(1, |s| s.transfers_per_file_max)),
            transfers_per_nacha_file: to_u32(config.nacha.as_ref().map_or(1, |s| s.transfers_per_file_max)),
        };
        let outbox = config.outbox_dir.clone().unwrap_or_else(|| data_dir.join("outbox"));
        let settler = Arc::new(Settler {
            ledger,
            writer,
            config,
            evm_target: evm,
            evm: OnceCell::new(),
            outbox,
            limits,
            running: Mutex::new(()),
        });
        // Only a configured rail is worth a warning when it cannot be reached.
        if settler.evm_target.is_some()
            && let Err(error) = settler.evm_client().await
        {
            tracing::warn!(%error, "the EVM rail is not reachable now; it connects when a batch needs it");
        }
        Ok(settler)
    }

    /// The connected EVM rail, connecting on first use.
    async fn evm_client(&self) -> Result<&EvmClient, SettleError> {
        let target = self
            .evm_target
            .as_ref()
            .ok_or_else(|| SettleError::Config("the plan has EVM payouts but no [settlement.evm]".into()))?;
        Ok(self.evm.get_or_try_init(|| EvmClient::connect(target.config.clone(), &target.key)).await?)
    }

    pub fn config(&self) -> &SettlementConfig {
        &self.config
    }

    pub fn outbox(&self) -> &std::path::Path {
        &self.outbox
    }

    /// The EVM rail, if it has connected.
    pub fn evm(&self) -> Option<&EvmClient> {
        self.evm.get()
    }

    /// The plan the open epoch would get if it were sealed now (nothing is
    /// sealed or recorded). Figures can change until the seal.
    pub fn preview(&self) -> Result<Proposal, SettleError> {
        let open = self.ledger.epochs()?.last().map(|e| e.epoch).unwrap_or(1);
        let planned_through = self.ledger.planned_through()?;
        if planned_through + 1 != open {
            return Err(SettleError::Busy(format!(
                "epoch {} is sealed but not planned; run `tally settle --resume` before a dry run",
                planned_through + 1
            )));
        }
        plan_epoch(&self.ledger, &self.config, open, self.limits)
    }

    /// Seals (if asked) and settles every sealed epoch not yet settled, in
    /// order. Returns the report of each epoch it touched.
    pub async fn settle(
        &self,
        request: SettleRequest,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Vec<EpochReport>, SettleError> {
        let _running = self.running.lock().await;
        let actor = Actor::settler(&request.requested_by);
        if request.seal {
            match self.writer.admin(actor.clone(), AdminCommand::SealEpoch).await.map_err(admin_error)? {
                AdminReply::Sealed { sealed, .. } => progress(Progress::Sealed { epoch: sealed.epoch }),
                other => return Err(SettleError::Ledger(format!("seal answered {other:?}"))),
            }
            fail_at("settle-after-seal")?;
        }
        let mut reports = Vec::new();
        let open = self.ledger.epochs()?.last().map(|e| e.epoch).unwrap_or(1);
        // Plan every sealed epoch in order; then submit each unfinished one.
        let planned_now = self.ledger.planned_through()? + 1..open;
        for epoch in planned_now.clone() {
            self.plan(&actor, epoch, progress).await?;
        }
        for settlement in self.ledger.settlements()? {
            if matches!(settlement.status, SettlementStatus::Settled | SettlementStatus::Submitted) {
                // Planned by this run with nothing to submit (no payouts: only
                // bills and carries): it was still settled here, so report it.
                if planned_now.contains(&settlement.epoch) {
                    reports.push(report_of(&self.ledger, settlement.epoch)?);
                }
                continue;
            }
            self.submit(&actor, settlement.epoch, progress).await?;
            let report = report_of(&self.ledger, settlement.epoch)?;
            progress(Progress::Finished { epoch: settlement.epoch, status: report.status.label().to_owned() });
            reports.push(report);
        }
        Ok(reports)
    }

    async fn plan(
        &self,
        actor: &Actor,
        epoch: u64,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), SettleError> {
        // The writer nets the epoch again and records the plan only if it is
        // identical; the carries into an epoch (a bank rejection) or an
        // account can change between reading and recording, so a mismatch is
        // planned again, a bounded number of times.
        const PLAN_ATTEMPTS_MAX: usize = 8;
        let mut last_mismatch = String::new();
        for _ in 0..PLAN_ATTEMPTS_MAX {
            let Proposal { plan, batches, policy, limits } =
                plan_epoch(&self.ledger, &self.config, epoch, self.limits)?;
            let (payouts, batch_count) = (plan.payouts.len() as u64, batches.len() as u64);
            let command = SettlementCommand::RecordPlan { plan: Box::new(plan), batches, policy, limits };
            match self.writer.admin(actor.clone(), AdminCommand::Settlement(command)).await {
                Ok(_) => {
                    tracing::info!(epoch, payouts, batches = batch_count, "settlement plan recorded");
                    progress(Progress::Planned { epoch, payouts, batches: batch_count });
                    fail_at("settle-after-plan")?;
                    return Ok(());
                }
                Err(AdminError::PlanMismatch(reason)) => {
                    tracing::info!(epoch, %reason, "the ledger changed while planning; netting again");
                    last_mismatch = reason;
                }
                Err(error) => return Err(admin_error(error)),
            }
        }
        Err(SettleError::Busy(format!(
            "epoch {epoch}: the ledger kept changing while planning ({PLAN_ATTEMPTS_MAX} attempts; last: {last_mismatch})"
        )))
    }

    async fn step(&self, actor: &Actor, command: SettlementCommand) -> Result<(), SettleError> {
        failpoint::hit("ledger-step").map_err(|e| SettleError::Ledger(e.to_string()))?;
        self.writer.admin(actor.clone(), AdminCommand::Settlement(command)).await.map(|_| ()).map_err(admin_error)
    }

    async fn submit(
        &self,
        actor: &Actor,
        epoch: u64,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), SettleError> {
        let batches = self.ledger.batches(epoch)?;
        if batches.iter().all(|b| b.state.is_done()) {
            return Ok(());
        }
        self.step(actor, SettlementCommand::SetStatus { epoch, status: SettlementStatus::Submitting }).await?;
        fail_at("settle-after-submitting")?;
        let payouts: HashMap<String, PayoutRecord> =
            self.ledger.payouts(epoch)?.into_iter().map(|p| (p.payout.id.clone(), p)).collect();
        let total = batches.len() as u64;
        let mut done = batches.iter().filter(|b| b.state.is_done()).count() as u64;
        progress(Progress::Batch { epoch, done, total });
        for record in batches {
            if record.state.is_done() {
                continue;
            }
            let index = record.batch.index;
            let result = match record.batch.rail {
                Rail::Evm => self.submit_evm(actor, &record, &payouts).await,
                Rail::Iso20022 | Rail::Nacha => self.submit_bank_file(actor, &record, &payouts).await,
            };
            if let Err(error) = result {
                // Record why on the epoch, then stop: later batches wait for
                // the operator, and a rerun resumes from here. The batch keeps
                // its recorded state (the signed transaction, or the file's
                // name and hash), which is what makes the rerun safe.
                let reason = format!("batch {index}: {error}");
                tracing::error!(epoch, batch = index, %reason, "settlement batch failed");
                let status = SettlementStatus::NeedsAttention(reason);
                self.step(actor, SettlementCommand::SetStatus { epoch, status }).await?;
                return Err(error);
            }
            done += 1;
            progress(Progress::Batch { epoch, done, total });
        }
        Ok(())
    }

    fn evm_transfers(
        &self,
        batch: &RailBatch,
        payouts: &HashMap<String, PayoutRecord>,
    ) -> Result<(Vec<Address>, Vec<U256>), SettleError> {
        let evm = self.evm.get().ok_or_else(|| SettleError::Rail("the EVM rail is not connected".into()))?;
        let scale = self.asset_scale(&batch.asset)?;
        let mut recipients = Vec::with_capacity(batch.payout_ids.len());
        let mut amounts = Vec::with_capacity(batch.payout_ids.len());
        for id in &batch.payout_ids {
            let record = payouts.get(id).ok_or_else(|| SettleError::Ledger(format!("payout {id} is missing")))?;
            let PayoutDestination::Evm { address } = record.payout.destination else {
                return Err(SettleError::Ledger(format!("payout {id} is not an EVM payout")));
            };
            recipients.push(Address::from(address));
            amounts.push(U256::from(to_rail_units(record.payout.amount, scale, evm.config().token_decimals)?));
        }
        Ok((recipients, amounts))
    }

    async fn submit_evm(
        &self,
        actor: &Actor,
        record: &BatchRecord,
        payouts: &HashMap<String, PayoutRecord>,
    ) -> Result<(), SettleError> {
        let evm = self.evm_client().await?;
        let batch = &record.batch;
        let (epoch, index) = (batch.epoch, batch.index);
        let batch_id: B256 =
            batch.id.parse().map_err(|_| SettleError::Ledger(format!("batch id {} is not bytes32", batch.id)))?;
        // First, the chain's truth: if the contract executed this batch id,
        // only the record is missing.
        if let Some(mined) = evm.batch_executed(batch_id).await? {
            return self.record_mined(actor, epoch, index, mined.tx_hash, mined.block_number, mined.gas_used).await;
        }
        let context = self.evm_context(evm);
        let mut prepared = match &record.state {
            BatchState::EvmPrepared { nonce, tx_hash, raw_tx, signed_for } => {
                if *signed_for != context {
                    return Err(SettleError::Rail(format!(
                        "batch {index} was signed for {signed_for}, but the configuration is now {context}; \
                         its transaction may still be mined, so it is not signed again"
                    )));
                }
                Some((*nonce, B256::from(*tx_hash), raw_tx.clone()))
            }
            _ => None,
        };
        // The batch is not executed (asked above). A recorded transaction that
        // was mined but reverted, or whose nonce something else consumed, can
        // never execute it: sign again with a fresh nonce. (Rebroadcasting the
        // same bytes would only be refused, for ever.)
        if let Some((nonce, tx_hash, _)) = &prepared {
            match evm.receipt(*tx_hash).await? {
                Some(receipt) if !receipt.success => {
                    tracing::warn!(epoch, batch = index, %tx_hash, "recorded transaction reverted; signing again");
                    prepared = None;
                }
                Some(_) => {}
                None if evm.latest_nonce().await? > *nonce => {
                    tracing::warn!(
                        epoch,
                        batch = index,
                        nonce,
                        "recorded transaction's nonce was consumed; signing again"
                    );
                    prepared = None;
                }
                None => {}
            }
        }
        let (tx_hash, raw) = match prepared {
            Some((_, tx_hash, raw)) => (tx_hash, raw),
            None => {
                let (recipients, amounts) = self.evm_transfers(batch, payouts)?;
                let nonce = evm.pending_nonce().await?;
                let tx = evm.prepare_pay_batch(batch_id, &recipients, &amounts, nonce).await?;
                let state = BatchState::EvmPrepared {
                    nonce: tx.nonce,
                    tx_hash: tx.tx_hash.0,
                    raw_tx: tx.raw.clone(),
                    signed_for: context.clone(),
                };
                self.step(actor, SettlementCommand::UpdateBatch { epoch, index, state }).await?;
                fail_at("evm-after-prepare")?;
                (tx.tx_hash, tx.raw)
            }
        };
        match evm.broadcast(&raw).await {
            Ok(_) => {}
            Err(EvmError::NonceTooLow { .. }) => {
                // Mined meanwhile (by this transaction or another): the next
                // resume sorts out which from the chain.
                if evm.receipt(tx_hash).await?.is_none() {
                    return Err(SettleError::Rail(format!(
                        "batch {index}: nonce taken by another transaction; rerun to re-sign"
                    )));
                }
            }
            Err(error) => return Err(error.into()),
        }
        fail_at("evm-after-broadcast")?;
        let mined = evm.wait_receipt(tx_hash).await?;
        if !mined.success {
            // Reverted: maybe a concurrent copy of the batch won; ask the chain.
            if let Some(executed) = evm.batch_executed(batch_id).await? {
                return self
                    .record_mined(actor, epoch, index, executed.tx_hash, executed.block_number, executed.gas_used)
                    .await;
            }
            return Err(SettleError::Rail(format!(
                "batch {index}: transaction {tx_hash} reverted (is the treasury's allowance or balance short?); \
                 fix the cause and resume: the batch is signed again with a fresh nonce"
            )));
        }
        self.record_mined(actor, epoch, index, mined.tx_hash, mined.block_number, mined.gas_used).await
    }

    /// What a signed transaction is bound to: chain, contract, treasury.
    fn evm_context(&self, evm: &EvmClient) -> String {
        let config = evm.config();
        format!("chain {} contract {} treasury {}", config.chain_id, config.payout_contract, evm.treasury())
    }

    async fn record_mined(
        &self,
        actor: &Actor,
        epoch: u64,
        index: u32,
        tx_hash: B256,
        block_number: u64,
        gas_used: u64,
    ) -> Result<(), SettleError> {
        let state = BatchState::EvmMined { tx_hash: tx_hash.0, block_number, gas_used };
        self.step(actor, SettlementCommand::UpdateBatch { epoch, index, state }).await?;
        tracing::info!(epoch, batch = index, %tx_hash, gas_used, "EVM batch mined");
        fail_at("evm-after-receipt")?;
        Ok(())
    }

    fn asset_scale(&self, asset: &str) -> Result<u8, SettleError> {
        self.ledger
            .assets()?
            .into_iter()
            .find(|a| a.code == asset)
            .map(|a| a.scale)
            .ok_or_else(|| SettleError::Ledger(format!("asset {asset} is not registered")))
    }

    /// The bytes and file name of a bank batch stamped `created_at_ms`: a
    /// pure function of the persisted plan, the payee names, the rail
    /// configuration and that time. The requested execution (or effective
    /// entry) date is the creation day plus the configured delay.
    pub fn bank_file(
        &self,
        batch: &RailBatch,
        payouts: &HashMap<String, PayoutRecord>,
        created_at_ms: u64,
    ) -> Result<(String, Vec<u8>), SettleError> {
        let scale = self.asset_scale(&batch.asset)?;
        let minor = currency_minor_units(&batch.asset);
        let names: HashMap<String, String> =
            self.ledger.payees()?.into_iter().map(|p| (p.id, p.display_name)).collect();
        let date_after = |days: u8| -> Result<time::Date, SettleError> {
            let created = time::OffsetDateTime::from_unix_timestamp((created_at_ms / 1000) as i64)
                .map_err(|e| SettleError::Ledger(format!("seal time: {e}")))?;
            Ok(created.date() + time::Duration::days(i64::from(days)))
        };
        let mut items = Vec::with_capacity(batch.payout_ids.len());
        for id in &batch.payout_ids {
            let record = payouts.get(id).ok_or_else(|| SettleError::Ledger(format!("payout {id} is missing")))?;
            let name = names.get(&record.payout.payee).cloned().unwrap_or_else(|| record.payout.payee.clone());
            let name = if name.is_empty() { record.payout.payee.clone() } else { name };
            items.push((record, name, to_rail_units(record.payout.amount, scale, minor)?));
        }
        match batch.rail {
            Rail::Iso20022 => {
                let settings = self
                    .config
                    .iso20022
                    .as_ref()
                    .ok_or_else(|| SettleError::Config("no [settlement.iso20022]".into()))?;
                let mut transfers = Vec::with_capacity(items.len());
                for (record, name, amount_minor) in items {
                    let PayoutDestination::Iban { iban, bic } = &record.payout.destination else {
                        return Err(SettleError::Ledger(format!("payout {} is not an IBAN payout", record.payout.id)));
                    };
                    transfers.push(bank::CreditTransfer {
                        end_to_end_id: record.payout.id.clone(),
                        amount_minor,
                        creditor_name: name,
                        creditor_iban: iban.clone(),
                        creditor_bic: bic.clone(),
                        remittance: format!("Tally settlement epoch {} payout {}", batch.epoch, record.payout.id),
                    });
                }
                let file = bank::Pain001File {
                    message_id: batch.id.clone(),
                    created_at_ms,
                    requested_execution_date: date_after(settings.execution_delay_days)?,
                    debtor: bank::Iso20022Debtor {
                        name: settings.debtor_name.clone(),
                        iban: settings.debtor_iban.clone(),
                        bic: settings.debtor_bic.clone(),
                    },
                    currency: batch.asset.clone(),
                    currency_minor_units: minor,
                    transfers,
                };
                Ok((format!("{}.xml", batch.id), bank::write_pain001(&file)?))
            }
            Rail::Nacha => {
                let settings =
                    self.config.nacha.as_ref().ok_or_else(|| SettleError::Config("no [settlement.nacha]".into()))?;
                let sec_code = match settings.sec_code.as_str() {
                    "PPD" => bank::SecCode::Ppd,
                    "CCD" => bank::SecCode::Ccd,
                    other => return Err(SettleError::Config(format!("nacha sec_code {other:?}: use CCD or PPD"))),
                };
                let mut entries = Vec::with_capacity(items.len());
                for (record, name, amount_cents) in items {
                    let PayoutDestination::Ach { routing, account, kind } = &record.payout.destination else {
                        return Err(SettleError::Ledger(format!("payout {} is not an ACH payout", record.payout.id)));
                    };
                    entries.push(bank::AchCredit {
                        routing: routing.clone(),
                        account: account.clone(),
                        account_kind: match kind {
                            tally_core::destination::AchAccountKind::Checking => bank::AccountKind::Checking,
                            tally_core::destination::AchAccountKind::Savings => bank::AccountKind::Savings,
                        },
                        amount_cents,
                        // NACHA files are conventionally upper case: the Individual ID
                        // Number is the payout id's first 15 characters, upper-cased
                        // (docs/settlement.md); match it case-insensitively.
                        individual_id: record.payout.id.chars().take(15).collect::<String>().to_ascii_uppercase(),
                        name,
                    });
                }
                // The files of one settlement run are stamped in the same
                // minute; the modifier (A, B, … by chunk) tells them apart, as
                // NACHA requires. A batch id without its chunk number is a bug.
                let chunk: usize =
                    batch.id.rsplit('-').next().and_then(|n| n.parse().ok()).filter(|n| *n >= 1).ok_or_else(|| {
                        SettleError::Ledger(format!("bank batch id {} does not end in its chunk number", batch.id))
                    })?;
                let file_id_modifier = char::from(b'A' + (chunk.saturating_sub(1) % 26) as u8);
                let file = bank::NachaFile {
                    immediate_destination: settings.immediate_destination.clone(),
                    immediate_destination_name: settings.immediate_destination_name.clone(),
                    immediate_origin: settings.immediate_origin.clone(),
                    immediate_origin_name: settings.immediate_origin_name.clone(),
                    file_id_modifier,
                    created_at_ms,
                    batches: vec![bank::NachaBatch {
                        sec_code,
                        company_name: settings.company_name.clone(),
                        company_id: settings.company_id.clone(),
                        entry_description: settings.entry_description.clone(),
                        effective_entry_date: date_after(settings.execution_delay_days)?,
                        odfi_routing: settings.odfi_routing.clone(),
                        entries,
                    }],
                };
                Ok((format!("{}.ach", batch.id), bank::write_nacha(&file)?))
            }
            Rail::Evm => Err(SettleError::Ledger("an EVM batch has no bank file".into())),
        }
    }

    /// When a bank file is stamped: now (the ledger's time, never behind
    /// its time mark), and never before its epoch was sealed.
    fn file_time_ms(&self, epoch: u64) -> Result<u64, SettleError> {
        let epoch_record =
            self.ledger.epoch(epoch)?.ok_or_else(|| SettleError::Ledger(format!("epoch {epoch} is missing")))?;
        let sealed_ms = epoch_record.sealed_at_ms.unwrap_or(epoch_record.opened_at_ms);
        Ok(tally_ledger::unix_now_ms().max(self.writer.time_mark_ms()).max(sealed_ms))
    }

    /// Whether a prepared file's execution date (its creation day plus the
    /// delay) is before today.
    fn execution_date_passed(&self, created_at_ms: u64, now_ms: u64, rail: Rail) -> bool {
        let delay_days = match rail {
            Rail::Iso20022 => self.config.iso20022.as_ref().map_or(0, |s| s.execution_delay_days),
            Rail::Nacha => self.config.nacha.as_ref().map_or(0, |s| s.execution_delay_days),
            Rail::Evm => 0,
        };
        let day = |ms: u64| ms / 86_400_000;
        day(created_at_ms) + u64::from(delay_days) < day(now_ms)
    }

    async fn submit_bank_file(
        &self,
        actor: &Actor,
        record: &BatchRecord,
        payouts: &HashMap<String, PayoutRecord>,
    ) -> Result<(), SettleError> {
        let batch = &record.batch;
        let (epoch, index) = (batch.epoch, batch.index);
        let now_ms = self.file_time_ms(epoch)?;
        // A prepared file keeps its bytes (its time) if it may have reached
        // the bank; one never published whose execution date passed is
        // prepared again with today's date, under the same name.
        let recorded = match &record.state {
            BatchState::FilePrepared { file_name, sha256, created_at_ms } => {
                let published = outbox::was_published(&self.outbox, file_name)?;
                if !published && self.execution_date_passed(*created_at_ms, now_ms, batch.rail) {
                    tracing::warn!(
                        epoch,
                        batch = index,
                        file_name,
                        "prepared file's execution date passed; preparing it again"
                    );
                    None
                } else {
                    Some((file_name.clone(), *sha256, *created_at_ms))
                }
            }
            _ => None,
        };
        let created_at_ms = recorded.as_ref().map_or(now_ms, |(_, _, at)| *at);
        let (file_name, bytes) = self.bank_file(batch, payouts, created_at_ms)?;
        let sha256 = outbox::sha256(&bytes);
        match recorded {
            Some((recorded_name, recorded_hash, _)) => {
                if recorded_name != file_name || recorded_hash != sha256 {
                    return Err(SettleError::Rail(format!(
                        "batch {index}: the regenerated {file_name} differs from the recorded one \
                         (was the bank configuration or a payee name changed?)"
                    )));
                }
            }
            None => {
                let state = BatchState::FilePrepared { file_name: file_name.clone(), sha256, created_at_ms };
                self.step(actor, SettlementCommand::UpdateBatch { epoch, index, state }).await?;
                fail_at("bank-after-prepare")?;
            }
        }
        let outcome = outbox::write_atomically(&self.outbox, &file_name, &bytes)?;
        if let OutboxWrite::AlreadyPresent(path) = &outcome {
            tracing::info!(path = %path.display(), "identical file already in the outbox");
        }
        fail_at("bank-after-write")?;
        self.step(
            actor,
            SettlementCommand::UpdateBatch {
                epoch,
                index,
                state: BatchState::FileWritten { file_name, sha256, created_at_ms },
            },
        )
        .await?;
        fail_at("bank-after-record")
    }

    /// Applies a bank's `pain.002` status report on behalf of `actor` (who
    /// imported it): accepted payouts become settled; rejected ones are
    /// carried forward with the bank's reason.
    pub async fn import_bank_status(&self, xml: &[u8], actor: &Actor) -> Result<ImportSummary, SettleError> {
        let report = bank::parse_pain002(xml)?;
        let (epoch, batch) = self.find_bank_batch(&report.original_message_id)?;
        let mut summary =
            ImportSummary { epoch, original_message_id: report.original_message_id.clone(), ..Default::default() };
        for payout_id in &batch.payout_ids {
            let verdict = match report.status_of(payout_id) {
                Some(bank::PaymentStatus::Accepted) => Ok(report.message_id.clone()),
                Some(bank::PaymentStatus::Rejected { reason_code, reason_text }) => {
                    Err(if reason_text.is_empty() { reason_code } else { format!("{reason_code} {reason_text}") })
                }
                Some(bank::PaymentStatus::Pending) | None => {
                    summary.pending += 1;
                    continue;
                }
            };
            let accepted = verdict.is_ok();
            let command = SettlementCommand::RecordBankStatus { payout_id: payout_id.clone(), verdict };
            match self.writer.admin(actor.clone(), AdminCommand::Settlement(command)).await {
                Ok(AdminReply::BankStatus { changed: false }) => summary.unchanged += 1,
                Ok(_) if accepted => summary.accepted += 1,
                Ok(_) => summary.rejected += 1,
                // One payout's conflict (e.g. settled, then reported
                // rejected) must not stop the rest of the report.
                Err(AdminError::Invalid(reason)) => {
                    tracing::warn!(payout_id, %reason, "bank status refused");
                    summary.refused.push(format!("{payout_id}: {reason}"));
                }
                Err(error) => return Err(admin_error(error)),
            }
        }
        Ok(summary)
    }

    fn find_bank_batch(&self, message_id: &str) -> Result<(u64, RailBatch), SettleError> {
        for settlement in self.ledger.settlements()?.into_iter().rev() {
            for record in self.ledger.batches(settlement.epoch)? {
                if record.batch.rail != Rail::Evm && record.batch.id == message_id {
                    if !matches!(record.state, BatchState::FileWritten { .. }) {
                        return Err(SettleError::Rail(format!("file {message_id} was never written to the outbox")));
                    }
                    return Ok((settlement.epoch, record.batch));
                }
            }
        }
        Err(SettleError::NotFound(format!("no payment file with message id {message_id}")))
    }
}

/// What a status report changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub epoch: u64,
    pub original_message_id: String,
    pub accepted: u64,
    pub rejected: u64,
    pub pending: u64,
    /// Payouts whose status was already recorded.
    pub unchanged: u64,
    /// Statuses the ledger refused (a conflicting verdict), with the reason.
    pub refused: Vec<String>,
}

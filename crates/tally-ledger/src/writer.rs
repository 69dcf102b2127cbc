//! The single writer: group commit, replay, credit, accounts, epochs.
//!
//! One OS thread owns every decision that depends on ledger state. Front
//! doors send it [`Command`]s through a bounded queue (capacity
//! [`WriterConfig::queue_depth_max`]); a full queue makes senders wait, which
//! is the back-pressure that reaches clients. The thread takes the first
//! waiting command, then drains whatever else is already queued, up to
//! [`WriterConfig::group_ious_max`] IOUs, and commits the whole group as one
//! `WriteBatch` with `sync = true`: one fsync for thousands of IOUs from many
//! streams (group commit). Only after that write returns does any reply
//! leave the thread, so **no acknowledgement ever precedes durability**.
//!
//! The thread only *decides*: the finished batch and its replies go to the
//! committer thread ([`crate::commit`]), which writes, fsyncs and answers,
//! while this thread decides the next group. Decisions about group N+1 see
//! group N's IOUs through an in-memory overlay until N is durable. A group
//! holding an admin command first waits for every earlier group to be
//! durable, because admin and settlement steps read what those wrote.
//!
//! Inside a group, commands apply in queue order against the in-memory
//! [`State`], so an IOU queued after a seal lands in the new epoch, and an
//! IOU after a suspension is refused. Aggregates are summed per
//! `(epoch, payer, payee, asset)` inside the group before being merged, so
//! RocksDB sees one merge operand per pair per group, not one per IOU.
//!
//! If the write fails (disk full, I/O error), every command in the group,
//! and in the groups decided on top of it, is answered with an error, the
//! in-memory state is rebuilt from disk, and the writer carries on: nothing
//! partial is ever visible or acknowledged.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use ed25519_dalek::VerifyingKey;
use rocksdb::WriteBatch;
use tally_core::account::{
    DISPLAY_NAME_LEN_MAX, PAYER_KEYS_MAX, PAYOUT_DESTINATION_LEN_MAX, SIGNATURE_AGENT_LEN_MAX, is_valid_account_id,
    is_valid_signature_agent,
};
use tally_core::evidence::evidence_iou_bytes;
use tally_core::verify::parse_registration_key;
use tally_core::{Asset, CommitmentId, Nonce, Outcome, Payee, Payer, PayerStatus, PublicKeyBytes, SignedIou};
use tokio::sync::{mpsc, oneshot};

use crate::commit::{CommitDone, CommitJob, JOBS_QUEUED_MAX, Reply};
use crate::directory::KeyDirectory;
use crate::layout::*;
use crate::settlement::SettlementCommand;
use crate::state::{FastMap, State};
use crate::store::Ledger;
use crate::{Clock, LedgerError};

/// Where a batch's time goes, one histogram by `stage`. The ingest pipeline
/// records `verify_wait` (for a verifier slot and thread), `verify` (one
/// chunk's batched verification), `writer` (the ledger's queue, decision and
/// durable commit) and `batch` (the whole submission); the writer records
/// `writer_queue` (a command's wait for its group) and `decide` (a group's
/// decisions), and the committer `write` (a group's write and fsync).
pub const STAGE_SECONDS: &str = "tally_stage_seconds";

/// Bounds of the writer.
#[derive(Clone)]
pub struct WriterConfig {
    /// Commands waiting in the queue before senders block.
    pub queue_depth_max: usize,
    /// Most IOUs in one group commit. A single append command larger than
    /// this still commits whole (front doors bound their batches well below).
    pub group_ious_max: usize,
    /// Wall clock for `accepted_at` and the last expiry check.
    pub clock: Clock,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig { queue_depth_max: 256, group_ious_max: 16_384, clock: crate::system_clock() }
    }
}

/// An IOU whose signature the caller has verified, with the evidence to
/// store (`tally_core::evidence`: its signing bytes, or a Web Bot Auth record).
pub struct AppendItem {
    pub signed: SignedIou,
    pub evidence: Vec<u8>,
}

impl From<tally_core::Commitment> for AppendItem {
    fn from(commitment: tally_core::Commitment) -> AppendItem {
        AppendItem { signed: commitment.signed, evidence: commitment.evidence }
    }
}

/// The writer's verdict on one IOU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResult {
    pub outcome: Outcome,
    /// Set for `Accepted` and `Duplicate`.
    pub commitment: Option<CommitmentId>,
    /// The epoch the IOU is in (for `Accepted` and `Duplicate`), else 0.
    pub epoch: u64,
}

impl AppendResult {
    pub fn rejected(outcome: Outcome) -> AppendResult {
        debug_assert!(!outcome.is_success());
        AppendResult { outcome, commitment: None, epoch: 0 }
    }
}

/// Control-plane commands: accounts and epochs.
#[derive(Clone, Debug)]
pub enum AdminCommand {
    /// Registers an asset, or updates whether it is enabled. A registered
    /// asset's scale never changes: it gives meaning to every stored amount.
    UpsertAsset(Asset),
    RegisterPayer {
        id: String,
        display_name: String,
        keys: Vec<PublicKeyBytes>,
        credit_limits: Vec<(String, u128)>,
    },
    AddPayerKey {
        payer_id: String,
        key: PublicKeyBytes,
    },
    SetPayerStatus {
        payer_id: String,
        status: PayerStatus,
    },
    SetCreditLimit {
        payer_id: String,
        asset: String,
        limit: u128,
    },
    RegisterPayee(Payee),
    SetPayeePayout {
        payee_id: String,
        payout_destination: String,
    },
    /// Links a payer to the payee account it nets under at settlement
    /// (`None` unlinks).
    LinkPayer {
        payer_id: String,
        payee_id: Option<String>,
    },
    /// Sets the signature agent a payer's crawler sends in `Signature-Agent`
    /// (`None` clears it). An agent belongs to at most one payer.
    SetSignatureAgent {
        payer_id: String,
        signature_agent: Option<String>,
    },
    /// Seals the open epoch and opens the next, atomically.
    SealEpoch,
    /// A step of settlement's state machine.
    Settlement(SettlementCommand),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminReply {
    Done,
    Sealed { sealed: EpochRecord, opened: EpochRecord },
    Planned { epoch: u64 },
    BankStatus { changed: bool },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("storage failure, nothing was changed: {0}")]
    Storage(String),
    #[error("the ledger writer has stopped")]
    WriterStopped,
}

enum Command {
    Append {
        items: Vec<AppendItem>,
        /// When the command entered the queue.
        queued: Instant,
        /// Set when the items are one batch-signed commitment's IOUs.
        batch: Option<BatchRecord>,
        reply: oneshot::Sender<Result<Vec<AppendResult>, LedgerError>>,
    },
    Admin {
        command: AdminCommand,
        reply: oneshot::Sender<Result<AdminReply, AdminError>>,
    },
    Stop,
}

impl Command {
    fn iou_count(&self) -> usize {
        match self {
            Command::Append { items, .. } => items.len(),
            Command::Admin { .. } | Command::Stop => 1,
        }
    }
}

/// A cheap, cloneable way to talk to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    sender: mpsc::Sender<Command>,
    directory: Arc<KeyDirectory>,
}

impl WriterHandle {
    /// Appends verified IOUs; the reply arrives after the group holding them
    /// is fsynced. `Err` means nothing of this call was written.
    pub async fn append(&self, items: Vec<AppendItem>) -> Result<Vec<AppendResult>, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Command::Append { items, queued: Instant::now(), batch: None, reply })
            .await
            .map_err(|_| LedgerError::WriterStopped)?;
        answer.await.map_err(|_| LedgerError::WriterStopped)?
    }

    /// Appends the IOUs of one batch-signed commitment whose statement the
    /// caller has verified (signature and Merkle root). The batch record is
    /// stored with the first of its IOUs to be accepted; a different batch
    /// under the same `(payer key, batch_seq)` is refused whole (`Conflict`).
    pub async fn append_batch(
        &self,
        batch: BatchRecord,
        items: Vec<AppendItem>,
    ) -> Result<Vec<AppendResult>, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Append { items, queued: Instant::now(), batch: Some(batch), reply };
        self.sender.send(command).await.map_err(|_| LedgerError::WriterStopped)?;
        answer.await.map_err(|_| LedgerError::WriterStopped)?
    }

    pub async fn admin(&self, command: AdminCommand) -> Result<AdminReply, AdminError> {
        let (reply, answer) = oneshot::channel();
        self.sender.send(Command::Admin { command, reply }).await.map_err(|_| AdminError::WriterStopped)?;
        answer.await.map_err(|_| AdminError::WriterStopped)?
    }

    /// The blocking twin of [`WriterHandle::admin`], for callers outside an
    /// async runtime (tests, tools).
    pub fn admin_blocking(&self, command: AdminCommand) -> Result<AdminReply, AdminError> {
        let (reply, answer) = oneshot::channel();
        self.sender.blocking_send(Command::Admin { command, reply }).map_err(|_| AdminError::WriterStopped)?;
        answer.blocking_recv().map_err(|_| AdminError::WriterStopped)?
    }

    /// The blocking twin of [`WriterHandle::append`].
    pub fn append_blocking(&self, items: Vec<AppendItem>) -> Result<Vec<AppendResult>, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Append { items, queued: Instant::now(), batch: None, reply };
        self.sender.blocking_send(command).map_err(|_| LedgerError::WriterStopped)?;
        answer.blocking_recv().map_err(|_| LedgerError::WriterStopped)?
    }

    pub fn directory(&self) -> &Arc<KeyDirectory> {
        &self.directory
    }

    /// Commands waiting in the queue now.
    pub fn queue_depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }
}

/// The running writer thread.
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Loads state, opens epoch 1 on a new ledger, publishes the key
    /// directory, and starts the thread.
    pub fn start(ledger: Ledger, config: WriterConfig) -> Result<Writer, LedgerError> {
        assert!(config.queue_depth_max > 0 && config.group_ious_max > 0);
        if ledger.is_read_only() {
            return Err(LedgerError::Unavailable("a read-only ledger cannot be written".into()));
        }
        let directory = Arc::new(KeyDirectory::default());
        let state = State::load(&ledger)?;
        let (jobs, jobs_receiver) = std::sync::mpsc::sync_channel(JOBS_QUEUED_MAX);
        // Every job reports done once; at most JOBS_QUEUED_MAX + 2 are unabsorbed
        // (queued, being written, being handed over), so the committer never waits here.
        let (done_sender, done) = std::sync::mpsc::sync_channel(JOBS_QUEUED_MAX + 2);
        let committer = {
            let (ledger, directory) = (ledger.clone(), directory.clone());
            std::thread::Builder::new()
                .name("tally-ledger-commit".into())
                .spawn(move || crate::commit::run_committer(ledger, directory, jobs_receiver, done_sender))
                .map_err(|e| LedgerError::Unavailable(format!("cannot start the committer thread: {e}")))?
        };
        let mut core = WriterCore {
            state,
            ledger,
            config: config.clone(),
            directory: directory.clone(),
            pipeline: Some(Pipeline { jobs, done, committer }),
            in_flight: VecDeque::new(),
            generation: 0,
            reload_needed: false,
        };
        core.open_first_epoch()?;
        core.publish_all_keys()?;
        let (sender, receiver) = mpsc::channel(config.queue_depth_max);
        let thread = std::thread::Builder::new()
            .name("tally-ledger-writer".into())
            .spawn(move || core.run(receiver))
            .map_err(|e| LedgerError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { handle: WriterHandle { sender, directory }, thread: Some(thread) })
    }

    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Stops the thread after the commands queued before this call, and
    /// waits for it. Commands sent afterwards fail with `WriterStopped`.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.sender.blocking_send(Command::Stop);
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

type NonceKey = (PublicKeyBytes, Nonce);

/// What a group has accepted so far: replay answers for IOUs that repeat
/// inside the same group, before any of it is on disk.
struct Staged {
    commitment: CommitmentId,
    epoch: u64,
    /// The accepted IOU's evidence (replays compare the IOUs in it, not how they were signed).
    evidence: Vec<u8>,
}

/// A group handed to the committer and not yet reported done: what later
/// groups must see of it before it is readable from RocksDB.
struct InFlight {
    staged: FastMap<NonceKey, Staged>,
    batches: HashMap<[u8; 40], [u8; 32]>,
}

/// The writer's end of the committer pipeline ([`crate::commit`]).
struct Pipeline {
    jobs: SyncSender<CommitJob>,
    done: Receiver<CommitDone>,
    committer: JoinHandle<()>,
}

pub(crate) struct WriterCore {
    pub(crate) ledger: Ledger,
    pub(crate) state: State,
    config: WriterConfig,
    directory: Arc<KeyDirectory>,
    /// `None` only once the writer has shut the pipeline down.
    pipeline: Option<Pipeline>,
    /// Groups handed to the committer, oldest first (at most `JOBS_QUEUED_MAX + 2`).
    in_flight: VecDeque<InFlight>,
    /// Bumped after each reload from disk: the committer fails a failed
    /// generation's later groups unwritten.
    generation: u64,
    /// An in-flight group failed: the state must be reloaded before deciding more.
    reload_needed: bool,
}

/// One group commit under construction.
pub(crate) struct Group {
    pub(crate) batch: WriteBatch,
    staged: FastMap<NonceKey, Staged>,
    /// Roots of the batch records this group writes, by `batch_key`.
    batches: HashMap<[u8; 40], [u8; 32]>,
    pub(crate) aggregates: GroupAggregates,
    /// Reused to encode each log record (the batch copies it).
    scratch: Vec<u8>,
    /// Accepted IOUs, dropped by the committer: their strings were allocated
    /// by the gRPC threads, and freeing memory another thread allocated was
    /// a sixth of this thread's time in the profile.
    spent: Vec<SignedIou>,
    new_keys: Vec<VerifyingKey>,
    pub(crate) now_ms: u64,
    /// Settlement records written by earlier commands of this group, which
    /// later commands must see before they reach RocksDB.
    /// `None` is a delete.
    pub(crate) settlement_overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// The current settlement command's writes, until it succeeds.
    pub(crate) settlement_staged: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

/// What a group adds per `(epoch, payer, payee, asset)`, summed in memory so
/// RocksDB sees one merge operand per pair and order per group, not one per IOU.
#[derive(Default)]
pub(crate) struct GroupAggregates {
    /// By-payer aggregate key → (the sum, the same pair's by-payee key).
    sums: FastMap<Vec<u8>, (AggregateValue, Vec<u8>)>,
    /// Reused to build the lookup key: an allocation only for a new pair.
    scratch: Vec<u8>,
}

impl GroupAggregates {
    fn add(&mut self, epoch: u64, payer: &str, payee: &str, asset: &str, amount: u64) -> Result<(), LedgerError> {
        self.scratch.clear();
        aggregate_key_into(&mut self.scratch, epoch, payer, payee, asset);
        let add = AggregateValue { sum: u128::from(amount), count: 1 };
        let overflow = || LedgerError::Corruption("aggregate overflow".into());
        match self.sums.get_mut(self.scratch.as_slice()) {
            Some((value, _)) => *value = value.checked_add(add).ok_or_else(overflow)?,
            None => {
                let by_payee = aggregate_key(epoch, payee, payer, asset);
                self.sums.insert(self.scratch.clone(), (add, by_payee));
            }
        }
        Ok(())
    }

    /// Whether the group holds IOUs of `epoch`.
    pub(crate) fn has_epoch(&self, epoch: u64) -> bool {
        self.sums.keys().any(|key| key.starts_with(&epoch.to_be_bytes()))
    }
}

/// Bytes a group's `WriteBatch` takes per IOU (log record, nonce entry,
/// merges), to size it once.
const GROUP_BYTES_PER_IOU: usize = 512;

impl WriterCore {
    fn open_first_epoch(&mut self) -> Result<(), LedgerError> {
        if self.state.open_epoch.is_some() {
            return Ok(());
        }
        let epoch = EpochRecord {
            epoch: 1,
            status: EpochStatus::Open,
            opened_at_ms: (self.config.clock)(),
            sealed_at_ms: None,
            seq_first: self.state.head_seq + 1,
            seq_last: None,
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.ledger.cf(CF_EPOCHS), epoch.epoch.to_be_bytes(), encode_bincode(&epoch));
        crate::commit::write_batch(&self.ledger, batch)?;
        self.state.open_epoch = Some(epoch);
        Ok(())
    }

    fn publish_all_keys(&self) -> Result<(), LedgerError> {
        let keys = self
            .state
            .key_owner
            .keys()
            .map(|bytes| {
                parse_registration_key(bytes)
                    .map_err(|e| LedgerError::Corruption(format!("stored key {}: {e}", hex::encode(bytes))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.directory.publish(keys.into_iter());
        Ok(())
    }

    fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        while let Some(first) = receiver.blocking_recv() {
            let mut ious = first.iou_count();
            let mut commands = vec![first];
            while ious < self.config.group_ious_max {
                match receiver.try_recv() {
                    Ok(command) => {
                        ious += command.iou_count();
                        commands.push(command);
                    }
                    Err(_) => break,
                }
            }
            let stop = commands.iter().position(|c| matches!(c, Command::Stop));
            if let Some(stop) = stop {
                commands.truncate(stop);
            }
            self.commit_group(commands);
            if stop.is_some() {
                break;
            }
        }
        // Let the committer finish (and answer) every group already handed to it.
        if let Some(pipeline) = self.pipeline.take() {
            drop(pipeline.jobs);
            let _ = pipeline.committer.join();
        }
    }

    /// Takes note of a group the committer reports done (they come in order).
    fn absorb(&mut self, done: CommitDone) {
        let settled = self.in_flight.pop_front();
        assert!(settled.is_some(), "the committer reports only groups it was given");
        if done == CommitDone::Failed {
            self.reload_needed = true;
        }
    }

    /// Absorbs what the committer has reported so far, without waiting.
    fn absorb_reported(&mut self) {
        while let Some(done) = self.pipeline.as_ref().and_then(|p| p.done.try_recv().ok()) {
            self.absorb(done);
        }
    }

    /// Waits until every group handed to the committer is durable or failed,
    /// then reloads the state from disk if one failed. Afterwards RocksDB
    /// holds everything decided so far.
    fn drain_pipeline(&mut self) {
        while !self.in_flight.is_empty() {
            let done = self.pipeline.as_ref().and_then(|p| p.done.recv().ok());
            // The committer exits only when the writer drops the job sender.
            let done = done.expect("the committer outlives the writer");
            self.absorb(done);
        }
        if self.reload_needed {
            self.reload_state();
            self.reload_needed = false;
            self.generation += 1;
        }
    }

    /// Hands a decided group to the committer; blocks while `JOBS_QUEUED_MAX` wait.
    fn hand_over(&mut self, job: CommitJob, in_flight: InFlight) {
        self.absorb_reported();
        self.in_flight.push_back(in_flight);
        assert!(self.in_flight.len() <= JOBS_QUEUED_MAX + 2);
        let pipeline = self.pipeline.as_ref().expect("the pipeline runs while the writer decides");
        pipeline.jobs.send(job).expect("the committer outlives the writer");
    }

    fn commit_group(&mut self, commands: Vec<Command>) {
        if commands.is_empty() {
            return;
        }
        let started = Instant::now();
        let pending_ious: usize = commands.iter().map(Command::iou_count).sum();
        self.absorb_reported();
        // Admin and settlement steps read what earlier groups wrote from
        // RocksDB, and a failed group means the state must be reloaded: both
        // wait for the pipeline to empty first.
        if self.reload_needed || commands.iter().any(|c| matches!(c, Command::Admin { .. })) {
            self.drain_pipeline();
        }
        let mut group = Group {
            // ~0.5 KiB per IOU: sized up front, the batch is not copied as it grows.
            batch: WriteBatch::with_capacity_bytes(pending_ious.saturating_mul(GROUP_BYTES_PER_IOU)),
            staged: FastMap::with_capacity_and_hasher(pending_ious, Default::default()),
            batches: HashMap::new(),
            aggregates: GroupAggregates::default(),
            scratch: Vec::new(),
            spent: Vec::with_capacity(pending_ious),
            new_keys: Vec::new(),
            now_ms: (self.config.clock)(),
            settlement_overlay: HashMap::new(),
            settlement_staged: HashMap::new(),
        };
        let mut replies = Vec::with_capacity(commands.len());
        let mut failure: Option<LedgerError> = None;
        let mut appended: u64 = 0;
        for command in commands {
            match command {
                Command::Append { items, queued, batch, reply } => {
                    metrics::histogram!(STAGE_SECONDS, "stage" => "writer_queue")
                        .record(started.saturating_duration_since(queued).as_secs_f64());
                    let mut results = Vec::with_capacity(items.len());
                    let batch_key_bytes = batch.as_ref().map(|b| batch_key(&b.payer_key, b.batch_seq));
                    if let (Some(batch), Some(key)) = (&batch, &batch_key_bytes) {
                        match self.batch_root(&group, key) {
                            Ok(Some(root)) if root != batch.root => {
                                // Another batch owns this (key, batch_seq): refuse this one whole.
                                results = vec![AppendResult::rejected(Outcome::Conflict); items.len()];
                                replies.push(Reply::Append(reply, results));
                                continue;
                            }
                            Ok(_) => {}
                            Err(error) => {
                                failure.get_or_insert(error);
                                replies.push(Reply::Append(reply, results));
                                continue;
                            }
                        }
                    }
                    let accepted_before = appended;
                    let on_disk = match self.replay_index_entries(&items) {
                        Ok(entries) => entries,
                        Err(error) => {
                            failure.get_or_insert(error);
                            replies.push(Reply::Append(reply, results));
                            continue;
                        }
                    };
                    for (item, on_disk) in items.into_iter().zip(on_disk) {
                        match self.append_one(&mut group, item, on_disk) {
                            Ok(result) => {
                                appended += u64::from(result.outcome == Outcome::Accepted);
                                results.push(result);
                            }
                            Err(error) => {
                                failure.get_or_insert(error);
                                break;
                            }
                        }
                    }
                    if let (Some(batch), Some(key)) = (batch, batch_key_bytes)
                        && appended > accepted_before
                        && !group.batches.contains_key(&key)
                        && failure.is_none()
                    {
                        match self.batch_root(&group, &key) {
                            Ok(Some(_)) => {}
                            Ok(None) => {
                                group.batch.put_cf(self.ledger.cf(CF_BATCHES), key, batch.encode());
                                group.batches.insert(key, batch.root);
                            }
                            Err(error) => {
                                failure.get_or_insert(error);
                            }
                        }
                    }
                    replies.push(Reply::Append(reply, results));
                }
                Command::Admin { command, reply } => {
                    let result = self.apply_admin(&mut group, command);
                    replies.push(Reply::Admin(reply, result));
                }
                Command::Stop => unreachable!("run() truncates at Stop"),
            }
        }
        if failure.is_none() {
            let (by_payer, by_payee) = (self.ledger.cf(CF_AGG_BY_PAYER), self.ledger.cf(CF_AGG_BY_PAYEE));
            for (payer_key, (value, payee_key)) in &group.aggregates.sums {
                let encoded = value.encode();
                group.batch.merge_cf(by_payer, payer_key, encoded);
                group.batch.merge_cf(by_payee, payee_key, encoded);
            }
        }
        if let Some(error) = failure {
            // The group's decisions are in memory only; earlier groups may
            // still be in the pipeline. Let them land, then throw this one away.
            self.drain_pipeline();
            self.fail_group(replies, &error);
            return;
        }
        metrics::histogram!(STAGE_SECONDS, "stage" => "decide").record(started.elapsed().as_secs_f64());
        let job = CommitJob {
            batch: group.batch,
            replies,
            new_keys: group.new_keys,
            appended,
            started,
            generation: self.generation,
            spent: group.spent,
        };
        self.hand_over(job, InFlight { staged: group.staged, batches: group.batches });
    }

    /// Answers every command of a group that failed before it reached the
    /// committer (a read error while deciding) and rebuilds the state from
    /// disk, discarding what the group staged.
    fn fail_group(&mut self, replies: Vec<Reply>, error: &LedgerError) {
        tracing::error!(%error, "group commit failed; nothing in it was acknowledged");
        metrics::counter!("tally_commit_failures_total").increment(1);
        crate::commit::fail(replies, &crate::commit::failure_message(error));
        self.reload_state();
        self.generation += 1;
    }

    /// Replaces the in-memory state with what is durable.
    fn reload_state(&mut self) {
        // The group's staged changes (head of the chain, exposures, accounts)
        // are in memory only: throw them away by reading back what is
        // durable. Reads need no free space, so a full disk does not stop
        // this; a transient read error is retried a bounded number of times.
        let mut pause_ms = RELOAD_PAUSE_MS_FIRST;
        for attempt in 1..=RELOAD_ATTEMPTS_MAX {
            match State::load(&self.ledger) {
                Ok(state) => {
                    self.state = state;
                    return;
                }
                Err(reload) if attempt < RELOAD_ATTEMPTS_MAX => {
                    tracing::warn!(%reload, attempt, "cannot reload ledger state after a failed write; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(pause_ms));
                    pause_ms = pause_ms.saturating_mul(2);
                }
                Err(reload) => {
                    // The disk no longer yields a consistent state: carrying on
                    // with the failed group's staged state would fork the hash
                    // chain, so this thread stops; every later command is
                    // answered `WriterStopped` (gRPC UNAVAILABLE).
                    tracing::error!(%reload, "cannot reload ledger state; the writer stops");
                    panic!("ledger state cannot be reloaded after a failed write: {reload}");
                }
            }
        }
        const RELOAD_ATTEMPTS_MAX: u32 = 6;
        const RELOAD_PAUSE_MS_FIRST: u64 = 50;
    }

    /// The root of the batch stored (or staged in this group) under `key`.
    fn batch_root(&self, group: &Group, key: &[u8; 40]) -> Result<Option<[u8; 32]>, LedgerError> {
        let in_flight = self.in_flight.iter().rev().map(|flight| &flight.batches);
        if let Some(root) = std::iter::once(&group.batches).chain(in_flight).find_map(|batches| batches.get(key)) {
            return Ok(Some(*root));
        }
        match self.ledger.db.get_pinned_cf(self.ledger.cf(CF_BATCHES), key)? {
            None => Ok(None),
            Some(value) => Ok(Some(BatchRecord::decode(key, &value)?.root)),
        }
    }

    /// The replay index's entries for a command's IOUs, read from RocksDB in
    /// one batched lookup (sorted keys share index and filter blocks).
    /// Read before the command is decided, yet exact: anything written
    /// since, by this group or one still in the pipeline, is in the overlay
    /// that `append_one` consults first.
    fn replay_index_entries(&self, items: &[AppendItem]) -> Result<Vec<Option<NonceEntry>>, LedgerError> {
        let mut keys: Vec<(usize, [u8; 48])> = items
            .iter()
            .enumerate()
            .map(|(i, item)| (i, nonce_key(&item.signed.iou.payer_key, &item.signed.iou.nonce)))
            .collect();
        keys.sort_unstable_by_key(|&(_, key)| key);
        let found =
            self.ledger.db.batched_multi_get_cf(self.ledger.cf(CF_NONCES), keys.iter().map(|(_, key)| key), true);
        let mut entries = vec![None; items.len()];
        for ((index, _), value) in keys.iter().zip(found) {
            if let Some(value) = value? {
                entries[*index] = Some(decode_nonce_entry(&value)?);
            }
        }
        Ok(entries)
    }

    /// Decides one IOU. `on_disk` is its replay-index entry as RocksDB held
    /// it when the command's decisions began.
    fn append_one(
        &mut self,
        group: &mut Group,
        item: AppendItem,
        on_disk: Option<NonceEntry>,
    ) -> Result<AppendResult, LedgerError> {
        let iou = &item.signed.iou;
        debug_assert_eq!(
            tally_core::parse_evidence(&item.evidence).map(|e| e.iou).as_ref(),
            Ok(iou),
            "the evidence stands for the IOU"
        );
        let nonce_key_bytes = nonce_key(&iou.payer_key, &iou.nonce);

        // Replay first: a resubmission of an accepted IOU is answered with its
        // original acceptance, whatever has changed since.
        let iou_bytes = evidence_iou_bytes(&item.evidence)
            .ok_or_else(|| LedgerError::Corruption("an append carries bytes that are not evidence".into()))?;
        // This group, then the groups still in the pipeline, then the disk.
        let key = (iou.payer_key, iou.nonce);
        let in_flight = self.in_flight.iter().rev().map(|flight| &flight.staged);
        if let Some(staged) = std::iter::once(&group.staged).chain(in_flight).find_map(|staged| staged.get(&key)) {
            let original = evidence_iou_bytes(&staged.evidence).unwrap_or_default();
            return Ok(replay_answer(staged.commitment, staged.epoch, original, iou_bytes));
        }
        if let Some(entry) = on_disk {
            let original = self
                .ledger
                .record(entry.seq)?
                .ok_or_else(|| LedgerError::Corruption(format!("nonce points at missing record {}", entry.seq)))?;
            let commitment = CommitmentId { seq: entry.seq, hash: entry.hash };
            let original_iou = evidence_iou_bytes(&original.evidence)
                .ok_or_else(|| LedgerError::Corruption(format!("record {} holds no IOU", entry.seq)))?;
            return Ok(replay_answer(commitment, original.epoch, original_iou, iou_bytes));
        }

        // The replay index forgets nonces some time after expiry; refusing
        // expired IOUs here, at the single point of decision, is what makes
        // that forgetting safe whatever the front door checked earlier.
        if iou.expires_at_s <= group.now_ms / 1000 {
            return Ok(AppendResult::rejected(Outcome::Expired));
        }
        if iou.amount == 0 {
            return Ok(AppendResult::rejected(Outcome::InvalidAmount));
        }
        let Some(payer_id) = self.state.key_owner.get(&iou.payer_key) else {
            return Ok(AppendResult::rejected(Outcome::UnknownPayer));
        };
        let payer = self
            .state
            .payers
            .get(payer_id)
            .ok_or_else(|| LedgerError::Corruption(format!("key owner {payer_id} has no payer record")))?;
        if payer.status == PayerStatus::Suspended {
            return Ok(AppendResult::rejected(Outcome::SuspendedPayer));
        }
        match self.state.assets.get(&iou.asset) {
            None => return Ok(AppendResult::rejected(Outcome::UnknownAsset)),
            Some(asset) if !asset.enabled => return Ok(AppendResult::rejected(Outcome::AssetDisabled)),
            Some(_) => {}
        }
        if !self.state.payees.contains_key(&iou.payee) {
            return Ok(AppendResult::rejected(Outcome::UnknownPayee));
        }
        let owed = self.state.exposure(payer_id, &iou.asset);
        let owed_after = match owed.checked_add(u128::from(iou.amount)) {
            Some(total) if total <= payer.credit_limit(&iou.asset) => total,
            _ => return Ok(AppendResult::rejected(Outcome::CreditLimitExceeded)),
        };

        let epoch = self.state.open_epoch.as_ref().expect("an epoch is always open").epoch;
        let seq = self.state.head_seq + 1;
        let record = StoredIou {
            seq,
            epoch,
            accepted_at_ms: group.now_ms,
            prev_hash: self.state.head_hash,
            hash: [0; 32],
            signature: item.signed.signature,
            evidence: item.evidence,
        };
        let record = StoredIou { hash: record.computed_hash(), ..record };
        group.scratch.clear();
        encode_log_record(&record, &mut group.scratch);
        group.batch.put_cf(self.ledger.cf(CF_LOG), log_key(seq), &group.scratch);
        let entry = NonceEntry { seq, hash: record.hash, expires_at_s: iou.expires_at_s };
        group.batch.put_cf(self.ledger.cf(CF_NONCES), nonce_key_bytes, encode_nonce_entry(&entry));

        group.aggregates.add(epoch, payer_id, &iou.payee, &iou.asset, iou.amount)?;
        let payer_id = payer_id.clone();
        self.state.set_exposure(&payer_id, &iou.asset, owed_after);
        self.state.head_seq = seq;
        self.state.head_hash = record.hash;

        let commitment = CommitmentId { seq, hash: record.hash };
        // The evidence moves into the replay overlay: no copy on the hot path.
        group.staged.insert((iou.payer_key, iou.nonce), Staged { commitment, epoch, evidence: record.evidence });
        group.spent.push(item.signed);
        Ok(AppendResult { outcome: Outcome::Accepted, commitment: Some(commitment), epoch })
    }

    fn put_account<T: serde::Serialize>(&self, group: &mut Group, prefix: &[u8], id: &[u8], record: &T) {
        let mut key = prefix.to_vec();
        key.extend_from_slice(id);
        group.batch.put_cf(self.ledger.cf(CF_ACCOUNTS), key, encode_bincode(record));
    }

    fn payer_mut(&mut self, payer_id: &str) -> Result<&mut Payer, AdminError> {
        self.state.payers.get_mut(payer_id).ok_or_else(|| AdminError::NotFound(format!("payer {payer_id}")))
    }

    fn check_new_key(&self, group: &Group, key: &PublicKeyBytes) -> Result<VerifyingKey, AdminError> {
        let parsed =
            parse_registration_key(key).map_err(|e| AdminError::Invalid(format!("key {}: {e}", hex::encode(key))))?;
        if let Some(owner) = self.state.key_owner.get(key) {
            return Err(AdminError::AlreadyExists(format!("key {} belongs to payer {owner}", hex::encode(key))));
        }
        debug_assert!(!group.new_keys.iter().any(|k| k.as_bytes() == key));
        Ok(parsed)
    }

    fn apply_admin(&mut self, group: &mut Group, command: AdminCommand) -> Result<AdminReply, AdminError> {
        match command {
            AdminCommand::UpsertAsset(asset) => {
                Asset::new(&asset.code, asset.scale, asset.enabled).map_err(|e| AdminError::Invalid(e.to_string()))?;
                if let Some(existing) = self.state.assets.get(&asset.code)
                    && existing.scale != asset.scale
                {
                    return Err(AdminError::Invalid(format!(
                        "asset {} has scale {}; a scale never changes once registered",
                        asset.code, existing.scale
                    )));
                }
                self.put_account(group, ACCOUNT_ASSET_PREFIX, asset.code.as_bytes(), &asset);
                self.state.assets.insert(asset.code.clone(), asset);
                Ok(AdminReply::Done)
            }
            AdminCommand::RegisterPayer { id, display_name, keys, credit_limits } => {
                check_id_and_name("payer", &id, &display_name)?;
                if self.state.payers.contains_key(&id) {
                    return Err(AdminError::AlreadyExists(format!("payer {id}")));
                }
                if keys.is_empty() || keys.len() > PAYER_KEYS_MAX {
                    return Err(AdminError::Invalid(format!("a payer has 1..={PAYER_KEYS_MAX} keys")));
                }
                let mut parsed = Vec::with_capacity(keys.len());
                for (i, key) in keys.iter().enumerate() {
                    if keys[..i].contains(key) {
                        return Err(AdminError::Invalid(format!("key {} listed twice", hex::encode(key))));
                    }
                    parsed.push(self.check_new_key(group, key)?);
                }
                let mut payer = Payer {
                    id: id.clone(),
                    display_name,
                    status: PayerStatus::Active,
                    keys,
                    credit_limits: vec![],
                    settles_with: None,
                    signature_agent: None,
                };
                for (asset, limit) in credit_limits {
                    if !self.state.assets.contains_key(&asset) {
                        return Err(AdminError::NotFound(format!("asset {asset}")));
                    }
                    payer.set_credit_limit(&asset, limit);
                }
                for key in &payer.keys {
                    self.put_raw_key(group, key, &id);
                    self.state.key_owner.insert(*key, id.clone());
                }
                group.new_keys.extend(parsed);
                self.put_account(group, ACCOUNT_PAYER_PREFIX, id.as_bytes(), &payer);
                self.state.payers.insert(id, payer);
                Ok(AdminReply::Done)
            }
            AdminCommand::AddPayerKey { payer_id, key } => {
                let parsed = self.check_new_key(group, &key)?;
                let payer = self.payer_mut(&payer_id)?;
                if payer.keys.len() >= PAYER_KEYS_MAX {
                    return Err(AdminError::Invalid(format!("payer {payer_id} already has {PAYER_KEYS_MAX} keys")));
                }
                payer.keys.push(key);
                let payer = payer.clone();
                self.put_raw_key(group, &key, &payer_id);
                self.state.key_owner.insert(key, payer_id.clone());
                group.new_keys.push(parsed);
                self.put_account(group, ACCOUNT_PAYER_PREFIX, payer_id.as_bytes(), &payer);
                Ok(AdminReply::Done)
            }
            AdminCommand::SetPayerStatus { payer_id, status } => {
                let payer = self.payer_mut(&payer_id)?;
                payer.status = status;
                let payer = payer.clone();
                self.put_account(group, ACCOUNT_PAYER_PREFIX, payer_id.as_bytes(), &payer);
                Ok(AdminReply::Done)
            }
            AdminCommand::SetCreditLimit { payer_id, asset, limit } => {
                if !self.state.assets.contains_key(&asset) {
                    return Err(AdminError::NotFound(format!("asset {asset}")));
                }
                let payer = self.payer_mut(&payer_id)?;
                payer.set_credit_limit(&asset, limit);
                let payer = payer.clone();
                self.put_account(group, ACCOUNT_PAYER_PREFIX, payer_id.as_bytes(), &payer);
                Ok(AdminReply::Done)
            }
            AdminCommand::RegisterPayee(payee) => {
                check_id_and_name("payee", &payee.id, &payee.display_name)?;
                check_payout(&payee.payout_destination)?;
                if self.state.payees.contains_key(&payee.id) {
                    return Err(AdminError::AlreadyExists(format!("payee {}", payee.id)));
                }
                self.put_account(group, ACCOUNT_PAYEE_PREFIX, payee.id.as_bytes(), &payee);
                self.state.payees.insert(payee.id.clone(), payee);
                Ok(AdminReply::Done)
            }
            AdminCommand::SetPayeePayout { payee_id, payout_destination } => {
                check_payout(&payout_destination)?;
                let payee = self
                    .state
                    .payees
                    .get_mut(&payee_id)
                    .ok_or_else(|| AdminError::NotFound(format!("payee {payee_id}")))?;
                payee.payout_destination = payout_destination;
                let payee = payee.clone();
                self.put_account(group, ACCOUNT_PAYEE_PREFIX, payee_id.as_bytes(), &payee);
                Ok(AdminReply::Done)
            }
            AdminCommand::LinkPayer { payer_id, payee_id } => {
                if let Some(payee_id) = &payee_id
                    && !self.state.payees.contains_key(payee_id)
                {
                    return Err(AdminError::NotFound(format!("payee {payee_id}")));
                }
                let payer = self.payer_mut(&payer_id)?;
                payer.settles_with = payee_id;
                let payer = payer.clone();
                self.put_account(group, ACCOUNT_PAYER_PREFIX, payer_id.as_bytes(), &payer);
                Ok(AdminReply::Done)
            }
            AdminCommand::SetSignatureAgent { payer_id, signature_agent } => {
                if let Some(agent) = &signature_agent {
                    if !is_valid_signature_agent(agent) {
                        return Err(AdminError::Invalid(format!(
                            "signature agent must be an https:// or http:// URL of at most \
                             {SIGNATURE_AGENT_LEN_MAX} printable ASCII bytes"
                        )));
                    }
                    // Bounded by the number of payers, and only on this admin path.
                    if let Some(owner) = self
                        .state
                        .payers
                        .values()
                        .find(|p| p.id != payer_id && p.signature_agent.as_deref() == Some(agent.as_str()))
                    {
                        return Err(AdminError::AlreadyExists(format!(
                            "signature agent {agent} belongs to payer {}",
                            owner.id
                        )));
                    }
                }
                let payer = self.payer_mut(&payer_id)?;
                let previous = std::mem::replace(&mut payer.signature_agent, signature_agent.clone());
                let payer = payer.clone();
                let cf = self.ledger.cf(CF_ACCOUNTS);
                if let Some(previous) = previous
                    && signature_agent.as_ref() != Some(&previous)
                {
                    group.batch.delete_cf(cf, agent_index_key(&previous));
                }
                if let Some(agent) = &signature_agent {
                    group.batch.put_cf(cf, agent_index_key(agent), payer_id.as_bytes());
                }
                self.put_account(group, ACCOUNT_PAYER_PREFIX, payer_id.as_bytes(), &payer);
                Ok(AdminReply::Done)
            }
            AdminCommand::Settlement(command) => self.apply_settlement(group, command),
            AdminCommand::SealEpoch => {
                let open = self.state.open_epoch.take().expect("an epoch is always open");
                let sealed = EpochRecord {
                    status: EpochStatus::Sealed,
                    sealed_at_ms: Some(group.now_ms),
                    seq_last: Some(self.state.head_seq),
                    ..open
                };
                let opened = EpochRecord {
                    epoch: sealed.epoch + 1,
                    status: EpochStatus::Open,
                    opened_at_ms: group.now_ms,
                    sealed_at_ms: None,
                    seq_first: self.state.head_seq + 1,
                    seq_last: None,
                };
                let cf = self.ledger.cf(CF_EPOCHS);
                group.batch.put_cf(cf, sealed.epoch.to_be_bytes(), encode_bincode(&sealed));
                group.batch.put_cf(cf, opened.epoch.to_be_bytes(), encode_bincode(&opened));
                self.state.open_epoch = Some(opened.clone());
                Ok(AdminReply::Sealed { sealed, opened })
            }
        }
    }

    fn put_raw_key(&self, group: &mut Group, key: &PublicKeyBytes, payer_id: &str) {
        let mut record_key = ACCOUNT_KEY_PREFIX.to_vec();
        record_key.extend_from_slice(key);
        group.batch.put_cf(self.ledger.cf(CF_ACCOUNTS), record_key, payer_id.as_bytes());
    }
}

/// The index record `"agent/" agent` of a payer's signature agent.
pub(crate) fn agent_index_key(agent: &str) -> Vec<u8> {
    let mut key = ACCOUNT_AGENT_PREFIX.to_vec();
    key.extend_from_slice(agent.as_bytes());
    key
}

/// A resubmitted `(key, nonce)`: the same IOU (however it was signed: alone, in a batch, as a
/// Web Bot Auth request) is answered with its original commitment; a different one is a conflict.
fn replay_answer(commitment: CommitmentId, epoch: u64, original: &[u8], resubmitted: &[u8]) -> AppendResult {
    if original == resubmitted {
        AppendResult { outcome: Outcome::Duplicate, commitment: Some(commitment), epoch }
    } else {
        AppendResult::rejected(Outcome::Conflict)
    }
}

fn check_id_and_name(kind: &str, id: &str, display_name: &str) -> Result<(), AdminError> {
    if !is_valid_account_id(id) {
        return Err(AdminError::Invalid(format!("{kind} id must be 1..=64 characters of A-Z a-z 0-9 . _ -")));
    }
    if display_name.len() > DISPLAY_NAME_LEN_MAX {
        return Err(AdminError::Invalid(format!("display name longer than {DISPLAY_NAME_LEN_MAX} bytes")));
    }
    Ok(())
}

/// An empty destination means "not provided yet"; anything else must parse.
fn check_payout(destination: &str) -> Result<(), AdminError> {
    if destination.len() > PAYOUT_DESTINATION_LEN_MAX {
        return Err(AdminError::Invalid(format!("payout destination longer than {PAYOUT_DESTINATION_LEN_MAX} bytes")));
    }
    if !destination.is_empty() {
        tally_core::PayoutDestination::parse(destination).map_err(|e| AdminError::Invalid(e.to_string()))?;
    }
    Ok(())
}

//! The single writer: the handle front doors hold, and the thread that decides.
//!
//! One OS thread owns every decision that depends on ledger state. Front
//! doors send it commands through a bounded queue (capacity
//! [`WriterConfig::queue_depth_max`]); a full queue makes senders wait, which
//! is the back-pressure that reaches clients. The thread takes the first
//! waiting command, then drains whatever else is already queued, up to
//! [`WriterConfig::group_ious_max`] IOUs, and decides the whole group against
//! its in-memory [`State`]:
//!
//! - [`ious`]: each IOU — replay, validity window, payer, key, asset, payee,
//!   credit — staged as a log record, a nonce entry and pre-summed aggregates;
//! - [`admin`]: accounts, keys, tokens, epochs and notices;
//! - [`settlement`]: settlement's state machine (plans are netted again here
//!   and refused unless identical).
//!
//! Every control-plane change is journaled ([`crate::journal`]) in the same
//! batch, with its actor. The decided group goes to the committer thread
//! ([`crate::commit`]), which writes it with `sync = true` and only then
//! answers, while this thread decides the next group: **no acknowledgement
//! ever precedes durability**. Group N+1's decisions see group N's IOUs
//! through an in-memory overlay until N is durable. A group holding an admin
//! command first waits for every earlier group to be durable, because admin
//! and settlement steps read what those wrote.
//!
//! Time: the group's `now` is `max(clock, time mark)`, where the time mark
//! is the latest time the ledger has recorded (its last log record or
//! journal entry). Expiry is judged by it, and the replay index is pruned
//! only below a horizon derived from a *durable* mark, so no clock step —
//! forward, a compaction, back — can make a nonce forgettable while its IOU
//! is still acceptable. A clock that jumps is logged and counted
//! (`tally_clock_jumps_total`).
//!
//! If the write fails (disk full, I/O error), every command in the group,
//! and in the groups decided on top of it, is answered with an error, the
//! in-memory state is rebuilt from disk, and the writer carries on: nothing
//! partial is ever visible or acknowledged.

mod admin;
mod group;
mod ious;
mod settlement;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use rocksdb::WriteBatch;
use tally_core::verify::parse_registration_key;
use tally_core::{Actor, ValidityPolicy};
use tokio::sync::{mpsc, oneshot};

use crate::command::{AdminCommand, AdminError, AdminReply, AppendItem, AppendResult};
use crate::commit::{CommitDone, CommitJob, JOBS_QUEUED_MAX, Reply};
use crate::directory::KeyDirectory;
use crate::journal::{self, Action};
use crate::layout::*;
use crate::state::State;
use crate::store::Ledger;
use crate::{Clock, LedgerError};

pub(crate) use group::{Group, InFlight};

pub use crate::commit::STAGE_SECONDS;

/// A wall clock that moved this much more (or less) than the monotonic
/// clock between two groups is reported as a jump.
pub const CLOCK_JUMP_REPORT_MS: u64 = 1_000;

/// Bounds of the writer.
#[derive(Clone)]
pub struct WriterConfig {
    /// Commands waiting in the queue before senders block.
    pub queue_depth_max: usize,
    /// Most IOUs in one group commit. A single append command larger than
    /// this still commits whole (front doors bound their batches well below).
    pub group_ious_max: usize,
    /// Wall clock for `accepted_at` and the validity window (never used
    /// below the ledger's time mark).
    pub clock: Clock,
    /// The validity window every IOU is judged by, at the single point of
    /// decision (front doors may pre-check, but never refuse a replay).
    pub validity: ValidityPolicy,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue_depth_max: 256,
            group_ious_max: 16_384,
            clock: crate::system_clock(),
            validity: ValidityPolicy::default(),
        }
    }
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
        actor: Actor,
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
    exposures: Arc<crate::exposure::ExposureBoard>,
    time_mark_ms: Arc<AtomicU64>,
    clock: Clock,
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

    /// Applies one control-plane command on behalf of `actor`, who is
    /// recorded with it in the journal.
    pub async fn admin(&self, actor: Actor, command: AdminCommand) -> Result<AdminReply, AdminError> {
        let (reply, answer) = oneshot::channel();
        self.sender.send(Command::Admin { actor, command, reply }).await.map_err(|_| AdminError::WriterStopped)?;
        answer.await.map_err(|_| AdminError::WriterStopped)?
    }

    /// The blocking twin of [`WriterHandle::admin`], for callers outside an
    /// async runtime (tests, tools).
    pub fn admin_blocking(&self, actor: Actor, command: AdminCommand) -> Result<AdminReply, AdminError> {
        let (reply, answer) = oneshot::channel();
        self.sender.blocking_send(Command::Admin { actor, command, reply }).map_err(|_| AdminError::WriterStopped)?;
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

    /// What `payer` owes in `asset`, unsettled, as the writer last decided
    /// (`crate::exposure`): what a credit preview compares with the limit.
    pub fn exposure(&self, payer: &str, asset: &str) -> u128 {
        self.exposures.exposure(payer, asset)
    }

    /// Commands waiting in the queue now.
    pub fn queue_depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// The ledger's time mark: the latest time (Unix ms) it has recorded.
    pub fn time_mark_ms(&self) -> u64 {
        self.time_mark_ms.load(Ordering::Acquire)
    }

    /// The writer's notion of now, Unix seconds: `max(clock, time mark)`.
    /// Front doors that pre-check time (Web Bot Auth freshness, `/verify`)
    /// use it, so they never judge by an earlier time than the writer.
    pub fn now_s(&self) -> u64 {
        (self.clock)().max(self.time_mark_ms()) / 1000
    }
}

/// The running writer thread.
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Loads state, opens epoch 1 on a new ledger, publishes the key
    /// directory and the pruning horizon, and starts the thread.
    pub fn start(ledger: Ledger, config: WriterConfig) -> Result<Writer, LedgerError> {
        assert!(config.queue_depth_max > 0 && config.group_ious_max > 0);
        if ledger.is_read_only() {
            return Err(LedgerError::Unavailable("a read-only ledger cannot be written".into()));
        }
        let directory = Arc::new(KeyDirectory::default());
        let mut state = State::load(&ledger)?;
        let exposures = Arc::new(crate::exposure::ExposureBoard::default());
        exposures.replace_all(&mut state);
        let time_mark_ms = Arc::new(AtomicU64::new(state.time_mark_ms));
        // Everything loaded is durable: the horizon may follow it at once.
        ledger.publish_time_mark(state.time_mark_ms);
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
            time_mark_published: time_mark_ms.clone(),
            last_clock: None,
            exposures: exposures.clone(),
        };
        core.open_first_epoch()?;
        core.publish_all_keys()?;
        let (sender, receiver) = mpsc::channel(config.queue_depth_max);
        let thread = std::thread::Builder::new()
            .name("tally-ledger-writer".into())
            .spawn(move || core.run(receiver))
            .map_err(|e| LedgerError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        let handle = WriterHandle { sender, directory, exposures, time_mark_ms, clock: config.clock };
        Ok(Writer { handle, thread: Some(thread) })
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
    /// The time mark front doors read ([`WriterHandle::time_mark_ms`]).
    time_mark_published: Arc<AtomicU64>,
    /// The exposures front doors read ([`WriterHandle::exposure`]).
    exposures: Arc<crate::exposure::ExposureBoard>,
    /// The wall clock and the monotonic clock at the last group, to report jumps.
    last_clock: Option<(u64, Instant)>,
}

impl WriterCore {
    fn open_first_epoch(&mut self) -> Result<(), LedgerError> {
        if self.state.open_epoch.is_some() {
            return Ok(());
        }
        let now_ms = (self.config.clock)().max(self.state.time_mark_ms);
        let epoch = EpochRecord {
            epoch: 1,
            status: EpochStatus::Open,
            opened_at_ms: now_ms,
            sealed_at_ms: None,
            seq_first: self.state.head_seq + 1,
            seq_last: None,
        };
        let effect = journal::Effect {
            cf: journal::EffectCf::Epochs,
            key: epoch.epoch.to_be_bytes().to_vec(),
            value: Some(encode_bincode(&epoch)),
        };
        let mut batch = WriteBatch::default();
        let head = journal::append(
            &self.ledger,
            &mut batch,
            (self.state.journal_head, now_ms, self.state.head_seq),
            journal::Change { actor: &Actor::Engine, action: Action::OpenedFirstEpoch, effects: vec![effect] },
        )?;
        crate::commit::write_batch(&self.ledger, batch)?;
        self.state.journal_head = head;
        self.state.open_epoch = Some(epoch);
        self.state.time_mark_ms = now_ms;
        self.ledger.publish_time_mark(now_ms);
        self.time_mark_published.store(now_ms, Ordering::Release);
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
        // The group is decided: its exposures are what later previews see.
        self.exposures.publish_changed(&mut self.state);
        self.absorb_reported();
        self.in_flight.push_back(in_flight);
        assert!(self.in_flight.len() <= JOBS_QUEUED_MAX + 2);
        let pipeline = self.pipeline.as_ref().expect("the pipeline runs while the writer decides");
        pipeline.jobs.send(job).expect("the committer outlives the writer");
    }

    /// The group's time: the clock, but never behind the time mark. Reports
    /// a wall clock that jumped against the monotonic clock.
    fn group_now_ms(&mut self) -> u64 {
        let wall_ms = (self.config.clock)();
        let now = Instant::now();
        if let Some((last_wall_ms, last)) = self.last_clock {
            let elapsed_ms = u64::try_from(now.duration_since(last).as_millis()).unwrap_or(u64::MAX);
            // Times, not money: clamping at the ends of u64 is the meaning wanted.
            let expected_ms = last_wall_ms.saturating_add(elapsed_ms);
            if wall_ms.abs_diff(expected_ms) > CLOCK_JUMP_REPORT_MS {
                let direction = if wall_ms < expected_ms { "backward" } else { "forward" };
                tracing::warn!(
                    direction,
                    jump_ms = wall_ms.abs_diff(expected_ms),
                    time_mark_ms = self.state.time_mark_ms,
                    "the wall clock jumped; expiry is judged by max(clock, the ledger's time mark)"
                );
                metrics::counter!("tally_clock_jumps_total", "direction" => direction).increment(1);
            }
        }
        self.last_clock = Some((wall_ms, now));
        let behind_ms = self.state.time_mark_ms.saturating_sub(wall_ms);
        metrics::gauge!("tally_clock_behind_time_mark_ms").set(behind_ms as f64);
        wall_ms.max(self.state.time_mark_ms)
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
        let now_ms = self.group_now_ms();
        let mut group = Group::new(pending_ious, now_ms);
        let mut replies = Vec::with_capacity(commands.len());
        let mut failure: Option<LedgerError> = None;
        let mut appended: u64 = 0;
        for command in commands {
            match command {
                Command::Append { items, queued, batch, reply } => {
                    metrics::histogram!(STAGE_SECONDS, "stage" => "writer_queue")
                        .record(started.saturating_duration_since(queued).as_secs_f64());
                    let (results, accepted, error) = self.decide_append(&mut group, items, batch);
                    appended += accepted;
                    if let Some(error) = error {
                        failure.get_or_insert(error);
                    }
                    replies.push(Reply::Append(reply, results));
                }
                Command::Admin { actor, command, reply } => match self.apply_journaled(&mut group, &actor, command) {
                    Ok(result) => replies.push(Reply::Admin(reply, result)),
                    Err(error) => {
                        failure.get_or_insert(error);
                        replies.push(Reply::Admin(reply, Err(AdminError::Storage("nothing was changed".into()))));
                    }
                },
                Command::Stop => unreachable!("run() truncates at Stop"),
            }
        }
        if let Some(error) = failure {
            // The group's decisions are in memory only; earlier groups may
            // still be in the pipeline. Let them land, then throw this one away.
            self.drain_pipeline();
            self.fail_group(replies, &error);
            return;
        }
        let (by_payer, by_payee) = (self.ledger.cf(CF_AGG_BY_PAYER), self.ledger.cf(CF_AGG_BY_PAYEE));
        for (payer_key, (value, payee_key)) in &group.aggregates.sums {
            let encoded = value.encode();
            group.batch.merge_cf(by_payer, payer_key, encoded);
            group.batch.merge_cf(by_payee, payee_key, encoded);
        }
        let time_mark_ms = if group.records { group.now_ms } else { self.state.time_mark_ms };
        debug_assert!(time_mark_ms >= self.state.time_mark_ms, "the time mark never goes back");
        self.state.time_mark_ms = time_mark_ms;
        self.time_mark_published.store(time_mark_ms, Ordering::Release);
        metrics::histogram!(STAGE_SECONDS, "stage" => "decide").record(started.elapsed().as_secs_f64());
        let job = CommitJob {
            batch: group.batch,
            replies,
            new_keys: group.new_keys,
            appended,
            started,
            generation: self.generation,
            spent: group.spent,
            time_mark_ms,
        };
        self.hand_over(job, InFlight { staged: group.staged, batches: group.batches });
    }

    /// Applies one control-plane command and, if it succeeds, journals it
    /// with its actor and effects in the group's batch. `Err` is a storage
    /// failure that fails the whole group; a refusal is `Ok(Err(_))`.
    fn apply_journaled(
        &mut self,
        group: &mut Group,
        actor: &Actor,
        command: AdminCommand,
    ) -> Result<Result<AdminReply, AdminError>, LedgerError> {
        if !actor.is_bounded() {
            return Ok(Err(AdminError::Invalid("the actor's description is too long".into())));
        }
        let action = Action::of(&command);
        let result = self.apply_admin(group, command);
        if result.is_err() {
            group.discard_effects();
            return Ok(result);
        }
        let effects = group.take_effects();
        self.state.journal_head = journal::append(
            &self.ledger,
            &mut group.batch,
            (self.state.journal_head, group.now_ms, self.state.head_seq),
            journal::Change { actor, action, effects },
        )?;
        group.records = true;
        Ok(result)
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
                    self.time_mark_published.store(self.state.time_mark_ms, Ordering::Release);
                    self.exposures.replace_all(&mut self.state);
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
}

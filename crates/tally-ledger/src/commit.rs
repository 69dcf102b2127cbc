//! The committer: the second stage of the writer's two-stage pipeline.
//!
//! The writer ([`crate::writer`]) decides a group of commands against its
//! in-memory state and hands the finished `WriteBatch`, with the replies it
//! owes, to this thread as a [`CommitJob`]. The committer writes the batch with
//! `sync = true` and only then sends the replies, so **no acknowledgement ever
//! precedes durability**, exactly as when one thread did both.
//!
//! Why two threads: writing a group (the WAL copy, memtable inserts, the
//! fsync) takes about as long as deciding one. With one thread the two
//! alternate and each core idles half the time; with two, group N+1 is
//! decided while group N is written and fsynced.
//!
//! The pipeline is short and bounded: the job channel holds at most
//! [`JOBS_QUEUED_MAX`] decided groups beside the one being written, and the
//! writer keeps the replay answers of those in-flight groups (their nonces and
//! batch roots) in memory until the committer reports each one done, in order.
//!
//! Failure: groups are decided on top of each other, so when group N's write
//! fails, every later group of the same *generation* was decided on state
//! that never reached the disk. The committer fails them unwritten; the writer
//! waits for the pipeline to empty, reloads its state from disk, and starts a
//! new generation. Nothing partial is ever visible or acknowledged.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Instant;

use ed25519_dalek::VerifyingKey;
use rocksdb::{WriteBatch, WriteOptions};
use tally_core::SignedIou;
use tokio::sync::oneshot;

use crate::LedgerError;
use crate::command::{AdminError, AdminReply, AppendResult};
use crate::directory::KeyDirectory;
use crate::store::Ledger;

/// Where a batch's time goes, one histogram by `stage`. The ingest pipeline
/// records `verify_wait` (for a verifier slot and thread), `verify` (one
/// chunk's batched verification), `writer` (the ledger's queue, decision and
/// durable commit) and `batch` (the whole submission); the writer records
/// `writer_queue` (a command's wait for its group) and `decide` (a group's
/// decisions), and the committer `write` (a group's write and fsync).
pub const STAGE_SECONDS: &str = "tally_stage_seconds";

/// Decided groups waiting for the committer, beside the one it is writing.
/// One is enough to keep both stages busy; more would only add latency and
/// replay-overlay memory.
pub(crate) const JOBS_QUEUED_MAX: usize = 1;

/// A reply the committer sends once the group is durable (or has failed).
pub(crate) enum Reply {
    Append(oneshot::Sender<Result<Vec<AppendResult>, LedgerError>>, Vec<AppendResult>),
    Admin(oneshot::Sender<Result<AdminReply, AdminError>>, Result<AdminReply, AdminError>),
}

/// One decided group.
pub(crate) struct CommitJob {
    pub(crate) batch: WriteBatch,
    pub(crate) replies: Vec<Reply>,
    /// Keys registered by the group: published to verification only once durable.
    pub(crate) new_keys: Vec<VerifyingKey>,
    /// IOUs the group accepted (for metrics).
    pub(crate) appended: u64,
    /// When the writer took the group's first command.
    pub(crate) started: Instant,
    /// The writer's state generation the group was decided in.
    pub(crate) generation: u64,
    /// The group's accepted IOUs, dropped here rather than on the writer.
    pub(crate) spent: Vec<SignedIou>,
    /// The ledger's time mark once this group is durable: the replay index's
    /// pruning horizon may follow it only then.
    pub(crate) time_mark_ms: u64,
}

/// What became of a job, reported to the writer in job order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CommitDone {
    Durable,
    Failed,
}

/// Runs the committer until the writer drops its end of the job channel.
pub(crate) fn run_committer(
    ledger: Ledger,
    directory: Arc<KeyDirectory>,
    jobs: Receiver<CommitJob>,
    done: SyncSender<CommitDone>,
) {
    // The generation whose write failed, and why: its later groups fail unwritten.
    let mut poisoned: Option<(u64, String)> = None;
    while let Ok(job) = jobs.recv() {
        if let Some((generation, _)) = &poisoned
            && *generation != job.generation
        {
            assert!(job.generation > *generation, "generations only grow");
            poisoned = None;
        }
        let outcome = match &poisoned {
            Some((_, message)) => Err(message.clone()),
            None => {
                let writing = Instant::now();
                let written = write_batch(&ledger, job.batch).map_err(|error| failure_message(&error));
                metrics::histogram!(STAGE_SECONDS, "stage" => "write").record(writing.elapsed().as_secs_f64());
                written
            }
        };
        match outcome {
            Ok(()) => {
                directory.publish(job.new_keys.into_iter());
                ledger.publish_time_mark(job.time_mark_ms);
                metrics::histogram!("tally_commit_seconds").record(job.started.elapsed().as_secs_f64());
                metrics::histogram!("tally_commit_group_ious").record(job.appended as f64);
                metrics::counter!("tally_commit_groups_total").increment(1);
                answer(job.replies);
                drop(job.spent);
                // The writer may have stopped listening (it is shutting down).
                let _ = done.send(CommitDone::Durable);
            }
            Err(message) => {
                if poisoned.is_none() {
                    tracing::error!(error = %message, "group commit failed; nothing in it was acknowledged");
                    metrics::counter!("tally_commit_failures_total").increment(1);
                    poisoned = Some((job.generation, message.clone()));
                }
                fail(job.replies, &message);
                let _ = done.send(CommitDone::Failed);
            }
        }
    }
}

/// Sends every reply of a durable group.
pub(crate) fn answer(replies: Vec<Reply>) {
    for reply in replies {
        match reply {
            Reply::Append(sender, results) => {
                let _ = sender.send(Ok(results));
            }
            Reply::Admin(sender, result) => {
                let _ = sender.send(result);
            }
        }
    }
}

/// Answers every command of a failed group with an error that says nothing was written.
pub(crate) fn fail(replies: Vec<Reply>, message: &str) {
    for reply in replies {
        match reply {
            Reply::Append(sender, _) => {
                let _ = sender.send(Err(LedgerError::WriteFailed(message.to_owned())));
            }
            Reply::Admin(sender, _) => {
                let _ = sender.send(Err(AdminError::Storage(message.to_owned())));
            }
        }
    }
}

/// The text a failed group's commands are answered with.
pub(crate) fn failure_message(error: &LedgerError) -> String {
    match error {
        // Already says that nothing was written; do not say it twice.
        LedgerError::WriteFailed(message) => message.clone(),
        other => other.to_string(),
    }
}

/// Writes one group's batch with `sync = true`. A failure means nothing
/// of the batch is visible: RocksDB applies a batch to its memtables only
/// after the WAL append succeeded. A full disk is felt here and turns into
/// a `WriteFailed` that says so; RocksDB then refuses further writes
/// until its own recovery sees free space again (it polls for it), so
/// later groups fail fast with the same clear error instead of hanging.
pub(crate) fn write_batch(ledger: &Ledger, batch: WriteBatch) -> Result<(), LedgerError> {
    if let Some(error) = crate::failpoint::write_enospc() {
        return Err(LedgerError::WriteFailed(format!(
            "disk full, nothing was written ({error}; failpoint {})",
            crate::failpoint::LEDGER_WRITE_ENOSPC
        )));
    }
    let mut options = WriteOptions::default();
    options.set_sync(true);
    ledger.db.write_opt(batch, &options).map_err(|error| {
        let text = error.to_string();
        if text.contains("No space left") || text.contains("NoSpace") || text.contains("no space") {
            LedgerError::WriteFailed(format!("disk full, nothing was written; retry once space is freed ({text})"))
        } else {
            LedgerError::Storage(error)
        }
    })?;
    Ok(())
}

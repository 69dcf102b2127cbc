//! Merging concurrent `/settle` requests into pipeline batches.
//!
//! Each `/settle` hands its charged commitment to a bounded queue
//! ([`SETTLE_QUEUE_DEPTH_MAX`]); the coalescer submits whatever is waiting
//! (up to [`SETTLE_BATCH_IOUS_MAX`]) as one `Pipeline::submit_charged`
//! batch, with at most [`SETTLE_BATCHES_INFLIGHT_MAX`] batches in the
//! pipeline at once (verification of the next overlaps the fsync of the
//! previous). Every request gets its own per-IOU answer after the fsync, or
//! `None` when the batch could not be written (nothing of it was).

use std::sync::Arc;

use tally_ingest::Pipeline;
use tally_ingest::pipeline::Charged;
use tally_ledger::AppendResult;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most IOUs the coalescer puts in one pipeline batch.
pub const SETTLE_BATCH_IOUS_MAX: usize = 1_024;
/// Coalesced batches in the pipeline at once.
pub const SETTLE_BATCHES_INFLIGHT_MAX: usize = 4;
/// `/settle` requests waiting for a batch before new ones wait for room.
pub const SETTLE_QUEUE_DEPTH_MAX: usize = 4_096;

pub(super) type SettleReply = oneshot::Sender<Option<AppendResult>>;
pub(super) type SettleItem = (Charged, SettleReply);

/// Drains the settle queue into pipeline batches until every sender is gone.
pub(super) async fn coalesce(pipeline: Arc<Pipeline>, mut queue: mpsc::Receiver<SettleItem>) {
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
            let (items, replies): (Vec<Charged>, Vec<SettleReply>) = batch.into_iter().unzip();
            let results = pipeline.submit_charged(items.into_iter().map(Ok).collect()).await;
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

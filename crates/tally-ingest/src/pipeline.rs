//! The data path every front door shares: validate → verify → commit → ack.
//!
//! [`Pipeline::submit`] takes one batch and answers one result per IOU:
//!
//! 1. **Stateless checks** (cheap, on the caller's task): shape, network,
//!    non-zero amount, a charge within the amount. The validity window is
//!    *not* refused here: it is the writer's decision, after replay, so a
//!    late retry of an accepted IOU is answered with its original commitment
//!    (`DUPLICATE`) rather than `EXPIRED`, and time is judged by one clock
//!    that never goes back (`tally_ledger::writer`).
//! 2. **Key lookup** in the writer's [`KeyDirectory`](tally_ledger::KeyDirectory)
//!    (already-decompressed keys, no disk).
//! 3. **Signature verification** on the [`VerifierPool`]: when cores are
//!    idle the batch is cut into chunks that run on all of them at once;
//!    when every core already has work, it is verified whole, which is
//!    cheaper per signature. Each chunk is one batched multiscalar
//!    verification (see `tally_core::verify`).
//! 4. **Commit**: survivors go to the ledger's single writer, which applies
//!    replay, account and credit rules and answers after the fsync.
//!
//! Every stage is bounded: batches by [`PipelineConfig::batch_ious_max`],
//! verification jobs in flight by a semaphore, the writer by its queue.
//! When a stage is full, callers wait; that wait is the back-pressure a
//! streaming client feels as its in-flight window filling up.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use ed25519_dalek::VerifyingKey;
use futures::future::join_all;
use tally_core::batch::{BatchStatement, leaf_hash, merkle_root};
use tally_core::evidence::{BATCH_MEMBER_EVIDENCE_TAG, BATCH_MEMBER_HEADER_LEN};
use tally_core::iou::SIGNING_BYTES_LEN_MAX;
use tally_core::verify::{VerifyItem, verify_many, verify_one};
use tally_core::{Commitment, Iou, Outcome, PublicKeyBytes, SignatureBytes, SignedIou, ValidityPolicy};
use tally_ledger::writer::STAGE_SECONDS;
use tally_ledger::{AppendItem, AppendResult, BatchRecord, LedgerError, WriterHandle};
use tokio::sync::{Semaphore, oneshot};

/// Bounds and policy of the pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// The Tally network id IOUs must name.
    pub network: String,
    pub validity: ValidityPolicy,
    /// Most IOUs in one submitted batch.
    pub batch_ious_max: usize,
    /// Verification threads (default: one per core).
    pub verify_threads: usize,
    /// Verification chunks queued or running at once, across all callers.
    pub verify_jobs_max: usize,
    /// When cores are idle, a batch is split into chunks of at least this
    /// many IOUs: big enough for batched verification to pay off, small
    /// enough to use all cores.
    pub verify_chunk_ious_min: usize,
    /// Verify signatures (always, in service). `false` exists only so the
    /// benchmark harness can measure the ledger alone ("verification off on
    /// both sides"); `tally serve` sets it from a flag named `--unsafe-…`.
    pub verify_signatures: bool,
}

impl PipelineConfig {
    pub fn new(network: &str) -> PipelineConfig {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PipelineConfig {
            network: network.to_owned(),
            validity: ValidityPolicy::default(),
            batch_ious_max: 4_096,
            verify_threads: cores,
            verify_jobs_max: cores * 4,
            verify_chunk_ious_min: 128,
            verify_signatures: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("batch of {len} IOUs exceeds the limit of {max}")]
    BatchTooLarge { len: usize, max: usize },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("the verifier pool has stopped")]
    VerifierStopped,
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads for CPU-bound verification, fed through a
/// semaphore-bounded queue so async callers wait instead of piling up work.
pub struct VerifierPool {
    sender: Mutex<Option<std_mpsc::Sender<Job>>>,
    permits: Arc<Semaphore>,
    jobs_max: usize,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl VerifierPool {
    pub fn start(threads: usize, jobs_max: usize) -> VerifierPool {
        assert!(threads > 0 && jobs_max > 0);
        let (sender, receiver) = std_mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let handles = (0..threads)
            .map(|i| {
                let receiver = receiver.clone();
                std::thread::Builder::new()
                    .name(format!("tally-verify-{i}"))
                    .spawn(move || {
                        loop {
                            let job = receiver.lock().expect("verifier queue lock").recv();
                            match job {
                                Ok(job) => job(),
                                Err(_) => return,
                            }
                        }
                    })
                    .expect("spawning a verifier thread")
            })
            .collect();
        VerifierPool {
            sender: Mutex::new(Some(sender)),
            permits: Arc::new(Semaphore::new(jobs_max)),
            jobs_max,
            threads: Mutex::new(handles),
        }
    }

    /// Runs `work` on a pool thread, waiting for a free slot first.
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, PipelineError> {
        let queued = std::time::Instant::now();
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| PipelineError::VerifierStopped)?;
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            let started = std::time::Instant::now();
            metrics::histogram!(STAGE_SECONDS, "stage" => "verify_wait").record((started - queued).as_secs_f64());
            let _ = reply.send(work());
            metrics::histogram!(STAGE_SECONDS, "stage" => "verify").record(started.elapsed().as_secs_f64());
            drop(permit);
        });
        {
            let sender = self.sender.lock().expect("verifier sender lock");
            sender
                .as_ref()
                .ok_or(PipelineError::VerifierStopped)?
                .send(job)
                .map_err(|_| PipelineError::VerifierStopped)?;
        }
        answer.await.map_err(|_| PipelineError::VerifierStopped)
    }

    /// Jobs queued or running now.
    pub fn jobs_in_flight(&self) -> usize {
        self.jobs_max.saturating_sub(self.permits.available_permits())
    }

    /// Stops accepting work and joins the threads after queued jobs finish.
    pub fn shutdown(&self) {
        self.sender.lock().expect("verifier sender lock").take();
        self.permits.close();
        for handle in self.threads.lock().expect("verifier threads lock").drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for VerifierPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Puts the writer's answers (`committed[i]` answers the IOU at `indices[i]`)
/// beside the refusals already in `results`, and counts every outcome.
fn answer(
    mut results: Vec<Option<AppendResult>>,
    indices: Vec<usize>,
    committed: Vec<AppendResult>,
) -> Vec<AppendResult> {
    assert_eq!(committed.len(), indices.len(), "the writer answers every item");
    for (index, result) in indices.into_iter().zip(committed) {
        results[index] = Some(result);
    }
    let len = results.len();
    let results: Vec<AppendResult> =
        results.into_iter().map(|r| r.expect("every IOU gets exactly one result")).collect();
    for result in &results {
        metrics::counter!("tally_ious_total", "outcome" => result.outcome.as_str()).increment(1);
    }
    metrics::histogram!("tally_batch_ious").record(len as f64);
    results
}

/// A batch-signed commitment as a transport decoded it (`tally_core::batch`).
#[derive(Clone, Debug)]
pub struct SignedBatch {
    pub payer_key: PublicKeyBytes,
    pub batch_seq: u64,
    pub root: [u8; 32],
    /// The payer's signature over the batch statement.
    pub signature: SignatureBytes,
    /// The IOUs in statement order; `Err` for one the transport could not decode.
    pub ious: Vec<Result<Iou, Outcome>>,
}

/// A commitment with what the payee charges for it (at most its amount).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charged {
    pub commitment: Commitment,
    pub charge: u64,
}

impl Charged {
    /// The whole committed amount is charged.
    pub fn whole(commitment: Commitment) -> Charged {
        let charge = commitment.signed.iou.amount;
        Charged { commitment, charge }
    }
}

/// A commitment that passed the cheap checks, on its way to verification.
struct Candidate {
    index: usize,
    commitment: Commitment,
    charge: u64,
    key: VerifyingKey,
}

pub struct Pipeline {
    config: PipelineConfig,
    writer: WriterHandle,
    verifier: VerifierPool,
}

impl Pipeline {
    pub fn new(config: PipelineConfig, writer: WriterHandle) -> Pipeline {
        let verifier = VerifierPool::start(config.verify_threads, config.verify_jobs_max);
        Pipeline { config, writer, verifier }
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    /// Now, in Unix seconds, as the writer judges it: `max(clock, the
    /// ledger's time mark)`, so a front door never pre-judges time by an
    /// earlier clock than the one that decides.
    pub fn now_s(&self) -> u64 {
        self.writer.now_s()
    }

    /// The validity window of `iou` now (see [`Pipeline::now_s`]). Front
    /// doors that preview a decision (`/verify`) use it after their replay
    /// check; the writer applies the same rule when it decides.
    pub fn check_window(&self, iou: &Iou) -> Result<(), Outcome> {
        self.config.validity.check(iou, self.now_s())
    }

    /// Submits one batch of Tally IOUs. `Err(outcome)` entries are IOUs the
    /// transport could not even decode; they are answered in place. The reply
    /// arrives after every accepted IOU in it is durable; `Err` means none of
    /// it was written.
    pub async fn submit(&self, batch: Vec<Result<SignedIou, Outcome>>) -> Result<Vec<AppendResult>, PipelineError> {
        // Only a well-shaped IOU has signing bytes to carry as evidence.
        let commitments = batch
            .into_iter()
            .map(|item| item.and_then(|signed| Commitment::tally_iou(signed).map_err(|_| Outcome::Malformed)))
            .collect();
        self.submit_commitments(commitments).await
    }

    /// Submits one batch of commitments of any evidence form (Tally IOUs,
    /// Web Bot Auth payments): the same checks, verification, replay and
    /// credit rules and durability as [`Pipeline::submit`]. Each signature is
    /// verified over its commitment's signed message.
    pub async fn submit_commitments(
        &self,
        batch: Vec<Result<Commitment, Outcome>>,
    ) -> Result<Vec<AppendResult>, PipelineError> {
        self.submit_charged(batch.into_iter().map(|item| item.map(Charged::whole)).collect()).await
    }

    /// [`Pipeline::submit_commitments`] with an explicit charge per
    /// commitment (`1..=amount`; anything else is `INVALID_AMOUNT`): what an
    /// x402 resource server charges under the scheme's dynamic pricing.
    pub async fn submit_charged(
        &self,
        batch: Vec<Result<Charged, Outcome>>,
    ) -> Result<Vec<AppendResult>, PipelineError> {
        let len = batch.len();
        if len > self.config.batch_ious_max {
            return Err(PipelineError::BatchTooLarge { len, max: self.config.batch_ious_max });
        }
        let started = std::time::Instant::now();
        let mut results: Vec<Option<AppendResult>> = vec![None; len];

        // 1. Stateless checks.
        let mut checked = Vec::with_capacity(len);
        for (index, item) in batch.into_iter().enumerate() {
            let item = item.and_then(|charged| {
                self.check(&charged.commitment.signed.iou)?;
                if charged.charge == 0 || charged.charge > charged.commitment.signed.iou.amount {
                    return Err(Outcome::InvalidAmount);
                }
                Ok(charged)
            });
            match item {
                Ok(charged) => checked.push((index, charged)),
                Err(outcome) => results[index] = Some(AppendResult::rejected(outcome)),
            }
        }

        // 2. Key lookup, one read lock for the batch.
        let keys = self.writer.directory().lookup_many(checked.iter().map(|(_, c)| &c.commitment.signed.iou.payer_key));
        let mut candidates = Vec::with_capacity(checked.len());
        for ((index, Charged { commitment, charge }), key) in checked.into_iter().zip(keys) {
            match key {
                Some(key) => candidates.push(Candidate { index, commitment, charge, key }),
                None => results[index] = Some(AppendResult::rejected(Outcome::UnknownPayer)),
            }
        }

        // 3. Verification, in parallel chunks.
        let verified = self.verify(candidates).await?;
        let mut indices = Vec::with_capacity(verified.len());
        let mut items = Vec::with_capacity(verified.len());
        for (candidate, valid) in verified {
            if valid {
                indices.push(candidate.index);
                let Commitment { signed, evidence, .. } = candidate.commitment;
                items.push(AppendItem { signed, evidence, charge: candidate.charge });
            } else {
                results[candidate.index] = Some(AppendResult::rejected(Outcome::BadSignature));
            }
        }

        // 4. Commit; the writer answers after the fsync.
        let committing = std::time::Instant::now();
        let committed = if items.is_empty() { Vec::new() } else { self.writer.append(items).await? };
        metrics::histogram!(STAGE_SECONDS, "stage" => "writer").record(committing.elapsed().as_secs_f64());
        metrics::histogram!(STAGE_SECONDS, "stage" => "batch").record(started.elapsed().as_secs_f64());
        Ok(answer(results, indices, committed))
    }

    /// Submits one **batch-signed commitment** (`tally_core::batch`): one
    /// signature over a statement whose Merkle root covers every IOU. The
    /// statement is checked once (root recomputed from the IOUs, one Ed25519
    /// verification) on the verifier pool; then each IOU gets the same
    /// per-IOU checks, replay, credit and durability as [`Pipeline::submit`].
    ///
    /// The whole batch is refused (every IOU answered the same code) when the
    /// root cannot be recomputed (an IOU failed to decode or is malformed:
    /// `MALFORMED`; an IOU names another payer: `MALFORMED`), when the key is
    /// unknown (`UNKNOWN_PAYER`), when the root or signature does not match
    /// (`BAD_SIGNATURE`), or when another batch already holds
    /// `(key, batch_seq)` (`CONFLICT`).
    pub async fn submit_signed_batch(&self, batch: SignedBatch) -> Result<Vec<AppendResult>, PipelineError> {
        let len = batch.ious.len();
        if len > self.config.batch_ious_max {
            return Err(PipelineError::BatchTooLarge { len, max: self.config.batch_ious_max });
        }
        let refuse_all = |outcome: Outcome| {
            metrics::counter!("tally_ious_total", "outcome" => outcome.as_str()).increment(len as u64);
            Ok(vec![AppendResult::rejected(outcome); len])
        };
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut ious = Vec::with_capacity(len);
        for item in batch.ious {
            match item {
                Ok(iou) if iou.payer_key == batch.payer_key && iou.check_shape().is_ok() => ious.push(iou),
                _ => return refuse_all(Outcome::Malformed),
            }
        }
        let Some(key) = self.writer.directory().lookup(&batch.payer_key) else {
            return refuse_all(Outcome::UnknownPayer);
        };
        let statement = BatchStatement {
            payer_key: batch.payer_key,
            batch_seq: batch.batch_seq,
            count: u32::try_from(len).expect("bounded by batch_ious_max"),
            root: batch.root,
        };
        let (signature, verify_signature) = (batch.signature, self.config.verify_signatures);
        let job_statement = statement.clone();
        // Evidence, leaves, root and the one signature: CPU work, on the pool.
        let (ious, evidences, leaves, valid) = self
            .verifier
            .run(move || {
                let statement = job_statement;
                let mut evidences = Vec::with_capacity(ious.len());
                let mut leaves = Vec::with_capacity(ious.len());
                for (index, iou) in ious.iter().enumerate() {
                    let mut evidence = Vec::with_capacity(BATCH_MEMBER_HEADER_LEN + SIGNING_BYTES_LEN_MAX);
                    evidence.extend_from_slice(BATCH_MEMBER_EVIDENCE_TAG);
                    evidence.extend_from_slice(&statement.batch_seq.to_be_bytes());
                    evidence.extend_from_slice(&u32::try_from(index).expect("bounded").to_be_bytes());
                    iou.write_signing_bytes(&mut evidence);
                    leaves.push(leaf_hash(&evidence[BATCH_MEMBER_HEADER_LEN..]));
                    evidences.push(evidence);
                }
                let valid = merkle_root(&leaves) == statement.root
                    && (!verify_signature
                        || verify_one(&VerifyItem {
                            key: &key,
                            message: &statement.to_bytes(),
                            signature: &signature,
                        }));
                (ious, evidences, leaves, valid)
            })
            .await?;
        if !valid {
            return refuse_all(Outcome::BadSignature);
        }

        let mut results: Vec<Option<AppendResult>> = vec![None; len];
        let mut indices = Vec::with_capacity(len);
        let mut items = Vec::with_capacity(len);
        for (index, (iou, evidence)) in ious.into_iter().zip(evidences).enumerate() {
            match self.check(&iou) {
                Ok(()) => {
                    indices.push(index);
                    let charge = iou.amount;
                    items.push(AppendItem { signed: SignedIou { iou, signature }, evidence, charge });
                }
                Err(outcome) => results[index] = Some(AppendResult::rejected(outcome)),
            }
        }
        if !items.is_empty() {
            let record = BatchRecord {
                payer_key: statement.payer_key,
                batch_seq: statement.batch_seq,
                root: statement.root,
                signature,
                leaves,
            };
            let committed = self.writer.append_batch(record, items).await?;
            return Ok(answer(results, indices, committed));
        }
        Ok(answer(results, indices, Vec::new()))
    }

    /// Checks one commitment exactly as [`Pipeline::submit_commitments`]
    /// would up to the commit (shape, network, registered key, signature)
    /// and records nothing. Replay, the validity window and credit are the
    /// writer's decisions; a caller that wants to preview them reads the
    /// ledger and [`Pipeline::check_window`]. `Accepted` here means "would
    /// reach the writer".
    pub async fn verify_only(&self, commitment: Commitment) -> Result<Outcome, PipelineError> {
        if let Err(outcome) = self.check(&commitment.signed.iou) {
            return Ok(outcome);
        }
        let Some(key) = self.writer.directory().lookup(&commitment.signed.iou.payer_key) else {
            return Ok(Outcome::UnknownPayer);
        };
        let charge = commitment.signed.iou.amount;
        let verified = self.verify(vec![Candidate { index: 0, commitment, charge, key }]).await?;
        Ok(if verified.first().is_some_and(|(_, valid)| *valid) { Outcome::Accepted } else { Outcome::BadSignature })
    }

    fn check(&self, iou: &Iou) -> Result<(), Outcome> {
        iou.check_shape().map_err(|_| Outcome::Malformed)?;
        if iou.network != self.config.network {
            return Err(Outcome::WrongNetwork);
        }
        if iou.amount == 0 {
            return Err(Outcome::InvalidAmount);
        }
        Ok(())
    }

    async fn verify(&self, candidates: Vec<Candidate>) -> Result<Vec<(Candidate, bool)>, PipelineError> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        if !self.config.verify_signatures {
            return Ok(candidates.into_iter().map(|c| (c, true)).collect());
        }
        // Splitting a batch across threads pays only when a core would
        // otherwise idle. With a job already queued or running per thread,
        // every core is busy, and one verification of the whole batch is
        // cheaper per signature (a bigger multiscalar multiplication).
        let cores_busy = self.verifier.jobs_in_flight() >= self.config.verify_threads;
        let chunk_len = if cores_busy {
            candidates.len()
        } else {
            candidates.len().div_ceil(self.config.verify_threads).max(self.config.verify_chunk_ious_min)
        };
        let mut chunks = Vec::new();
        let mut rest = candidates;
        while rest.len() > chunk_len {
            let tail = rest.split_off(chunk_len);
            chunks.push(rest);
            rest = tail;
        }
        chunks.push(rest);
        let jobs = chunks.into_iter().map(|chunk| {
            self.verifier.run(move || {
                let items: Vec<VerifyItem> = chunk
                    .iter()
                    .map(|c| VerifyItem {
                        key: &c.key,
                        message: c.commitment.signed_message(),
                        signature: &c.commitment.signed.signature,
                    })
                    .collect();
                let valid = verify_many(&items);
                drop(items);
                chunk.into_iter().zip(valid).collect::<Vec<_>>()
            })
        });
        let mut out = Vec::new();
        for chunk in join_all(jobs).await {
            out.extend(chunk?);
        }
        Ok(out)
    }

    /// Stops the verifier threads.
    pub fn shutdown(&self) {
        self.verifier.shutdown();
    }
}

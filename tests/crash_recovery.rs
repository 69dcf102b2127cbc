//! Crash test harness: `tally serve` is SIGKILLed while several clients
//! stream IOUs at full rate, then restarted, for N cycles.
//!
//! Every client records what it sent and what was acknowledged, with the
//! commitment id each acknowledgement carried. After each kill, while the
//! server is down, the ledger directory itself is opened and read:
//!
//! - every acknowledged IOU is in the log exactly once, at the commitment
//!   (sequence number and hash) it was given: nothing acknowledged is lost;
//! - no IOU appears twice, acknowledged or not;
//! - the log holds nothing but IOUs the clients sent;
//! - the hash chain verifies and both aggregate column families equal a
//!   replay of the log ([`tally_ledger::audit`], what `tally ledger verify`
//!   runs).
//!
//! Then the server restarts and each client resubmits what it never got an
//! answer for, as a real client would. An IOU the log already held must be
//! answered as a replay with the very commitment found on disk; one it did
//! not hold must be accepted, and a second resubmission of either must be a
//! replay with the same commitment (accepted once, never twice). The totals
//! the query API reports must then equal every IOU sent, exactly once.
//!
//! The kill moments come from a seeded generator, so a failing run can be
//! rerun. Knobs (environment):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TALLY_CRASH_CYCLES` | 3 | kill/restart cycles |
//! | `TALLY_CRASH_CLIENTS` | 4 | concurrent streaming clients |
//! | `TALLY_CRASH_SEED` | 0x7a11_c7a5 | seed of the kill schedule |
//!
//! The defaults are a short run for the test suite; `scripts/crash-test.sh`
//! runs long ones in release mode and prints the figures table.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use futures::StreamExt;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tally_core::{CommitmentId, Outcome};
use tally_ingest::convert::{code_from_proto, commitment_from_proto};
use tally_ingest::proto::ingest_client::IngestClient;
use tally_ingest::proto::{self, *};
use tally_ledger::{AuditOptions, Ledger, LedgerOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// IOUs per streamed batch.
const BATCH_LEN: u64 = 200;
/// Batches each client keeps in flight on its stream.
const INFLIGHT_BATCHES_MAX: usize = 4;
/// The server is killed after this many acknowledged batches at most
/// (drawn from the seed, at least 1).
const KILL_AFTER_BATCHES_MAX: u64 = 48;
/// Extra delay after that threshold, drawn from the seed, so the kill also
/// lands between acknowledgements.
const KILL_DELAY_US_MAX: u64 = 3_000;
/// Resubmissions and checks go in batches of at most this many IOUs.
const CHECK_BATCH_LEN: usize = 1_000;
/// Log records read per step while scanning the ledger.
const SCAN_STEP: usize = 10_000;
/// Most payers registered (clients share payers beyond this).
const PAYERS_MAX: u64 = 16;
/// The load must reach the kill threshold within this long.
const LOAD_START_LIMIT: Duration = Duration::from_secs(120);

type Signature = Vec<u8>;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => {
            let text = text.trim().replace('_', "");
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={text} is not a number"))
        }
    }
}

/// What one client saw in one cycle.
#[derive(Default)]
struct Seen {
    sent: u64,
    acked: Vec<(proto::Iou, CommitmentId)>,
    /// Sent, but no answer came before the server died.
    unanswered: Vec<proto::Iou>,
}

/// The running totals the harness prints and checks.
#[derive(Default, Debug)]
struct Figures {
    cycles: u64,
    sent: u64,
    acknowledged: u64,
    /// Acknowledged IOUs missing from the log, or at another commitment.
    lost: u64,
    /// IOUs found in the log more than once.
    duplicated: u64,
    /// Records in the log that no client sent.
    foreign: u64,
    /// Unanswered IOUs the log held anyway (written, then killed before the
    /// answer left): the retry must be answered as a replay.
    unacknowledged_recorded: u64,
    /// Unanswered IOUs the log did not hold: the retry must accept them.
    unacknowledged_absent: u64,
    /// Retries answered wrongly (not accept-once / replay-with-same-commitment).
    retry_wrong: u64,
    /// Audit problems (hash chain, aggregates against a replay of the log).
    audit_problems: u64,
}

async fn stream_until_killed(
    addr: String,
    cycle: u64,
    client: u64,
    payers: u64,
    acked_batches: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen::default();
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await else {
        return seen;
    };
    let mut ingest = IngestClient::new(channel);
    let (sender, receiver) = mpsc::channel::<SubmitBatchRequest>(INFLIGHT_BATCHES_MAX);
    let Ok(response) = ingest.stream_batches(ReceiverStream::new(receiver)).await else {
        return seen;
    };
    let mut responses = response.into_inner();
    let mut in_flight: std::collections::VecDeque<Vec<proto::Iou>> = Default::default();
    let payer = signer((client % payers) as u8 + 1);
    let mut next = 0u64;
    loop {
        while in_flight.len() < INFLIGHT_BATCHES_MAX && !stop.load(Ordering::SeqCst) {
            let ious: Vec<proto::Iou> = (next..next + BATCH_LEN)
                .map(|n| signed_iou(&payer, "site-a.example", 1 + n % 97, nonce(cycle << 32 | client, n)))
                .collect();
            next += BATCH_LEN;
            seen.sent += BATCH_LEN;
            // Counted as in flight before the send: a request the dying
            // server may or may not have read is still unanswered.
            in_flight.push_back(ious.clone());
            if sender.send(SubmitBatchRequest { batch_id: next, ious }).await.is_err() {
                break;
            }
        }
        if in_flight.is_empty() {
            break;
        }
        match responses.next().await {
            Some(Ok(response)) => {
                let ious = in_flight.pop_front().expect("answers follow requests");
                assert_eq!(ious.len(), response.results.len(), "one result per IOU");
                for (iou, result) in ious.into_iter().zip(response.results) {
                    assert_eq!(code_from_proto(result.code), Some(Outcome::Accepted), "fresh IOUs under no limit");
                    let commitment = result
                        .commitment
                        .as_ref()
                        .and_then(commitment_from_proto)
                        .expect("accepted IOUs carry a commitment");
                    seen.acked.push((iou, commitment));
                }
                acked_batches.fetch_add(1, Ordering::SeqCst);
            }
            // The server was killed: everything still in flight is unanswered.
            Some(Err(_)) | None => break,
        }
    }
    seen.unanswered.extend(in_flight.into_iter().flatten());
    seen
}

/// Reads the whole log of a stopped server: signature → every commitment at
/// which it appears. Also runs the audit (hash chain, aggregates against a
/// replay of the log; signatures only when asked, they are slow).
fn scan_ledger(data_dir: &std::path::Path, verify_signatures: bool) -> (HashMap<Signature, Vec<CommitmentId>>, u64) {
    let options = LedgerOptions { read_only: true, ..LedgerOptions::default() };
    let ledger = Ledger::open(data_dir, options.clone()).expect("the ledger opens after SIGKILL");
    let mut found: HashMap<Signature, Vec<CommitmentId>> = HashMap::new();
    let mut seq_from = 1u64;
    loop {
        let records = ledger.records(seq_from, SCAN_STEP).expect("the log reads back");
        let Some(last) = records.last() else { break };
        seq_from = last.seq + 1;
        for record in records {
            found
                .entry(record.signature.to_vec())
                .or_default()
                .push(CommitmentId { seq: record.seq, hash: record.hash });
        }
    }
    let report =
        tally_ledger::audit(&ledger, AuditOptions { verify_signatures }).expect("the audit reads the whole ledger");
    for problem in &report.problems {
        eprintln!("audit problem: {problem}");
    }
    (found, report.problems_total)
}

/// Resubmits `ious` through `ingest`, returning each IOU's answer.
async fn resubmit(ingest: &mut IngestClient<tonic::transport::Channel>, ious: &[proto::Iou]) -> Vec<proto::IouResult> {
    let mut out = Vec::with_capacity(ious.len());
    for chunk in ious.chunks(CHECK_BATCH_LEN) {
        let results = ingest
            .submit_batch(SubmitBatchRequest { batch_id: 0, ious: chunk.to_vec() })
            .await
            .expect("a restarted server answers resubmissions")
            .into_inner()
            .results;
        assert_eq!(results.len(), chunk.len(), "one result per IOU");
        out.extend(results);
    }
    out
}

fn answer(result: &proto::IouResult) -> (Option<Outcome>, Option<CommitmentId>) {
    (code_from_proto(result.code), result.commitment.as_ref().and_then(commitment_from_proto))
}

fn print_figures(figures: &Figures, clients: u64, seed: u64) {
    eprintln!("=== crash-test figures ===");
    eprintln!(
        "| seed | clients | cycles | IOUs sent | acknowledged | lost | duplicated | unacknowledged but recorded | unacknowledged, absent (accepted on retry) | wrong retry answers | audit problems |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|---|---|");
    eprintln!(
        "| {seed:#x} | {clients} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        figures.cycles,
        figures.sent,
        figures.acknowledged,
        figures.lost,
        figures.duplicated,
        figures.unacknowledged_recorded,
        figures.unacknowledged_absent,
        figures.retry_wrong,
        figures.audit_problems
    );
    eprintln!("=== end of figures ===");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_acknowledged_iou() {
    let cycles = env_u64("TALLY_CRASH_CYCLES", 3);
    let client_count = env_u64("TALLY_CRASH_CLIENTS", 4);
    let seed = env_u64("TALLY_CRASH_SEED", 0x7a11_c7a5);
    assert!(cycles >= 1 && (1..=1_000).contains(&client_count), "1..=1000 clients, at least one cycle");
    eprintln!(
        "crash harness: {cycles} cycles, {client_count} clients, seed {seed:#x} (TALLY_CRASH_SEED={seed:#x} reruns it)"
    );
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let payers = client_count.min(PAYERS_MAX);

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("ledger");
    // Every IOU sent so far whose place in the log is known: signature →
    // (commitment, amount).
    let mut book: HashMap<Signature, (CommitmentId, u64)> = HashMap::new();
    let mut figures = Figures::default();

    let mut server = ServerProcess::start(&data_dir);
    {
        let mut c = clients(&server.addr).await;
        register_basics(&mut c.admin, payers as u8, u128::MAX).await;
    }

    for cycle in 0..cycles {
        // Load, then a SIGKILL at a seeded moment.
        let kill_after_batches = rng.random_range(1..=KILL_AFTER_BATCHES_MAX);
        let kill_delay_us = rng.random_range(0..=KILL_DELAY_US_MAX);
        let acked_batches = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..client_count)
            .map(|client| {
                tokio::spawn(stream_until_killed(
                    server.addr.clone(),
                    cycle,
                    client,
                    payers,
                    acked_batches.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let started = std::time::Instant::now();
        while acked_batches.load(Ordering::SeqCst) < kill_after_batches {
            assert!(started.elapsed() < LOAD_START_LIMIT, "the load never got going");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_micros(kill_delay_us)).await;
        tokio::task::spawn_blocking(move || server.kill()).await.unwrap();
        stop.store(true, Ordering::SeqCst);
        let mut seen_by_client = Vec::new();
        for task in tasks {
            seen_by_client.push(task.await.unwrap());
        }
        let acked_now: u64 = seen_by_client.iter().map(|s| s.acked.len() as u64).sum();
        let sent_now: u64 = seen_by_client.iter().map(|s| s.sent).sum();
        figures.cycles += 1;
        figures.sent += sent_now;
        figures.acknowledged += acked_now;
        for seen in &seen_by_client {
            for (iou, commitment) in &seen.acked {
                let previous = book.insert(iou.signature.clone(), (*commitment, iou.amount));
                assert!(previous.is_none(), "each IOU is sent once and acknowledged once");
            }
        }

        // Server down: read the ledger it left behind.
        let path = data_dir.clone();
        let (found, audit_problems) = tokio::task::spawn_blocking(move || scan_ledger(&path, false)).await.unwrap();
        let (lost_before, duplicated_before) = (figures.lost, figures.duplicated);
        figures.audit_problems += audit_problems;
        figures.duplicated += found.values().filter(|at| at.len() > 1).count() as u64;
        for (signature, (commitment, _)) in &book {
            if found.get(signature).map(Vec::as_slice) != Some(std::slice::from_ref(commitment)) {
                figures.lost += 1;
            }
        }
        let unanswered: Vec<&proto::Iou> = seen_by_client.iter().flat_map(|s| &s.unanswered).collect();
        let recorded_unanswered = unanswered.iter().filter(|iou| found.contains_key(&iou.signature)).count() as u64;
        let foreign = (found.len() as u64).saturating_sub(book.len() as u64 + recorded_unanswered);
        figures.foreign += foreign;
        figures.unacknowledged_recorded += recorded_unanswered;
        figures.unacknowledged_absent += unanswered.len() as u64 - recorded_unanswered;
        eprintln!(
            "cycle {cycle}: killed after {kill_after_batches} acknowledged batches + {kill_delay_us} µs; \
             sent {sent_now}, acknowledged {acked_now}, unanswered {} ({recorded_unanswered} recorded), \
             lost {}, duplicated {}, audit problems {audit_problems}",
            unanswered.len(),
            figures.lost - lost_before,
            figures.duplicated - duplicated_before,
        );
        if figures.lost + figures.duplicated + figures.foreign + figures.audit_problems > 0 {
            print_figures(&figures, client_count, seed);
            panic!("cycle {cycle} broke the durability contract: {figures:?}");
        }

        // Restart on the same directory; each client retries what it never
        // got an answer for, twice.
        let step = (acked_now as usize / CHECK_BATCH_LEN).max(1);
        let sample: Vec<(proto::Iou, CommitmentId)> =
            seen_by_client.iter().flat_map(|s| &s.acked).step_by(step).take(CHECK_BATCH_LEN).cloned().collect();
        server = ServerProcess::start(&data_dir);
        let retries: Vec<_> = seen_by_client
            .into_iter()
            .map(|seen| {
                let addr = server.addr.clone();
                tokio::spawn(async move {
                    let mut ingest = IngestClient::new(connect(&addr).await);
                    let first = resubmit(&mut ingest, &seen.unanswered).await;
                    let second = resubmit(&mut ingest, &seen.unanswered).await;
                    (seen.unanswered, first, second)
                })
            })
            .collect();
        for retry in retries {
            let (ious, first, second) = retry.await.unwrap();
            for ((iou, first), second) in ious.iter().zip(&first).zip(&second) {
                let on_disk = found.get(&iou.signature).map(|at| at[0]);
                let (outcome, commitment) = answer(first);
                let right = match (on_disk, outcome, commitment) {
                    // Written before the kill: a replay, at the place on disk.
                    (Some(at), Some(Outcome::Duplicate), Some(c)) => c == at,
                    // Never written: accepted now.
                    (None, Some(Outcome::Accepted), Some(_)) => true,
                    _ => false,
                };
                // Accepted once: the second retry replays the first's answer.
                let replayed = answer(second) == (Some(Outcome::Duplicate), commitment);
                if right && replayed {
                    let commitment = commitment.expect("checked above");
                    let previous = book.insert(iou.signature.clone(), (commitment, iou.amount));
                    assert!(previous.is_none(), "an unanswered IOU was not acknowledged before");
                } else {
                    eprintln!("wrong retry answer: on disk {on_disk:?}, first {first:?}, second {second:?}");
                    figures.retry_wrong += 1;
                }
            }
        }
        assert_eq!(figures.retry_wrong, 0, "retries are accepted once or replayed at their commitment");
        assert_eq!(book.len() as u64, figures.sent, "every IOU sent now has exactly one place in the log");

        // The query API's totals equal every IOU sent, exactly once.
        let mut c = clients(&server.addr).await;
        let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
        let sum: u128 = rows.iter().map(|r| r.amount.parse::<u128>().unwrap()).sum();
        let count: u64 = rows.iter().map(|r| r.count).sum();
        let expected_sum: u128 = book.values().map(|(_, amount)| u128::from(*amount)).sum();
        assert_eq!((sum, count), (expected_sum, book.len() as u64), "aggregates equal every IOU exactly once");
        // A sample of this cycle's acknowledged IOUs answers as a replay at
        // the commitment it was given.
        let ious: Vec<proto::Iou> = sample.iter().map(|(iou, _)| iou.clone()).collect();
        for ((_, commitment), result) in sample.iter().zip(resubmit(&mut c.ingest, &ious).await) {
            assert_eq!(answer(&result), (Some(Outcome::Duplicate), Some(*commitment)), "acknowledged IOU replays");
        }
    }

    // Stop cleanly and audit everything, signatures included, twice: in
    // process and through the command operators run.
    server.terminate();
    let path = data_dir.clone();
    let (found, audit_problems) = tokio::task::spawn_blocking(move || scan_ledger(&path, true)).await.unwrap();
    figures.audit_problems += audit_problems;
    figures.duplicated += found.values().filter(|at| at.len() > 1).count() as u64;
    figures.lost +=
        book.iter().filter(|(s, (c, _))| found.get(*s).map(Vec::as_slice) != Some(std::slice::from_ref(c))).count()
            as u64;
    print_figures(&figures, client_count, seed);
    assert_eq!((figures.lost, figures.duplicated, figures.foreign, figures.audit_problems), (0, 0, 0, 0));
    assert_eq!(found.len(), book.len(), "the log holds exactly the IOUs sent");

    let (ok, stdout, stderr) = run_tally(&["ledger", "verify", "--json", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(ok, "ledger verify failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["clean"], true);
    assert_eq!(report["records"].as_u64(), Some(book.len() as u64));
    assert_eq!(report["signatures_verified"].as_u64(), Some(book.len() as u64));
}

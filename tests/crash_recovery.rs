//! Durability: `tally serve` is SIGKILLed while several clients stream IOUs
//! at full rate, then restarted. Every IOU a client saw acknowledged must be
//! in the ledger exactly once with the commitment it was given; nothing
//! unacknowledged may appear twice; the ledger must verify.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use futures::StreamExt;
use tally_core::Outcome;
use tally_ingest::convert::code_from_proto;
use tally_ingest::proto::{self, *};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const CLIENTS: u64 = 4;
const BATCH: u64 = 200;
const CYCLES: u64 = 3;

/// What one client saw: IOUs acknowledged (with their commitment) and IOUs
/// sent whose answer never came.
#[derive(Default)]
struct Seen {
    acked: Vec<(proto::Iou, CommitmentId)>,
    unanswered: Vec<proto::Iou>,
}

async fn stream_until_killed(
    addr: String,
    cycle: u64,
    client: u64,
    acked_batches: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen::default();
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await else {
        return seen;
    };
    let mut ingest = tally_ingest::proto::ingest_client::IngestClient::new(channel);
    let (sender, receiver) = mpsc::channel::<SubmitBatchRequest>(4);
    let Ok(response) = ingest.stream_batches(ReceiverStream::new(receiver)).await else {
        return seen;
    };
    let mut responses = response.into_inner();
    let mut in_flight: std::collections::VecDeque<Vec<proto::Iou>> = Default::default();
    let payer = signer((client % 4) as u8 + 1);
    let mut next = 0u64;
    loop {
        // Keep four batches in flight until told to stop or the server dies.
        while in_flight.len() < 4 && !stop.load(Ordering::SeqCst) {
            let ious: Vec<proto::Iou> = (next..next + BATCH)
                .map(|n| signed_iou(&payer, "site-a.example", 1 + n % 97, nonce(cycle << 32 | client, n)))
                .collect();
            next += BATCH;
            if sender.send(SubmitBatchRequest { batch_id: next, ious: ious.clone() }).await.is_err() {
                break;
            }
            in_flight.push_back(ious);
        }
        if in_flight.is_empty() {
            break;
        }
        match responses.next().await {
            Some(Ok(response)) => {
                let ious = in_flight.pop_front().expect("answers follow requests");
                for (iou, result) in ious.into_iter().zip(response.results) {
                    assert_eq!(code_from_proto(result.code), Some(Outcome::Accepted));
                    seen.acked.push((iou, result.commitment.expect("accepted IOUs carry a commitment")));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_acknowledged_iou() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("ledger");
    let mut expected_sum: u128 = 0;
    let mut expected_count: u64 = 0;

    for cycle in 0..CYCLES {
        let server = ServerProcess::start(&data_dir);
        let addr = server.addr.clone();
        let mut c = clients(&addr).await;
        if cycle == 0 {
            register_basics(&mut c.admin, 4, u128::MAX).await;
        }

        let acked_batches = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|client| {
                tokio::spawn(stream_until_killed(addr.clone(), cycle, client, acked_batches.clone(), stop.clone()))
            })
            .collect();
        // Kill once the load is well under way: at a different point each cycle.
        let threshold = 10 + 7 * cycle;
        let started = std::time::Instant::now();
        while acked_batches.load(Ordering::SeqCst) < threshold {
            assert!(started.elapsed() < Duration::from_secs(120), "the load never got going");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::task::spawn_blocking(move || server.kill()).await.unwrap();
        stop.store(true, Ordering::SeqCst);
        let mut acked = Vec::new();
        let mut unanswered = Vec::new();
        for task in tasks {
            let seen = task.await.unwrap();
            acked.extend(seen.acked);
            unanswered.extend(seen.unanswered);
        }
        assert!(!acked.is_empty());

        // Restart on the same directory.
        let server = ServerProcess::start(&data_dir);
        let mut c = clients(&server.addr).await;
        // Every acknowledged IOU is there, with the commitment it was given.
        for chunk in acked.chunks(1_000) {
            let ious = chunk.iter().map(|(iou, _)| iou.clone()).collect();
            let results =
                c.ingest.submit_batch(SubmitBatchRequest { batch_id: 1, ious }).await.unwrap().into_inner().results;
            for ((_, commitment), result) in chunk.iter().zip(results) {
                assert_eq!(code_from_proto(result.code), Some(Outcome::Duplicate), "an acknowledged IOU was lost");
                assert_eq!(result.commitment.as_ref(), Some(commitment), "an acknowledged IOU changed place");
            }
        }
        // Unanswered IOUs were either written whole or not at all: a resend
        // is accepted (it was not written) or a duplicate (it was), never a
        // conflict, and afterwards each is in the ledger exactly once.
        let (mut written_before, mut written_now) = (0u64, 0u64);
        for chunk in unanswered.chunks(1_000) {
            let results = c
                .ingest
                .submit_batch(SubmitBatchRequest { batch_id: 2, ious: chunk.to_vec() })
                .await
                .unwrap()
                .into_inner()
                .results;
            for result in results {
                match code_from_proto(result.code) {
                    Some(Outcome::Duplicate) => written_before += 1,
                    Some(Outcome::Accepted) => written_now += 1,
                    other => panic!("unanswered IOU resent: {other:?}"),
                }
            }
        }
        for iou in acked.iter().map(|(iou, _)| iou).chain(&unanswered) {
            expected_sum += u128::from(iou.amount);
            expected_count += 1;
        }
        let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
        let sum: u128 = rows.iter().map(|r| r.amount.parse::<u128>().unwrap()).sum();
        let count: u64 = rows.iter().map(|r| r.count).sum();
        assert_eq!((sum, count), (expected_sum, expected_count), "aggregates equal every IOU exactly once");
        eprintln!(
            "cycle {cycle}: {} acknowledged, {} unanswered ({written_before} had been written, {written_now} had not), 0 lost, 0 duplicated",
            acked.len(),
            unanswered.len()
        );
        tokio::task::spawn_blocking(move || server.kill()).await.unwrap();
    }

    // The ledger left by repeated SIGKILLs verifies: chain, signatures, aggregates.
    let (ok, stdout, stderr) = run_tally(&["ledger", "verify", "--json", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(ok, "ledger verify failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["clean"], true);
    assert_eq!(report["records"].as_u64(), Some(expected_count));
    assert_eq!(report["signatures_verified"].as_u64(), Some(expected_count));
}

//! Abuse and limits of the gRPC ingest door, against a real `tally serve`
//! process on 127.0.0.1 with its `[limits]` set from a TOML file.
//!
//! Each test pins one bounded, documented behaviour (`docs/abuse-limits.md`
//! holds the table): what a hostile or careless client gets back, and that
//! the ledger holds exactly what was acknowledged and nothing else.
//!
//! - oversized messages and batches are refused whole, with a status, before
//!   any work: `OUT_OF_RANGE` over `message_bytes_max`, `INVALID_ARGUMENT`
//!   over `batch_ious_max`;
//! - streams over `streams_per_connection_max` wait for a slot on their
//!   connection while other connections are served;
//! - a payer flooding from 16 connections at once gets exactly as much as its
//!   credit limit allows in arrival order, and `CREDIT_LIMIT_EXCEEDED` for
//!   the rest;
//! - the same IOU replayed from many streams at once is charged once and
//!   every answer carries the same commitment; nonces in any order are fine;
//! - timestamps outside the validity policy get their outcome codes;
//! - small-order and non-canonical keys cannot be registered, so signatures
//!   forged for them never verify.
//!
//! Every test ends by stopping the server cleanly and running
//! `tally ledger verify` on its data: the chain is intact and holds exactly
//! the records the test was told were accepted.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;
use tally_core::{Iou, Outcome};
use tally_ingest::convert::code_from_proto;
use tally_ingest::proto::ingest_client::IngestClient;
use tally_ingest::proto::{self, *};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// How long any single answer may take before the test calls it a hang.
/// Generous: a debug build on two shared cores.
const ANSWER_WAIT_MAX: Duration = Duration::from_secs(60);

fn outcome(result: &IouResult) -> Outcome {
    code_from_proto(result.code).expect("a known code")
}

/// A server whose `[limits]` table is `limits` (TOML lines).
struct Limited {
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    server: ServerProcess,
}

fn start_limited(limits: &str) -> Limited {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tally.toml");
    std::fs::write(&config, format!("[limits]\n{limits}\n")).unwrap();
    let data_dir = dir.path().join("ledger");
    let server = ServerProcess::start_with(&data_dir, Some(&config), &[]);
    Limited { _dir: dir, data_dir, server }
}

/// The ledger's totals as the query API reports them: (sum, IOU count).
async fn totals(query: &mut common::Query) -> (u128, u64) {
    let rows = query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    assert!(rows.len() < 10_000, "the totals fit one page");
    rows.iter().fold((0, 0), |(sum, count), row| (sum + row.amount.parse::<u128>().unwrap(), count + row.count))
}

/// Checks the server survived, stops it cleanly, and audits its ledger:
/// hash chain intact, aggregates equal to the log, exactly `records` IOUs.
fn finish(mut limited: Limited, records: u64) {
    assert!(limited.server.child.try_wait().unwrap().is_none(), "the server is still running");
    limited.server.terminate();
    let data_dir = limited.data_dir.to_str().unwrap();
    let (ok, stdout, stderr) = run_tally(&["ledger", "verify", "--json", "--data-dir", data_dir]);
    assert!(ok, "ledger verify failed: {stdout} {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(report["records"], records, "{report}");
}

fn ingest_channel(channel: Channel) -> IngestClient<Channel> {
    // The client must be able to *send* what the server refuses.
    IngestClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
}

async fn submit(ingest: &mut IngestClient<Channel>, batch_id: u64, ious: Vec<proto::Iou>) -> Vec<IouResult> {
    let response = ingest.submit_batch(SubmitBatchRequest { batch_id, ious }).await.unwrap().into_inner();
    assert_eq!(response.batch_id, batch_id);
    response.results
}

/// Over `message_bytes_max` → `OUT_OF_RANGE` (unary, or ending a stream
/// after the answers before it); over `batch_ious_max` → `INVALID_ARGUMENT`;
/// nothing of a refused message is written, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_and_batches_are_refused_whole() {
    let limited = start_limited("message_bytes_max = 65536\nbatch_ious_max = 100");
    let mut c = clients(&limited.server.addr).await;
    register_basics(&mut c.admin, 1, 1_000_000_000).await;
    let mut ingest = ingest_channel(connect(&limited.server.addr).await);
    let key = signer(1);
    // Padded after signing: these are refused before anything reads them.
    let padded = |n: u64, pad: usize| {
        let mut iou = signed_iou(&key, "site-a.example", 1, nonce(1, n));
        iou.resource = "r".repeat(pad);
        iou
    };

    // 80 IOUs (under the batch limit) of ~1.1 KB each: ~90 KB > 64 KiB.
    let big: Vec<proto::Iou> = (0..80).map(|n| padded(n, 1_000)).collect();
    let status = ingest.submit_batch(SubmitBatchRequest { batch_id: 1, ious: big.clone() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("65536"), "the answer names the limit: {}", status.message());
    // One IOU carrying a 100 KB field: the same.
    let status = ingest.submit_batch(SubmitBatchRequest { batch_id: 2, ious: vec![padded(100, 100_000)] }).await;
    assert_eq!(status.unwrap_err().code(), tonic::Code::OutOfRange);

    // 101 small IOUs (~20 KB, under the byte limit): refused whole.
    let over: Vec<proto::Iou> = (200..301).map(|n| signed_iou(&key, "site-a.example", 1, nonce(1, n))).collect();
    let status = ingest.submit_batch(SubmitBatchRequest { batch_id: 3, ious: over.clone() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("limit is 100"), "{}", status.message());
    assert_eq!(totals(&mut c.query).await, (0, 0), "nothing of a refused batch is written");

    // Exactly at the limit: accepted.
    let results = submit(&mut ingest, 4, over[..100].to_vec()).await;
    assert!(results.iter().all(|r| outcome(r) == Outcome::Accepted));

    // On a stream: the batch before the oversized one is answered and
    // committed; the stream then ends with OUT_OF_RANGE; what followed the
    // oversized message is never read.
    let before: Vec<proto::Iou> = (400..410).map(|n| signed_iou(&key, "site-a.example", 1, nonce(1, n))).collect();
    let after: Vec<proto::Iou> = (500..510).map(|n| signed_iou(&key, "site-a.example", 1, nonce(1, n))).collect();
    let requests = vec![
        SubmitBatchRequest { batch_id: 10, ious: before },
        SubmitBatchRequest { batch_id: 11, ious: big },
        SubmitBatchRequest { batch_id: 12, ious: after.clone() },
    ];
    let mut responses = ingest.stream_batches(futures::stream::iter(requests)).await.unwrap().into_inner();
    let first = responses.next().await.unwrap().unwrap();
    assert_eq!(first.batch_id, 10);
    assert!(first.results.iter().all(|r| outcome(r) == Outcome::Accepted));
    let ended = responses.next().await.unwrap().unwrap_err();
    assert_eq!(ended.code(), tonic::Code::OutOfRange, "{ended:?}");
    assert!(responses.next().await.is_none(), "nothing follows the error");
    assert_eq!(totals(&mut c.query).await, (110, 110), "the first stream batch and the 100, nothing else");

    // The connection and the server still serve; the batch after the
    // oversized one was never taken, so it is accepted now, not a replay.
    let results = submit(&mut ingest, 13, after).await;
    assert!(results.iter().all(|r| outcome(r) == Outcome::Accepted));
    finish(limited, 120);
}

/// Opens a stream whose request side stays open: returns the sender (drop
/// it to end the stream) and the response stream.
async fn open_stream(
    ingest: &mut IngestClient<Channel>,
) -> (mpsc::Sender<SubmitBatchRequest>, tonic::Streaming<SubmitBatchResponse>) {
    let (sender, receiver) = mpsc::channel(4);
    let responses = ingest.stream_batches(ReceiverStream::new(receiver)).await.unwrap().into_inner();
    (sender, responses)
}

/// Sends one one-IOU batch on an open stream and waits for its answer.
async fn one_on_stream(
    sender: &mpsc::Sender<SubmitBatchRequest>,
    responses: &mut tonic::Streaming<SubmitBatchResponse>,
    batch_id: u64,
    iou: proto::Iou,
) -> Outcome {
    sender.send(SubmitBatchRequest { batch_id, ious: vec![iou] }).await.unwrap();
    let answer = tokio::time::timeout(ANSWER_WAIT_MAX, responses.next()).await.expect("answered").unwrap().unwrap();
    assert_eq!(answer.batch_id, batch_id);
    outcome(&answer.results[0])
}

/// `streams_per_connection_max` (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS):
/// with every slot of a connection held by an open stream, one more stream
/// on that connection waits (the client holds it; the server never sees it)
/// until a slot frees, and then is served in full. Other connections are
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_per_connection_limit_wait_for_a_slot() {
    let limited = start_limited("streams_per_connection_max = 4");
    let mut c = clients(&limited.server.addr).await;
    register_basics(&mut c.admin, 1, 1_000_000_000).await;
    let key = signer(1);
    let shared = connect(&limited.server.addr).await;

    let mut open = Vec::new();
    for s in 0..4u64 {
        let mut ingest = IngestClient::new(shared.clone());
        let (sender, mut responses) = open_stream(&mut ingest).await;
        let got = one_on_stream(&sender, &mut responses, s, signed_iou(&key, "site-a.example", 1, nonce(2, s))).await;
        assert_eq!(got, Outcome::Accepted);
        open.push((sender, responses));
    }

    // The fifth stream on the same connection: its first batch is queued
    // and goes nowhere while four streams hold the connection's slots.
    let fifth_iou = signed_iou(&key, "site-a.example", 1, nonce(2, 5));
    let mut fifth_client = IngestClient::new(shared.clone());
    let fifth = tokio::spawn(async move {
        let requests = futures::stream::iter(vec![SubmitBatchRequest { batch_id: 5, ious: vec![fifth_iou] }]);
        let mut responses = fifth_client.stream_batches(requests).await.unwrap().into_inner();
        let answer = responses.next().await.unwrap().unwrap();
        outcome(&answer.results[0])
    });
    // A bound on "not yet": the wait cannot end early if the limit holds,
    // so this can only fail when the limit is not enforced.
    let waited = tokio::time::timeout(Duration::from_millis(500), async {
        while !fifth.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_err(), "the fifth stream must wait while four hold the connection");
    assert_eq!(totals(&mut c.query).await, (4, 4), "the waiting stream wrote nothing");

    // Another connection is served meanwhile, unary and streaming.
    let mut other = IngestClient::new(connect(&limited.server.addr).await);
    let results = submit(&mut other, 6, vec![signed_iou(&key, "site-a.example", 1, nonce(2, 6))]).await;
    assert_eq!(outcome(&results[0]), Outcome::Accepted);
    let (sender, mut responses) = open_stream(&mut other).await;
    let got = one_on_stream(&sender, &mut responses, 7, signed_iou(&key, "site-a.example", 1, nonce(2, 7))).await;
    assert_eq!(got, Outcome::Accepted);
    drop(sender);
    assert!(responses.next().await.is_none());

    // Ending one stream frees its slot: the fifth stream is served.
    let (sender, mut responses) = open.remove(0);
    drop(sender);
    assert!(tokio::time::timeout(ANSWER_WAIT_MAX, responses.next()).await.unwrap().is_none());
    let fifth = tokio::time::timeout(ANSWER_WAIT_MAX, fifth).await.expect("served once a slot frees").unwrap();
    assert_eq!(fifth, Outcome::Accepted);

    // The streams still open keep working.
    for (s, (sender, responses)) in open.iter_mut().enumerate() {
        let iou = signed_iou(&key, "site-a.example", 1, nonce(3, s as u64));
        assert_eq!(one_on_stream(sender, responses, 100 + s as u64, iou).await, Outcome::Accepted);
    }
    drop(open);
    assert_eq!(totals(&mut c.query).await, (10, 10));
    finish(limited, 10);
}

/// ARCHITECTURE.md ("Back-pressure") and `GrpcLimits::requests_max`
/// document that "a stream counts as one for its whole life" against
/// `requests_max`, and that more requests wait. With `requests_max = 2` and
/// two streams open, a third request must wait until one ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_max_counts_a_stream_for_its_whole_life() {
    let limited = start_limited("requests_max = 2");
    let mut c = clients(&limited.server.addr).await;
    register_basics(&mut c.admin, 1, 1_000_000_000).await;
    let key = signer(1);
    let mut open = Vec::new();
    for s in 0..2u64 {
        let mut ingest = IngestClient::new(connect(&limited.server.addr).await);
        let (sender, mut responses) = open_stream(&mut ingest).await;
        let got = one_on_stream(&sender, &mut responses, s, signed_iou(&key, "site-a.example", 1, nonce(4, s))).await;
        assert_eq!(got, Outcome::Accepted);
        open.push((sender, responses));
    }
    let mut third = IngestClient::new(connect(&limited.server.addr).await);
    let iou = signed_iou(&key, "site-a.example", 1, nonce(4, 3));
    let early = tokio::time::timeout(Duration::from_millis(500), submit(&mut third, 3, vec![iou.clone()])).await;
    assert!(early.is_err(), "a third request must wait while two streams hold requests_max = 2");
    drop(open);
    let results = tokio::time::timeout(ANSWER_WAIT_MAX, submit(&mut third, 4, vec![iou])).await.unwrap();
    assert!(matches!(outcome(&results[0]), Outcome::Accepted | Outcome::Duplicate));
    drop(c);
    finish(limited, 3);
}

/// Deterministic amounts in 1..=1000 (a 64-bit LCG; no clock, no entropy).
fn amount_for(stream: u64, n: u64) -> u64 {
    let x = (stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n).wrapping_mul(6_364_136_223_846_793_005);
    1 + (x >> 33) % 1_000
}

/// One payer floods from 16 connections at once (half streaming, half
/// unary), ~16x past its credit limit, with varied amounts. The writer
/// decides each IOU in arrival order, so: the accepted total never exceeds
/// the limit; every refusal is CREDIT_LIMIT_EXCEEDED; the room left at the
/// end is smaller than every refused amount (the limit is filled exactly as
/// far as arrival order allows, never short); the ledger holds exactly the
/// accepted IOUs. Another payer's traffic meanwhile is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payer_flooding_from_many_connections_gets_exactly_its_limit() {
    const LIMIT: u128 = 2_000_003;
    let limited = start_limited("");
    let mut c = clients(&limited.server.addr).await;
    register_basics(&mut c.admin, 2, LIMIT).await;
    let connections = 16u64;
    let batches = 40u64;
    let batch_ious = 50u64; // 32,000 IOUs, ~16M units offered against ~2M

    let mut tasks = Vec::new();
    for conn in 0..connections {
        let addr = limited.server.addr.clone();
        tasks.push(tokio::spawn(async move {
            let key = signer(1);
            let mut ingest = IngestClient::new(connect(&addr).await);
            let payee = if conn % 2 == 0 { "site-a.example" } else { "site-b.example" };
            let requests: Vec<SubmitBatchRequest> = (0..batches)
                .map(|b| SubmitBatchRequest {
                    batch_id: b,
                    ious: (0..batch_ious)
                        .map(|i| {
                            let n = b * batch_ious + i;
                            signed_iou(&key, payee, amount_for(conn, n), nonce(1_000 + conn, n))
                        })
                        .collect(),
                })
                .collect();
            let mut answers: Vec<(u64, IouResult)> = Vec::new();
            if conn % 2 == 0 {
                let amounts: Vec<Vec<u64>> =
                    requests.iter().map(|r| r.ious.iter().map(|i| i.amount).collect()).collect();
                let mut responses = ingest.stream_batches(futures::stream::iter(requests)).await.unwrap().into_inner();
                while let Some(response) = responses.next().await {
                    let response = response.unwrap();
                    let amounts = &amounts[response.batch_id as usize];
                    answers.extend(amounts.iter().copied().zip(response.results));
                }
            } else {
                for request in requests {
                    let amounts: Vec<u64> = request.ious.iter().map(|i| i.amount).collect();
                    let results = ingest.submit_batch(request).await.unwrap().into_inner().results;
                    answers.extend(amounts.into_iter().zip(results));
                }
            }
            answers
        }));
    }
    // Meanwhile another payer, well within its own limit, is unaffected.
    let mut bystander = IngestClient::new(connect(&limited.server.addr).await);
    let mut bystander_sum = 0u128;
    for b in 0..10u64 {
        let ious: Vec<proto::Iou> =
            (0..10).map(|i| signed_iou(&signer(2), "site-a.example", 3, nonce(9, b * 10 + i))).collect();
        bystander_sum += 30;
        assert!(submit(&mut bystander, b, ious).await.iter().all(|r| outcome(r) == Outcome::Accepted));
    }

    let mut accepted_sum = 0u128;
    let mut accepted_count = 0u64;
    let mut refused_min = u64::MAX;
    let mut seqs = HashSet::new();
    for task in tasks {
        let answers = task.await.unwrap();
        assert_eq!(answers.len() as u64, batches * batch_ious, "every IOU answered");
        for (amount, result) in answers {
            match outcome(&result) {
                Outcome::Accepted => {
                    accepted_sum += u128::from(amount);
                    accepted_count += 1;
                    assert!(seqs.insert(result.commitment.unwrap().seq), "a distinct commitment each");
                }
                Outcome::CreditLimitExceeded => refused_min = refused_min.min(amount),
                other => panic!("unexpected outcome {other:?}"),
            }
        }
    }
    assert!(accepted_sum <= LIMIT, "accepted {accepted_sum} over the limit {LIMIT}");
    assert!(refused_min != u64::MAX, "the flood was refused in part");
    assert!(
        LIMIT - accepted_sum < u128::from(refused_min),
        "room {} left, yet an IOU of {refused_min} was refused",
        LIMIT - accepted_sum
    );
    let mut owed_by_payer: BTreeMap<String, (u128, u64)> = BTreeMap::new();
    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    for row in rows {
        let entry = owed_by_payer.entry(row.payer).or_default();
        entry.0 += row.amount.parse::<u128>().unwrap();
        entry.1 += row.count;
    }
    assert_eq!(owed_by_payer["crawler-1"], (accepted_sum, accepted_count));
    assert_eq!(owed_by_payer["crawler-2"], (bystander_sum, 100));
    let exposure = c.query.exposure(ExposureRequest { payer: "crawler-1".into() }).await.unwrap().into_inner();
    assert_eq!(exposure.rows[0].owed, accepted_sum.to_string());
    eprintln!(
        "flood: {} IOUs offered, {accepted_count} accepted = {accepted_sum} of {LIMIT}, smallest refused {refused_min}",
        connections * batches * batch_ious
    );
    finish(limited, accepted_count + 100);
}

/// The same IOU from 16 connections at once, twice per batch, unary and
/// streamed: charged exactly once, and every one of the 320 answers carries
/// the same commitment. Two different IOUs racing for one nonce: one wins,
/// every answer to the other is CONFLICT. Nonces in any order are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_ious_are_charged_once_and_nonce_order_does_not_matter() {
    let limited = start_limited("");
    let mut c = clients(&limited.server.addr).await;
    register_basics(&mut c.admin, 1, 1_000_000_000).await;
    let key = signer(1);
    let replayed = signed_iou(&key, "site-a.example", 25, nonce(5, 1));
    let racer_a = signed_iou(&key, "site-b.example", 40, nonce(5, 2));
    let mut racer_b = racer_a.clone();
    racer_b.amount = 41;
    let racer_b = signed_with(&key, tally_ingest::convert::iou_from_proto(racer_b).unwrap().iou);

    let mut tasks = Vec::new();
    for conn in 0..16u64 {
        let addr = limited.server.addr.clone();
        let racer = if conn % 2 == 0 { racer_a.clone() } else { racer_b.clone() };
        let batch = vec![replayed.clone(), racer.clone(), replayed.clone(), racer];
        tasks.push(tokio::spawn(async move {
            let mut ingest = IngestClient::new(connect(&addr).await);
            let requests: Vec<SubmitBatchRequest> =
                (0..5).map(|b| SubmitBatchRequest { batch_id: b, ious: batch.clone() }).collect();
            let mut results = Vec::new();
            let mut responses = ingest.stream_batches(futures::stream::iter(requests)).await.unwrap().into_inner();
            while let Some(response) = responses.next().await {
                results.extend(response.unwrap().results);
            }
            for b in 0..5 {
                results.extend(submit(&mut ingest, 100 + b, batch.clone()).await);
            }
            (conn % 2 == 0, results)
        }));
    }
    let mut replay_answers = Vec::new();
    let mut racer_answers: BTreeMap<bool, Vec<IouResult>> = BTreeMap::new();
    for task in tasks {
        let (is_a, results) = task.await.unwrap();
        for (i, result) in results.into_iter().enumerate() {
            if i % 2 == 0 {
                replay_answers.push(result);
            } else {
                racer_answers.entry(is_a).or_default().push(result);
            }
        }
    }
    assert_eq!(replay_answers.len(), 16 * 10 * 2);
    let accepted = replay_answers.iter().filter(|r| outcome(r) == Outcome::Accepted).count();
    assert_eq!(accepted, 1, "charged exactly once");
    assert!(replay_answers.iter().all(|r| matches!(outcome(r), Outcome::Accepted | Outcome::Duplicate)));
    let commitment = replay_answers[0].commitment.clone().unwrap();
    assert!(replay_answers.iter().all(|r| r.commitment.as_ref() == Some(&commitment)), "one commitment for all");

    // Exactly one racer won; all its answers agree, all the other's conflict.
    let won: Vec<bool> = racer_answers
        .iter()
        .filter(|(_, answers)| answers.iter().any(|r| outcome(r) == Outcome::Accepted))
        .map(|(is_a, _)| *is_a)
        .collect();
    assert_eq!(won.len(), 1, "one IOU per nonce wins");
    let winner = &racer_answers[&won[0]];
    let loser = &racer_answers[&!won[0]];
    assert_eq!(winner.iter().filter(|r| outcome(r) == Outcome::Accepted).count(), 1);
    let winning = winner.iter().find(|r| outcome(r) == Outcome::Accepted).unwrap().commitment.clone();
    assert!(winner.iter().all(|r| r.commitment == winning));
    assert!(loser.iter().all(|r| outcome(r) == Outcome::Conflict && r.commitment.is_none()));
    let racer_amount: u128 = if won[0] { 40 } else { 41 };

    // Reordered nonces: a fixed shuffle of 400 nonces (non-monotonic bytes
    // too) over four concurrent streams, then all again in reverse.
    let mut order: Vec<u64> = (0..400).collect();
    let mut state = 0x5EED_u64;
    for i in (1..order.len()).rev() {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    let scrambled = |n: u64| {
        let mut bytes = nonce(6, n);
        bytes.reverse();
        bytes
    };
    let ious: Vec<proto::Iou> = order.iter().map(|&n| signed_iou(&key, "site-a.example", 1, scrambled(n))).collect();
    for (round, expected) in [(0u64, Outcome::Accepted), (1, Outcome::Duplicate)] {
        let mut streams = Vec::new();
        let source: Vec<proto::Iou> = if round == 0 { ious.clone() } else { ious.iter().rev().cloned().collect() };
        for part in source.chunks(100) {
            let addr = limited.server.addr.clone();
            let requests: Vec<SubmitBatchRequest> = part
                .chunks(10)
                .enumerate()
                .map(|(b, chunk)| SubmitBatchRequest { batch_id: b as u64, ious: chunk.to_vec() })
                .collect();
            streams.push(tokio::spawn(async move {
                let mut ingest = IngestClient::new(connect(&addr).await);
                let mut responses = ingest.stream_batches(futures::stream::iter(requests)).await.unwrap().into_inner();
                let mut outcomes = Vec::new();
                while let Some(response) = responses.next().await {
                    outcomes.extend(response.unwrap().results.iter().map(outcome));
                }
                outcomes
            }));
        }
        for stream in streams {
            let outcomes = stream.await.unwrap();
            assert_eq!(outcomes.len(), 100);
            assert!(outcomes.iter().all(|o| *o == expected), "round {round}: {outcomes:?}");
        }
    }
    assert_eq!(totals(&mut c.query).await, (25 + racer_amount + 400, 402));
    finish(limited, 402);
}

/// The validity policy, configured (`clock_skew_max_s = 60`,
/// `validity_max_s = 3600`), at and past its edges and at u64 extremes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skewed_timestamps_get_their_outcome_codes() {
    let limited = start_limited("clock_skew_max_s = 60\nvalidity_max_s = 3600");
    let mut c = clients(&limited.server.addr).await;
    register_basics(&mut c.admin, 1, 1_000_000_000).await;
    let key = signer(1);
    let now = now_s();
    let at = |n: u64, issued_at_s: u64, expires_at_s: u64| {
        signed_with(
            &key,
            Iou {
                network: NETWORK.into(),
                payer_key: key.verifying_key().to_bytes(),
                payee: "site-a.example".into(),
                asset: "USD".into(),
                amount: 1,
                nonce: nonce(7, n),
                issued_at_s,
                expires_at_s,
                resource: String::new(),
            },
        )
    };
    // Margins of 30 s or more around every edge that depends on the clock,
    // so a slow test machine cannot move a case across one.
    let cases: Vec<(Outcome, proto::Iou)> = vec![
        (Outcome::Accepted, at(1, now + 30, now + 600)), // future, within the skew
        (Outcome::NotYetValid, at(2, now + 120, now + 600)), // future, past the skew
        (Outcome::NotYetValid, at(3, u64::MAX - 10, u64::MAX)),
        (Outcome::Expired, at(4, now - 700, now - 100)),
        (Outcome::Expired, at(5, now - 3_600, now - 30)),
        (Outcome::Accepted, at(6, now - 3_000, now + 600)), // issued long ago, not expired
        (Outcome::Accepted, at(7, now, now + 3_600)),       // window exactly the maximum
        (Outcome::ValidityTooLong, at(8, now, now + 3_601)),
        (Outcome::ValidityTooLong, at(9, now, now)),       // empty window
        (Outcome::ValidityTooLong, at(10, now + 10, now)), // inverted
        (Outcome::ValidityTooLong, at(11, 0, u64::MAX)),
        (Outcome::ValidityTooLong, at(12, 0, now + 600)),
        (Outcome::Expired, at(13, 0, 1)),
    ];
    let mut ingest = IngestClient::new(connect(&limited.server.addr).await);
    let results = submit(&mut ingest, 1, cases.iter().map(|(_, iou)| iou.clone()).collect()).await;
    for (n, ((expected, _), result)) in cases.iter().zip(&results).enumerate() {
        assert_eq!(outcome(result), *expected, "case {}", n + 1);
    }
    assert_eq!(totals(&mut c.query).await, (3, 3));
    finish(limited, 3);
}

/// The eight points of small order, canonically encoded.
const SMALL_ORDER: [&str; 8] = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
];

fn key_bytes(hex_key: &str) -> [u8; 32] {
    hex::decode(hex_key).unwrap().try_into().unwrap()
}

/// Non-canonical encodings: y = p + k (p = 2^255 - 19, k = 0..=18, each of
/// which reduces to a small y) with either sign bit, and x = 0 with the sign
/// bit set. Only those that decode to a point at all are returned.
fn non_canonical_keys() -> Vec<[u8; 32]> {
    let mut keys = Vec::new();
    for k in 0u8..=18 {
        for sign in [0u8, 0x80] {
            let mut bytes = [0xffu8; 32];
            bytes[0] = 0xed + k; // p's low byte is 0xed; no carry for k <= 18
            bytes[31] = 0x7f | sign;
            keys.push(bytes);
        }
    }
    for y in ["01", "ec"] {
        let mut bytes = key_bytes(if y == "01" { SMALL_ORDER[0] } else { SMALL_ORDER[1] });
        bytes[31] |= 0x80;
        keys.push(bytes);
    }
    keys.into_iter().filter(|bytes| VerifyingKey::from_bytes(bytes).is_ok()).collect()
}

/// An IOU signed "for" `key_bytes` with the universal forgery for
/// small-order keys: R = identity, s = 0 satisfies the cofactored equation
/// `[8]([s]B − [k]A − R) = 0` for every message when A has small order.
fn forged_for(key_bytes: [u8; 32], n: u64) -> proto::Iou {
    let now = now_s();
    let iou = Iou {
        network: NETWORK.into(),
        payer_key: key_bytes,
        payee: "site-a.example".into(),
        asset: "USD".into(),
        amount: 5,
        nonce: nonce(8, n),
        issued_at_s: now,
        expires_at_s: now + 600,
        resource: String::new(),
    };
    let mut signature = [0u8; 64];
    signature[0] = 1; // R = the identity's encoding, s = 0
    tally_ingest::convert::iou_to_proto(&tally_core::SignedIou { iou, signature })
}

/// Small-order keys cannot be registered (RegisterPayer and AddPayerKey
/// answer INVALID_ARGUMENT, "small order"), so IOUs forged for them are
/// UNKNOWN_PAYER, and the same forgery under a registered key is
/// BAD_SIGNATURE. The forgery itself is real: `verify_one` accepts it under
/// a small-order key, which is why the refusal at registration matters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_order_keys_are_refused_and_forgeries_for_them_never_verify() {
    let limited = start_limited("");
    let mut c = clients(&limited.server.addr).await;
    register_basics(&mut c.admin, 1, 1_000_000_000).await;

    for (n, hex_key) in SMALL_ORDER.iter().enumerate() {
        let bytes = key_bytes(hex_key);
        let key = VerifyingKey::from_bytes(&bytes).expect("a point");
        assert!(key.is_weak(), "{hex_key} has small order");
        // The threat: the universal forgery verifies under this key.
        let forged = tally_ingest::convert::iou_from_proto(forged_for(bytes, n as u64)).unwrap();
        let message = forged.iou.signing_bytes();
        let item = tally_core::verify::VerifyItem { key: &key, message: &message, signature: &forged.signature };
        assert!(tally_core::verify::verify_one(&item), "the forgery is valid under {hex_key}");

        let refused = c
            .admin
            .register_payer(RegisterPayerRequest {
                id: format!("weak-{n}"),
                display_name: String::new(),
                keys: vec![bytes.to_vec()],
                credit_limits: vec![CreditLimit { asset: "USD".into(), limit: "1000".into() }],
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{hex_key}: {refused:?}");
        assert!(refused.message().contains("small order"), "{}", refused.message());
        let refused = c
            .admin
            .add_payer_key(AddPayerKeyRequest { payer_id: "crawler-1".into(), key: bytes.to_vec() })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{hex_key}: {refused:?}");
    }
    let payers = c.admin.list_payers(ListRequest {}).await.unwrap().into_inner().payers;
    assert_eq!(payers.len(), 1, "no weak payer was registered");
    assert_eq!(payers[0].keys.len(), 1, "no weak key was added");

    let mut ingest = IngestClient::new(connect(&limited.server.addr).await);
    let mut forgeries: Vec<proto::Iou> =
        SMALL_ORDER.iter().enumerate().map(|(n, k)| forged_for(key_bytes(k), n as u64)).collect();
    let registered = signer(1).verifying_key().to_bytes();
    forgeries.push(forged_for(registered, 100));
    let results = submit(&mut ingest, 1, forgeries).await;
    for result in &results[..SMALL_ORDER.len()] {
        assert_eq!(outcome(result), Outcome::UnknownPayer);
    }
    assert_eq!(outcome(&results[SMALL_ORDER.len()]), Outcome::BadSignature);
    assert_eq!(totals(&mut c.query).await, (0, 0));
    finish(limited, 0);
}

/// Non-canonical encodings of points (y ≥ p, or x = 0 with the sign bit
/// set) are refused at registration: a key has one spelling, so the replay
/// index `(payer key, nonce)` cannot be split across two spellings of one
/// point, and every stored key is one that strict RFC 8032 verifiers accept.
///
/// Today the small-order ones are refused but the 20 non-canonical
/// spellings of large-order points (y ∈ {3, 4, 5, 6, 9, 10, 14, 15, 16, 18}
/// written as y + p, either sign) are registered. Nobody knows a secret key
/// for those points, so no IOU can be signed under them: the impact is
/// hygiene (a registered key nobody can use, and one an external strict
/// verifier would reject), not forgery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_keys_are_refused() {
    let limited = start_limited("");
    let mut c = clients(&limited.server.addr).await;
    register_basics(&mut c.admin, 1, 1_000_000_000).await;
    let keys = non_canonical_keys();
    assert!(!keys.is_empty());
    let mut accepted = Vec::new();
    for (n, bytes) in keys.iter().enumerate() {
        let answer = c
            .admin
            .register_payer(RegisterPayerRequest {
                id: format!("odd-{n}"),
                display_name: String::new(),
                keys: vec![bytes.to_vec()],
                credit_limits: vec![],
            })
            .await;
        match answer {
            Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument, "{}", hex::encode(bytes)),
            Ok(_) => accepted.push(hex::encode(bytes)),
        }
    }
    assert!(accepted.is_empty(), "non-canonical keys were registered: {accepted:?}");
    finish(limited, 0);
}

//! Random garbage through the gRPC and HTTP doors of a real `tally serve`:
//! every answer is a typed error and the ledger is unchanged.
//!
//! Property tests (proptest, fixed seed, bounded case counts) feed:
//!
//! - random bytes as gRPC message bodies, sent as raw HTTP/2 requests to the
//!   Ingest methods (random length prefix and compression flag too), with
//!   random header values;
//! - random field values in well-formed protobuf IOUs, through the typed
//!   client;
//! - random bytes, random JSON and mutated valid requests to the x402
//!   facilitator's `/verify` and `/settle`, with random headers.
//!
//! "Typed" means: a gRPC status from an allowed set (never UNKNOWN, never an
//! HTTP error or a reset stream in place of a status), a known per-IOU code,
//! or an HTTP 4xx/200 whose JSON carries a known x402 reason code; never a
//! 500, a dropped connection or a dead server. Afterwards the ledger's totals
//! and IOU count are what they were before, the process is alive and
//! healthy, it shuts down cleanly, and `tally ledger verify` finds the chain
//! intact with exactly the records from before the garbage.
//!
//! tonic answers a request body that does not decode as protobuf with
//! INTERNAL (tonic-prost maps every `DecodeError` so, following gRPC's
//! status-code table). The main properties accept INTERNAL only with those
//! decoder messages; `undecodable_bodies_are_invalid_argument` pins the
//! answer Tally should give and is ignored until the codec is wrapped (see
//! docs/abuse-limits.md).

mod common;

use std::cell::RefCell;
use std::future::poll_fn;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{Value, json};
use tally_core::{Iou, SignedIou};
use tally_ingest::convert::code_from_proto;
use tally_ingest::proto::ingest_client::IngestClient;
use tally_ingest::proto::{self, BalancesRequest, SubmitBatchRequest};
use tally_x402::commitment::TallyIouPayload;
use tally_x402::types::Reason;
use tonic::codegen::Body as HttpBody;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::Channel;

/// Cases per property: bounded so the whole file runs in well under a
/// minute on two shared cores in a debug build (measured: ~1 s each).
const CASES: u32 = 1_024;
/// Per-answer bound: an answer slower than this is reported as a hang.
const ANSWER_WAIT_MAX: Duration = Duration::from_secs(30);

fn runner(seed: u8) -> TestRunner {
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 256,
        max_shrink_time: 20_000,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A server with a few IOUs already accepted, so "unchanged" compares a
/// non-empty ledger.
struct Seeded {
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    server: ServerProcess,
    clients: Clients,
    records: u64,
    /// The IOUs accepted at the start: resending one is a duplicate.
    accepted: Vec<proto::Iou>,
}

/// What the ledger looks like from outside: every balance row and epoch.
#[derive(Debug, PartialEq)]
struct Snapshot {
    rows: Vec<(u64, String, String, String, String, u64)>,
    epochs: Vec<(u64, String, u64, u64)>,
}

async fn snapshot(c: &mut Clients) -> Snapshot {
    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    let epochs = c.query.epochs(proto::EpochsRequest {}).await.unwrap().into_inner().epochs;
    Snapshot {
        rows: rows.into_iter().map(|r| (r.epoch, r.payer, r.payee, r.asset, r.amount, r.count)).collect(),
        epochs: epochs.into_iter().map(|e| (e.epoch, e.status, e.seq_first, e.seq_last)).collect(),
    }
}

async fn seeded() -> Seeded {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("ledger");
    let server = ServerProcess::start(&data_dir);
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 2, 1_000_000).await;
    let ious: Vec<proto::Iou> = (0..5).map(|n| signed_iou(&signer(1), "site-a.example", 10 + n, nonce(1, n))).collect();
    let request = SubmitBatchRequest { batch_id: 0, ious: ious.clone() };
    let results = c.ingest.submit_batch(request).await.unwrap().into_inner().results;
    assert!(results.iter().all(|r| r.code == proto::IouCode::Accepted as i32));
    Seeded { _dir: dir, data_dir, server, clients: c, records: 5, accepted: ious }
}

/// The end of every property test: alive, healthy, unchanged, clean stop,
/// and an intact chain holding exactly `records` IOUs.
async fn finish(mut seeded: Seeded, before: Snapshot) {
    assert!(seeded.server.child.try_wait().unwrap().is_none(), "the server survived");
    let mut health = tonic_health::pb::health_client::HealthClient::new(connect(&seeded.server.addr).await);
    let serving = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(serving.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    assert_eq!(snapshot(&mut seeded.clients).await, before, "the ledger is unchanged");
    let Seeded { _dir, data_dir, server, records, .. } = seeded;
    tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    let (ok, stdout, stderr) = run_tally(&["ledger", "verify", "--json", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(ok, "ledger verify: {stdout} {stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((report["clean"].clone(), report["records"].clone()), (json!(true), json!(records)), "{report}");
}

// ---------------------------------------------------------------------------
// gRPC: raw HTTP/2 requests with arbitrary bodies and headers.

/// What a raw gRPC call came back with.
#[derive(Debug)]
struct RawAnswer {
    http_status: u16,
    grpc_status: Option<i32>,
    grpc_message: String,
    /// The call or the response body ended in an error (a reset stream)
    /// instead of an answer with trailers.
    body_error: Option<String>,
}

/// Sends one raw gRPC request (path, extra headers, body bytes exactly as
/// given) over `channel` and reads the whole answer, bounded in time.
async fn raw_call(channel: &mut Channel, path: &str, headers: &[(String, Vec<u8>)], body: Vec<u8>) -> RawAnswer {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_bytes(value))
        else {
            continue;
        };
        request = request.header(name, value);
    }
    let request = request.body(tonic::body::Body::new(axum::body::Body::from(body))).unwrap();
    let call = async {
        poll_fn(|cx| channel.poll_ready(cx)).await.expect("the connection is usable");
        let response = match channel.call(request).await {
            Ok(response) => response,
            Err(error) => {
                let reset = format!("{error:?}");
                return RawAnswer {
                    http_status: 0,
                    grpc_status: None,
                    grpc_message: String::new(),
                    body_error: Some(reset),
                };
            }
        };
        let http_status = response.status().as_u16();
        let grpc = |map: &http::HeaderMap| {
            let status = map.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
            let message = map.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            (status, message)
        };
        let (mut grpc_status, mut grpc_message) = grpc(response.headers());
        let mut body = response.into_body();
        let mut body_error = None;
        while let Some(frame) = poll_fn(|cx| HttpBody::poll_frame(Pin::new(&mut body), cx)).await {
            match frame {
                Ok(frame) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        (grpc_status, grpc_message) = grpc(trailers);
                    }
                }
                Err(status) => {
                    body_error = Some(format!("{status:?}"));
                    break;
                }
            }
        }
        RawAnswer { http_status, grpc_status, grpc_message, body_error }
    };
    tokio::time::timeout(ANSWER_WAIT_MAX, call).await.expect("answered in bounded time")
}

/// The decoder's own messages for bodies that are not protobuf or not gRPC
/// framing; INTERNAL is accepted with these only (see the module doc).
fn is_decoder_message(message: &str) -> bool {
    let message = percent_decode(message);
    ["failed to decode Protobuf message", "protocol error", "Missing request message", "Unexpected EOF decoding"]
        .iter()
        .any(|m| message.contains(m))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the request breaks HTTP/2's own header rules (RFC 9113 §8.2.2:
/// `te` may only be "trailers"), which the HTTP/2 layer answers with a
/// stream reset (PROTOCOL_ERROR) before gRPC or Tally see the request.
fn breaks_http2_header_rules(headers: &[(String, Vec<u8>)]) -> bool {
    headers.iter().any(|(name, value)| {
        name == "te" && value.as_slice() != b"trailers" && http::HeaderValue::from_bytes(value).is_ok()
    })
}

/// A typed gRPC answer: HTTP 200, a grpc-status in headers or trailers, no
/// reset stream (except PROTOCOL_ERROR for requests that break HTTP/2's
/// header rules), and a code a client can act on.
fn check_typed(answer: &RawAnswer, headers: &[(String, Vec<u8>)]) -> Result<(), TestCaseError> {
    if let Some(error) = &answer.body_error
        && breaks_http2_header_rules(headers)
    {
        prop_assert!(error.contains("PROTOCOL_ERROR"), "{}", error);
        return Ok(());
    }
    // tonic's client enforces a `grpc-timeout` it sends by itself (a "0n"
    // deadline expires at once): that answer never came from the server.
    if let Some(error) = &answer.body_error
        && error.contains("TimeoutExpired")
        && headers.iter().any(|(name, _)| name == "grpc-timeout")
    {
        return Ok(());
    }
    prop_assert_eq!(answer.http_status, 200, "{:?}", answer);
    prop_assert!(answer.body_error.is_none(), "{:?}", answer);
    let Some(code) = answer.grpc_status else {
        return Err(TestCaseError::fail(format!("no grpc-status: {answer:?}")));
    };
    let code = tonic::Code::from_i32(code);
    let allowed = matches!(
        code,
        tonic::Code::Ok
            | tonic::Code::InvalidArgument
            | tonic::Code::OutOfRange
            | tonic::Code::ResourceExhausted
            | tonic::Code::Unimplemented
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unauthenticated
    ) || (code == tonic::Code::Internal && is_decoder_message(&answer.grpc_message));
    prop_assert!(allowed, "{:?}: {:?}", code, answer);
    Ok(())
}

/// One gRPC message frame: compression flag, declared length, payload.
/// Mostly honest framing around random bytes; sometimes a lying length or
/// a bad flag, or several frames.
fn grpc_body() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop::collection::vec(any::<u8>(), 0..600);
    let frame = (
        payload,
        prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => any::<u8>()],
        prop::option::weighted(0.2, any::<u32>()),
    )
        .prop_map(|(payload, flag, length)| {
            let mut out = vec![flag];
            out.extend(length.unwrap_or(payload.len() as u32).to_be_bytes());
            out.extend(payload);
            out
        });
    prop_oneof![
        8 => frame.clone(),
        2 => prop::collection::vec(frame, 2..4).prop_map(|frames| frames.concat()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        "[ -~]{0,40}".prop_map(String::into_bytes),
        prop_oneof![
            Just("gzip"),
            Just("identity"),
            Just("deflate"),
            Just("zstd"),
            Just("1S"),
            Just("99999999H"),
            Just("0n"),
            Just("-1m"),
            Just("application/grpc+proto"),
            Just("application/json"),
            Just("text/plain"),
        ]
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

fn grpc_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop_oneof![
        Just("grpc-encoding".to_owned()),
        Just("grpc-accept-encoding".to_owned()),
        Just("grpc-timeout".to_owned()),
        Just("content-type".to_owned()),
        Just("te".to_owned()),
        Just("authorization".to_owned()),
        Just("grpc-status".to_owned()),
        Just("user-agent".to_owned()),
        "[a-z][a-z0-9-]{0,20}",
    ];
    prop::collection::vec((name, header_value()), 0..4)
}

/// Where the raw requests go: both Ingest methods (weighted up by
/// repetition), a read-only query, an admin method (refused before decoding,
/// no token) and a method that does not exist (UNIMPLEMENTED).
const PATHS: [&str; 7] = [
    "/tally.v1.Ingest/SubmitBatch",
    "/tally.v1.Ingest/StreamBatches",
    "/tally.v1.Ingest/SubmitBatch",
    "/tally.v1.Ingest/StreamBatches",
    "/tally.v1.Query/Balances",
    "/tally.v1.Admin/SealEpoch",
    "/tally.v1.Ingest/NoSuchMethod",
];

/// Random bytes and headers as raw gRPC requests ([`PATHS`]): every answer
/// typed, the ledger unchanged, the server alive.
#[test]
fn random_grpc_bodies_and_headers_get_typed_statuses() {
    let rt = runtime();
    let mut seeded = rt.block_on(seeded());
    let before = rt.block_on(snapshot(&mut seeded.clients));
    let channel = rt.block_on(connect(&seeded.server.addr));
    let strategy = (0..PATHS.len(), grpc_body(), grpc_headers());
    let codes = RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    let result = runner(0x61).run(&strategy, |(path, body, headers)| {
        let answer = rt.block_on(raw_call(&mut channel.clone(), PATHS[path], &headers, body));
        *codes.borrow_mut().entry(format!("{:?}", answer.grpc_status.map(tonic::Code::from_i32))).or_default() += 1;
        check_typed(&answer, &headers)
    });
    eprintln!("raw gRPC answers by status: {:?}", codes.borrow());
    result.unwrap();
    rt.block_on(finish(seeded, before));
}

/// The answer Tally should give a body that is not a protobuf message:
/// INVALID_ARGUMENT (the client sent bad input), not INTERNAL (which tells
/// clients and alerting that the server is broken).
#[test]
fn undecodable_bodies_are_invalid_argument() {
    let rt = runtime();
    let seeded = rt.block_on(seeded());
    let mut channel = rt.block_on(connect(&seeded.server.addr));
    // Field 2 (ious), wire type 2, length 5, but only 1 byte follows.
    let body = vec![0, 0, 0, 0, 3, 0x12, 0x05, 0x00];
    let answer = rt.block_on(raw_call(&mut channel, PATHS[0], &[], body));
    assert_eq!(answer.grpc_status, Some(tonic::Code::InvalidArgument as i32), "{answer:?}");
}

/// Protobuf wire encoding of a `SubmitBatchRequest`, by hand (the test
/// crate has no protobuf runtime of its own): field numbers from
/// `proto/tally/v1/ingest.proto` and `iou.proto`.
fn encode_batch(batch_id: u64, ious: &[proto::Iou]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        varint(out, field << 3 | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    fn varint_field(out: &mut Vec<u8>, field: u64, value: u64) {
        varint(out, field << 3);
        varint(out, value);
    }
    let mut out = Vec::new();
    varint_field(&mut out, 1, batch_id);
    for iou in ious {
        let mut inner = Vec::new();
        bytes_field(&mut inner, 1, iou.network.as_bytes());
        bytes_field(&mut inner, 2, &iou.payer_key);
        bytes_field(&mut inner, 3, iou.payee.as_bytes());
        bytes_field(&mut inner, 4, iou.asset.as_bytes());
        varint_field(&mut inner, 5, iou.amount);
        bytes_field(&mut inner, 6, &iou.nonce);
        varint_field(&mut inner, 7, iou.issued_at);
        varint_field(&mut inner, 8, iou.expires_at);
        bytes_field(&mut inner, 9, iou.resource.as_bytes());
        bytes_field(&mut inner, 10, &iou.signature);
        bytes_field(&mut out, 2, &inner);
    }
    out
}

/// One gRPC frame around `message`.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => (any::<usize>(), 1..8usize).prop_map(|(at, len)| Mutation::Remove(at, len)),
    ]
}

fn apply(message: &mut Vec<u8>, mutation: &Mutation) {
    if message.is_empty() {
        return;
    }
    let len = message.len();
    match mutation {
        Mutation::Flip(at, mask) => message[at % len] ^= mask,
        Mutation::Truncate(at) => message.truncate(at % len),
        Mutation::Insert(at, bytes) => {
            let at = at % len;
            message.splice(at..at, bytes.iter().copied());
        }
        Mutation::Remove(at, n) => {
            let at = at % len;
            message.drain(at..(at + n).min(len));
        }
    }
}

/// The encoding of already-accepted IOUs with a few random mutations
/// (bit flips, truncation, insertion, removal), framed correctly: near-miss
/// protobuf rather than noise. Each answer is a typed status (OK for a batch
/// that still decodes, answered per IOU); the ledger is unchanged, so no
/// mutation was accepted as a new IOU (an untouched one is a DUPLICATE, a
/// changed signed field a BAD_SIGNATURE).
#[test]
fn mutated_protobuf_batches_get_typed_answers() {
    let rt = runtime();
    let mut seeded = rt.block_on(seeded());
    let before = rt.block_on(snapshot(&mut seeded.clients));
    let channel = rt.block_on(connect(&seeded.server.addr));
    let accepted = seeded.accepted.clone();
    let strategy = (1..=accepted.len(), prop::collection::vec(mutation(), 1..4), any::<bool>());
    let codes = RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    let result = runner(0x64).run(&strategy, |(count, mutations, stream)| {
        let mut message = encode_batch(9, &accepted[..count]);
        for m in &mutations {
            apply(&mut message, m);
        }
        let path = if stream { PATHS[1] } else { PATHS[0] };
        let answer = rt.block_on(raw_call(&mut channel.clone(), path, &[], frame(&message)));
        *codes.borrow_mut().entry(format!("{:?}", answer.grpc_status.map(tonic::Code::from_i32))).or_default() += 1;
        check_typed(&answer, &[])
    });
    eprintln!("mutated protobuf answers by status: {:?}", codes.borrow());
    result.unwrap();
    rt.block_on(finish(seeded, before));
}

// ---------------------------------------------------------------------------
// gRPC: well-formed protobuf, random field values.

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(NETWORK.to_owned()),
        Just("USD".to_owned()),
        Just("site-a.example".to_owned()),
        Just(String::new()),
        ".{0,40}",
        "\\PC{0,300}",
        "[\\x00-\\x1f]{1,8}",
    ]
}

/// `common` most of the time (so later checks are reached), else `other`.
fn usually(common: &'static str, other: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop_oneof![3 => Just(common.to_owned()), 1 => other]
}

fn bytes_of(lens: &'static [usize]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::sample::select(lens).prop_flat_map(|len| prop::collection::vec(any::<u8>(), len)),
        1 => prop::collection::vec(any::<u8>(), 0..100),
    ]
}

fn timestamp() -> impl Strategy<Value = u64> {
    let now = now_s();
    prop_oneof![1 => Just(0), 1 => Just(u64::MAX), 1 => any::<u64>(), 6 => (now - 10_000)..(now + 10_000)]
}

/// A well-formed protobuf IOU with random field values, and whether to
/// sign it properly with a registered key before one field is changed (so
/// the signature check, not only the shape checks, is reached).
fn random_iou() -> impl Strategy<Value = (proto::Iou, Option<u8>)> {
    let fields = (
        (
            usually(NETWORK, text()),
            prop_oneof![1 => Just(signer(1).verifying_key().to_bytes().to_vec()), 1 => bytes_of(&[32])],
            usually("site-a.example", text()),
            usually("USD", text()),
            prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 1..100u64],
        ),
        (bytes_of(&[16]), timestamp(), timestamp(), usually("", text()), bytes_of(&[64])),
    );
    (fields, prop::option::of(0u8..10)).prop_map(
        |(((network, payer_key, payee, asset, amount), (nonce, issued_at, expires_at, resource, signature)), sign)| {
            let iou = proto::Iou {
                network,
                payer_key,
                payee,
                asset,
                amount,
                nonce,
                issued_at,
                expires_at,
                resource,
                signature,
            };
            (iou, sign)
        },
    )
}

/// Signs `iou` with registered key 1 (when its shape allows), then changes
/// field `which` so the signature no longer matches.
fn signed_then_changed(mut iou: proto::Iou, which: u8) -> proto::Iou {
    let key = signer(1);
    iou.payer_key = key.verifying_key().to_bytes().to_vec();
    let Ok(nonce) = <[u8; 16]>::try_from(iou.nonce.as_slice()) else { return iou };
    let signed = Iou {
        network: iou.network.clone(),
        payer_key: key.verifying_key().to_bytes(),
        payee: iou.payee.clone(),
        asset: iou.asset.clone(),
        amount: iou.amount,
        nonce,
        issued_at_s: iou.issued_at,
        expires_at_s: iou.expires_at,
        resource: iou.resource.clone(),
    };
    if signed.check_shape().is_err() {
        return iou; // no signing bytes exist for it; the random signature stays
    }
    let mut iou = signed_with(&key, signed);
    match which {
        0 => iou.amount = iou.amount.wrapping_add(1),
        1 => iou.payee.push('x'),
        2 => iou.nonce[0] ^= 1,
        3 => iou.issued_at = iou.issued_at.wrapping_sub(1),
        4 => iou.expires_at = iou.expires_at.wrapping_add(1),
        5 => iou.resource.push('/'),
        6 => iou.signature[0] ^= 0x40,
        7 => iou.signature[63] |= 0xf0, // s far from canonical
        8 => iou.network.push('x'),
        _ => iou.asset.push('X'),
    }
    iou
}

/// Batches of 1..16 random IOUs through the typed client: one known code
/// per IOU, never ACCEPTED (no IOU carries a valid signature), the ledger
/// unchanged.
#[test]
fn random_iou_fields_get_per_iou_codes_and_change_nothing() {
    let rt = runtime();
    let mut seeded = rt.block_on(seeded());
    let before = rt.block_on(snapshot(&mut seeded.clients));
    let ingest = IngestClient::new(rt.block_on(connect(&seeded.server.addr)));
    let strategy = prop::collection::vec(random_iou(), 1..16);
    let codes = RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    let result = runner(0x62).run(&strategy, |batch| {
        let ious: Vec<proto::Iou> = batch
            .into_iter()
            .map(|(iou, sign)| sign.map_or(iou.clone(), |which| signed_then_changed(iou, which)))
            .collect();
        let len = ious.len();
        let request = SubmitBatchRequest { batch_id: 7, ious };
        let answer = rt.block_on(async {
            tokio::time::timeout(ANSWER_WAIT_MAX, ingest.clone().submit_batch(request)).await.expect("answered in time")
        });
        let response = match answer {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(TestCaseError::fail(format!("a batch of well-formed IOUs got {status:?}"))),
        };
        prop_assert_eq!(response.results.len(), len);
        for result in &response.results {
            let Some(outcome) = code_from_proto(result.code) else {
                return Err(TestCaseError::fail(format!("unknown code {}", result.code)));
            };
            *codes.borrow_mut().entry(outcome.as_str().to_owned()).or_default() += 1;
            prop_assert!(!outcome.is_success(), "{:?} for garbage", outcome);
            prop_assert!(result.commitment.is_none());
        }
        Ok(())
    });
    eprintln!("random IOU fields, outcomes: {:?}", codes.borrow());
    result.unwrap();
    rt.block_on(finish(seeded, before));
}

/// Regression cases the random-field property found: IOUs whose fields
/// decode but break the shape rules (`Iou::check_shape`) must each be
/// answered MALFORMED, one IOU per batch, never a reset stream.
#[test]
fn shape_violations_are_malformed_not_a_reset() {
    let rt = runtime();
    let mut seeded = rt.block_on(seeded());
    let before = rt.block_on(snapshot(&mut seeded.clients));
    let good = signed_iou(&signer(1), "site-a.example", 1, nonce(3, 1));
    let cases: Vec<(&str, proto::Iou)> = vec![
        ("network with a space", proto::Iou { network: "tally test".into(), ..good.clone() }),
        ("empty network", proto::Iou { network: String::new(), ..good.clone() }),
        ("network over 64 bytes", proto::Iou { network: "n".repeat(65), ..good.clone() }),
        ("lowercase asset", proto::Iou { asset: "usd".into(), ..good.clone() }),
        ("empty asset", proto::Iou { asset: String::new(), ..good.clone() }),
        ("payee with a space", proto::Iou { payee: "site a".into(), ..good.clone() }),
        ("empty payee", proto::Iou { payee: String::new(), ..good.clone() }),
        ("payee of 300 bytes", proto::Iou { payee: "p".repeat(300), ..good.clone() }),
        ("resource over 1024 bytes", proto::Iou { resource: "r".repeat(1_025), ..good.clone() }),
    ];
    rt.block_on(async {
        let mut ingest = IngestClient::new(connect(&seeded.server.addr).await);
        let mut failures = Vec::new();
        for (n, (name, iou)) in cases.into_iter().enumerate() {
            match ingest.submit_batch(SubmitBatchRequest { batch_id: n as u64, ious: vec![iou] }).await {
                Ok(response) => {
                    let code = code_from_proto(response.into_inner().results[0].code);
                    if code != Some(tally_core::Outcome::Malformed) {
                        failures.push(format!("{name}: {code:?}"));
                    }
                }
                Err(status) => failures.push(format!("{name}: {:?} {}", status.code(), status.message())),
            }
        }
        assert!(failures.is_empty(), "not MALFORMED: {failures:#?}");
    });
    rt.block_on(finish(seeded, before));
}

// ---------------------------------------------------------------------------
// HTTP: the x402 facilitator.

const REASONS: [Reason; 22] = [
    Reason::InvalidPayload,
    Reason::InvalidPaymentRequirements,
    Reason::InvalidScheme,
    Reason::UnsupportedScheme,
    Reason::InvalidNetwork,
    Reason::InvalidX402Version,
    Reason::InsufficientFunds,
    Reason::InvalidTransactionState,
    Reason::UnexpectedVerifyError,
    Reason::UnexpectedSettleError,
    Reason::PriceNotAcceptable,
    Reason::InvalidSignature,
    Reason::SignatureAgentUnknown,
    Reason::InvalidPaymentSignature,
    Reason::Expired,
    Reason::PayerSuspended,
    Reason::PaymentIdentifierConflict,
    Reason::PaymentIdentifierRequired,
    Reason::ResourceMismatch,
    Reason::PaymentAlreadyUsed,
    Reason::KeyRevoked,
    Reason::PayeeSuspended,
];

fn facilitator_request(signed: &SignedIou, max_amount: u64) -> Value {
    let requirements = json!({
        "scheme": "batch-settlement", "network": NETWORK, "amount": max_amount.to_string(),
        "asset": "USD", "payTo": "site-a.example"
    });
    json!({
        "x402Version": 2,
        "paymentPayload": {
            "x402Version": 2,
            "resource": { "url": "https://site-a.example/article" },
            "accepted": requirements.clone(),
            "payload": TallyIouPayload::from_signed(signed),
        },
        "paymentRequirements": requirements,
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,30}".prop_map(Value::String),
        prop_oneof![Just("2"), Just("batch-settlement"), Just("tally-iou-v1"), Just(NETWORK), Just("USD")]
            .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at a random path of `base` (chosen by `picks`) with
/// `replacement`, or deletes it.
fn mutate(base: &Value, picks: &[usize], replacement: Option<Value>) -> Value {
    let mut out = base.clone();
    let mut node = &mut out;
    for (depth, pick) in picks.iter().enumerate() {
        let keys: Vec<String> = match node {
            Value::Object(map) if !map.is_empty() => map.keys().cloned().collect(),
            _ => break,
        };
        let key = keys[pick % keys.len()].clone();
        let last = depth + 1 == picks.len() || !node[&key].is_object();
        if last {
            let map = node.as_object_mut().unwrap();
            match replacement {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
            break;
        }
        node = node.get_mut(&key).unwrap();
    }
    out
}

#[derive(Debug, Clone)]
enum HttpBodyCase {
    Bytes(Vec<u8>),
    Json(Value),
    Mutated(Vec<usize>, Option<Value>),
}

fn http_body_case() -> impl Strategy<Value = HttpBodyCase> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..2_000).prop_map(HttpBodyCase::Bytes),
        1 => json_value().prop_map(HttpBodyCase::Json),
        3 => (prop::collection::vec(any::<usize>(), 1..7), prop::option::weighted(0.8, json_value()))
            .prop_map(|(picks, value)| HttpBodyCase::Mutated(picks, value)),
    ]
}

fn http_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        Just("content-type".to_owned()),
        Just("accept".to_owned()),
        Just("payment-signature".to_owned()),
        Just("x-payment".to_owned()),
        Just("signature-agent".to_owned()),
        Just("content-encoding".to_owned()),
        "x-[a-z0-9-]{1,20}",
    ];
    prop::collection::vec((name, "[ -~]{0,60}"), 0..4)
}

/// Random bytes, random JSON and mutations of a valid (already settled)
/// request to `/verify` and `/settle`, with random headers: every answer is
/// 200/400/409/413 with JSON naming a known reason (413 excepted: see
/// docs/abuse-limits.md), nothing is written (a replay of the settled IOU
/// without a payment identifier buys nothing: `payment_already_used`), the
/// server lives.
/// The facilitator's documented promise: every failure carries a reason
/// code. A body over `body_bytes_max` is answered 413 by axum's body limit
/// with plain text, before the handler runs.
#[test]
fn oversized_http_bodies_carry_a_reason_code() {
    let rt = runtime();
    let seeded = rt.block_on(seeded());
    let http_addr = seeded.server.http_addr.clone();
    for (path, field) in [("verify", "invalidReason"), ("settle", "errorReason")] {
        let (status, text) = rt.block_on(async {
            let body = vec![b'{'; 200_000];
            let response = reqwest::Client::new().post(format!("http://{http_addr}/{path}")).body(body).send().await;
            let response = response.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        });
        assert_eq!(status, 413);
        let answer: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("/{path} 413 is not JSON: {text}"));
        assert_eq!(answer[field], Reason::InvalidPayload.as_str(), "{answer}");
    }
}

#[test]
fn random_http_bodies_and_headers_get_x402_reasons() {
    let rt = runtime();
    let mut seeded = rt.block_on(seeded());
    let http_addr = seeded.server.http_addr.clone();
    let http = reqwest::Client::new();
    // Settle one IOU first: a mutation that leaves it valid is then a replay.
    let base_iou = {
        use ed25519_dalek::Signer;
        let now = now_s();
        let iou = Iou {
            network: NETWORK.into(),
            payer_key: signer(2).verifying_key().to_bytes(),
            payee: "site-a.example".into(),
            asset: "USD".into(),
            amount: 70,
            nonce: nonce(2, 1),
            issued_at_s: now,
            expires_at_s: now + 3_000,
            resource: "https://site-a.example/article".into(),
        };
        let signature = signer(2).sign(&iou.signing_bytes()).to_bytes();
        SignedIou { iou, signature }
    };
    // The offer is what the IOU commits: a commitment below the offer is refused.
    let base = facilitator_request(&base_iou, 70);
    let settled: Value = rt.block_on(async {
        let response = http.post(format!("http://{http_addr}/settle")).json(&base).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.json().await.unwrap()
    });
    assert_eq!(settled["success"], true, "{settled}");
    let transaction = settled["transaction"].as_str().unwrap().to_owned();
    seeded.records += 1;
    let before = rt.block_on(snapshot(&mut seeded.clients));

    let known: Vec<&str> = REASONS.iter().map(|r| r.as_str()).collect();
    let strategy = (any::<bool>(), http_body_case(), http_headers());
    let statuses = RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    let result = runner(0x63).run(&strategy, |(settle, case, headers)| {
        let body = match &case {
            HttpBodyCase::Bytes(bytes) => bytes.clone(),
            HttpBodyCase::Json(value) => serde_json::to_vec(value).unwrap(),
            HttpBodyCase::Mutated(picks, value) => serde_json::to_vec(&mutate(&base, picks, value.clone())).unwrap(),
        };
        let path = if settle { "settle" } else { "verify" };
        let (status, text) = rt.block_on(async {
            let mut request = http.post(format!("http://{http_addr}/{path}")).body(body);
            for (name, value) in &headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let response = tokio::time::timeout(ANSWER_WAIT_MAX, request.send())
                .await
                .expect("answered in time")
                .expect("an HTTP answer, not a dropped connection");
            (response.status().as_u16(), response.text().await.unwrap())
        });
        *statuses.borrow_mut().entry(format!("{path} {status}")).or_default() += 1;
        prop_assert!(matches!(status, 200 | 400 | 409 | 413 | 415), "{} {}: {}", path, status, text);
        if status == 413 {
            return Ok(());
        }
        let answer: Value = serde_json::from_str(&text)
            .map_err(|_| TestCaseError::fail(format!("{path} {status} is not JSON: {text}")))?;
        let (ok_field, reason_field) = if settle { ("success", "errorReason") } else { ("isValid", "invalidReason") };
        if answer[ok_field] == true {
            prop_assert_eq!(status, 200);
            if settle {
                prop_assert_eq!(answer["transaction"].as_str(), Some(transaction.as_str()), "only a replay succeeds");
            }
        } else {
            let reason = answer[reason_field].as_str().unwrap_or_default();
            prop_assert!(known.contains(&reason), "{} {}: unknown reason in {}", path, status, answer);
        }
        Ok(())
    });
    eprintln!("facilitator answers: {:?}", statuses.borrow());
    result.unwrap();

    // A body over the limit (64 KiB): 413, nothing written. The server answers before reading
    // the rest of the body and then closes that connection, so each request gets a fresh one
    // (reusing a pooled connection the server is closing would race).
    let fresh_connections = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    for path in ["verify", "settle"] {
        let (status, text) = rt.block_on(async {
            let body = vec![b'{'; 200_000];
            let response =
                fresh_connections.post(format!("http://{http_addr}/{path}")).body(body).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        });
        assert_eq!(status, 413, "{path}: {text}");
        eprintln!("/{path} over the body limit: {status} {text:?}");
    }
    rt.block_on(finish(seeded, before));
}

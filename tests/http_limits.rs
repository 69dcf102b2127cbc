//! Abuse limits of the x402 facilitator's HTTP listener, against a real
//! `tally serve` with small `[limits]`: a slow-loris client is cut off
//! within the header read timeout while others are served; connections
//! past `http_connections_max` wait (unanswered) until one closes; oversized
//! heads get 431; a body that never arrives ends at the request timeout.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for anything that should happen "soon" (a CI machine may be
/// slow; the bounds under test are seconds).
const SOON: Duration = Duration::from_secs(30);

fn server_with(dir: &std::path::Path, limits: &str) -> ServerProcess {
    let config = dir.join("tally.toml");
    std::fs::write(&config, format!("[limits]\n{limits}\n")).unwrap();
    ServerProcess::start_opts(&dir.join("ledger"), &ServeOptions { config: Some(&config), ..Default::default() }).0
}

async fn get_supported(addr: &str) -> u16 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    http_exchange(tcp, &http_request("GET", "/supported", None)).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_is_disconnected_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), "http_header_read_timeout_ms = 2000\nhttp_connections_max = 8");
    let request = http_request("GET", "/supported", None);

    // One byte per second: the head would take ~50 s to arrive.
    let (mut reader, mut writer) = TcpStream::connect(&server.http_addr).await.unwrap().into_split();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let trickle = tokio::spawn(async move {
        for byte in request {
            if writer.write_all(&[byte]).await.is_err() {
                break;
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    // A normal client is served meanwhile.
    assert_eq!(get_supported(&server.http_addr).await, 200);

    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(SOON, reader.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the slow client must be disconnected within {SOON:?}");
    let held = started.elapsed();
    trickle.abort();
    let sent = sent.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("slow-loris client cut off after {held:?} of waiting, {sent} bytes of its head sent");
    let text = String::from_utf8_lossy(&answer);
    assert!(!text.contains("200 OK"), "the slow request is never served: {text}");
    assert!(sent < 40, "cut off long before the head was complete ({sent} bytes sent, {held:?})");
    // And the listener still serves, and counted the cut-off client.
    assert_eq!(get_supported(&server.http_addr).await, 200);
    let tcp = TcpStream::connect(&server.metrics_addr).await.unwrap();
    let (_, metrics) = http_exchange(tcp, &http_request("GET", "/metrics", None)).await.unwrap();
    let timeouts = metrics
        .lines()
        .find_map(|line| line.strip_prefix("tally_http_header_timeouts_total "))
        .and_then(|value| value.trim().parse::<f64>().ok());
    assert!(timeouts.is_some_and(|n| n >= 1.0), "header timeouts are counted: {timeouts:?}");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_bound_wait_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), "http_header_read_timeout_ms = 60000\nhttp_connections_max = 2");

    // Two connections hold both slots with an unfinished head.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(&server.http_addr).await.unwrap();
        tcp.write_all(b"GET /supported HTTP/1.1\r\n").await.unwrap();
        holders.push(tcp);
    }
    // The third is let in by the kernel but not served while both are held.
    let mut third = TcpStream::connect(&server.http_addr).await.unwrap();
    third.write_all(&http_request("GET", "/supported", None)).await.unwrap();
    let mut answer = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_secs(2), third.read(&mut answer)).await;
    assert!(early.is_err(), "past http_connections_max a connection waits: got {early:?}");

    // One holder leaves: the waiting connection is served.
    drop(holders.pop());
    let mut answer = Vec::new();
    tokio::time::timeout(SOON, third.read_to_end(&mut answer)).await.expect("served once a slot frees").unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_stalled_bodies_get_bounded_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        server_with(dir.path(), "http_request_timeout_ms = 1500\nhttp_header_bytes_max = 16384\nhttp_headers_max = 32");

    // A head over 16 KiB: 431.
    let big =
        format!("GET /supported HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "a".repeat(32 * 1024));
    let tcp = TcpStream::connect(&server.http_addr).await.unwrap();
    let (status, _) = http_exchange(tcp, big.as_bytes()).await.unwrap();
    assert_eq!(status, 431);

    // Too many header fields: 431.
    let mut many = String::from("GET /supported HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..64 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let tcp = TcpStream::connect(&server.http_addr).await.unwrap();
    let (status, _) = http_exchange(tcp, many.as_bytes()).await.unwrap();
    assert_eq!(status, 431);

    // A body announced but never sent: 503 at the request timeout, and the
    // connection is closed.
    let stalled =
        b"POST /settle HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"x";
    let tcp = TcpStream::connect(&server.http_addr).await.unwrap();
    let answer = tokio::time::timeout(SOON, http_exchange(tcp, stalled)).await.expect("answered within the bound");
    let (status, body) = answer.unwrap();
    assert_eq!(status, 503, "{body}");

    // Normal requests are unaffected.
    assert_eq!(get_supported(&server.http_addr).await, 200);
    server.terminate();
}

#[test]
fn limits_that_disable_a_bound_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (limits, expected) in [
        ("http_connections_max = 0", "http_connections_max"),
        ("http_header_bytes_max = 100", "http_header_bytes_max"),
        ("http_header_read_timeout_ms = 0", "timeouts must be positive"),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, format!("[limits]\n{limits}\n")).unwrap();
        let data = dir.path().join("ledger");
        let (ok, _, stderr) = run_tally(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--admin-token",
            TOKEN,
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "off",
        ]);
        assert!(!ok, "{limits} must be refused");
        assert!(stderr.contains(expected), "{limits}: {stderr}");
    }
}

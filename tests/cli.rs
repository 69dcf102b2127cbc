//! The `tally` binary end to end: account commands, balances, epochs,
//! metrics, clean shutdown, and corruption detection by `ledger verify`.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use tally_ingest::proto::*;

fn tally_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = run_tally(args);
    assert!(ok, "tally {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_accounts_and_reports_balances() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("ledger");
    let server = ServerProcess::start(&data_dir);
    let url = format!("http://{}", server.addr);
    let admin = ["--server", url.as_str(), "--admin-token", TOKEN];
    let with =
        |args: &[&str], extra: &[&str]| -> Vec<String> { args.iter().chain(extra).map(|s| s.to_string()).collect() };
    let run = |args: Vec<String>| tally_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    run(with(&["asset", "register", "USD", "--scale", "6"], &admin));
    let key_file = dir.path().join("crawler.key");
    let public = tally_ok(&["keygen", "--out", key_file.to_str().unwrap()]).trim().to_owned();
    assert_eq!(public.len(), 64);
    let seed = std::fs::read_to_string(&key_file).unwrap();
    let mode = std::fs::metadata(&key_file).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600, "secret keys are private");
    run(with(
        &["payer", "register", "news-crawler", "--name", "News Crawler", "--key", &public, "--limit", "USD=1.50"],
        &admin,
    ));
    run(with(&["payee", "register", "daily.example", "--name", "The Daily"], &admin));
    let payers: serde_json::Value = serde_json::from_str(&run(with(&["payer", "list", "--json"], &admin))).unwrap();
    assert_eq!(payers[0]["credit_limits"][0]["limit"], "1500000", "USD=1.50 at scale 6");

    // Sign with the key the CLI generated; the limit is $1.50.
    let mut seed_bytes = [0u8; 32];
    hex::decode_to_slice(seed.trim(), &mut seed_bytes).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed_bytes);
    let ious = (0..4).map(|n| signed_iou(&key, "daily.example", 500_000, nonce(7, n))).collect();
    let mut c = clients(&server.addr).await;
    let results = c.ingest.submit_batch(SubmitBatchRequest { batch_id: 1, ious }).await.unwrap().into_inner().results;
    let codes: Vec<i32> = results.iter().map(|r| r.code).collect();
    assert_eq!(codes, [1, 1, 1, 14], "three fit under $1.50, the fourth exceeds the limit");

    let json: serde_json::Value = serde_json::from_str(&tally_ok(&[
        "balance",
        "--json",
        "--server",
        &url,
        "--token",
        TOKEN,
        "--payee",
        "daily.example",
    ]))
    .unwrap();
    assert_eq!(json["rows"][0]["amount"], "1.500000");
    assert_eq!(json["rows"][0]["amount_units"], "1500000");
    assert_eq!(json["rows"][0]["ious"], 3);
    let table = tally_ok(&["balance", "--server", &url, "--token", TOKEN, "--payer", "news-crawler"]);
    assert!(table.contains("daily.example") && table.contains("1.500000"), "{table}");

    run(with(&["payer", "suspend", "news-crawler"], &admin));
    let listed = run(with(&["payer", "list"], &admin));
    assert!(listed.contains("suspended"), "{listed}");
    let sealed = run(with(&["epoch", "seal"], &admin));
    assert!(sealed.contains("sealed epoch 1"), "{sealed}");
    let epochs: serde_json::Value =
        serde_json::from_str(&tally_ok(&["epochs", "--json", "--server", &url, "--token", TOKEN])).unwrap();
    assert_eq!(epochs[1]["status"], "open");

    // A wrong token is refused with a clear message.
    let (ok, _, stderr) = run_tally(&["payer", "list", "--server", &url, "--admin-token", "wrong"]);
    assert!(!ok && stderr.contains("admin token"), "{stderr}");

    // Prometheus metrics count what happened.
    let metrics = http_get(&server.metrics_addr, "/metrics");
    assert!(metrics.contains("tally_ious_total{outcome=\"accepted\"} 3"), "{metrics}");
    assert!(metrics.contains("tally_ious_total{outcome=\"credit_limit_exceeded\"} 1"), "{metrics}");
    assert!(metrics.contains("tally_commit_seconds"), "{metrics}");
    assert!(!metrics.contains(TOKEN), "secrets never reach metrics");
    // Memory gauges (published every second from startup): RocksDB by kind, and the heap.
    let gauge = |text: &str, name: &str| -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
    };
    let memory = poll(Duration::from_secs(10), || {
        let text = http_get(&server.metrics_addr, "/metrics");
        gauge(&text, "tally_heap_allocated_bytes")?;
        Some(text)
    });
    let allocated_bytes = gauge(&memory, "tally_heap_allocated_bytes").unwrap();
    let resident_bytes = gauge(&memory, "tally_heap_resident_bytes").expect("published with the allocated bytes");
    assert!(allocated_bytes > 0.0 && resident_bytes >= allocated_bytes, "{memory}");
    assert!(gauge(&memory, "tally_storage_memory_bytes{kind=\"memtables\"}").is_some(), "{memory}");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_verify_detects_a_flipped_byte_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("ledger");
    let server = ServerProcess::start(&data_dir);
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 1, u128::MAX).await;
    for b in 0..20u64 {
        let ious = (0..500).map(|n| signed_iou(&signer(1), "site-b.example", 3, nonce(b, n))).collect();
        c.ingest.submit_batch(SubmitBatchRequest { batch_id: b, ious }).await.unwrap();
    }
    drop(c);
    // Clean shutdown flushes the memtables into SST files.
    server.terminate();
    let data = data_dir.to_str().unwrap();
    let report = tally_ok(&["ledger", "verify", "--data-dir", data]);
    assert!(report.contains("records: 10000") && report.contains("ledger OK"), "{report}");

    // Flip one byte in the middle of the largest table file (the IOU log).
    let largest = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a clean shutdown leaves SST files");
    let mut bytes = std::fs::read(&largest).unwrap();
    let middle = bytes.len() / 3;
    bytes[middle] ^= 0x5a;
    std::fs::write(&largest, bytes).unwrap();

    let (ok, stdout, stderr) = run_tally(&["ledger", "verify", "--data-dir", data]);
    assert!(!ok, "a corrupted ledger must fail verification:\n{stdout}");
    assert!(!stderr.contains("panicked"), "a clear error, not a panic:\n{stderr}");
    assert!(stderr.to_lowercase().contains("corrupt") || stderr.contains("checksum"), "{stderr}");
}

/// A minimal HTTP/1.0 GET against a loopback listener.
fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// `tally loadgen` drives both front doors of a real `tally serve`: gRPC
/// batches, and one x402 `POST /settle` per IOU, each paying for its own
/// resource at its price (so every IOU is recorded, none refused as a
/// replay or a resource mismatch).
#[test]
fn loadgen_records_every_iou_through_grpc_and_through_the_facilitator() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [
        "--network",
        NETWORK,
        "--register",
        "--payers",
        "4",
        "--payees",
        "4",
        "--streams",
        "2",
        "--window",
        "2",
        "--json",
    ];
    for (door, ious, recorded) in [("gRPC", "400", "accepted"), ("x402", "120", "settled")] {
        let server = ServerProcess::start(&dir.path().join(door));
        let url = format!("http://{}", server.addr);
        let facilitator = format!("http://{}", server.http_addr);
        let extra = if door == "gRPC" { ["--batch", "100"] } else { ["--http", facilitator.as_str()] };
        let args: Vec<&str> = ["loadgen", "--server", &url, "--admin-token", TOKEN, "--ious", ious]
            .into_iter()
            .chain(shape)
            .chain(extra)
            .collect();
        let report: serde_json::Value = serde_json::from_str(&tally_ok(&args)).unwrap();
        assert_eq!(report["ious"].to_string(), ious, "{door}: {report}");
        assert_eq!(
            report["outcomes"],
            serde_json::json!({ recorded: ious.parse::<u64>().unwrap() }),
            "{door}: {report}"
        );
        server.kill();
    }
}

//! Corrupted bytes on disk: what `tally serve` does at startup, and what
//! `tally ledger verify` says.
//!
//! Three kinds of damage, each on a real ledger written by a real server:
//!
//! - (a) a flipped byte inside an SST data block (bit rot under the log);
//! - (b) the WAL's tail: a torn, incomplete last record (a write the crash
//!   interrupted, never acknowledged) must be dropped by the configured
//!   recovery mode (`TolerateCorruptedTailRecords`) with nothing
//!   acknowledged lost; a flipped byte *inside* the WAL (acknowledged data)
//!   must refuse to open rather than silently drop history;
//! - (c) a log record rewritten through RocksDB with one signature byte
//!   flipped: every RocksDB checksum is valid, only the hash chain can tell.
//!
//! Each must be answered by a clear error or a clean recovery, never a
//! panic; `tally ledger verify` must flag (a) and (c). The tests print what
//! was caught where, so the guarantees in `docs/reliability.md` stay
//! measured.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tally_core::{CommitmentId, Outcome};
use tally_ingest::convert::{code_from_proto, commitment_from_proto};
use tally_ingest::proto::{self, *};
use tally_ledger::layout::{COLUMN_FAMILIES, decode_log_record, encode_log_record, log_key};

const BATCHES: u64 = 20;
const BATCH_LEN: u64 = 500;

/// `tally serve` whose stderr is kept, so a refusal to start can be read.
impl FaultServer {
    fn assert_no_panic(&mut self) {
        let stderr = self.stderr();
        assert!(!stderr.contains("panicked"), "corruption must not panic anything:\n{stderr}");
    }

    fn kill(mut self) {
        self.assert_no_panic();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn terminate(mut self) {
        self.assert_no_panic();
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
        assert!(self.child.wait().unwrap().success());
    }
}

/// A server with `BATCHES × BATCH_LEN` acknowledged IOUs; returns them.
async fn write_history(server: &FaultServer) -> Vec<(proto::Iou, CommitmentId)> {
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 1, u128::MAX).await;
    let mut acked = Vec::new();
    for b in 0..BATCHES {
        let ious: Vec<proto::Iou> =
            (0..BATCH_LEN).map(|n| signed_iou(&signer(1), "site-b.example", 1 + n % 7, nonce(b, n))).collect();
        let results =
            c.ingest.submit_batch(SubmitBatchRequest { batch_id: b, ious: ious.clone() }).await.unwrap().into_inner();
        for (iou, result) in ious.into_iter().zip(results.results) {
            assert_eq!(code_from_proto(result.code), Some(Outcome::Accepted));
            acked.push((iou, result.commitment.as_ref().and_then(commitment_from_proto).unwrap()));
        }
    }
    acked
}

/// `tally ledger verify`: (clean, stdout + stderr). Never a panic.
fn verify(data_dir: &Path) -> (bool, String) {
    let (ok, stdout, stderr) = run_tally(&["ledger", "verify", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(!stderr.contains("panicked"), "verify must not panic:\n{stderr}");
    (ok, format!("{stdout}{stderr}"))
}

/// Every acknowledged IOU replays at its commitment: nothing was lost.
async fn assert_all_replay(addr: &str, acked: &[(proto::Iou, CommitmentId)]) {
    let mut c = clients(addr).await;
    for chunk in acked.chunks(1_000) {
        let ious = chunk.iter().map(|(iou, _)| iou.clone()).collect();
        let results = c.ingest.submit_batch(SubmitBatchRequest { batch_id: 0, ious }).await.unwrap().into_inner();
        for ((_, commitment), result) in chunk.iter().zip(results.results) {
            assert_eq!(code_from_proto(result.code), Some(Outcome::Duplicate), "an acknowledged IOU was lost");
            assert_eq!(result.commitment.as_ref().and_then(commitment_from_proto), Some(*commitment));
        }
    }
}

fn files_with_extension(data_dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == extension))
        .collect();
    files.sort();
    files
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_an_sst_data_block_is_a_clear_error_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("ledger");
    let server = start_ready(dir.path(), &data_dir, &[], "write");
    let acked = write_history(&server).await;
    // Clean shutdown flushes the memtables into SST files.
    server.terminate();
    let largest = files_with_extension(&data_dir, "sst")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a clean shutdown leaves SST files");
    let len = std::fs::metadata(&largest).unwrap().len() as usize;
    flip_byte(&largest, len / 3);

    let (clean, report) = verify(&data_dir);
    assert!(!clean, "verify must flag a flipped SST byte:\n{report}");
    assert!(report.to_lowercase().contains("corrupt") || report.contains("checksum"), "{report}");

    // With --verify-on-start the whole ledger is read before serving: refused, clearly.
    let verify_env = [("TALLY_VERIFY_ON_START".to_owned(), "true".to_owned())];
    match start_may_exit(dir.path(), &data_dir, &verify_env, "verify-on-start") {
        Started::Exited { status, stderr } => {
            assert!(!status.success() && !stderr.contains("panicked"), "{stderr}");
            assert!(stderr.to_lowercase().contains("corrupt") || stderr.contains("checksum"), "{stderr}");
        }
        Started::Ready(_) => panic!("--verify-on-start must refuse a ledger with a damaged block"),
    }

    match start_may_exit(dir.path(), &data_dir, &[], "corrupt") {
        Started::Exited { status, stderr } => {
            assert!(!status.success() && !stderr.contains("panicked"), "{stderr}");
            assert!(stderr.to_lowercase().contains("corrupt") || stderr.contains("checksum"), "{stderr}");
            eprintln!("SST data block: refused at startup: {}", stderr.trim());
        }
        Started::Ready(mut server) => {
            // Startup read only the blocks it needs (the head, accounts,
            // aggregates). Reading the damaged block must then be a clear
            // error on that request, and the server must stay up.
            let mut c = clients(&server.addr).await;
            let mut errors = Vec::new();
            for chunk in acked.chunks(BATCH_LEN as usize) {
                let ious = chunk.iter().map(|(iou, _)| iou.clone()).collect();
                match c.ingest.submit_batch(SubmitBatchRequest { batch_id: 0, ious }).await {
                    Ok(response) => {
                        for ((_, commitment), result) in chunk.iter().zip(response.into_inner().results) {
                            assert_eq!(code_from_proto(result.code), Some(Outcome::Duplicate));
                            assert_eq!(result.commitment.as_ref().and_then(commitment_from_proto), Some(*commitment));
                        }
                    }
                    Err(status) => errors.push(status),
                }
            }
            assert!(!errors.is_empty(), "some replay lookup must read the damaged block");
            for status in &errors {
                assert!(
                    matches!(status.code(), tonic::Code::DataLoss | tonic::Code::Unavailable | tonic::Code::Internal),
                    "{status:?}"
                );
                let message = status.message().to_lowercase();
                assert!(message.contains("corrupt") || message.contains("checksum"), "{status:?}");
            }
            assert!(server.child.try_wait().unwrap().is_none(), "the server stays up");
            eprintln!(
                "SST data block: NOT caught at startup; {} of {} replay batches answered {:?}: {}",
                errors.len(),
                acked.len() / BATCH_LEN as usize,
                errors[0].code(),
                errors[0].message()
            );
            server.kill();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_is_recovered_losing_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("ledger");
    let server = start_ready(dir.path(), &data_dir, &[], "write");
    let acked = write_history(&server).await;
    // SIGKILL: nothing is flushed, the history lives in the WAL only.
    server.kill();
    let wal = files_with_extension(&data_dir, "log").pop().expect("a live WAL");
    let wal_len = std::fs::metadata(&wal).unwrap().len();
    assert!(wal_len > (BATCHES * BATCH_LEN * 200), "the WAL holds the history ({wal_len} bytes)");

    // A torn write: the header of a full record claiming 4000 bytes, then
    // only 100 of them: what a crash mid-append of an unacknowledged group
    // leaves behind.
    let mut torn = Vec::new();
    torn.extend_from_slice(&0xdead_beefu32.to_le_bytes()); // checksum (never matches)
    torn.extend_from_slice(&4000u16.to_le_bytes()); // length
    torn.push(1); // kFullType
    torn.extend(std::iter::repeat_n(0x42u8, 100));
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes.extend_from_slice(&torn);
    std::fs::write(&wal, &bytes).unwrap();

    let mut server = start_ready(dir.path(), &data_dir, &[], "torn");
    server.assert_no_panic();
    assert_all_replay(&server.addr, &acked).await;
    eprintln!("WAL torn tail: recovered, {} acknowledged IOUs all present", acked.len());
    server.terminate();
    let (clean, report) = verify(&data_dir);
    assert!(clean, "{report}");
    assert!(report.contains(&format!("records: {}", acked.len())), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_inside_the_wal_refuses_to_open_rather_than_drop_history() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("ledger");
    let server = start_ready(dir.path(), &data_dir, &[], "write");
    let _acked = write_history(&server).await;
    server.kill();
    let wal = files_with_extension(&data_dir, "log").pop().expect("a live WAL");
    let wal_len = std::fs::metadata(&wal).unwrap().len() as usize;
    // Well inside acknowledged history, away from the tail.
    flip_byte(&wal, wal_len / 2);

    match start_may_exit(dir.path(), &data_dir, &[], "corrupt") {
        Started::Exited { status, stderr } => {
            assert!(!status.success() && !stderr.contains("panicked"), "{stderr}");
            assert!(stderr.to_lowercase().contains("corrupt") || stderr.contains("checksum"), "{stderr}");
            eprintln!("WAL interior: refused at startup: {}", stderr.trim());
        }
        Started::Ready(server) => {
            server.kill();
            panic!("a damaged WAL record inside acknowledged history must not be skipped silently");
        }
    }
    let (clean, report) = verify(&data_dir);
    assert!(!clean, "verify must refuse too:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_log_record_breaks_the_hash_chain_and_verify_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("ledger");
    let server = start_ready(dir.path(), &data_dir, &[], "write");
    let acked = write_history(&server).await;
    server.terminate();

    // Rewrite one record in the middle through RocksDB itself: every block
    // checksum stays valid; only the hash chain can notice.
    let tampered_seq = acked[acked.len() / 2].1.seq;
    {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(false);
        let db = rocksdb::DB::open_cf(&options, &data_dir, COLUMN_FAMILIES).unwrap();
        let log = db.cf_handle(tally_ledger::layout::CF_LOG).unwrap();
        let key = log_key(tampered_seq);
        let value = db.get_cf(log, key).unwrap().expect("the record exists");
        let mut record = decode_log_record(&key, &value).unwrap();
        record.signature[0] ^= 0x01;
        let mut tampered = Vec::new();
        encode_log_record(&record, &mut tampered);
        assert_ne!(tampered, value);
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        db.put_cf_opt(log, key, tampered, &sync).unwrap();
    }

    let (clean, report) = verify(&data_dir);
    assert!(!clean, "verify must flag the tampered record:\n{report}");
    assert!(report.contains(&tampered_seq.to_string()), "verify names the record:\n{report}");
    eprintln!(
        "tampered record {tampered_seq}: verify says: {}",
        report.lines().find(|l| l.contains("PROBLEM")).unwrap_or_default()
    );

    // --verify-on-start finds it before serving.
    let verify_env = [("TALLY_VERIFY_ON_START".to_owned(), "true".to_owned())];
    match start_may_exit(dir.path(), &data_dir, &verify_env, "tampered-verified") {
        Started::Exited { status, stderr } => {
            assert!(!status.success() && !stderr.contains("panicked"), "{stderr}");
            assert!(stderr.contains("does not match its hash"), "{stderr}");
        }
        Started::Ready(_) => panic!("--verify-on-start must refuse a tampered log record"),
    }

    match start_may_exit(dir.path(), &data_dir, &[], "tampered") {
        Started::Exited { status, stderr } => {
            assert!(!status.success() && !stderr.contains("panicked"), "{stderr}");
            eprintln!("tampered record: refused at startup: {}", stderr.trim());
        }
        Started::Ready(mut server) => {
            // Startup reads only the head of the chain; a record in the middle
            // is the audit's to find. The server must still run cleanly.
            server.assert_no_panic();
            let mut c = clients(&server.addr).await;
            let fresh = vec![signed_iou(&signer(1), "site-b.example", 5, nonce(999, 0))];
            let results =
                c.ingest.submit_batch(SubmitBatchRequest { batch_id: 0, ious: fresh }).await.unwrap().into_inner();
            assert_eq!(code_from_proto(results.results[0].code), Some(Outcome::Accepted));
            eprintln!("tampered record {tampered_seq}: NOT caught at startup (only `tally ledger verify` sees it)");
            server.kill();
        }
    }
}

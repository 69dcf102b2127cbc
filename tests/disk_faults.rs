//! Disk full: the ledger's filesystem runs out of space while clients stream
//! IOUs.
//!
//! The data directory lives on a small tmpfs the test mounts itself
//! (`mount -t tmpfs -o size=…`, unmounted by a drop guard), and a filler
//! file takes the last free byte while two clients submit IOUs. Then:
//!
//! - ingest answers every batch it could not persist with a clear gRPC
//!   status (UNAVAILABLE, "disk full …"), promptly: no hang, no panic, the
//!   process stays up;
//! - nothing unpersisted is acknowledged: after the filesystem is grown
//!   (`mount -o remount,size=…`) and the server is SIGKILLed and restarted,
//!   every acknowledged IOU replays at the commitment it was given, and every
//!   IOU that was refused is accepted afresh (it was never written);
//! - when space returns, the same process accepts IOUs again (RocksDB's own
//!   recovery notices free space; the writer has reloaded its state), and
//!   `tally ledger verify` is clean;
//! - a server started on a full disk exits with a clear error, not a panic,
//!   and starts once space returns.
//!
//! Where mounting is not permitted (a less privileged CI), the test does not
//! pass silently: it says so and runs the same scenario through the ledger's
//! `ledger-write-enospc` failpoint (`crates/tally-ledger/src/failpoint.rs`),
//! which makes the group commit's write fail with ENOSPC while a switch file
//! exists. `TALLY_DISK_FAULT=failpoint` forces that mode where mounting
//! works, so the fallback itself stays tested.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tally_core::{CommitmentId, Outcome};
use tally_ingest::convert::{code_from_proto, commitment_from_proto};
use tally_ingest::proto::ingest_client::IngestClient;
use tally_ingest::proto::{self, *};

/// IOUs per submitted batch.
const BATCH_LEN: u64 = 200;
/// Each client stops after this many batches, full disk or not.
const CLIENT_BATCHES_MAX: u64 = 400;
/// Each client stops after this many refused batches.
const CLIENT_REFUSALS_MAX: u64 = 6;
/// A single answer, even a refusal, must come within this long.
const ANSWER_LIMIT: Duration = Duration::from_secs(30);
/// Space returns; ingest must accept again within this long (RocksDB
/// retries its recovery every 5 s).
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// tmpfs sizes: small enough to fill in seconds, grown well past need.
const TMPFS_SIZE_SMALL: &str = "16m";
const TMPFS_SIZE_GROWN: &str = "96m";
const ENOSPC: i32 = 28;

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs {
    mount_point: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `mount_point`; `Err(stderr)` when the
    /// mount is refused (no privilege, no tmpfs).
    fn mount(mount_point: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(mount_point).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tally-test"])
            .arg(mount_point)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if output.status.success() {
            Ok(Tmpfs { mount_point: mount_point.to_owned() })
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.mount_point)
            .status()
            .unwrap();
        assert!(status.success(), "remount {} to {size}", self.mount_point.display());
    }

    /// Writes a filler file until the filesystem refuses with ENOSPC.
    fn fill(&self) -> u64 {
        use std::io::Write;
        let path = self.mount_point.join("filler-0");
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        written
    }

    fn unfill(&self) {
        for entry in std::fs::read_dir(&self.mount_point).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with("filler-") {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server the test failed to stop must not leave the mount.
        let _ = Command::new("umount").arg("-l").arg(&self.mount_point).status();
    }
}

/// How the test takes space away and gives it back.
enum Fault {
    Tmpfs(Tmpfs),
    /// The `ledger-write-enospc` failpoint: the switch file's presence is a
    /// full disk.
    Failpoint {
        switch: PathBuf,
    },
}

impl Fault {
    /// A real tmpfs when mounting is allowed; otherwise, loudly, the failpoint.
    /// `TALLY_DISK_FAULT=failpoint` forces the fallback, to test it where
    /// mounting works.
    fn new(dir: &Path) -> Fault {
        let mounted = match std::env::var("TALLY_DISK_FAULT").as_deref() {
            Ok("failpoint") => Err("TALLY_DISK_FAULT=failpoint".to_owned()),
            _ => Tmpfs::mount(&dir.join("mnt"), TMPFS_SIZE_SMALL),
        };
        match mounted {
            Ok(tmpfs) => Fault::Tmpfs(tmpfs),
            Err(error) => {
                eprintln!(
                    "NOTE: mounting a tmpfs was refused ({}); running the disk-full scenario through \
                     the ledger-write-enospc failpoint instead",
                    error.trim()
                );
                Fault::Failpoint { switch: dir.join("enospc-switch") }
            }
        }
    }

    fn data_dir(&self, dir: &Path) -> PathBuf {
        match self {
            Fault::Tmpfs(tmpfs) => tmpfs.mount_point.join("ledger"),
            Fault::Failpoint { .. } => dir.join("ledger"),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        match self {
            Fault::Tmpfs(_) => vec![],
            Fault::Failpoint { switch } => vec![(
                tally_ledger::failpoint::ENV_VAR.into(),
                format!("{}={}", tally_ledger::failpoint::LEDGER_WRITE_ENOSPC, switch.display()),
            )],
        }
    }

    fn fill(&self) {
        match self {
            Fault::Tmpfs(tmpfs) => {
                let written = tmpfs.fill();
                eprintln!("filled the tmpfs with {written} bytes");
            }
            Fault::Failpoint { switch } => std::fs::write(switch, b"full").unwrap(),
        }
    }

    fn free(&self) {
        match self {
            Fault::Tmpfs(tmpfs) => {
                tmpfs.unfill();
                tmpfs.resize(TMPFS_SIZE_GROWN);
            }
            Fault::Failpoint { switch } => std::fs::remove_file(switch).unwrap(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Fault::Tmpfs(_) => "tmpfs",
            Fault::Failpoint { .. } => "failpoint",
        }
    }
}

/// `tally serve` with its ready file and stderr outside the data
/// filesystem (which may be full), so a refusal to start can be read.
impl FaultServer {
    fn assert_alive_and_calm(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the server must stay up on a full disk");
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        assert!(!stderr.contains("panicked"), "a full disk must not panic anything:\n{stderr}");
    }

    fn kill(mut self) {
        self.assert_alive_and_calm();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    acked: Vec<(proto::Iou, CommitmentId)>,
    /// IOUs of batches answered with an error status.
    refused: Vec<proto::Iou>,
    statuses: Vec<tonic::Status>,
}

fn batch(tag: u64, first: u64, len: u64) -> Vec<proto::Iou> {
    let payer = signer((tag % 2) as u8 + 1);
    (first..first + len).map(|n| signed_iou(&payer, "site-a.example", 1 + n % 13, nonce(tag, n))).collect()
}

/// Submits one batch; every IOU of an answered batch must be accepted.
async fn submit(ingest: &mut IngestClient<tonic::transport::Channel>, ious: Vec<proto::Iou>, seen: &mut Seen) -> bool {
    let call = ingest.submit_batch(SubmitBatchRequest { batch_id: 0, ious: ious.clone() });
    let answer = tokio::time::timeout(ANSWER_LIMIT, call).await.expect("ingest answers promptly, full disk or not");
    match answer {
        Ok(response) => {
            let results = response.into_inner().results;
            assert_eq!(results.len(), ious.len());
            for (iou, result) in ious.into_iter().zip(results) {
                assert_eq!(code_from_proto(result.code), Some(Outcome::Accepted), "fresh IOUs: {result:?}");
                let commitment = result.commitment.as_ref().and_then(commitment_from_proto).expect("a commitment");
                seen.acked.push((iou, commitment));
            }
            true
        }
        Err(status) => {
            seen.refused.extend(ious);
            seen.statuses.push(status);
            false
        }
    }
}

/// A client submitting batches until it has seen enough refusals.
async fn client_until_refused(addr: String, tag: u64, acked_batches: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Seen {
    let mut ingest = IngestClient::new(connect(&addr).await);
    let mut seen = Seen::default();
    for b in 0..CLIENT_BATCHES_MAX {
        if seen.statuses.len() as u64 >= CLIENT_REFUSALS_MAX || stop.load(Ordering::SeqCst) {
            break;
        }
        if submit(&mut ingest, batch(tag, b * BATCH_LEN, BATCH_LEN), &mut seen).await {
            acked_batches.fetch_add(1, Ordering::SeqCst);
        }
    }
    seen
}

fn assert_clear_refusal(status: &tonic::Status) {
    assert!(
        matches!(status.code(), tonic::Code::Unavailable | tonic::Code::ResourceExhausted),
        "a full disk is a retryable condition: {status:?}"
    );
    let message = status.message().to_lowercase();
    assert!(message.contains("disk full") || message.contains("no space"), "the status says why: {status:?}");
}

fn verify_clean(data_dir: &Path) -> u64 {
    let (ok, stdout, stderr) = run_tally(&["ledger", "verify", "--json", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(ok, "ledger verify failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["clean"], true, "{stdout}");
    report["records"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_full_refuses_cleanly_acknowledges_nothing_unwritten_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let fault = Fault::new(dir.path());
    let data_dir = fault.data_dir(dir.path());
    let env = fault.env();
    let mut server = start_ready(dir.path(), &data_dir, &env, "first");
    {
        let mut c = clients(&server.addr).await;
        register_basics(&mut c.admin, 2, u128::MAX).await;
    }

    // Two clients stream; once they are well under way the disk fills.
    let acked_batches = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..2u64)
        .map(|tag| tokio::spawn(client_until_refused(server.addr.clone(), tag, acked_batches.clone(), stop.clone())))
        .collect();
    poll(Duration::from_secs(120), || (acked_batches.load(Ordering::SeqCst) >= 6).then_some(()));
    fault.fill();
    let mut seen = Seen::default();
    for task in tasks {
        let client = task.await.unwrap();
        seen.acked.extend(client.acked);
        seen.refused.extend(client.refused);
        seen.statuses.extend(client.statuses);
    }
    assert!(!seen.statuses.is_empty(), "a full disk must refuse something ({} mode)", fault.name());
    for status in &seen.statuses {
        assert_clear_refusal(status);
    }
    server.assert_alive_and_calm();
    eprintln!(
        "disk full ({}): {} IOUs acknowledged, {} refused in {} batches; first status: {:?}",
        fault.name(),
        seen.acked.len(),
        seen.refused.len(),
        seen.statuses.len(),
        seen.statuses[0]
    );

    // Still full: a fresh batch is refused again, promptly and clearly.
    let mut ingest = IngestClient::new(connect(&server.addr).await);
    let mut still_full = Seen::default();
    assert!(!submit(&mut ingest, batch(10, 0, BATCH_LEN), &mut still_full).await, "nothing is written on a full disk");
    assert_clear_refusal(&still_full.statuses[0]);
    seen.refused.extend(still_full.refused);

    // Space returns: the same process accepts IOUs again, within a bound.
    fault.free();
    let recovery_started = Instant::now();
    let mut attempt = 0u64;
    loop {
        let mut probe = Seen::default();
        if submit(&mut ingest, batch(11, attempt * BATCH_LEN, BATCH_LEN), &mut probe).await {
            seen.acked.extend(probe.acked);
            break;
        }
        assert_clear_refusal(&probe.statuses[0]);
        seen.refused.extend(probe.refused);
        assert!(recovery_started.elapsed() < RECOVERY_LIMIT, "ingest must recover once space returns");
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovery = recovery_started.elapsed();
    for b in 0..5 {
        let mut after = Seen::default();
        assert!(submit(&mut ingest, batch(12, b * BATCH_LEN, BATCH_LEN), &mut after).await, "accepting again");
        seen.acked.extend(after.acked);
    }
    eprintln!("space returned: ingest accepted again after {recovery:?} ({attempt} refused probes)");

    // SIGKILL and restart: every acknowledged IOU is there at its
    // commitment; every refused IOU was never written and is accepted now.
    server.kill();
    server = start_ready(dir.path(), &data_dir, &[], "restart");
    let mut ingest = IngestClient::new(connect(&server.addr).await);
    for chunk in seen.acked.chunks(1_000) {
        let ious = chunk.iter().map(|(iou, _)| iou.clone()).collect();
        let results = ingest.submit_batch(SubmitBatchRequest { batch_id: 1, ious }).await.unwrap().into_inner().results;
        for ((_, commitment), result) in chunk.iter().zip(results) {
            assert_eq!(code_from_proto(result.code), Some(Outcome::Duplicate), "an acknowledged IOU was lost");
            assert_eq!(result.commitment.as_ref().and_then(commitment_from_proto), Some(*commitment));
        }
    }
    let mut refused_then_accepted = 0u64;
    for chunk in seen.refused.chunks(1_000) {
        let results = ingest
            .submit_batch(SubmitBatchRequest { batch_id: 2, ious: chunk.to_vec() })
            .await
            .unwrap()
            .into_inner()
            .results;
        for result in results {
            assert_eq!(code_from_proto(result.code), Some(Outcome::Accepted), "a refused IOU was written anyway");
            refused_then_accepted += 1;
        }
    }
    server.kill();
    let records = verify_clean(&data_dir);
    assert_eq!(records, seen.acked.len() as u64 + refused_then_accepted, "the log holds each IOU once");
    eprintln!(
        "=== disk-full figures ({}) ===\n| acknowledged | refused while full | refused IOUs found written | lost | recovery after space returned |\n|---|---|---|---|---|\n| {} | {} | 0 | 0 | {:.1} s |",
        fault.name(),
        seen.acked.len(),
        seen.refused.len(),
        recovery.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_on_a_full_disk_exits_clearly_then_starts_once_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let fault = Fault::new(dir.path());
    let data_dir = fault.data_dir(dir.path());
    let env = fault.env();
    // Some history, then a stop, then the disk fills while the server is down.
    let mut acked = Seen::default();
    if matches!(fault, Fault::Tmpfs(_)) {
        let server = start_ready(dir.path(), &data_dir, &env, "first");
        let mut c = clients(&server.addr).await;
        register_basics(&mut c.admin, 2, u128::MAX).await;
        for b in 0..5 {
            assert!(submit(&mut c.ingest, batch(20, b * BATCH_LEN, BATCH_LEN), &mut acked).await);
        }
        server.kill();
    }
    fault.fill();
    // The failpoint mode starts a new ledger: its first write (epoch 1) is
    // refused. The tmpfs mode reopens the ledger: RocksDB must write.
    match start_may_exit(dir.path(), &data_dir, &env, "full") {
        Started::Exited { status, stderr } => {
            assert!(!status.success(), "{stderr}");
            assert!(!stderr.contains("panicked"), "a clear error, not a panic:\n{stderr}");
            let lower = stderr.to_lowercase();
            assert!(lower.contains("space") || lower.contains("disk full"), "the error says why:\n{stderr}");
            eprintln!("started on a full disk ({}): exited with {status}: {}", fault.name(), stderr.trim());
        }
        Started::Ready(mut server) => {
            // Allowed only if it then refuses cleanly and stays up.
            server.assert_alive_and_calm();
            let mut ingest = IngestClient::new(connect(&server.addr).await);
            let mut seen = Seen::default();
            if !submit(&mut ingest, batch(21, 0, BATCH_LEN), &mut seen).await {
                assert_clear_refusal(&seen.statuses[0]);
            }
            server.kill();
            panic!("expected a clear refusal to start on a full disk ({} mode)", fault.name());
        }
    }
    fault.free();
    let server = start_ready(dir.path(), &data_dir, &env, "freed");
    let mut c = clients(&server.addr).await;
    if matches!(fault, Fault::Failpoint { .. }) {
        register_basics(&mut c.admin, 2, u128::MAX).await;
    }
    for (iou, commitment) in &acked.acked {
        let results = c
            .ingest
            .submit_batch(SubmitBatchRequest { batch_id: 0, ious: vec![iou.clone()] })
            .await
            .unwrap()
            .into_inner()
            .results;
        assert_eq!(code_from_proto(results[0].code), Some(Outcome::Duplicate));
        assert_eq!(results[0].commitment.as_ref().and_then(commitment_from_proto), Some(*commitment));
    }
    let mut after = Seen::default();
    assert!(submit(&mut c.ingest, batch(22, 0, BATCH_LEN), &mut after).await, "accepting once space returned");
    server.kill();
    verify_clean(&data_dir);
}

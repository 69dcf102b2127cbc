//! The operator's view of the ledger through the `tally` binary: `ledger
//! info`, `ledger journal` and `ledger verify`, the migration of a ledger
//! written by the previous format, and the configurations `tally serve`
//! refuses (each with a reason, none a silent fallback).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tally_ingest::proto::{self, SubmitBatchRequest};

fn data_arg(data: &Path) -> &str {
    data.to_str().unwrap()
}

fn tally_json(args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = run_tally(args);
    assert!(ok, "tally {args:?} failed:\n{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("tally {args:?} printed non-JSON ({e}): {stdout}"))
}

/// Unpacks `tests/fixtures/ledger-format-<format>.tar.gz` (see its README) into `dir`.
fn unpack_format(dir: &Path, format: u32) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/ledger-format-{format}.tar.gz"));
    let status = Command::new("tar").arg("xzf").arg(&fixture).arg("-C").arg(dir).status().expect("tar runs");
    assert!(status.success(), "unpacking {}", fixture.display());
    dir.join("ledger")
}

#[test]
fn a_format_1_ledger_is_refused_read_only_then_migrated_by_serve() {
    let dir = tempfile::tempdir().unwrap();
    let data = unpack_format(dir.path(), 1);

    // Read-only tools never misread the old format: they say what to do.
    for command in [&["ledger", "verify"][..], &["ledger", "info"], &["ledger", "journal"]] {
        let args: Vec<&str> = command.iter().copied().chain(["--data-dir", data_arg(&data)]).collect();
        let (ok, stdout, stderr) = run_tally(&args);
        assert!(!ok, "{command:?} must refuse a format-1 ledger: {stdout}");
        assert!(stderr.contains("format 1") && stderr.contains("tally serve"), "{command:?}: {stderr}");
    }

    // `tally serve` migrates it in place and serves it.
    let server = ServerProcess::start(&data);
    let info = tally_json(&["ledger", "info", "--json", "--data-dir", data_arg(&data)]);
    assert_eq!(info["format"], 2, "{info}");
    assert_eq!(info["migrated_from_format"], 1, "{info}");
    assert_eq!(info["log_format2_from_seq"], 2_988, "format-2 records begin after the 2,987 old ones: {info}");
    let journal = tally_json(&["ledger", "journal", "--json", "--data-dir", data_arg(&data)]);
    assert!(journal[0]["action"].as_str().unwrap().contains("migrated from format 1 to 2"), "{journal}");
    assert!(journal[1]["action"].as_str().unwrap().contains("EngineStarted"), "{journal}");
    let report = tally_json(&["ledger", "verify", "--json", "--data-dir", data_arg(&data)]);
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(report["records"], 2_987, "{report}");
    let notices = report["notices"].to_string();
    assert!(notices.contains("format 1"), "the audit says what it could not re-check: {notices}");
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_info_and_journal_name_the_ledger_and_who_changed_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    let server = ServerProcess::start(&data);
    let mut clients = clients(&server.addr).await;
    register_basics(&mut clients.admin, 1, 1_000_000).await;
    let info = tally_json(&["ledger", "info", "--json", "--data-dir", data_arg(&data)]);
    let ledger_id = info["ledger_id"].as_str().unwrap().to_owned();
    assert_eq!(ledger_id.len(), 32, "{info}");
    assert_eq!(info["format"], 2);
    let (ok, text, _) = run_tally(&["ledger", "info", "--data-dir", data_arg(&data)]);
    assert!(ok && text.contains(&ledger_id), "{text}");

    let journal = tally_json(&["ledger", "journal", "--json", "--data-dir", data_arg(&data)]);
    let entries = journal.as_array().unwrap();
    assert!(entries[0]["action"].as_str().unwrap().starts_with("genesis"), "{journal}");
    // register_basics: one asset, one payer, two payees, by the admin token
    // holder at the test's address.
    let admin: Vec<&serde_json::Value> =
        entries.iter().filter(|e| e["actor"].as_str().unwrap().starts_with("admin-token")).collect();
    assert_eq!(admin.len(), 4, "{journal}");
    assert!(admin.iter().all(|e| e["actor"].as_str().unwrap().contains("127.0.0.1")), "{journal}");
    for pair in entries.windows(2) {
        assert_eq!(pair[1]["seq"].as_u64(), pair[0]["seq"].as_u64().map(|s| s + 1), "{journal}");
    }
    let paged =
        tally_json(&["ledger", "journal", "--json", "--from", "2", "--limit", "2", "--data-dir", data_arg(&data)]);
    assert_eq!(paged.as_array().unwrap().len(), 2);
    assert_eq!(paged[0]["seq"], 2);
    server.kill();
}

/// `--unsafe-skip-signature-verification` (benchmarks only) is journaled,
/// and `tally ledger verify` says so even when every signature checks out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_skipped_signature_checks_is_named_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    let options = ServeOptions { args: &["--unsafe-skip-signature-verification"], ..ServeOptions::default() };
    let (server, _) = ServerProcess::start_opts(&data, &options);
    let mut clients = clients(&server.addr).await;
    register_basics(&mut clients.admin, 1, 1_000_000).await;
    let iou = signed_iou(&signer(1), "site-a.example", 5, nonce(1, 1));
    let results = clients.ingest.submit_batch(SubmitBatchRequest { batch_id: 1, ious: vec![iou] }).await.unwrap();
    assert_eq!(results.into_inner().results[0].code, proto::IouCode::Accepted as i32);
    server.kill();

    let (ok, stdout, stderr) = run_tally(&["ledger", "verify", "--data-dir", data_arg(&data)]);
    assert!(ok, "the signatures are good, so the ledger is clean: {stdout}{stderr}");
    let notice = stdout.lines().find(|l| l.starts_with("NOTICE:")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(notice.contains("without") && notice.contains("signature"), "{notice}");
}

/// Without an EVM rail configured, serving and settling never mention one;
/// and a test build's `serve` warns that it has failpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_evm_warning_without_an_evm_rail() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    let log = dir.path().join("serve.log");
    let (server, _) = ServerProcess::start_opts(&data, &ServeOptions { output: Some(&log), ..ServeOptions::default() });
    let addr = server.addr.clone();
    let mut clients = clients(&addr).await;
    register_basics(&mut clients.admin, 1, 1_000_000).await;
    let iou = signed_iou(&signer(1), "site-a.example", 5, nonce(1, 1));
    clients.ingest.submit_batch(SubmitBatchRequest { batch_id: 1, ious: vec![iou] }).await.unwrap();
    let url = format!("http://{addr}");
    let (ok, stdout, stderr) = run_tally(&["settle", "--server", &url, "--admin-token", TOKEN]);
    // An epoch with no payouts (no rail: the credit carries forward) is still
    // sealed, planned and reported, never "nothing to settle".
    assert!(ok && stderr.contains("sealed epoch 1") && stderr.contains("planned epoch 1"), "{stdout}{stderr}");
    assert!(!stdout.contains("nothing to settle") && stdout.contains("Epoch 1: settled"), "{stdout}");
    server.kill();
    let printed = format!("{}{stdout}{stderr}", std::fs::read_to_string(&log).unwrap());
    assert!(!printed.contains("EVM") && !printed.to_lowercase().contains("evm rail"), "{printed}");
    // A test build says so at startup (release builds have no failpoints).
    assert!(printed.contains("test build: failpoints are compiled in"), "{printed}");
}

/// Serving refuses, with the reason, what would leave the admin API open:
/// an empty admin token (file or setting) and a plaintext admin API on an
/// address other hosts can reach.
#[test]
fn serve_refuses_an_empty_token_and_a_plaintext_admin_api_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    std::fs::create_dir_all(&data).unwrap();
    let serve = |extra: &[&str], env_token: Option<&str>| {
        let mut command = Command::new(tally_binary());
        command
            .args(["serve", "--data-dir", data_arg(&data), "--metrics-addr", "off", "--http-addr", "off"])
            .args(extra)
            .env("TALLY_LOG", "warn")
            .env_remove("TALLY_ADMIN_TOKEN")
            .env_remove("TALLY_ADMIN_ADDR");
        if let Some(token) = env_token {
            command.env("TALLY_ADMIN_TOKEN", token);
        }
        let output = command.output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };

    // An empty token file: refused, never "no auth".
    std::fs::write(data.join("admin-token"), "\n").unwrap();
    let (ok, stderr) = serve(&["--grpc-addr", "127.0.0.1:0"], None);
    assert!(!ok && stderr.contains("admin-token is empty"), "{stderr}");
    // The clients refuse it too.
    let (ok, _, stderr) = run_tally(&["payer", "list", "--data-dir", data_arg(&data)]);
    assert!(!ok && stderr.contains("is empty"), "{stderr}");
    std::fs::remove_file(data.join("admin-token")).unwrap();
    // An empty token setting.
    let (ok, stderr) = serve(&["--grpc-addr", "127.0.0.1:0"], Some(""));
    assert!(!ok && stderr.contains("must not be empty"), "{stderr}");

    // Plaintext admin on every interface: refused before anything binds.
    let (ok, stderr) = serve(&["--grpc-addr", "0.0.0.0:0"], Some(TOKEN));
    assert!(!ok && stderr.contains("plaintext") && stderr.contains("--allow-plaintext-admin"), "{stderr}");
    let (ok, stderr) = serve(&["--grpc-addr", "127.0.0.1:0", "--admin-addr", "0.0.0.0:0"], Some(TOKEN));
    assert!(!ok && stderr.contains("plaintext"), "{stderr}");
    assert!(!data.join("CURRENT").exists(), "a refused configuration opens no ledger");

    // The admin API on a listener of its own (on loopback) starts; that the
    // explicit override lets a non-loopback one start is a unit test of
    // `ServeArgs::resolve` (src/config.rs), since this test must not listen
    // beyond the host.
    let options = ServeOptions { args: &["--admin-addr", "127.0.0.1:0"], ..ServeOptions::default() };
    let (server, ready) = ServerProcess::start_opts(&data, &options);
    assert!(ready["admin_addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{ready}");
    server.kill();
}

/// A ledger a released build wrote in format 2 (commit 44d3fea) is this
/// build's data: it audits clean as it is, the query token it created still
/// reads exactly its scope, and the epoch it left planned but unpaid (its
/// outbox was unusable) is finished by the next start, exactly once.
#[test]
fn a_ledger_written_by_format_2_reads_audits_and_finishes_its_settlement() {
    const RECORDS: u64 = 2_976;
    const READER_TOKEN: &str = "tq_d2dc674ab7f2a0fa3f20c96d5fd98a85dd064cdac49e64582c7a8751708f769e";
    let dir = tempfile::tempdir().unwrap();
    let data = unpack_format(dir.path(), 2);

    let info = tally_json(&["ledger", "info", "--json", "--data-dir", data_arg(&data)]);
    assert_eq!(info["format"], 2, "{info}");
    assert!(info["migrated_from_format"].is_null(), "born in format 2: {info}");
    let report = tally_json(&["ledger", "verify", "--json", "--data-dir", data_arg(&data)]);
    assert_eq!((report["clean"].as_bool(), report["records"].as_u64()), (Some(true), Some(RECORDS)), "{report}");

    // The older build's outbox was a path under a regular file; this start's
    // is a real directory, so the startup resume pays epoch 2.
    let outbox = dir.path().join("outbox");
    let config = dir.path().join("tally.toml");
    std::fs::write(
        &config,
        format!(
            "[settlement]\nfee_bps = 50\noutbox_dir = {outbox:?}\n[settlement.assets.USD]\nrail = \"iso20022\"\n\
             payout_min = \"0.10\"\n[settlement.iso20022]\ndebtor_name = \"Tally Demo Operator\"\n\
             debtor_iban = \"DE89370400440532013000\"\ndebtor_bic = \"COBADEFFXXX\"\n"
        ),
    )
    .unwrap();
    let (server, _) =
        ServerProcess::start_opts(&data, &ServeOptions { config: Some(&config), ..ServeOptions::default() });
    let url = format!("http://{}", server.addr);
    let settled = poll(std::time::Duration::from_secs(30), || {
        let reports = tally_json(&["settlements", "--json", "--server", &url, "--admin-token", TOKEN]);
        let epoch_2 = reports.as_array()?.iter().find(|r| r["epoch"] == 2)?.clone();
        (epoch_2["status"] == "submitted").then_some(epoch_2)
    });
    assert_eq!(settled["batches_open"], 0, "{settled}");
    let files: Vec<_> =
        std::fs::read_dir(&outbox).unwrap().filter_map(|e| e.ok()).filter(|e| e.path().is_file()).collect();
    assert_eq!(files.len(), 1, "one payment file for epoch 2's one payout: {files:?}");
    // A second resume pays nothing again.
    let (ok, stdout, stderr) = run_tally(&["settle", "--resume", "--json", "--server", &url, "--admin-token", TOKEN]);
    assert!(ok, "{stdout}\n{stderr}");
    let files_after = std::fs::read_dir(&outbox).unwrap().filter_map(|e| e.ok()).filter(|e| e.path().is_file()).count();
    assert_eq!(files_after, 1);

    // The payee-scoped token the older build created reads that payee only.
    let rows = tally_json(&["balance", "--json", "--server", &url, "--token", READER_TOKEN]);
    let rows = rows["rows"].as_array().unwrap().clone();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["payee"] == "site-000.example"), "{rows:?}");
    let (ok, _, _) =
        run_tally(&["balance", "--json", "--server", &url, "--token", READER_TOKEN, "--payee", "site-001.example"]);
    assert!(!ok, "another payee's rows are refused");
    server.kill();

    let report = tally_json(&["ledger", "verify", "--json", "--data-dir", data_arg(&data)]);
    assert_eq!(report["clean"], true, "{report}");
}

/// The aged list of open bills over the format-2 fixture: both epochs'
/// bills (each crawler billed for what it owed), aged from their plans
/// (2 December 2026) to a day finance names; a collected bill leaves the
/// list and its amount leaves the totals exactly.
#[test]
fn open_bills_are_aged_and_a_collected_one_leaves_the_list() {
    /// Σ of both epochs' bills, micro-dollars (billed 1.992820 + 0.973833).
    const BILLED: u128 = 2_966_653;
    let dir = tempfile::tempdir().unwrap();
    let data = unpack_format(dir.path(), 2);
    let server = ServerProcess::start(&data);
    let url = format!("http://{}", server.addr);
    let open = |as_of: &str| {
        tally_json(&["bill", "open", "--json", "--as-of", as_of, "--server", &url, "--admin-token", TOKEN])
    };
    let units = |value: &serde_json::Value| value.as_str().unwrap().parse::<u128>().unwrap();

    let aged = open("2027-01-20");
    assert_eq!((aged["open_count"].as_u64(), aged["truncated"].as_bool()), (Some(6), Some(false)), "{aged}");
    let bills = aged["bills"].as_array().unwrap().clone();
    assert_eq!(bills.len(), 6);
    assert!(bills.iter().all(|b| b["bucket"] == "31-60" && b["age_days"] == 49), "{bills:?}");
    assert_eq!(bills.iter().map(|b| units(&b["bill"]["amount"])).sum::<u128>(), BILLED);
    let totals = aged["totals"].as_array().unwrap().clone();
    assert_eq!(totals.len(), 1, "{totals:?}");
    assert_eq!((totals[0]["bucket"].as_str(), totals[0]["count"].as_u64()), (Some("31-60"), Some(6)));
    assert_eq!(units(&totals[0]["amount"]), BILLED);
    assert!(open("2027-06-01")["bills"].as_array().unwrap().iter().all(|b| b["bucket"] == "over-90"));
    assert!(
        open("2026-12-02")["bills"].as_array().unwrap().iter().all(|b| b["bucket"] == "0-30" && b["age_days"] == 0)
    );

    // Collect the oldest bill: it leaves the list, its amount the totals.
    let oldest = &bills[0]["bill"];
    let (epoch, id) = (oldest["epoch"].to_string(), oldest["id"].as_str().unwrap().to_owned());
    let (ok, stdout, stderr) =
        run_tally(&["bill", "paid", "--epoch", &epoch, &id, "--server", &url, "--admin-token", TOKEN]);
    assert!(ok, "{stdout}\n{stderr}");
    let after = open("2027-01-20");
    assert_eq!(after["open_count"], 5);
    assert!(after["bills"].as_array().unwrap().iter().all(|b| b["bill"]["id"] != id.as_str()));
    assert_eq!(units(&after["totals"][0]["amount"]), BILLED - units(&oldest["amount"]));
    let (ok, _, stderr) =
        run_tally(&["bill", "open", "--as-of", "2027-02-30", "--server", &url, "--admin-token", TOKEN]);
    assert!(!ok && stderr.contains("YYYY-MM-DD"), "a date that is not one is refused: {stderr}");
    server.kill();
}

/// "Who changed this payee's bank account, and when, and from what?":
/// `tally audit log` answers from the journal, each value before and after,
/// with the actor of every change; and it shows a whole history in order.
#[test]
fn audit_log_shows_who_changed_a_payout_destination_from_what_to_what() {
    const FIRST: &str = "iban:DE89370400440532013000";
    const SECOND: &str = "iban:GB82WEST12345698765432";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    let server = ServerProcess::start(&data);
    let url = format!("http://{}", server.addr);
    let admin = |args: &[&str]| {
        let args: Vec<&str> = args.iter().copied().chain(["--server", &url, "--admin-token", TOKEN]).collect();
        let (ok, stdout, stderr) = run_tally(&args);
        assert!(ok, "tally {args:?}:\n{stdout}\n{stderr}");
    };
    admin(&["payee", "register", "shop.example", "--payout", FIRST]);
    admin(&["payee", "register", "other.example"]);
    admin(&["payee", "set-payout", "shop.example", SECOND]);
    server.kill();

    let log =
        tally_json(&["audit", "log", "--json", "--touching", "payee/shop.example", "--data-dir", data_arg(&data)]);
    let entries = log.as_array().unwrap();
    assert_eq!(entries.len(), 2, "the registration and the change, not the other payee: {log}");
    let change = |entry: &serde_json::Value| entry["changes"][0].clone();
    let (registered, changed) = (change(&entries[0]), change(&entries[1]));
    assert_eq!(registered["key"], "payee/shop.example");
    assert!(registered["before"].is_null(), "{registered}");
    assert!(registered["after"].as_str().unwrap().contains(FIRST), "{registered}");
    assert!(changed["before"].as_str().unwrap().contains(FIRST), "the value it replaced: {changed}");
    assert!(changed["after"].as_str().unwrap().contains(SECOND), "{changed}");
    assert!(!changed["after"].as_str().unwrap().contains(FIRST), "{changed}");
    for entry in entries {
        let actor = entry["actor"].as_str().unwrap();
        assert!(actor.starts_with("admin-token@127.0.0.1"), "who did it: {actor}");
        assert!(entry["at_ms"].as_u64().unwrap() > 0);
    }
    assert!(entries[1]["action"].as_str().unwrap().contains("SetPayeePayout"), "{log}");

    // Unfiltered, the history is the journal in order, each entry with its writes.
    let all = tally_json(&["audit", "log", "--json", "--data-dir", data_arg(&data)]);
    let all = all.as_array().unwrap();
    assert!(all.len() >= 4, "genesis, epoch 1, the engine's start, three admin changes: {all:?}");
    for pair in all.windows(2) {
        assert_eq!(pair[1]["seq"].as_u64(), pair[0]["seq"].as_u64().map(|s| s + 1));
    }
    let paged = tally_json(&["audit", "log", "--json", "--from", "2", "--limit", "1", "--data-dir", data_arg(&data)]);
    assert_eq!((paged.as_array().unwrap().len(), paged[0]["seq"].as_u64()), (1, Some(2)));
    let (ok, text, _) = run_tally(&["audit", "log", "--touching", "payee/", "--data-dir", data_arg(&data)]);
    assert!(ok && text.contains("before:") && text.contains(SECOND) && text.contains("other.example"), "{text}");
    let near = tally_json(&["audit", "log", "--json", "--touching", "payee/shop", "--data-dir", data_arg(&data)]);
    assert!(near.as_array().unwrap().is_empty(), "a key is matched whole, never by a part of its name: {near}");
}

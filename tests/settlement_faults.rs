//! Settlement under faults, counted: a campaign of rounds, each settling one
//! epoch of a real `tally serve` on a real anvil chain while one fault is
//! injected, then resuming and checking that nothing was paid twice and
//! nothing was missed.
//!
//! The faults:
//! - **crash** at every failpoint between two recorded steps (the process
//!   aborts; `tally serve` resumes at restart), at the first or second hit;
//! - **error** at every failpoint (the step, a rail call or the outbox
//!   returns an error once; `tally settle --resume` in the same process
//!   finishes);
//! - **node killed** while a payout transaction waits in the mempool (SIGKILL
//!   by pid; the node comes back on the same port with the chain it had, the
//!   mempool lost);
//! - **node down** when settlement starts (it comes back later);
//! - **node errors**: the real node refuses the transaction (the treasury
//!   has no gas money) until it is funded again;
//! - **transaction dropped** from the mempool (`anvil_dropAllTransactions`,
//!   automine off), and **nonce taken**: dropped, and another transaction of
//!   the treasury mined at its nonce;
//! - **outbox unwritable**: a file stands where the outbox directory should
//!   be (root ignores permissions; this it cannot write through).
//!
//! After each round, over every epoch so far: each EVM payee's token balance
//! equals the sum of its planned payouts (more is a double payout, less a
//! missed one), and each bank payout is in exactly one published file
//! (`.sent/`), which is also in the outbox.
//!
//! `cargo test --test settlement_faults` runs each fault kind once.
//! `TALLY_FAULT_ROUNDS=N` runs N rounds, choosing faults with the seed
//! `TALLY_FAULT_SEED` (default 1); `scripts/settlement-faults.sh` does that in
//! release mode and prints the figures table. `TALLY_FAULT_ONLY=text` keeps
//! only the fault kinds whose name contains `text`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::chain::*;
use common::*;
use tally_ingest::proto::{
    self, CreditLimit, RegisterPayeeRequest, RegisterPayerRequest, SubmitBatchRequest, UpsertAssetRequest,
};
use tally_settler::evm::Address;

const EVM_PAYEES: u8 = 4;
/// Payees per EVM transaction: 4 payees make 2 transactions per epoch.
const PAYOUTS_PER_TX: usize = 2;
/// Short, so a dropped transaction is noticed quickly.
const RECEIPT_TIMEOUT_S: u64 = 2;
/// The bound on any wait for the engine or the node.
const WAIT_MAX: Duration = Duration::from_secs(90);
const ROUNDS_MAX: usize = 10_000;

/// One fault to inject in a round.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fault {
    /// The engine aborts at the `nth` hit of a failpoint.
    Crash {
        point: &'static str,
        nth: u64,
    },
    /// The failpoint's step fails `times` times in a row (each rerun in the
    /// same process fails again until the fault clears).
    Error {
        point: &'static str,
        times: u64,
    },
    NodeKilled,
    NodeDown,
    NodeErrors,
    TxDropped,
    NonceTaken,
    OutboxUnwritable,
}

impl Fault {
    /// The kind, for the figures table.
    fn kind(&self) -> String {
        match self {
            Fault::Crash { point, .. } => format!("crash {point}"),
            Fault::Error { point, .. } => format!("error {point}"),
            Fault::NodeKilled => "node killed mid-settlement".into(),
            Fault::NodeDown => "node down at start".into(),
            Fault::NodeErrors => "node returns errors".into(),
            Fault::TxDropped => "transaction dropped".into(),
            Fault::NonceTaken => "dropped, nonce taken".into(),
            Fault::OutboxUnwritable => "outbox not writable".into(),
        }
    }
}

/// Points between two recorded steps, and how often each is hit in one
/// epoch of this scenario (2 EVM transactions, 2 bank files).
const CRASH_POINTS: [(&str, u64); 11] = [
    ("settle-after-seal", 1),
    ("settle-after-plan", 1),
    ("settle-after-submitting", 1),
    ("evm-after-prepare", 2),
    ("evm-after-broadcast", 2),
    ("evm-after-receipt", 2),
    ("bank-after-prepare", 2),
    ("bank-mid-write", 2),
    ("bank-after-sent-link", 2),
    ("bank-after-write", 2),
    ("bank-after-record", 2),
];

/// Every fault kind once, at the first hit: the suite's short campaign.
fn catalogue() -> Vec<Fault> {
    let mut faults: Vec<Fault> = CRASH_POINTS.iter().map(|(point, _)| Fault::Crash { point, nth: 1 }).collect();
    faults.extend(tally_settler::failpoint::FAILPOINTS.iter().map(|point| Fault::Error { point, times: 1 }));
    faults.extend([
        Fault::NodeKilled,
        Fault::NodeDown,
        Fault::NodeErrors,
        Fault::TxDropped,
        Fault::NonceTaken,
        Fault::OutboxUnwritable,
    ]);
    faults
}

/// splitmix64: a deterministic stream from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next() % n
    }
}

/// `n` faults chosen by the seed: the catalogue shuffled, cycle after cycle
/// (so every kind comes up once per cycle of 35 rounds), each with random
/// parameters: for a crash point met more than once per epoch, which hit; for
/// an error, how many times in a row (1 to 3).
fn random_faults(rng: &mut Rng, n: usize) -> Vec<Fault> {
    let mut faults = Vec::with_capacity(n);
    while faults.len() < n {
        let mut cycle = catalogue();
        for i in (1..cycle.len()).rev() {
            cycle.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for fault in cycle.into_iter().take(n - faults.len()) {
            faults.push(match fault {
                Fault::Crash { point, .. } => {
                    let hits = CRASH_POINTS.iter().find(|(p, _)| *p == point).map_or(1, |(_, n)| *n);
                    Fault::Crash { point, nth: 1 + rng.below(hits) }
                }
                Fault::Error { point, .. } => Fault::Error { point, times: 1 + rng.below(3) },
                other => other,
            });
        }
    }
    faults
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name} must be a number: {v:?}")))
}

fn evm_address(n: u8) -> Address {
    Address::from([0xB0, n, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0, 0, 0, 0, 0, 0, 0, 0xEE, n])
}

fn evm_payee(n: u8) -> String {
    format!("wallet-{n}.example")
}

const BANK_PAYEES: [(&str, &str, &str); 4] = [
    ("zeitung.example", "EUR", "iban:DE89370400440532013000:COBADEFFXXX"),
    ("blog.example", "EUR", "iban:"), // its IBAN is computed: see `destination`
    ("news-us.example", "USD", "ach:011000015:12345678:checking"),
    ("api-us.example", "USD", "ach:021000021:987654321:savings"),
];

/// A bank destination; a bare `iban:` gets a valid German IBAN.
fn destination(dest: &str) -> String {
    if dest == "iban:" {
        let iban = tally_core::destination::iban_from_bban("DE", "370400440532013001").expect("a valid German BBAN");
        return format!("iban:{iban}");
    }
    dest.to_owned()
}

async fn register(admin: &mut Admin) {
    for code in ["USDC", "EUR", "USD"] {
        let asset = proto::Asset { code: code.into(), scale: 6, enabled: true };
        admin.upsert_asset(UpsertAssetRequest { asset: Some(asset) }).await.unwrap();
    }
    for i in 1..=2u8 {
        let limits = ["USDC", "EUR", "USD"]
            .iter()
            .map(|asset| CreditLimit { asset: (*asset).into(), limit: "1000000000000000".into() })
            .collect();
        admin
            .register_payer(RegisterPayerRequest {
                id: format!("crawler-{i}"),
                display_name: format!("Crawler {i}"),
                keys: vec![signer(i).verifying_key().to_bytes().to_vec()],
                credit_limits: limits,
            })
            .await
            .unwrap();
    }
    let mut payees: Vec<(String, String)> =
        (1..=EVM_PAYEES).map(|n| (evm_payee(n), format!("evm:{}", evm_address(n)))).collect();
    payees.extend(BANK_PAYEES.iter().map(|(id, _, dest)| ((*id).to_owned(), destination(dest))));
    for (id, destination) in payees {
        let payee = proto::Payee {
            id: id.clone(),
            display_name: id,
            payout_destination: destination,
            status: proto::PayeeStatus::Active as i32,
        };
        admin.register_payee(RegisterPayeeRequest { payee: Some(payee) }).await.unwrap();
    }
}

/// One epoch's IOUs: every payee earns from both payers, amounts from the
/// round's random stream (each payout well above its minimum).
async fn submit_round(addr: &str, round: u64, rng: &mut Rng) {
    let mut clients = clients(addr).await;
    let mut ious = Vec::new();
    let mut payees: Vec<(String, &str)> = (1..=EVM_PAYEES).map(|n| (evm_payee(n), "USDC")).collect();
    payees.extend(BANK_PAYEES.iter().map(|(id, asset, _)| ((*id).to_owned(), *asset)));
    for (payee, asset) in payees {
        for payer in 1..=2u8 {
            let amount = 1_000_000 + rng.below(9_000_000);
            let now = now_s();
            let iou = tally_core::Iou {
                network: NETWORK.into(),
                payer_key: signer(payer).verifying_key().to_bytes(),
                payee: payee.clone(),
                asset: asset.into(),
                amount,
                nonce: nonce(1000 + round, ious.len() as u64),
                issued_at_s: now,
                expires_at_s: now + 600,
                resource: format!("https://{payee}/round-{round}"),
            };
            ious.push(signed_with(&signer(payer), iou));
        }
    }
    let results =
        clients.ingest.submit_batch(SubmitBatchRequest { batch_id: round, ious }).await.unwrap().into_inner().results;
    assert!(results.iter().all(|r| r.code == proto::IouCode::Accepted as i32), "{results:?}");
}

fn admin_args(server: &ServerProcess) -> Vec<String> {
    vec!["--server".into(), format!("http://{}", server.addr), "--admin-token".into(), TOKEN.into()]
}

fn tally_args(server: &ServerProcess, args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).chain(admin_args(server)).collect()
}

fn tally(server: &ServerProcess, args: &[&str]) -> (bool, String, String) {
    let args = tally_args(server, args);
    run_tally(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn tally_json(server: &ServerProcess, args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = tally(server, args);
    assert!(ok, "tally {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("tally {args:?} printed non-JSON ({e}): {stdout}"))
}

/// `tally settle` (seal and settle) as a child process, for faults injected
/// while it runs.
fn spawn_settle(server: &ServerProcess) -> Child {
    Command::new(tally_binary())
        .args(tally_args(server, &["settle"]))
        .env("TALLY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_child(mut child: Child) -> bool {
    poll(WAIT_MAX, || child.try_wait().unwrap()).success()
}

/// The settlement report of `epoch`, once it is `submitted` (bank payouts
/// await status reports) with no batch open.
fn wait_settled(server: &ServerProcess, epoch: u64) -> serde_json::Value {
    poll(WAIT_MAX, || {
        let (ok, stdout, _) = tally(server, &["settlements", "--json"]);
        let reports: serde_json::Value = serde_json::from_str(&stdout).ok()?;
        let report = reports.as_array()?.iter().find(|r| r["epoch"] == epoch)?.clone();
        (ok && report["status"] == "submitted" && report["batches_open"] == 0).then_some(report)
    })
}

/// What one check over all epochs found.
#[derive(Default, Debug)]
struct Audit {
    doubles: u64,
    missed: u64,
    problems: Vec<String>,
}

/// Compares every effect on the chain and in the outbox with the plans of
/// epochs `1..=epochs`.
async fn audit(server: &ServerProcess, chain: &Chain, outbox: &Path, epochs: u64) -> Audit {
    let mut audit = Audit::default();
    let mut evm_expected: BTreeMap<String, u128> = BTreeMap::new();
    let mut bank_payouts: Vec<(u64, String, String)> = Vec::new(); // (epoch, asset, id)
    let mut expected_files = BTreeSet::new();
    // File names carry the ledger id (the outbox lives in the data directory).
    let short = ledger_short_id(outbox.parent().unwrap());
    for epoch in 1..=epochs {
        let payouts = tally_json(server, &["payouts", "--epoch", &epoch.to_string(), "--json"]);
        for payout in payouts.as_array().unwrap() {
            let amount: u128 = payout["amount"].as_str().unwrap().parse().unwrap();
            let payee = payout["payee"].as_str().unwrap().to_owned();
            let id = payout["id"].as_str().unwrap().to_owned();
            let asset = payout["asset"].as_str().unwrap().to_owned();
            let state = payout["state"].as_str().unwrap();
            if asset == "USDC" {
                *evm_expected.entry(payee).or_default() += amount;
                if state != "settled" {
                    audit.missed += 1;
                    audit.problems.push(format!("epoch {epoch}: EVM payout {id} is {state}"));
                }
            } else {
                if state != "submitted" {
                    audit.missed += 1;
                    audit.problems.push(format!("epoch {epoch}: bank payout {id} is {state}"));
                }
                let ext = if asset == "EUR" { "xml" } else { "ach" };
                expected_files.insert(bank_file_name(&short, epoch, &asset, 1, ext));
                bank_payouts.push((epoch, asset, id));
            }
        }
    }
    // On chain, to the unit.
    let mut paid_total = 0u128;
    for n in 1..=EVM_PAYEES {
        let expected = evm_expected.get(&evm_payee(n)).copied().unwrap_or(0);
        let balance = chain.balance(evm_address(n)).await;
        paid_total += balance;
        if balance > expected {
            audit.doubles += 1;
            audit.problems.push(format!("wallet {n}: balance {balance} > planned {expected}"));
        } else if balance < expected {
            audit.missed += 1;
            audit.problems.push(format!("wallet {n}: balance {balance} < planned {expected}"));
        }
    }
    let treasury = chain.balance(chain.treasury).await;
    if treasury + paid_total != u128::from(TOKEN_SUPPLY) {
        audit.doubles += 1;
        audit.problems.push(format!("treasury {treasury} + paid {paid_total} != supply: tokens went elsewhere"));
    }
    // Bank files: published (in .sent/) exactly the planned ones, each
    // visible in the outbox with the same bytes, each payout in one file.
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries.map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| !n.starts_with('.')).collect()
            })
            .unwrap_or_default()
    };
    let sent_dir = outbox.join(".sent");
    let (sent, visible) = (names(&sent_dir), names(outbox));
    for name in expected_files.difference(&sent) {
        audit.missed += 1;
        audit.problems.push(format!("{name} was never published"));
    }
    for name in sent.difference(&expected_files) {
        audit.doubles += 1;
        audit.problems.push(format!("{name} was published but is not in any plan"));
    }
    for name in &sent {
        if !visible.contains(name) {
            audit.missed += 1;
            audit.problems.push(format!("{name} is in .sent/ but not in the outbox: the bank never sees it"));
        } else if std::fs::read(outbox.join(name)).unwrap() != std::fs::read(sent_dir.join(name)).unwrap() {
            audit.doubles += 1;
            audit.problems.push(format!("{name} differs from its published copy"));
        }
    }
    let files: Vec<(String, String)> = sent
        .iter()
        .map(|n| (n.clone(), String::from_utf8_lossy(&std::fs::read(sent_dir.join(n)).unwrap()).into()))
        .collect();
    for (epoch, asset, id) in &bank_payouts {
        // pain.001 carries the payout id as EndToEndId; NACHA its first 15
        // characters, upper-cased, as the individual id.
        let needle = if asset == "EUR" {
            format!("<EndToEndId>{id}</EndToEndId>")
        } else {
            id.chars().take(15).collect::<String>().to_ascii_uppercase()
        };
        let prefix = format!("T{short}-E{epoch}-{asset}-");
        let count: usize =
            files.iter().filter(|(n, _)| n.starts_with(&prefix)).map(|(_, text)| text.matches(&needle).count()).sum();
        match count {
            1 => {}
            0 => {
                audit.missed += 1;
                audit.problems.push(format!("bank payout {id} is in no published file"));
            }
            _ => {
                audit.doubles += 1;
                audit.problems.push(format!("bank payout {id} is in {count} published files"));
            }
        }
    }
    audit
}

/// Everything one campaign measured.
#[derive(Default)]
struct Figures {
    injected: BTreeMap<String, u64>,
    completed: u64,
    doubles: u64,
    missed: u64,
}

struct Campaign {
    dir: tempfile::TempDir,
    chain: Chain,
    config: PathBuf,
    data: PathBuf,
    epoch: u64,
}

impl Campaign {
    async fn start() -> Campaign {
        let chain = Chain::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_settlement_config(
            dir.path(),
            &chain,
            SettlementToml {
                fee_bps: 25,
                payouts_per_tx_max: PAYOUTS_PER_TX,
                receipt_timeout_s: Some(RECEIPT_TIMEOUT_S),
            },
        );
        let data = dir.path().join("ledger");
        let server = ServerProcess::start_with(&data, Some(&config), &[]);
        register(&mut clients(&server.addr).await.admin).await;
        server.kill();
        Campaign { dir, chain, config, data, epoch: 0 }
    }

    fn outbox(&self) -> PathBuf {
        self.data.join("outbox")
    }

    fn server(&self, failpoints: Option<String>) -> ServerProcess {
        match failpoints {
            Some(list) => ServerProcess::start_with(&self.data, Some(&self.config), &[("TALLY_FAILPOINTS", &list)]),
            None => ServerProcess::start_with(&self.data, Some(&self.config), &[]),
        }
    }

    /// One round: a new epoch of IOUs, settled under `fault`, resumed, and
    /// audited. Returns the audit.
    async fn round(&mut self, round: u64, fault: &Fault, rng: &mut Rng) -> Audit {
        self.epoch += 1;
        let epoch = self.epoch;
        let server = match fault {
            Fault::Crash { point, nth } => self.server(Some(format!("{point}=abort@{nth}"))),
            Fault::Error { point, times } => self.server(Some(format!("{point}=error*{times}"))),
            _ => self.server(None),
        };
        submit_round(&server.addr, round, rng).await;
        let server = match fault {
            Fault::Crash { point, .. } => {
                let (ok, _, _) = tally(&server, &["settle"]);
                assert!(!ok, "{point}: the engine died mid-settlement, so the command fails");
                let status = server.wait_exit(WAIT_MAX);
                assert!(!status.success(), "{point}: the engine aborted");
                // Restarted without the failpoint, the engine resumes by itself.
                self.server(None)
            }
            Fault::Error { point, times } => {
                let (ok, _, stderr) = tally(&server, &["settle"]);
                assert!(!ok, "{point}: the injected error fails the command");
                assert!(stderr.contains("failpoint"), "{point}: {stderr}");
                // Each attempt meets the point at least once, so at most
                // `times` attempts fail in all.
                let mut attempts = 1;
                while !tally(&server, &["settle", "--resume"]).0 {
                    attempts += 1;
                    assert!(attempts <= *times, "{point}: still failing after {attempts} attempts");
                }
                server
            }
            Fault::NodeKilled => {
                self.chain.automine(false).await;
                let settle = spawn_settle(&server);
                poll_async(|| async { (self.chain.pending().await > 0).then_some(()) }).await;
                let state = self.chain.kill_node().await;
                assert!(!wait_child(settle), "the node died under the settlement, so it fails");
                self.chain.restart_node(state).await;
                tally_json(&server, &["settle", "--resume", "--json"]);
                server
            }
            Fault::NodeDown => {
                let state = self.chain.kill_node().await;
                let (ok, _, _) = tally(&server, &["settle"]);
                assert!(!ok, "settling with the node down fails");
                self.chain.restart_node(state).await;
                tally_json(&server, &["settle", "--resume", "--json"]);
                server
            }
            Fault::NodeErrors => {
                let treasury = format!("{}", self.chain.treasury);
                let gas_money = self.chain.rpc("eth_getBalance", serde_json::json!([treasury, "latest"])).await;
                self.chain.rpc("anvil_setBalance", serde_json::json!([treasury, "0x0"])).await;
                let (ok, _, stderr) = tally(&server, &["settle"]);
                assert!(!ok, "the node refuses the transaction: {stderr}");
                self.chain.rpc("anvil_setBalance", serde_json::json!([treasury, gas_money])).await;
                tally_json(&server, &["settle", "--resume", "--json"]);
                server
            }
            Fault::TxDropped | Fault::NonceTaken => {
                self.chain.automine(false).await;
                let settle = spawn_settle(&server);
                poll_async(|| async { (self.chain.pending().await > 0).then_some(()) }).await;
                self.chain.rpc("anvil_dropAllTransactions", serde_json::json!([])).await;
                assert_eq!(self.chain.pending().await, 0);
                if *fault == Fault::NonceTaken {
                    // Another transaction of the treasury takes the nonce.
                    let treasury = format!("{}", self.chain.treasury);
                    let tx = serde_json::json!({"from": treasury, "to": treasury, "value": "0x0"});
                    self.chain.rpc("eth_sendTransaction", serde_json::json!([tx])).await;
                    self.chain.rpc("evm_mine", serde_json::json!([])).await;
                }
                // The engine waits for a receipt that never comes.
                assert!(!wait_child(settle), "a dropped transaction is never mined: the settlement stops");
                self.chain.automine(true).await;
                tally_json(&server, &["settle", "--resume", "--json"]);
                server
            }
            Fault::OutboxUnwritable => {
                let outbox = self.outbox();
                std::fs::create_dir_all(&outbox).unwrap();
                let away = self.dir.path().join("outbox-away");
                std::fs::rename(&outbox, &away).unwrap();
                std::fs::write(&outbox, b"not a directory").unwrap();
                let (ok, _, stderr) = tally(&server, &["settle"]);
                assert!(!ok && stderr.contains("outbox"), "the outbox cannot be written: {stderr}");
                std::fs::remove_file(&outbox).unwrap();
                std::fs::rename(&away, &outbox).unwrap();
                tally_json(&server, &["settle", "--resume", "--json"]);
                server
            }
        };
        let report = wait_settled(&server, epoch);
        assert!(report["attention"].is_null() || report["attention"] == "", "{report}");
        let mut audit = audit(&server, &self.chain, &self.outbox(), epoch).await;
        // Resuming again changes nothing.
        let again = tally_json(&server, &["settle", "--resume", "--json"]);
        if !again.as_array().unwrap().is_empty() {
            audit.problems.push(format!("a further resume did something: {again}"));
        }
        server.kill();
        audit
    }
}

/// Polls an async check until it yields, at most [`WAIT_MAX`].
async fn poll_async<T, F: std::future::Future<Output = Option<T>>>(mut check: impl FnMut() -> F) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < WAIT_MAX, "condition not reached within {WAIT_MAX:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_fault_campaign() {
    let seed = env_u64("TALLY_FAULT_SEED").unwrap_or(1);
    let rounds = env_u64("TALLY_FAULT_ROUNDS");
    let mut rng = Rng(seed);
    let faults: Vec<Fault> = match rounds {
        // The suite's short version: each fault kind once, in order.
        None => catalogue(),
        Some(n) => {
            let n = usize::try_from(n).unwrap().min(ROUNDS_MAX);
            random_faults(&mut rng, n)
        }
    };
    // `TALLY_FAULT_ONLY=text` keeps the faults whose kind contains it (to
    // reproduce one kind).
    let faults: Vec<Fault> = match std::env::var("TALLY_FAULT_ONLY") {
        Ok(only) => faults.into_iter().filter(|f| f.kind().contains(only.as_str())).collect(),
        Err(_) => faults,
    };
    assert!(!faults.is_empty(), "no fault matches TALLY_FAULT_ONLY");
    let mut campaign = Campaign::start().await;
    let mut figures = Figures::default();
    for (i, fault) in faults.iter().enumerate() {
        let round = i as u64 + 1;
        let audit = campaign.round(round, fault, &mut rng).await;
        *figures.injected.entry(fault.kind()).or_default() += 1;
        figures.completed += 1;
        figures.doubles += audit.doubles;
        figures.missed += audit.missed;
        eprintln!(
            "round {round}/{}: {fault:?}: settled; doubles {} missed {}",
            faults.len(),
            audit.doubles,
            audit.missed
        );
        assert!(audit.problems.is_empty(), "round {round} ({fault:?}): {:#?}", audit.problems);
    }
    println!("\nSettlement fault campaign: seed {seed}, {} rounds\n", faults.len());
    println!("| fault | rounds |");
    println!("|---|---:|");
    for (kind, count) in &figures.injected {
        println!("| {kind} | {count} |");
    }
    println!();
    println!("| faults injected | settlements completed | double payouts | missed payouts |");
    println!("|---:|---:|---:|---:|");
    let injected: u64 = figures.injected.values().sum();
    println!("| {injected} | {} | {} | {} |", figures.completed, figures.doubles, figures.missed);
    assert_eq!((figures.doubles, figures.missed), (0, 0));
    assert_eq!(figures.completed, faults.len() as u64);
}

//! Settlement end to end: a real `tally serve` process, a real anvil node
//! with a real ERC-20 token and the payout contract, real bank files checked
//! with xmllint against the official XSD, and crashes at every failpoint.
//!
//! Each test starts its own anvil and engine and stops them by pid.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::chain::*;
use common::*;
use tally_ingest::proto::{
    self, CreditLimit, LinkPayerRequest, RegisterPayeeRequest, RegisterPayerRequest, SubmitBatchRequest,
    UpsertAssetRequest,
};
use tally_settler::bank;
use tally_settler::evm::Address;

/// The engine configuration of every test here.
const TOML: SettlementToml = SettlementToml { fee_bps: 100, payouts_per_tx_max: 2, receipt_timeout_s: None };

/// A valid German IBAN for `account` (check digits computed).
fn german_iban(account: u64) -> String {
    tally_core::destination::iban_from_bban("DE", &format!("37040044{account:010}")).expect("a valid German BBAN")
}

fn evm_address(n: u8) -> Address {
    Address::from([0xA0 | (n >> 4), n, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, n])
}

/// What the scenario registers and sends.
struct Scenario {
    evm_payees: u8,
}

impl Scenario {
    fn evm_payee(n: u8) -> String {
        format!("wallet-{n}.example")
    }

    async fn register(&self, admin: &mut Admin) {
        for (code, scale) in [("USDC", 6), ("EUR", 6), ("USD", 6)] {
            let asset = proto::Asset { code: code.into(), scale, enabled: true };
            admin.upsert_asset(UpsertAssetRequest { asset: Some(asset) }).await.unwrap();
        }
        let limits = || {
            ["USDC", "EUR", "USD"]
                .iter()
                .map(|asset| CreditLimit { asset: (*asset).into(), limit: "1000000000000".into() })
                .collect()
        };
        for i in 1..=3u8 {
            admin
                .register_payer(RegisterPayerRequest {
                    id: format!("crawler-{i}"),
                    display_name: format!("Crawler {i}"),
                    keys: vec![signer(i).verifying_key().to_bytes().to_vec()],
                    credit_limits: limits(),
                })
                .await
                .unwrap();
        }
        let mut payees: Vec<(String, String)> =
            (1..=self.evm_payees).map(|n| (Scenario::evm_payee(n), format!("evm:{}", evm_address(n)))).collect();
        payees.push(("zeitung.example".into(), format!("iban:{}:COBADEFFXXX", german_iban(1))));
        payees.push(("blog-u.example".into(), format!("iban:{}", german_iban(2))));
        payees.push(("tiny.example".into(), format!("iban:{}", german_iban(3))));
        payees.push(("news-us.example".into(), "ach:011000015:12345678:checking".into()));
        payees.push(("api-us.example".into(), "ach:021000021:987654321:savings".into()));
        payees.push(("nowhere.example".into(), String::new()));
        payees.push(("agent.example".into(), format!("evm:{}", evm_address(200))));
        for (id, destination) in payees {
            let display_name = if id == "zeitung.example" { "Zeitung Müller & Söhne".to_owned() } else { id.clone() };
            admin
                .register_payee(RegisterPayeeRequest {
                    payee: Some(proto::Payee {
                        id,
                        display_name,
                        payout_destination: destination,
                        status: proto::PayeeStatus::Active as i32,
                    }),
                })
                .await
                .unwrap();
        }
        // crawler-3 is an agent that also earns: it nets under agent.example.
        admin
            .link_payer(LinkPayerRequest { payer_id: "crawler-3".into(), payee_id: "agent.example".into() })
            .await
            .unwrap();
    }

    /// IOUs: (payer seed, payee, asset, amount in micro-units).
    fn ious(&self) -> Vec<(u8, String, &'static str, u64)> {
        let mut ious = Vec::new();
        for n in 1..=self.evm_payees {
            ious.push((1, Scenario::evm_payee(n), "USDC", 1_000_000 + u64::from(n) * 12_345));
            ious.push((2, Scenario::evm_payee(n), "USDC", 250_000 + u64::from(n)));
        }
        ious.push((1, "agent.example".into(), "USDC", 3_000_000));
        ious.push((3, Scenario::evm_payee(1), "USDC", 1_000_000)); // the agent spends part of its earnings
        ious.push((1, "zeitung.example".into(), "EUR", 12_345_678)); // 12.345678 EUR: 0.005678 carries as precision
        ious.push((2, "zeitung.example".into(), "EUR", 5_000_000));
        ious.push((2, "blog-u.example".into(), "EUR", 2_500_000));
        ious.push((1, "tiny.example".into(), "EUR", 400_000)); // below the 1.00 minimum: carries
        ious.push((1, "news-us.example".into(), "USD", 7_770_000));
        ious.push((2, "api-us.example".into(), "USD", 1_230_000));
        ious.push((2, "nowhere.example".into(), "USDC", 900_000)); // no destination: carries
        ious
    }

    async fn submit(&self, clients: &mut Clients) {
        let ious: Vec<proto::Iou> = self
            .ious()
            .into_iter()
            .enumerate()
            .map(|(i, (payer, payee, asset, amount))| {
                let now = now_s();
                signed_with(
                    &signer(payer),
                    tally_core::Iou {
                        network: NETWORK.into(),
                        payer_key: signer(payer).verifying_key().to_bytes(),
                        payee: payee.clone(),
                        asset: asset.into(),
                        amount,
                        nonce: nonce(7, i as u64),
                        issued_at_s: now,
                        expires_at_s: now + 600,
                        resource: format!("https://{payee}/page"),
                    },
                )
            })
            .collect();
        let results =
            clients.ingest.submit_batch(SubmitBatchRequest { batch_id: 1, ious }).await.unwrap().into_inner().results;
        assert!(results.iter().all(|r| r.code == proto::IouCode::Accepted as i32), "{results:?}");
    }
}

fn tally_json(args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = run_tally(args);
    assert!(ok, "tally {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("tally {args:?} printed non-JSON ({e}): {stdout}"))
}

fn admin_args(server: &ServerProcess) -> Vec<String> {
    vec!["--server".into(), format!("http://{}", server.addr), "--admin-token".into(), TOKEN.into()]
}

fn with_admin<'a>(args: &[&'a str], admin: &'a [String]) -> Vec<&'a str> {
    args.iter().copied().chain(admin.iter().map(String::as_str)).collect()
}

fn payouts(server: &ServerProcess, epoch: u64) -> Vec<serde_json::Value> {
    let admin = admin_args(server);
    let epoch = epoch.to_string();
    tally_json(&with_admin(&["payouts", "--epoch", &epoch, "--json"], &admin)).as_array().unwrap().clone()
}

fn xmllint_valid(file: &Path) {
    let xsd = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/iso20022/pain.001.001.09.xsd");
    let output = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&xsd)
        .arg(file)
        .output()
        .expect("xmllint (Debian libxml2-utils; run scripts/test.sh)");
    assert!(
        output.status.success(),
        "{} is not valid pain.001.001.09: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Checks every effect of a completed epoch-1 settlement: chain balances,
/// outbox files, payout states. Returns the EVM payouts by payee.
async fn check_settled(server: &ServerProcess, chain: &Chain, outbox: &Path, scenario: &Scenario) {
    let payouts = payouts(server, 1);
    let mut evm_total = 0u128;
    let mut by_payee: BTreeMap<String, &serde_json::Value> = BTreeMap::new();
    for payout in &payouts {
        by_payee.insert(payout["payee"].as_str().unwrap().to_owned(), payout);
    }
    // On chain: each EVM payee holds exactly its payout, to the unit (not
    // zero: nothing missed; not twice: nothing doubled).
    for n in 1..=scenario.evm_payees {
        let payout = by_payee[&Scenario::evm_payee(n)];
        assert_eq!(payout["state"], "settled", "{payout}");
        let amount: u128 = payout["amount"].as_str().unwrap().parse().unwrap();
        assert_eq!(chain.balance(evm_address(n)).await, amount, "wallet {n}");
        evm_total += amount;
    }
    let agent: u128 = by_payee["agent.example"]["amount"].as_str().unwrap().parse().unwrap();
    assert_eq!(chain.balance(evm_address(200)).await, agent);
    evm_total += agent;
    let treasury = chain.client().await.treasury();
    assert_eq!(chain.balance(treasury).await, u128::from(TOKEN_SUPPLY) - evm_total);

    // Bank files: exactly one pain.001 and one NACHA file were published
    // (recorded in .sent/), complete; what is still visible in the outbox
    // is among them (the uploader may have taken some).
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    };
    let sent = outbox.join(".sent");
    let short = ledger_short_id(outbox.parent().unwrap());
    let (pain001, ach) = (bank_file_name(&short, 1, "EUR", 1, "xml"), bank_file_name(&short, 1, "USD", 1, "ach"));
    assert_eq!(names(&sent), vec![pain001.clone(), ach.clone()]);
    assert!(names(outbox).iter().all(|n| names(&sent).contains(n)), "{:?}", names(outbox));
    for name in names(outbox) {
        assert_eq!(std::fs::read(outbox.join(&name)).unwrap(), std::fs::read(sent.join(&name)).unwrap());
    }
    // Payment files carry account numbers: readable by their owner only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sent), 0o700, "{}", sent.display());
        for name in names(&sent) {
            assert_eq!(mode(&sent.join(&name)), 0o600, "{name}");
        }
        for name in names(outbox) {
            assert_eq!(mode(&outbox.join(&name)), 0o600, "{name}");
        }
    }
    xmllint_valid(&sent.join(&pain001));
    let nacha = bank::parse_nacha(&std::fs::read(sent.join(&ach)).unwrap()).unwrap();
    let ach_total: u128 = ["news-us.example", "api-us.example"]
        .iter()
        .map(|p| by_payee[*p]["amount"].as_str().unwrap().parse::<u128>().unwrap() / 10_000)
        .sum();
    assert_eq!(nacha.total_credit_cents, ach_total);
    for payee in ["zeitung.example", "blog-u.example", "news-us.example", "api-us.example"] {
        assert_eq!(by_payee[payee]["state"], "submitted", "{payee}");
    }
    // `tally payouts` names the file each bank payout went into.
    for (payee, file) in [("zeitung.example", &pain001), ("news-us.example", &ach), ("api-us.example", &ach)] {
        assert_eq!(by_payee[payee]["file_name"].as_str(), Some(file.as_str()), "{payee}");
    }
    assert!(!by_payee.contains_key("tiny.example"), "below the minimum: carried, not paid");
    assert!(!by_payee.contains_key("nowhere.example"), "no destination: carried, not paid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_every_rail_and_imports_bank_status() {
    let chain = Chain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_settlement_config(dir.path(), &chain, TOML);
    let data = dir.path().join("ledger");
    let server = ServerProcess::start_with(&data, Some(&config), &[]);
    let mut clients = clients(&server.addr).await;
    let scenario = Scenario { evm_payees: 5 };
    scenario.register(&mut clients.admin).await;
    scenario.submit(&mut clients).await;
    let admin = admin_args(&server);

    // A dry run seals nothing and pays nothing.
    let preview = tally_json(&with_admin(&["settle", "--dry-run", "--json"], &admin));
    assert_eq!(preview["epoch"], 1);
    assert_eq!(chain.balance(evm_address(1)).await, 0);

    let reports = tally_json(&with_admin(&["settle", "--json"], &admin));
    let report = &reports[0];
    assert_eq!(report["epoch"], 1);
    assert_eq!(report["status"], "submitted", "bank payouts await status: {report}");
    assert_eq!(report["batch_count"], 5, "3 EVM transactions (2 payouts each) + 1 pain.001 + 1 NACHA: {report}");
    assert!(report["gas_per_settled_iou"].as_u64().unwrap() > 0);
    let usdc = report["figures"].as_array().unwrap().iter().find(|f| f["asset"] == "USDC").unwrap();
    // Conservation, as finance reads it: paid + fees + carried = billed + carried in.
    let n = |k: &str| usdc[k].as_str().unwrap().parse::<u128>().unwrap();
    assert_eq!(n("paid") + n("fees") + n("carried_out"), n("billed") + n("carried_in"));
    assert_eq!(n("carried_out"), 900_000, "the payee without a destination");
    check_settled(&server, &chain, &dir.path().join("ledger/outbox"), &scenario).await;

    // The agent's spending netted against its earnings: 3.00 earned − 1.00
    // spent = 2.00, less the 1 % fee.
    let agent = payouts(&server, 1).into_iter().find(|p| p["payee"] == "agent.example").unwrap();
    assert_eq!(agent["net_credit"], "2000000");
    assert_eq!(agent["amount"], "1980000");

    // The statement ties the payout to the aggregates behind it.
    let statement = tally_json(&with_admin(
        &["statement", "--epoch", "1", "--payee", "zeitung.example", "--format", "json"],
        &admin,
    ));
    let credited: u128 = statement["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["amount"].as_str().unwrap().parse::<u128>().unwrap())
        .sum();
    assert_eq!(credited, 17_345_678);
    let payout = &statement["payouts"][0];
    assert_eq!(payout["net_credit"], "17345678");
    let carried: u128 = statement["carried_out"][0]["amount"].as_str().unwrap().parse().unwrap();
    let paid: u128 = payout["amount"].as_str().unwrap().parse().unwrap();
    let fee: u128 = payout["fee"].as_str().unwrap().parse().unwrap();
    assert_eq!(paid + fee + carried, 17_345_678, "paid, fee and sub-cent remainder add up");
    assert_eq!(paid % 10_000, 0, "bank payouts are whole cents");
    let (ok, csv, _) =
        run_tally(&with_admin(&["statement", "--epoch", "1", "--payee", "zeitung.example", "--format", "csv"], &admin));
    assert!(ok && csv.lines().filter(|l| l.starts_with("iou_aggregate,")).count() == 2, "{csv}");

    // The bank accepts one transfer and rejects the other.
    let eur: Vec<serde_json::Value> = payouts(&server, 1).into_iter().filter(|p| p["asset"] == "EUR").collect();
    let (accepted, rejected) = (&eur[0], &eur[1]);
    let report_file = dir.path().join("pain002.xml");
    let message_id = format!("T{}-E1-EUR-1", ledger_short_id(&data));
    let pain002 = bank::write_pain002(&bank::Pain002File {
        version: bank::Pain002Version::V03,
        message_id: "BANK-STATUS-1".into(),
        created_at_ms: 1_800_000_000_000,
        original_message_id: message_id.clone(),
        original_message_name_id: "pain.001.001.09".into(),
        original_payment_info_id: message_id.clone(),
        group_status: Some("PART".into()),
        group_reason: None,
        transactions: vec![
            bank::TransactionStatus::accepted(accepted["id"].as_str().unwrap()),
            bank::TransactionStatus::rejected(rejected["id"].as_str().unwrap(), "AC04", "Closed account"),
        ],
    })
    .unwrap();
    std::fs::write(&report_file, &pain002).unwrap();
    let file_arg = report_file.to_str().unwrap();
    let imported = tally_json(&with_admin(&["bank", "import-status", file_arg, "--json"], &admin));
    assert_eq!((imported["accepted"].as_u64(), imported["rejected"].as_u64()), (Some(1), Some(1)));
    // Importing the same report again changes nothing.
    let again = tally_json(&with_admin(&["bank", "import-status", file_arg, "--json"], &admin));
    assert_eq!(again["unchanged"], 2);
    let states: BTreeMap<String, String> = payouts(&server, 1)
        .into_iter()
        .map(|p| (p["id"].as_str().unwrap().to_owned(), p["state"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(states[accepted["id"].as_str().unwrap()], "settled");
    assert_eq!(states[rejected["id"].as_str().unwrap()], "rejected");

    // The rejected payout (amount and fee) carries into epoch 2 and is paid then.
    let rejected_credit: u128 = rejected["amount"].as_str().unwrap().parse::<u128>().unwrap()
        + rejected["fee"].as_str().unwrap().parse::<u128>().unwrap();
    let second = tally_json(&with_admin(&["settle", "--json"], &admin));
    assert_eq!(second[0]["epoch"], 2);
    let eur2 = second[0]["figures"].as_array().unwrap().iter().find(|f| f["asset"] == "EUR").unwrap().clone();
    let carried_in: u128 = eur2["carried_in"].as_str().unwrap().parse().unwrap();
    assert!(carried_in >= rejected_credit, "the rejection carried in: {eur2}");
    let epoch2 = payouts(&server, 2);
    assert!(epoch2.iter().any(|p| p["payee"] == rejected["payee"]), "repaid in epoch 2: {epoch2:?}");
    server.kill();
}

/// Crashes `tally serve` at `failpoint` during settlement, restarts it
/// without, and checks the epoch completes with every payout made exactly
/// once.
async fn crash_and_resume(failpoint: &str) {
    crash_and_resume_with(failpoint, false).await;
}

/// With `uploader_takes_files`, the bank uploader empties the outbox while
/// the engine is down: the resume must not publish anything again.
async fn crash_and_resume_with(failpoint: &str, uploader_takes_files: bool) {
    let chain = Chain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_settlement_config(dir.path(), &chain, TOML);
    let data = dir.path().join("ledger");
    let scenario = Scenario { evm_payees: 5 };
    let server = ServerProcess::start_with(&data, Some(&config), &[("TALLY_FAILPOINTS", failpoint)]);
    let mut clients = clients(&server.addr).await;
    scenario.register(&mut clients.admin).await;
    scenario.submit(&mut clients).await;
    drop(clients);
    let admin = admin_args(&server);
    let (ok, _, _) = run_tally(&with_admin(&["settle"], &admin));
    assert!(!ok, "{failpoint}: the engine died mid-settlement, so the command fails");
    let status = server.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{failpoint}: the engine aborted");
    let outbox = data.join("outbox");
    let mut taken = Vec::new();
    if uploader_takes_files {
        for entry in std::fs::read_dir(&outbox).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() && !path.file_name().unwrap().to_string_lossy().starts_with('.') {
                std::fs::remove_file(&path).unwrap();
                taken.push(path);
            }
        }
        assert!(!taken.is_empty(), "{failpoint}: a file was published before the crash");
    }

    // Restart without the failpoint: startup resumes the epoch by itself.
    let server = ServerProcess::start_with(&data, Some(&config), &[]);
    let admin = admin_args(&server);
    let settled = poll(Duration::from_secs(60), || {
        let (ok, stdout, _) = run_tally(&with_admin(&["settlements", "--json"], &admin));
        let reports: serde_json::Value = serde_json::from_str(&stdout).ok()?;
        let first = reports.as_array()?.first()?.clone();
        (ok && first["status"] == "submitted").then_some(first)
    });
    assert_eq!(settled["batches_open"], 0, "{failpoint}: {settled}");
    check_settled(&server, &chain, &data.join("outbox"), &scenario).await;
    for path in &taken {
        assert!(!path.exists(), "{failpoint}: {} was published a second time", path.display());
    }

    // Resuming again is a no-op: balances and files stay as they are.
    let again = tally_json(&with_admin(&["settle", "--resume", "--json"], &admin));
    assert!(again.as_array().unwrap().is_empty(), "{failpoint}: {again}");
    check_settled(&server, &chain, &data.join("outbox"), &scenario).await;
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_seal() {
    crash_and_resume("settle-after-seal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_plan() {
    crash_and_resume("settle-after-plan").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_signing_before_broadcast() {
    crash_and_resume("evm-after-prepare").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_broadcast_before_receipt() {
    crash_and_resume("evm-after-broadcast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_transactions() {
    crash_and_resume("evm-after-receipt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_halfway_through_a_bank_file() {
    crash_and_resume("bank-mid-write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_bank_file_before_recording_it() {
    crash_and_resume("bank-after-write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_bank_file_then_uploader_takes_it() {
    crash_and_resume_with("bank-after-write", true).await;
}

/// The engine starts and ingests while the chain is unreachable; settling
/// then stops with needs-attention (the plan is recorded, nothing is paid),
/// and the rail connects on a later attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_chain_does_not_stop_the_engine() {
    let chain = Chain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_settlement_config(dir.path(), &chain, TOML);
    // Point the engine at a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(&chain.rpc_url, &format!("http://{closed}"));
    std::fs::write(&config, text).unwrap();
    let data = dir.path().join("ledger");
    let server = ServerProcess::start_with(&data, Some(&config), &[]);
    let mut clients = clients(&server.addr).await;
    let scenario = Scenario { evm_payees: 2 };
    scenario.register(&mut clients.admin).await;
    scenario.submit(&mut clients).await;
    let admin = admin_args(&server);
    let (ok, _, stderr) = run_tally(&with_admin(&["settle"], &admin));
    assert!(!ok && stderr.contains("EVM"), "{stderr}");
    let reports = tally_json(&with_admin(&["settlements", "--json"], &admin));
    assert_eq!(reports[0]["status"], "needs-attention", "{reports}");
    assert!(reports[0]["attention"].as_str().unwrap().contains("batch 0"), "{reports}");
    assert_eq!(chain.balance(evm_address(1)).await, 0, "nothing paid");
    server.kill();
}

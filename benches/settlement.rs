//! End-of-day settlement of a large epoch, phase by phase, on real parts.
//!
//! `cargo bench --bench settlement` settles one epoch of 1,000,000 IOUs from
//! 10,000 payers to 1,000 payees on a real RocksDB ledger, with half the
//! payees paid on a real anvil chain (OpenZeppelin ERC-20 through the
//! `TallyPayout` contract), 30 % by an ISO 20022 pain.001 file and 20 % by a
//! NACHA file, and prints the time and peak memory of each phase:
//!
//! | phase | what happens |
//! |---|---|
//! | seal | one writer command: the epoch closes, the next opens |
//! | net + batch | read every aggregate of the epoch, net, cut batches (`plan::plan_epoch`) |
//! | record plan | one fsynced writer command: payouts, bills, carries, batches |
//! | submit | sign, send and confirm the EVM transactions; write both bank files |
//!
//! It then pays 20 IOUs one by one with plain ERC-20 transfers on the same
//! chain, so gas per settled IOU is compared with gas per IOU paid alone.
//!
//! Peak memory per phase is the process's high-water RSS, reset before each
//! phase through `/proc/self/clear_refs` (Linux). Ingest (signing and the
//! writer's group commits) is set-up here, measured by `loadgen`.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) the same code
//! runs on 20,000 IOUs from 200 payers to 50 payees, so CI checks it works.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tally_core::settlement::SettlementStatus;
use tally_core::{Asset, Iou, Outcome, Payee, SignedIou};
use tally_ledger::{AdminCommand, AppendItem, SettlementCommand};
use tally_settler::config::{AssetRailConfig, EvmSettings, Iso20022Settings, NachaSettings};
use tally_settler::evm::{self, Address, AnvilNode, EvmClient, EvmConfig, U256};
use tally_settler::plan::{BatchLimits, Proposal, plan_epoch};
use tally_settler::{SettleRequest, SettlementConfig, Settler};

struct Size {
    ious: usize,
    payers: usize,
    payees: usize,
}

const FULL: Size = Size { ious: 1_000_000, payers: 10_000, payees: 1_000 };
const SMOKE: Size = Size { ious: 20_000, payers: 200, payees: 50 };
const APPEND_BATCH: usize = 4_096;
const SINGLE_TRANSFERS: usize = 20;
const TOKEN_SUPPLY: u64 = u64::MAX / 2;

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the high-water RSS mark (VmHWM) to the current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

struct Phase {
    name: &'static str,
    elapsed: Duration,
    peak_rss_mib: u64,
}

fn timed<T>(phases: &mut Vec<Phase>, name: &'static str, f: impl FnOnce() -> T) -> T {
    reset_peak();
    let started = Instant::now();
    let value = f();
    phases.push(Phase { name, elapsed: started.elapsed(), peak_rss_mib: rss_kib("VmHWM:") / 1024 });
    value
}

fn rail_of(payee: usize) -> (&'static str, String) {
    match payee % 10 {
        0..=4 => {
            let mut address = [0u8; 20];
            address[0] = 0xB0;
            address[16..].copy_from_slice(&(payee as u32 + 1).to_be_bytes());
            ("USDC", format!("evm:0x{}", hex::encode(address)))
        }
        5..=7 => ("EUR", format!("iban:{}", german_iban(payee as u64 + 1))),
        _ => ("USD", format!("ach:011000015:{}:checking", 1_000_000 + payee)),
    }
}

/// A valid German IBAN for `account` (check digits computed).
fn german_iban(account: u64) -> String {
    tally_core::destination::iban_from_bban("DE", &format!("37040044{account:010}")).expect("a valid German BBAN")
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let size = if full { FULL } else { SMOKE };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(size));
}

async fn run(size: Size) {
    println!("settlement bench: {} IOUs, {} payers, {} payees", size.ious, size.payers, size.payees);
    let node = AnvilNode::start().expect("anvil (run scripts/test.sh to install it)");
    let key = node.private_keys()[0].clone();
    let token = evm::deploy_test_stablecoin(&node.rpc_url(), node.chain_id(), &key, U256::from(TOKEN_SUPPLY))
        .await
        .expect("deploy token");
    let contract = evm::deploy_payout_contract(&node.rpc_url(), node.chain_id(), &key).await.expect("deploy payout");
    let evm_config = EvmConfig {
        rpc_url: node.rpc_url(),
        chain_id: node.chain_id(),
        token,
        token_decimals: 6,
        payout_contract: contract,
        gas_per_tx_max: 10_000_000,
        receipt_timeout: Duration::from_secs(60),
    };
    let client = EvmClient::connect(evm_config, &key).await.expect("connect");
    client.approve_payout_contract(U256::from(TOKEN_SUPPLY)).await.expect("approve");

    let dir = tempfile::tempdir().expect("temp dir");
    let engine = tally_ingest::Engine::open(tally_ingest::EngineConfig::new(dir.path().join("ledger"), "tally:bench"))
        .expect("engine");
    let writer = engine.pipeline.writer().clone();
    for code in ["USDC", "EUR", "USD"] {
        writer.admin(test_actor(), AdminCommand::UpsertAsset(Asset::new(code, 6, true).unwrap())).await.unwrap();
    }
    let keys: Vec<SigningKey> = (0..size.payers)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            SigningKey::from_bytes(&seed)
        })
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let limits = ["EUR", "USD", "USDC"].iter().map(|a| ((*a).to_owned(), u128::from(u64::MAX))).collect();
        writer
            .admin(
                test_actor(),
                AdminCommand::RegisterPayer {
                    id: format!("crawler-{i:05}"),
                    display_name: format!("Crawler {i}"),
                    keys: vec![key.verifying_key().to_bytes()],
                    credit_limits: limits,
                },
            )
            .await
            .unwrap();
    }
    for payee in 0..size.payees {
        writer
            .admin(
                test_actor(),
                AdminCommand::RegisterPayee(Payee::new(
                    &format!("site-{payee:04}.example"),
                    &format!("Site {payee}"),
                    &rail_of(payee).1,
                )),
            )
            .await
            .unwrap();
    }

    // Ingest (set-up): signed IOUs through the writer, batches of 4,096.
    let started = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(0x005e_771e);
    let now = tally_ledger::unix_now_ms() / 1000;
    let mut appended = 0usize;
    while appended < size.ious {
        let n = APPEND_BATCH.min(size.ious - appended);
        let specs: Vec<(usize, usize, u64)> = (0..n)
            .map(|_| {
                (rng.random_range(0..size.payers), rng.random_range(0..size.payees), rng.random_range(100..10_000))
            })
            .collect();
        let base = appended as u128;
        let items: Vec<AppendItem> = std::thread::scope(|scope| {
            let halves: Vec<_> = specs
                .chunks(n.div_ceil(2).max(1))
                .enumerate()
                .map(|(part, chunk)| {
                    let keys = &keys;
                    let offset = part * n.div_ceil(2).max(1);
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .enumerate()
                            .map(|(i, &(payer, payee, amount))| {
                                let iou = Iou {
                                    network: "tally:bench".into(),
                                    payer_key: keys[payer].verifying_key().to_bytes(),
                                    payee: format!("site-{payee:04}.example"),
                                    asset: rail_of(payee).0.into(),
                                    amount,
                                    nonce: (base + (offset + i) as u128).to_be_bytes(),
                                    issued_at_s: now,
                                    expires_at_s: now + 3_600,
                                    resource: format!("https://site-{payee:04}.example/p"),
                                };
                                let signing_bytes = iou.signing_bytes();
                                let signature = keys[payer].sign(&signing_bytes).to_bytes();
                                AppendItem {
                                    charge: iou.amount,
                                    signed: SignedIou { iou, signature },
                                    evidence: signing_bytes,
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            halves.into_iter().flat_map(|h| h.join().expect("signer thread")).collect()
        });
        let results = writer.append(items).await.expect("append");
        assert!(results.iter().all(|r| r.outcome == Outcome::Accepted));
        appended += n;
    }
    println!("ingest (set-up, signing included): {:.1} s", started.elapsed().as_secs_f64());

    let config = SettlementConfig {
        fee_bps: 25,
        assets: BTreeMap::from([
            ("USDC".into(), AssetRailConfig { rail: "evm".into(), payout_min: Some("0.01".into()) }),
            ("EUR".into(), AssetRailConfig { rail: "iso20022".into(), payout_min: Some("1.00".into()) }),
            ("USD".into(), AssetRailConfig { rail: "nacha".into(), payout_min: Some("1.00".into()) }),
        ]),
        evm: Some(EvmSettings {
            rpc_url: node.rpc_url(),
            chain_id: node.chain_id(),
            token: token.to_string(),
            token_decimals: 6,
            payout_contract: contract.to_string(),
            treasury_key_file: None,
            treasury_key_env: Some("TALLY_BENCH_TREASURY_KEY".into()),
            gas_per_tx_max: 10_000_000,
            payouts_per_tx_max: 100,
            receipt_timeout_s: 60,
        }),
        iso20022: Some(Iso20022Settings {
            debtor_name: "Bench Operator GmbH".into(),
            debtor_iban: "DE89370400440532013000".into(),
            debtor_bic: Some("COBADEFFXXX".into()),
            execution_delay_days: 1,
            transfers_per_file_max: 10_000,
        }),
        nacha: Some(NachaSettings {
            immediate_destination: "011000015".into(),
            immediate_destination_name: "FEDERAL RESERVE BANK".into(),
            immediate_origin: "1234567890".into(),
            immediate_origin_name: "BENCH OPERATOR".into(),
            company_name: "BENCH OPERATOR".into(),
            company_id: "1234567890".into(),
            odfi_routing: "01100001".into(),
            sec_code: "CCD".into(),
            entry_description: "PAYOUT".into(),
            execution_delay_days: 1,
            transfers_per_file_max: 10_000,
        }),
        ..Default::default()
    };
    // SAFETY: set before any other thread reads the environment for this key.
    unsafe { std::env::set_var("TALLY_BENCH_TREASURY_KEY", &key) };
    let ledger = engine.ledger.clone();
    let settler = Settler::new(ledger.clone(), writer.clone(), config.clone(), dir.path()).await.expect("settler");
    let limits =
        BatchLimits { payouts_per_evm_tx: 100, transfers_per_iso20022_file: 10_000, transfers_per_nacha_file: 10_000 };

    let mut phases = Vec::new();
    reset_peak();
    let started = Instant::now();
    writer.admin(test_actor(), AdminCommand::SealEpoch).await.expect("seal");
    phases.push(Phase { name: "seal", elapsed: started.elapsed(), peak_rss_mib: rss_kib("VmHWM:") / 1024 });
    let proposal = timed(&mut phases, "net + batch", || plan_epoch(&ledger, &config, 1, limits).expect("plan"));
    let Proposal { plan, batches, policy, limits } = proposal;
    let figures = plan.figures.clone();
    let (payouts, bills, batch_count) = (plan.payouts.len(), plan.bills.len(), batches.len());
    reset_peak();
    let started = Instant::now();
    // The writer nets the epoch again and records the plan only if it is identical.
    let command = SettlementCommand::RecordPlan { plan: Box::new(plan), batches, policy, limits };
    writer.admin(test_actor(), AdminCommand::Settlement(command)).await.expect("record plan");
    phases.push(Phase { name: "record plan", elapsed: started.elapsed(), peak_rss_mib: rss_kib("VmHWM:") / 1024 });
    reset_peak();
    let started = Instant::now();
    let reports = settler.settle(SettleRequest::new(false, "benchmark"), &|_| {}).await.expect("submit");
    phases.push(Phase {
        name: "submit (anvil + files)",
        elapsed: started.elapsed(),
        peak_rss_mib: rss_kib("VmHWM:") / 1024,
    });
    let report = &reports[0];
    assert_eq!(report.status, SettlementStatus::Submitted, "bank payouts await status reports");

    // The same chain, paying IOUs one at a time.
    let mut single_gas = 0u64;
    for i in 0..SINGLE_TRANSFERS {
        let mut address = [0u8; 20];
        address[0] = 0xC0;
        address[19] = i as u8 + 1;
        single_gas += client.transfer(Address::from(address), U256::from(1_234u64)).await.expect("transfer").gas_used;
    }
    let single_gas_per_iou = single_gas / SINGLE_TRANSFERS as u64;

    println!("\n{:<24} {:>10} {:>14}", "phase", "time", "peak RSS");
    for phase in &phases {
        println!("{:<24} {:>8.1} ms {:>10} MiB", phase.name, phase.elapsed.as_secs_f64() * 1000.0, phase.peak_rss_mib);
    }
    println!("\n{payouts} payouts, {bills} bills, {batch_count} batches");
    for f in &figures {
        println!(
            "{:<5} gross {:>16} from {:>8} IOUs -> {:>5} payouts, paid {:>16} ({}.{:02}% of gross), fees {}",
            f.asset,
            f.gross,
            f.iou_count,
            f.payout_count,
            f.paid,
            f.moved_ppm().unwrap_or(0) / 10_000,
            (f.moved_ppm().unwrap_or(0) % 10_000) / 100,
            f.fees
        );
    }
    let milli_gas = u128::from(report.gas_used) * 1000 / u128::from(report.evm_settled_ious.max(1));
    println!(
        "\nEVM: {} gas for {} settled IOUs = {}.{:03} gas per settled IOU; one ERC-20 transfer per IOU = {} gas \
         ({}x more)",
        report.gas_used,
        report.evm_settled_ious,
        milli_gas / 1000,
        milli_gas % 1000,
        single_gas_per_iou,
        u128::from(single_gas_per_iou) * 1000 / milli_gas.max(1)
    );
    drop(settler);
    tokio::task::spawn_blocking(move || engine.shutdown()).await.expect("shutdown");
}

/// Who the tests' admin commands are recorded as.
fn test_actor() -> tally_core::Actor {
    tally_core::Actor::admin_token("test")
}

//! Settlement identities on a real anvil chain: what stops a payout from
//! being skipped or paid twice when it is not the only thing on the treasury.
//!
//! - Two ledgers (two engines, two data dirs) paying from one treasury
//!   through one payout contract, with the same registrations and the same
//!   IOUs, each pay their payee in full: their batch ids carry the ledger id,
//!   so the contract's once-per-batch-id rule never mistakes one ledger's
//!   payout for the other's (the payee is paid twice, because it was owed
//!   twice).
//! - A payout transaction that was signed, recorded, and then mined but
//!   reverted (the treasury's allowance was withdrawn meanwhile) is never
//!   taken for paid, nor rebroadcast for ever: the epoch needs attention
//!   with the reason, and once the allowance is back, `tally settle --resume`
//!   signs it again with a fresh nonce and pays it exactly once.
//!
//! Each test starts its own anvil and engines and stops them by pid.

mod common;

use std::path::Path;
use std::time::Duration;

use common::chain::*;
use common::*;
use tally_ingest::proto::{self, CreditLimit, RegisterPayeeRequest, RegisterPayerRequest, SubmitBatchRequest};
use tally_settler::evm::{Address, B256, U256, keccak256};

const TOML: SettlementToml = SettlementToml { fee_bps: 100, payouts_per_tx_max: 2, receipt_timeout_s: None };
/// The bound on any wait for an engine.
const WAIT_MAX: Duration = Duration::from_secs(90);
const PAYEES: u8 = 3;

fn payee_address(n: u8) -> Address {
    Address::from([0xB0, n, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0, 0, 0, 0, 0, 0, 0, 0, n])
}

fn payee_id(n: u8) -> String {
    format!("wallet-{n}.example")
}

/// The assets, one payer, `PAYEES` EVM payees; then IOUs from deterministic keys
/// and nonces, so two ledgers fed by this hold the same commitments.
async fn register_and_submit(addr: &str) {
    let mut clients = clients(addr).await;
    // The configuration settles all three; only USDC is used here.
    for code in ["USDC", "EUR", "USD"] {
        let asset = proto::Asset { code: code.into(), scale: 6, enabled: true };
        clients.admin.upsert_asset(proto::UpsertAssetRequest { asset: Some(asset) }).await.unwrap();
    }
    clients
        .admin
        .register_payer(RegisterPayerRequest {
            id: "crawler-1".into(),
            display_name: "Crawler 1".into(),
            keys: vec![signer(1).verifying_key().to_bytes().to_vec()],
            credit_limits: vec![CreditLimit { asset: "USDC".into(), limit: "1000000000".into() }],
        })
        .await
        .unwrap();
    for n in 1..=PAYEES {
        let payee = proto::Payee {
            id: payee_id(n),
            display_name: payee_id(n),
            payout_destination: format!("evm:{}", payee_address(n)),
            status: proto::PayeeStatus::Active as i32,
        };
        clients.admin.register_payee(RegisterPayeeRequest { payee: Some(payee) }).await.unwrap();
    }
    let now = now_s();
    let ious = (1..=PAYEES)
        .map(|n| {
            signed_with(
                &signer(1),
                tally_core::Iou {
                    network: NETWORK.into(),
                    payer_key: signer(1).verifying_key().to_bytes(),
                    payee: payee_id(n),
                    asset: "USDC".into(),
                    amount: 2_000_000 + u64::from(n) * 1_111,
                    nonce: nonce(15, u64::from(n)),
                    issued_at_s: now,
                    expires_at_s: now + 600,
                    resource: format!("https://{}/page", payee_id(n)),
                },
            )
        })
        .collect();
    let results =
        clients.ingest.submit_batch(SubmitBatchRequest { batch_id: 1, ious }).await.unwrap().into_inner().results;
    assert!(results.iter().all(|r| r.code == proto::IouCode::Accepted as i32), "{results:?}");
}

fn admin_args(server: &ServerProcess) -> Vec<String> {
    vec!["--server".into(), format!("http://{}", server.addr), "--admin-token".into(), TOKEN.into()]
}

fn tally(server: &ServerProcess, args: &[&str]) -> (bool, String, String) {
    let admin = admin_args(server);
    let all: Vec<&str> = args.iter().copied().chain(admin.iter().map(String::as_str)).collect();
    run_tally(&all)
}

fn tally_json(server: &ServerProcess, args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = tally(server, args);
    assert!(ok, "tally {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("tally {args:?} printed non-JSON ({e}): {stdout}"))
}

/// One payout of epoch 1 as `tally payouts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Planned {
    payee: String,
    amount: u128,
    id: String,
    batch_index: u32,
    /// The transaction hash, once settled.
    reference: String,
}

/// The payouts of epoch 1, by payee.
fn planned(server: &ServerProcess) -> Vec<Planned> {
    let payouts = tally_json(server, &["payouts", "--epoch", "1", "--json"]);
    let mut planned: Vec<Planned> = payouts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Planned {
            payee: p["payee"].as_str().unwrap().to_owned(),
            amount: p["amount"].as_str().unwrap().parse().unwrap(),
            id: p["id"].as_str().unwrap().to_owned(),
            batch_index: u32::try_from(p["batch_index"].as_u64().unwrap()).unwrap(),
            reference: p["reference"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    planned.sort();
    assert_eq!(planned.len(), usize::from(PAYEES), "{payouts}");
    planned
}

/// The batch ids of epoch 1 as the contract sees them, derived from the
/// ledger's id and the payouts each batch carries.
fn batch_ids(data: &Path, planned: &[Planned]) -> Vec<B256> {
    let (ok, stdout, stderr) = run_tally(&["ledger", "info", "--json", "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "tally ledger info: {stderr}");
    let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let ledger: tally_core::LedgerId = info["ledger_id"].as_str().unwrap().parse().unwrap();
    let batches = planned.iter().map(|p| p.batch_index).max().unwrap() + 1;
    (0..batches)
        .map(|index| {
            let mut ids: Vec<&str> = planned.iter().filter(|p| p.batch_index == index).map(|p| p.id.as_str()).collect();
            ids.sort();
            tally_core::settlement::evm_batch_id(&ledger, 1, index, &ids).parse().unwrap()
        })
        .collect()
}

fn ledger_verify_clean(data: &Path) {
    let (ok, stdout, stderr) = run_tally(&["ledger", "verify", "--json", "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "tally ledger verify: {stdout} {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["clean"], true, "{report}");
}

/// The epoch-1 settlement report once `done` says so (bounded poll).
fn wait_report(server: &ServerProcess, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    poll(WAIT_MAX, || {
        let (ok, stdout, _) = tally(server, &["settlements", "--json"]);
        let reports: serde_json::Value = serde_json::from_str(&stdout).ok()?;
        let first = reports.as_array()?.first()?.clone();
        (ok && done(&first)).then_some(first)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ledgers_on_one_treasury_each_pay_in_full() {
    let chain = Chain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_settlement_config(dir.path(), &chain, TOML);
    let mut plans = Vec::new();
    let mut batches = Vec::new();
    for name in ["ledger-a", "ledger-b"] {
        let data = dir.path().join(name);
        let server = ServerProcess::start_with(&data, Some(&config), &[]);
        register_and_submit(&server.addr).await;
        let settled = tally_json(&server, &["settle", "--json"]);
        assert_eq!(settled[0]["status"], "settled", "{name}: {settled}");
        let plan = planned(&server);
        batches.push(batch_ids(&data, &plan));
        plans.push(plan);
        ledger_verify_clean(&data);
        server.kill();
    }
    let (a, b) = (&plans[0], &plans[1]);
    // 3 payees at 2 per transaction: 2 batches each, none shared.
    assert_eq!(batches[0].len(), 2, "{a:?}");
    let evm = chain.client().await;
    for (id_a, id_b) in batches[0].iter().zip(&batches[1]) {
        assert_ne!(id_a, id_b, "batch ids carry the ledger id");
        let mined_a = evm.batch_executed(*id_a).await.unwrap().expect("ledger a's batch executed");
        let mined_b = evm.batch_executed(*id_b).await.unwrap().expect("ledger b's batch executed");
        assert_ne!(mined_a.tx_hash, mined_b.tx_hash, "each ledger mined its own transaction");
    }
    let mut paid_total = 0u128;
    for (n, (pa, pb)) in (1..=PAYEES).zip(a.iter().zip(b)) {
        // The same payouts (which batch carries which follows the ledger's
        // payout ids, so it may differ).
        assert_eq!((&pa.payee, pa.amount), (&pb.payee, pb.amount), "the same plan");
        assert_eq!(pa.payee, payee_id(n));
        assert_ne!(pa.id, pb.id, "payout ids carry the ledger id");
        assert_ne!(pa.reference, pb.reference, "each payout names its own transaction");
        assert_eq!(chain.balance(payee_address(n)).await, 2 * pa.amount, "{} is paid by both ledgers", pa.payee);
        paid_total += 2 * pa.amount;
    }
    assert_eq!(chain.balance(chain.treasury).await, u128::from(TOKEN_SUPPLY) - paid_total);
}

/// The storage slot of `allowance[owner][spender]` in OpenZeppelin 4.9's
/// ERC-20 (`_balances` at slot 0, `_allowances` at slot 1).
fn allowance_slot(owner: Address, spender: Address) -> B256 {
    let word = |address: Address| B256::left_padding_from(address.as_slice());
    let inner = keccak256([word(owner).as_slice(), B256::with_last_byte(1).as_slice()].concat());
    keccak256([word(spender).as_slice(), inner.as_slice()].concat())
}

/// Sets the treasury's allowance to the payout contract behind the
/// treasury's back: a direct state write on the node, so no transaction of
/// the treasury (and none of its nonces) is involved, as when the allowance
/// is withdrawn between signing and mining.
async fn set_allowance(chain: &Chain, amount: U256) {
    let slot = allowance_slot(chain.treasury, chain.contract);
    let value = B256::from(amount);
    let params = serde_json::json!([chain.token.to_string(), slot.to_string(), value.to_string()]);
    chain.rpc("anvil_setStorageAt", params).await;
    assert_eq!(chain.client().await.allowance().await.unwrap(), amount, "the slot is the allowance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverted_payout_is_signed_again_and_paid_once() {
    let chain = Chain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_settlement_config(dir.path(), &chain, TOML);
    let data = dir.path().join("ledger");

    // Sign and record the first batch's transaction, then die before
    // broadcasting it.
    let server = ServerProcess::start_with(&data, Some(&config), &[("TALLY_FAILPOINTS", "evm-after-prepare")]);
    register_and_submit(&server.addr).await;
    let (ok, _, _) = tally(&server, &["settle"]);
    assert!(!ok, "the engine died mid-settlement");
    assert!(!server.wait_exit(WAIT_MAX).success(), "the engine aborted at the failpoint");

    // The allowance goes; the restarted engine rebroadcasts the recorded
    // bytes, which are mined and revert.
    set_allowance(&chain, U256::ZERO).await;
    let server = ServerProcess::start_with(&data, Some(&config), &[]);
    let report = wait_report(&server, |r| r["status"] == "needs-attention");
    let attention = report["attention"].as_str().unwrap_or_default();
    assert!(attention.contains("reverted"), "{report}");
    for n in 1..=PAYEES {
        assert_eq!(chain.balance(payee_address(n)).await, 0, "nothing is paid by a reverted transaction");
    }
    let treasury_nonce_after_revert = chain.client().await.latest_nonce().await.unwrap();

    // Resuming while the cause persists cannot pay (the estimate of a fresh
    // transaction reverts), and records nothing as paid.
    let (ok, _, stderr) = tally(&server, &["settle", "--resume"]);
    assert!(!ok, "the allowance is still zero: {stderr}");
    assert_eq!(chain.balance(payee_address(1)).await, 0);

    // Fixed: the resume signs again with a fresh nonce and pays once.
    set_allowance(&chain, U256::from(TOKEN_SUPPLY)).await;
    let resumed = tally_json(&server, &["settle", "--resume", "--json"]);
    assert_eq!(resumed[0]["status"], "settled", "{resumed}");
    let report = wait_report(&server, |r| r["status"] == "settled");
    assert_eq!(report["batches_open"], 0, "{report}");
    let mut paid_total = 0u128;
    for (n, payout) in (1..=PAYEES).zip(planned(&server)) {
        assert_eq!(payout.payee, payee_id(n));
        assert_eq!(chain.balance(payee_address(n)).await, payout.amount, "{} is paid exactly once", payout.payee);
        paid_total += payout.amount;
    }
    assert_eq!(chain.balance(chain.treasury).await, u128::from(TOKEN_SUPPLY) - paid_total);
    assert!(chain.client().await.latest_nonce().await.unwrap() > treasury_nonce_after_revert, "a fresh nonce");

    // Again is a no-op; the ledger proves what happened.
    let again = tally_json(&server, &["settle", "--resume", "--json"]);
    assert!(again.as_array().unwrap().is_empty(), "{again}");
    assert_eq!(chain.balance(chain.treasury).await, u128::from(TOKEN_SUPPLY) - paid_total);
    ledger_verify_clean(&data);
    server.kill();
}

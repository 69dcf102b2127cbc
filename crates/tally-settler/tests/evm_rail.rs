//! The EVM rail against a real anvil node (npm `@foundry-rs/anvil-linux-amd64`,
//! installed by `scripts/test.sh`): the real OpenZeppelin ERC-20, the real
//! `TallyPayout` bytecode from `contracts/out/`, transactions signed locally
//! and sent raw. Each test starts its own node on 127.0.0.1 and kills it (by
//! pid) when the node handle drops. A missing anvil fails these tests.

use std::time::Duration;

use alloy::primitives::{Address, B256, U256, keccak256};
use alloy::providers::{Provider, RootProvider};
use tally_settler::evm::{
    AnvilNode, EvmClient, EvmConfig, EvmError, MinedTx, PAY_BATCH_BASE_GAS, PAY_BATCH_GAS_PER_RECIPIENT,
    deploy_payout_contract, deploy_test_stablecoin,
};

/// 1,000,000,000 tokens of 6 decimals.
const SUPPLY: u64 = 1_000_000_000_000_000;
const DEFAULT_GAS_MAX: u64 = 10_000_000;

struct Rig {
    node: AnvilNode,
    client: EvmClient,
}

impl Rig {
    async fn start(gas_per_tx_max: u64) -> Rig {
        let node = AnvilNode::start().expect("anvil must start (run scripts/test.sh to install it)");
        let key = node.private_keys()[0].clone();
        let token = deploy_test_stablecoin(&node.rpc_url(), node.chain_id(), &key, U256::from(SUPPLY)).await.unwrap();
        let payout = deploy_payout_contract(&node.rpc_url(), node.chain_id(), &key).await.unwrap();
        let client = EvmClient::connect(config(&node, token, payout, gas_per_tx_max), &key).await.unwrap();
        // A finite allowance: the worst case for gas (every transferFrom updates it).
        client.approve_payout_contract(U256::from(SUPPLY)).await.unwrap();
        Rig { node, client }
    }

    /// A client for dev account `index` on the same token and contract.
    async fn other_client(&self, index: usize) -> EvmClient {
        let key = self.node.private_keys()[index].clone();
        EvmClient::connect(self.client.config().clone(), &key).await.unwrap()
    }

    fn provider(&self) -> RootProvider {
        RootProvider::new_http(self.node.rpc_url().parse().unwrap())
    }

    async fn pay(&self, batch_id: B256, recipients: &[Address], amounts: &[U256]) -> MinedTx {
        pay_with(&self.client, batch_id, recipients, amounts).await
    }
}

async fn pay_with(client: &EvmClient, batch_id: B256, recipients: &[Address], amounts: &[U256]) -> MinedTx {
    let nonce = client.pending_nonce().await.unwrap();
    let tx = client.prepare_pay_batch(batch_id, recipients, amounts, nonce).await.unwrap();
    let hash = client.broadcast(&tx.raw).await.unwrap();
    assert_eq!(hash, tx.tx_hash);
    client.wait_receipt(hash).await.unwrap()
}

fn config(node: &AnvilNode, token: Address, payout: Address, gas_per_tx_max: u64) -> EvmConfig {
    EvmConfig {
        rpc_url: node.rpc_url(),
        chain_id: node.chain_id(),
        token,
        token_decimals: 6,
        payout_contract: payout,
        gas_per_tx_max,
        receipt_timeout: Duration::from_secs(30),
    }
}

/// `n` fresh, distinct recipient addresses (never funded before).
fn recipients(tag: &str, n: usize) -> Vec<Address> {
    (0..n).map(|i| Address::from_word(keccak256(format!("tally-test-payee/{tag}/{i}")))).collect()
}

/// Distinct amounts, none round: 1.000001 + i × 0.000137 tokens.
fn amounts(n: usize) -> Vec<U256> {
    (0..n as u64).map(|i| U256::from(1_000_001 + i * 137)).collect()
}

fn batch_id(name: &str) -> B256 {
    keccak256(format!("tally-test-batch/{name}"))
}

fn sum(amounts: &[U256]) -> U256 {
    amounts.iter().copied().fold(U256::ZERO, |a, b| a + b)
}

async fn assert_balances(client: &EvmClient, recipients: &[Address], amounts: &[U256]) {
    for (r, a) in recipients.iter().zip(amounts) {
        assert_eq!(client.token_balance(*r).await.unwrap(), *a, "balance of {r}");
    }
}

#[tokio::test]
async fn pays_a_batch_to_the_unit_and_rebroadcast_pays_once() {
    let rig = Rig::start(DEFAULT_GAS_MAX).await;
    let client = &rig.client;
    let (to, amt) = (recipients("fifty", 50), amounts(50));
    let treasury_before = client.token_balance(client.treasury()).await.unwrap();
    assert_eq!(client.batch_executed(batch_id("fifty")).await.unwrap(), None);

    let nonce = client.pending_nonce().await.unwrap();
    let tx = client.prepare_pay_batch(batch_id("fifty"), &to, &amt, nonce).await.unwrap();
    assert_eq!(tx.nonce, nonce);
    assert_eq!(tx.tx_hash, keccak256(&tx.raw));
    assert!(tx.gas_limit <= DEFAULT_GAS_MAX);
    // Preparing sends nothing.
    assert_eq!(client.pending_nonce().await.unwrap(), nonce);

    let hash = client.broadcast(&tx.raw).await.unwrap();
    assert_eq!(hash, tx.tx_hash);
    let mined = client.wait_receipt(hash).await.unwrap();
    assert!(mined.success);
    assert!(mined.gas_used <= tx.gas_limit);
    assert_balances(client, &to, &amt).await;
    assert_eq!(client.token_balance(client.treasury()).await.unwrap(), treasury_before - sum(&amt));

    // The same bytes again (a settler retrying after a crash): Ok, same hash, nothing more paid.
    assert_eq!(client.broadcast(&tx.raw).await.unwrap(), hash);
    assert_eq!(client.broadcast(&tx.raw).await.unwrap(), hash);
    assert_eq!(client.latest_nonce().await.unwrap(), nonce + 1);
    assert_balances(client, &to, &amt).await;
    assert_eq!(client.token_balance(client.treasury()).await.unwrap(), treasury_before - sum(&amt));

    // Found after the fact from the chain alone.
    assert_eq!(client.batch_executed(batch_id("fifty")).await.unwrap(), Some(mined));
    assert_eq!(client.receipt(hash).await.unwrap(), Some(mined));
    assert_eq!(client.receipt(B256::repeat_byte(7)).await.unwrap(), None);
}

#[tokio::test]
async fn the_same_batch_id_is_paid_at_most_once() {
    let rig = Rig::start(DEFAULT_GAS_MAX).await;
    let client = &rig.client;
    let (to, amt) = (recipients("once", 20), amounts(20));
    let id = batch_id("once");

    // Two different transactions for one batch id, both signed before either is
    // mined (the estimate cannot see the conflict yet): the chain pays one.
    let nonce = client.pending_nonce().await.unwrap();
    let first = client.prepare_pay_batch(id, &to, &amt, nonce).await.unwrap();
    let second = client.prepare_pay_batch(id, &to, &amt, nonce + 1).await.unwrap();
    assert_ne!(first.tx_hash, second.tx_hash);
    let first_mined = client.wait_receipt(client.broadcast(&first.raw).await.unwrap()).await.unwrap();
    let second_mined = client.wait_receipt(client.broadcast(&second.raw).await.unwrap()).await.unwrap();
    assert!(first_mined.success);
    assert!(!second_mined.success, "the contract must revert a second payBatch of the same id");
    assert_balances(client, &to, &amt).await;

    // Preparing it again with a fresh nonce is refused before signing, typed.
    let nonce = client.pending_nonce().await.unwrap();
    match client.prepare_pay_batch(id, &to, &amt, nonce).await {
        Err(EvmError::BatchAlreadyExecuted { payer, batch_id }) => {
            assert_eq!((payer, batch_id), (client.treasury(), id));
        }
        other => panic!("expected BatchAlreadyExecuted, got {other:?}"),
    }
    assert_balances(client, &to, &amt).await;
    assert_eq!(client.batch_executed(id).await.unwrap(), Some(first_mined));
}

#[tokio::test]
async fn rebroadcast_while_pending_is_ok_and_a_stolen_nonce_is_typed() {
    let rig = Rig::start(DEFAULT_GAS_MAX).await;
    let client = &rig.client;
    let provider = rig.provider();
    let (to, amt) = (recipients("pending", 5), amounts(5));

    // Stop automine: the transaction sits in the pool between the two sends.
    let _: serde_json::Value = provider.raw_request("evm_setAutomine".into(), (false,)).await.unwrap();
    let nonce = client.pending_nonce().await.unwrap();
    let tx = client.prepare_pay_batch(batch_id("pending"), &to, &amt, nonce).await.unwrap();
    assert_eq!(client.broadcast(&tx.raw).await.unwrap(), tx.tx_hash);
    assert_eq!(client.broadcast(&tx.raw).await.unwrap(), tx.tx_hash, "already known in the pool is Ok");
    assert_eq!(client.receipt(tx.tx_hash).await.unwrap(), None);
    assert_eq!(client.pending_nonce().await.unwrap(), nonce + 1);
    assert_eq!(client.latest_nonce().await.unwrap(), nonce);
    let _: serde_json::Value = provider.raw_request("evm_mine".into(), ()).await.unwrap();
    assert!(client.wait_receipt(tx.tx_hash).await.unwrap().success);
    assert_balances(client, &to, &amt).await;
    let _: serde_json::Value = provider.raw_request("evm_setAutomine".into(), (true,)).await.unwrap();

    // A different transaction signed for a nonce that is already spent.
    let stale = client.prepare_pay_batch(batch_id("stale"), &to, &amt, nonce).await.unwrap();
    match client.broadcast(&stale.raw).await {
        Err(EvmError::NonceTooLow { tx_hash, nonce: n, .. }) => assert_eq!((tx_hash, n), (stale.tx_hash, nonce)),
        other => panic!("expected NonceTooLow, got {other:?}"),
    }
    assert_balances(client, &to, &amt).await;

    // Garbage never reaches the node.
    assert!(matches!(client.broadcast(&[0x02, 0xff, 0x00]).await, Err(EvmError::Abi(_))));
    assert!(matches!(client.broadcast(&[]).await, Err(EvmError::Abi(_))));

    // A receipt that never comes is a typed timeout, within the bound.
    let _: serde_json::Value = provider.raw_request("evm_setAutomine".into(), (false,)).await.unwrap();
    let mut config = client.config().clone();
    config.receipt_timeout = Duration::from_millis(300);
    let short = EvmClient::connect(config, &rig.node.private_keys()[0]).await.unwrap();
    let nonce = short.pending_nonce().await.unwrap();
    let tx = short.prepare_pay_batch(batch_id("never"), &to, &amt, nonce).await.unwrap();
    short.broadcast(&tx.raw).await.unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(short.wait_receipt(tx.tx_hash).await, Err(EvmError::ReceiptTimeout { .. })));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn chunks_by_recipients_per_tx_max_stay_under_the_gas_cap() {
    let gas_max = 1_000_000;
    let rig = Rig::start(gas_max).await;
    let client = &rig.client;
    let per_tx = client.recipients_per_tx_max();
    assert!(per_tx >= 10, "{per_tx}");
    let n = per_tx * 3 + 7;
    let (to, amt) = (recipients("chunks", n), amounts(n));
    let mut total_gas = 0;
    for (i, (to_chunk, amt_chunk)) in to.chunks(per_tx).zip(amt.chunks(per_tx)).enumerate() {
        let nonce = client.pending_nonce().await.unwrap();
        let tx = client.prepare_pay_batch(batch_id(&format!("chunks/{i}")), to_chunk, amt_chunk, nonce).await.unwrap();
        assert!(tx.gas_limit <= gas_max, "gas limit {} > {gas_max}", tx.gas_limit);
        let mined = client.wait_receipt(client.broadcast(&tx.raw).await.unwrap()).await.unwrap();
        assert!(mined.success);
        assert!(mined.gas_used <= gas_max);
        total_gas += mined.gas_used;
    }
    assert_balances(client, &to, &amt).await;
    println!("{n} recipients in chunks of {per_tx} under a {gas_max} gas cap: {total_gas} gas");

    // One chunk too many recipients for the cap is refused before signing.
    let too_many = per_tx * 2;
    let (to, amt) = (recipients("too-many", too_many), amounts(too_many));
    let nonce = client.pending_nonce().await.unwrap();
    match client.prepare_pay_batch(batch_id("too-many"), &to, &amt, nonce).await {
        Err(EvmError::GasLimitExceeded { estimated, max }) => assert!(estimated > max && max == gas_max),
        other => panic!("expected GasLimitExceeded, got {other:?}"),
    }
}

#[tokio::test]
async fn batch_ids_belong_to_their_payer() {
    let rig = Rig::start(DEFAULT_GAS_MAX).await;
    let treasury = &rig.client;
    let other = rig.other_client(1).await;
    assert_ne!(other.treasury(), treasury.treasury());
    treasury.transfer(other.treasury(), U256::from(10_000_000u64)).await.unwrap();
    other.approve_payout_contract(U256::from(10_000_000u64)).await.unwrap();

    // Another account uses the treasury's next batch id first (a squatting attempt)...
    let id = batch_id("shared");
    let (to_other, amt_other) = (recipients("squatter", 2), vec![U256::from(1u64), U256::from(2u64)]);
    let squat = pay_with(&other, id, &to_other, &amt_other).await;
    assert!(squat.success);
    assert_eq!(other.batch_executed(id).await.unwrap(), Some(squat));
    assert_eq!(treasury.batch_executed(id).await.unwrap(), None, "the treasury's id is untouched");

    // ...and the treasury still pays its own batch under that id.
    let (to, amt) = (recipients("shared", 3), amounts(3));
    let mined = rig.pay(id, &to, &amt).await;
    assert!(mined.success);
    assert_balances(treasury, &to, &amt).await;
    assert_balances(treasury, &to_other, &amt_other).await;
    assert_eq!(treasury.batch_executed(id).await.unwrap(), Some(mined));
    assert_eq!(other.batch_executed(id).await.unwrap(), Some(squat));
}

#[tokio::test]
async fn gas_of_batches_versus_single_transfers() {
    let rig = Rig::start(DEFAULT_GAS_MAX).await;
    let client = &rig.client;
    const N: usize = 100;

    let one = rig.pay(batch_id("gas/1"), &recipients("gas-one", 1), &amounts(1)).await;
    let batch = rig.pay(batch_id("gas/100"), &recipients("gas-batch", N), &amounts(N)).await;
    assert!(one.success && batch.success);

    let (to, amt) = (recipients("gas-single", N), amounts(N));
    let mut singles = 0u64;
    for (r, a) in to.iter().zip(&amt) {
        let mined = client.transfer(*r, *a).await.unwrap();
        assert!(mined.success);
        singles += mined.gas_used;
    }
    assert_balances(client, &to, &amt).await;

    let per_recipient_fit = (batch.gas_used - one.gas_used) / (N as u64 - 1);
    let base_fit = one.gas_used - per_recipient_fit;
    let batch_per_recipient = batch.gas_used / N as u64;
    let single = singles / N as u64;
    println!("payBatch of 1 fresh recipient: {} gas", one.gas_used);
    println!(
        "payBatch of {N} fresh recipients: {} gas = {batch_per_recipient} per recipient (fit: base {base_fit} + {per_recipient_fit}/recipient)",
        batch.gas_used
    );
    println!("{N} single ERC-20 transfers to fresh recipients: {singles} gas = {single} per transfer");
    println!("batch / singles = {:.3}", batch.gas_used as f64 / singles as f64);

    assert!(batch_per_recipient < single, "a batch must be cheaper per recipient than single transfers");
    // The planning constants bound what is measured (fresh recipients, finite allowance).
    assert!(base_fit <= PAY_BATCH_BASE_GAS, "measured base {base_fit} > PAY_BATCH_BASE_GAS");
    assert!(per_recipient_fit <= PAY_BATCH_GAS_PER_RECIPIENT, "measured {per_recipient_fit}/recipient > model");
    for (n, mined) in [(1u64, one), (N as u64, batch)] {
        let model = PAY_BATCH_BASE_GAS + n * PAY_BATCH_GAS_PER_RECIPIENT;
        assert!(mined.gas_used <= model, "{n} recipients used {} gas > model {model}", mined.gas_used);
    }
}

#[tokio::test]
async fn bad_inputs_are_typed_errors() {
    let rig = Rig::start(DEFAULT_GAS_MAX).await;
    let client = &rig.client;
    let key = rig.node.private_keys()[0].clone();
    let (to, amt) = (recipients("bad", 2), amounts(2));
    let nonce = client.pending_nonce().await.unwrap();
    let id = batch_id("bad");
    for (r, a) in
        [(&to[..0], &amt[..0]), (&to[..], &amt[..1]), (&[Address::ZERO][..], &amt[..1]), (&to[..1], &[U256::ZERO][..])]
    {
        assert!(matches!(client.prepare_pay_batch(id, r, a, nonce).await, Err(EvmError::InvalidBatch(_))));
    }

    // More than the allowance: the token's own reason comes through.
    let poor = rig.other_client(2).await;
    let nonce = poor.pending_nonce().await.unwrap();
    match poor.prepare_pay_batch(id, &to, &amt, nonce).await {
        Err(EvmError::Reverted { reason, .. }) => assert!(reason.contains("insufficient allowance"), "{reason}"),
        other => panic!("expected Reverted, got {other:?}"),
    }

    let good = client.config().clone();
    let mut wrong_chain = good.clone();
    wrong_chain.chain_id = 1;
    assert!(matches!(
        EvmClient::connect(wrong_chain, &key).await,
        Err(EvmError::ChainIdMismatch { expected: 1, actual: 31337 })
    ));
    let mut no_contract = good.clone();
    no_contract.payout_contract = Address::repeat_byte(0x42);
    assert!(matches!(EvmClient::connect(no_contract, &key).await, Err(EvmError::NoCode(_))));
    let mut wrong_decimals = good.clone();
    wrong_decimals.token_decimals = 18;
    assert!(matches!(
        EvmClient::connect(wrong_decimals, &key).await,
        Err(EvmError::TokenDecimalsMismatch { configured: 18, actual: 6 })
    ));
    let mut bad_url = good.clone();
    bad_url.rpc_url = "not a url".into();
    assert!(matches!(EvmClient::connect(bad_url, &key).await, Err(EvmError::InvalidUrl { .. })));
    match EvmClient::connect(good.clone(), "0x1234").await {
        Err(e @ EvmError::BadKey(_)) => assert!(!e.to_string().contains("1234")),
        other => panic!("expected BadKey, got {other:?}"),
    }
    // The key never shows in Debug output.
    let debug = format!("{client:?}");
    assert!(!debug.contains(key.trim_start_matches("0x")), "{debug}");
    assert!(debug.contains("treasury"));
}

#[test]
fn anvil_is_killed_by_pid_on_drop_and_a_missing_binary_says_what_to_run() {
    let node = AnvilNode::start().expect("anvil must start (run scripts/test.sh to install it)");
    let pid = node.pid();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    assert_eq!(node.chain_id(), 31337);
    assert!(node.rpc_url().starts_with("http://127.0.0.1:"));
    assert_eq!(node.accounts().len(), 10);
    // Two nodes at once get different ports.
    let second = AnvilNode::start().unwrap();
    assert_ne!(second.rpc_url(), node.rpc_url());
    drop(second);
    drop(node);
    assert!(!proc_dir.exists(), "anvil {pid} still exists after drop");

    let err = AnvilNode::start_at(std::path::Path::new("/nonexistent/anvil")).unwrap_err();
    assert!(err.to_string().contains("scripts/test.sh"), "{err}");
}

/// `contracts/build.sh` is deterministic: recompiling into a temp dir gives
/// byte-identical artifacts to the committed ones. Needs node and
/// `npm ci --prefix tools/node` (scripts/test.sh); fails without them.
#[test]
fn committed_artifacts_are_reproducible() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("bash")
        .arg(root.join("contracts/build.sh"))
        .arg(out.path())
        .status()
        .expect("bash must run contracts/build.sh");
    assert!(status.success(), "contracts/build.sh failed (node + `npm ci --prefix tools/node` needed)");
    for name in ["TallyPayout.json", "TestStablecoin.json"] {
        let committed = std::fs::read(root.join("contracts/out").join(name)).unwrap();
        let rebuilt = std::fs::read(out.path().join(name)).unwrap();
        assert!(committed == rebuilt, "contracts/out/{name} differs from a fresh build: run contracts/build.sh");
    }
}

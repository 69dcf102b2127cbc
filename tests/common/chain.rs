//! A real anvil chain for the settlement tests: the node (restartable on its
//! port, stopped by pid), the test token and the payout contract, and the
//! engine configuration that points at them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tally_settler::evm::{self, Address, AnvilNode, EvmClient, EvmConfig, U256};

/// The treasury's token supply, 1,000,000,000 tUSD at 6 decimals.
pub const TOKEN_SUPPLY: u64 = 1_000_000_000_000_000;

/// The chain: the node (restartable on its port), the token and the payout
/// contract, and the treasury (anvil's first dev account) that approved it.
pub struct Chain {
    node: Option<AnvilNode>,
    pub port: u16,
    pub rpc_url: String,
    pub token: Address,
    pub contract: Address,
    pub treasury: Address,
    pub treasury_key: String,
}

impl Chain {
    pub async fn start() -> Chain {
        let node = AnvilNode::start().expect("anvil (run scripts/test.sh to install it)");
        let treasury_key = node.private_keys()[0].clone();
        let treasury = node.accounts()[0].address;
        let rpc_url = node.rpc_url();
        let token = evm::deploy_test_stablecoin(&rpc_url, node.chain_id(), &treasury_key, U256::from(TOKEN_SUPPLY))
            .await
            .unwrap();
        let contract = evm::deploy_payout_contract(&rpc_url, node.chain_id(), &treasury_key).await.unwrap();
        let port = node.port();
        let chain = Chain { node: Some(node), port, rpc_url, token, contract, treasury, treasury_key };
        chain.client().await.approve_payout_contract(U256::from(TOKEN_SUPPLY)).await.unwrap();
        chain
    }

    pub fn node(&self) -> &AnvilNode {
        self.node.as_ref().expect("the node is running")
    }

    pub async fn client(&self) -> EvmClient {
        let config = EvmConfig {
            rpc_url: self.rpc_url.clone(),
            chain_id: evm::anvil::DEV_CHAIN_ID,
            token: self.token,
            token_decimals: 6,
            payout_contract: self.contract,
            gas_per_tx_max: 10_000_000,
            receipt_timeout: Duration::from_secs(30),
        };
        EvmClient::connect(config, &self.treasury_key).await.unwrap()
    }

    pub async fn balance(&self, address: Address) -> u128 {
        u128::try_from(self.client().await.token_balance(address).await.unwrap()).unwrap()
    }

    pub async fn rpc(&self, method: &'static str, params: serde_json::Value) -> serde_json::Value {
        self.node().rpc(method, params).await.unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    pub async fn automine(&self, on: bool) {
        self.rpc("evm_setAutomine", serde_json::json!([on])).await;
    }

    /// Transactions waiting in the node's pool.
    pub async fn pending(&self) -> u64 {
        let status = self.rpc("txpool_status", serde_json::json!([])).await;
        let pending = status["pending"].as_str().unwrap_or("0x0");
        u64::from_str_radix(pending.trim_start_matches("0x"), 16).unwrap()
    }

    /// Saves the chain, then SIGKILLs the node by pid.
    pub async fn kill_node(&mut self) -> serde_json::Value {
        let state = self.node().dump_state().await.unwrap();
        let node = self.node.take().unwrap();
        let pid = node.pid();
        drop(node); // SIGKILL to `pid`, reaped
        assert!(is_zombie_or_gone(pid), "node {pid} still runs");
        state
    }

    /// Starts the node again on the same port with the saved chain.
    pub async fn restart_node(&mut self, state: serde_json::Value) {
        let node = AnvilNode::start_on(self.port).expect("anvil restarts on its port");
        node.load_state(state).await.unwrap();
        self.node = Some(node);
    }
}

pub fn is_zombie_or_gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

/// What differs between the settlement tests' engine configurations.
pub struct SettlementToml {
    pub fee_bps: u32,
    pub payouts_per_tx_max: usize,
    /// `None`: the engine's default.
    pub receipt_timeout_s: Option<u64>,
}

/// Writes the engine's TOML: USDC on the chain, EUR by pain.001, USD by NACHA.
pub fn write_settlement_config(dir: &Path, chain: &Chain, toml: SettlementToml) -> PathBuf {
    let key_file = dir.join("treasury.key");
    std::fs::write(&key_file, &chain.treasury_key).unwrap();
    let config = format!(
        r#"
[settlement]
fee_bps = {fee_bps}

[settlement.assets.USDC]
rail = "evm"
payout_min = "0.01"

[settlement.assets.EUR]
rail = "iso20022"
payout_min = "1.00"

[settlement.assets.USD]
rail = "nacha"

[settlement.evm]
rpc_url = "{rpc}"
chain_id = {chain_id}
token = "{token}"
token_decimals = 6
payout_contract = "{contract}"
treasury_key_file = "{key}"
payouts_per_tx_max = {payouts_per_tx_max}
{receipt_timeout}

[settlement.iso20022]
debtor_name = "Tally Test Operator GmbH"
debtor_iban = "DE89370400440532013000"
debtor_bic = "COBADEFFXXX"

[settlement.nacha]
immediate_destination = "011000015"
immediate_destination_name = "FEDERAL RESERVE BANK"
immediate_origin = "1234567890"
immediate_origin_name = "TALLY TEST OPERATOR"
company_name = "TALLY TEST"
company_id = "1234567890"
odfi_routing = "01100001"
"#,
        fee_bps = toml.fee_bps,
        payouts_per_tx_max = toml.payouts_per_tx_max,
        receipt_timeout = toml.receipt_timeout_s.map(|s| format!("receipt_timeout_s = {s}")).unwrap_or_default(),
        rpc = chain.rpc_url,
        chain_id = evm::anvil::DEV_CHAIN_ID,
        token = chain.token,
        contract = chain.contract,
        key = key_file.display(),
    );
    let path = dir.join("tally.toml");
    std::fs::write(&path, config).unwrap();
    path
}

//! [`EvmClient`]: the treasury's view of one chain, one token and one deployed
//! `TallyPayout` contract.
//!
//! The settlement driver uses it in three separable steps so every step can be
//! persisted before the next (exactly-once needs that):
//! 1. [`EvmClient::prepare_pay_batch`] builds and signs a transaction locally
//!    with an explicit nonce, and sends nothing. The driver stores the raw bytes
//!    and hash first.
//! 2. [`EvmClient::broadcast`] sends those exact bytes, any number of times:
//!    resending a known or already-mined transaction is `Ok`.
//! 3. [`EvmClient::wait_receipt`] / [`EvmClient::receipt`] /
//!    [`EvmClient::batch_executed`] find out what happened, including after a
//!    crash, from the chain alone.
//!
//! Every RPC call is bounded by [`RPC_CALL_TIMEOUT`]; receipt waits by
//! [`EvmConfig::receipt_timeout`].

use std::future::Future;
use std::time::{Duration, Instant};

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::{Decodable2718, Encodable2718};
use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, Bytes, TxKind, U256, keccak256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolEvent, SolValue};
use alloy::transports::TransportError;
use alloy::transports::http::reqwest::Url;

use super::bindings::{IERC20, TallyPayout, tally_payout_bytecode, test_stablecoin_bytecode};
use super::{EvmError, parse_private_key};

/// The bound on any single JSON-RPC call.
pub const RPC_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Gas of a `payBatch` apart from its recipients: the 21,000 intrinsic gas, the
/// fixed calldata, the `executedBlock` SSTORE (zero to non-zero, 22,100), the
/// cold token account and the first (cold) touch of the payer's balance and
/// allowance slots, and the `BatchPaid` event.
///
/// How measured: `tests/evm_rail.rs` (`gas_of_batches_versus_single_transfers`)
/// pays one batch of 1 and one of 100 fresh recipients (the worst case: every
/// recipient's balance goes from zero to non-zero; finite allowance, so every
/// `transferFrom` also rewrites it) with OpenZeppelin 4.9.6's ERC-20 on anvil
/// 1.7.1, and fits `gas_used = base + n × per_recipient`. Measured: base 60,536,
/// 29,560 per recipient (1 recipient: 90,096 gas; 100: 3,016,582). The constants
/// are that fit rounded up with a margin (~15 % and ~18 %), and that test asserts
/// they still bound what is measured.
pub const PAY_BATCH_BASE_GAS: u64 = 70_000;
/// Gas per recipient of a `payBatch`: a `transferFrom` to a fresh address
/// (recipient balance 0 → non-zero, warm allowance and payer balance updates,
/// the `Transfer` event) plus 64 bytes of calldata. See [`PAY_BATCH_BASE_GAS`]
/// for how it was measured. Tokens with heavier transfers (proxies, blocklists)
/// are caught by the `eth_estimateGas` check in `prepare_pay_batch`, which
/// refuses to sign above `gas_per_tx_max`.
pub const PAY_BATCH_GAS_PER_RECIPIENT: u64 = 35_000;
/// Gas cap for contract deployment transactions.
pub const DEPLOY_GAS_MAX: u64 = 10_000_000;
/// The receipt wait used by the deploy helpers, which have no [`EvmConfig`].
pub const DEPLOY_RECEIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where and what the EVM rail pays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvmConfig {
    /// JSON-RPC endpoint (http).
    pub rpc_url: String,
    /// The chain the treasury means to pay on; `connect` refuses any other.
    pub chain_id: u64,
    /// The ERC-20 token paid out.
    pub token: Address,
    /// The token's decimals; `connect` checks it against `decimals()`.
    pub token_decimals: u8,
    /// The deployed `TallyPayout` contract.
    pub payout_contract: Address,
    /// The most gas any one transaction may use (and the gas limit's cap).
    pub gas_per_tx_max: u64,
    /// How long `wait_receipt` waits for a transaction to be mined.
    pub receipt_timeout: Duration,
}

/// A signed transaction, not yet sent: store it, then broadcast it (as often as needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedTx {
    pub nonce: u64,
    pub tx_hash: B256,
    /// The EIP-2718 encoded signed transaction (`eth_sendRawTransaction` input).
    pub raw: Vec<u8>,
    pub gas_limit: u64,
}

/// The facts of a mined transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinedTx {
    pub tx_hash: B256,
    pub block_number: u64,
    pub gas_used: u64,
    /// The receipt status: `false` means mined but reverted (its nonce is spent, nothing was paid).
    pub success: bool,
}

/// A connected treasury: provider plus local signer. The key never leaves the
/// process and is never logged (`Debug` shows only the address).
pub struct EvmClient {
    config: EvmConfig,
    chain: Chain,
}

impl std::fmt::Debug for EvmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmClient")
            .field("treasury", &self.chain.signer.address())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EvmClient {
    /// Connects to `config.rpc_url` as the treasury whose key is `treasury_key_hex`.
    ///
    /// Refuses a node on another chain ([`EvmError::ChainIdMismatch`]), a token or
    /// payout address without code ([`EvmError::NoCode`]), and a token whose
    /// `decimals()` differs from the configuration.
    pub async fn connect(config: EvmConfig, treasury_key_hex: &str) -> Result<EvmClient, EvmError> {
        let signer = parse_private_key(treasury_key_hex)?;
        let chain = Chain::connect(&config.rpc_url, config.chain_id, signer).await?;
        for address in [config.token, config.payout_contract] {
            chain.require_code(address).await?;
        }
        let decimals = chain.call(config.token, IERC20::decimalsCall {}).await?;
        if decimals != config.token_decimals {
            return Err(EvmError::TokenDecimalsMismatch { configured: config.token_decimals, actual: decimals });
        }
        Ok(EvmClient { config, chain })
    }

    /// The configuration this client was connected with.
    pub fn config(&self) -> &EvmConfig {
        &self.config
    }

    /// The treasury's address (the payer of every batch).
    pub fn treasury(&self) -> Address {
        self.chain.signer.address()
    }

    /// Deploys `TallyPayout` from the account of `key_hex` (for `tally evm deploy`).
    pub async fn deploy_payout_contract(rpc_url: &str, chain_id: u64, key_hex: &str) -> Result<Address, EvmError> {
        deploy_payout_contract(rpc_url, chain_id, key_hex).await
    }

    /// Approves the payout contract to spend `amount` of the treasury's tokens,
    /// waits for the receipt, and returns the transaction hash. A mined but
    /// failed approval is [`EvmError::Reverted`].
    pub async fn approve_payout_contract(&self, amount: U256) -> Result<B256, EvmError> {
        let call = IERC20::approveCall { spender: self.config.payout_contract, amount };
        let mined = self.send_and_wait(self.config.token, call.abi_encode()).await?;
        Ok(mined.tx_hash)
    }

    /// The treasury's current allowance to the payout contract.
    pub async fn allowance(&self) -> Result<U256, EvmError> {
        let call = IERC20::allowanceCall { owner: self.treasury(), spender: self.config.payout_contract };
        self.chain.call(self.config.token, call).await
    }

    /// The most recipients one `payBatch` may carry so that it stays under
    /// `gas_per_tx_max`: `(gas_per_tx_max − PAY_BATCH_BASE_GAS) / PAY_BATCH_GAS_PER_RECIPIENT`,
    /// at least 1 (a cap too small for one recipient then fails in `prepare_pay_batch`
    /// with [`EvmError::GasLimitExceeded`] instead of looping forever).
    pub fn recipients_per_tx_max(&self) -> usize {
        recipients_per_tx_max(self.config.gas_per_tx_max)
    }

    /// The treasury's next nonce, counting transactions still in the node's pool.
    pub async fn pending_nonce(&self) -> Result<u64, EvmError> {
        fail_at("evm-nonce", "eth_getTransactionCount")?;
        self.chain.nonce(true).await
    }

    /// The treasury's next nonce counting mined transactions only.
    pub async fn latest_nonce(&self) -> Result<u64, EvmError> {
        fail_at("evm-nonce", "eth_getTransactionCount")?;
        self.chain.nonce(false).await
    }

    /// Builds and signs (locally) an EIP-1559 `payBatch(batch_id, token, recipients, amounts)`
    /// with the given nonce. Sends nothing.
    ///
    /// The gas limit is `eth_estimateGas` plus 20 %, capped at `gas_per_tx_max`; an
    /// estimate above the cap is [`EvmError::GasLimitExceeded`]. Fees come from the
    /// node (`eth_feeHistory`). A batch this treasury already executed is
    /// [`EvmError::BatchAlreadyExecuted`] (the estimate reverts with `AlreadyExecuted`).
    pub async fn prepare_pay_batch(
        &self,
        batch_id: B256,
        recipients: &[Address],
        amounts: &[U256],
        nonce: u64,
    ) -> Result<PreparedTx, EvmError> {
        validate_batch(recipients, amounts)?;
        fail_at("evm-sign", "eth_estimateGas")?;
        let call = TallyPayout::payBatchCall {
            batchId: batch_id,
            token: self.config.token,
            recipients: recipients.to_vec(),
            amounts: amounts.to_vec(),
        };
        self.chain
            .prepare(TxKind::Call(self.config.payout_contract), call.abi_encode(), nonce, self.config.gas_per_tx_max)
            .await
    }

    /// Sends a signed transaction. Idempotent: if the node already knows this
    /// transaction (pooled or mined), the answer is `Ok` with its hash. A nonce
    /// taken by a *different* transaction is [`EvmError::NonceTooLow`].
    pub async fn broadcast(&self, raw: &[u8]) -> Result<B256, EvmError> {
        let tx_hash = self.chain.broadcast(raw).await?;
        // Injected after the node accepted the transaction: the worst case,
        // an answer lost on the way back while the transaction is mined.
        fail_at("evm-broadcast", "eth_sendRawTransaction")?;
        Ok(tx_hash)
    }

    /// The receipt facts of a transaction, or `None` while it is not mined (or unknown).
    pub async fn receipt(&self, tx_hash: B256) -> Result<Option<MinedTx>, EvmError> {
        fail_at("evm-receipt", "eth_getTransactionReceipt")?;
        self.chain.receipt(tx_hash).await
    }

    /// Polls for the receipt until `receipt_timeout` ([`EvmError::ReceiptTimeout`]).
    /// A mined but reverted transaction is returned with `success == false`, not as an error.
    pub async fn wait_receipt(&self, tx_hash: B256) -> Result<MinedTx, EvmError> {
        fail_at("evm-receipt", "eth_getTransactionReceipt")?;
        self.chain.wait_receipt(tx_hash, self.config.receipt_timeout).await
    }

    /// Whether the treasury executed `batch_id` on chain, and if so the transaction that did.
    ///
    /// Reads `executedBlock(treasury, batchId)` on the contract, then the
    /// `BatchPaid(payer = treasury, batchId)` log of that block (falling back to
    /// a scan from block 0 if the chain's `block.number` differs from its RPC block
    /// numbers, as on Arbitrum), and returns that transaction's receipt facts.
    pub async fn batch_executed(&self, batch_id: B256) -> Result<Option<MinedTx>, EvmError> {
        fail_at("evm-batch-executed", "eth_call")?;
        let contract = self.config.payout_contract;
        let call = TallyPayout::executedBlockCall { payer: self.treasury(), batchId: batch_id };
        let block = self.chain.call(contract, call).await?;
        if block.is_zero() {
            return Ok(None);
        }
        let block = u64::try_from(block).map_err(|_| EvmError::Abi(format!("executedBlock {block} overflows u64")))?;
        let filter = Filter::new()
            .address(contract)
            .event_signature(TallyPayout::BatchPaid::SIGNATURE_HASH)
            .topic1(self.treasury().into_word())
            .topic2(batch_id);
        let mut logs = self.chain.logs(&filter.clone().from_block(block).to_block(block)).await?;
        if logs.is_empty() {
            logs = self.chain.logs(&filter.from_block(0u64)).await?;
        }
        let tx_hash = logs.iter().find_map(|log| log.transaction_hash).ok_or_else(|| EvmError::Rpc {
            op: "eth_getLogs",
            message: format!("batch {batch_id} is marked executed at block {block} but no BatchPaid log was found"),
        })?;
        match self.chain.receipt(tx_hash).await? {
            Some(mined) => Ok(Some(mined)),
            None => Err(EvmError::Rpc {
                op: "eth_getTransactionReceipt",
                message: format!("BatchPaid log of tx {tx_hash} has no receipt"),
            }),
        }
    }

    /// `token.balanceOf(owner)`.
    pub async fn token_balance(&self, owner: Address) -> Result<U256, EvmError> {
        self.chain.call(self.config.token, IERC20::balanceOfCall { owner }).await
    }

    /// One plain ERC-20 `transfer` from the treasury, mined (the one-by-one
    /// baseline a batch is compared with). A mined but failed transfer is
    /// returned with `success == false`.
    pub async fn transfer(&self, to: Address, amount: U256) -> Result<MinedTx, EvmError> {
        let call = IERC20::transferCall { to, amount };
        let nonce = self.pending_nonce().await?;
        let tx = self
            .chain
            .prepare(TxKind::Call(self.config.token), call.abi_encode(), nonce, self.config.gas_per_tx_max)
            .await?;
        let hash = self.broadcast(&tx.raw).await?;
        self.wait_receipt(hash).await
    }

    /// Signs at the pending nonce, broadcasts, waits; a failed receipt is an error.
    async fn send_and_wait(&self, to: Address, data: Vec<u8>) -> Result<MinedTx, EvmError> {
        let nonce = self.pending_nonce().await?;
        let tx = self.chain.prepare(TxKind::Call(to), data, nonce, self.config.gas_per_tx_max).await?;
        let hash = self.broadcast(&tx.raw).await?;
        let mined = self.wait_receipt(hash).await?;
        if !mined.success {
            return Err(EvmError::Reverted { tx_hash: Some(hash), reason: "receipt status 0".into() });
        }
        Ok(mined)
    }
}

/// Runs a rail failpoint (see [`crate::failpoint`]); an injected error is the
/// error a failing node would give for `op`.
fn fail_at(name: &'static str, op: &'static str) -> Result<(), EvmError> {
    crate::failpoint::hit(name).map_err(|e| EvmError::Rpc { op, message: e.to_string() })
}

/// See [`EvmClient::recipients_per_tx_max`].
pub fn recipients_per_tx_max(gas_per_tx_max: u64) -> usize {
    let n = gas_per_tx_max.saturating_sub(PAY_BATCH_BASE_GAS) / PAY_BATCH_GAS_PER_RECIPIENT;
    usize::try_from(n).unwrap_or(usize::MAX).max(1)
}

/// Deploys `TallyPayout` (no constructor arguments) and returns its address.
pub async fn deploy_payout_contract(rpc_url: &str, chain_id: u64, key_hex: &str) -> Result<Address, EvmError> {
    deploy(rpc_url, chain_id, key_hex, tally_payout_bytecode()?).await
}

/// Deploys `TestStablecoin` (OpenZeppelin 4.9.6 ERC-20, 6 decimals), minting
/// `initial_supply` to the deployer. Test networks only.
pub async fn deploy_test_stablecoin(
    rpc_url: &str,
    chain_id: u64,
    key_hex: &str,
    initial_supply: U256,
) -> Result<Address, EvmError> {
    let mut code = test_stablecoin_bytecode()?;
    code.extend_from_slice(&initial_supply.abi_encode());
    deploy(rpc_url, chain_id, key_hex, code).await
}

async fn deploy(rpc_url: &str, chain_id: u64, key_hex: &str, init_code: Vec<u8>) -> Result<Address, EvmError> {
    let chain = Chain::connect(rpc_url, chain_id, parse_private_key(key_hex)?).await?;
    let nonce = chain.nonce(true).await?;
    let tx = chain.prepare(TxKind::Create, init_code, nonce, DEPLOY_GAS_MAX).await?;
    let hash = chain.broadcast(&tx.raw).await?;
    let mined = chain.wait_receipt(hash, DEPLOY_RECEIPT_TIMEOUT).await?;
    if !mined.success {
        return Err(EvmError::Reverted { tx_hash: Some(hash), reason: "deployment failed".into() });
    }
    let address = chain.signer.address().create(nonce);
    chain.require_code(address).await?;
    Ok(address)
}

fn validate_batch(recipients: &[Address], amounts: &[U256]) -> Result<(), EvmError> {
    if recipients.is_empty() {
        return Err(EvmError::InvalidBatch("no recipients".into()));
    }
    if recipients.len() != amounts.len() {
        return Err(EvmError::InvalidBatch(format!("{} recipients but {} amounts", recipients.len(), amounts.len())));
    }
    if let Some(i) = recipients.iter().position(|r| r.is_zero()) {
        return Err(EvmError::InvalidBatch(format!("recipient {i} is the zero address")));
    }
    if let Some(i) = amounts.iter().position(|a| a.is_zero()) {
        return Err(EvmError::InvalidBatch(format!("amount {i} is zero")));
    }
    Ok(())
}

/// A provider plus a local signer on a checked chain: what both the client and
/// the deploy helpers need.
struct Chain {
    provider: RootProvider,
    signer: PrivateKeySigner,
    chain_id: u64,
}

impl Chain {
    async fn connect(rpc_url: &str, chain_id: u64, signer: PrivateKeySigner) -> Result<Chain, EvmError> {
        let url =
            Url::parse(rpc_url).map_err(|e| EvmError::InvalidUrl { url: rpc_url.into(), message: e.to_string() })?;
        let provider = RootProvider::new_http(url);
        let actual = bounded("eth_chainId", provider.get_chain_id()).await?;
        if actual != chain_id {
            return Err(EvmError::ChainIdMismatch { expected: chain_id, actual });
        }
        Ok(Chain { provider, signer, chain_id })
    }

    async fn require_code(&self, address: Address) -> Result<(), EvmError> {
        let code = bounded("eth_getCode", self.provider.get_code_at(address).into_future()).await?;
        if code.is_empty() { Err(EvmError::NoCode(address)) } else { Ok(()) }
    }

    async fn nonce(&self, pending: bool) -> Result<u64, EvmError> {
        let call = self.provider.get_transaction_count(self.signer.address());
        let call = if pending { call.pending() } else { call.latest() };
        bounded("eth_getTransactionCount", call.into_future()).await
    }

    async fn call<C: SolCall>(&self, to: Address, call: C) -> Result<C::Return, EvmError> {
        let request = TransactionRequest::default().with_to(to).with_input(call.abi_encode());
        let out = match tokio::time::timeout(RPC_CALL_TIMEOUT, self.provider.call(request).into_future()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(map_revert("eth_call", e)),
            Err(_) => return Err(timeout_error("eth_call")),
        };
        C::abi_decode_returns(&out).map_err(|e| EvmError::Abi(format!("{}: {e}", C::SIGNATURE)))
    }

    async fn logs(&self, filter: &Filter) -> Result<Vec<alloy::rpc::types::Log>, EvmError> {
        bounded("eth_getLogs", self.provider.get_logs(filter)).await
    }

    /// Estimates, prices and signs an EIP-1559 transaction; sends nothing.
    async fn prepare(&self, to: TxKind, input: Vec<u8>, nonce: u64, gas_max: u64) -> Result<PreparedTx, EvmError> {
        let input = Bytes::from(input);
        let request = TransactionRequest {
            from: Some(self.signer.address()),
            to: Some(to),
            nonce: Some(nonce),
            chain_id: Some(self.chain_id),
            input: input.clone().into(),
            ..Default::default()
        };
        let estimated =
            match tokio::time::timeout(RPC_CALL_TIMEOUT, self.provider.estimate_gas(request).into_future()).await {
                Ok(Ok(gas)) => gas,
                Ok(Err(e)) => return Err(map_revert("eth_estimateGas", e)),
                Err(_) => return Err(timeout_error("eth_estimateGas")),
            };
        if estimated > gas_max {
            return Err(EvmError::GasLimitExceeded { estimated, max: gas_max });
        }
        let gas_limit = estimated.saturating_add(estimated / 5).min(gas_max);
        let fees = bounded("eth_feeHistory", self.provider.estimate_eip1559_fees()).await?;
        let tx = TxEip1559 {
            chain_id: self.chain_id,
            nonce,
            gas_limit,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to,
            value: U256::ZERO,
            access_list: Default::default(),
            input,
        };
        let signature = self
            .signer
            .sign_hash_sync(&tx.signature_hash())
            .map_err(|e| EvmError::Abi(format!("signing failed: {e}")))?;
        let envelope = TxEnvelope::from(tx.into_signed(signature));
        let raw = envelope.encoded_2718();
        Ok(PreparedTx { nonce, tx_hash: *envelope.tx_hash(), raw, gas_limit })
    }

    async fn broadcast(&self, raw: &[u8]) -> Result<B256, EvmError> {
        // Decode first: garbage never reaches the node, and the hash and nonce
        // are known for the idempotency checks below.
        let envelope = TxEnvelope::decode_2718(&mut &raw[..])
            .map_err(|e| EvmError::Abi(format!("not a signed EIP-2718 transaction: {e}")))?;
        let tx_hash = keccak256(raw);
        let result = tokio::time::timeout(RPC_CALL_TIMEOUT, self.provider.send_raw_transaction(raw)).await;
        let err = match result {
            Ok(Ok(pending)) => return Ok(*pending.tx_hash()),
            Ok(Err(e)) => e,
            Err(_) => return Err(timeout_error("eth_sendRawTransaction")),
        };
        let message = err.to_string();
        let lower = message.to_ascii_lowercase();
        if KNOWN_TX_MESSAGES.iter().any(|m| lower.contains(m)) {
            return Ok(tx_hash);
        }
        if NONCE_TOO_LOW_MESSAGES.iter().any(|m| lower.contains(m)) {
            // Our own transaction, already mined, also takes this path: the
            // nonce moved past it *because of it*. Only a stranger is an error.
            let known =
                bounded("eth_getTransactionByHash", self.provider.get_transaction_by_hash(tx_hash).into_future())
                    .await?;
            if known.is_some() {
                return Ok(tx_hash);
            }
            return Err(EvmError::NonceTooLow {
                tx_hash,
                nonce: alloy::consensus::Transaction::nonce(&envelope),
                message,
            });
        }
        Err(EvmError::Rpc { op: "eth_sendRawTransaction", message })
    }

    async fn receipt(&self, tx_hash: B256) -> Result<Option<MinedTx>, EvmError> {
        let receipt =
            bounded("eth_getTransactionReceipt", self.provider.get_transaction_receipt(tx_hash).into_future()).await?;
        Ok(receipt.and_then(|r| {
            r.block_number.map(|block_number| MinedTx {
                tx_hash: r.transaction_hash,
                block_number,
                gas_used: r.gas_used,
                success: r.status(),
            })
        }))
    }

    async fn wait_receipt(&self, tx_hash: B256, timeout: Duration) -> Result<MinedTx, EvmError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            if let Some(mined) = self.receipt(tx_hash).await? {
                return Ok(mined);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(EvmError::ReceiptTimeout { tx_hash, waited });
            }
            tokio::time::sleep(pause.min(timeout - waited)).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

/// Node answers meaning "this exact transaction is already in the pool" (geth,
/// reth, anvil, nethermind, erigon wordings).
const KNOWN_TX_MESSAGES: &[&str] =
    &["already known", "known transaction", "already imported", "already exists", "alreadyknown"];
/// Node answers meaning "the sender's nonce is past this transaction's".
const NONCE_TOO_LOW_MESSAGES: &[&str] = &["nonce too low", "nonce is too low", "oldnonce", "old nonce"];

async fn bounded<T>(op: &'static str, fut: impl Future<Output = Result<T, TransportError>>) -> Result<T, EvmError> {
    match tokio::time::timeout(RPC_CALL_TIMEOUT, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(EvmError::rpc(op, e)),
        Err(_) => Err(timeout_error(op)),
    }
}

fn timeout_error(op: &'static str) -> EvmError {
    EvmError::Rpc { op, message: format!("no answer within {RPC_CALL_TIMEOUT:?}") }
}

/// Turns a reverted call/estimate into a typed error, decoding `TallyPayout`'s
/// custom errors and `Error(string)` reasons (e.g. OpenZeppelin's
/// "ERC20: insufficient allowance").
fn map_revert(op: &'static str, err: TransportError) -> EvmError {
    let Some(payload) = err.as_error_resp() else { return EvmError::rpc(op, err) };
    if let Some(decoded) = payload.as_decoded_interface_error::<TallyPayout::TallyPayoutErrors>() {
        return match decoded {
            TallyPayout::TallyPayoutErrors::AlreadyExecuted(e) => {
                EvmError::BatchAlreadyExecuted { payer: e.payer, batch_id: e.batchId }
            }
            other => EvmError::Reverted { tx_hash: None, reason: format!("{other:?}") },
        };
    }
    if let Some(revert) = payload.as_decoded_error::<alloy::sol_types::Revert>() {
        return EvmError::Reverted { tx_hash: None, reason: revert.reason };
    }
    if payload.message.contains("revert") {
        return EvmError::Reverted { tx_hash: None, reason: payload.message.to_string() };
    }
    EvmError::rpc(op, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_per_tx_max_follows_the_gas_model() {
        assert_eq!(recipients_per_tx_max(0), 1);
        assert_eq!(recipients_per_tx_max(PAY_BATCH_BASE_GAS), 1);
        assert_eq!(recipients_per_tx_max(PAY_BATCH_BASE_GAS + 10 * PAY_BATCH_GAS_PER_RECIPIENT), 10);
        assert_eq!(recipients_per_tx_max(PAY_BATCH_BASE_GAS + 10 * PAY_BATCH_GAS_PER_RECIPIENT - 1), 9);
        assert!(recipients_per_tx_max(u64::MAX) > 1_000_000);
    }

    #[test]
    fn batches_are_validated_before_any_rpc() {
        let a = Address::repeat_byte(1);
        let one = U256::from(1u8);
        assert!(validate_batch(&[a], &[one]).is_ok());
        assert!(validate_batch(&[], &[]).is_err());
        assert!(validate_batch(&[a, a], &[one]).is_err());
        assert!(validate_batch(&[Address::ZERO], &[one]).is_err());
        assert!(validate_batch(&[a], &[U256::ZERO]).is_err());
    }
}

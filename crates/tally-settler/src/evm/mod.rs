//! # The EVM rail: paying a sealed epoch in ERC-20 tokens, exactly once
//!
//! Settlement turns an epoch's netted totals into token transfers. On an EVM
//! chain, paying payees one `transfer` at a time costs a full transaction each
//! (21,000 gas before any work) and gives no protection against paying twice
//! when the settler retries after a crash. This rail does both jobs with one
//! small contract, `contracts/TallyPayout.sol`:
//!
//! - **Batching.** `payBatch(batchId, token, recipients, amounts)` pays many
//!   payees in one transaction, each with `transferFrom(treasury, payee, amount)`
//!   from the treasury's allowance. Per payee this costs roughly the token's own
//!   transfer work; the 21,000 intrinsic gas is paid once per batch.
//! - **Idempotency on chain.** The contract records `(payer, batchId)` before
//!   paying and refuses the same pair again, so a batch id chosen by the settler
//!   (a hash of epoch and chunk) is paid at most once, whatever happens off chain.
//! - **Idempotency off chain.** The settler signs locally with an explicit nonce
//!   ([`EvmClient::prepare_pay_batch`]), stores the raw transaction, then
//!   [`EvmClient::broadcast`]s it; re-broadcasting the same bytes is harmless,
//!   and after a crash [`EvmClient::batch_executed`] reads the truth from chain.
//!
//! The contract has no owner and holds no funds; it only ever spends the
//! allowance of whoever calls it, so approving it is safe (unlike a generic
//! batcher such as Multicall3, whose allowance anyone could spend).
//!
//! ## Modules
//! - [`client`] holds [`EvmConfig`], [`EvmClient`], [`PreparedTx`], [`MinedTx`] and the deploy helpers.
//! - [`bindings`] declares the contracts' ABI with `sol!` and loads bytecode from `contracts/out/*.json`.
//! - [`anvil`] starts [`AnvilNode`], a real local node (npm `@foundry-rs/anvil-linux-amd64`) for tests and demos.
//! - [`parse`] reads addresses (EIP-55), private keys and decimal amounts.
//! - [`error`] defines [`EvmError`].
//!
//! Contracts are compiled by `contracts/build.sh` (pinned solcjs from
//! `tools/node`) into committed artifacts; `tests/evm_rail.rs` recompiles them
//! and checks they are byte-identical.

pub mod anvil;
pub mod bindings;
pub mod client;
pub mod error;
pub mod parse;

pub use anvil::{AnvilNode, DevAccount};
pub use client::{
    EvmClient, EvmConfig, MinedTx, PAY_BATCH_BASE_GAS, PAY_BATCH_GAS_PER_RECIPIENT, PreparedTx, deploy_payout_contract,
    deploy_test_stablecoin, recipients_per_tx_max,
};
pub use error::EvmError;
pub use parse::{format_units, parse_address, parse_private_key, parse_units};

pub use alloy::primitives::{Address, B256, U256, keccak256};

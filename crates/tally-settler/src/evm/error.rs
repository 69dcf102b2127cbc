//! The EVM rail's one error type. Every variant is typed so the settlement
//! driver can decide what to do (retry, re-prepare, reconcile, give up)
//! without matching on message strings.

use std::time::Duration;

use alloy::primitives::{Address, B256};

/// Everything that can go wrong on the EVM rail.
///
/// No variant ever carries a private key or any part of one.
#[derive(Debug, thiserror::Error)]
pub enum EvmError {
    /// A JSON-RPC call failed (transport, node error, unexpected answer).
    #[error("rpc {op}: {message}")]
    Rpc { op: &'static str, message: String },
    /// The RPC URL does not parse.
    #[error("invalid rpc url {url:?}: {message}")]
    InvalidUrl { url: String, message: String },
    /// The node serves another chain than the configuration names.
    #[error("chain id mismatch: configured {expected}, node reports {actual}")]
    ChainIdMismatch { expected: u64, actual: u64 },
    /// The node refused a transaction because the sender's nonce has moved past it
    /// and no transaction with this hash is known: another transaction took the nonce.
    #[error("nonce too low for tx {tx_hash} (nonce {nonce}): {message}")]
    NonceTooLow { tx_hash: B256, nonce: u64, message: String },
    /// No receipt appeared within the configured bound.
    #[error("no receipt for {tx_hash} after {waited:?}")]
    ReceiptTimeout { tx_hash: B256, waited: Duration },
    /// A transaction was mined but failed, or a call/estimate reverted.
    #[error("reverted{}: {reason}", .tx_hash.map(|h| format!(" (tx {h})")).unwrap_or_default())]
    Reverted { tx_hash: Option<B256>, reason: String },
    /// `payBatch` refused: this treasury already executed this batch id on chain.
    #[error("batch {batch_id} already executed by {payer}")]
    BatchAlreadyExecuted { payer: Address, batch_id: B256 },
    /// The token's `decimals()` differs from the configured decimals (amounts
    /// would be off by powers of ten).
    #[error("token decimals mismatch: configured {configured}, token reports {actual}")]
    TokenDecimalsMismatch { configured: u8, actual: u8 },
    /// The gas estimate is above the configured per-transaction maximum.
    #[error("gas estimate {estimated} exceeds the per-transaction maximum {max}")]
    GasLimitExceeded { estimated: u64, max: u64 },
    /// The private key is not 32 bytes of hex or not a valid secp256k1 scalar.
    /// The message never repeats the input.
    #[error("bad private key: {0}")]
    BadKey(&'static str),
    /// An address does not parse or fails its EIP-55 checksum.
    #[error("bad address {input:?}: {reason}")]
    BadAddress { input: String, reason: &'static str },
    /// An amount does not parse or does not fit.
    #[error("bad amount {input:?}: {reason}")]
    BadAmount { input: String, reason: &'static str },
    /// A batch is malformed before it reaches the chain (empty, lengths differ, zero entries).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// ABI encoding/decoding or transaction (de)serialisation failed.
    #[error("abi: {0}")]
    Abi(String),
    /// A compiled contract artifact (contracts/out/*.json) is unusable.
    #[error("contract artifact {name}: {message}")]
    Artifact { name: &'static str, message: String },
    /// An address that should hold a contract has no code.
    #[error("no contract code at {0}")]
    NoCode(Address),
    /// The local anvil node could not be started or answered wrongly.
    #[error("anvil: {0}")]
    Anvil(String),
}

impl EvmError {
    pub(crate) fn rpc(op: &'static str, err: impl std::fmt::Display) -> Self {
        EvmError::Rpc { op, message: err.to_string() }
    }
}

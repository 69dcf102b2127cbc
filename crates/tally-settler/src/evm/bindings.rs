//! Contract bindings: the Solidity interfaces as alloy `sol!` declarations
//! (type-checked ABI encoding at compile time) and the deployable bytecode,
//! read from the committed artifacts in `contracts/out/` (built by
//! `contracts/build.sh`).

use alloy::sol;

use super::EvmError;

sol! {
    /// `contracts/TallyPayout.sol`: batch ERC-20 payouts, idempotent per (payer, batch id).
    #[derive(Debug, PartialEq, Eq)]
    interface TallyPayout {
        event BatchPaid(address indexed payer, bytes32 indexed batchId, address indexed token, uint256 count, uint256 total);

        error EmptyBatch();
        error LengthMismatch(uint256 recipients, uint256 amounts);
        error AlreadyExecuted(address payer, bytes32 batchId);
        error NotAContract(address token);
        error ZeroRecipient(uint256 index);
        error ZeroAmount(uint256 index);
        error TransferFailed(uint256 index);

        function payBatch(bytes32 batchId, address token, address[] calldata recipients, uint256[] calldata amounts) external;
        function executed(address payer, bytes32 batchId) external view returns (bool);
        function executedBlock(address payer, bytes32 batchId) external view returns (uint256);
    }

    /// The ERC-20 subset the rail uses.
    #[derive(Debug, PartialEq, Eq)]
    interface IERC20 {
        event Transfer(address indexed from, address indexed to, uint256 value);
        event Approval(address indexed owner, address indexed spender, uint256 value);

        function transfer(address to, uint256 amount) external returns (bool);
        function transferFrom(address from, address to, uint256 amount) external returns (bool);
        function approve(address spender, uint256 amount) external returns (bool);
        function balanceOf(address owner) external view returns (uint256);
        function allowance(address owner, address spender) external view returns (uint256);
        function decimals() external view returns (uint8);
    }
}

/// The committed artifact of `contracts/TallyPayout.sol`.
pub const TALLY_PAYOUT_ARTIFACT: &str = include_str!("../../../../contracts/out/TallyPayout.json");
/// The committed artifact of `contracts/test/TestStablecoin.sol` (test networks only).
pub const TEST_STABLECOIN_ARTIFACT: &str = include_str!("../../../../contracts/out/TestStablecoin.json");

/// The creation bytecode of `TallyPayout`.
pub fn tally_payout_bytecode() -> Result<Vec<u8>, EvmError> {
    artifact_bytecode("TallyPayout", TALLY_PAYOUT_ARTIFACT)
}

/// The creation bytecode of `TestStablecoin` (constructor arguments not included).
pub fn test_stablecoin_bytecode() -> Result<Vec<u8>, EvmError> {
    artifact_bytecode("TestStablecoin", TEST_STABLECOIN_ARTIFACT)
}

/// Extracts `bytecode` (0x-hex) from a `{"contractName","compiler","abi","bytecode"}` artifact.
pub fn artifact_bytecode(name: &'static str, json: &str) -> Result<Vec<u8>, EvmError> {
    let err = |message: String| EvmError::Artifact { name, message };
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| err(e.to_string()))?;
    let code = value.get("bytecode").and_then(|v| v.as_str()).ok_or_else(|| err("no \"bytecode\" string".into()))?;
    let code = code.strip_prefix("0x").unwrap_or(code);
    let bytes = hex::decode(code).map_err(|e| err(format!("bytecode is not hex: {e}")))?;
    if bytes.is_empty() {
        return Err(err("empty bytecode".into()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::keccak256;
    use alloy::sol_types::{SolCall, SolError, SolEvent};

    /// "name(type1,type2)" for an ABI JSON item (elementary and array types only,
    /// which is all these contracts use).
    fn signature(item: &serde_json::Value) -> String {
        let name = item["name"].as_str().unwrap_or_default();
        let types: Vec<&str> = item["inputs"]
            .as_array()
            .map(|a| a.iter().filter_map(|i| i["type"].as_str()).collect())
            .unwrap_or_default();
        format!("{name}({})", types.join(","))
    }

    /// The `sol!` declarations above must match what solc actually compiled:
    /// every function, event and error of the artifact is declared with the same
    /// selector, so a contract edit without a binding edit fails here.
    #[test]
    fn bindings_match_the_compiled_abi() {
        let artifact: serde_json::Value = serde_json::from_str(TALLY_PAYOUT_ARTIFACT).unwrap();
        let mut seen = Vec::new();
        for item in artifact["abi"].as_array().unwrap() {
            let sig = signature(item);
            match item["type"].as_str().unwrap() {
                "function" => seen.push(sig),
                "event" => seen.push(sig),
                "error" => seen.push(sig),
                other => panic!("unexpected abi item {other}"),
            }
        }
        seen.sort();
        let mut declared: Vec<String> = vec![
            TallyPayout::payBatchCall::SIGNATURE.into(),
            TallyPayout::executedCall::SIGNATURE.into(),
            TallyPayout::executedBlockCall::SIGNATURE.into(),
            TallyPayout::BatchPaid::SIGNATURE.into(),
            TallyPayout::EmptyBatch::SIGNATURE.into(),
            TallyPayout::LengthMismatch::SIGNATURE.into(),
            TallyPayout::AlreadyExecuted::SIGNATURE.into(),
            TallyPayout::NotAContract::SIGNATURE.into(),
            TallyPayout::ZeroRecipient::SIGNATURE.into(),
            TallyPayout::ZeroAmount::SIGNATURE.into(),
            TallyPayout::TransferFailed::SIGNATURE.into(),
        ];
        declared.sort();
        assert_eq!(seen, declared);
        assert_eq!(keccak256(TallyPayout::BatchPaid::SIGNATURE), TallyPayout::BatchPaid::SIGNATURE_HASH);
    }

    #[test]
    fn erc20_bindings_match_the_compiled_abi() {
        let artifact: serde_json::Value = serde_json::from_str(TEST_STABLECOIN_ARTIFACT).unwrap();
        let compiled: Vec<String> = artifact["abi"].as_array().unwrap().iter().map(signature).collect();
        for declared in [
            IERC20::transferCall::SIGNATURE,
            IERC20::transferFromCall::SIGNATURE,
            IERC20::approveCall::SIGNATURE,
            IERC20::balanceOfCall::SIGNATURE,
            IERC20::allowanceCall::SIGNATURE,
            IERC20::decimalsCall::SIGNATURE,
            IERC20::Transfer::SIGNATURE,
            IERC20::Approval::SIGNATURE,
        ] {
            assert!(compiled.iter().any(|c| c == declared), "{declared} not in the compiled ABI");
        }
    }

    #[test]
    fn artifacts_load_and_bad_ones_are_errors() {
        assert!(tally_payout_bytecode().unwrap().len() > 100);
        assert!(test_stablecoin_bytecode().unwrap().len() > 100);
        for bad in ["", "{}", r#"{"bytecode":"0xzz"}"#, r#"{"bytecode":""}"#, r#"{"bytecode":7}"#] {
            assert!(matches!(artifact_bytecode("x", bad), Err(EvmError::Artifact { .. })), "{bad}");
        }
    }
}

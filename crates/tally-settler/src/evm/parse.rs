//! Parsing of the user-facing EVM inputs: addresses, private keys, amounts.
//! Total functions: bad input is an [`EvmError`], never a panic.

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;

use super::EvmError;

/// Parses a `0x`-prefixed, 40-hex-digit address.
///
/// All-lowercase and all-uppercase hex are accepted as they are (no checksum to
/// check); mixed case must be a valid EIP-55 checksum, so a typo in a
/// checksummed address is caught instead of paying a stranger.
pub fn parse_address(input: &str) -> Result<Address, EvmError> {
    let bad = |reason| EvmError::BadAddress { input: truncate(input), reason };
    let hex_part =
        input.strip_prefix("0x").or_else(|| input.strip_prefix("0X")).ok_or_else(|| bad("missing 0x prefix"))?;
    if hex_part.len() != 40 {
        return Err(bad("expected 40 hex digits"));
    }
    if !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("not hex"));
    }
    let has_lower = hex_part.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = hex_part.bytes().any(|b| b.is_ascii_uppercase());
    if has_lower && has_upper {
        let checksummed = format!("0x{hex_part}");
        return Address::parse_checksummed(&checksummed, None).map_err(|_| bad("EIP-55 checksum mismatch"));
    }
    let mut bytes = [0u8; 20];
    hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| bad("not hex"))?;
    Ok(Address::from(bytes))
}

/// Parses a secp256k1 private key given as 64 hex digits (optionally `0x`-prefixed).
/// Error messages never echo the input.
pub fn parse_private_key(key_hex: &str) -> Result<PrivateKeySigner, EvmError> {
    let trimmed = key_hex.trim();
    let hex_part = trimmed.strip_prefix("0x").unwrap_or(trimmed);
    if hex_part.len() != 64 {
        return Err(EvmError::BadKey("expected 32 bytes (64 hex digits)"));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| EvmError::BadKey("not hex"))?;
    let signer = PrivateKeySigner::from_slice(&bytes).map_err(|_| EvmError::BadKey("not a valid secp256k1 key"));
    bytes.fill(0);
    signer
}

/// Parses a decimal token amount ("12.5") into the token's smallest unit,
/// refusing more fractional digits than `decimals` (no silent rounding).
pub fn parse_units(input: &str, decimals: u8) -> Result<U256, EvmError> {
    let bad = |reason| EvmError::BadAmount { input: truncate(input), reason };
    let (int_part, frac_part) = match input.split_once('.') {
        Some((i, f)) => (i, f),
        None => (input, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(bad("empty"));
    }
    if !int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad("expected decimal digits"));
    }
    if frac_part.len() > usize::from(decimals) {
        return Err(bad("more fractional digits than the token has"));
    }
    let ten = U256::from(10u8);
    let mut value = U256::ZERO;
    let padding = usize::from(decimals) - frac_part.len();
    for b in int_part.bytes().chain(frac_part.bytes()).chain(std::iter::repeat_n(b'0', padding)) {
        value = value
            .checked_mul(ten)
            .and_then(|v| v.checked_add(U256::from(b - b'0')))
            .ok_or_else(|| bad("does not fit in 256 bits"))?;
    }
    Ok(value)
}

/// Formats an amount in the smallest unit as a decimal with `decimals` places.
pub fn format_units(value: U256, decimals: u8) -> String {
    let digits = value.to_string();
    let d = usize::from(decimals);
    if d == 0 {
        return digits;
    }
    let padded = if digits.len() <= d { format!("{}{}", "0".repeat(d + 1 - digits.len()), digits) } else { digits };
    let (int_part, frac_part) = padded.split_at(padded.len() - d);
    format!("{int_part}.{frac_part}")
}

fn truncate(input: &str) -> String {
    input.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let checksummed = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
        let a = parse_address(checksummed).unwrap();
        assert_eq!(a.to_checksum(None), checksummed);
        assert_eq!(parse_address(&checksummed.to_lowercase()).unwrap(), a);
        assert_eq!(parse_address(&format!("0x{}", checksummed[2..].to_uppercase())).unwrap(), a);
        // One flipped case in a checksummed address is a typo, not a new address.
        let typo = "0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
        assert!(matches!(parse_address(typo), Err(EvmError::BadAddress { .. })));
        for bad in [
            "",
            "0x",
            "f39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
            "0x123",
            "0xzz9fd6e51aad88f6f4ce6ab8827279cfffb92266",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
        assert!(parse_address("0xf39fd6e51aad88f6f4ce6ab8827279cfffb9226é").is_err());
    }

    #[test]
    fn keys_never_echo() {
        let key = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
        let signer = parse_private_key(&format!("0x{key}")).unwrap();
        assert_eq!(signer.address(), parse_address("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266").unwrap());
        let bad = format!("{}zz", &key[..62]);
        let err = parse_private_key(&bad).unwrap_err().to_string();
        assert!(!err.contains(&key[..20]), "{err}");
        assert!(parse_private_key(&"00".repeat(32)).is_err(), "zero is not a key");
        assert!(parse_private_key("").is_err());
    }

    #[test]
    fn units() {
        assert_eq!(parse_units("12.5", 6).unwrap(), U256::from(12_500_000u64));
        assert_eq!(parse_units("0.000001", 6).unwrap(), U256::from(1u64));
        assert_eq!(parse_units("7", 6).unwrap(), U256::from(7_000_000u64));
        assert_eq!(parse_units(".5", 6).unwrap(), U256::from(500_000u64));
        assert!(parse_units("0.0000001", 6).is_err());
        assert!(parse_units("", 6).is_err());
        assert!(parse_units(".", 6).is_err());
        assert!(parse_units("-1", 6).is_err());
        assert!(parse_units("1e6", 6).is_err());
        assert!(parse_units(&"9".repeat(80), 6).is_err());
        assert_eq!(format_units(U256::from(12_500_000u64), 6), "12.500000");
        assert_eq!(format_units(U256::from(1u64), 6), "0.000001");
        assert_eq!(format_units(U256::from(5u64), 0), "5");
    }
}

//! Assets and amounts.
//!
//! Every amount in Tally is an unsigned integer in the asset's *smallest
//! unit*. An asset carries a `scale`: the number of decimal places between
//! that unit and the asset's display unit. `USD` with scale 6 counts
//! micro-dollars, so a $0.0001 page costs exactly `100`. Nothing here, or
//! anywhere in Tally, turns an amount into a float: display and parsing go
//! through decimal strings with checked integer arithmetic.

use serde::{Deserialize, Serialize};

/// Largest scale an asset may carry. 10^38 still fits a `u128`, but 18
/// decimal places (an ERC-20 convention) is the widest any real rail uses.
pub const SCALE_MAX: u8 = 18;

/// Longest asset code, in bytes (`USDC`, `EUR`, `EURC` ...).
pub const ASSET_CODE_LEN_MAX: usize = 12;

/// A configured asset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asset {
    /// Upper-case ASCII letters and digits, 1..=[`ASSET_CODE_LEN_MAX`] bytes.
    pub code: String,
    /// Decimal places between the smallest unit and the display unit.
    pub scale: u8,
    /// A disabled asset accepts no new IOUs; its history stays queryable.
    pub enabled: bool,
}

/// Why an asset definition or an amount string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("asset code must be 1..={ASSET_CODE_LEN_MAX} characters of A-Z and 0-9, got {0:?}")]
    BadAssetCode(String),
    #[error("scale {0} exceeds the maximum of {SCALE_MAX}")]
    BadScale(u8),
    #[error("amount {0:?} is not a non-negative decimal number")]
    NotADecimal(String),
    #[error("amount {0:?} has more than {1} decimal places")]
    TooPrecise(String, u8),
    #[error("amount {0:?} does not fit the integer range")]
    Overflow(String),
}

/// Checks the syntax of an asset code.
pub fn check_asset_code(code: &str) -> Result<(), AmountError> {
    let ok = !code.is_empty()
        && code.len() <= ASSET_CODE_LEN_MAX
        && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if ok { Ok(()) } else { Err(AmountError::BadAssetCode(code.to_owned())) }
}

impl Asset {
    /// Builds a validated asset definition.
    pub fn new(code: &str, scale: u8, enabled: bool) -> Result<Asset, AmountError> {
        check_asset_code(code)?;
        if scale > SCALE_MAX {
            return Err(AmountError::BadScale(scale));
        }
        Ok(Asset { code: code.to_owned(), scale, enabled })
    }
}

/// Formats an integer amount of smallest units as a decimal string with
/// exactly `scale` decimal places: `format_amount(1_500, 3) == "1.500"`.
pub fn format_amount(units: u128, scale: u8) -> String {
    assert!(scale <= SCALE_MAX, "scale is validated at asset registration");
    let digits = units.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded =
        if digits.len() <= scale { format!("{}{}", "0".repeat(scale + 1 - digits.len()), digits) } else { digits };
    let (whole, frac) = padded.split_at(padded.len() - scale);
    format!("{whole}.{frac}")
}

/// Parses a decimal string (`"12"`, `"0.000125"`) into smallest units at the
/// given scale. More decimal places than the scale is an error, never a
/// silent rounding.
pub fn parse_amount(text: &str, scale: u8) -> Result<u128, AmountError> {
    if scale > SCALE_MAX {
        return Err(AmountError::BadScale(scale));
    }
    let not_decimal = || AmountError::NotADecimal(text.to_owned());
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return Err(not_decimal());
    }
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !all_digits(frac) || (text.contains('.') && frac.is_empty()) {
        return Err(not_decimal());
    }
    if frac.len() > usize::from(scale) {
        return Err(AmountError::TooPrecise(text.to_owned(), scale));
    }
    let overflow = || AmountError::Overflow(text.to_owned());
    let mut units: u128 = 0;
    for b in whole.bytes().chain(frac.bytes()) {
        units = units.checked_mul(10).and_then(|u| u.checked_add(u128::from(b - b'0'))).ok_or_else(overflow)?;
    }
    let missing_places = u32::from(scale) - frac.len() as u32;
    units.checked_mul(10u128.pow(missing_places)).ok_or_else(overflow)
}

/// Parses an amount of smallest units written as x402 writes them: a
/// canonical decimal string, digits only, no sign, no leading zeros (`"0"`
/// itself is canonical), fitting a `u64`. `None` for anything else, so one
/// amount has exactly one spelling on the wire (`"+5"`, `"05"` and `"5 "`
/// are refused rather than read as 5).
pub fn parse_canonical_units(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let canonical = !bytes.is_empty()
        && bytes.len() <= 20
        && bytes.iter().all(u8::is_ascii_digit)
        && (bytes[0] != b'0' || bytes.len() == 1);
    if !canonical {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_units_have_one_spelling() {
        assert_eq!(parse_canonical_units("0"), Some(0));
        assert_eq!(parse_canonical_units("1500"), Some(1500));
        assert_eq!(parse_canonical_units("18446744073709551615"), Some(u64::MAX));
        for refused in ["", "+5", "-5", "05", "00", "5 ", " 5", "1.5", "1e3", "18446744073709551616", "0x10"] {
            assert_eq!(parse_canonical_units(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn formats_with_scale() {
        assert_eq!(format_amount(0, 0), "0");
        assert_eq!(format_amount(0, 2), "0.00");
        assert_eq!(format_amount(5, 3), "0.005");
        assert_eq!(format_amount(1_500, 3), "1.500");
        assert_eq!(format_amount(123_456_789, 6), "123.456789");
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!(parse_amount("12", 2), Ok(1200));
        assert_eq!(parse_amount("0.000125", 6), Ok(125));
        assert_eq!(parse_amount(".5", 1), Ok(5));
        assert!(matches!(parse_amount("0.0001", 3), Err(AmountError::TooPrecise(..))));
        assert!(matches!(parse_amount("-1", 3), Err(AmountError::NotADecimal(_))));
        assert!(matches!(parse_amount("1.", 3), Err(AmountError::NotADecimal(_))));
        assert!(matches!(parse_amount("", 3), Err(AmountError::NotADecimal(_))));
        assert!(matches!(parse_amount("1e5", 3), Err(AmountError::NotADecimal(_))));
        assert!(matches!(parse_amount("340282366920938463463374607431768211456", 0), Err(AmountError::Overflow(_))));
    }

    #[test]
    fn asset_codes() {
        assert!(Asset::new("USD", 6, true).is_ok());
        assert!(Asset::new("usd", 6, true).is_err());
        assert!(Asset::new("", 6, true).is_err());
        assert!(Asset::new("USD", 19, true).is_err());
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(units in any::<u64>(), scale in 0u8..=SCALE_MAX) {
            let text = format_amount(u128::from(units), scale);
            prop_assert_eq!(parse_amount(&text, scale), Ok(u128::from(units)));
        }

        #[test]
        fn canonical_units_round_trip(units in any::<u64>()) {
            prop_assert_eq!(parse_canonical_units(&units.to_string()), Some(units));
        }
    }
}

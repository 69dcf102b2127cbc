//! Payout destinations: where settlement sends a payee's money.
//!
//! A payee's destination is stored as text so an operator can type it and a
//! finance reader can read it, and it is parsed (and checked) here, once, at
//! registration, so settlement never meets a malformed one:
//!
//! | text | rail |
//! |---|---|
//! | `evm:0x52908400098527886E0F7030069857D2E4169EE7` | stablecoin transfer on an EVM chain |
//! | `iban:DE89370400440532013000` or `iban:DE89370400440532013000:COBADEFFXXX` | ISO 20022 credit transfer (pain.001) |
//! | `ach:011000015:12345678:checking` (or `savings`) | NACHA ACH credit |
//!
//! Checks are the real ones: the IBAN's mod-97 check digits, the ABA routing
//! number's 3-7-1 checksum, the EVM address's EIP-55 checksum when the text
//! is mixed case (Keccak lives in the settler, so only the shape is checked
//! here and the settler re-checks the checksum).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The payment rails Tally pays out on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rail {
    /// ERC-20 stablecoin transfers through the payout contract.
    Evm,
    /// ISO 20022 `pain.001.001.09` customer credit transfer files.
    Iso20022,
    /// NACHA ACH credit files.
    Nacha,
}

impl Rail {
    pub fn as_str(self) -> &'static str {
        match self {
            Rail::Evm => "evm",
            Rail::Iso20022 => "iso20022",
            Rail::Nacha => "nacha",
        }
    }

    pub fn parse(text: &str) -> Option<Rail> {
        match text {
            "evm" => Some(Rail::Evm),
            "iso20022" => Some(Rail::Iso20022),
            "nacha" => Some(Rail::Nacha),
            _ => None,
        }
    }
}

impl fmt::Display for Rail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of US bank account an ACH credit goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AchAccountKind {
    Checking,
    Savings,
}

/// A parsed, checked payout destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PayoutDestination {
    Evm { address: [u8; 20] },
    Iban { iban: String, bic: Option<String> },
    Ach { routing: String, account: String, kind: AchAccountKind },
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("destination must start with evm:, iban: or ach:, got {0:?}")]
    UnknownScheme(String),
    #[error("EVM address must be 0x followed by 40 hex digits, and not the zero address")]
    BadEvmAddress,
    #[error("IBAN {0:?} is malformed or its check digits are wrong")]
    BadIban(String),
    #[error("BIC {0:?} must be 8 or 11 characters: 4 letters, 2 letters, 2 alphanumerics, optional 3 alphanumerics")]
    BadBic(String),
    #[error("ACH routing number {0:?} must be 9 digits with a valid checksum")]
    BadRouting(String),
    #[error("ACH account number must be 1..=17 characters of 0-9, A-Z and -")]
    BadAchAccount,
    #[error("ACH account kind must be checking or savings")]
    BadAchKind,
}

impl PayoutDestination {
    /// Parses and checks the text form (see the module documentation).
    pub fn parse(text: &str) -> Result<PayoutDestination, DestinationError> {
        let (scheme, rest) = text.split_once(':').ok_or_else(|| DestinationError::UnknownScheme(text.to_owned()))?;
        match scheme {
            "evm" => {
                let hex_digits = rest.strip_prefix("0x").ok_or(DestinationError::BadEvmAddress)?;
                if hex_digits.len() != 40 {
                    return Err(DestinationError::BadEvmAddress);
                }
                let mut address = [0u8; 20];
                hex::decode_to_slice(hex_digits, &mut address).map_err(|_| DestinationError::BadEvmAddress)?;
                // Tokens burn or refuse transfers to the zero address; a
                // payout there is never what anyone meant.
                if address == [0u8; 20] {
                    return Err(DestinationError::BadEvmAddress);
                }
                Ok(PayoutDestination::Evm { address })
            }
            "iban" => {
                let (iban, bic) = match rest.split_once(':') {
                    Some((iban, bic)) => (iban, Some(bic)),
                    None => (rest, None),
                };
                let iban: String = iban.chars().filter(|c| *c != ' ').collect::<String>().to_ascii_uppercase();
                if !iban_is_valid(&iban) {
                    return Err(DestinationError::BadIban(iban));
                }
                let bic = match bic {
                    Some(bic) => {
                        let bic = bic.to_ascii_uppercase();
                        if !bic_is_valid(&bic) {
                            return Err(DestinationError::BadBic(bic));
                        }
                        Some(bic)
                    }
                    None => None,
                };
                Ok(PayoutDestination::Iban { iban, bic })
            }
            "ach" => {
                let mut parts = rest.split(':');
                let routing = parts.next().unwrap_or_default();
                let account = parts.next().unwrap_or_default();
                let kind = match parts.next() {
                    Some("checking") => AchAccountKind::Checking,
                    Some("savings") => AchAccountKind::Savings,
                    _ => return Err(DestinationError::BadAchKind),
                };
                if parts.next().is_some() {
                    return Err(DestinationError::BadAchKind);
                }
                if !aba_routing_is_valid(routing) {
                    return Err(DestinationError::BadRouting(routing.to_owned()));
                }
                let account_ok = (1..=17).contains(&account.len())
                    && account.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase() || b == b'-');
                if !account_ok {
                    return Err(DestinationError::BadAchAccount);
                }
                Ok(PayoutDestination::Ach { routing: routing.to_owned(), account: account.to_owned(), kind })
            }
            _ => Err(DestinationError::UnknownScheme(text.to_owned())),
        }
    }

    /// The rail this destination is paid on.
    pub fn rail(&self) -> Rail {
        match self {
            PayoutDestination::Evm { .. } => Rail::Evm,
            PayoutDestination::Iban { .. } => Rail::Iso20022,
            PayoutDestination::Ach { .. } => Rail::Nacha,
        }
    }
}

impl fmt::Display for PayoutDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayoutDestination::Evm { address } => write!(f, "evm:0x{}", hex::encode(address)),
            PayoutDestination::Iban { iban, bic: Some(bic) } => write!(f, "iban:{iban}:{bic}"),
            PayoutDestination::Iban { iban, bic: None } => write!(f, "iban:{iban}"),
            PayoutDestination::Ach { routing, account, kind } => {
                let kind = match kind {
                    AchAccountKind::Checking => "checking",
                    AchAccountKind::Savings => "savings",
                };
                write!(f, "ach:{routing}:{account}:{kind}")
            }
        }
    }
}

/// ISO 13616 IBAN check: 15..=34 characters, country letters, check digits,
/// and the whole string ≡ 1 (mod 97) after moving the first four to the end.
pub fn iban_is_valid(iban: &str) -> bool {
    let bytes = iban.as_bytes();
    let shape_ok = (15..=34).contains(&bytes.len())
        && bytes[..2].iter().all(u8::is_ascii_uppercase)
        && bytes[2..4].iter().all(u8::is_ascii_digit)
        && bytes[4..].iter().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    shape_ok && mod97(bytes[4..].iter().chain(&bytes[..4])) == 1
}

/// The ISO 7064 mod-97 remainder of upper-case letters (A = 10 … Z = 35)
/// and digits, read as one number.
fn mod97<'a>(chars: impl Iterator<Item = &'a u8>) -> u32 {
    chars.fold(0u32, |remainder, &b| {
        let value = if b.is_ascii_digit() { u32::from(b - b'0') } else { u32::from(b - b'A') + 10 };
        if value >= 10 { (remainder * 100 + value) % 97 } else { (remainder * 10 + value) % 97 }
    })
}

/// Builds the IBAN of a country code and BBAN by computing its check
/// digits; `None` when the result would not be a valid IBAN.
pub fn iban_from_bban(country: &str, bban: &str) -> Option<String> {
    let placeholder = format!("{bban}{country}00");
    if !placeholder.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) {
        return None;
    }
    let check = 98 - mod97(placeholder.as_bytes().iter());
    let iban = format!("{country}{check:02}{bban}");
    iban_is_valid(&iban).then_some(iban)
}

/// ISO 9362 BIC shape: 4 letters (bank), 2 letters (country), 2
/// alphanumerics (location), optional 3 alphanumerics (branch).
pub fn bic_is_valid(bic: &str) -> bool {
    let b = bic.as_bytes();
    let alnum = |c: &u8| c.is_ascii_uppercase() || c.is_ascii_digit();
    (b.len() == 8 || b.len() == 11)
        && b[..6].iter().all(u8::is_ascii_uppercase)
        && b[6..8].iter().all(alnum)
        && b[8..].iter().all(alnum)
}

/// ABA routing number: 9 digits whose weighted sum (3, 7, 1 repeating) is a
/// multiple of 10.
pub fn aba_routing_is_valid(routing: &str) -> bool {
    let b = routing.as_bytes();
    if b.len() != 9 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let weights = [3u32, 7, 1, 3, 7, 1, 3, 7, 1];
    let sum: u32 = b.iter().zip(weights).map(|(d, w)| u32::from(d - b'0') * w).sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ibans() {
        assert!(iban_is_valid("DE89370400440532013000"));
        assert!(iban_is_valid("GB82WEST12345698765432"));
        assert!(iban_is_valid("FR1420041010050500013M02606"));
        assert!(!iban_is_valid("DE89370400440532013001"));
        assert!(!iban_is_valid("de89370400440532013000"));
        assert!(!iban_is_valid("DE8937"));
    }

    #[test]
    fn builds_ibans_from_bbans() {
        assert_eq!(iban_from_bban("DE", "370400440532013000").as_deref(), Some("DE89370400440532013000"));
        assert_eq!(iban_from_bban("GB", "WEST12345698765432").as_deref(), Some("GB82WEST12345698765432"));
        assert_eq!(iban_from_bban("de", "370400440532013000"), None);
        assert_eq!(iban_from_bban("DE", "37"), None);
    }

    #[test]
    fn routing_numbers() {
        assert!(aba_routing_is_valid("011000015"));
        assert!(aba_routing_is_valid("021000021"));
        assert!(!aba_routing_is_valid("021000022"));
        assert!(!aba_routing_is_valid("02100002"));
    }

    #[test]
    fn parse_and_display_round_trip() {
        for text in [
            "evm:0x52908400098527886e0f7030069857d2e4169ee7",
            "iban:DE89370400440532013000",
            "iban:DE89370400440532013000:COBADEFFXXX",
            "ach:011000015:12345678:checking",
            "ach:021000021:9-87:savings",
        ] {
            let parsed = PayoutDestination::parse(text).unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(PayoutDestination::parse("iban:DE89 3704 0044 0532 0130 00").unwrap().rail(), Rail::Iso20022);
    }

    #[test]
    fn refusals() {
        assert!(matches!(PayoutDestination::parse("paypal:x"), Err(DestinationError::UnknownScheme(_))));
        assert!(matches!(PayoutDestination::parse("nothing"), Err(DestinationError::UnknownScheme(_))));
        assert_eq!(PayoutDestination::parse("evm:0x1234"), Err(DestinationError::BadEvmAddress));
        let zero = format!("evm:0x{}", "0".repeat(40));
        assert_eq!(PayoutDestination::parse(&zero), Err(DestinationError::BadEvmAddress));
        assert!(matches!(PayoutDestination::parse("iban:DE00370400440532013000"), Err(DestinationError::BadIban(_))));
        assert!(matches!(PayoutDestination::parse("iban:DE89370400440532013000:XX"), Err(DestinationError::BadBic(_))));
        assert!(matches!(PayoutDestination::parse("ach:123456789:1:checking"), Err(DestinationError::BadRouting(_))));
        assert_eq!(PayoutDestination::parse("ach:011000015:1:loan"), Err(DestinationError::BadAchKind));
        assert_eq!(PayoutDestination::parse("ach:011000015::checking"), Err(DestinationError::BadAchAccount));
    }
}

//! The ledger id: sixteen random bytes drawn once, when a ledger is created.
//!
//! Payment ids must be unique beyond one ledger. A second ledger (a test
//! instance, a rebuild after a disaster, another region) that pays from the
//! same treasury or bank account would otherwise derive the same EVM batch
//! ids, payout ids and bank message ids as the first one's epoch 1: the payout
//! contract would answer "already executed" with the other ledger's
//! transaction, and the bank would refuse a duplicate `MsgId`. Every id that
//! leaves Tally therefore mixes in the ledger id ([`crate::settlement`]).
//!
//! The id is drawn by the ledger at genesis (or when a format-1 ledger is
//! migrated), stored in its `meta` column family and in the first record of
//! its journal, and shown by `tally ledger info`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A ledger's identity (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LedgerId(pub [u8; 16]);

impl LedgerId {
    /// The length of [`LedgerId::short`].
    pub const SHORT_LEN: usize = 8;

    /// The first eight hex digits: the prefix of bank message ids, where
    /// length is scarce (ISO 20022 `MsgId` holds 35 characters). Thirty-two
    /// random bits keep two ledgers of one operator apart with odds of about
    /// one in four billion; the full id goes into every hash-derived id.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..Self::SHORT_LEN / 2])
    }
}

impl fmt::Display for LedgerId {
    /// 32 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Why a string is not a ledger id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a ledger id is 32 hex digits")]
pub struct BadLedgerId;

impl FromStr for LedgerId {
    type Err = BadLedgerId;

    fn from_str(text: &str) -> Result<LedgerId, BadLedgerId> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| BadLedgerId)?;
        Ok(LedgerId(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_shortens() {
        let id = LedgerId([0xa1; 16]);
        assert_eq!(id.to_string(), "a1".repeat(16));
        assert_eq!(id.to_string().parse::<LedgerId>(), Ok(id));
        assert_eq!(id.short(), "a1a1a1a1");
        assert!("a1".parse::<LedgerId>().is_err());
    }
}

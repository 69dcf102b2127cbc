//! Accounts: who owes (payers) and who is owed (payees).
//!
//! A payer is identified by an account id and authenticates with one or more
//! Ed25519 public keys; each key belongs to exactly one payer. Its credit
//! limit is per asset: the unsettled amount it may owe, inclusive (owing
//! exactly the limit is allowed). A payer without a limit for an asset has a
//! limit of zero: it may owe nothing in it. A payee is an account id with a
//! payout destination that settlement fills in.

use serde::{Deserialize, Serialize};

use crate::iou::PublicKeyBytes;

/// Longest account id (payer or payee), in bytes.
pub const ACCOUNT_ID_LEN_MAX: usize = 64;
/// Longest display name, in bytes.
pub const DISPLAY_NAME_LEN_MAX: usize = 128;
/// Most keys one payer may register. Bounds the key directory and the
/// payer record.
pub const PAYER_KEYS_MAX: usize = 16;
/// Longest payout destination, in bytes (an IBAN, an EVM address, or a
/// routing/account pair all fit with room to spare).
pub const PAYOUT_DESTINATION_LEN_MAX: usize = 256;
/// Longest signature agent (the URL a crawler sends in `Signature-Agent`), in bytes.
pub const SIGNATURE_AGENT_LEN_MAX: usize = 256;

/// Checks the syntax of an account id: 1..=64 bytes of `A-Z a-z 0-9 . _ -`.
pub fn is_valid_account_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ACCOUNT_ID_LEN_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks the syntax of a signature agent: at most [`SIGNATURE_AGENT_LEN_MAX`] bytes of printable
/// ASCII (no spaces), `https://` or `http://` followed by a non-empty host.
pub fn is_valid_signature_agent(agent: &str) -> bool {
    let rest = agent.strip_prefix("https://").or_else(|| agent.strip_prefix("http://"));
    agent.len() <= SIGNATURE_AGENT_LEN_MAX
        && agent.bytes().all(|b| b.is_ascii_graphic())
        && rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
}

/// Whether a payer may currently sign new IOUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayerStatus {
    Active,
    /// Suspended payers' new IOUs are refused; what they owe stays owed.
    Suspended,
}

/// A registered payer (a crawler or agent operator).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payer {
    pub id: String,
    pub display_name: String,
    pub status: PayerStatus,
    pub keys: Vec<PublicKeyBytes>,
    /// `(asset code, limit in smallest units)`, sorted by asset code.
    pub credit_limits: Vec<(String, u128)>,
    /// The payee account this payer nets under at settlement (an agent that
    /// both spends and earns), if any.
    pub settles_with: Option<String>,
    /// The signature agent its crawler sends in `Signature-Agent` (a URL or
    /// origin such as `https://crawler.example`, where its key directory
    /// lives), if known. Unique across payers.
    pub signature_agent: Option<String>,
    /// Keys this payer revoked, with when (Unix ms). A revoked key stays
    /// bound to its payer for ever (it can never be registered again, by
    /// anyone, and its old IOUs stay attributable), but signs nothing new.
    pub revoked_keys: Vec<(PublicKeyBytes, u64)>,
}

impl Payer {
    /// Whether `key` was revoked.
    pub fn is_revoked(&self, key: &PublicKeyBytes) -> bool {
        self.revoked_keys.iter().any(|(revoked, _)| revoked == key)
    }

    /// The credit limit in `asset`, zero when none was set. Limits are
    /// inclusive: a payer with limit `L` may owe exactly `L`.
    pub fn credit_limit(&self, asset: &str) -> u128 {
        self.credit_limits.iter().find(|(code, _)| code == asset).map_or(0, |(_, limit)| *limit)
    }

    /// Sets (or replaces) the limit for `asset`, keeping the list sorted.
    pub fn set_credit_limit(&mut self, asset: &str, limit: u128) {
        match self.credit_limits.binary_search_by(|(code, _)| code.as_str().cmp(asset)) {
            Ok(i) => self.credit_limits[i].1 = limit,
            Err(i) => self.credit_limits.insert(i, (asset.to_owned(), limit)),
        }
    }
}

/// Whether a payee may be paid and charged for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayeeStatus {
    Active,
    /// No new IOUs are accepted for it, and settlement holds what it is
    /// owed (carried forward, reason `payee suspended`) until it is reinstated.
    Suspended,
}

/// A registered payee (a publisher or API owner).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payee {
    pub id: String,
    pub display_name: String,
    /// Where settlement pays this payee, in the text form of
    /// [`crate::destination::PayoutDestination`]; empty means "not yet
    /// provided" (its credit carries forward until it is).
    pub payout_destination: String,
    pub status: PayeeStatus,
}

impl Payee {
    /// An active payee.
    pub fn new(id: &str, display_name: &str, payout_destination: &str) -> Payee {
        Payee {
            id: id.to_owned(),
            display_name: display_name.to_owned(),
            payout_destination: payout_destination.to_owned(),
            status: PayeeStatus::Active,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids() {
        assert!(is_valid_account_id("crawler-1.example_org"));
        assert!(!is_valid_account_id(""));
        assert!(!is_valid_account_id("has space"));
        assert!(!is_valid_account_id(&"a".repeat(65)));
    }

    #[test]
    fn signature_agents() {
        assert!(is_valid_signature_agent("https://crawler.example"));
        assert!(is_valid_signature_agent("http://127.0.0.1:8080"));
        assert!(!is_valid_signature_agent("ftp://crawler.example"));
        assert!(!is_valid_signature_agent("https://"));
        assert!(!is_valid_signature_agent("https:///path"));
        assert!(!is_valid_signature_agent("https://a b"));
        assert!(!is_valid_signature_agent(&format!("https://{}", "a".repeat(SIGNATURE_AGENT_LEN_MAX))));
    }

    #[test]
    fn limits_default_to_zero_and_stay_sorted() {
        let mut payer = Payer {
            id: "p".into(),
            display_name: "P".into(),
            status: PayerStatus::Active,
            keys: vec![],
            credit_limits: vec![],
            settles_with: None,
            signature_agent: None,
            revoked_keys: vec![],
        };
        assert_eq!(payer.credit_limit("USD"), 0);
        payer.set_credit_limit("USD", 10);
        payer.set_credit_limit("EUR", 5);
        payer.set_credit_limit("USD", 7);
        assert_eq!(payer.credit_limits, vec![("EUR".into(), 5), ("USD".into(), 7)]);
    }
}

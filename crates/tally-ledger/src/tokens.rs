//! Query tokens: who may read what through the query service.
//!
//! Balances, exposures and receipts name every payer–payee flow, every
//! credit limit and every resource a payer fetched; the query service
//! therefore needs a bearer token. The admin token reads everything. Tokens
//! created with `tally token create` are scoped: to one payee (a publisher
//! reading what it is owed), to one payer (a crawler operator reading what it
//! owes), or to everything (a finance tool). A scoped caller sees only its
//! own rows; a query about anyone else is refused.
//!
//! The ledger stores a token's SHA-256, never the token: `"qtoken/" ‖
//! SHA-256(token)` → [`QueryToken`] in the `accounts` column family, written
//! and revoked by admin commands (so journaled, with who did it).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::LedgerError;
use crate::layout::{ACCOUNT_QUERY_TOKEN_PREFIX, CF_ACCOUNTS, account_key, decode_bincode};
use crate::store::Ledger;

/// Longest token name, in bytes (names follow the account id alphabet).
pub const TOKEN_NAME_LEN_MAX: usize = 64;

/// What a token may read.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QueryScope {
    /// Every row (finance and operations tools).
    All,
    /// Only the rows where this payer owes.
    Payer(String),
    /// Only the rows where this payee is owed.
    Payee(String),
}

impl QueryScope {
    /// Whether a row between `payer` and `payee` is visible.
    pub fn sees(&self, payer: &str, payee: &str) -> bool {
        match self {
            QueryScope::All => true,
            QueryScope::Payer(id) => id == payer,
            QueryScope::Payee(id) => id == payee,
        }
    }
}

impl std::fmt::Display for QueryScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryScope::All => f.write_str("all"),
            QueryScope::Payer(id) => write!(f, "payer:{id}"),
            QueryScope::Payee(id) => write!(f, "payee:{id}"),
        }
    }
}

/// A stored token (its secret is not kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryToken {
    pub name: String,
    pub scope: QueryScope,
    pub created_at_ms: u64,
    /// Set once revoked; a revoked token reads nothing.
    pub revoked_at_ms: Option<u64>,
}

/// The digest a token is stored and looked up by.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Ledger {
    /// The live token whose secret hashes to `digest`, if any.
    pub fn query_token(&self, digest: &[u8; 32]) -> Result<Option<QueryToken>, LedgerError> {
        let key = account_key(ACCOUNT_QUERY_TOKEN_PREFIX, digest);
        match self.db.get_pinned_cf(self.cf(CF_ACCOUNTS), key)? {
            None => Ok(None),
            Some(value) => {
                let token: QueryToken = decode_bincode("query token", &value)?;
                Ok(token.revoked_at_ms.is_none().then_some(token))
            }
        }
    }

    /// Every token, revoked ones included, with its digest.
    pub fn query_tokens(&self) -> Result<Vec<([u8; 32], QueryToken)>, LedgerError> {
        let prefix = ACCOUNT_QUERY_TOKEN_PREFIX;
        let mut out = Vec::new();
        let mode = rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_ACCOUNTS), mode) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            let digest: [u8; 32] = key[prefix.len()..]
                .try_into()
                .map_err(|_| LedgerError::Corruption("query token key of the wrong length".into()))?;
            out.push((digest, decode_bincode("query token", &value)?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_see_only_their_rows() {
        assert!(QueryScope::All.sees("a", "b"));
        assert!(QueryScope::Payee("b".into()).sees("a", "b"));
        assert!(!QueryScope::Payee("b".into()).sees("b", "c"));
        assert!(QueryScope::Payer("a".into()).sees("a", "z"));
        assert!(!QueryScope::Payer("a".into()).sees("z", "a"));
        assert_eq!(QueryScope::Payee("b".into()).to_string(), "payee:b");
    }
}

//! Bearer-token authentication: the admin token for the admin-side services
//! (`Admin`, `Settlement`), and the admin token or a scoped query token for
//! `Query` ([`QueryAuth`]).
//!
//! The token comes from configuration. The check must not tell a guesser how
//! close a guess was: both the presented header and the expected one are
//! hashed with SHA-256 and the two digests compared in constant time
//! (`subtle`). Hashing first makes the comparison independent of the
//! token's length as well as its content (a plain slice `ct_eq` returns
//! early on a length mismatch). The token never appears in logs or errors,
//! and `AdminAuth`'s `Debug` shows no part of it.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tally_ledger::{Ledger, LedgerError, QueryScope, token_digest};
use tonic::{Request, Status, service::Interceptor};

#[derive(Clone)]
pub struct AdminAuth {
    /// SHA-256 of `Bearer <token>`.
    expected_digest: [u8; 32],
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminAuth(<redacted>)")
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Why a token cannot guard an API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// An admin API that accepts anyone must be a deliberate choice, and
    /// Tally offers no such choice.
    #[error("the admin token must not be empty (an empty admin-token file is refused, never accepted)")]
    Empty,
}

impl AdminAuth {
    pub fn new(token: &str) -> Result<AdminAuth, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        Ok(AdminAuth { expected_digest: digest(format!("Bearer {token}").as_bytes()) })
    }

    /// Whether an `authorization` header value carries the token.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        bool::from(digest(presented).ct_eq(&self.expected_digest))
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request.metadata().get("authorization").map(|v| v.as_bytes()).unwrap_or_default();
        if self.accepts(presented) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("admin calls need `authorization: Bearer <admin token>`"))
        }
    }
}

/// Who may read what through the Query service: the admin token reads
/// everything; a query token reads what its scope allows (`tally_ledger::tokens`).
#[derive(Clone)]
pub struct QueryAuth {
    admin: AdminAuth,
    ledger: Ledger,
}

impl std::fmt::Debug for QueryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueryAuth(<redacted>)")
    }
}

impl QueryAuth {
    pub fn new(admin: AdminAuth, ledger: Ledger) -> QueryAuth {
        QueryAuth { admin, ledger }
    }

    /// The scope of the `authorization` header presented. Reads the ledger
    /// (one point lookup of the token's digest): call it off the async workers.
    pub fn scope(&self, presented: Option<&[u8]>) -> Result<QueryScope, Status> {
        let unauthenticated =
            || Status::unauthenticated("query calls need `authorization: Bearer <admin token or query token>`");
        let presented = presented.ok_or_else(unauthenticated)?;
        if self.admin.accepts(presented) {
            return Ok(QueryScope::All);
        }
        let token = presented.strip_prefix(b"Bearer ").ok_or_else(unauthenticated)?;
        let token = std::str::from_utf8(token).map_err(|_| unauthenticated())?;
        match self.ledger.query_token(&token_digest(token)) {
            Ok(Some(stored)) => Ok(stored.scope),
            Ok(None) => Err(unauthenticated()),
            Err(error @ LedgerError::Corruption(_)) => Err(Status::data_loss(error.to_string())),
            Err(error) => Err(Status::unavailable(error.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cret-admin-token";

    fn call(auth: &mut AdminAuth, header: Option<&str>) -> Result<(), Status> {
        let mut request = Request::new(());
        if let Some(value) = header {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        auth.call(request).map(|_| ())
    }

    #[test]
    fn right_token_passes_wrong_and_missing_do_not() {
        let mut auth = AdminAuth::new(TOKEN).unwrap();
        assert!(call(&mut auth, Some(&format!("Bearer {TOKEN}"))).is_ok());
        for wrong in [
            String::new(),
            "Bearer".into(),
            "Bearer ".into(),
            TOKEN.into(),
            format!("bearer {TOKEN}"),
            format!("Bearer {TOKEN} "),
            format!("Bearer {TOKEN}x"),
            format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
            "Bearer S3cret-admin-token".into(),
        ] {
            let status = call(&mut auth, Some(&wrong)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{wrong:?}");
            assert!(!status.message().contains(TOKEN), "the refusal names no token");
        }
        assert_eq!(call(&mut auth, None).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn debug_shows_no_token() {
        let text = format!("{:?}", AdminAuth::new(TOKEN).unwrap());
        assert!(!text.contains(TOKEN) && !text.contains(&hex::encode(digest(TOKEN.as_bytes()))[..8]));
    }

    #[test]
    fn empty_token_is_refused_not_a_panic() {
        assert_eq!(AdminAuth::new("").unwrap_err(), TokenError::Empty);
    }
}

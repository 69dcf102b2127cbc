//! Bearer-token authentication for the admin-side services (`Admin`,
//! `Settlement`).
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

impl AdminAuth {
    /// Panics on an empty token: an admin API that accepts anyone must be a
    /// deliberate choice, and Tally offers no such choice.
    pub fn new(token: &str) -> AdminAuth {
        assert!(!token.is_empty(), "the admin token must not be empty");
        AdminAuth { expected_digest: digest(format!("Bearer {token}").as_bytes()) }
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
        let mut auth = AdminAuth::new(TOKEN);
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
        let text = format!("{:?}", AdminAuth::new(TOKEN));
        assert!(!text.contains(TOKEN) && !text.contains(&hex::encode(digest(TOKEN.as_bytes()))[..8]));
    }

    #[test]
    #[should_panic(expected = "must not be empty")]
    fn empty_token_is_refused() {
        AdminAuth::new("");
    }
}

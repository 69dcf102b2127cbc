//! Bearer-token authentication for the admin service.
//!
//! The token comes from configuration. Comparison is constant-time in the
//! token's content (`subtle`), so response timing reveals nothing about how
//! much of a guess was right. The token never appears in logs or errors.

use subtle::ConstantTimeEq;
use tonic::{Request, Status, service::Interceptor};

#[derive(Clone)]
pub struct AdminAuth {
    expected: Vec<u8>,
}

impl AdminAuth {
    /// Panics on an empty token: an admin API that accepts anyone must be a
    /// deliberate choice, and Tally offers no such choice.
    pub fn new(token: &str) -> AdminAuth {
        assert!(!token.is_empty(), "the admin token must not be empty");
        AdminAuth { expected: format!("Bearer {token}").into_bytes() }
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request.metadata().get("authorization").map(|v| v.as_bytes()).unwrap_or_default();
        if bool::from(presented.ct_eq(&self.expected)) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("admin calls need `authorization: Bearer <admin token>`"))
        }
    }
}

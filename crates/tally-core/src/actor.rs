//! Who did it: the author of every change to money or to the control plane.
//!
//! Every admin change and every settlement step is recorded in the ledger's
//! journal with its [`Actor`] (`tally_ledger::journal`), so an auditor can
//! answer "who changed this payee's bank account, and when". Front doors
//! build the actor from what they authenticated: the admin API knows that
//! the caller held the admin token and where it connected from; the
//! settlement driver acts for whoever asked it to settle (a caller of the
//! admin API, the schedule, or the engine resuming after a restart).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest text kept in an actor's fields, in bytes.
pub const ACTOR_TEXT_LEN_MAX: usize = 128;

/// The author of a recorded change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// The engine itself: genesis, migration, startup notices.
    Engine,
    /// A caller that presented the shared admin token, from `peer` (its
    /// address, or `local` for an in-process caller).
    AdminToken { peer: String },
    /// The settlement driver, acting on behalf of `trigger` (e.g. `schedule
    /// daily@02:00`, `startup resume`, or the admin caller that asked).
    Settler { trigger: String },
}

impl Actor {
    /// An admin-token caller from `peer`, the text bounded.
    pub fn admin_token(peer: &str) -> Actor {
        Actor::AdminToken { peer: bounded(peer) }
    }

    /// The settlement driver on behalf of `trigger`, the text bounded.
    pub fn settler(trigger: &str) -> Actor {
        Actor::Settler { trigger: bounded(trigger) }
    }

    /// Whether every text field is within [`ACTOR_TEXT_LEN_MAX`] (the ledger refuses others).
    pub fn is_bounded(&self) -> bool {
        match self {
            Actor::Engine => true,
            Actor::AdminToken { peer } => peer.len() <= ACTOR_TEXT_LEN_MAX,
            Actor::Settler { trigger } => trigger.len() <= ACTOR_TEXT_LEN_MAX,
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Engine => f.write_str("engine"),
            Actor::AdminToken { peer } => write!(f, "admin-token@{peer}"),
            Actor::Settler { trigger } => write!(f, "settler ({trigger})"),
        }
    }
}

/// Truncates to [`ACTOR_TEXT_LEN_MAX`] bytes on a character boundary.
fn bounded(text: &str) -> String {
    let mut end = text.len().min(ACTOR_TEXT_LEN_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_display_and_bound_their_text() {
        assert_eq!(Actor::admin_token("127.0.0.1:5").to_string(), "admin-token@127.0.0.1:5");
        assert_eq!(Actor::settler("schedule").to_string(), "settler (schedule)");
        let long = Actor::admin_token(&"é".repeat(100));
        assert!(long.is_bounded());
        assert!(!Actor::AdminToken { peer: "x".repeat(ACTOR_TEXT_LEN_MAX + 1) }.is_bounded());
    }
}

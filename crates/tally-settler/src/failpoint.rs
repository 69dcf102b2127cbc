//! Failpoints: named places where a test can make the process die, or make
//! one step fail.
//!
//! Exactly-once is a claim about crashes and failures, so the tests crash the
//! real process, or make a rail answer with an error, at each step of
//! settlement and rerun it. `TALLY_FAILPOINTS` holds a comma-separated list
//! of `name` or `name=action` entries:
//!
//! | action | what happens when execution reaches the point |
//! |---|---|
//! | `abort` (the default) | the process aborts on the spot (no destructors, no flushes: as close to SIGKILL as a process can do to itself) |
//! | `abort@N` | the first N−1 hits pass; the Nth aborts (e.g. after the second EVM batch) |
//! | `error` | every hit returns an error, as the failing component would |
//! | `error*N` | the first N hits return an error, later hits pass (a transient fault: a rerun in the same process succeeds) |
//!
//! Unset, a failpoint is one load of a cached, empty list.
//!
//! **Test builds only.** The points are compiled in only with the cargo
//! feature `failpoints`, which the `tally` package turns on for its own
//! dev-dependencies: `cargo test` (and so the `tally` binary the integration
//! tests start) has them, `cargo build --release` does not. In a build
//! without them [`hit`] is `Ok(())` and nothing reads `TALLY_FAILPOINTS`, so
//! no environment variable can make a production process abort mid-payout.
//! [`COMPILED_IN`] says which kind of build this is.
//!
//! The points between two recorded steps, in the order settlement meets them:
//!
//! | name | the point … |
//! |---|---|
//! | `settle-after-seal` | after sealing, before planning |
//! | `settle-after-plan` | after the plan is durable, before anything is submitted |
//! | `settle-after-submitting` | after the epoch is recorded as submitting, before the first batch |
//! | `evm-after-prepare` | after a signed transaction is recorded, before it is broadcast |
//! | `evm-after-broadcast` | after the transaction is sent, before its receipt is recorded |
//! | `evm-after-receipt` | after one batch is recorded as mined, before the next |
//! | `bank-after-prepare` | after a file's name and hash are recorded, before it is written |
//! | `bank-mid-write` | halfway through writing a payment file |
//! | `bank-after-sent-link` | after the file is linked into `.sent/`, before it is renamed into the outbox |
//! | `bank-after-write` | after the file is in the outbox, before that is recorded |
//! | `bank-after-record` | after the file is recorded as written, before the next batch |
//!
//! And the points where a rail's own call can fail (with `error`, the call
//! returns the error a failing node or file system would):
//!
//! | name | the call |
//! |---|---|
//! | `evm-batch-executed` | asking the payout contract whether a batch id was executed |
//! | `evm-nonce` | reading the treasury's nonce |
//! | `evm-sign` | estimating gas, pricing and signing a transaction |
//! | `evm-broadcast` | sending a transaction; the error comes *after* the node accepted it (the answer was lost) |
//! | `evm-receipt` | polling for a receipt |
//! | `outbox-write` | writing a bank file into the outbox |
//! | `ledger-step` | recording a settlement step in the ledger |

#[cfg(feature = "failpoints")]
use std::sync::OnceLock;
#[cfg(feature = "failpoints")]
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether this build has failpoints (the `failpoints` feature: test builds).
pub const COMPILED_IN: bool = cfg!(feature = "failpoints");

/// Every failpoint name, for validation and documentation.
pub const FAILPOINTS: [&str; 18] = [
    "settle-after-seal",
    "settle-after-plan",
    "settle-after-submitting",
    "evm-after-prepare",
    "evm-after-broadcast",
    "evm-after-receipt",
    "bank-after-prepare",
    "bank-mid-write",
    "bank-after-sent-link",
    "bank-after-write",
    "bank-after-record",
    "evm-batch-executed",
    "evm-nonce",
    "evm-sign",
    "evm-broadcast",
    "evm-receipt",
    "outbox-write",
    "ledger-step",
];

/// The most entries `TALLY_FAILPOINTS` may arm (a bound on the scan per hit).
pub const ARMED_MAX: usize = 32;

/// What an armed failpoint does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Abort on the `n`th hit (1 = the first).
    Abort { on_hit: u64 },
    /// Return an error on the first `hits` hits (`u64::MAX`: always).
    Error { hits: u64 },
}

/// The error an armed `error` failpoint returns; each caller turns it into
/// the error its component would return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("failpoint {name}: injected error")]
pub struct Injected {
    pub name: &'static str,
}

#[cfg(feature = "failpoints")]
struct Armed {
    name: String,
    action: Action,
    hits: AtomicU64,
}

/// Parses one `name[=action]` entry; `None` for a malformed one.
pub fn parse_entry(entry: &str) -> Option<(String, Action)> {
    let (name, action) = match entry.split_once('=') {
        Some((name, action)) => (name.trim(), action.trim()),
        None => (entry.trim(), "abort"),
    };
    let action = if action == "abort" {
        Action::Abort { on_hit: 1 }
    } else if let Some(n) = action.strip_prefix("abort@") {
        Action::Abort { on_hit: n.parse().ok().filter(|n| *n >= 1)? }
    } else if action == "error" {
        Action::Error { hits: u64::MAX }
    } else if let Some(n) = action.strip_prefix("error*") {
        Action::Error { hits: n.parse().ok().filter(|n| *n >= 1)? }
    } else {
        return None;
    };
    (!name.is_empty()).then(|| (name.to_owned(), action))
}

#[cfg(feature = "failpoints")]
fn armed() -> &'static [Armed] {
    static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let Ok(list) = std::env::var("TALLY_FAILPOINTS") else { return Vec::new() };
        let mut armed = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|s| !s.is_empty()).take(ARMED_MAX) {
            match parse_entry(entry) {
                Some((name, action)) if FAILPOINTS.contains(&name.as_str()) => {
                    armed.push(Armed { name, action, hits: AtomicU64::new(0) })
                }
                // A typo must not silently disarm a crash test.
                _ => {
                    eprintln!("TALLY_FAILPOINTS: bad entry {entry:?} (known points: {FAILPOINTS:?})");
                    std::process::abort();
                }
            }
        }
        armed
    })
}

/// Runs failpoint `name`: aborts the process, returns an [`Injected`]
/// error, or (unarmed, the normal case) returns `Ok`.
#[cfg(feature = "failpoints")]
pub fn hit(name: &'static str) -> Result<(), Injected> {
    debug_assert!(FAILPOINTS.contains(&name), "unknown failpoint {name}");
    for point in armed().iter().filter(|p| p.name == name) {
        let n = point.hits.fetch_add(1, Ordering::Relaxed) + 1;
        match point.action {
            Action::Abort { on_hit } if n == on_hit => {
                eprintln!("failpoint {name}: aborting (hit {n})");
                std::process::abort();
            }
            Action::Error { hits } if n <= hits => {
                eprintln!("failpoint {name}: injecting an error (hit {n})");
                return Err(Injected { name });
            }
            _ => {}
        }
    }
    Ok(())
}

/// A build without failpoints: every point passes, whatever the environment says.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(name: &'static str) -> Result<(), Injected> {
    debug_assert!(FAILPOINTS.contains(&name), "unknown failpoint {name}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse() {
        assert_eq!(parse_entry("evm-receipt"), Some(("evm-receipt".into(), Action::Abort { on_hit: 1 })));
        assert_eq!(parse_entry("a=abort@3"), Some(("a".into(), Action::Abort { on_hit: 3 })));
        assert_eq!(parse_entry("a=error"), Some(("a".into(), Action::Error { hits: u64::MAX })));
        assert_eq!(parse_entry("a=error*2"), Some(("a".into(), Action::Error { hits: 2 })));
        assert_eq!(parse_entry("a=abort@0"), None);
        assert_eq!(parse_entry("a=error*x"), None);
        assert_eq!(parse_entry("a=explode"), None);
        assert_eq!(parse_entry("=error"), None);
    }

    #[test]
    fn unarmed_points_pass() {
        // The test process does not arm failpoints.
        if std::env::var_os("TALLY_FAILPOINTS").is_none() {
            for name in FAILPOINTS {
                assert_eq!(hit(name), Ok(()));
            }
        }
    }
}

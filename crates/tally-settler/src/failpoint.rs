//! Failpoints: named places where a test can make the process die.
//!
//! Exactly-once is a claim about crashes, so the tests crash the real
//! process at each step of settlement and rerun it. `TALLY_FAILPOINTS` holds
//! a comma-separated list of names; when execution reaches a listed point
//! the process aborts on the spot (no destructors, no flushes: as close to
//! SIGKILL as a process can do to itself). Unset, a failpoint is one relaxed
//! load of a cached, empty list.
//!
//! The points, in the order settlement meets them:
//!
//! | name | the process dies … |
//! |---|---|
//! | `settle-after-seal` | after sealing, before planning |
//! | `settle-after-plan` | after the plan is durable, before anything is submitted |
//! | `evm-after-prepare` | after a signed transaction is recorded, before it is broadcast |
//! | `evm-after-broadcast` | after the transaction is sent, before its receipt is recorded |
//! | `evm-after-receipt` | after one batch is recorded as mined, before the next |
//! | `bank-mid-write` | halfway through writing a payment file |
//! | `bank-after-write` | after the file is in the outbox, before that is recorded |

use std::sync::OnceLock;

/// Every failpoint name, for validation and documentation.
pub const FAILPOINTS: [&str; 7] = [
    "settle-after-seal",
    "settle-after-plan",
    "evm-after-prepare",
    "evm-after-broadcast",
    "evm-after-receipt",
    "bank-mid-write",
    "bank-after-write",
];

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("TALLY_FAILPOINTS")
            .map(|list| list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    })
}

/// Aborts the process if `name` is armed.
pub fn hit(name: &'static str) {
    debug_assert!(FAILPOINTS.contains(&name), "unknown failpoint {name}");
    if armed().iter().any(|armed| armed == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

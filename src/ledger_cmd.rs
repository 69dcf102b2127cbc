//! `tally ledger verify`: audit a data directory (see tally_ledger::audit).
//!
//! Opens the ledger read-only, so it can run beside a live `tally serve`
//! (it checks the state as of its start). Exits non-zero when anything is
//! wrong, printing what.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use tally_ledger::{AuditOptions, Ledger, LedgerOptions, audit};

use crate::config::DEFAULT_DATA_DIR;
use crate::output::print_json;

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// Check the hash chain, signatures, replay index and every aggregate.
    Verify {
        #[arg(long, env = "TALLY_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Skip re-verifying signatures (faster on huge ledgers).
        #[arg(long)]
        skip_signatures: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: LedgerCommand) -> anyhow::Result<()> {
    let LedgerCommand::Verify { data_dir, skip_signatures, json } = command;
    anyhow::ensure!(data_dir.join("CURRENT").exists(), "{} holds no ledger", data_dir.display());
    let options = LedgerOptions { read_only: true, ..LedgerOptions::default() };
    let ledger = Ledger::open(&data_dir, options.clone())
        .with_context(|| format!("opening the ledger in {} (damaged files are reported here)", data_dir.display()))?;
    let report = audit(
        &ledger,
        AuditOptions {
            verify_signatures: !skip_signatures,
            now_s: tally_ledger::unix_now_ms() / 1000,
            nonce_retention_margin_s: options.nonce_retention_margin_s,
        },
    )
    .context("reading the ledger failed (RocksDB detected damaged data)")?;
    if json {
        print_json(&serde_json::json!({
            "clean": report.is_clean(),
            "records": report.records,
            "epochs": report.epochs,
            "aggregates": report.aggregates,
            "signatures_verified": report.signatures_verified,
            "nonces_pruned": report.nonces_pruned,
            "web_bot_auth_records": report.web_bot_auth_records,
            "batch_member_records": report.batch_member_records,
            "problems_total": report.problems_total,
            "problems": report.problems,
        }));
    } else {
        println!(
            "records: {} ({} Web Bot Auth, {} batch-signed)  epochs: {}  aggregates: {}  signatures verified: {}  pruned nonces: {}",
            report.records,
            report.web_bot_auth_records,
            report.batch_member_records,
            report.epochs,
            report.aggregates,
            report.signatures_verified,
            report.nonces_pruned
        );
        for problem in &report.problems {
            println!("PROBLEM: {problem}");
        }
        if report.problems_total as usize > report.problems.len() {
            println!("... and {} more problems", report.problems_total as usize - report.problems.len());
        }
    }
    anyhow::ensure!(report.is_clean(), "the ledger failed verification with {} problems", report.problems_total);
    if !json {
        println!("ledger OK: hash chain intact, every aggregate matches the log");
    }
    Ok(())
}

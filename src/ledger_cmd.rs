//! `tally ledger`: read a data directory directly (read-only, beside a live
//! `tally serve` or with the engine stopped).
//!
//! - `verify` audits everything (`tally_ledger::audit`) and exits non-zero
//!   when anything is wrong, printing what; notices (IOUs accepted with
//!   signature verification off, plans older than a migration) are printed
//!   but do not fail it.
//! - `info` shows the ledger's identity: its id (mixed into every payment
//!   id), format, the heads of both hash chains and the time mark.
//! - `journal` lists the control-plane journal: who changed what, and when.
//! - `tally audit log` shows the same entries as changes of value: each
//!   write with what it replaced (`tally_ledger::history`), filtered to the
//!   writes whose key names something (`--touching payee/site-a.example`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use tally_ledger::journal::Action;
use tally_ledger::{AuditOptions, Ledger, LedgerOptions, audit};

use crate::config::DEFAULT_DATA_DIR;
use crate::output::print_json;

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// Check both hash chains, signatures, the replay index, every aggregate,
    /// every account and settlement record against the journal, and every plan.
    Verify {
        #[arg(long, env = "TALLY_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Skip re-verifying signatures (faster on huge ledgers).
        #[arg(long)]
        skip_signatures: bool,
        #[arg(long)]
        json: bool,
    },
    /// The ledger's id, format, chain heads and time mark.
    Info {
        #[arg(long, env = "TALLY_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The journal of control-plane changes: who did what, when.
    Journal(JournalRange),
}

/// Which journal entries to show, from which data directory (`ledger
/// journal` and `audit log`).
#[derive(clap::Args, Debug)]
pub struct JournalRange {
    #[arg(long, env = "TALLY_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// The first entry to show.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// At most this many entries (`ledger journal`: 10,000; `audit log`: 1,000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[arg(long)]
    json: bool,
}

/// Entries `tally ledger journal` prints at most, whatever `--limit` says.
const JOURNAL_LIST_MAX: usize = 10_000;

fn open_read_only(data_dir: &Path) -> anyhow::Result<Ledger> {
    anyhow::ensure!(data_dir.join("CURRENT").exists(), "{} holds no ledger", data_dir.display());
    let options = LedgerOptions { read_only: true, ..LedgerOptions::default() };
    Ledger::open(data_dir, options)
        .with_context(|| format!("opening the ledger in {} (damaged files are reported here)", data_dir.display()))
}

pub fn run(command: LedgerCommand) -> anyhow::Result<()> {
    match command {
        LedgerCommand::Verify { data_dir, skip_signatures, json } => verify(&data_dir, skip_signatures, json),
        LedgerCommand::Info { data_dir, json } => info(&data_dir, json),
        LedgerCommand::Journal(JournalRange { data_dir, from, limit, json }) => journal(&data_dir, from, limit, json),
    }
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Every change with its actor, time, and each value before and after.
    Log {
        #[command(flatten)]
        range: JournalRange,
        /// Only writes to this key, e.g. `payee/site-a.example`, or under a
        /// prefix ending in `/` (`payee/`: every payee).
        #[arg(long)]
        touching: Option<String>,
    },
}

pub fn audit_command(command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Log { range: JournalRange { data_dir, from, limit, json }, touching } = command;
    let ledger = open_read_only(&data_dir)?;
    let query = tally_ledger::history::HistoryQuery { from_seq: from, limit, touching };
    let entries = ledger.history(&query).context("reading the journal")?;
    if json {
        let rows: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "seq": e.seq,
                    "at_ms": e.at_ms,
                    "actor": e.actor.to_string(),
                    "action": describe(&e.action),
                    "changes_total": e.changes_total,
                    "changes": e.changes.iter().map(|c| serde_json::json!({
                        "cf": c.cf.name(), "key": c.key, "before": c.before, "after": c.after,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(rows));
        return Ok(());
    }
    for e in &entries {
        println!("#{}  {}  {}  {}", e.seq, e.at_ms, e.actor, describe(&e.action));
        for c in &e.changes {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
            println!(
                "    {} {}\n      before: {}\n      after:  {}",
                c.cf.name(),
                c.key,
                show(&c.before),
                show(&c.after)
            );
        }
        if e.changes_total > e.changes.len() {
            println!("    … and {} more writes", e.changes_total - e.changes.len());
        }
    }
    Ok(())
}

fn verify(data_dir: &Path, skip_signatures: bool, json: bool) -> anyhow::Result<()> {
    let ledger = open_read_only(data_dir)?;
    let report = audit(&ledger, AuditOptions { verify_signatures: !skip_signatures })
        .context("reading the ledger failed (RocksDB detected damaged data)")?;
    if json {
        print_json(&serde_json::json!({
            "clean": report.is_clean(),
            "ledger_id": ledger.ledger_id().to_string(),
            "records": report.records,
            "epochs": report.epochs,
            "aggregates": report.aggregates,
            "signatures_verified": report.signatures_verified,
            "nonces_pruned": report.nonces_pruned,
            "web_bot_auth_records": report.web_bot_auth_records,
            "pay_per_crawl_records": report.pay_per_crawl_records,
            "batch_member_records": report.batch_member_records,
            "journal_entries": report.journal_entries,
            "plans_renetted": report.plans_renetted,
            "notices": report.notices,
            "problems_total": report.problems_total,
            "problems": report.problems,
        }));
    } else {
        println!(
            "records: {} ({} Web Bot Auth, {} pay-per-crawl, {} batch-signed)  epochs: {}  aggregates: {}  \
             signatures verified: {}  pruned nonces: {}",
            report.records,
            report.web_bot_auth_records,
            report.pay_per_crawl_records,
            report.batch_member_records,
            report.epochs,
            report.aggregates,
            report.signatures_verified,
            report.nonces_pruned
        );
        println!(
            "journal: {} entries  plans netted again from the log: {}",
            report.journal_entries, report.plans_renetted
        );
        for notice in &report.notices {
            println!("NOTICE: {notice}");
        }
        for problem in &report.problems {
            println!("PROBLEM: {problem}");
        }
        if report.problems_total as usize > report.problems.len() {
            println!("... and {} more problems", report.problems_total as usize - report.problems.len());
        }
    }
    anyhow::ensure!(report.is_clean(), "the ledger failed verification with {} problems", report.problems_total);
    if !json {
        println!(
            "ledger OK: both hash chains intact, every aggregate matches the log, every account and settlement record \
             matches the journal, every plan matches the log"
        );
    }
    Ok(())
}

fn info(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let ledger = open_read_only(data_dir)?;
    let meta = *ledger.meta();
    let (log_seq, log_hash) = ledger.head()?;
    let journal = ledger.journal_head()?;
    let log_at_ms = ledger.record(log_seq)?.map_or(0, |r| r.accepted_at_ms);
    let time_mark_ms = log_at_ms.max(journal.at_ms);
    let epochs = ledger.epochs()?;
    let open_epoch = epochs.last().map_or(0, |e| e.epoch);
    let value = serde_json::json!({
        "ledger_id": meta.ledger_id.to_string(),
        "format": meta.format,
        "created_at_ms": meta.created_at_ms,
        "migrated_from_format": meta.migrated_from,
        "log_format2_from_seq": meta.log_format2_from_seq,
        "log_head": { "seq": log_seq, "hash": hex::encode(log_hash) },
        "journal_head": { "seq": journal.seq, "hash": hex::encode(journal.hash) },
        "time_mark_ms": time_mark_ms,
        "open_epoch": open_epoch,
        "planned_through": ledger.planned_through()?,
    });
    if json {
        print_json(&value);
        return Ok(());
    }
    println!("ledger id:      {}", meta.ledger_id);
    println!(
        "format:         {}{}",
        meta.format,
        meta.migrated_from.map(|from| format!(" (migrated from format {from})")).unwrap_or_default()
    );
    println!("log head:       {log_seq}:{}", hex::encode(log_hash));
    println!("journal head:   {}:{}", journal.seq, hex::encode(journal.hash));
    println!("time mark:      {time_mark_ms} ms (expiry is never judged earlier than this)");
    println!("open epoch:     {open_epoch}  planned through: {}", ledger.planned_through()?);
    Ok(())
}

/// One line about what an entry did.
fn describe(action: &Action) -> String {
    match action {
        Action::Genesis { ledger_id, format } => format!("genesis: ledger {ledger_id}, format {format}"),
        Action::Migrated { from_format, to_format } => format!("migrated from format {from_format} to {to_format}"),
        Action::OpenedFirstEpoch => "opened epoch 1".into(),
        Action::RecordPlan { epoch, policy, .. } => {
            format!("recorded the plan of epoch {epoch} (fee {} bps)", policy.fee_bps)
        }
        Action::Continued => "(continued)".into(),
        Action::Notice(notice) => format!("{notice:?}"),
        Action::Admin(command) => {
            // Bounded: a command's debug text can hold a bank transaction's bytes.
            let text = format!("{command:?}");
            let mut end = text.len().min(200);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        }
    }
}

fn journal(data_dir: &Path, from: u64, limit: usize, json: bool) -> anyhow::Result<()> {
    let ledger = open_read_only(data_dir)?;
    let entries = ledger.journal(from, limit.min(JOURNAL_LIST_MAX))?;
    if json {
        let rows: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "seq": e.seq,
                    "at_ms": e.at_ms,
                    "log_head": e.log_head,
                    "actor": e.body.actor.to_string(),
                    "action": describe(&e.body.action),
                    "effects": e.body.effects.len(),
                    "hash": hex::encode(e.hash),
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(rows));
        return Ok(());
    }
    for e in &entries {
        println!(
            "{:>6}  {}  log@{}  {}  {} ({} writes)",
            e.seq,
            e.at_ms,
            e.log_head,
            e.body.actor,
            describe(&e.body.action),
            e.body.effects.len()
        );
    }
    Ok(())
}

//! Settlement commands: `settle`, `payouts`, `bills`, `statement`,
//! `settlements`, `bank import-status`, `evm deploy`.
//!
//! Everything but `evm deploy` talks to the running engine's `Settlement`
//! service with the admin token; the engine owns the ledger and runs the
//! settlement itself, so a finance user's laptop crashing mid-command never
//! leaves an epoch half-settled (the engine finishes it).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tally_core::format_amount;
use tally_settler::grpc::proto::{self, settle_event::Event};

use crate::client::{self, AdminArgs};
use crate::output::{print_json, print_listing, table};

#[derive(clap::Args, Debug)]
pub struct SettleArgs {
    /// Print the plan the open epoch would get, without sealing or paying.
    #[arg(long, conflicts_with = "resume")]
    pub dry_run: bool,
    /// Do not seal: only finish epochs left unsettled (after a crash or a
    /// rail failure).
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(clap::Args, Debug)]
pub struct EpochArg {
    #[arg(long)]
    pub epoch: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(clap::Args, Debug)]
pub struct ReportsArgs {
    /// Only this epoch.
    #[arg(long)]
    pub epoch: Option<u64>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum StatementFormat {
    Table,
    Csv,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct StatementArgs {
    #[arg(long)]
    pub epoch: u64,
    #[arg(long, conflicts_with = "payer", required_unless_present = "payer")]
    pub payee: Option<String>,
    #[arg(long)]
    pub payer: Option<String>,
    #[arg(long, value_enum, default_value_t = StatementFormat::Table)]
    pub format: StatementFormat,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Subcommand, Debug)]
pub enum BillCommand {
    /// Record that a bill was collected (releases the payer's credit).
    Paid {
        #[arg(long)]
        epoch: u64,
        bill_id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The aged list of open bills: what payers still owe, by age (0-30,
    /// 31-60, 61-90, over 90 days since their epoch's plan).
    Open {
        /// Age the bills as of the end of this day (YYYY-MM-DD, UTC); default now.
        #[arg(long, value_parser = parse_end_of_day_ms)]
        as_of: Option<u64>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// The last millisecond of a UTC day given as `YYYY-MM-DD`.
fn parse_end_of_day_ms(text: &str) -> Result<u64, String> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(text, format).map_err(|e| format!("{text:?} is not a date YYYY-MM-DD: {e}"))?;
    let next_day = date.next_day().ok_or_else(|| format!("{text:?} is the last day time can name"))?;
    let start_ms = next_day.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000;
    u64::try_from(start_ms - 1).map_err(|_| format!("{text:?} is before 1970"))
}

#[derive(Subcommand, Debug)]
pub enum BankCommand {
    /// Apply a bank's pain.002 status report.
    ImportStatus {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum EvmCommand {
    /// Deploy the TallyPayout contract; prints its address.
    Deploy {
        #[arg(long)]
        rpc_url: String,
        #[arg(long)]
        chain_id: u64,
        /// File holding the deployer's private key (hex).
        #[arg(long, conflicts_with = "key_env", required_unless_present = "key_env")]
        key_file: Option<PathBuf>,
        /// Environment variable holding the deployer's private key.
        #[arg(long)]
        key_env: Option<String>,
    },
}

/// An amount the server sent (a decimal string of smallest units) in display
/// units. A malformed one is shown as it came, marked, never as a number it is not.
fn amount(text: &str, scale: u32) -> String {
    match text.parse::<u128>() {
        Ok(units) => format_amount(units, scale as u8),
        Err(_) => format!("(malformed amount {text:?})"),
    }
}

fn ppm_percent(ppm: u64) -> String {
    format!("{}.{:02}%", ppm / 10_000, (ppm % 10_000) / 100)
}

pub async fn settle(args: SettleArgs) -> anyhow::Result<()> {
    let mut client = client::settlement(&args.admin).await?;
    if args.dry_run {
        let preview = client.preview(proto::PreviewRequest {}).await?.into_inner();
        if args.json {
            print_json(&preview_json(&preview));
        } else {
            println!("Dry run: epoch {} if sealed now ({} batches)", preview.epoch, preview.batches);
            print_figures(&preview.figures);
            print_payouts(&preview.payouts);
            println!("{} bills, {} carries forward", preview.bills.len(), preview.carries.len());
        }
        return Ok(());
    }
    let mut stream = client.settle(proto::SettleRequest { resume_only: args.resume }).await?.into_inner();
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} batches")
            .expect("valid template")
            .progress_chars("=> "),
    );
    // Above the bar on a terminal; plain lines on stderr otherwise (a hidden
    // bar would swallow them).
    let say = |line: String| if bar.is_hidden() && !args.json { eprintln!("{line}") } else { bar.println(line) };
    let mut reports = Vec::new();
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(Event::SealedEpoch(epoch)) => say(format!("sealed epoch {epoch}")),
            Some(Event::Planned(p)) => {
                say(format!("planned epoch {}: {} payouts in {} batches", p.epoch, p.payouts, p.batches))
            }
            Some(Event::Batch(b)) => {
                bar.set_message(format!("epoch {}", b.epoch));
                bar.set_length(b.total);
                bar.set_position(b.done);
            }
            Some(Event::Report(report)) => reports.push(report),
            None => {}
        }
    }
    bar.finish_and_clear();
    if args.json {
        print_json(&serde_json::Value::Array(reports.iter().map(report_json).collect()));
    } else if reports.is_empty() {
        println!("nothing to settle");
    } else {
        for report in &reports {
            print_report(report);
        }
    }
    Ok(())
}

pub async fn reports(args: ReportsArgs) -> anyhow::Result<()> {
    let mut client = client::settlement(&args.admin).await?;
    let reports = client.reports(proto::ReportsRequest { epoch: args.epoch.unwrap_or(0) }).await?.into_inner().reports;
    if args.json {
        print_json(&serde_json::Value::Array(reports.iter().map(report_json).collect()));
    } else {
        for report in &reports {
            print_report(report);
        }
    }
    Ok(())
}

fn print_figures(figures: &[proto::AssetFigures]) {
    let rows = figures
        .iter()
        .map(|f| {
            vec![
                f.asset.clone(),
                amount(&f.gross, f.scale),
                f.iou_count.to_string(),
                f.payout_count.to_string(),
                amount(&f.paid, f.scale),
                ppm_percent(f.moved_ppm),
                amount(&f.fees, f.scale),
                f.bill_count.to_string(),
                amount(&f.billed, f.scale),
                amount(&f.carried_in, f.scale),
                amount(&f.carried_out, f.scale),
            ]
        })
        .collect();
    let header = [
        "asset",
        "gross",
        "IOUs",
        "payouts",
        "paid",
        "paid/gross",
        "fees",
        "bills",
        "billed",
        "carried in",
        "carried out",
    ];
    println!("{}", table(&header, &header[1..], rows));
}

fn print_report(report: &proto::SettlementReport) {
    let attention = if report.attention.is_empty() { String::new() } else { format!(" — {}", report.attention) };
    println!("Epoch {}: {}{} (fee {} bps)", report.epoch, report.status, attention, report.fee_bps);
    print_figures(&report.figures);
    let rows = report
        .rails
        .iter()
        .map(|r| {
            let scale = report.figures.iter().find(|f| f.asset == r.asset).map_or(0, |f| f.scale);
            vec![
                r.rail.clone(),
                r.asset.clone(),
                r.payouts.to_string(),
                amount(&r.amount, scale),
                r.settled.to_string(),
                r.submitted.to_string(),
                r.rejected.to_string(),
            ]
        })
        .collect();
    let header = ["rail", "asset", "payouts", "amount", "settled", "submitted", "rejected"];
    println!("{}", table(&header, &header[2..], rows));
    if report.gas_used > 0 {
        println!(
            "EVM: {} gas for {} settled IOUs = {} gas per settled IOU",
            report.gas_used, report.evm_settled_ious, report.gas_per_settled_iou
        );
    }
}

fn figures_json(figures: &[proto::AssetFigures]) -> serde_json::Value {
    figures
        .iter()
        .map(|f| {
            json!({
                "asset": f.asset, "scale": f.scale, "gross": f.gross, "iou_count": f.iou_count,
                "payout_count": f.payout_count, "paid": f.paid, "moved_ppm": f.moved_ppm, "fees": f.fees,
                "bill_count": f.bill_count, "billed": f.billed, "carried_in": f.carried_in,
                "carried_out": f.carried_out, "payout_iou_count": f.payout_iou_count,
            })
        })
        .collect()
}

fn report_json(r: &proto::SettlementReport) -> serde_json::Value {
    json!({
        "epoch": r.epoch, "status": r.status, "attention": r.attention, "fee_bps": r.fee_bps,
        "figures": figures_json(&r.figures),
        "rails": r.rails.iter().map(|t| json!({
            "rail": t.rail, "asset": t.asset, "payouts": t.payouts, "amount": t.amount,
            "settled": t.settled, "submitted": t.submitted, "rejected": t.rejected,
        })).collect::<Vec<_>>(),
        "batch_count": r.batch_count, "batches_open": r.batches_open, "payouts_open": r.payouts_open,
        "gas_used": r.gas_used, "evm_settled_ious": r.evm_settled_ious, "gas_per_settled_iou": r.gas_per_settled_iou,
    })
}

fn payout_json(p: &proto::Payout) -> serde_json::Value {
    json!({
        "id": p.id, "epoch": p.epoch, "payee": p.payee, "asset": p.asset, "scale": p.scale, "rail": p.rail,
        "destination": p.destination, "net_credit": p.net_credit, "fee": p.fee, "amount": p.amount,
        "iou_count": p.iou_count, "state": p.state, "reference": p.reference, "batch_index": p.batch_index,
        "file_name": p.file_name,
    })
}

fn bill_json(b: &proto::Bill) -> serde_json::Value {
    json!({
        "id": b.id, "epoch": b.epoch, "party": b.party, "asset": b.asset, "scale": b.scale, "amount": b.amount,
        "iou_count": b.iou_count, "paid_at_ms": b.paid_at_ms,
    })
}

fn carry_json(c: &proto::Carry) -> serde_json::Value {
    json!({
        "epoch_to": c.epoch_to, "payee": c.payee, "asset": c.asset, "scale": c.scale, "amount": c.amount,
        "reason": c.reason, "source": c.source,
    })
}

fn preview_json(p: &proto::PreviewResponse) -> serde_json::Value {
    json!({
        "epoch": p.epoch, "batches": p.batches, "figures": figures_json(&p.figures),
        "payouts": p.payouts.iter().map(payout_json).collect::<Vec<_>>(),
        "bills": p.bills.iter().map(bill_json).collect::<Vec<_>>(),
        "carries": p.carries.iter().map(carry_json).collect::<Vec<_>>(),
    })
}

fn print_payouts(payouts: &[proto::Payout]) {
    print_listing(
        false,
        payouts,
        payout_json,
        &["id", "payee", "rail", "amount", "fee", "IOUs", "state", "reference", "file"],
        &["amount", "fee", "IOUs"],
        |p| {
            vec![
                p.id.clone(),
                p.payee.clone(),
                p.rail.clone(),
                format!("{} {}", amount(&p.amount, p.scale), p.asset),
                amount(&p.fee, p.scale),
                p.iou_count.to_string(),
                p.state.clone(),
                p.reference.clone(),
                p.file_name.clone(),
            ]
        },
    );
}

pub async fn payouts(args: EpochArg) -> anyhow::Result<()> {
    let mut client = client::settlement(&args.admin).await?;
    let payouts = client.payouts(proto::PayoutsRequest { epoch: args.epoch }).await?.into_inner().payouts;
    if args.json {
        print_json(&serde_json::Value::Array(payouts.iter().map(payout_json).collect()));
    } else {
        print_payouts(&payouts);
    }
    Ok(())
}

pub async fn bills(args: EpochArg) -> anyhow::Result<()> {
    let mut client = client::settlement(&args.admin).await?;
    let bills = client.bills(proto::BillsRequest { epoch: args.epoch }).await?.into_inner().bills;
    print_listing(args.json, &bills, bill_json, &["id", "party", "amount", "IOUs", "paid"], &["amount", "IOUs"], |b| {
        vec![
            b.id.clone(),
            b.party.clone(),
            format!("{} {}", amount(&b.amount, b.scale), b.asset),
            b.iou_count.to_string(),
            if b.paid_at_ms == 0 { "open".into() } else { "paid".into() },
        ]
    });
    Ok(())
}

pub async fn bill(command: BillCommand) -> anyhow::Result<()> {
    match command {
        BillCommand::Paid { epoch, bill_id, admin } => {
            let mut client = client::settlement(&admin).await?;
            client.mark_bill_paid(proto::MarkBillPaidRequest { epoch, bill_id: bill_id.clone() }).await?;
            println!("bill {bill_id} of epoch {epoch} recorded as paid");
            Ok(())
        }
        BillCommand::Open { as_of, json, admin } => open_bills(as_of.unwrap_or(0), json, &admin).await,
    }
}

pub async fn statement(args: StatementArgs) -> anyhow::Result<()> {
    let party = match (&args.payee, &args.payer) {
        (Some(payee), _) => format!("payee:{payee}"),
        (None, Some(payer)) => format!("payer:{payer}"),
        (None, None) => anyhow::bail!("give --payee or --payer"),
    };
    let mut client = client::settlement(&args.admin).await?;
    let s = client.statement(proto::StatementRequest { epoch: args.epoch, party }).await?.into_inner();
    match args.format {
        StatementFormat::Json => print_json(&json!({
            "epoch": s.epoch, "party": s.party,
            "lines": s.lines.iter().map(|l| json!({
                "epoch": l.epoch, "payer": l.payer, "payee": l.payee, "asset": l.asset, "scale": l.scale,
                "amount": l.amount, "iou_count": l.iou_count,
            })).collect::<Vec<_>>(),
            "payouts": s.payouts.iter().map(payout_json).collect::<Vec<_>>(),
            "bills": s.bills.iter().map(bill_json).collect::<Vec<_>>(),
            "carried_in": s.carried_in.iter().map(carry_json).collect::<Vec<_>>(),
            "carried_out": s.carried_out.iter().map(carry_json).collect::<Vec<_>>(),
        })),
        StatementFormat::Csv => {
            // One row per aggregate, then one per payout, bill and carry, so
            // a spreadsheet can tie each payout to the IOUs behind it.
            println!("kind,epoch,id,payer,payee,asset,amount_units,amount,iou_count,state,reference");
            for l in &s.lines {
                println!(
                    "iou_aggregate,{},,{},{},{},{},{},{},,",
                    l.epoch,
                    l.payer,
                    l.payee,
                    l.asset,
                    l.amount,
                    amount(&l.amount, l.scale),
                    l.iou_count
                );
            }
            for p in &s.payouts {
                println!(
                    "payout,{},{},,{},{},{},{},{},{},{}",
                    p.epoch,
                    p.id,
                    p.payee,
                    p.asset,
                    p.amount,
                    amount(&p.amount, p.scale),
                    p.iou_count,
                    p.state,
                    p.reference
                );
            }
            for b in &s.bills {
                println!(
                    "bill,{},{},{},,{},{},{},{},{},",
                    b.epoch,
                    b.id,
                    b.party,
                    b.asset,
                    b.amount,
                    amount(&b.amount, b.scale),
                    b.iou_count,
                    if b.paid_at_ms == 0 { "open" } else { "paid" }
                );
            }
            for (kind, carries) in [("carried_in", &s.carried_in), ("carried_out", &s.carried_out)] {
                for c in carries {
                    println!(
                        "{kind},{},{},,{},{},{},{},,,{}",
                        c.epoch_to,
                        c.source,
                        c.payee,
                        c.asset,
                        c.amount,
                        amount(&c.amount, c.scale),
                        c.reason.replace(',', ";")
                    );
                }
            }
        }
        StatementFormat::Table => {
            println!("Statement of {} for epoch {}", s.party, s.epoch);
            let rows = s
                .lines
                .iter()
                .map(|l| {
                    vec![
                        l.payer.clone(),
                        l.payee.clone(),
                        format!("{} {}", amount(&l.amount, l.scale), l.asset),
                        l.iou_count.to_string(),
                    ]
                })
                .collect();
            println!("{}", table(&["payer", "payee", "amount", "IOUs"], &["amount", "IOUs"], rows));
            if !s.payouts.is_empty() {
                print_payouts(&s.payouts);
            }
            for b in &s.bills {
                println!("bill {}: {} {} ({} IOUs)", b.id, amount(&b.amount, b.scale), b.asset, b.iou_count);
            }
            for c in s.carried_in.iter().chain(&s.carried_out) {
                println!("carry to epoch {}: {} {} ({})", c.epoch_to, amount(&c.amount, c.scale), c.asset, c.reason);
            }
        }
    }
    Ok(())
}

pub async fn bank(command: BankCommand) -> anyhow::Result<()> {
    match command {
        BankCommand::ImportStatus { file, json, admin } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut client = client::settlement(&admin).await?;
            let r = client.import_bank_status(proto::ImportBankStatusRequest { pain002: bytes }).await?.into_inner();
            if json {
                print_json(&json!({
                    "epoch": r.epoch, "original_message_id": r.original_message_id, "accepted": r.accepted,
                    "rejected": r.rejected, "pending": r.pending, "unchanged": r.unchanged, "refused": r.refused,
                }));
            } else {
                println!(
                    "{} (epoch {}): {} accepted, {} rejected and carried forward, {} pending, {} already recorded",
                    r.original_message_id, r.epoch, r.accepted, r.rejected, r.pending, r.unchanged
                );
                for refusal in &r.refused {
                    println!("refused: {refusal}");
                }
            }
            Ok(())
        }
    }
}

pub async fn evm(command: EvmCommand) -> anyhow::Result<()> {
    match command {
        EvmCommand::Deploy { rpc_url, chain_id, key_file, key_env } => {
            let key = match (key_file, key_env) {
                (Some(path), _) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .trim()
                    .to_owned(),
                (None, Some(name)) => std::env::var(&name).with_context(|| format!("{name} is not set"))?,
                (None, None) => anyhow::bail!("give --key-file or --key-env"),
            };
            let address = tally_settler::evm::deploy_payout_contract(&rpc_url, chain_id, &key).await?;
            println!("{address}");
            Ok(())
        }
    }
}

async fn open_bills(as_of_ms: u64, json: bool, admin: &AdminArgs) -> anyhow::Result<()> {
    let mut client = client::settlement(admin).await?;
    let aged = client.open_bills(proto::OpenBillsRequest { as_of_ms }).await?.into_inner();
    if json {
        print_json(&json!({
            "as_of_ms": aged.as_of_ms,
            "open_count": aged.open_count,
            "truncated": aged.truncated,
            "bills": aged.bills.iter().map(|b| json!({
                "bill": b.bill.as_ref().map(bill_json), "issued_at_ms": b.issued_at_ms,
                "age_days": b.age_days, "bucket": b.bucket,
            })).collect::<Vec<_>>(),
            "totals": aged.totals.iter().map(|t| json!({
                "asset": t.asset, "scale": t.scale, "bucket": t.bucket, "count": t.count, "amount": t.amount,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let rows = aged
        .bills
        .iter()
        .filter_map(|b| b.bill.as_ref().map(|bill| (b, bill)))
        .map(|(b, bill)| {
            vec![
                bill.id.clone(),
                bill.party.clone(),
                bill.epoch.to_string(),
                format!("{} {}", amount(&bill.amount, bill.scale), bill.asset),
                b.age_days.to_string(),
                b.bucket.clone(),
            ]
        })
        .collect();
    println!("{}", table(&["bill", "party", "epoch", "amount", "days", "bucket"], &["amount", "days"], rows));
    let totals = aged
        .totals
        .iter()
        .map(|t| vec![t.asset.clone(), t.bucket.clone(), t.count.to_string(), amount(&t.amount, t.scale)])
        .collect();
    println!("{}", table(&["asset", "bucket", "bills", "open"], &["bills", "open"], totals));
    if aged.truncated {
        eprintln!(
            "(listing truncated at {} of {} open bills; the totals cover them all)",
            aged.bills.len(),
            aged.open_count
        );
    }
    Ok(())
}

//! Finance commands: balances, epochs, sealing.

use std::collections::BTreeMap;

use clap::Subcommand;
use tally_core::format_amount;
use tally_ingest::proto::*;

use crate::client::{self, AdminArgs, ServerArgs};
use crate::output::{print_json, print_listing, table};

#[derive(clap::Args, Debug)]
pub struct BalanceArgs {
    /// Only this payer.
    #[arg(long)]
    pub payer: Option<String>,
    /// Only this payee.
    #[arg(long)]
    pub payee: Option<String>,
    /// Only this epoch.
    #[arg(long)]
    pub epoch: Option<u64>,
    /// Only this asset.
    #[arg(long)]
    pub asset: Option<String>,
    /// Print JSON (amounts as decimal strings of smallest units and display units).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Fetches balance rows; shared with the demo.
pub async fn fetch_balances(server: &ServerArgs, request: BalancesRequest) -> anyhow::Result<BalancesResponse> {
    Ok(client::query(server).await?.balances(request).await?.into_inner())
}

pub fn balance_table(rows: &[BalanceRow]) -> comfy_table::Table {
    let mut totals: BTreeMap<(String, u32), (u128, u64)> = BTreeMap::new();
    let mut lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let units = r.amount.parse::<u128>().unwrap_or(0);
            let total = totals.entry((r.asset.clone(), r.scale)).or_default();
            total.0 = total.0.saturating_add(units);
            total.1 += r.count;
            vec![
                r.epoch.to_string(),
                r.payer.clone(),
                r.payee.clone(),
                r.asset.clone(),
                format_amount(units, r.scale as u8),
                r.count.to_string(),
            ]
        })
        .collect();
    for ((asset, scale), (sum, count)) in totals {
        lines.push(vec![
            "total".into(),
            String::new(),
            String::new(),
            asset,
            format_amount(sum, scale as u8),
            count.to_string(),
        ]);
    }
    table(&["epoch", "payer", "payee", "asset", "amount", "IOUs"], &["amount", "IOUs"], lines)
}

pub async fn balance(args: BalanceArgs) -> anyhow::Result<()> {
    let request = BalancesRequest {
        epoch: args.epoch.unwrap_or(0),
        payer: args.payer.unwrap_or_default(),
        payee: args.payee.unwrap_or_default(),
        asset: args.asset.unwrap_or_default(),
        limit: 0,
    };
    let response = fetch_balances(&args.server, request).await?;
    if args.json {
        print_json(&serde_json::json!({
            "rows": response.rows.iter().map(|r| serde_json::json!({
                "epoch": r.epoch, "payer": r.payer, "payee": r.payee, "asset": r.asset,
                "amount_units": r.amount,
                "amount": format_amount(r.amount.parse::<u128>().unwrap_or(0), r.scale as u8),
                "scale": r.scale, "ious": r.count,
            })).collect::<Vec<_>>(),
            "truncated": response.truncated,
        }));
    } else {
        println!("{}", balance_table(&response.rows));
        if response.truncated {
            eprintln!("(result truncated at {} rows; narrow it with --epoch, --payer or --payee)", response.rows.len());
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct EpochsArgs {
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub async fn epochs(args: EpochsArgs) -> anyhow::Result<()> {
    let epochs = client::query(&args.server).await?.epochs(EpochsRequest {}).await?.into_inner().epochs;
    print_listing(
        args.json,
        &epochs,
        |e| {
            serde_json::json!({
                "epoch": e.epoch, "status": e.status, "opened_at_ms": e.opened_at_ms,
                "sealed_at_ms": e.sealed_at_ms, "seq_first": e.seq_first, "seq_last": e.seq_last,
            })
        },
        &["epoch", "status", "log range"],
        &["epoch"],
        |e| {
            let range = if e.status == "open" {
                format!("{}..", e.seq_first)
            } else if e.seq_last < e.seq_first {
                "empty".into()
            } else {
                format!("{}..={}", e.seq_first, e.seq_last)
            };
            vec![e.epoch.to_string(), e.status.clone(), range]
        },
    );
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum EpochCommand {
    /// Seal the open epoch and open the next; IOUs after this land in the new one.
    Seal {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub async fn epoch(command: EpochCommand) -> anyhow::Result<()> {
    match command {
        EpochCommand::Seal { admin } => {
            let sealed = client::admin(&admin).await?.seal_epoch(SealEpochRequest {}).await?.into_inner();
            println!(
                "sealed epoch {} (log up to {}); epoch {} is open",
                sealed.sealed_epoch, sealed.sealed_seq_last, sealed.opened_epoch
            );
        }
    }
    Ok(())
}

//! `tally demo`: the whole engine on embedded defaults, in one process.
//!
//! Starts an engine on a fresh data directory and a gRPC server on a free
//! loopback port, registers simulated crawlers and sites through the admin
//! API, streams pre-signed IOUs with a progress bar (one crawler with a
//! deliberately small credit limit, to show limits holding), prints what
//! each site is owed and each crawler owes, seals the epoch, and audits the
//! ledger. Everything goes through the same gRPC path a real client uses.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tally_core::format_amount;
use tally_ingest::proto::*;
use tally_ingest::{Engine, EngineConfig, GrpcLimits};
use tally_ledger::{AuditOptions, audit};

use crate::client::{self, AdminArgs, ServerArgs};
use crate::loadgen::{self, LoadgenArgs};
use crate::output::table;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Keep the ledger here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// IOUs to stream.
    #[arg(long, default_value_t = 300_000)]
    pub ious: u64,
    /// Simulated crawlers.
    #[arg(long, default_value_t = 8)]
    pub crawlers: usize,
    /// Simulated sites.
    #[arg(long, default_value_t = 12)]
    pub sites: usize,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.crawlers >= 2 && args.sites >= 1, "the demo needs at least 2 crawlers and 1 site");
    let temp = tempdir()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| temp.clone());
    println!("Tally demo: ledger in {}", data_dir.display());
    let engine = Engine::open(EngineConfig::new(data_dir.clone(), crate::config::DEFAULT_NETWORK))?;
    let token = crate::config::load_or_create_token(&data_dir)?;
    let server =
        tally_ingest::serve(&engine, "127.0.0.1:0".parse()?, &token, &GrpcLimits::default(), Default::default())
            .await
            .map_err(|e| anyhow::anyhow!("starting gRPC: {e}"))?;
    let server_args = ServerArgs { server: format!("http://{}", server.local_addr) };
    println!("engine listening on {}\n", server.local_addr);

    let load = LoadgenArgs {
        admin: AdminArgs { server: server_args.clone(), admin_token: Some(token.clone()), data_dir: data_dir.clone() },
        ious: args.ious,
        batch: 1024,
        streams: 8,
        connections: 4,
        window: 4,
        payers: args.crawlers,
        payees: args.sites,
        amount_max: 2_000,
        asset: "USD".into(),
        network: crate::config::DEFAULT_NETWORK.into(),
        seed: 7,
        rate: None,
        register: true,
        credit_limit: 1_000_000_000_000,
        measure_verify: false,
        json: false,
    };
    let mut admin = client::admin(&load.admin).await?;
    loadgen::register(&load, &mut admin).await?;
    // One crawler may owe only $1.00: its IOUs past that are refused.
    let tight = loadgen::payer_id(0);
    admin
        .set_credit_limit(SetCreditLimitRequest {
            payer_id: tight.clone(),
            limit: Some(CreditLimit { asset: "USD".into(), limit: "1000000".into() }),
        })
        .await?;
    println!(
        "registered USD (scale 6: micro-dollars), {} crawlers (credit limit $1,000,000 each; {tight}: $1.00) and {} sites",
        args.crawlers, args.sites
    );
    println!("streaming {} pre-signed IOUs priced $0.000001 to $0.002 ...", args.ious);
    let report = loadgen::run_load(&LoadgenArgs { register: false, ..load.clone() }, false).await?;
    loadgen::print_report(&report, &load);

    let rows =
        crate::finance::fetch_balances(&server_args, BalancesRequest { limit: 0, ..Default::default() }).await?.rows;
    let mut by_site: BTreeMap<String, (u128, u64)> = BTreeMap::new();
    let mut by_crawler: BTreeMap<String, (u128, u64)> = BTreeMap::new();
    for row in &rows {
        let units = row.amount.parse::<u128>()?;
        for (map, id) in [(&mut by_site, &row.payee), (&mut by_crawler, &row.payer)] {
            let entry = map.entry(id.clone()).or_default();
            entry.0 = entry.0.checked_add(units).ok_or_else(|| anyhow::anyhow!("total overflows"))?;
            entry.1 += row.count;
        }
    }
    let show = |map: &BTreeMap<String, (u128, u64)>| -> Vec<Vec<String>> {
        map.iter()
            .map(|(id, (sum, count))| vec![id.clone(), format!("${}", format_amount(*sum, 6)), count.to_string()])
            .collect()
    };
    println!("\nOwed to each site (epoch 1):");
    println!("{}", table(&["payee", "owed", "IOUs"], &["owed", "IOUs"], show(&by_site)));
    println!("\nOwed by each crawler (epoch 1):");
    println!("{}", table(&["payer", "owes", "IOUs"], &["owes", "IOUs"], show(&by_crawler)));

    let sealed = admin.seal_epoch(SealEpochRequest {}).await?.into_inner();
    println!(
        "\nsealed epoch {} (log entries up to {}); new IOUs now land in epoch {}",
        sealed.sealed_epoch, sealed.sealed_seq_last, sealed.opened_epoch
    );

    server.stop().await?;
    let ledger = engine.ledger.clone();
    let audit_report = tokio::task::spawn_blocking(move || {
        audit(
            &ledger,
            AuditOptions {
                verify_signatures: true,
                now_s: tally_ledger::unix_now_ms() / 1000,
                nonce_retention_margin_s: 3_600,
            },
        )
    })
    .await??;
    println!(
        "ledger verify: {} records, {} signatures re-verified, {} aggregates recomputed: {}",
        audit_report.records,
        audit_report.signatures_verified,
        audit_report.aggregates,
        if audit_report.is_clean() { "OK" } else { "PROBLEMS FOUND" }
    );
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    anyhow::ensure!(audit_report.is_clean(), "the ledger failed its audit: {:?}", audit_report.problems);
    Ok(())
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let dir = std::env::temp_dir().join(format!("tally-demo-{}", hex::encode(suffix)));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

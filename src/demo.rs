//! `tally demo`: the whole engine on embedded defaults, in one process.
//!
//! Starts an engine on a fresh data directory and a gRPC server on a free
//! loopback port, registers simulated crawlers and sites through the admin
//! API, streams pre-signed IOUs with a progress bar (one crawler with a
//! deliberately small credit limit, to show limits holding), prints what
//! each site is owed and each crawler owes, then settles: seals the epoch,
//! nets it, writes an ISO 20022 pain.001 payment file to the outbox, answers
//! it with a simulated bank's pain.002 (one transfer rejected), imports that,
//! and audits the ledger. Everything goes through the same gRPC path a real
//! client uses.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tally_core::format_amount;
use tally_ingest::proto::*;
use tally_ingest::{Engine, EngineConfig, GrpcLimits};
use tally_ledger::{AuditOptions, audit};
use tally_settler::config::{AssetRailConfig, Iso20022Settings};
use tally_settler::{SettlementConfig, Settler, bank};

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
    let result = demo(&args, &engine, &data_dir).await;
    // Whatever happened, the engine stops off the async threads (its writer joins a thread).
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

async fn demo(args: &DemoArgs, engine: &Engine, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let data_dir = data_dir.to_path_buf();
    let token = crate::config::load_or_create_token(&data_dir)?;
    let settler =
        Settler::new(engine.ledger.clone(), engine.pipeline.writer().clone(), settlement_config(), &data_dir).await?;
    let extra = crate::serve::settlement_services(engine, &settler, &token)?;
    let server = tally_ingest::serve(engine, "127.0.0.1:0".parse()?, &token, &GrpcLimits::default(), extra)
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
        http: None,
        batch_signed: false,
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

    let rows = crate::finance::fetch_balances(&client::QueryArgs::from_admin(&load.admin), BalancesRequest::default())
        .await?
        .rows;
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

    settle_and_answer(&load.admin, &mut admin, args.sites, settler.outbox()).await?;

    server.stop().await?;
    let ledger = engine.ledger.clone();
    let audit_report =
        tokio::task::spawn_blocking(move || audit(&ledger, AuditOptions { verify_signatures: true })).await??;
    println!(
        "ledger verify: {} records, {} signatures re-verified, {} aggregates recomputed: {}",
        audit_report.records,
        audit_report.signatures_verified,
        audit_report.aggregates,
        if audit_report.is_clean() { "OK" } else { "PROBLEMS FOUND" }
    );
    println!(
        "  (journal: {} entries, who did what; {} settlement plans netted again from the log)",
        audit_report.journal_entries, audit_report.plans_renetted
    );
    anyhow::ensure!(audit_report.is_clean(), "the ledger failed its audit: {:?}", audit_report.problems);
    Ok(())
}

/// USD settles by ISO 20022 credit transfer (pain.001), with a 0.5 % fee
/// and a $1.00 minimum payout.
fn settlement_config() -> SettlementConfig {
    SettlementConfig {
        fee_bps: 50,
        assets: BTreeMap::from([(
            "USD".into(),
            AssetRailConfig { rail: "iso20022".into(), payout_min: Some("1.00".into()) },
        )]),
        iso20022: Some(Iso20022Settings {
            debtor_name: "Tally Demo Operator".into(),
            debtor_iban: "DE89370400440532013000".into(),
            debtor_bic: Some("COBADEFFXXX".into()),
            execution_delay_days: 1,
            transfers_per_file_max: 10_000,
        }),
        ..Default::default()
    }
}

/// A valid German IBAN for `account` (check digits computed).
fn german_iban(account: u64) -> String {
    tally_core::destination::iban_from_bban("DE", &format!("37040044{account:010}")).expect("a valid German BBAN")
}

/// Gives every site but the last a bank account, settles, then plays the
/// bank: accepts every transfer but one, and imports its status report.
async fn settle_and_answer(
    admin_args: &AdminArgs,
    admin: &mut client::Admin,
    sites: usize,
    outbox: &std::path::Path,
) -> anyhow::Result<()> {
    for i in 0..sites.saturating_sub(1) {
        admin
            .set_payee_payout(SetPayeePayoutRequest {
                payee_id: loadgen::payee_id(i),
                payout_destination: format!("iban:{}", german_iban(i as u64 + 1)),
            })
            .await?;
    }
    println!(
        "\n{} sites have bank accounts; {} has none yet (its credit carries forward)\n",
        sites - 1,
        loadgen::payee_id(sites - 1)
    );
    crate::settle::settle(crate::settle::SettleArgs {
        dry_run: false,
        resume: false,
        json: false,
        admin: admin_args.clone(),
    })
    .await?;
    let mut settlement = client::settlement(admin_args).await?;
    let payouts =
        settlement.payouts(tally_settler::grpc::proto::PayoutsRequest { epoch: 1 }).await?.into_inner().payouts;
    // The file's name is its message id: `T<ledger id prefix>-E<epoch>-<currency>-<n>`.
    let Some(file_name) = payouts.iter().map(|p| p.file_name.clone()).find(|name| !name.is_empty()) else {
        println!("no payout reached the minimum this epoch: no payment file (credit carries forward)");
        return Ok(());
    };
    let message_id = file_name.trim_end_matches(".xml").to_owned();
    let file = outbox.join(&file_name);
    println!(
        "payment file: {} ({} bytes, {} transfers; each EndToEndId is a payout id)",
        file.display(),
        std::fs::metadata(&file)?.len(),
        payouts.len()
    );
    // The bank accepts every transfer but the first, which it rejects.
    let transactions = payouts
        .iter()
        .enumerate()
        .map(|(i, payout)| {
            if i == 0 {
                bank::TransactionStatus::rejected(&payout.id, "AC04", "Closed account")
            } else {
                bank::TransactionStatus::accepted(&payout.id)
            }
        })
        .collect();
    let pain002 = bank::write_pain002(&bank::Pain002File {
        version: bank::Pain002Version::V03,
        message_id: "DEMO-BANK-STATUS-1".into(),
        created_at_ms: tally_ledger::unix_now_ms(),
        original_message_id: message_id.clone(),
        original_message_name_id: "pain.001.001.09".into(),
        original_payment_info_id: message_id.clone(),
        group_status: Some("PART".into()),
        group_reason: None,
        transactions,
    })?;
    let status_file = outbox.with_file_name("pain002-from-bank.xml");
    std::fs::write(&status_file, pain002)?;
    println!("the bank answers with {} (one transfer rejected: AC04, closed account)", status_file.display());
    crate::settle::bank(crate::settle::BankCommand::ImportStatus {
        file: status_file,
        json: false,
        admin: admin_args.clone(),
    })
    .await?;
    println!();
    crate::settle::reports(crate::settle::ReportsArgs { epoch: Some(1), json: false, admin: admin_args.clone() }).await
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let dir = std::env::temp_dir().join(format!("tally-demo-{}", hex::encode(suffix)));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

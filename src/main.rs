//! `tally`: the command line of the Tally settlement engine.
//!
//! One binary for every role: `serve` runs the engine; `keygen`, `payer`,
//! `payee`, `asset` manage accounts and `token` query tokens over the admin API; `balance`, `epochs`
//! and `epoch seal` serve finance; `settle`, `settlements`, `payouts`,
//! `bills`, `statement`, `bank` and `evm` run and inspect settlement; `ledger verify` audits a data directory;
//! `loadgen` simulates crawlers; `demo` does all of it on embedded defaults.
//! Each subcommand lives in its own module; this file only parses and
//! dispatches.

mod accounts;
mod allocator;
mod client;
mod config;
mod demo;
mod finance;
mod gate;
mod heap;
mod ledger_cmd;
mod loadgen;
mod output;
mod serve;
mod settle;
mod tokens;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tally", version, about = "Tally: deferred settlement for x402 payments")]
struct Cli {
    /// Where the admin API (Admin, Settlement) listens. `serve`: bind them
    /// only on this address (default: on --grpc-addr). Other commands: send
    /// admin calls there (`host:port` or a URL; default: --server).
    #[arg(long, global = true, env = "TALLY_ADMIN_ADDR")]
    admin_addr: Option<String>,
    /// CA certificate (PEM) that signed the engine's TLS certificate: client
    /// commands then connect over TLS.
    #[arg(long, global = true, env = "TALLY_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: gRPC ingest, query and admin, plus Prometheus metrics.
    Serve(config::ServeArgs),
    /// Create an Ed25519 key pair for a payer.
    Keygen(accounts::KeygenArgs),
    /// Manage payers (crawler and agent operators).
    #[command(subcommand)]
    Payer(accounts::PayerCommand),
    /// Manage payees (publishers and API owners).
    #[command(subcommand)]
    Payee(accounts::PayeeCommand),
    /// Manage assets.
    #[command(subcommand)]
    Asset(accounts::AssetCommand),
    /// Manage the Query service's tokens (scoped to a payer, a payee, or everything).
    #[command(subcommand)]
    Token(tokens::TokenCommand),
    /// Show what payers owe payees, by payer, payee, pair or epoch.
    Balance(finance::BalanceArgs),
    /// List settlement epochs.
    Epochs(finance::EpochsArgs),
    /// Print an accepted IOU's receipt: the proof its payer signed it (JSON).
    Receipt(finance::ReceiptArgs),
    /// Operate on epochs.
    #[command(subcommand)]
    Epoch(finance::EpochCommand),
    /// Seal the open epoch and settle it (and any unfinished one).
    Settle(settle::SettleArgs),
    /// Settlement reports: netting figures, rails, fees, carries, gas.
    Settlements(settle::ReportsArgs),
    /// The payouts of an epoch and where each stands.
    Payouts(settle::EpochArg),
    /// The bills of an epoch.
    Bills(settle::EpochArg),
    /// Operate on bills.
    #[command(subcommand)]
    Bill(settle::BillCommand),
    /// Every IOU aggregate behind a payee's payout or a payer's bill.
    Statement(settle::StatementArgs),
    /// Bank rails: import status reports.
    #[command(subcommand)]
    Bank(settle::BankCommand),
    /// EVM rail: deploy the payout contract.
    #[command(subcommand)]
    Evm(settle::EvmCommand),
    /// Inspect the ledger on disk: verify, info, journal.
    #[command(subcommand)]
    Ledger(ledger_cmd::LedgerCommand),
    /// Who changed what, when, from what, to what (from the journal).
    #[command(subcommand)]
    Audit(ledger_cmd::AuditCommand),
    /// Simulate crawlers streaming pre-signed IOUs; print throughput and latency.
    Loadgen(loadgen::LoadgenArgs),
    /// Run everything on embedded defaults: engine, crawlers, balances.
    Demo(demo::DemoArgs),
    /// A paying reverse proxy: x402 (and pay-per-crawl) in front of any HTTP origin.
    Gate(gate::GateArgs),
}

fn main() -> std::process::ExitCode {
    let mut cli = Cli::parse();
    match &mut cli.command {
        Command::Serve(args) => args.admin_addr = cli.admin_addr.clone(),
        // The demo runs its own engine and connects to it directly; the gateway talks HTTP only.
        Command::Demo(_) | Command::Gate(_) => {}
        _ => client::configure(client::Connection {
            admin_addr: cli.admin_addr.clone().filter(|addr| !addr.is_empty() && addr != "off"),
            tls_ca: cli.tls_ca.clone(),
        }),
    }
    // The engine logs at info; interactive commands only warn, so their
    // tables are not interleaved with log lines. TALLY_LOG overrides both.
    let default_filter = if matches!(cli.command, Command::Serve(_) | Command::Gate(_)) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Keygen(args) => accounts::keygen(args),
            Command::Payer(command) => accounts::payer(command).await,
            Command::Payee(command) => accounts::payee(command).await,
            Command::Asset(command) => accounts::asset(command).await,
            Command::Token(command) => tokens::run(command).await,
            Command::Balance(args) => finance::balance(args).await,
            Command::Epochs(args) => finance::epochs(args).await,
            Command::Receipt(args) => finance::receipt(args).await,
            Command::Epoch(command) => finance::epoch(command).await,
            Command::Settle(args) => settle::settle(args).await,
            Command::Settlements(args) => settle::reports(args).await,
            Command::Payouts(args) => settle::payouts(args).await,
            Command::Bills(args) => settle::bills(args).await,
            Command::Bill(command) => settle::bill(command).await,
            Command::Statement(args) => settle::statement(args).await,
            Command::Bank(command) => settle::bank(command).await,
            Command::Evm(command) => settle::evm(command).await,
            Command::Ledger(command) => ledger_cmd::run(command),
            Command::Audit(command) => ledger_cmd::audit_command(command),
            Command::Loadgen(args) => loadgen::run(args).await.map(|_| ()),
            Command::Demo(args) => demo::run(args).await,
            Command::Gate(args) => gate::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

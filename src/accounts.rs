//! Account commands: keygen, payers, payees, assets.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use ed25519_dalek::SigningKey;
use tally_core::{format_amount, parse_amount};
use tally_ingest::proto::{self, *};

use crate::client::{self, AdminArgs};
use crate::output::{print_json, print_listing};

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Write the 32-byte secret seed (hex) to this file, mode 0600. Without
    /// it, the secret is printed.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    match args.out {
        Some(path) => {
            crate::config::write_private_file(&path, hex::encode(seed).as_bytes())?;
            println!("{}", hex::encode(public));
            eprintln!("secret key written to {}", path.display());
        }
        None => print_json(&serde_json::json!({
            "public_key": hex::encode(public),
            "secret_seed": hex::encode(seed),
        })),
    }
    Ok(())
}

fn parse_key(text: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = hex::decode(text).with_context(|| format!("key {text:?} is not hex"))?;
    anyhow::ensure!(bytes.len() == 32, "a public key is 32 bytes (64 hex digits)");
    Ok(bytes)
}

/// `ASSET=AMOUNT` with AMOUNT in display units (`USD=25.50`).
fn parse_limit(text: &str, scales: &std::collections::HashMap<String, u8>) -> anyhow::Result<CreditLimit> {
    let (asset, amount) = text.split_once('=').context("a limit is ASSET=AMOUNT, e.g. USD=25.00")?;
    let scale = *scales.get(asset).with_context(|| format!("unknown asset {asset}"))?;
    let units = parse_amount(amount, scale)?;
    Ok(CreditLimit { asset: asset.to_owned(), limit: units.to_string() })
}

#[derive(Subcommand, Debug)]
pub enum PayerCommand {
    /// Register a payer with its public keys and credit limits.
    Register {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Public key in hex; repeat for several.
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// Credit limit as ASSET=AMOUNT in display units; repeat per asset.
        #[arg(long = "limit")]
        limits: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Add a public key to a payer.
    AddKey {
        id: String,
        key: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Refuse the payer's new IOUs.
    Suspend {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Accept the payer's IOUs again.
    Activate {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set a credit limit: ASSET=AMOUNT in display units.
    SetLimit {
        id: String,
        limit: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List payers.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub async fn payer(command: PayerCommand) -> anyhow::Result<()> {
    match command {
        PayerCommand::Register { id, name, keys, limits, admin } => {
            let mut client = client::admin(&admin).await?;
            let scales = client::asset_scales(&mut client).await?;
            let request = RegisterPayerRequest {
                id: id.clone(),
                display_name: name,
                keys: keys.iter().map(|k| parse_key(k)).collect::<Result<_, _>>()?,
                credit_limits: limits.iter().map(|l| parse_limit(l, &scales)).collect::<Result<_, _>>()?,
            };
            client.register_payer(request).await?;
            println!("registered payer {id}");
        }
        PayerCommand::AddKey { id, key, admin } => {
            client::admin(&admin)
                .await?
                .add_payer_key(AddPayerKeyRequest { payer_id: id.clone(), key: parse_key(&key)? })
                .await?;
            println!("added key to payer {id}");
        }
        PayerCommand::Suspend { id, admin } => set_status(admin, id, proto::PayerStatus::Suspended).await?,
        PayerCommand::Activate { id, admin } => set_status(admin, id, proto::PayerStatus::Active).await?,
        PayerCommand::SetLimit { id, limit, admin } => {
            let mut client = client::admin(&admin).await?;
            let scales = client::asset_scales(&mut client).await?;
            let limit = parse_limit(&limit, &scales)?;
            client.set_credit_limit(SetCreditLimitRequest { payer_id: id.clone(), limit: Some(limit) }).await?;
            println!("set credit limit of payer {id}");
        }
        PayerCommand::List { json, admin } => {
            let mut client = client::admin(&admin).await?;
            let scales = client::asset_scales(&mut client).await?;
            let payers = client.list_payers(ListRequest {}).await?.into_inner().payers;
            let show_limit = |l: &CreditLimit| {
                let scale = scales.get(&l.asset).copied().unwrap_or(0);
                let units = l.limit.parse::<u128>().unwrap_or(0);
                format!("{} {}", format_amount(units, scale), l.asset)
            };
            print_listing(
                json,
                &payers,
                |p| {
                    serde_json::json!({
                        "id": p.id,
                        "display_name": p.display_name,
                        "status": status_name(p.status),
                        "keys": p.keys.iter().map(hex::encode).collect::<Vec<_>>(),
                        "credit_limits": p.credit_limits.iter()
                            .map(|l| serde_json::json!({"asset": l.asset, "limit": l.limit}))
                            .collect::<Vec<_>>(),
                    })
                },
                &["payer", "name", "status", "keys", "credit limits"],
                &["keys"],
                |p| {
                    vec![
                        p.id.clone(),
                        p.display_name.clone(),
                        status_name(p.status),
                        p.keys.len().to_string(),
                        p.credit_limits.iter().map(show_limit).collect::<Vec<_>>().join(", "),
                    ]
                },
            );
        }
    }
    Ok(())
}

async fn set_status(admin: AdminArgs, id: String, status: proto::PayerStatus) -> anyhow::Result<()> {
    client::admin(&admin)
        .await?
        .set_payer_status(SetPayerStatusRequest { payer_id: id.clone(), status: status as i32 })
        .await?;
    println!("payer {id} is now {}", status_name(status as i32));
    Ok(())
}

/// `"active"` / `"suspended"`, from the wire enum.
fn status_name(status: i32) -> String {
    proto::PayerStatus::try_from(status)
        .map(|s| s.as_str_name().trim_start_matches("PAYER_STATUS_").to_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

#[derive(Subcommand, Debug)]
pub enum PayeeCommand {
    /// Register a payee.
    Register {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Where settlement pays it (filled in by the settlement rails).
        #[arg(long, default_value = "")]
        payout: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Change a payee's payout destination.
    SetPayout {
        id: String,
        payout: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List payees.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub async fn payee(command: PayeeCommand) -> anyhow::Result<()> {
    match command {
        PayeeCommand::Register { id, name, payout, admin } => {
            client::admin(&admin)
                .await?
                .register_payee(RegisterPayeeRequest {
                    payee: Some(proto::Payee { id: id.clone(), display_name: name, payout_destination: payout }),
                })
                .await?;
            println!("registered payee {id}");
        }
        PayeeCommand::SetPayout { id, payout, admin } => {
            client::admin(&admin)
                .await?
                .set_payee_payout(SetPayeePayoutRequest { payee_id: id.clone(), payout_destination: payout })
                .await?;
            println!("set payout destination of payee {id}");
        }
        PayeeCommand::List { json, admin } => {
            let payees = client::admin(&admin).await?.list_payees(ListRequest {}).await?.into_inner().payees;
            print_listing(
                json,
                &payees,
                |p| serde_json::json!({"id": p.id, "display_name": p.display_name, "payout_destination": p.payout_destination}),
                &["payee", "name", "payout destination"],
                &[],
                |p| vec![p.id.clone(), p.display_name.clone(), p.payout_destination.clone()],
            );
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum AssetCommand {
    /// Register an asset (or re-enable it).
    Register {
        code: String,
        /// Decimal places of the smallest unit (USD in micro-dollars: 6).
        #[arg(long)]
        scale: u8,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop accepting IOUs in an asset.
    Disable {
        code: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List assets.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub async fn asset(command: AssetCommand) -> anyhow::Result<()> {
    match command {
        AssetCommand::Register { code, scale, admin } => {
            let asset = proto::Asset { code: code.clone(), scale: u32::from(scale), enabled: true };
            client::admin(&admin).await?.upsert_asset(UpsertAssetRequest { asset: Some(asset) }).await?;
            println!("asset {code} enabled with scale {scale}");
        }
        AssetCommand::Disable { code, admin } => {
            let mut client = client::admin(&admin).await?;
            let scales = client::asset_scales(&mut client).await?;
            let scale = *scales.get(&code).with_context(|| format!("unknown asset {code}"))?;
            let asset = proto::Asset { code: code.clone(), scale: u32::from(scale), enabled: false };
            client.upsert_asset(UpsertAssetRequest { asset: Some(asset) }).await?;
            println!("asset {code} disabled");
        }
        AssetCommand::List { json, admin } => {
            let assets = client::admin(&admin).await?.list_assets(ListRequest {}).await?.into_inner().assets;
            print_listing(
                json,
                &assets,
                |a| serde_json::json!({"code": a.code, "scale": a.scale, "enabled": a.enabled}),
                &["asset", "scale", "enabled"],
                &["scale"],
                |a| vec![a.code.clone(), a.scale.to_string(), if a.enabled { "yes" } else { "no" }.into()],
            );
        }
    }
    Ok(())
}

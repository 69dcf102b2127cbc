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
    /// Set (or clear) the signature agent the payer's crawler sends in
    /// `Signature-Agent`, e.g. https://crawler.example.
    SetAgent {
        id: String,
        /// https:// or http:// URL.
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        agent: Option<String>,
        /// Remove the payer's signature agent.
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Add every Ed25519 key of a key directory (JWKS) to a payer. Keys the
    /// payer already has are reported, not refused.
    AddKeys {
        id: String,
        /// A JWKS file.
        #[arg(long, required_unless_present = "directory", conflicts_with = "directory")]
        jwks: Option<PathBuf>,
        /// The crawler's key directory: an http:// origin (its
        /// /.well-known/http-message-signatures-directory is fetched) or the
        /// directory's full URL.
        #[arg(long)]
        directory: Option<String>,
        /// Also set the payer's signature agent to the directory's origin.
        #[arg(long, requires = "directory")]
        set_agent: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke one of the payer's keys: IOUs it signs from now on are refused.
    /// What it signed before stays recorded and owed; the key can never be
    /// registered again.
    RevokeKey {
        id: String,
        /// The key, in hex.
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
        PayerCommand::SetAgent { id, agent, clear: _, admin } => {
            client::admin(&admin)
                .await?
                .set_signature_agent(SetSignatureAgentRequest {
                    payer_id: id.clone(),
                    signature_agent: agent.clone().unwrap_or_default(),
                })
                .await?;
            match agent {
                Some(agent) => println!("signature agent of payer {id} is now {agent}"),
                None => println!("cleared the signature agent of payer {id}"),
            }
        }
        PayerCommand::AddKeys { id, jwks, directory, set_agent, admin } => {
            let (bytes, agent) = match (jwks, directory) {
                (Some(path), _) => {
                    let bytes = read_jwks_file(&path)?;
                    (bytes, None)
                }
                (None, Some(directory)) => {
                    let (url, origin) = directory_url(&directory)?;
                    (fetch_directory(&url).await?, set_agent.then_some(origin))
                }
                (None, None) => anyhow::bail!("give --jwks FILE or --directory URL"),
            };
            add_directory_keys(&admin, &id, &bytes, agent).await?;
        }
        PayerCommand::RevokeKey { id, key, admin } => {
            client::admin(&admin)
                .await?
                .revoke_payer_key(RevokePayerKeyRequest { payer_id: id.clone(), key: parse_key(&key)? })
                .await?;
            println!("revoked key {key} of payer {id}: it signs nothing new");
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
                match (scales.get(&l.asset), l.limit.parse::<u128>()) {
                    (Some(scale), Ok(units)) => format!("{} {}", format_amount(units, *scale), l.asset),
                    // Never a number it is not: show what came.
                    _ => format!("{} smallest units of {} (scale unknown or malformed)", l.limit, l.asset),
                }
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
                        "signature_agent": Some(&p.signature_agent).filter(|a| !a.is_empty()),
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

/// Where a key directory lives.
const WELL_KNOWN_DIRECTORY: &str = "/.well-known/http-message-signatures-directory";
/// How long fetching a key directory may take, in all.
const DIRECTORY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn read_jwks_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let max = tally_x402::jwks::JWKS_BYTES_MAX;
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(bytes.len() <= max, "{} is larger than {max} bytes; not a key directory", path.display());
    Ok(bytes)
}

/// The URL to fetch (the well-known path when `directory` has none) and the
/// directory's origin (its signature agent).
fn directory_url(directory: &str) -> anyhow::Result<(reqwest::Url, String)> {
    let mut url =
        reqwest::Url::parse(directory).with_context(|| format!("key directory {directory:?} is not a URL"))?;
    match url.scheme() {
        "http" => {}
        "https" => anyhow::bail!(
            "key directory {directory} is https, but TLS is not built into this tally; \
             download the directory and use --jwks FILE"
        ),
        other => anyhow::bail!("key directory {directory}: unsupported scheme {other}: (http:// only)"),
    }
    anyhow::ensure!(url.host_str().is_some_and(|h| !h.is_empty()), "key directory {directory} has no host");
    if url.path() == "/" && url.query().is_none() {
        url.set_path(WELL_KNOWN_DIRECTORY);
    }
    let origin = url.origin().ascii_serialization();
    Ok((url, origin))
}

/// GETs a key directory: bounded in time and size, refused unless 2xx.
async fn fetch_directory(url: &reqwest::Url) -> anyhow::Result<Vec<u8>> {
    let max = tally_x402::jwks::JWKS_BYTES_MAX;
    let client = reqwest::Client::builder().timeout(DIRECTORY_TIMEOUT).build()?;
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/http-message-signatures-directory+json, application/json")
        .send()
        .await
        .with_context(|| format!("cannot fetch key directory {url}"))?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "key directory {url} answered HTTP {status}; nothing was added");
    if let Some(len) = response.content_length() {
        anyhow::ensure!(len <= max as u64, "key directory {url} is {len} bytes, more than {max}; nothing was added");
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.with_context(|| format!("cannot read key directory {url}"))? {
        anyhow::ensure!(
            body.len() + chunk.len() <= max,
            "key directory {url} is more than {max} bytes; nothing was added"
        );
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Adds every Ed25519 key of a JWKS to `id`, one AddPayerKey each; keys the
/// payer already owns are reported as such. Checks everything it can before
/// adding anything. With `agent`, then sets the payer's signature agent.
async fn add_directory_keys(admin: &AdminArgs, id: &str, jwks: &[u8], agent: Option<String>) -> anyhow::Result<()> {
    let keys = tally_x402::jwks::parse_jwks(jwks).map_err(|e| anyhow::anyhow!("{e}; nothing was added"))?;
    anyhow::ensure!(!keys.is_empty(), "the key directory has no Ed25519 (OKP) keys; nothing was added");
    let mut client = client::admin(admin).await?;
    let payers = client.list_payers(ListRequest {}).await?.into_inner().payers;
    let payer = payers.iter().find(|p| p.id == id).with_context(|| format!("unknown payer {id}"))?;
    let (owned, new): (Vec<_>, Vec<_>) =
        keys.iter().partition(|k| payer.keys.iter().any(|have| have.as_slice() == k.public_key.as_slice()));
    for key in &new {
        if let Some(other) = payers.iter().find(|p| p.keys.iter().any(|have| have.as_slice() == key.public_key)) {
            anyhow::bail!("key {} belongs to payer {}; nothing was added", key.thumbprint, other.id);
        }
    }
    let room = tally_core::account::PAYER_KEYS_MAX.saturating_sub(payer.keys.len());
    anyhow::ensure!(
        new.len() <= room,
        "payer {id} has {} keys; {} more would exceed {}; nothing was added",
        payer.keys.len(),
        new.len(),
        tally_core::account::PAYER_KEYS_MAX
    );
    for key in &owned {
        println!("already registered {}", key.thumbprint);
    }
    for key in &new {
        let request = AddPayerKeyRequest { payer_id: id.to_owned(), key: key.public_key.to_vec() };
        match client.add_payer_key(request).await {
            Ok(_) => println!("added {}", key.thumbprint),
            // Added by someone else since the listing: to this payer is fine.
            Err(status)
                if status.code() == tonic::Code::AlreadyExists
                    && status.message().ends_with(&format!("belongs to payer {id}")) =>
            {
                println!("already registered {}", key.thumbprint)
            }
            Err(status) => {
                return Err(anyhow::Error::from(status).context(format!("adding key {}", key.thumbprint)));
            }
        }
    }
    if let Some(agent) = agent {
        client
            .set_signature_agent(SetSignatureAgentRequest { payer_id: id.to_owned(), signature_agent: agent.clone() })
            .await?;
        println!("signature agent of payer {id} is now {agent}");
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
    /// Suspend a payee: no new IOUs for it, and settlement holds what it is
    /// owed (carried forward) until it is reinstated.
    Suspend {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Reinstate a suspended payee.
    Reinstate {
        id: String,
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
                    payee: Some(proto::Payee {
                        id: id.clone(),
                        display_name: name,
                        payout_destination: payout,
                        status: proto::PayeeStatus::Active as i32,
                    }),
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
        PayeeCommand::Suspend { id, admin } => {
            let status = proto::PayeeStatus::Suspended as i32;
            client::admin(&admin)
                .await?
                .set_payee_status(SetPayeeStatusRequest { payee_id: id.clone(), status })
                .await?;
            println!("suspended payee {id}: no new IOUs; what it is owed is held until it is reinstated");
        }
        PayeeCommand::Reinstate { id, admin } => {
            let status = proto::PayeeStatus::Active as i32;
            client::admin(&admin)
                .await?
                .set_payee_status(SetPayeeStatusRequest { payee_id: id.clone(), status })
                .await?;
            println!("reinstated payee {id}");
        }
        PayeeCommand::List { json, admin } => {
            let payees = client::admin(&admin).await?.list_payees(ListRequest {}).await?.into_inner().payees;
            let status = |p: &proto::Payee| {
                proto::PayeeStatus::try_from(p.status)
                    .map(|s| s.as_str_name().trim_start_matches("PAYEE_STATUS_").to_lowercase())
                    .unwrap_or_else(|_| "unknown".into())
            };
            print_listing(
                json,
                &payees,
                |p| {
                    serde_json::json!({"id": p.id, "display_name": p.display_name,
                        "payout_destination": p.payout_destination, "status": status(p)})
                },
                &["payee", "name", "payout destination", "status"],
                &[],
                |p| vec![p.id.clone(), p.display_name.clone(), p.payout_destination.clone(), status(p)],
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

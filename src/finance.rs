//! Finance commands: balances, epochs, sealing, receipts.

use std::collections::BTreeMap;

use anyhow::Context as _;
use clap::Subcommand;
use tally_core::format_amount;
use tally_ingest::proto::*;

use crate::client::{self, AdminArgs, QueryArgs};
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
    pub query: QueryArgs,
}

/// Most rows `tally balance` fetches (page by page) before it asks for a narrower filter.
pub const BALANCE_LIST_ROWS_MAX: usize = 100_000;

/// Fetches every balance row of `request`, following pages, up to
/// [`BALANCE_LIST_ROWS_MAX`]; shared with the demo. `truncated` says the cap cut it.
pub async fn fetch_balances(args: &QueryArgs, mut request: BalancesRequest) -> anyhow::Result<BalancesResponse> {
    let mut query = client::query(args).await?;
    let mut all = BalancesResponse::default();
    loop {
        let page = query.balances(request.clone()).await?.into_inner();
        all.scanned += page.scanned;
        all.rows.extend(page.rows);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        if all.rows.len() >= BALANCE_LIST_ROWS_MAX {
            all.truncated = true;
            all.next_page_token = page.next_page_token;
            return Ok(all);
        }
        request.page_token = page.next_page_token;
    }
}

/// Parses an amount the server sent (a decimal string of smallest units).
/// A string that is not one is an error: shown as 0, it would be a wrong number.
fn units_of(row: &BalanceRow) -> anyhow::Result<u128> {
    row.amount.parse::<u128>().map_err(|_| anyhow::anyhow!("the server sent a malformed amount {:?}", row.amount))
}

pub fn balance_table(rows: &[BalanceRow]) -> anyhow::Result<comfy_table::Table> {
    let mut totals: BTreeMap<(String, u32), (u128, u64)> = BTreeMap::new();
    let mut lines: Vec<Vec<String>> = Vec::with_capacity(rows.len());
    for r in rows {
        let units = units_of(r)?;
        let total = totals.entry((r.asset.clone(), r.scale)).or_default();
        total.0 = total.0.checked_add(units).ok_or_else(|| anyhow::anyhow!("the {} total overflows u128", r.asset))?;
        total.1 = total.1.checked_add(r.count).ok_or_else(|| anyhow::anyhow!("the {} IOU count overflows", r.asset))?;
        lines.push(vec![
            r.epoch.to_string(),
            r.payer.clone(),
            r.payee.clone(),
            r.asset.clone(),
            format_amount(units, r.scale as u8),
            r.count.to_string(),
        ]);
    }
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
    Ok(table(&["epoch", "payer", "payee", "asset", "amount", "IOUs"], &["amount", "IOUs"], lines))
}

pub async fn balance(args: BalanceArgs) -> anyhow::Result<()> {
    let request = BalancesRequest {
        epoch: args.epoch.unwrap_or(0),
        payer: args.payer.unwrap_or_default(),
        payee: args.payee.unwrap_or_default(),
        asset: args.asset.unwrap_or_default(),
        limit: 0,
        page_token: Vec::new(),
    };
    let response = fetch_balances(&args.query, request).await?;
    if args.json {
        let mut rows = Vec::with_capacity(response.rows.len());
        for r in &response.rows {
            rows.push(serde_json::json!({
                "epoch": r.epoch, "payer": r.payer, "payee": r.payee, "asset": r.asset,
                "amount_units": r.amount,
                "amount": format_amount(units_of(r)?, r.scale as u8),
                "scale": r.scale, "ious": r.count,
            }));
        }
        print_json(&serde_json::json!({
            "rows": rows,
            "truncated": response.truncated,
        }));
    } else {
        println!("{}", balance_table(&response.rows)?);
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
    pub query: QueryArgs,
}

pub async fn epochs(args: EpochsArgs) -> anyhow::Result<()> {
    let epochs = client::query(&args.query).await?.epochs(EpochsRequest {}).await?.into_inner().epochs;
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

#[derive(clap::Args, Debug)]
pub struct ReceiptArgs {
    /// The payer's public key, 64 hex digits.
    #[arg(long)]
    pub payer_key: String,
    /// The IOU's nonce, 32 hex digits.
    #[arg(long)]
    pub nonce: String,
    #[command(flatten)]
    pub query: QueryArgs,
}

/// `tally receipt`: an accepted IOU's proof that its payer signed it, as JSON
/// (binary fields in lower-case hex) for anyone to check without Tally: the
/// IOU's signing bytes, the signature, and either what it covers directly or,
/// for a batch-signed IOU, the batch statement, the leaf index and the RFC
/// 9162 inclusion proof. `verified` says whether this tool's own check of the
/// receipt passed; `scripts/interop/verify_receipt.py` is an independent one.
pub async fn receipt(args: ReceiptArgs) -> anyhow::Result<()> {
    let payer_key = hex::decode(&args.payer_key).context("--payer-key is not hex")?;
    let nonce = hex::decode(&args.nonce).context("--nonce is not hex")?;
    anyhow::ensure!(payer_key.len() == 32 && nonce.len() == 16, "a payer key is 32 bytes and a nonce 16");
    let receipt = client::query(&args.query).await?.get_receipt(GetIouRequest { payer_key, nonce }).await?.into_inner();
    anyhow::ensure!(receipt.found, "no accepted IOU has this payer key and nonce");
    let commitment = receipt.commitment.as_ref().map(|c| format!("{}:{}", c.seq, hex::encode(&c.hash)));
    let verified = check_receipt(&receipt);
    print_json(&serde_json::json!({
        "commitment": commitment,
        "epoch": receipt.epoch,
        "charged": receipt.charged,
        "evidence_format": receipt.evidence_format,
        "iou_signing_bytes": hex::encode(&receipt.iou_signing_bytes),
        "signature": hex::encode(&receipt.signature),
        "signed_message": hex::encode(&receipt.signed_message),
        "batch_statement": hex::encode(&receipt.batch_statement),
        "leaf_index": receipt.leaf_index,
        "inclusion_proof": receipt.inclusion_proof.iter().map(hex::encode).collect::<Vec<_>>(),
        "verified": verified,
    }));
    anyhow::ensure!(verified, "the receipt does not verify");
    Ok(())
}

/// Checks a receipt with Tally's own rules: the IOU parses, the signature
/// holds, and (batch members) the inclusion proof leads to the signed root.
fn check_receipt(receipt: &Receipt) -> bool {
    use tally_core::batch::{BatchStatement, leaf_hash, verify_inclusion};
    use tally_core::verify::{VerifyItem, verify_one};
    let Ok(iou) = tally_core::Iou::from_signing_bytes(&receipt.iou_signing_bytes) else { return false };
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&iou.payer_key) else { return false };
    let Ok(signature) = <[u8; 64]>::try_from(receipt.signature.as_slice()) else { return false };
    let message: &[u8] = if receipt.batch_statement.is_empty() {
        &receipt.signed_message
    } else {
        let Ok(statement) = BatchStatement::from_bytes(&receipt.batch_statement) else { return false };
        let proof: Option<Vec<[u8; 32]>> =
            receipt.inclusion_proof.iter().map(|h| <[u8; 32]>::try_from(h.as_slice()).ok()).collect();
        let Some(proof) = proof else { return false };
        let leaf = leaf_hash(&receipt.iou_signing_bytes);
        if statement.payer_key != iou.payer_key
            || !verify_inclusion(
                &leaf,
                u64::from(receipt.leaf_index),
                u64::from(statement.count),
                &proof,
                &statement.root,
            )
        {
            return false;
        }
        &receipt.batch_statement
    };
    // A Tally IOU's signature covers its own bytes; other forms say what they cover.
    if receipt.evidence_format == "tally-iou-v1" && message != receipt.iou_signing_bytes.as_slice() {
        return false;
    }
    verify_one(&VerifyItem { key: &key, message, signature: &signature })
}

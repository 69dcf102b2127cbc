//! `tally token`: the Query service's bearer tokens.
//!
//! The query service (balances, exposure, receipts) needs a token. The
//! admin token reads everything; these tokens are for the people who should
//! read only their own rows: a publisher (`--payee`), a crawler operator
//! (`--payer`), or a finance tool (`--all`). The secret is printed once: the
//! ledger keeps only its SHA-256, and creating and revoking are journaled.

use clap::Subcommand;
use tally_ingest::proto::{CreateQueryTokenRequest, ListRequest, RevokeQueryTokenRequest};

use crate::client::{self, AdminArgs};
use crate::output::print_listing;

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a query token and print it once.
    Create {
        /// A name for it (1..=64 of A-Z a-z 0-9 . _ -), never reused.
        name: String,
        /// Read only this payee's rows.
        #[arg(long, conflicts_with_all = ["payer", "all"])]
        payee: Option<String>,
        /// Read only this payer's rows.
        #[arg(long, conflicts_with_all = ["payee", "all"])]
        payer: Option<String>,
        /// Read every row.
        #[arg(long, required_unless_present_any = ["payee", "payer"])]
        all: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List tokens (names and scopes; secrets are never shown again).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a token: it reads nothing from now on.
    Revoke {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub async fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name, payee, payer, all: _, admin } => {
            let scope = match (payee, payer) {
                (Some(payee), _) => format!("payee:{payee}"),
                (None, Some(payer)) => format!("payer:{payer}"),
                (None, None) => "all".to_owned(),
            };
            let request = CreateQueryTokenRequest { name: name.clone(), scope: scope.clone() };
            let token = client::admin(&admin).await?.create_query_token(request).await?.into_inner().token;
            eprintln!("created query token {name} ({scope}); it is shown once, here:");
            println!("{token}");
        }
        TokenCommand::List { json, admin } => {
            let tokens = client::admin(&admin).await?.list_query_tokens(ListRequest {}).await?.into_inner().tokens;
            print_listing(
                json,
                &tokens,
                |t| {
                    serde_json::json!({"name": t.name, "scope": t.scope, "created_at_ms": t.created_at_ms,
                        "revoked_at_ms": (t.revoked_at_ms != 0).then_some(t.revoked_at_ms)})
                },
                &["token", "scope", "state"],
                &[],
                |t| {
                    let state = if t.revoked_at_ms == 0 { "live".to_owned() } else { "revoked".to_owned() };
                    vec![t.name.clone(), t.scope.clone(), state]
                },
            );
        }
        TokenCommand::Revoke { name, admin } => {
            client::admin(&admin).await?.revoke_query_token(RevokeQueryTokenRequest { name: name.clone() }).await?;
            println!("revoked query token {name}");
        }
    }
    Ok(())
}

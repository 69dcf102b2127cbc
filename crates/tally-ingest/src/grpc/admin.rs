//! The admin service: accounts, keys, query tokens and epochs, through the
//! ledger's writer.
//!
//! Mutations are commands to the single writer, so they are ordered with
//! ingest and durable before they are answered, and each is journaled with
//! its actor: the admin token, and the address the call came from. Listings
//! read the ledger.

use tally_core::{Actor, Asset, Payee, PayeeStatus, PayerStatus};
use tally_ledger::{AdminCommand, AdminError, AdminReply, Ledger, QueryScope, WriterHandle, token_digest};
use tonic::{Request, Response, Status};

use crate::proto::admin_server::Admin;
use crate::proto::{self, *};

pub struct AdminService {
    ledger: Ledger,
    writer: WriterHandle,
}

impl AdminService {
    pub fn new(ledger: Ledger, writer: WriterHandle) -> AdminService {
        AdminService { ledger, writer }
    }

    async fn command(&self, actor: Actor, command: AdminCommand) -> Result<AdminReply, Status> {
        self.writer.admin(actor, command).await.map_err(admin_status)
    }

    async fn done(&self, actor: Actor, command: AdminCommand) -> Result<Response<AdminResponse>, Status> {
        self.command(actor, command).await.map(|_| Response::new(AdminResponse {}))
    }
}

/// Who is calling: the admin token's holder, from the caller's address.
pub fn actor_of<T>(request: &Request<T>) -> Actor {
    match request.remote_addr() {
        Some(addr) => Actor::admin_token(&addr.to_string()),
        None => Actor::admin_token("local"),
    }
}

/// A writer refusal as a gRPC status.
pub fn admin_status(error: AdminError) -> Status {
    match &error {
        AdminError::NotFound(_) => Status::not_found(error.to_string()),
        AdminError::AlreadyExists(_) => Status::already_exists(error.to_string()),
        AdminError::Invalid(_) => Status::invalid_argument(error.to_string()),
        AdminError::PlanMismatch(_) => Status::aborted(error.to_string()),
        AdminError::Inconsistent(_) => Status::data_loss(error.to_string()),
        AdminError::Storage(_) | AdminError::WriterStopped => Status::unavailable(error.to_string()),
    }
}

fn payee_status_from_proto(status: i32) -> Result<PayeeStatus, Status> {
    match proto::PayeeStatus::try_from(status) {
        Ok(proto::PayeeStatus::Active | proto::PayeeStatus::Unspecified) => Ok(PayeeStatus::Active),
        Ok(proto::PayeeStatus::Suspended) => Ok(PayeeStatus::Suspended),
        Err(_) => Err(Status::invalid_argument("payee status must be ACTIVE or SUSPENDED")),
    }
}

fn payee_status_to_proto(status: PayeeStatus) -> proto::PayeeStatus {
    match status {
        PayeeStatus::Active => proto::PayeeStatus::Active,
        PayeeStatus::Suspended => proto::PayeeStatus::Suspended,
    }
}

/// `all`, `payer:<id>` or `payee:<id>`.
pub fn parse_scope(text: &str) -> Result<QueryScope, Status> {
    match text.split_once(':') {
        None if text == "all" => Ok(QueryScope::All),
        Some(("payer", id)) if !id.is_empty() => Ok(QueryScope::Payer(id.to_owned())),
        Some(("payee", id)) if !id.is_empty() => Ok(QueryScope::Payee(id.to_owned())),
        _ => Err(Status::invalid_argument("scope must be all, payer:<id> or payee:<id>")),
    }
}

/// A fresh query token: `tq_` and 64 hex digits (256 random bits).
fn new_query_token() -> Result<String, Status> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Status::unavailable(format!("no system randomness: {e}")))?;
    Ok(format!("tq_{}", hex::encode(bytes)))
}

fn key_bytes(key: &[u8]) -> Result<[u8; 32], Status> {
    key.try_into().map_err(|_| Status::invalid_argument("a public key is 32 bytes"))
}

fn limit_from_proto(limit: &CreditLimit) -> Result<(String, u128), Status> {
    let units = limit.limit.parse::<u128>().map_err(|_| {
        Status::invalid_argument(format!("limit {:?} is not a whole number of smallest units", limit.limit))
    })?;
    Ok((limit.asset.clone(), units))
}

fn status_from_proto(status: i32) -> Result<PayerStatus, Status> {
    match proto::PayerStatus::try_from(status) {
        Ok(proto::PayerStatus::Active) => Ok(PayerStatus::Active),
        Ok(proto::PayerStatus::Suspended) => Ok(PayerStatus::Suspended),
        _ => Err(Status::invalid_argument("status must be ACTIVE or SUSPENDED")),
    }
}

fn status_to_proto(status: PayerStatus) -> proto::PayerStatus {
    match status {
        PayerStatus::Active => proto::PayerStatus::Active,
        PayerStatus::Suspended => proto::PayerStatus::Suspended,
    }
}

async fn read<T: Send + 'static>(
    ledger: &Ledger,
    work: impl FnOnce(Ledger) -> Result<T, tally_ledger::LedgerError> + Send + 'static,
) -> Result<T, Status> {
    let ledger = ledger.clone();
    tokio::task::spawn_blocking(move || work(ledger))
        .await
        .map_err(|e| Status::internal(format!("admin read failed: {e}")))?
        .map_err(super::ledger_status)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn upsert_asset(&self, request: Request<UpsertAssetRequest>) -> Result<Response<AdminResponse>, Status> {
        let actor = actor_of(&request);
        let asset = request.into_inner().asset.ok_or_else(|| Status::invalid_argument("asset is required"))?;
        let scale = u8::try_from(asset.scale).map_err(|_| Status::invalid_argument("scale is too large"))?;
        let asset =
            Asset::new(&asset.code, scale, asset.enabled).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.done(actor, AdminCommand::UpsertAsset(asset)).await
    }

    async fn list_assets(&self, _request: Request<ListRequest>) -> Result<Response<ListAssetsResponse>, Status> {
        let assets = read(&self.ledger, |l| l.assets()).await?;
        Ok(Response::new(ListAssetsResponse {
            assets: assets
                .into_iter()
                .map(|a| proto::Asset { code: a.code, scale: u32::from(a.scale), enabled: a.enabled })
                .collect(),
        }))
    }

    async fn register_payer(&self, request: Request<RegisterPayerRequest>) -> Result<Response<AdminResponse>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let keys = request.keys.iter().map(|k| key_bytes(k)).collect::<Result<Vec<_>, _>>()?;
        let credit_limits = request.credit_limits.iter().map(limit_from_proto).collect::<Result<Vec<_>, _>>()?;
        self.done(
            actor,
            AdminCommand::RegisterPayer { id: request.id, display_name: request.display_name, keys, credit_limits },
        )
        .await
    }

    async fn add_payer_key(&self, request: Request<AddPayerKeyRequest>) -> Result<Response<AdminResponse>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let key = key_bytes(&request.key)?;
        self.done(actor, AdminCommand::AddPayerKey { payer_id: request.payer_id, key }).await
    }

    async fn set_payer_status(
        &self,
        request: Request<SetPayerStatusRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let status = status_from_proto(request.status)?;
        self.done(actor, AdminCommand::SetPayerStatus { payer_id: request.payer_id, status }).await
    }

    async fn set_credit_limit(
        &self,
        request: Request<SetCreditLimitRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let limit = request.limit.ok_or_else(|| Status::invalid_argument("limit is required"))?;
        let (asset, limit) = limit_from_proto(&limit)?;
        self.done(actor, AdminCommand::SetCreditLimit { payer_id: request.payer_id, asset, limit }).await
    }

    async fn list_payers(&self, _request: Request<ListRequest>) -> Result<Response<ListPayersResponse>, Status> {
        let payers = read(&self.ledger, |l| l.payers()).await?;
        Ok(Response::new(ListPayersResponse {
            payers: payers
                .into_iter()
                .map(|p| proto::Payer {
                    id: p.id,
                    display_name: p.display_name,
                    status: status_to_proto(p.status) as i32,
                    keys: p.keys.iter().map(|k| k.to_vec()).collect(),
                    credit_limits: p
                        .credit_limits
                        .into_iter()
                        .map(|(asset, limit)| CreditLimit { asset, limit: limit.to_string() })
                        .collect(),
                    settles_with: p.settles_with.unwrap_or_default(),
                    signature_agent: p.signature_agent.unwrap_or_default(),
                    revoked_keys: p.revoked_keys.iter().map(|(k, _)| k.to_vec()).collect(),
                })
                .collect(),
        }))
    }

    async fn link_payer(&self, request: Request<LinkPayerRequest>) -> Result<Response<AdminResponse>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let payee_id = Some(request.payee_id).filter(|id| !id.is_empty());
        self.done(actor, AdminCommand::LinkPayer { payer_id: request.payer_id, payee_id }).await
    }

    async fn set_signature_agent(
        &self,
        request: Request<SetSignatureAgentRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let signature_agent = Some(request.signature_agent).filter(|agent| !agent.is_empty());
        self.done(actor, AdminCommand::SetSignatureAgent { payer_id: request.payer_id, signature_agent }).await
    }

    async fn register_payee(&self, request: Request<RegisterPayeeRequest>) -> Result<Response<AdminResponse>, Status> {
        let actor = actor_of(&request);
        let payee = request.into_inner().payee.ok_or_else(|| Status::invalid_argument("payee is required"))?;
        let status = payee_status_from_proto(payee.status)?;
        let payee = Payee { status, ..Payee::new(&payee.id, &payee.display_name, &payee.payout_destination) };
        self.done(actor, AdminCommand::RegisterPayee(payee)).await
    }

    async fn set_payee_payout(
        &self,
        request: Request<SetPayeePayoutRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        self.done(
            actor,
            AdminCommand::SetPayeePayout { payee_id: request.payee_id, payout_destination: request.payout_destination },
        )
        .await
    }

    async fn list_payees(&self, _request: Request<ListRequest>) -> Result<Response<ListPayeesResponse>, Status> {
        let payees = read(&self.ledger, |l| l.payees()).await?;
        Ok(Response::new(ListPayeesResponse {
            payees: payees
                .into_iter()
                .map(|p| proto::Payee {
                    status: payee_status_to_proto(p.status) as i32,
                    id: p.id,
                    display_name: p.display_name,
                    payout_destination: p.payout_destination,
                })
                .collect(),
        }))
    }

    async fn seal_epoch(&self, request: Request<SealEpochRequest>) -> Result<Response<SealEpochResponse>, Status> {
        match self.command(actor_of(&request), AdminCommand::SealEpoch).await? {
            AdminReply::Sealed { sealed, opened } => Ok(Response::new(SealEpochResponse {
                sealed_epoch: sealed.epoch,
                sealed_seq_last: sealed.seq_last.unwrap_or(0),
                opened_epoch: opened.epoch,
            })),
            _ => Err(Status::internal("seal answered without epochs")),
        }
    }

    async fn revoke_payer_key(
        &self,
        request: Request<RevokePayerKeyRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let key = key_bytes(&request.key)?;
        self.done(actor, AdminCommand::RevokePayerKey { payer_id: request.payer_id, key }).await
    }

    async fn set_payee_status(
        &self,
        request: Request<SetPayeeStatusRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        if request.status == proto::PayeeStatus::Unspecified as i32 {
            return Err(Status::invalid_argument("status must be ACTIVE or SUSPENDED"));
        }
        let status = payee_status_from_proto(request.status)?;
        self.done(actor, AdminCommand::SetPayeeStatus { payee_id: request.payee_id, status }).await
    }

    async fn create_query_token(
        &self,
        request: Request<CreateQueryTokenRequest>,
    ) -> Result<Response<CreateQueryTokenResponse>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let scope = parse_scope(&request.scope)?;
        let token = new_query_token()?;
        let command = AdminCommand::CreateQueryToken { name: request.name, scope, digest: token_digest(&token) };
        self.command(actor, command).await?;
        Ok(Response::new(CreateQueryTokenResponse { token }))
    }

    async fn revoke_query_token(
        &self,
        request: Request<RevokeQueryTokenRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        let actor = actor_of(&request);
        self.done(actor, AdminCommand::RevokeQueryToken { name: request.into_inner().name }).await
    }

    async fn list_query_tokens(
        &self,
        _request: Request<ListRequest>,
    ) -> Result<Response<ListQueryTokensResponse>, Status> {
        let tokens = read(&self.ledger, |l| l.query_tokens()).await?;
        let mut tokens: Vec<QueryTokenInfo> = tokens
            .into_iter()
            .map(|(_, token)| QueryTokenInfo {
                name: token.name,
                scope: token.scope.to_string(),
                created_at_ms: token.created_at_ms,
                revoked_at_ms: token.revoked_at_ms.unwrap_or(0),
            })
            .collect();
        tokens.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListQueryTokensResponse { tokens }))
    }
}

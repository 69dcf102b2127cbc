//! Connecting to a running engine: the shared `--server` / `--admin-token`
//! flags and typed clients.
//!
//! Two global flags (set once by `main` through [`configure`]) shape every
//! connection: `--tls-ca FILE` connects over TLS, trusting that CA, and
//! `--admin-addr` sends admin and settlement calls to the engine's separate
//! admin listener instead of `--server`.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context;
use tally_ingest::proto::admin_client::AdminClient;
use tally_ingest::proto::query_client::QueryClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::{ADMIN_TOKEN_FILE, DEFAULT_DATA_DIR, DEFAULT_GRPC_ADDR};

#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The engine's gRPC address.
    #[arg(long, env = "TALLY_SERVER", default_value_t = format!("http://{DEFAULT_GRPC_ADDR}"))]
    pub server: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Admin bearer token. Default: `<data-dir>/admin-token`.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Where to look for the admin token file.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// Where to send Query calls, and the bearer token they carry.
#[derive(clap::Args, Debug, Clone)]
pub struct QueryArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// A query token (`tally token create`), which may be scoped to one payer
    /// or one payee. Default: the admin token.
    #[arg(long, env = "TALLY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Admin bearer token, used when no --token is given. Default: `<data-dir>/admin-token`.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Where to look for the admin token file.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

impl QueryArgs {
    /// Query calls with the admin token of `admin`.
    pub fn from_admin(admin: &AdminArgs) -> QueryArgs {
        QueryArgs {
            server: admin.server.clone(),
            token: None,
            admin_token: admin.admin_token.clone(),
            data_dir: admin.data_dir.clone(),
        }
    }
}

/// Process-wide connection settings from the global flags.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// The engine's separate admin address, if it has one.
    pub admin_addr: Option<String>,
    /// The CA to trust for TLS; `None` connects in plaintext.
    pub tls_ca: Option<PathBuf>,
}

static CONNECTION: OnceLock<Connection> = OnceLock::new();

/// Sets the connection settings; the first call wins.
pub fn configure(connection: Connection) {
    let _ = CONNECTION.set(connection);
}

fn connection() -> &'static Connection {
    CONNECTION.get_or_init(Connection::default)
}

/// `host:port` or a URL, as a URL with the scheme TLS needs.
fn endpoint_url(address: &str, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    match address.split_once("://") {
        Some(("http" | "https", rest)) => format!("{scheme}://{rest}"),
        Some(_) => address.to_owned(),
        None => format!("{scheme}://{address}"),
    }
}

pub async fn channel(server: &ServerArgs) -> anyhow::Result<Channel> {
    connect(&server.server).await
}

/// Connects to `address` (`host:port` or a URL), over TLS when `--tls-ca` is set.
pub async fn connect(address: &str) -> anyhow::Result<Channel> {
    let settings = connection();
    let url = endpoint_url(address, settings.tls_ca.is_some());
    let mut endpoint = Endpoint::from_shared(url.clone()).with_context(|| format!("server address {address:?}"))?;
    if let Some(ca) = &settings.tls_ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading the TLS CA {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .with_context(|| format!("TLS settings for {url}"))?;
    }
    endpoint
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {url} (is `tally serve` running?)"))
}

/// The channel admin-side calls use: `--admin-addr` if given, else `--server`.
pub async fn admin_channel(args: &AdminArgs) -> anyhow::Result<Channel> {
    match &connection().admin_addr {
        Some(address) => connect(address).await,
        None => channel(&args.server).await,
    }
}

pub type Query = QueryClient<tonic::service::interceptor::InterceptedService<Channel, BearerToken>>;

/// A query client carrying `--token`, else the admin token.
pub async fn query(args: &QueryArgs) -> anyhow::Result<Query> {
    let token = match &args.token {
        Some(token) => token.clone(),
        None => admin_token(&AdminArgs {
            server: args.server.clone(),
            admin_token: args.admin_token.clone(),
            data_dir: args.data_dir.clone(),
        })?,
    };
    Ok(QueryClient::with_interceptor(channel(&args.server).await?, BearerToken::new(&token)?))
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<tonic::metadata::Ascii>);

impl BearerToken {
    pub fn new(token: &str) -> anyhow::Result<BearerToken> {
        anyhow::ensure!(!token.is_empty(), "the token is empty");
        let value = format!("Bearer {token}").parse().map_err(|_| anyhow::anyhow!("the token must be ASCII"))?;
        Ok(BearerToken(value))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Admin = AdminClient<tonic::service::interceptor::InterceptedService<Channel, BearerToken>>;

pub async fn admin(args: &AdminArgs) -> anyhow::Result<Admin> {
    // The token first: a missing or empty token file is the error to report,
    // whether or not the engine is up.
    let token = admin_token(args)?;
    admin_with_token(admin_channel(args).await?, &token)
}

/// The admin token: `--admin-token`, else `<data-dir>/admin-token`.
pub fn admin_token(args: &AdminArgs) -> anyhow::Result<String> {
    match &args.admin_token {
        Some(token) => Ok(token.clone()),
        None => {
            let path = args.data_dir.join(ADMIN_TOKEN_FILE);
            let token = std::fs::read_to_string(&path)
                .with_context(|| format!("no --admin-token given and {} is unreadable", path.display()))?
                .trim()
                .to_owned();
            anyhow::ensure!(!token.is_empty(), "{} is empty", path.display());
            Ok(token)
        }
    }
}

pub fn admin_with_token(channel: Channel, token: &str) -> anyhow::Result<Admin> {
    Ok(AdminClient::with_interceptor(channel, BearerToken::new(token)?))
}

/// Maps the assets' scales, for converting decimal amounts.
pub async fn asset_scales(admin: &mut Admin) -> anyhow::Result<std::collections::HashMap<String, u8>> {
    let assets = admin.list_assets(tally_ingest::proto::ListRequest {}).await?.into_inner().assets;
    Ok(assets.into_iter().map(|a| (a.code, a.scale as u8)).collect())
}

pub type Settlement = tally_settler::grpc::proto::settlement_client::SettlementClient<
    tonic::service::interceptor::InterceptedService<Channel, BearerToken>,
>;

/// A settlement client; settlement calls need the admin token.
pub async fn settlement(args: &AdminArgs) -> anyhow::Result<Settlement> {
    let token = admin_token(args)?;
    Ok(tally_settler::grpc::proto::settlement_client::SettlementClient::with_interceptor(
        admin_channel(args).await?,
        BearerToken::new(&token)?,
    ))
}

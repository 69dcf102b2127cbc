//! `tally serve` configuration: flags, environment, a TOML file, defaults.
//!
//! Precedence, highest first: command-line flag, `TALLY_*` environment
//! variable, the file given by `--config`, the embedded default. The
//! defaults run a complete engine on loopback with data in `./tally-data`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

pub const DEFAULT_DATA_DIR: &str = "tally-data";
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8402";
pub const DEFAULT_NETWORK: &str = "tally:local";
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the ledger lives.
    #[arg(long, env = "TALLY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (ingest, query, admin, health, reflection).
    #[arg(long, env = "TALLY_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Prometheus metrics listen address; "off" disables it.
    #[arg(long, env = "TALLY_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// x402 facilitator HTTP listen address (/supported, /verify, /settle);
    /// "off" disables it.
    #[arg(long, env = "TALLY_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// The Tally network id IOUs must name.
    #[arg(long, env = "TALLY_NETWORK")]
    pub network: Option<String>,
    /// Admin API bearer token. Default: read `<data-dir>/admin-token`,
    /// creating it with a random token (mode 0600) on first start.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Before serving, read the whole ledger once (hash chain, replay index,
    /// aggregates; every block's checksum) and refuse to start on any damage.
    /// Takes time proportional to the ledger's size.
    #[arg(long, env = "TALLY_VERIFY_ON_START")]
    pub verify_on_start: bool,
    /// Benchmarks only: accept IOUs without checking their signatures, to
    /// measure the ledger alone. Never use it with real money.
    #[arg(long, hide = true)]
    pub unsafe_skip_signature_verification: bool,
    /// Once listening, write `{"grpc_addr":…,"admin_addr":…,"metrics_addr":…,"http_addr":…,"pid":…}` here.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) for the gRPC and HTTP listeners; needs
    /// `--tls-key`. Without both, Tally serves plaintext.
    #[arg(long, env = "TALLY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) matching `--tls-cert`.
    #[arg(long, env = "TALLY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve the admin API (Admin, Settlement) in plaintext on an address
    /// other hosts can reach. Refused by default: the admin token would cross
    /// the network in clear. Configure `[tls]`, or bind admin to loopback
    /// (`--admin-addr 127.0.0.1:…`), instead.
    #[arg(long, env = "TALLY_ALLOW_PLAINTEXT_ADMIN")]
    pub allow_plaintext_admin: bool,
    /// Also run the paying reverse proxy (`tally gate`) in this process, with
    /// this price list, on the engine's own facilitator (no extra hop).
    #[arg(long, env = "TALLY_SERVE_GATE")]
    pub gate: Option<PathBuf>,
    /// The separate admin listen address (`--admin-addr` / `TALLY_ADMIN_ADDR`,
    /// a global flag shared with the client commands; filled in by `main`).
    #[arg(skip)]
    pub admin_addr: Option<String>,
}

/// The file form: every key optional.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub verify_on_start: Option<bool>,
    pub grpc_addr: Option<SocketAddr>,
    pub metrics_addr: Option<String>,
    pub http_addr: Option<String>,
    pub network: Option<String>,
    pub admin_token: Option<String>,
    /// Admin and Settlement only on this address; "off" (the default) serves
    /// them on `grpc_addr`.
    pub admin_addr: Option<String>,
    /// See `ServeArgs::allow_plaintext_admin`.
    pub allow_plaintext_admin: Option<bool>,
    /// `[tls]`: serve gRPC and HTTP over TLS.
    pub tls: Option<FileTls>,
    pub limits: Option<FileLimits>,
    /// `[settlement]`: see `tally_settler::config`.
    pub settlement: Option<tally_settler::SettlementConfig>,
    /// A price list: run the gateway in this process (see `ServeArgs::gate`).
    pub gate: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub batch_ious_max: Option<usize>,
    pub message_bytes_max: Option<usize>,
    pub streams_per_connection_max: Option<u32>,
    pub stream_batches_inflight_max: Option<usize>,
    pub requests_max: Option<usize>,
    pub writer_queue_depth_max: Option<usize>,
    pub writer_group_ious_max: Option<usize>,
    pub clock_skew_max_s: Option<u64>,
    pub validity_max_s: Option<u64>,
    pub verify_threads: Option<usize>,
    /// HTTP (x402 facilitator) listener: see `tally_ingest::server::http`.
    pub http_header_read_timeout_ms: Option<u64>,
    pub http_request_timeout_ms: Option<u64>,
    pub http_connections_max: Option<usize>,
    pub http_header_bytes_max: Option<usize>,
    pub http_headers_max: Option<usize>,
}

/// The resolved configuration.
#[derive(Debug)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    /// Where Admin and Settlement are served when not on `grpc_addr`.
    pub admin_addr: Option<SocketAddr>,
    /// TLS for every gRPC and HTTP listener (not metrics).
    pub tls: Option<tally_ingest::server::tls::TlsFiles>,
    pub metrics_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub network: String,
    pub admin_token: AdminToken,
    pub limits: FileLimits,
    pub ready_file: Option<PathBuf>,
    /// Benchmarks only: see `ServeArgs::unsafe_skip_signature_verification`.
    pub skip_signature_verification: bool,
    /// See `ServeArgs::verify_on_start`.
    pub verify_on_start: bool,
    /// Settlement policy and rails; absent means the defaults (no rails:
    /// every credit carries forward, every debt is billed).
    pub settlement: tally_settler::SettlementConfig,
    /// The gateway's price list, when it runs in this process.
    pub gate: Option<PathBuf>,
}

/// The admin token, kept out of `Debug` output so it never reaches a log.
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl ServeArgs {
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let file: FileConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                parse_file(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let data_dir = self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let grpc_addr =
            self.grpc_addr.or(file.grpc_addr).unwrap_or_else(|| DEFAULT_GRPC_ADDR.parse().expect("valid default"));
        let metrics_addr = match self.metrics_addr.or(file.metrics_addr).as_deref() {
            Some("off") => None,
            Some(addr) => Some(addr.parse().with_context(|| format!("metrics address {addr:?}"))?),
            None => Some(DEFAULT_METRICS_ADDR.parse().expect("valid default")),
        };
        let http_addr = match self.http_addr.or(file.http_addr).as_deref() {
            Some("off") => None,
            Some(addr) => Some(addr.parse().with_context(|| format!("HTTP address {addr:?}"))?),
            None => Some(DEFAULT_HTTP_ADDR.parse().expect("valid default")),
        };
        let admin_addr: Option<SocketAddr> = match self.admin_addr.or(file.admin_addr).as_deref() {
            None | Some("off") => None,
            Some(addr) => Some(addr.parse().with_context(|| format!("admin address {addr:?}"))?),
        };
        if let Some(admin) = admin_addr {
            anyhow::ensure!(
                admin.port() == 0 || admin != grpc_addr,
                "the admin address {admin} must differ from the gRPC address"
            );
        }
        let file_tls = file.tls.map(|t| (t.cert_file, t.key_file));
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert_file), Some(key_file)) => Some(tally_ingest::server::tls::TlsFiles { cert_file, key_file }),
            (None, None) => {
                file_tls.map(|(cert_file, key_file)| tally_ingest::server::tls::TlsFiles { cert_file, key_file })
            }
            _ => anyhow::bail!("TLS needs both --tls-cert and --tls-key"),
        };
        // The admin API listens on `admin_addr`, or beside ingest on `grpc_addr`.
        let admin_listen = admin_addr.unwrap_or(grpc_addr);
        let allow_plaintext_admin = self.allow_plaintext_admin || file.allow_plaintext_admin.unwrap_or(false);
        anyhow::ensure!(
            tls.is_some() || admin_listen.ip().is_loopback() || allow_plaintext_admin,
            "the admin API would listen in plaintext on {admin_listen}, which other hosts can reach: the admin \
             token would cross the network in clear. Configure [tls], bind the admin API to loopback \
             (--admin-addr 127.0.0.1:PORT), or pass --allow-plaintext-admin if the network is private"
        );
        let network = self.network.or(file.network).unwrap_or_else(|| DEFAULT_NETWORK.to_owned());
        let admin_token = match self.admin_token.or(file.admin_token) {
            Some(token) if token.is_empty() => anyhow::bail!("the admin token must not be empty"),
            Some(token) => token,
            None => load_or_create_token(&data_dir)?,
        };
        Ok(ServeConfig {
            data_dir,
            grpc_addr,
            admin_addr,
            tls,
            metrics_addr,
            http_addr,
            network,
            admin_token: AdminToken(admin_token),
            limits: file.limits.unwrap_or_default(),
            ready_file: self.ready_file,
            skip_signature_verification: self.unsafe_skip_signature_verification,
            verify_on_start: self.verify_on_start || file.verify_on_start.unwrap_or(false),
            settlement: file.settlement.unwrap_or_default(),
            gate: self.gate.or(file.gate),
        })
    }
}

/// Parses the TOML file. The error names the line, column and what is
/// wrong, but never quotes the file: the offending line may hold a secret
/// (`admin_token = …` with a typo), and errors end up in logs.
fn parse_file(text: &str) -> anyhow::Result<FileConfig> {
    toml::from_str(text).map_err(|error| {
        let location = error
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        // serde quotes a rejected value (``invalid type: integer `123` ``):
        // on a line that sets a secret, say only that the value is invalid.
        let line = error.span().map(|span| {
            let start = text[..span.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
            text[start..].lines().next().unwrap_or_default()
        });
        let key = line.and_then(|l| l.split_once('=')).map(|(key, _)| key.trim().to_ascii_lowercase());
        let secret = key.is_some_and(|k| ["token", "key", "secret", "password"].iter().any(|s| k.contains(s)));
        if secret {
            anyhow::anyhow!("invalid value for a secret setting (not shown){location}")
        } else {
            anyhow::anyhow!("{}{location}", error.message().trim_end())
        }
    })
}

/// Reads `<data_dir>/admin-token`, creating it (0600) with 32 random bytes
/// in hex when absent.
pub fn load_or_create_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim();
        // An empty token would guard nothing: refuse it, never fall back to "no auth".
        anyhow::ensure!(
            !token.is_empty(),
            "{} is empty: write a token into it (or delete it, and a new random one is created)",
            path.display()
        );
        return Ok(token.to_owned());
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let token = hex::encode(bytes);
    write_private_file(&path, token.as_bytes())?;
    tracing::info!(path = %path.display(), "created a new admin token file");
    Ok(token)
}

/// Writes a file readable by its owner only.
pub fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arguments that resolve without touching the disk: a token is given,
    /// so no token file is read or created.
    fn args(grpc: &str, admin: Option<&str>, allow_plaintext_admin: bool) -> ServeArgs {
        ServeArgs {
            data_dir: Some(PathBuf::from("/nonexistent/tally-config-test")),
            grpc_addr: Some(grpc.parse().unwrap()),
            admin_addr: admin.map(str::to_owned),
            admin_token: Some("t0ken".to_owned()),
            allow_plaintext_admin,
            ..ServeArgs::default()
        }
    }

    #[test]
    fn a_plaintext_admin_api_off_loopback_needs_the_explicit_override() {
        for (grpc, admin) in [("0.0.0.0:7000", None), ("127.0.0.1:7000", Some("0.0.0.0:7001"))] {
            let refused = args(grpc, admin, false).resolve().unwrap_err().to_string();
            assert!(refused.contains("plaintext") && refused.contains("--allow-plaintext-admin"), "{refused}");
            let config = args(grpc, admin, true).resolve().expect("the override allows it");
            let listen = config.admin_addr.unwrap_or(config.grpc_addr);
            assert!(!listen.ip().is_loopback());
        }
        // Ingest may face the network while the admin API stays on loopback.
        let config = args("0.0.0.0:7000", Some("127.0.0.1:7001"), false).resolve().unwrap();
        assert!(config.admin_addr.unwrap().ip().is_loopback());
        assert!(args("127.0.0.1:7000", None, false).resolve().is_ok());
    }

    #[test]
    fn an_empty_admin_token_setting_is_refused() {
        let mut empty = args("127.0.0.1:7000", None, false);
        empty.admin_token = Some(String::new());
        assert!(empty.resolve().unwrap_err().to_string().contains("must not be empty"));
    }
}

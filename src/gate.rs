//! `tally gate`: the paying reverse proxy as its own process, in front of an
//! origin, asking a remote Tally facilitator for every verdict.
//!
//! Inside `tally serve` the same gateway runs with `--gate PRICES.toml`,
//! calling the engine's facilitator in process (`crate::serve`). Either way
//! the price list is `tally_gate::config`'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tally_gate::{FacilitatorLink, Gate, GateConfig, Overrides};
use tally_ingest::server::tls::{TlsFiles, TlsIdentity};

#[derive(clap::Args, Debug)]
pub struct GateArgs {
    /// The price list (TOML): routes, prices, free paths, payer rules, limits.
    #[arg(long, env = "TALLY_GATE_PRICES")]
    pub prices: PathBuf,
    /// The origin the gateway stands in front of, e.g. http://127.0.0.1:8080 (overrides `upstream`).
    #[arg(long, env = "TALLY_GATE_UPSTREAM")]
    pub upstream: Option<String>,
    /// Where the gateway listens (overrides `listen`; default 127.0.0.1:8403).
    #[arg(long, env = "TALLY_GATE_LISTEN")]
    pub listen: Option<String>,
    /// The Tally facilitator's base URL (overrides `facilitator`; default http://127.0.0.1:8402).
    #[arg(long, env = "TALLY_GATE_FACILITATOR")]
    pub facilitator: Option<String>,
    /// The Tally network id (overrides `network`; must be the facilitator's).
    #[arg(long, env = "TALLY_NETWORK")]
    pub network: Option<String>,
    /// Prometheus metrics listen address; "off" disables it.
    #[arg(long, env = "TALLY_GATE_METRICS_ADDR", default_value = "127.0.0.1:9465")]
    pub metrics_addr: String,
    /// TLS certificate chain (PEM) for the gateway's listener; needs `--tls-key`.
    #[arg(long, env = "TALLY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "TALLY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Once listening, write `{"gate_addr":…,"metrics_addr":…,"pid":…}` here.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

/// The facilitator's default address (`tally serve --http-addr`'s default).
const FACILITATOR_DEFAULT: &str = "http://127.0.0.1:8402";

pub async fn run(args: GateArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        upstream: args.upstream,
        network: args.network,
        facilitator: args.facilitator,
        listen: args.listen,
    };
    let config = GateConfig::load(&args.prices, &overrides)?;
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert_file), Some(key_file)) => Some(TlsIdentity::load(&TlsFiles { cert_file, key_file })?),
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both --tls-cert and --tls-key"),
    };
    let listen: SocketAddr = config.listen.parse().with_context(|| format!("gateway address {:?}", config.listen))?;
    let facilitator_url = config.facilitator.clone().unwrap_or_else(|| FACILITATOR_DEFAULT.to_owned());
    let link = FacilitatorLink::remote(
        &facilitator_url,
        config.limits.facilitator_timeout,
        config.limits.origin_connections_idle_max,
    )
    .map_err(|e| anyhow::anyhow!("facilitator client: {e}"))?;
    check_facilitator(&facilitator_url, &config).await?;
    let metrics_addr = match args.metrics_addr.as_str() {
        "off" => None,
        addr => Some(crate::serve::start_metrics(addr.parse().with_context(|| format!("metrics address {addr:?}"))?)?),
    };
    tally_gate::metrics::describe();
    let gate = Gate::new(config, link);
    let running = tally_gate::serve(&gate, listen, tls).await.map_err(|e| anyhow::anyhow!(e))?;
    tracing::info!(gate = %running.local_addr, upstream = %gate.config().upstream, facilitator = %facilitator_url,
        routes = gate.config().routes.len(), "tally gate is serving");
    if let Some(path) = &args.ready_file {
        let ready = serde_json::json!({
            "gate_addr": running.local_addr.to_string(),
            "metrics_addr": metrics_addr.map(|a| a.to_string()),
            "pid": std::process::id(),
        });
        crate::serve::write_ready_file(path, &ready)?;
    }
    crate::serve::wait_for_signal().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), running.stop()).await;
    Ok(())
}

/// Refuses to start in front of a facilitator of another network: every
/// payment would be refused. An unreachable facilitator is only a warning
/// (it may start after the gateway; until then nothing is served unpaid).
async fn check_facilitator(url: &str, config: &GateConfig) -> anyhow::Result<()> {
    let supported = async {
        let http = reqwest::Client::builder().timeout(config.limits.facilitator_timeout).build().ok()?;
        let answer = http.get(format!("{}/supported", url.trim_end_matches('/'))).send().await.ok()?;
        answer.json::<tally_x402::types::SupportedResponse>().await.ok()
    };
    match supported.await {
        None => tracing::warn!(%url, "the facilitator did not answer /supported; paid requests fail until it does"),
        Some(supported) => {
            let networks: Vec<&str> = supported.kinds.iter().map(|k| k.network.as_str()).collect();
            anyhow::ensure!(
                networks.contains(&config.network.as_str()),
                "the facilitator at {url} settles {networks:?}, not the gateway's network {:?} (set `network`)",
                config.network
            );
            // A price read with another scale than the ledger's is off by powers of ten.
            let kind = supported.kinds.iter().find(|k| k.network == config.network);
            let assets = kind.and_then(|k| k.extra.as_ref()).and_then(|e| e.get("assets"));
            for (code, scale) in &config.assets {
                match assets.and_then(|a| a.get(code)).and_then(serde_json::Value::as_u64) {
                    Some(registered) => anyhow::ensure!(
                        registered == u64::from(*scale),
                        "the price list gives {code} {scale} decimals; the facilitator's ledger has {registered}"
                    ),
                    None => tracing::warn!(%code, "the facilitator does not list this asset (yet)"),
                }
            }
        }
    }
    Ok(())
}

/// Starts the gateway inside `tally serve`, on the engine's own facilitator.
pub async fn serve_in_process(
    prices: &std::path::Path,
    network: &str,
    facilitator: Arc<tally_x402::Facilitator>,
    ledger: &tally_ledger::Ledger,
    tls: Option<TlsIdentity>,
) -> anyhow::Result<tally_gate::RunningGate> {
    let overrides = Overrides { network: Some(network.to_owned()), ..Overrides::default() };
    let config = GateConfig::load(prices, &overrides)?;
    // A price parsed with another scale than the ledger's would be off by powers of ten.
    for (code, scale) in &config.assets {
        let registered = ledger.asset(code).map_err(|e| anyhow::anyhow!("reading asset {code}: {e}"))?;
        match registered {
            Some(asset) => anyhow::ensure!(
                asset.scale == *scale,
                "the price list gives {code} {scale} decimals; the ledger registered it with {}",
                asset.scale
            ),
            None => tracing::warn!(%code, "the price list prices an asset the ledger has not registered yet"),
        }
    }
    let listen: SocketAddr = config.listen.parse().with_context(|| format!("gateway address {:?}", config.listen))?;
    tally_gate::metrics::describe();
    let gate = Gate::new(config, FacilitatorLink::InProcess(facilitator));
    tally_gate::serve(&gate, listen, tls).await.map_err(|e| anyhow::anyhow!(e))
}

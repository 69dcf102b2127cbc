//! `tally serve`: open the engine, serve gRPC and metrics until a signal.

use std::time::Duration;

use anyhow::Context;
use std::sync::Arc;

use tally_ingest::{AdminAuth, Engine, EngineConfig, ExtraServices, GrpcLimits};
use tally_settler::grpc::{SettlementServer, SettlementService};
use tally_settler::{Schedule, SettleRequest, Settler};
use tally_x402::{Facilitator, FacilitatorConfig, serve_http};

use crate::config::{ServeArgs, ServeConfig};

/// How long in-flight calls may run after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let engine = Arc::new(open_engine(&config)?);
    let result = serve_engine(&config, &engine).await;
    // Whether serving ended by a signal or failed to start (a port in use),
    // the engine stops off the async threads: its writer joins a thread.
    if let Ok(engine) = Arc::try_unwrap(engine) {
        tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    }
    result
}

async fn serve_engine(config: &ServeConfig, engine: &Arc<Engine>) -> anyhow::Result<()> {
    let limits = grpc_limits(config);
    let metrics_addr = match config.metrics_addr {
        Some(addr) => Some(start_metrics(addr)?),
        None => None,
    };
    let settler = Settler::new(
        engine.ledger.clone(),
        engine.pipeline.writer().clone(),
        config.settlement.clone(),
        &config.data_dir,
    )
    .await
    .context("starting settlement")?;
    let extra = settlement_services(engine, &settler, &config.admin_token.0);
    let server = tally_ingest::serve(engine, config.grpc_addr, &config.admin_token.0, &limits, extra)
        .await
        .map_err(|e| anyhow::anyhow!("starting gRPC on {}: {e}", config.grpc_addr))?;
    let http = match config.http_addr {
        Some(addr) => {
            let facilitator = Facilitator::new(
                FacilitatorConfig::new(&config.network),
                engine.pipeline.clone(),
                engine.ledger.clone(),
            );
            Some(serve_http(&facilitator, addr).await.with_context(|| format!("binding HTTP on {addr}"))?)
        }
        None => None,
    };
    // An epoch left mid-settlement by a crash is finished now, then the
    // schedule (if any) takes over.
    let background = tokio::spawn(settlement_loop(settler.clone(), config.settlement.schedule.clone()));
    tracing::info!(
        grpc = %server.local_addr,
        metrics = ?metrics_addr,
        data_dir = %config.data_dir.display(),
        network = %config.network,
        "tally is serving"
    );
    if let Some(path) = &config.ready_file {
        let ready = serde_json::json!({
            "grpc_addr": server.local_addr.to_string(),
            "metrics_addr": metrics_addr.map(|a| a.to_string()),
            "http_addr": http.as_ref().map(|h| h.local_addr.to_string()),
            "pid": std::process::id(),
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, ready.to_string())?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    background.abort();
    if let Some(http) = http {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, http.stop()).await;
    }
    server.stop_within(SHUTDOWN_GRACE).await?;
    Ok(())
}

/// The settlement gRPC service, behind the same admin token as `Admin`.
pub fn settlement_services(engine: &Engine, settler: &Arc<Settler>, admin_token: &str) -> ExtraServices {
    let service = SettlementService::new(settler.clone(), engine.ledger.clone(), engine.pipeline.writer().clone());
    let mut extra = ExtraServices::default();
    extra.routes.add_service(SettlementServer::with_interceptor(service, AdminAuth::new(admin_token)));
    extra.descriptor_sets.push(tally_settler::grpc::proto::FILE_DESCRIPTOR_SET);
    extra
}

/// Resumes unfinished settlements at startup, then settles on `schedule`.
async fn settlement_loop(settler: Arc<Settler>, schedule: Option<String>) {
    let quiet = |_| {};
    match settler.settle(SettleRequest { seal: false }, &quiet).await {
        Ok(reports) if !reports.is_empty() => {
            tracing::info!(epochs = reports.len(), "resumed unfinished settlements at startup")
        }
        Ok(_) => {}
        Err(error) => tracing::error!(%error, "resuming settlement at startup failed; `tally settle --resume` retries"),
    }
    let Some(schedule) = schedule.and_then(|s| Schedule::parse(&s).ok()) else { return };
    loop {
        let now_ms = tally_ledger::unix_now_ms();
        let next_ms = schedule.next_after_ms(now_ms);
        tracing::info!(in_s = (next_ms - now_ms) / 1000, "next scheduled settlement");
        tokio::time::sleep(Duration::from_millis(next_ms - now_ms)).await;
        match settler.settle(SettleRequest { seal: true }, &quiet).await {
            Ok(reports) => tracing::info!(epochs = reports.len(), "scheduled settlement done"),
            Err(error) => tracing::error!(%error, "scheduled settlement failed; it resumes at the next run"),
        }
    }
}

pub fn open_engine(config: &ServeConfig) -> anyhow::Result<Engine> {
    let mut engine_config = EngineConfig::new(config.data_dir.clone(), &config.network);
    let l = &config.limits;
    let p = &mut engine_config.pipeline;
    p.batch_ious_max = l.batch_ious_max.unwrap_or(p.batch_ious_max);
    p.verify_threads = l.verify_threads.unwrap_or(p.verify_threads);
    p.validity.clock_skew_max_s = l.clock_skew_max_s.unwrap_or(p.validity.clock_skew_max_s);
    p.validity.validity_max_s = l.validity_max_s.unwrap_or(p.validity.validity_max_s);
    engine_config.writer_queue_depth_max = l.writer_queue_depth_max.unwrap_or(engine_config.writer_queue_depth_max);
    engine_config.writer_group_ious_max = l.writer_group_ious_max.unwrap_or(engine_config.writer_group_ious_max);
    Engine::open(engine_config).with_context(|| format!("opening the ledger in {}", config.data_dir.display()))
}

fn grpc_limits(config: &ServeConfig) -> GrpcLimits {
    let defaults = GrpcLimits::default();
    let l = &config.limits;
    GrpcLimits {
        message_bytes_max: l.message_bytes_max.unwrap_or(defaults.message_bytes_max),
        streams_per_connection_max: l.streams_per_connection_max.unwrap_or(defaults.streams_per_connection_max),
        stream_batches_inflight_max: l.stream_batches_inflight_max.unwrap_or(defaults.stream_batches_inflight_max),
        requests_per_connection_max: defaults.requests_per_connection_max,
        requests_max: l.requests_max.unwrap_or(defaults.requests_max),
    }
}

/// Starts the Prometheus exporter on `addr` and describes Tally's metrics.
pub fn start_metrics(addr: std::net::SocketAddr) -> anyhow::Result<std::net::SocketAddr> {
    // Bind first so port 0 resolves to a real port we can report.
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    drop(listener);
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(bound)
        .set_buckets(&[
            0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 16.0, 64.0, 256.0,
            1024.0, 4096.0, 16384.0,
        ])
        .context("metrics buckets")?
        .install()
        .context("starting the Prometheus exporter")?;
    metrics::describe_counter!("tally_ious_total", "IOUs answered, by outcome");
    metrics::describe_histogram!("tally_batch_ious", "IOUs per submitted batch");
    metrics::describe_histogram!("tally_commit_seconds", "Duration of one group commit, including fsync");
    metrics::describe_histogram!("tally_commit_group_ious", "IOUs accepted per group commit");
    metrics::describe_counter!("tally_commit_groups_total", "Group commits written");
    metrics::describe_counter!("tally_commit_failures_total", "Group commits that failed and were not acknowledged");
    Ok(bound)
}

async fn wait_for_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

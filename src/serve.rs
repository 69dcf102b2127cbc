//! `tally serve`: open the engine, serve gRPC and metrics until a signal.
//!
//! Listeners: public gRPC (ingest, query, health, reflection), the admin
//! side (Admin, Settlement) on the same listener or, with `--admin-addr`,
//! on its own; the x402 facilitator over HTTP on the hardened listener of
//! `tally_ingest::server::http`; Prometheus metrics. With `[tls]` every
//! gRPC and HTTP listener speaks TLS only (metrics stay plaintext: bind them
//! to loopback).

use std::time::Duration;

use anyhow::Context;
use std::sync::Arc;

use tally_ingest::server::http::{HttpLimits, HttpOptions};
use tally_ingest::server::tls::TlsIdentity;
use tally_ingest::server::{GrpcListeners, serve_listeners};
use tally_ingest::{AdminAuth, Engine, EngineConfig, ExtraServices, GrpcLimits};
use tally_settler::grpc::{SettlementServer, SettlementService};
use tally_settler::{Schedule, SettleRequest, Settler};
use tally_x402::facilitator::serve_http_with;
use tally_x402::{Facilitator, FacilitatorConfig};

use crate::config::{ServeArgs, ServeConfig};

/// How long in-flight calls may run after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    // Checked before the ledger opens: a bad certificate or limit is a
    // configuration error, not a half-started engine.
    let tls = config.tls.as_ref().map(TlsIdentity::load).transpose()?;
    http_limits(&config).check().map_err(|e| anyhow::anyhow!("[limits]: {e}"))?;
    let engine = Arc::new(open_engine(&config)?);
    // Every start is journaled, with whether signatures are verified: IOUs
    // accepted with verification off are reported by `tally ledger verify`.
    let notice = tally_ledger::Notice::EngineStarted {
        verify_signatures: !config.skip_signature_verification,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    engine
        .pipeline
        .writer()
        .admin(tally_core::Actor::Engine, tally_ledger::AdminCommand::RecordNotice(notice))
        .await
        .map_err(|e| anyhow::anyhow!("recording the engine's start: {e}"))?;
    if config.verify_on_start
        && let Err(error) = verify_before_serving(&engine.ledger)
    {
        if let Ok(engine) = Arc::try_unwrap(engine) {
            tokio::task::spawn_blocking(move || engine.shutdown()).await?;
        }
        return Err(error);
    }
    let result = serve_engine(&config, &engine, tls).await;
    // Whether serving ended by a signal or failed to start (a port in use),
    // the engine stops off the async threads: its writer joins a thread.
    if let Ok(engine) = Arc::try_unwrap(engine) {
        tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    }
    result
}

async fn serve_engine(config: &ServeConfig, engine: &Arc<Engine>, tls: Option<TlsIdentity>) -> anyhow::Result<()> {
    let limits = grpc_limits(config);
    let metrics_addr = match config.metrics_addr {
        Some(addr) => Some(start_metrics(addr)?),
        None => None,
    };
    if metrics_addr.is_some() {
        tokio::spawn(report_memory(engine.ledger.clone()));
    }
    let settler = Settler::new(
        engine.ledger.clone(),
        engine.pipeline.writer().clone(),
        config.settlement.clone(),
        &config.data_dir,
    )
    .await
    .context("starting settlement")?;
    let extra = settlement_services(engine, &settler, &config.admin_token.0)?;
    let listeners = GrpcListeners { addr: config.grpc_addr, admin_addr: config.admin_addr, tls: tls.clone() };
    let servers = serve_listeners(engine, &listeners, &config.admin_token.0, &limits, extra).await.map_err(|e| {
        let admin = config.admin_addr.map(|a| format!(" / admin {a}")).unwrap_or_default();
        anyhow::anyhow!("starting gRPC on {}{admin}: {e}", config.grpc_addr)
    })?;
    let admin_addr = servers.admin.as_ref().map(|a| a.local_addr);
    // One facilitator for the HTTP API and the in-process gateway: one pipeline, one writer.
    let facilitator =
        Facilitator::new(FacilitatorConfig::new(&config.network), engine.pipeline.clone(), engine.ledger.clone());
    let http = match config.http_addr {
        Some(addr) => {
            let options = HttpOptions { limits: http_limits(config), tls: tls.clone(), http2: false };
            Some(
                serve_http_with(&facilitator, addr, options)
                    .await
                    .with_context(|| format!("binding HTTP on {addr}"))?,
            )
        }
        None => None,
    };
    let gate = match &config.gate {
        Some(prices) => Some(
            crate::gate::serve_in_process(prices, &config.network, facilitator.clone(), &engine.ledger, tls)
                .await
                .with_context(|| format!("starting the gateway with {}", prices.display()))?,
        ),
        None => None,
    };
    // An epoch left mid-settlement by a crash is finished now, then the
    // schedule (if any) takes over.
    let background = tokio::spawn(settlement_loop(settler.clone(), config.settlement.schedule.clone()));
    tracing::info!(
        grpc = %servers.public.local_addr,
        admin = ?admin_addr,
        tls = config.tls.is_some(),
        metrics = ?metrics_addr,
        data_dir = %config.data_dir.display(),
        network = %config.network,
        "tally is serving"
    );
    if let Some(path) = &config.ready_file {
        let ready = serde_json::json!({
            "grpc_addr": servers.public.local_addr.to_string(),
            "admin_addr": admin_addr.map(|a| a.to_string()),
            "tls": config.tls.is_some(),
            "metrics_addr": metrics_addr.map(|a| a.to_string()),
            "http_addr": http.as_ref().map(|h| h.local_addr.to_string()),
            "gate_addr": gate.as_ref().map(|g| g.local_addr.to_string()),
            "pid": std::process::id(),
        });
        write_ready_file(path, &ready)?;
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    background.abort();
    if let Some(gate) = gate {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, gate.stop()).await;
    }
    if let Some(http) = http {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, http.stop()).await;
    }
    servers.stop_within(SHUTDOWN_GRACE).await?;
    Ok(())
}

/// The settlement gRPC service, behind the same admin token as `Admin`.
pub fn settlement_services(
    engine: &Engine,
    settler: &Arc<Settler>,
    admin_token: &str,
) -> anyhow::Result<ExtraServices> {
    let service = SettlementService::new(settler.clone(), engine.ledger.clone(), engine.pipeline.writer().clone());
    let mut extra = ExtraServices::default();
    extra.routes.add_service(SettlementServer::with_interceptor(service, AdminAuth::new(admin_token)?));
    extra.descriptor_sets.push(tally_settler::grpc::proto::FILE_DESCRIPTOR_SET);
    Ok(extra)
}

/// Resumes unfinished settlements at startup, then settles on `schedule`.
async fn settlement_loop(settler: Arc<Settler>, schedule: Option<String>) {
    let quiet = |_| {};
    match settler.settle(SettleRequest::new(false, "startup resume"), &quiet).await {
        Ok(reports) if !reports.is_empty() => {
            tracing::info!(epochs = reports.len(), "resumed unfinished settlements at startup")
        }
        Ok(_) => {}
        Err(error) => tracing::error!(%error, "resuming settlement at startup failed; `tally settle --resume` retries"),
    }
    let Some((text, schedule)) = schedule.and_then(|s| Schedule::parse(&s).ok().map(|parsed| (s, parsed))) else {
        return;
    };
    let trigger = format!("schedule {text}");
    loop {
        let now_ms = tally_ledger::unix_now_ms();
        let next_ms = schedule.next_after_ms(now_ms);
        tracing::info!(in_s = (next_ms - now_ms) / 1000, "next scheduled settlement");
        tokio::time::sleep(Duration::from_millis(next_ms - now_ms)).await;
        match settler.settle(SettleRequest::new(true, &trigger), &quiet).await {
            Ok(reports) => tracing::info!(epochs = reports.len(), "scheduled settlement done"),
            Err(error) => tracing::error!(%error, "scheduled settlement failed; it resumes at the next run"),
        }
    }
}

/// `--verify-on-start`: the audit `tally ledger verify` runs (signatures
/// aside), before any request is served. Reading every record and aggregate
/// makes RocksDB check every block's checksum, so damage anywhere refuses to
/// start instead of surfacing on the first request that reads it.
fn verify_before_serving(ledger: &tally_ledger::Ledger) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let options = tally_ledger::AuditOptions { verify_signatures: false };
    let report = tally_ledger::audit(ledger, options)
        .context("verify on start: reading the ledger failed (RocksDB detected damaged data)")?;
    if !report.is_clean() {
        anyhow::bail!(
            "verify on start: the ledger has {} problems, the first: {}; run `tally ledger verify`",
            report.problems_total,
            report.problems.first().map_or("(none listed)", String::as_str)
        );
    }
    tracing::info!(records = report.records, elapsed_ms = started.elapsed().as_millis() as u64, "ledger verified");
    Ok(())
}

/// Says, once at startup, whether this is a test build with failpoints, and
/// warns when the environment tries to arm failpoints a build does not have
/// (so a fault test run against a release binary never passes vacuously).
fn report_failpoints() {
    let compiled_in = tally_settler::failpoint::COMPILED_IN || tally_ledger::failpoint::COMPILED_IN;
    let armed =
        ["TALLY_FAILPOINTS", tally_ledger::failpoint::ENV_VAR].into_iter().filter(|v| std::env::var_os(v).is_some());
    if compiled_in {
        tracing::warn!("this is a test build: failpoints are compiled in (not for production)");
    } else {
        for variable in armed {
            tracing::warn!(variable, "ignored: this build has no failpoints (they exist only in test builds)");
        }
    }
}

pub fn open_engine(config: &ServeConfig) -> anyhow::Result<Engine> {
    report_failpoints();
    let mut engine_config = EngineConfig::new(config.data_dir.clone(), &config.network);
    let l = &config.limits;
    let p = &mut engine_config.pipeline;
    p.batch_ious_max = l.batch_ious_max.unwrap_or(p.batch_ious_max);
    p.verify_threads = l.verify_threads.unwrap_or(p.verify_threads);
    p.validity.clock_skew_max_s = l.clock_skew_max_s.unwrap_or(p.validity.clock_skew_max_s);
    p.validity.validity_max_s = l.validity_max_s.unwrap_or(p.validity.validity_max_s);
    if config.skip_signature_verification {
        tracing::warn!("signature verification is OFF (--unsafe-skip-signature-verification): benchmarks only");
        p.verify_signatures = false;
    }
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

/// The facilitator listener's bounds: `[limits]` over the defaults.
fn http_limits(config: &ServeConfig) -> HttpLimits {
    let defaults = HttpLimits::default();
    let l = &config.limits;
    let ms = |value: Option<u64>, default: Duration| value.map(Duration::from_millis).unwrap_or(default);
    HttpLimits {
        header_read_timeout: ms(l.http_header_read_timeout_ms, defaults.header_read_timeout),
        request_timeout: ms(l.http_request_timeout_ms, defaults.request_timeout),
        connections_max: l.http_connections_max.unwrap_or(defaults.connections_max),
        header_bytes_max: l.http_header_bytes_max.unwrap_or(defaults.header_bytes_max),
        headers_max: l.http_headers_max.unwrap_or(defaults.headers_max),
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
    metrics::describe_histogram!(
        tally_ledger::writer::STAGE_SECONDS,
        "Where a batch's time goes, by stage: verify_wait, verify, writer_queue, decide, write, writer, batch"
    );
    metrics::describe_counter!("tally_commit_groups_total", "Group commits written");
    metrics::describe_counter!("tally_commit_failures_total", "Group commits that failed and were not acknowledged");
    metrics::describe_counter!(
        "tally_clock_jumps_total",
        "Times the wall clock moved more than 1 s against the monotonic clock between two group commits, by direction"
    );
    metrics::describe_gauge!(
        "tally_clock_behind_time_mark_ms",
        "How far the wall clock is behind the ledger's time mark (the latest time it recorded); time is judged by the mark"
    );
    metrics::describe_gauge!("tally_http_connections_open", "Facilitator HTTP connections being served");
    metrics::describe_gauge!(
        "tally_storage_memory_bytes",
        "RocksDB memory by kind: memtables, table readers (index and filter blocks), block cache"
    );
    metrics::describe_gauge!(
        "tally_heap_allocated_bytes",
        "Heap memory in use by Rust and RocksDB's C++ (jemalloc serves both)"
    );
    metrics::describe_gauge!(
        "tally_heap_resident_bytes",
        "Physical memory the heap holds (an upper bound): in use, freed pages not yet returned to the OS, metadata"
    );
    metrics::describe_counter!(
        "tally_http_header_timeouts_total",
        "Facilitator connections closed for not sending a request head (or TLS handshake) in time"
    );
    metrics::describe_counter!(
        "tally_http_request_timeouts_total",
        "Facilitator requests answered 503 for not completing in time"
    );
    Ok(bound)
}

/// Publishes RocksDB's memory by kind, and the heap's size, every second,
/// for as long as the server runs: what an operator watches to see that
/// memory is bounded.
async fn report_memory(ledger: tally_ledger::Ledger) {
    const PERIOD: std::time::Duration = std::time::Duration::from_secs(1);
    let mut ticker = tokio::time::interval(PERIOD);
    loop {
        ticker.tick().await;
        let reader = ledger.clone();
        // Both reads take locks (RocksDB's, jemalloc's arenas'): off the async workers.
        let Ok((storage, heap)) =
            tokio::task::spawn_blocking(move || (reader.memory_usage(), crate::heap::usage())).await
        else {
            continue;
        };
        if let Ok(usage) = storage {
            for (kind, bytes) in [
                ("memtables", usage.memtables_bytes),
                ("table_readers", usage.table_readers_bytes),
                ("block_cache", usage.block_cache_bytes),
            ] {
                metrics::gauge!("tally_storage_memory_bytes", "kind" => kind).set(bytes as f64);
            }
        }
        if let Ok(heap) = heap {
            metrics::gauge!("tally_heap_allocated_bytes").set(heap.allocated_bytes as f64);
            metrics::gauge!("tally_heap_resident_bytes").set(heap.resident_bytes as f64);
        }
    }
}

/// Writes the ready file atomically (a reader never sees half of it).
pub fn write_ready_file(path: &std::path::Path, ready: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, ready.to_string())?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

pub async fn wait_for_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

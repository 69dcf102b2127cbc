//! Assembling and serving an engine.
//!
//! An [`Engine`] is the ledger, its writer thread and the pipeline in front
//! of it: everything that holds state. [`serve`] puts the gRPC services,
//! health and reflection on one TCP listener in front of an engine and
//! returns once the listener is bound, reporting the real address (so tests
//! and tools can bind port 0). [`serve_listeners`] can put the admin-side
//! services on a second, separate listener and serve both over TLS
//! ([`tls`]); [`http`] is the hardened HTTP listener the x402 facilitator
//! is served on.

pub mod http;
pub mod request_limit;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tally_ledger::{Clock, Ledger, LedgerError, LedgerOptions, Writer, WriterConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::grpc::admin::AdminService;
use crate::grpc::auth::{AdminAuth, QueryAuth};
use crate::grpc::ingest::IngestService;
use crate::grpc::query::QueryService;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::proto::admin_server::AdminServer;
use crate::proto::ingest_server::IngestServer;
use crate::proto::query_server::QueryServer;
use tls::TlsIdentity;

/// Everything needed to open an engine.
#[derive(Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub pipeline: PipelineConfig,
    pub writer_queue_depth_max: usize,
    pub writer_group_ious_max: usize,
    pub nonce_retention_margin_s: u64,
    pub clock: Clock,
}

impl EngineConfig {
    pub fn new(data_dir: PathBuf, network: &str) -> EngineConfig {
        let writer = WriterConfig::default();
        EngineConfig {
            data_dir,
            pipeline: PipelineConfig::new(network),
            writer_queue_depth_max: writer.queue_depth_max,
            writer_group_ious_max: writer.group_ious_max,
            nonce_retention_margin_s: LedgerOptions::default().nonce_retention_margin_s,
            clock: tally_ledger::system_clock(),
        }
    }
}

/// The stateful core: ledger, writer, pipeline.
pub struct Engine {
    pub ledger: Ledger,
    pub pipeline: Arc<Pipeline>,
    writer: Writer,
}

impl Engine {
    /// Opens the ledger (recovering from its WAL after a crash), rebuilds the
    /// writer's state from disk, and starts the verifier threads.
    pub fn open(config: EngineConfig) -> Result<Engine, LedgerError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| LedgerError::Unavailable(format!("cannot create {}: {e}", config.data_dir.display())))?;
        let ledger = Ledger::open(
            &config.data_dir,
            LedgerOptions {
                nonce_retention_margin_s: config.nonce_retention_margin_s,
                clock: config.clock.clone(),
                read_only: false,
            },
        )?;
        let writer = Writer::start(
            ledger.clone(),
            WriterConfig {
                queue_depth_max: config.writer_queue_depth_max,
                group_ious_max: config.writer_group_ious_max,
                clock: config.clock.clone(),
                validity: config.pipeline.validity,
            },
        )?;
        let pipeline = Arc::new(Pipeline::new(config.pipeline, writer.handle()));
        Ok(Engine { ledger, pipeline, writer })
    }

    /// Stops the verifier threads and the writer (after queued commands),
    /// then flushes memtables so the next start replays no WAL.
    pub fn shutdown(self) {
        self.pipeline.shutdown();
        self.writer.shutdown();
        if let Err(error) = self.ledger.flush() {
            tracing::warn!(%error, "flush on shutdown failed; the WAL still holds everything");
        }
    }
}

/// Transport limits of the gRPC listener.
#[derive(Clone, Debug)]
pub struct GrpcLimits {
    /// Largest decoded request message. 4,096 IOUs of ~300 bytes fit in 2 MiB.
    pub message_bytes_max: usize,
    /// HTTP/2 streams one connection may open at once.
    pub streams_per_connection_max: u32,
    /// Batches of one `StreamBatches` stream inside the pipeline at once.
    pub stream_batches_inflight_max: usize,
    /// Requests being served at once per connection.
    pub requests_per_connection_max: usize,
    /// Requests (a stream counts as one for its whole life) being served at
    /// once across all connections; more wait for a slot. With the limits
    /// above this bounds decoded request memory at
    /// `requests_max × (stream_batches_inflight_max + 1) × message_bytes_max`.
    pub requests_max: usize,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        GrpcLimits {
            message_bytes_max: 8 * 1024 * 1024,
            streams_per_connection_max: 256,
            stream_batches_inflight_max: 8,
            requests_per_connection_max: 256,
            requests_max: 256,
        }
    }
}

/// A running gRPC listener.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight calls finish, and waits.
    pub async fn stop(self) -> Result<(), tonic::transport::Error> {
        let _ = self.shutdown.send(());
        self.task.await.unwrap_or(Ok(()))
    }

    /// Like [`RunningServer::stop`], but gives in-flight calls at most
    /// `grace`: a client that keeps a stream open cannot hold shutdown
    /// hostage. Calls cut off here lose only their answers, never data:
    /// whatever the writer committed stays committed, and a client's retry
    /// is answered as a duplicate.
    pub async fn stop_within(mut self, grace: std::time::Duration) -> Result<(), tonic::transport::Error> {
        let _ = self.shutdown.send(());
        match tokio::time::timeout(grace, &mut self.task).await {
            Ok(result) => result.unwrap_or(Ok(())),
            Err(_) => {
                tracing::warn!(?grace, "in-flight calls outlived the grace period; closing them");
                self.task.abort();
                Ok(())
            }
        }
    }
}

/// Services mounted beside ingest's on the same listener (the settlement
/// service, assembled by the binary, which sees both crates).
#[derive(Default)]
pub struct ExtraServices {
    pub routes: tonic::service::RoutesBuilder,
    /// Their encoded descriptor sets, for reflection.
    pub descriptor_sets: Vec<&'static [u8]>,
}

/// Where and how the gRPC services listen.
#[derive(Clone, Debug)]
pub struct GrpcListeners {
    /// Ingest, query, health and reflection; also admin and the extra
    /// services when `admin_addr` is `None`.
    pub addr: SocketAddr,
    /// When set, `Admin` and the extra (admin-side) services are served only
    /// here, and the public listener answers them `UNIMPLEMENTED`: the admin
    /// API can then sit on a loopback or private address that the internet
    /// cannot reach at all, with the token as a second lock.
    pub admin_addr: Option<SocketAddr>,
    /// TLS for both listeners, if configured.
    pub tls: Option<TlsIdentity>,
}

/// The running gRPC listeners.
pub struct RunningServers {
    pub public: RunningServer,
    pub admin: Option<RunningServer>,
}

impl RunningServers {
    /// [`RunningServer::stop_within`] for each listener.
    pub async fn stop_within(self, grace: std::time::Duration) -> Result<(), tonic::transport::Error> {
        let admin = match self.admin {
            Some(admin) => admin.stop_within(grace).await,
            None => Ok(()),
        };
        self.public.stop_within(grace).await?;
        admin
    }
}

/// Binds `addr` and serves ingest, query, admin (behind `admin_token`),
/// health, reflection and any `extra` services for `engine`, in plaintext,
/// on one listener. [`serve_listeners`] separates admin and adds TLS.
pub async fn serve(
    engine: &Engine,
    addr: SocketAddr,
    admin_token: &str,
    limits: &GrpcLimits,
    extra: ExtraServices,
) -> Result<RunningServer, Box<dyn std::error::Error + Send + Sync>> {
    let listeners = GrpcListeners { addr, admin_addr: None, tls: None };
    Ok(serve_listeners(engine, &listeners, admin_token, limits, extra).await?.public)
}

/// Binds the listeners of `listeners` and serves `engine` on them. The
/// `extra` services are admin-side (settlement): they go wherever admin goes.
pub async fn serve_listeners(
    engine: &Engine,
    listeners: &GrpcListeners,
    admin_token: &str,
    limits: &GrpcLimits,
    extra: ExtraServices,
) -> Result<RunningServers, Box<dyn std::error::Error + Send + Sync>> {
    // Bind everything before serving anything: a taken port fails startup
    // as a whole.
    let public_listener = TcpListener::bind(listeners.addr).await?;
    let admin_listener = match listeners.admin_addr {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };

    let ingest = IngestServer::new(IngestService::new(engine.pipeline.clone(), limits.stream_batches_inflight_max))
        .max_decoding_message_size(limits.message_bytes_max);
    let admin_auth = AdminAuth::new(admin_token)?;
    let query_auth = QueryAuth::new(admin_auth.clone(), engine.ledger.clone());
    let query = QueryServer::new(QueryService::new(engine.ledger.clone(), query_auth));
    let admin = AdminServer::with_interceptor(
        AdminService::new(engine.ledger.clone(), engine.pipeline.writer().clone()),
        admin_auth,
    );
    let tls = listeners.tls.as_ref();

    let Some(admin_listener) = admin_listener else {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<IngestServer<IngestService>>().await;
        health.set_serving::<QueryServer<QueryService>>().await;
        health.set_serving::<AdminServer<AdminService>>().await;
        // The empty name stands for the server as a whole.
        health.set_service_status("", ServingStatus::Serving).await;
        let mut routes = extra.routes;
        add_reflection(&mut routes, &extra.descriptor_sets, None)?;
        routes.add_service(health_service).add_service(ingest).add_service(query).add_service(admin);
        let public = spawn_listener(public_listener, routes, limits, tls, "gRPC")?;
        return Ok(RunningServers { public, admin: None });
    };

    // Public: ingest and query only. Reflection advertises only what is
    // served here.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<IngestServer<IngestService>>().await;
    health.set_serving::<QueryServer<QueryService>>().await;
    health.set_service_status("", ServingStatus::Serving).await;
    let public_names = [
        <IngestServer<IngestService> as tonic::server::NamedService>::NAME,
        <QueryServer<QueryService> as tonic::server::NamedService>::NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let mut public_routes = tonic::service::RoutesBuilder::default();
    add_reflection(&mut public_routes, &[], Some(&public_names))?;
    public_routes.add_service(health_service).add_service(ingest).add_service(query);
    let public = spawn_listener(public_listener, public_routes, limits, tls, "gRPC")?;

    // Admin: admin, the extra services, health and reflection.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AdminServer<AdminService>>().await;
    health.set_service_status("", ServingStatus::Serving).await;
    let mut admin_routes = extra.routes;
    add_reflection(&mut admin_routes, &extra.descriptor_sets, None)?;
    admin_routes.add_service(health_service).add_service(admin);
    let admin = spawn_listener(admin_listener, admin_routes, limits, tls, "admin gRPC")?;
    Ok(RunningServers { public, admin: Some(admin) })
}

/// Adds reflection (v1, and v1alpha, which grpcurl 1.8 needs) over Tally's
/// descriptors and `extra_sets` to `routes`, advertising only `names` when
/// given.
fn add_reflection(
    routes: &mut tonic::service::RoutesBuilder,
    extra_sets: &[&'static [u8]],
    names: Option<&[&str]>,
) -> Result<(), tonic_reflection::server::Error> {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for set in extra_sets {
            builder = builder.register_encoded_file_descriptor_set(set);
        }
        for name in names.unwrap_or_default() {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    routes.add_service(builder().build_v1()?).add_service(builder().build_v1alpha()?);
    Ok(())
}

/// Serves `routes` on `listener` with the transport limits and TLS.
fn spawn_listener(
    listener: TcpListener,
    routes: tonic::service::RoutesBuilder,
    limits: &GrpcLimits,
    tls: Option<&TlsIdentity>,
    what: &'static str,
) -> Result<RunningServer, Box<dyn std::error::Error + Send + Sync>> {
    let local_addr = listener.local_addr()?;
    let (shutdown, stopped) = oneshot::channel::<()>();
    // The builder's `tcp_nodelay` applies only to listeners tonic binds
    // itself; ours is bound by the caller (to report port 0's real port), so
    // set TCP_NODELAY on every accepted socket here. Without it, small
    // responses wait on Nagle and delayed ACKs: ~40 ms stalls.
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted
            && let Err(error) = stream.set_nodelay(true)
        {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
        accepted
    });
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.grpc())?;
    }
    let router = builder
        .layer(request_limit::RequestLimitLayer::new(limits.requests_max))
        .max_concurrent_streams(limits.streams_per_connection_max)
        .concurrency_limit_per_connection(limits.requests_per_connection_max)
        .add_routes(routes.routes());
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));
    tracing::info!(%local_addr, tls = tls.is_some(), "{what} listening");
    Ok(RunningServer { local_addr, shutdown, task })
}

//! Shared test helpers: real servers on 127.0.0.1:0, real RocksDB in
//! temporary directories, signed IOUs from fixed seeds.
#![allow(dead_code)]

pub mod chain;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use tally_core::Iou;
use tally_ingest::proto::admin_client::AdminClient;
use tally_ingest::proto::ingest_client::IngestClient;
use tally_ingest::proto::query_client::QueryClient;
use tally_ingest::proto::{self, *};
use tally_ingest::{Engine, EngineConfig, GrpcLimits, RunningServer};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const NETWORK: &str = "tally:test";
pub const TOKEN: &str = "test-admin-token-0123456789";

pub fn now_s() -> u64 {
    tally_ledger::unix_now_ms() / 1000
}

pub fn signer(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A signed IOU as the wire carries it.
pub fn signed_iou(key: &SigningKey, payee: &str, amount: u64, nonce: [u8; 16]) -> proto::Iou {
    tally_ingest::convert::iou_to_proto(&signed_domain_iou(key, payee, amount, nonce))
}

/// A USD IOU for `payee`'s article, valid from now for 10 minutes, signed by `key`.
pub fn signed_domain_iou(key: &SigningKey, payee: &str, amount: u64, nonce: [u8; 16]) -> tally_core::SignedIou {
    let now = now_s();
    let iou = Iou {
        network: NETWORK.into(),
        payer_key: key.verifying_key().to_bytes(),
        payee: payee.into(),
        asset: "USD".into(),
        amount,
        nonce,
        issued_at_s: now,
        expires_at_s: now + 600,
        resource: format!("https://{payee}/article"),
    };
    let signature = key.sign(&iou.signing_bytes()).to_bytes();
    tally_core::SignedIou { iou, signature }
}

pub fn signed_with(key: &SigningKey, iou: Iou) -> proto::Iou {
    let signature = key.sign(&iou.signing_bytes()).to_bytes();
    tally_ingest::convert::iou_to_proto(&tally_core::SignedIou { iou, signature })
}

pub fn nonce(tag: u64, n: u64) -> [u8; 16] {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&tag.to_be_bytes());
    nonce[8..].copy_from_slice(&n.to_be_bytes());
    nonce
}

pub type Admin = AdminClient<InterceptedService<Channel, TokenInterceptor>>;
/// A Query client; every query call needs a token (the admin token reads everything).
pub type Query = QueryClient<InterceptedService<Channel, TokenInterceptor>>;

/// A Query client on `channel` presenting `token`.
pub fn query_with(channel: Channel, token: &str) -> Query {
    QueryClient::with_interceptor(channel, TokenInterceptor(token.into()))
}

#[derive(Clone)]
pub struct TokenInterceptor(pub String);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {}", self.0).parse().expect("ASCII token");
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

pub async fn connect(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

pub struct Clients {
    pub ingest: IngestClient<Channel>,
    pub query: Query,
    pub admin: Admin,
}

pub async fn clients(addr: &str) -> Clients {
    let channel = connect(addr).await;
    Clients {
        ingest: IngestClient::new(channel.clone()),
        query: query_with(channel.clone(), TOKEN),
        admin: AdminClient::with_interceptor(channel, TokenInterceptor(TOKEN.into())),
    }
}

/// USD (scale 6), payers `crawler-1..=n` with keys `signer(1..=n)` and the
/// given limit, payees `site-a.example` and `site-b.example`.
pub async fn register_basics(admin: &mut Admin, payers: u8, limit: u128) {
    let usd = proto::Asset { code: "USD".into(), scale: 6, enabled: true };
    admin.upsert_asset(UpsertAssetRequest { asset: Some(usd) }).await.unwrap();
    for i in 1..=payers {
        admin
            .register_payer(RegisterPayerRequest {
                id: format!("crawler-{i}"),
                display_name: format!("Crawler {i}"),
                keys: vec![signer(i).verifying_key().to_bytes().to_vec()],
                credit_limits: vec![CreditLimit { asset: "USD".into(), limit: limit.to_string() }],
            })
            .await
            .unwrap();
    }
    for payee in ["site-a.example", "site-b.example"] {
        admin
            .register_payee(RegisterPayeeRequest {
                payee: Some(proto::Payee {
                    id: payee.into(),
                    display_name: payee.into(),
                    payout_destination: String::new(),
                    status: proto::PayeeStatus::Active as i32,
                }),
            })
            .await
            .unwrap();
    }
}

/// An engine and its gRPC server inside the test process.
pub struct InProcess {
    pub dir: tempfile::TempDir,
    pub engine: Option<Engine>,
    pub server: Option<RunningServer>,
    pub addr: String,
}

impl InProcess {
    pub async fn start() -> InProcess {
        Self::start_with_clock(tally_ledger::system_clock()).await
    }

    /// An engine whose pipeline and writer read time from `clock` (Unix ms),
    /// for tests where time matters.
    pub async fn start_with_clock(clock: tally_ledger::Clock) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path().join("ledger"), NETWORK);
        config.clock = clock;
        let engine = Engine::open(config).unwrap();
        let server = tally_ingest::serve(
            &engine,
            "127.0.0.1:0".parse().unwrap(),
            TOKEN,
            &GrpcLimits::default(),
            Default::default(),
        )
        .await
        .unwrap();
        let addr = server.local_addr.to_string();
        InProcess { dir, engine: Some(engine), server: Some(server), addr }
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.unwrap();
        }
        if let Some(engine) = self.engine.take() {
            tokio::task::spawn_blocking(move || engine.shutdown()).await.unwrap();
        }
    }
}

/// Polls `check` until it yields a value, at most `limit` long.
pub fn poll<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < limit, "condition not reached within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn tally_binary() -> &'static str {
    env!("CARGO_BIN_EXE_tally")
}

/// `tally serve` as a separate process, so it can be SIGKILLed.
pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
    pub metrics_addr: String,
    pub http_addr: String,
}

/// `tally serve` on `data_dir`, every listener on 127.0.0.1 port 0, writing
/// its addresses to `ready` (removed first): the test token, `warn` logging,
/// and none of the caller's environment that would change how it runs
/// (failpoints, an admin address, a TLS CA). Callers add what they test.
pub fn serve_command(data_dir: &Path, ready: &Path) -> Command {
    let _ = std::fs::remove_file(ready);
    let mut command = Command::new(tally_binary());
    command
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--network", NETWORK])
        .args(["--http-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--ready-file")
        .arg(ready)
        .env("TALLY_ADMIN_TOKEN", TOKEN)
        .env("TALLY_LOG", "warn")
        .env_remove("TALLY_FAILPOINTS")
        .env_remove(tally_ledger::failpoint::ENV_VAR)
        .env_remove("TALLY_ADMIN_ADDR")
        .env_remove("TALLY_TLS_CA");
    command
}

impl ServerProcess {
    pub fn start(data_dir: &Path) -> ServerProcess {
        ServerProcess::start_with(data_dir, None, &[])
    }

    /// Starts with a TOML config file and extra environment (failpoints).
    pub fn start_with(data_dir: &Path, config: Option<&Path>, env: &[(&str, &str)]) -> ServerProcess {
        let ready: PathBuf = data_dir.with_extension(format!("ready-{}", std::process::id()));
        let mut command = serve_command(data_dir, &ready);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tally serve");
        let text = poll(Duration::from_secs(60), || std::fs::read_to_string(&ready).ok());
        let ready: serde_json::Value = serde_json::from_str(&text).unwrap();
        let _ = std::fs::remove_file(data_dir.with_extension(format!("ready-{}", std::process::id())));
        ServerProcess {
            child,
            addr: ready["grpc_addr"].as_str().unwrap().to_owned(),
            metrics_addr: ready["metrics_addr"].as_str().unwrap_or_default().to_owned(),
            http_addr: ready["http_addr"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// Waits (bounded) for the process to exit on its own, e.g. at a failpoint.
    pub fn wait_exit(mut self, limit: Duration) -> std::process::ExitStatus {
        poll(limit, || self.child.try_wait().unwrap())
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaping the killed server");
    }

    /// SIGTERM and wait: the clean shutdown path.
    pub fn terminate(mut self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "clean shutdown exits 0, got {exit:?}");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ledger id's short form (its first 8 hex digits) of the ledger in
/// `data_dir`, read with `tally ledger info` (read-only, beside a live server):
/// the prefix of its bank message ids and payment file names.
pub fn ledger_short_id(data_dir: &Path) -> String {
    let (ok, stdout, stderr) = run_tally(&["ledger", "info", "--json", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(ok, "tally ledger info: {stderr}");
    let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    info["ledger_id"].as_str().unwrap()[..8].to_owned()
}

/// The name of a bank payment file: its message id `T<ledger short id>-E<epoch>-<currency>-<n>`.
pub fn bank_file_name(short_id: &str, epoch: u64, asset: &str, chunk: u32, extension: &str) -> String {
    format!("T{short_id}-E{epoch}-{asset}-{chunk}.{extension}")
}

/// Runs `tally` with arguments; returns (success, stdout, stderr).
pub fn run_tally(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(tally_binary()).args(args).env("TALLY_LOG", "warn").output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// How to start `tally serve` beyond [`ServerProcess::start_with`]: extra
/// flags, and a file that receives its stdout and stderr (for tests that
/// read what it printed).
#[derive(Default)]
pub struct ServeOptions<'a> {
    pub config: Option<&'a Path>,
    pub env: &'a [(&'a str, &'a str)],
    pub args: &'a [&'a str],
    pub output: Option<&'a Path>,
    /// `TALLY_LOG`; `warn` when `None`.
    pub log: Option<&'a str>,
}

impl ServerProcess {
    /// Starts `tally serve` with `options`; returns it and its ready file
    /// (which holds `admin_addr`, `tls`, … beyond the fields kept here).
    pub fn start_opts(data_dir: &Path, options: &ServeOptions) -> (ServerProcess, serde_json::Value) {
        let ready: PathBuf = data_dir.with_extension(format!("ready-opts-{}", std::process::id()));
        let mut command = serve_command(data_dir, &ready);
        command.args(options.args).env("TALLY_LOG", options.log.unwrap_or("warn"));
        if let Some(config) = options.config {
            command.arg("--config").arg(config);
        }
        for (key, value) in options.env {
            command.env(key, value);
        }
        let (stdout, stderr) = match options.output {
            Some(path) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
                (Stdio::from(file.try_clone().unwrap()), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::inherit()),
        };
        let mut child =
            command.stdin(Stdio::null()).stdout(stdout).stderr(stderr).spawn().expect("starting tally serve");
        let text = poll(Duration::from_secs(60), || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("tally serve exited before it was ready: {status:?}");
            }
            std::fs::read_to_string(&ready).ok()
        });
        let _ = std::fs::remove_file(&ready);
        let ready: serde_json::Value = serde_json::from_str(&text).unwrap();
        let server = ServerProcess {
            child,
            addr: ready["grpc_addr"].as_str().unwrap().to_owned(),
            metrics_addr: ready["metrics_addr"].as_str().unwrap_or_default().to_owned(),
            http_addr: ready["http_addr"].as_str().unwrap_or_default().to_owned(),
        };
        (server, ready)
    }
}

/// Sends raw bytes as an HTTP/1.1 client would (over any stream) and reads
/// the whole answer until the server closes; returns (status, body).
pub async fn http_exchange<S>(mut stream: S, request: &[u8]) -> std::io::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut answer = Vec::new();
    // A TLS peer may close without close_notify after `Connection: close`;
    // what arrived before that is the answer.
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {:?}", &text[..text.len().min(200)])))?;
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// A `Connection: close` HTTP/1.1 request with an optional JSON body.
pub fn http_request(method: &str, path: &str, json: Option<&str>) -> Vec<u8> {
    let body = json.unwrap_or("");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if json.is_some() {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    request.into_bytes()
}

/// A `tally serve` that is allowed to fail at startup (tests of damaged or full disks), with
/// its stderr kept in a file for assertions.
pub struct FaultServer {
    pub child: Child,
    pub addr: String,
    pub stderr_path: PathBuf,
}

/// How a [`start_may_exit`] attempt ended.
pub enum Started {
    Ready(FaultServer),
    Exited { status: std::process::ExitStatus, stderr: String },
}

/// Starts `tally serve` on `data_dir` (ready file and stderr under `dir`, named by `tag`) and
/// waits until it is listening or has exited, whichever comes first.
pub fn start_may_exit(dir: &Path, data_dir: &Path, env: &[(String, String)], tag: &str) -> Started {
    let ready = dir.join(format!("ready-{tag}"));
    let stderr_path = dir.join(format!("stderr-{tag}"));
    let mut command = serve_command(data_dir, &ready);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("starting tally serve");
    let outcome = poll(Duration::from_secs(60), || {
        if let Some(status) = child.try_wait().expect("polling the child") {
            return Some(Err(status));
        }
        let text = std::fs::read_to_string(&ready).ok()?;
        let ready: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(Ok(ready["grpc_addr"].as_str()?.to_owned()))
    });
    match outcome {
        Ok(addr) => Started::Ready(FaultServer { child, addr, stderr_path }),
        Err(status) => Started::Exited { status, stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default() },
    }
}

/// [`start_may_exit`] for a start that must succeed.
pub fn start_ready(dir: &Path, data_dir: &Path, env: &[(String, String)], tag: &str) -> FaultServer {
    match start_may_exit(dir, data_dir, env, tag) {
        Started::Ready(server) => server,
        Started::Exited { status, stderr } => panic!("tally serve exited ({status}):\n{stderr}"),
    }
}

impl FaultServer {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A real local EVM node for tests, benchmarks and the demo: anvil from the
//! pinned npm package `@foundry-rs/anvil-linux-amd64` (installed by
//! `npm ci --prefix tools/node`, which `scripts/test.sh` runs).
//!
//! The node listens on 127.0.0.1 on a port the kernel picks (`--port 0`; the
//! port is read from anvil's "Listening on" line, so two nodes never race for
//! a port), uses the well-known dev mnemonic (deterministic accounts), and is
//! ready when `eth_chainId` answers, polled under a deadline — no fixed sleeps.
//! Dropping the [`AnvilNode`] SIGKILLs the process by pid and reaps it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use alloy::primitives::Address;

use super::{EvmError, parse_address};

/// Anvil's default development mnemonic: public, for local test chains only.
pub const DEV_MNEMONIC: &str = "test test test test test test test test test test test junk";
/// The chain id the node is started with.
pub const DEV_CHAIN_ID: u64 = 31337;
/// How many funded dev accounts the node creates.
pub const DEV_ACCOUNTS: usize = 10;
/// The bound on start-up (process spawn to a valid `eth_chainId` answer).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the anvil binary is: `$TALLY_ANVIL`, else the platform binary that
/// `npm ci --prefix tools/node` installs in this workspace. (The npm wrapper
/// script is not used: a kill must reach the node itself.)
pub fn anvil_path() -> PathBuf {
    match std::env::var_os("TALLY_ANVIL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tools/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
        )),
    }
}

/// One funded development account.
#[derive(Clone)]
pub struct DevAccount {
    pub address: Address,
    /// 0x-prefixed hex. Public test keys of a local dev chain, never real funds.
    pub private_key: String,
}

impl std::fmt::Debug for DevAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevAccount").field("address", &self.address).finish_non_exhaustive()
    }
}

/// A running anvil process, killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct AnvilNode {
    child: Child,
    addr: SocketAddr,
    chain_id: u64,
    accounts: Vec<DevAccount>,
}

impl AnvilNode {
    /// Starts anvil and waits until it answers `eth_chainId`.
    ///
    /// A missing binary is an error (tests must fail, not skip, without it).
    pub fn start() -> Result<AnvilNode, EvmError> {
        Self::start_at(&anvil_path())
    }

    /// Starts the anvil binary at `path` (see [`AnvilNode::start`]).
    pub fn start_at(path: &std::path::Path) -> Result<AnvilNode, EvmError> {
        Self::spawn(path, 0)
    }

    /// Starts anvil on a given `port` of 127.0.0.1: how a fault test brings a
    /// killed node back at the address the engine is configured with. Load
    /// the chain saved by [`AnvilNode::dump_state`] with
    /// [`AnvilNode::load_state`] before the engine uses it again.
    pub fn start_on(port: u16) -> Result<AnvilNode, EvmError> {
        Self::spawn(&anvil_path(), port)
    }

    fn spawn(path: &std::path::Path, port: u16) -> Result<AnvilNode, EvmError> {
        if !path.is_file() {
            return Err(EvmError::Anvil(format!(
                "anvil binary not found at {}: run scripts/test.sh (or `npm ci --prefix tools/node`), \
                 or point TALLY_ANVIL at an anvil binary",
                path.display()
            )));
        }
        let config_out = std::env::temp_dir().join(format!(
            "tally-anvil-{}-{}.json",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        let mut child = Command::new(path)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--mnemonic", DEV_MNEMONIC])
            .args(["--accounts", &DEV_ACCOUNTS.to_string(), "--chain-id", &DEV_CHAIN_ID.to_string()])
            .arg("--config-out")
            .arg(&config_out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| EvmError::Anvil(format!("cannot spawn {}: {e}", path.display())))?;

        // From here on, any early return must kill the child: wrap it first.
        let stdout = child.stdout.take();
        let mut node = AnvilNode {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            chain_id: DEV_CHAIN_ID,
            accounts: Vec::new(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let stdout = stdout.ok_or_else(|| EvmError::Anvil("no stdout pipe".into()))?;
        node.addr = node.wait_for_listen_addr(stdout, deadline)?;
        node.chain_id = node.wait_for_chain_id(deadline)?;
        if node.chain_id != DEV_CHAIN_ID {
            return Err(EvmError::ChainIdMismatch { expected: DEV_CHAIN_ID, actual: node.chain_id });
        }
        // anvil may answer RPC before it has finished writing --config-out.
        let accounts = node.wait_for_accounts(&config_out, deadline);
        let _ = std::fs::remove_file(&config_out);
        node.accounts = accounts?;
        Ok(node)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn rpc_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The chain id the node answered (31337).
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The TCP port the node listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// One JSON-RPC call, for the node-control methods tests use
    /// (`evm_setAutomine`, `anvil_dropAllTransactions`, `anvil_setBalance`, …).
    pub async fn rpc(&self, method: &'static str, params: serde_json::Value) -> Result<serde_json::Value, EvmError> {
        use alloy::providers::Provider;
        let url = self
            .rpc_url()
            .parse()
            .map_err(|e| EvmError::InvalidUrl { url: self.rpc_url(), message: format!("{e}") })?;
        let provider = alloy::providers::RootProvider::<alloy::network::Ethereum>::new_http(url);
        let call = provider.raw_request::<_, serde_json::Value>(method.into(), params);
        match tokio::time::timeout(super::client::RPC_CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(EvmError::rpc(method, e)),
            Err(_) => Err(EvmError::Rpc { op: method, message: "no answer in time".into() }),
        }
    }

    /// The whole chain (blocks, transactions, receipts, accounts) as
    /// `anvil_dumpState` returns it: what a real node keeps on disk. The
    /// pending pool is not part of it, as a node's mempool is not durable.
    pub async fn dump_state(&self) -> Result<serde_json::Value, EvmError> {
        self.rpc("anvil_dumpState", serde_json::json!([])).await
    }

    /// Restores a chain saved by [`AnvilNode::dump_state`].
    pub async fn load_state(&self, state: serde_json::Value) -> Result<(), EvmError> {
        match self.rpc("anvil_loadState", serde_json::json!([state])).await? {
            serde_json::Value::Bool(true) => Ok(()),
            other => Err(EvmError::Anvil(format!("anvil_loadState answered {other}"))),
        }
    }

    /// The funded dev accounts, in derivation order (index 0 is the usual deployer).
    pub fn accounts(&self) -> &[DevAccount] {
        &self.accounts
    }

    /// The private keys of the dev accounts (0x-hex), in derivation order.
    pub fn private_keys(&self) -> Vec<String> {
        self.accounts.iter().map(|a| a.private_key.clone()).collect()
    }

    /// Reads anvil's stdout on a thread until "Listening on ADDR", then keeps
    /// draining it for the node's lifetime (anvil logs every call; a full pipe
    /// would block it).
    fn wait_for_listen_addr(
        &mut self,
        stdout: std::process::ChildStdout,
        deadline: Instant,
    ) -> Result<SocketAddr, EvmError> {
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        std::thread::Builder::new()
            .name("anvil-stdout".into())
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                let mut sent = false;
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if !sent
                                && let Some(rest) = line.trim().strip_prefix("Listening on ")
                                && let Ok(addr) = rest.trim().parse::<SocketAddr>()
                            {
                                sent = tx.send(addr).is_ok();
                            }
                        }
                    }
                }
            })
            .map_err(|e| EvmError::Anvil(format!("cannot spawn the stdout reader: {e}")))?;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => return Ok(addr),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(EvmError::Anvil(format!("exited before listening ({})", self.exit_status())));
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(EvmError::Anvil(format!("exited before listening: {status}")));
            }
            if Instant::now() >= deadline {
                return Err(EvmError::Anvil(format!("not listening after {START_TIMEOUT:?}")));
            }
        }
    }

    /// Polls `eth_chainId` until it answers or the deadline passes.
    fn wait_for_chain_id(&mut self, deadline: Instant) -> Result<u64, EvmError> {
        let addr = self.addr;
        self.poll_start_up(deadline, || {
            eth_chain_id(addr).map_err(|e| EvmError::Anvil(format!("eth_chainId not answered in time: {e}")))
        })
    }

    /// Polls the `--config-out` file until it holds the dev accounts (it is
    /// written during start-up, possibly after the RPC answers) or the
    /// deadline passes.
    fn wait_for_accounts(
        &mut self,
        config_out: &std::path::Path,
        deadline: Instant,
    ) -> Result<Vec<DevAccount>, EvmError> {
        self.poll_start_up(deadline, || read_accounts(config_out))
    }

    /// Retries `attempt` with a short backoff (5 ms doubling to 100 ms) until
    /// it succeeds, anvil exits, or the deadline passes (then its last error).
    fn poll_start_up<T>(
        &mut self,
        deadline: Instant,
        mut attempt: impl FnMut() -> Result<T, EvmError>,
    ) -> Result<T, EvmError> {
        let mut pause = Duration::from_millis(5);
        loop {
            let last_error = match attempt() {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(EvmError::Anvil(format!("exited during start-up: {status}")));
            }
            if Instant::now() >= deadline {
                return Err(last_error);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    fn exit_status(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            Ok(None) => "still running".into(),
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for AnvilNode {
    fn drop(&mut self) {
        // `Child::kill` is SIGKILL to this pid on Unix; `wait` reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `eth_chainId` over a plain HTTP/1.1 connection (start-up only; the
/// client uses alloy's HTTP transport).
fn eth_chain_id(addr: SocketAddr) -> Result<u64, String> {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (start, end) = (text.find('{'), text.rfind('}'));
    let json = match (start, end) {
        (Some(s), Some(e)) if s < e => text.get(s..=e).unwrap_or_default(),
        _ => return Err(format!("no JSON in answer: {}", text.chars().take(200).collect::<String>())),
    };
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let result = value.get("result").and_then(|r| r.as_str()).ok_or_else(|| format!("no result: {value}"))?;
    u64::from_str_radix(result.trim_start_matches("0x"), 16).map_err(|e| format!("bad chain id {result:?}: {e}"))
}

/// The dev accounts from anvil's `--config-out` file.
fn read_accounts(path: &std::path::Path) -> Result<Vec<DevAccount>, EvmError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EvmError::Anvil(format!("cannot read --config-out {}: {e}", path.display())))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EvmError::Anvil(format!("bad --config-out JSON: {e}")))?;
    let list = |key: &str| -> Result<Vec<String>, EvmError> {
        value
            .get(key)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .ok_or_else(|| EvmError::Anvil(format!("--config-out has no {key:?}")))
    };
    let (addresses, keys) = (list("available_accounts")?, list("private_keys")?);
    if addresses.len() != keys.len() || addresses.is_empty() {
        return Err(EvmError::Anvil("--config-out accounts and keys do not pair up".into()));
    }
    let mut accounts = Vec::with_capacity(keys.len());
    for (address, private_key) in addresses.iter().zip(keys) {
        let address = parse_address(address)?;
        // Cross-check: the key must derive the address anvil funded.
        if super::parse_private_key(&private_key)?.address() != address {
            return Err(EvmError::Anvil(format!("--config-out key does not match {address}")));
        }
        accounts.push(DevAccount { address, private_key });
    }
    Ok(accounts)
}

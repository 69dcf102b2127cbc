//! Security properties of a real `tally serve`:
//!
//! - with `--admin-addr`, Admin and Settlement are served only on the admin
//!   listener (the public one answers `UNIMPLEMENTED` and does not advertise
//!   them), the token is still required there, and the CLI reaches them with
//!   `--admin-addr` / `TALLY_ADMIN_ADDR`;
//! - secrets never leak: with a known admin token and treasury key, at
//!   debug log level, failing and succeeding admin calls, settlement, bad
//!   configurations, HTTP errors and `/metrics` are checked for either
//!   secret in everything the process printed and every answer it gave.

mod common;

use std::process::Command;

use common::*;
use tally_ingest::proto::admin_client::AdminClient;
use tally_ingest::proto::ingest_client::IngestClient;
use tally_ingest::proto::{ListRequest, SubmitBatchRequest};
use tally_settler::grpc::proto::settlement_client::SettlementClient;
use tokio::net::TcpStream;
use tokio_stream::StreamExt;

/// The admin token of these tests: distinctive, so any copy is found.
const SECRET_TOKEN: &str = "sEcReT-admin-token-5a17c0de-never-print-me";
/// A treasury key (secp256k1, valid): its hex must never be printed.
const SECRET_KEY_HEX: &str = "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";

fn admin_client(channel: tonic::transport::Channel, token: &str) -> Admin {
    AdminClient::with_interceptor(channel, TokenInterceptor(token.into()))
}

async fn reflected_services(addr: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(connect(addr).await);
    let mut responses = client.server_reflection_info(futures::stream::iter(vec![request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("reflection answers a service list");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_on_its_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ready) = ServerProcess::start_opts(
        &dir.path().join("ledger"),
        &ServeOptions { args: &["--admin-addr", "127.0.0.1:0"], ..Default::default() },
    );
    let admin_addr = ready["admin_addr"].as_str().expect("the ready file names the admin address").to_owned();
    assert_ne!(admin_addr, server.addr);

    // The public listener: ingest and query, no admin, no settlement, even
    // with the right token; reflection does not advertise them.
    let public = connect(&server.addr).await;
    let refused = admin_client(public.clone(), TOKEN).list_assets(ListRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
    let mut settlement = SettlementClient::with_interceptor(public.clone(), TokenInterceptor(TOKEN.into()));
    let refused = settlement.reports(tally_settler::grpc::proto::ReportsRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
    let names = reflected_services(&server.addr).await;
    assert!(names.iter().any(|n| n == "tally.v1.Ingest") && names.iter().any(|n| n == "tally.v1.Query"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("Admin") || n.contains("Settlement")), "{names:?}");

    // The admin listener: the token is still required; no ingest there.
    let admin_channel = connect(&admin_addr).await;
    for token in ["", "wrong", &TOKEN[..TOKEN.len() - 1]] {
        let status = admin_client(admin_channel.clone(), token).list_assets(ListRequest {}).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "token {token:?}");
    }
    let mut no_header = AdminClient::new(admin_channel.clone());
    assert_eq!(no_header.list_assets(ListRequest {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut admin = admin_client(admin_channel.clone(), TOKEN);
    register_basics(&mut admin, 1, 1_000).await;
    let mut settlement = SettlementClient::with_interceptor(admin_channel.clone(), TokenInterceptor(TOKEN.into()));
    settlement.reports(tally_settler::grpc::proto::ReportsRequest::default()).await.unwrap();
    let status = IngestClient::new(admin_channel).submit_batch(SubmitBatchRequest { batch_id: 1, ious: vec![] }).await;
    assert_eq!(status.unwrap_err().code(), tonic::Code::Unimplemented);

    // The CLI: --admin-addr (or TALLY_ADMIN_ADDR) for admin commands; query
    // commands keep using --server.
    let (ok, stdout, stderr) = run_tally(&[
        "asset",
        "list",
        "--json",
        "--server",
        &server.addr,
        "--admin-addr",
        &admin_addr,
        "--admin-token",
        TOKEN,
    ]);
    assert!(ok && stdout.contains("USD"), "{stdout}{stderr}");
    let output = Command::new(tally_binary())
        .args(["payee", "register", "site-c.example", "--name", "Site C", "--server", &server.addr])
        .env("TALLY_ADMIN_ADDR", &admin_addr)
        .env("TALLY_ADMIN_TOKEN", TOKEN)
        .env("TALLY_LOG", "warn")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (ok, _, stderr) = run_tally(&["asset", "list", "--server", &server.addr, "--admin-token", TOKEN]);
    assert!(!ok, "admin calls to the public listener fail");
    assert!(stderr.contains("not implemented"), "{stderr}");
    let (ok, stdout, stderr) =
        run_tally(&["epochs", "--server", &server.addr, "--admin-addr", &admin_addr, "--token", TOKEN]);
    assert!(ok, "query commands use --server: {stdout}{stderr}");
    server.terminate();
}

/// Fails the test if `text` holds either secret (or the token's tail, in
/// case something printed a truncated copy).
fn assert_no_secret(what: &str, text: &str) {
    for secret in [SECRET_TOKEN, &SECRET_TOKEN[7..], SECRET_KEY_HEX, &SECRET_KEY_HEX[..24]] {
        assert!(!text.contains(secret), "{what} contains a secret ({} bytes of text)", text.len());
    }
}

async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    http_exchange(tcp, &http_request("GET", path, None)).await.unwrap()
}

fn tally_with_secrets(args: &[&str]) -> (bool, String) {
    let output = Command::new(tally_binary())
        .args(args)
        .env("TALLY_LOG", "debug")
        .env("RUST_LOG", "debug")
        .env("TALLY_TREASURY_KEY", SECRET_KEY_HEX)
        .env_remove("TALLY_ADMIN_TOKEN")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_errors_or_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    // An EVM rail whose node is unreachable: the settler reads and parses
    // the treasury key at startup and tries to connect (and fails, loudly).
    let config = dir.path().join("tally.toml");
    std::fs::write(
        &config,
        format!(
            r#"
admin_token = "{SECRET_TOKEN}"

[settlement.assets.USD]
rail = "evm"
payout_min = "0.01"

[settlement.evm]
rpc_url = "http://127.0.0.1:9"
chain_id = 31337
token = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
token_decimals = 6
payout_contract = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
treasury_key_env = "TALLY_TREASURY_KEY"
"#
        ),
    )
    .unwrap();
    let (server, ready) = ServerProcess::start_opts(
        &dir.path().join("ledger"),
        &ServeOptions {
            config: Some(&config),
            // The config's token wins only without the environment's.
            env: &[("TALLY_ADMIN_TOKEN", SECRET_TOKEN), ("TALLY_TREASURY_KEY", SECRET_KEY_HEX), ("RUST_LOG", "debug")],
            args: &["--admin-addr", "127.0.0.1:0"],
            output: Some(&log),
            log: Some("debug"),
        },
    );
    let admin_addr = ready["admin_addr"].as_str().unwrap().to_owned();
    let mut answers = String::new();

    // Failing admin calls (wrong, truncated, missing token; wrong listener).
    let admin_channel = connect(&admin_addr).await;
    for token in ["wrong", &SECRET_TOKEN[..SECRET_TOKEN.len() - 1], &format!("{SECRET_TOKEN}x")] {
        let status = admin_client(admin_channel.clone(), token).list_assets(ListRequest {}).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        answers.push_str(&format!("{status:?}\n"));
    }
    let status = admin_client(connect(&server.addr).await, SECRET_TOKEN).list_assets(ListRequest {}).await.unwrap_err();
    answers.push_str(&format!("{status:?}\n"));
    // Succeeding ones, then an admin error (unknown payer) and settlement.
    let mut admin = admin_client(admin_channel.clone(), SECRET_TOKEN);
    register_basics(&mut admin, 2, 1_000_000).await;
    let ious = (0..4).map(|n| signed_iou(&signer(1), "site-a.example", 1_000, nonce(3, n))).collect();
    let results = IngestClient::new(connect(&server.addr).await)
        .submit_batch(SubmitBatchRequest { batch_id: 1, ious })
        .await
        .unwrap()
        .into_inner();
    answers.push_str(&format!("{results:?}\n"));
    let status = admin
        .set_payer_status(tally_ingest::proto::SetPayerStatusRequest { payer_id: "nobody".into(), status: 2 })
        .await
        .unwrap_err();
    answers.push_str(&format!("{status:?}\n"));

    // The CLI, right and wrong token, admin and settlement commands.
    for (args, should_pass) in [
        (vec!["asset", "list", "--admin-token", SECRET_TOKEN], true),
        (vec!["asset", "list", "--admin-token", "not-the-token"], false),
        (vec!["settle", "--json", "--admin-token", SECRET_TOKEN], false),
        (vec!["settlements", "--admin-token", SECRET_TOKEN], true),
    ] {
        let mut full: Vec<&str> = args.clone();
        full.extend(["--server", &server.addr, "--admin-addr", &admin_addr]);
        let (ok, text) = tally_with_secrets(&full);
        if should_pass {
            assert!(ok, "{args:?}: {text}");
        }
        assert_no_secret(&format!("`tally {}` output", args[..2].join(" ")), &text);
    }

    // HTTP errors and the metrics page.
    let (status, body) = http_get(&server.http_addr, "/nope").await;
    answers.push_str(&format!("{status} {body}\n"));
    let tcp = TcpStream::connect(&server.http_addr).await.unwrap();
    let (_, body) = http_exchange(tcp, &http_request("POST", "/settle", Some("{\"x402Version\": 2}"))).await.unwrap();
    answers.push_str(&format!("{body}\n"));
    let (status, metrics) = http_get(&server.metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("tally_ious_total"), "the metrics page is the real one");
    assert_no_secret("/metrics", &metrics);
    assert_no_secret("answers to clients", &answers);

    server.terminate();
    let printed = std::fs::read_to_string(&log).unwrap();
    assert!(printed.contains("DEBUG"), "the server really logged at debug level");
    assert!(printed.contains("EVM") || printed.contains("evm"), "the EVM rail was tried: {printed}");
    assert_no_secret("tally serve's stdout and stderr at debug level", &printed);
}

#[test]
fn bad_configurations_do_not_echo_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    let data = data.to_str().unwrap();
    let bad_key = format!("0x{}zz", &SECRET_KEY_HEX[..62]);
    // Serving fails after the settler has parsed the key: the HTTP port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let cases: Vec<(String, Vec<(&str, String)>)> = vec![
        // An unknown key next to the token.
        (format!("admin_token = \"{SECRET_TOKEN}\"\nbogus = 1\n"), vec![]),
        // The token itself malformed (unquoted, then a number).
        (format!("admin_token = {SECRET_TOKEN}\n"), vec![]),
        ("admin_token = 7c852118294e51\n".to_owned(), vec![]),
        // A bad address after the token.
        (format!("admin_token = \"{SECRET_TOKEN}\"\ngrpc_addr = \"{SECRET_TOKEN}\"\n"), vec![]),
        // A malformed treasury key (the node is unreachable, so only the
        // key's parsing speaks).
        (
            format!(
                "admin_token = \"{SECRET_TOKEN}\"\n[settlement.evm]\nrpc_url = \"http://127.0.0.1:9\"\nchain_id = 1\n\
                 token = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\ntoken_decimals = 6\n\
                 payout_contract = \"0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512\"\ntreasury_key_env = \"TALLY_TREASURY_KEY\"\n"
            ),
            vec![("TALLY_TREASURY_KEY", bad_key.clone())],
        ),
    ];
    for (i, (text, env)) in cases.iter().enumerate() {
        let config = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&config, text).unwrap();
        let mut command = Command::new(tally_binary());
        command
            .args(["serve", "--config", config.to_str().unwrap(), "--data-dir", data])
            .args(["--grpc-addr", "127.0.0.1:0", "--metrics-addr", "off"])
            .args(["--http-addr", if env.is_empty() { "127.0.0.1:0" } else { &taken_addr }])
            .env("TALLY_LOG", "debug")
            .env_remove("TALLY_ADMIN_TOKEN");
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(!output.status.success(), "case {i} must fail: {printed}");
        assert!(printed.contains("error"), "case {i} says why");
        assert_no_secret(&format!("bad configuration {i}"), &printed);
        assert!(!printed.contains("7c852118294e51"), "case {i} quotes no secret value");
        assert!(!printed.contains(&bad_key[2..30]), "case {i} quotes no key");
    }
    // `--help` with the token in the environment does not show it.
    let output =
        Command::new(tally_binary()).args(["serve", "--help"]).env("TALLY_ADMIN_TOKEN", SECRET_TOKEN).output().unwrap();
    assert_no_secret("tally serve --help", &String::from_utf8_lossy(&output.stdout));
}

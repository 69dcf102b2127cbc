//! Key directories: a payer registered by its signature agent, its keys
//! added from a JWKS file or fetched from its directory URL (a real local
//! HTTP server), by the real `tally` binary against a real `tally serve`.

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::get;
use common::*;
use tally_ingest::proto::*;
use tally_x402::jwks::{JWKS_BYTES_MAX, jwks_for, thumbprint};

const WELL_KNOWN: &str = "/.well-known/http-message-signatures-directory";

fn public(seed: u8) -> [u8; 32] {
    signer(seed).verifying_key().to_bytes()
}

/// A crawler's web server: its key directory (signers 1 and 2) at the
/// well-known path, and a few broken directories beside it.
async fn directory_server() -> SocketAddr {
    let directory = jwks_for(&[public(1), public(2)]);
    let rsa_only = r#"{"keys":[{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZpt","e":"AQAB"}]}"#;
    let app = Router::new()
        .route(WELL_KNOWN, get(move || async move { directory }))
        .route("/rsa-only", get(move || async move { rsa_only }))
        .route("/not-json", get(|| async { "<html>hello</html>" }))
        .route("/huge", get(|| async { " ".repeat(JWKS_BYTES_MAX + 1) }))
        .route(
            "/huge-chunked",
            get(|| async {
                // No Content-Length: the size limit must hold while reading.
                let chunks = (0..=JWKS_BYTES_MAX / 1024).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024]));
                Body::from_stream(futures::stream::iter(chunks))
            }),
        )
        .route("/gone", get(|| async { (StatusCode::NOT_FOUND, "no directory here") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

struct Cli {
    admin: Vec<String>,
}

impl Cli {
    /// Runs `tally` with the admin flags appended; (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(self.admin.iter().map(String::as_str));
        run_tally(&all)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(ok, "tally {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    /// Fails, with a clear message (not a panic) containing `expected`.
    fn fails(&self, args: &[&str], expected: &str) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(!ok, "tally {args:?} should fail:\n{stdout}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(expected), "expected {expected:?} in:\n{stderr}");
        stderr
    }

    fn payer(&self, id: &str) -> serde_json::Value {
        let payers: serde_json::Value = serde_json::from_str(&self.ok(&["payer", "list", "--json"])).unwrap();
        payers.as_array().unwrap().iter().find(|p| p["id"] == id).unwrap_or_else(|| panic!("no payer {id}")).clone()
    }

    fn keys(&self, id: &str) -> Vec<String> {
        let payer = self.payer(id);
        payer["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_a_jwks_file_or_the_crawlers_directory() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("ledger"));
    let http = directory_server().await;
    let cli =
        Cli { admin: vec!["--server".into(), format!("http://{}", server.addr), "--admin-token".into(), TOKEN.into()] };
    let origin = format!("http://{http}");

    cli.ok(&["asset", "register", "USD", "--scale", "6"]);
    cli.ok(&["payee", "register", "site-a.example"]);
    let first = hex::encode(public(9));
    cli.ok(&["payer", "register", "crawler", "--key", &first, "--limit", "USD=10"]);

    // From the directory, by origin: both keys added, the agent set to the origin.
    let out = cli.ok(&["payer", "add-keys", "crawler", "--directory", &origin, "--set-agent"]);
    for seed in [1, 2] {
        assert!(out.contains(&format!("added {}", thumbprint(&public(seed)))), "{out}");
    }
    let payer = cli.payer("crawler");
    assert_eq!(payer["signature_agent"], origin.as_str());
    assert_eq!(cli.keys("crawler"), [first.clone(), hex::encode(public(1)), hex::encode(public(2))]);

    // Again, by the full URL: nothing new, reported, no error.
    let out = cli.ok(&["payer", "add-keys", "crawler", "--directory", &format!("{origin}{WELL_KNOWN}")]);
    for seed in [1, 2] {
        assert!(out.contains(&format!("already registered {}", thumbprint(&public(seed)))), "{out}");
    }
    assert!(!out.contains("added"), "{out}");
    assert_eq!(cli.keys("crawler").len(), 3);

    // From a file: one key new, one already this payer's.
    let file = dir.path().join("directory.json");
    std::fs::write(&file, jwks_for(&[public(2), public(3)])).unwrap();
    let out = cli.ok(&["payer", "add-keys", "crawler", "--jwks", file.to_str().unwrap()]);
    assert!(out.contains(&format!("already registered {}", thumbprint(&public(2)))), "{out}");
    assert!(out.contains(&format!("added {}", thumbprint(&public(3)))), "{out}");
    assert_eq!(cli.keys("crawler").len(), 4);

    // Directories that cannot be used: clear errors, nothing added.
    cli.ok(&["payer", "register", "other", "--key", &hex::encode(public(10))]);
    let only_other = vec![hex::encode(public(10))];
    let add = |source: &str, value: &str| ["payer", "add-keys", "other", source, value].map(str::to_owned);
    let fails = |args: [String; 5], expected: &str| {
        cli.fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), expected);
        assert_eq!(cli.keys("other"), only_other, "nothing was added");
    };
    fails(add("--directory", &format!("{origin}/rsa-only")), "no Ed25519");
    fails(add("--directory", &format!("{origin}/gone")), "404");
    fails(add("--directory", &format!("{origin}/not-json")), "not valid JSON");
    fails(add("--directory", &format!("{origin}/huge")), &format!("more than {JWKS_BYTES_MAX}"));
    fails(add("--directory", &format!("{origin}/huge-chunked")), &format!("more than {JWKS_BYTES_MAX}"));
    fails(add("--directory", "https://crawler.example"), "TLS is not built in");
    fails(add("--directory", "http://127.0.0.1:1"), "cannot fetch key directory");
    // Keys of another payer are refused before anything is added.
    fails(add("--directory", &origin), "belongs to payer crawler");
    std::fs::write(&file, r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#).unwrap();
    fails(add("--jwks", file.to_str().unwrap()), "no Ed25519");
    fails(add("--jwks", dir.path().join("missing.json").to_str().unwrap()), "cannot open");

    // Signature agents: set by hand, unique across payers, checked, cleared.
    cli.fails(&["payer", "set-agent", "other", "--agent", &origin], "belongs to payer crawler");
    cli.fails(&["payer", "set-agent", "other", "--agent", "ftp://crawler.example"], "signature agent");
    cli.fails(&["payer", "set-agent", "nobody", "--agent", "https://nobody.example"], "not found");
    cli.ok(&["payer", "set-agent", "other", "--agent", "https://other.example"]);
    assert_eq!(cli.payer("other")["signature_agent"], "https://other.example");
    cli.ok(&["payer", "set-agent", "other", "--clear"]);
    assert!(cli.payer("other")["signature_agent"].is_null());

    // A key added from the directory signs IOUs that are accepted.
    let mut c = clients(&server.addr).await;
    let ious = vec![signed_iou(&signer(1), "site-a.example", 1_000, nonce(1, 1))];
    let results = c.ingest.submit_batch(SubmitBatchRequest { batch_id: 1, ious }).await.unwrap().into_inner().results;
    assert_eq!(results[0].code, 1, "accepted: {results:?}");
    drop(c);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_agents_are_indexed_and_survive_a_restart() {
    let mut s = InProcess::start().await;
    let mut c = clients(&s.addr).await;
    register_basics(&mut c.admin, 2, 1_000).await;
    let set =
        |payer: &str, agent: &str| SetSignatureAgentRequest { payer_id: payer.into(), signature_agent: agent.into() };
    let ledger = || s.engine.as_ref().unwrap().ledger.clone();
    let owner =
        |ledger: &tally_ledger::Ledger, agent: &str| ledger.payer_by_signature_agent(agent).unwrap().map(|p| p.id);

    c.admin.set_signature_agent(set("crawler-1", "https://one.example")).await.unwrap();
    assert_eq!(owner(&ledger(), "https://one.example").as_deref(), Some("crawler-1"));
    assert_eq!(owner(&ledger(), "https://two.example"), None);

    // Changing it moves the index entry.
    c.admin.set_signature_agent(set("crawler-1", "https://one.example/v2")).await.unwrap();
    assert_eq!(owner(&ledger(), "https://one.example"), None);
    assert_eq!(owner(&ledger(), "https://one.example/v2").as_deref(), Some("crawler-1"));
    // Setting the same agent again is fine.
    c.admin.set_signature_agent(set("crawler-1", "https://one.example/v2")).await.unwrap();

    let code = |r: Result<tonic::Response<AdminResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(c.admin.set_signature_agent(set("crawler-2", "https://one.example/v2")).await),
        tonic::Code::AlreadyExists
    );
    assert_eq!(code(c.admin.set_signature_agent(set("nobody", "https://x.example")).await), tonic::Code::NotFound);
    for bad in ["crawler.example", "https://", "https://a b", &format!("https://{}", "a".repeat(256))] {
        assert_eq!(
            code(c.admin.set_signature_agent(set("crawler-2", bad)).await),
            tonic::Code::InvalidArgument,
            "{bad}"
        );
    }
    c.admin.set_signature_agent(set("crawler-2", "http://two.example")).await.unwrap();
    let listed = c.admin.list_payers(ListRequest {}).await.unwrap().into_inner().payers;
    let agents: Vec<&str> = listed.iter().map(|p| p.signature_agent.as_str()).collect();
    assert_eq!(agents, ["https://one.example/v2", "http://two.example"]);

    // Cleared: gone from the record and the index; free for another payer.
    c.admin.set_signature_agent(set("crawler-1", "")).await.unwrap();
    assert_eq!(owner(&ledger(), "https://one.example/v2"), None);
    c.admin.set_signature_agent(set("crawler-1", "https://one.example")).await.unwrap();
    drop(c);

    // Restart on the same data: records and index persisted.
    let data_dir = s.dir.path().join("ledger");
    s.stop().await;
    let engine = tally_ingest::Engine::open(tally_ingest::EngineConfig::new(data_dir, NETWORK)).unwrap();
    assert_eq!(owner(&engine.ledger, "https://one.example").as_deref(), Some("crawler-1"));
    assert_eq!(owner(&engine.ledger, "http://two.example").as_deref(), Some("crawler-2"));
    assert_eq!(
        engine.ledger.payer("crawler-2").unwrap().unwrap().signature_agent.as_deref(),
        Some("http://two.example")
    );
    tokio::task::spawn_blocking(move || engine.shutdown()).await.unwrap();
}

//! TLS end to end: a CA and a server certificate made here with `rcgen`, a
//! real `tally serve --tls-cert --tls-key`, IOUs submitted over gRPC-TLS,
//! `/supported` and `/settle` over HTTPS (a rustls client trusting only the
//! test CA), the CLI with `--tls-ca`, and every plaintext or wrongly-trusting
//! client refused.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use tally_core::SignedIou;
use tally_ingest::proto::admin_client::AdminClient;
use tally_ingest::proto::ingest_client::IngestClient;
use tally_ingest::proto::{IouCode, ListRequest, SubmitBatchRequest};
use tally_x402::commitment::TallyIouPayload;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const PAYEE: &str = "site-a.example";

/// A CA and a server certificate for `localhost` and 127.0.0.1, as PEM.
struct TestPki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn make_ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

fn make_pki() -> TestPki {
    let (ca_params, ca_key, ca_pem) = make_ca("Tally test CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "tally serve");
    let cert = params.signed_by(&server_key, &issuer).unwrap();
    TestPki { ca_pem, cert_pem: cert.pem(), key_pem: server_key.serialize_pem() }
}

fn iou(key: &ed25519_dalek::SigningKey, amount: u64, nonce: [u8; 16]) -> SignedIou {
    signed_domain_iou(key, PAYEE, amount, nonce)
}

fn settle_body(signed: &SignedIou) -> String {
    let requirements = json!({ "scheme": "batch-settlement", "network": NETWORK, "amount": signed.iou.amount.to_string(), "asset": "USD", "payTo": PAYEE });
    json!({
        "x402Version": 2,
        "paymentPayload": {
            "x402Version": 2,
            "resource": { "url": format!("https://{PAYEE}/article") },
            "accepted": requirements,
            "payload": TallyIouPayload::from_signed(signed),
        },
        "paymentRequirements": requirements,
    })
    .to_string()
}

async fn tls_channel(addr: &str, ca_pem: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))?
        .connect()
        .await
}

fn https_connector(ca_pem: &str) -> TlsConnector {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// One HTTPS request to `addr`, trusting `ca_pem` only.
async fn https(addr: &str, ca_pem: &str, request: &[u8]) -> std::io::Result<(u16, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = https_connector(ca_pem).connect(name, tcp).await?;
    http_exchange(tls, request).await
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_over_tls_and_plaintext_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki();
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let cert = write(dir.path(), "server.pem", &pki.cert_pem);
    let key = write(dir.path(), "server.key", &pki.key_pem);
    let (server, ready) = ServerProcess::start_opts(
        &dir.path().join("ledger"),
        &ServeOptions { args: &["--tls-cert", &cert, "--tls-key", &key], ..Default::default() },
    );
    assert_eq!(ready["tls"], true);

    // gRPC over TLS: register accounts, submit IOUs, read them back.
    let channel = tls_channel(&server.addr, &pki.ca_pem).await.expect("a TLS client trusting the CA connects");
    let mut admin = AdminClient::with_interceptor(channel.clone(), TokenInterceptor(TOKEN.into()));
    register_basics(&mut admin, 2, 1_000_000).await;
    let key1 = signer(1);
    let ious: Vec<_> = (0..16).map(|n| tally_ingest::convert::iou_to_proto(&iou(&key1, 10, nonce(7, n)))).collect();
    let results =
        IngestClient::new(channel.clone()).submit_batch(SubmitBatchRequest { batch_id: 1, ious }).await.unwrap();
    let results = results.into_inner().results;
    assert_eq!(results.len(), 16);
    assert!(results.iter().all(|r| r.code == IouCode::Accepted as i32), "{results:?}");
    let balances = query_with(channel.clone(), TOKEN)
        .balances(tally_ingest::proto::BalancesRequest { payee: PAYEE.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(format!("{balances:?}").contains("160"), "16 IOUs of 10 are owed to {PAYEE}: {balances:?}");

    // The CLI with --tls-ca reaches the admin API; without it, it cannot.
    let (ok, stdout, stderr) =
        run_tally(&["asset", "list", "--json", "--server", &server.addr, "--tls-ca", &ca, "--admin-token", TOKEN]);
    assert!(ok, "tally asset list over TLS: {stderr}");
    assert!(stdout.contains("USD"), "{stdout}");
    let (ok, _, stderr) = run_tally(&["asset", "list", "--server", &server.addr, "--admin-token", TOKEN]);
    assert!(!ok, "a plaintext CLI must not get an answer from a TLS listener");
    assert!(!stderr.contains(TOKEN), "the error names no token: {stderr}");

    // Plaintext gRPC gets no answer.
    let plaintext = async {
        let channel = Endpoint::from_shared(format!("http://{}", server.addr)).unwrap().connect().await?;
        AdminClient::with_interceptor(channel, TokenInterceptor(TOKEN.into()))
            .list_assets(ListRequest {})
            .await
            .map_err(|s| Box::new(s) as Box<dyn std::error::Error>)?;
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    assert!(plaintext.await.is_err(), "plaintext gRPC must be refused");

    // A client trusting another CA refuses the server (and learns nothing).
    let (_, _, other_ca) = make_ca("Some other CA");
    assert!(tls_channel(&server.addr, &other_ca).await.is_err(), "a certificate from an untrusted CA is refused");

    // HTTPS: /supported and /settle.
    let (status, body) = https(&server.http_addr, &pki.ca_pem, &http_request("GET", "/supported", None)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let supported: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(supported["kinds"][0]["scheme"], "batch-settlement");
    let key2 = signer(2);
    let signed = iou(&key2, 250, nonce(8, 1));
    let request = http_request("POST", "/settle", Some(&settle_body(&signed)));
    let (status, body) = https(&server.http_addr, &pki.ca_pem, &request).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let settled: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(settled["success"], true, "{settled}");
    assert!(settled["transaction"].as_str().unwrap().contains(':'), "a commitment id: {settled}");

    // Plaintext HTTP to the HTTPS port gets no HTTP answer.
    let tcp = TcpStream::connect(&server.http_addr).await.unwrap();
    let plain = http_exchange(tcp, &http_request("GET", "/supported", None)).await;
    assert!(plain.is_err(), "plaintext HTTP must not be answered: {plain:?}");
    // HTTPS trusting another CA fails the handshake.
    assert!(https(&server.http_addr, &other_ca, &http_request("GET", "/supported", None)).await.is_err());

    server.terminate();
}

#[test]
fn bad_tls_files_are_refused_at_startup_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki();
    let cert = write(dir.path(), "server.pem", &pki.cert_pem);
    let other_key = write(dir.path(), "other.key", &KeyPair::generate().unwrap().serialize_pem());
    let not_a_key = write(dir.path(), "garbage.key", "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n");
    let data = dir.path().join("ledger");
    let data = data.to_str().unwrap();
    for (key, expected) in [
        (other_key.as_str(), "do not form a usable identity"),
        (not_a_key.as_str(), "no PEM private key"),
        ("/nonexistent/server.key", "/nonexistent/server.key"),
    ] {
        let (ok, _, stderr) = run_tally(&[
            "serve",
            "--data-dir",
            data,
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "off",
            "--admin-token",
            TOKEN,
            "--tls-cert",
            &cert,
            "--tls-key",
            key,
        ]);
        assert!(!ok, "serve must refuse {key}");
        assert!(stderr.contains(expected), "{key}: {stderr}");
        assert!(!stderr.contains("not base64"), "no key content in errors: {stderr}");
    }
    let (ok, _, stderr) = run_tally(&["serve", "--data-dir", data, "--admin-token", TOKEN, "--tls-cert", &cert]);
    assert!(!ok && stderr.contains("both --tls-cert and --tls-key"), "{stderr}");
}

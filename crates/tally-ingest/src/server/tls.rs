//! TLS for Tally's listeners: one certificate and key (PEM files), loaded
//! and checked once at startup, then handed to the gRPC listener (tonic's
//! rustls acceptor) and to the HTTP listener ([`super::http`]).
//!
//! rustls with the `ring` provider only: no OpenSSL, no aws-lc C build.
//! Loading fails with a typed [`TlsError`] that names the file and what was
//! wrong with it, never the file's content (the key is a secret).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the server's certificate chain and private key are (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate file {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("TLS key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS certificate {cert} and key {key} do not form a usable identity: {reason}")]
    Identity { cert: PathBuf, key: PathBuf, reason: String },
}

/// A loaded, checked server identity. `Debug` shows the file names only.
#[derive(Clone)]
pub struct TlsIdentity {
    files: TlsFiles,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    http: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_file", &self.files.cert_file)
            .field("key_file", &self.files.key_file)
            .finish_non_exhaustive()
    }
}

/// Longest a client may take to complete a TLS handshake before its
/// connection is dropped (a slow handshake is a slow-loris too).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsIdentity {
    /// Reads both files and checks that the key matches the certificate.
    pub fn load(files: &TlsFiles) -> Result<TlsIdentity, TlsError> {
        let cert_pem =
            read(&files.cert_file).map_err(|reason| TlsError::Certificate { path: files.cert_file.clone(), reason })?;
        let key_pem = read(&files.key_file).map_err(|reason| TlsError::Key { path: files.key_file.clone(), reason })?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|_| TlsError::Certificate { path: files.cert_file.clone(), reason: "malformed PEM".into() })?;
        if certs.is_empty() {
            return Err(TlsError::Certificate {
                path: files.cert_file.clone(),
                reason: "no CERTIFICATE block found".into(),
            });
        }
        // The PEM error is deliberately not shown: it can quote key bytes.
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Key {
            path: files.key_file.clone(),
            reason: "no PEM private key (PKCS#8, PKCS#1 or SEC1) found".into(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity_error =
            |reason: String| TlsError::Identity { cert: files.cert_file.clone(), key: files.key_file.clone(), reason };
        let mut http = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| identity_error(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| identity_error(e.to_string()))?;
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsIdentity { files: files.clone(), cert_pem, key_pem, http: Arc::new(http) })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The gRPC listener's TLS settings (HTTP/2 over TLS, ALPN `h2`).
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }

    /// The HTTP listener's acceptor (ALPN `http/1.1`).
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.http.clone())
    }

    /// The acceptor of an HTTP listener that also speaks HTTP/2 (ALPN `h2`, then `http/1.1`).
    pub fn http2_acceptor(&self) -> TlsAcceptor {
        let mut config = (*self.http).clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

/// Reads a PEM file of bounded size; the error says why, without content.
fn read(path: &Path) -> Result<Vec<u8>, String> {
    /// Certificate chains and keys are a few KiB; anything larger is not one.
    const PEM_BYTES_MAX: u64 = 1024 * 1024;
    let metadata = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if metadata.len() > PEM_BYTES_MAX {
        return Err(format!("{} bytes is larger than {PEM_BYTES_MAX}", metadata.len()));
    }
    std::fs::read(path).map_err(|e| e.to_string())
}

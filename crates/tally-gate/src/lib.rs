//! # `tally gate`: x402 in front of any HTTP origin
//!
//! A publisher on WordPress, nginx or Next.js cannot put a tower layer in
//! front of their site; they can put a reverse proxy there. The gateway is
//! that proxy: it reads a price list ([`config`]), lets free paths through,
//! answers unpaid requests for priced ones with an x402 `402` (and
//! pay-per-crawl's `crawler-price`), and serves a paid request only after its
//! payment is recorded, charging only successful responses ([`proxy`]).
//!
//! How the pieces meet:
//!
//! ```text
//! client ──HTTP/1.1 or h2──▶ tally_ingest::server::http (bounded listener)
//!                              └─▶ proxy::handle ─ rules::decide (free / priced / unmatched)
//!                                    ├─ tally_x402::pay_per_crawl: Cloudflare's headers ⇄ a `pay-per-crawl` payment
//!                                    ├─ facilitator::FacilitatorLink::verify / settle
//!                                    │     (in process inside `tally serve`, or HTTP to a remote one)
//!                                    └─ hyper client ──HTTP/1.1──▶ origin (body streamed back)
//! ```
//!
//! The gateway decides nothing about money itself: every verdict is the
//! facilitator's, and the facilitator records through the engine's single
//! writer. It never depends on the ledger or RocksDB directly.

pub mod config;
pub mod discovery;
pub mod facilitator;
pub mod metrics;
pub mod proxy;
pub mod rules;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{GateConfig, Overrides};
pub use facilitator::FacilitatorLink;
pub use proxy::Gate;
use tally_ingest::server::http::{HttpLimits, HttpOptions, RunningHttpServer, serve_router};
use tally_ingest::server::tls::TlsIdentity;

/// A running gateway listener.
pub struct RunningGate {
    pub local_addr: SocketAddr,
    server: RunningHttpServer,
}

impl RunningGate {
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// The listener's limits: the price list's, with a request deadline long
/// enough for a facilitator verify, the origin's answer and a settle.
pub fn http_limits(config: &GateConfig) -> HttpLimits {
    let limits = &config.limits;
    HttpLimits {
        connections_max: limits.connections_max,
        header_bytes_max: limits.header_bytes_max,
        headers_max: limits.headers_max,
        request_timeout: limits.origin_timeout + limits.facilitator_timeout * 2,
        ..HttpLimits::default()
    }
}

/// Serves `gate` on `addr` (HTTP/1.1 and HTTP/2; TLS if `tls` is given).
pub async fn serve(gate: &Arc<Gate>, addr: SocketAddr, tls: Option<TlsIdentity>) -> Result<RunningGate, String> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("binding the gateway on {addr}: {e}"))?;
    let local_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let options = HttpOptions { limits: http_limits(gate.config()), tls, http2: true };
    let server = serve_router(listener, gate.router(), options)?;
    Ok(RunningGate { local_addr, server })
}

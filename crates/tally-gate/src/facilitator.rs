//! How the gateway asks for a verdict: the facilitator in this process (the
//! gateway inside `tally serve`) or a remote one over HTTP (`tally gate`).
//!
//! Both answer the same two questions with the same objects, the x402
//! `/verify` and `/settle` answers, so the proxy cannot tell them apart. In
//! process there is no hop: the request goes to the engine's pipeline and
//! single ledger writer exactly as the facilitator's HTTP route would send
//! it. Remotely, every call is bounded (timeout, answer size), and anything
//! that is not a verdict is [`Unavailable`]: the gateway then serves nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tally_x402::types::{FacilitatorRequest, SettleResponse, VerifyResponse};

/// Largest facilitator answer read.
pub const ANSWER_BYTES_MAX: usize = 64 * 1024;

/// The facilitator gave no verdict (unreachable, timed out, 5xx, not JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable {
    /// Timed out (503 to the client) rather than failed (502).
    pub timed_out: bool,
}

/// Where verdicts come from.
#[derive(Clone)]
pub enum FacilitatorLink {
    InProcess(Arc<tally_x402::facilitator::Facilitator>),
    Remote { url: String, http: reqwest::Client, timeout: Duration },
}

impl FacilitatorLink {
    /// A remote facilitator at `url` (e.g. `http://127.0.0.1:8402`).
    pub fn remote(url: &str, timeout: Duration, connections_idle_max: usize) -> Result<FacilitatorLink, String> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections_idle_max)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(FacilitatorLink::Remote { url: url.trim_end_matches('/').to_owned(), http, timeout })
    }

    pub async fn verify(&self, request: &FacilitatorRequest) -> Result<(StatusCode, VerifyResponse), Unavailable> {
        self.call("verify", request).await
    }

    pub async fn settle(&self, request: &FacilitatorRequest) -> Result<(StatusCode, SettleResponse), Unavailable> {
        self.call("settle", request).await
    }

    async fn call<T: serde::de::DeserializeOwned + Answer>(
        &self,
        route: &'static str,
        request: &FacilitatorRequest,
    ) -> Result<(StatusCode, T), Unavailable> {
        let body = serde_json::to_vec(request).map_err(|_| Unavailable { timed_out: false })?;
        match self {
            FacilitatorLink::InProcess(facilitator) => Ok(T::in_process(facilitator, &body).await),
            FacilitatorLink::Remote { url, http, timeout } => {
                let endpoint = format!("{url}/{route}");
                let sent = http
                    .post(&endpoint)
                    .timeout(*timeout)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let mut answer = sent.map_err(|error| {
                    tracing::warn!(%error, %endpoint, "facilitator unreachable");
                    Unavailable { timed_out: error.is_timeout() }
                })?;
                let status = answer.status();
                if status.is_server_error() {
                    tracing::warn!(%status, %endpoint, "facilitator failed");
                    return Err(Unavailable { timed_out: status == StatusCode::SERVICE_UNAVAILABLE });
                }
                let mut bytes = Vec::new();
                while let Some(chunk) = answer.chunk().await.map_err(|_| Unavailable { timed_out: false })? {
                    if bytes.len() + chunk.len() > ANSWER_BYTES_MAX {
                        return Err(Unavailable { timed_out: false });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                let decoded = serde_json::from_slice(&bytes).map_err(|_| {
                    tracing::warn!(%status, %endpoint, "facilitator answered something that is not a verdict");
                    Unavailable { timed_out: false }
                })?;
                Ok((status, decoded))
            }
        }
    }
}

/// The two answers, each from its in-process route.
trait Answer: Sized {
    fn in_process(
        facilitator: &tally_x402::facilitator::Facilitator,
        body: &[u8],
    ) -> impl std::future::Future<Output = (StatusCode, Self)> + Send;
}

impl Answer for VerifyResponse {
    async fn in_process(facilitator: &tally_x402::facilitator::Facilitator, body: &[u8]) -> (StatusCode, Self) {
        facilitator.answer_verify(body).await
    }
}

impl Answer for SettleResponse {
    async fn in_process(facilitator: &tally_x402::facilitator::Facilitator, body: &[u8]) -> (StatusCode, Self) {
        facilitator.answer_settle(body).await
    }
}

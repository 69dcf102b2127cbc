//! # tally-x402: the x402 front door
//!
//! Resource servers that speak x402 point their SDK at Tally as a
//! facilitator for the `batch-settlement` scheme. This crate is that door:
//!
//! - [`types`]: the x402 v2 objects and reason codes, named as the spec names them.
//! - [`commitment`]: Tally's commitment formats inside `paymentPayload.payload`,
//!   and how payment identifiers map onto the ledger's replay index.
//! - `facilitator` (feature `facilitator`, on by default): the axum HTTP API
//!   (`/supported`, `/verify`, `/settle`), which records through the same
//!   pipeline as gRPC. Without the feature the crate needs no ledger (and so
//!   no RocksDB): the fuzz targets build it that way.
//! - [`webbotauth`], [`jwks`]: RFC 9421 HTTP message signatures (Web Bot Auth)
//!   and key directories.
//!
//! Must never depend on: tonic or the gRPC services (it uses only the
//! transport-free pipeline of `tally-ingest`), or the settler.

pub mod client;
pub mod commitment;
#[cfg(feature = "facilitator")]
pub mod facilitator;
#[doc(hidden)]
pub mod fuzzing;
pub mod jwks;
pub mod middleware;
pub mod pay_per_crawl;
pub mod types;
pub mod webbotauth;

#[cfg(feature = "facilitator")]
pub use facilitator::{Facilitator, FacilitatorConfig, RunningHttp, serve_http};

//! # tally-ingest: from signed IOUs on the wire to durable acknowledgements
//!
//! Two layers, kept apart on purpose:
//!
//! - [`pipeline`] is the transport-free data path: validate → look up the
//!   key → verify signatures in batches on a bounded thread pool → hand the
//!   survivors to the ledger's single writer → wait for the fsync → answer
//!   per IOU. It knows nothing of gRPC; every front door (the gRPC services
//!   here, the x402 HTTP facilitator later) calls this same pipeline.
//! - [`grpc`] holds the tonic services (ingest, query, admin) and only
//!   translates: protobuf in, pipeline or ledger call, protobuf out.
//!
//! [`server`] assembles an [`server::Engine`] (ledger + writer + pipeline)
//! and serves it, with gRPC health and reflection, on one listener.

pub mod codec;
pub mod convert;
pub mod grpc;
pub mod pipeline;
pub mod server;

/// Generated protobuf and tonic code for `proto/tally/v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tally.v1");

    /// Encoded descriptors of every Tally proto file, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tally_descriptor");
}

pub use grpc::auth::AdminAuth;
pub use pipeline::{Pipeline, PipelineConfig, PipelineError, SignedBatch};
pub use server::{Engine, EngineConfig, ExtraServices, GrpcLimits, RunningServer, serve};

//! The ingest service.
//!
//! `StreamBatches` keeps up to [`crate::GrpcLimits::stream_batches_inflight_max`]
//! batches of one stream in the pipeline at once and answers them in
//! request order. The response channel holds as many; when the client stops
//! reading responses, the window fills, the server stops reading requests,
//! and HTTP/2 flow control pushes back on the client: memory per stream is
//! bounded by the window, never by the client's speed.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{iou_from_proto, result_to_proto, signed_batch_from_proto};
use crate::pipeline::{Pipeline, PipelineError};
use crate::proto::ingest_server::Ingest;
use crate::proto::{SubmitBatchRequest, SubmitBatchResponse, SubmitSignedBatchRequest};
use tally_core::Outcome;
use tally_ledger::AppendResult;

pub struct IngestService {
    pipeline: Arc<Pipeline>,
    stream_batches_inflight_max: usize,
}

impl IngestService {
    pub fn new(pipeline: Arc<Pipeline>, stream_batches_inflight_max: usize) -> IngestService {
        assert!(stream_batches_inflight_max > 0);
        IngestService { pipeline, stream_batches_inflight_max }
    }
}

/// One request of either kind, as the pipeline takes it.
enum Submission {
    /// IOUs signed one by one.
    Ious(SubmitBatchRequest),
    /// A batch-signed commitment.
    Signed(SubmitSignedBatchRequest),
}

async fn process(pipeline: &Pipeline, request: Submission) -> Result<SubmitBatchResponse, Status> {
    let (batch_id, submitted) = match request {
        Submission::Ious(request) => {
            (request.batch_id, pipeline.submit(request.ious.into_iter().map(iou_from_proto).collect()).await)
        }
        Submission::Signed(request) => {
            let (batch_id, len) = (request.batch_id, request.ious.len());
            let submitted = match signed_batch_from_proto(request) {
                Some(batch) => pipeline.submit_signed_batch(batch).await,
                None if len > pipeline.config().batch_ious_max => {
                    Err(PipelineError::BatchTooLarge { len, max: pipeline.config().batch_ious_max })
                }
                // A root or signature of the wrong length: nothing can be checked.
                None => Ok(vec![AppendResult::rejected(Outcome::Malformed); len]),
            };
            (batch_id, submitted)
        }
    };
    match submitted {
        Ok(results) => Ok(SubmitBatchResponse { batch_id, results: results.iter().map(result_to_proto).collect() }),
        Err(PipelineError::BatchTooLarge { len, max }) => {
            Err(Status::invalid_argument(format!("batch {batch_id} has {len} IOUs; the limit is {max}")))
        }
        Err(PipelineError::Ledger(error)) => Err(super::ledger_status(error)),
        Err(PipelineError::VerifierStopped) => Err(Status::unavailable("the server is shutting down")),
    }
}

/// Answers a stream of requests in order, with at most `window` in the
/// pipeline at once; reading stops (and HTTP/2 flow control pushes back on
/// the client) while the window is full.
fn answer_stream<R: Send + 'static>(
    pipeline: Arc<Pipeline>,
    inbound: Streaming<R>,
    window: usize,
    submission: fn(R) -> Submission,
) -> ResponseStream {
    let (sender, receiver) = mpsc::channel(window);
    tokio::spawn(async move {
        let answers = inbound
            .map(|request| {
                let pipeline = pipeline.clone();
                async move {
                    match request {
                        Ok(request) => process(&pipeline, submission(request)).await,
                        Err(status) => Err(status),
                    }
                }
            })
            .buffered(window);
        futures::pin_mut!(answers);
        while let Some(answer) = answers.next().await {
            let failed = answer.is_err();
            if sender.send(answer).await.is_err() || failed {
                // The client went away, or the stream ends with an error
                // status after the answers before it.
                break;
            }
        }
    });
    Box::pin(ReceiverStream::new(receiver))
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<SubmitBatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn submit_batch(
        &self,
        request: Request<SubmitBatchRequest>,
    ) -> Result<Response<SubmitBatchResponse>, Status> {
        process(&self.pipeline, Submission::Ious(request.into_inner())).await.map(Response::new)
    }

    type StreamBatchesStream = ResponseStream;

    async fn stream_batches(
        &self,
        request: Request<Streaming<SubmitBatchRequest>>,
    ) -> Result<Response<Self::StreamBatchesStream>, Status> {
        let window = self.stream_batches_inflight_max;
        Ok(Response::new(answer_stream(self.pipeline.clone(), request.into_inner(), window, Submission::Ious)))
    }

    async fn submit_signed_batch(
        &self,
        request: Request<SubmitSignedBatchRequest>,
    ) -> Result<Response<SubmitBatchResponse>, Status> {
        process(&self.pipeline, Submission::Signed(request.into_inner())).await.map(Response::new)
    }

    type StreamSignedBatchesStream = ResponseStream;

    async fn stream_signed_batches(
        &self,
        request: Request<Streaming<SubmitSignedBatchRequest>>,
    ) -> Result<Response<Self::StreamSignedBatchesStream>, Status> {
        let window = self.stream_batches_inflight_max;
        Ok(Response::new(answer_stream(self.pipeline.clone(), request.into_inner(), window, Submission::Signed)))
    }
}

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

use crate::convert::{iou_from_proto, result_to_proto};
use crate::pipeline::{Pipeline, PipelineError};
use crate::proto::ingest_server::Ingest;
use crate::proto::{SubmitBatchRequest, SubmitBatchResponse};

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

async fn process(pipeline: &Pipeline, request: SubmitBatchRequest) -> Result<SubmitBatchResponse, Status> {
    let batch_id = request.batch_id;
    let batch = request.ious.into_iter().map(iou_from_proto).collect();
    match pipeline.submit(batch).await {
        Ok(results) => Ok(SubmitBatchResponse { batch_id, results: results.iter().map(result_to_proto).collect() }),
        Err(PipelineError::BatchTooLarge { len, max }) => {
            Err(Status::invalid_argument(format!("batch {batch_id} has {len} IOUs; the limit is {max}")))
        }
        Err(PipelineError::Ledger(error)) => Err(super::ledger_status(error)),
        Err(PipelineError::VerifierStopped) => Err(Status::unavailable("the server is shutting down")),
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<SubmitBatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn submit_batch(
        &self,
        request: Request<SubmitBatchRequest>,
    ) -> Result<Response<SubmitBatchResponse>, Status> {
        process(&self.pipeline, request.into_inner()).await.map(Response::new)
    }

    type StreamBatchesStream = ResponseStream;

    async fn stream_batches(
        &self,
        request: Request<Streaming<SubmitBatchRequest>>,
    ) -> Result<Response<Self::StreamBatchesStream>, Status> {
        let inbound = request.into_inner();
        let window = self.stream_batches_inflight_max;
        let (sender, receiver) = mpsc::channel(window);
        let pipeline = self.pipeline.clone();
        tokio::spawn(async move {
            let answers = inbound
                .map(|request| {
                    let pipeline = pipeline.clone();
                    async move {
                        match request {
                            Ok(request) => process(&pipeline, request).await,
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
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

//! A global bound on gRPC requests in service, where a stream counts for its whole life.
//!
//! tower's concurrency limits hold their permit until the *response future* resolves. For a
//! unary call that is the whole call; for a stream it is only until the response headers go
//! out, after which the stream runs uncounted. Decoded memory is bounded by
//! `requests_max × (window + 1) × message_bytes_max` only if every open stream holds a slot, so
//! this layer moves the permit into the response **body**: it is released when the body ends
//! (a unary answer is sent, a stream closes) or is dropped (the client went away). Requests over
//! the limit wait for a slot; that wait is the back-pressure the architecture documents.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::codegen::http::{Request, Response};
use tower::Service;

/// Applies [`RequestLimit`] with `requests_max` slots shared by every connection.
#[derive(Clone)]
pub struct RequestLimitLayer {
    permits: Arc<Semaphore>,
}

impl RequestLimitLayer {
    pub fn new(requests_max: usize) -> RequestLimitLayer {
        assert!(requests_max > 0, "a request limit of zero would serve nothing");
        RequestLimitLayer { permits: Arc::new(Semaphore::new(requests_max)) }
    }
}

impl<S> tower::Layer<S> for RequestLimitLayer {
    type Service = RequestLimit<S>;

    fn layer(&self, inner: S) -> RequestLimit<S> {
        RequestLimit { inner, permits: self.permits.clone() }
    }
}

#[derive(Clone)]
pub struct RequestLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, RequestBody> Service<Request<RequestBody>> for RequestLimit<S>
where
    S: Service<Request<RequestBody>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    RequestBody: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        // The service that was polled ready serves this call; a fresh clone waits for the next.
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        let permits = self.permits.clone();
        Box::pin(async move {
            let permit = permits.acquire_owned().await.expect("the request semaphore is never closed");
            let response = ready.call(request).await?;
            Ok(response.map(|body| Body::new(PermitBody { inner: body, _permit: permit })))
        })
    }
}

/// A response body that holds its request's slot until it ends or is dropped.
struct PermitBody {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for PermitBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

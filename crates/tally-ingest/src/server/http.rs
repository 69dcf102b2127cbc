//! A hardened HTTP listener for an axum router (the x402 facilitator, the
//! gateway), optionally over TLS. It speaks HTTP/1.1, and HTTP/2 too when
//! [`HttpOptions::http2`] is set (prior knowledge in plaintext, ALPN `h2`
//! over TLS).
//!
//! `axum::serve` has no limits of its own: a client may hold a connection
//! open forever by sending one header byte at a time (slow-loris), and any
//! number of connections are accepted. This listener bounds each resource a
//! client can hold, with hyper's own HTTP/1 options where hyper has one:
//!
//! - **Connections**: at most [`HttpLimits::connections_max`] are served at
//!   once. The next connection is not accepted until one closes: it waits in
//!   the kernel's listen backlog (its TCP handshake completes, no byte of it
//!   is read), and a client that gives up simply leaves. Nothing is refused
//!   with an error; memory stays bounded.
//! - **Header read**: a request's head (request line and headers) must arrive
//!   within [`HttpLimits::header_read_timeout`], measured from when the server
//!   starts waiting for it, however slowly the bytes trickle in (hyper's
//!   `header_read_timeout`). The same bound closes idle keep-alive
//!   connections, and bounds a TLS handshake.
//! - **Header size**: at most [`HttpLimits::header_bytes_max`] bytes and
//!   [`HttpLimits::headers_max`] headers; beyond that hyper answers
//!   `431 Request Header Fields Too Large` and closes.
//! - **Request**: from a complete head to a complete response (reading the
//!   body included) at most [`HttpLimits::request_timeout`]; past it the
//!   request is answered `503` and the connection closed. An abandoned
//!   `/settle` may still have been recorded; its retry is answered from the
//!   replay index, so nothing is recorded twice.
//! - **Body size**: the router's own `DefaultBodyLimit`.
//! - **HTTP/2**: at most [`HTTP2_STREAMS_MAX`] concurrent streams per
//!   connection and a header list of at most [`HttpLimits::header_bytes_max`];
//!   the request deadline applies to every stream. In plaintext, enough of
//!   the first bytes to tell HTTP/1 from HTTP/2 must arrive within the header
//!   read timeout (hyper-util's sniffing has no deadline); an HTTP/2
//!   connection is pinged every header-read timeout and closed when a ping
//!   goes unanswered. An idle HTTP/2 connection that answers pings stays
//!   open: [`HttpLimits::connections_max`] bounds how many.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tower::ServiceExt;

use super::tls::{TLS_HANDSHAKE_TIMEOUT, TlsIdentity};

/// What one client may hold of the HTTP listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest wait for a complete request head (and idle keep-alive).
    pub header_read_timeout: Duration,
    /// Longest time from a complete head to a complete response.
    pub request_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub connections_max: usize,
    /// Largest request head in bytes (hyper's read buffer; at least 8 KiB).
    pub header_bytes_max: usize,
    /// Most header fields in one request.
    pub headers_max: usize,
}

/// hyper refuses a read buffer below 8 KiB.
pub const HEADER_BYTES_MIN: usize = 8 * 1024;

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            connections_max: 1_024,
            header_bytes_max: 16 * 1024,
            headers_max: 64,
        }
    }
}

impl HttpLimits {
    /// Refuses limits that would disable a bound or that hyper rejects.
    pub fn check(&self) -> Result<(), String> {
        if self.header_read_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err("HTTP timeouts must be positive".into());
        }
        if self.connections_max == 0 {
            return Err("http_connections_max must be at least 1".into());
        }
        if self.header_bytes_max < HEADER_BYTES_MIN {
            return Err(format!("http_header_bytes_max must be at least {HEADER_BYTES_MIN}"));
        }
        if self.headers_max == 0 {
            return Err("http_headers_max must be at least 1".into());
        }
        Ok(())
    }
}

/// Concurrent HTTP/2 streams one connection may open: with
/// [`HttpLimits::connections_max`] this bounds the requests in flight.
pub const HTTP2_STREAMS_MAX: u32 = 64;

/// How to serve: limits, TLS if configured, and whether to speak HTTP/2.
#[derive(Clone, Debug, Default)]
pub struct HttpOptions {
    pub limits: HttpLimits,
    pub tls: Option<TlsIdentity>,
    /// Also serve HTTP/2 (the facilitator does not need it; the gateway does).
    pub http2: bool,
}

/// A running HTTP listener.
pub struct RunningHttpServer {
    pub local_addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningHttpServer {
    /// Stops accepting, lets in-flight requests finish (each is bounded by
    /// the request timeout), and waits.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

/// Serves `router` on `listener` with `options` until stopped.
pub fn serve_router(listener: TcpListener, router: Router, options: HttpOptions) -> Result<RunningHttpServer, String> {
    options.limits.check()?;
    let local_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(accept_loop(listener, router, options, stopped));
    Ok(RunningHttpServer { local_addr, shutdown, task })
}

async fn accept_loop(listener: TcpListener, router: Router, options: HttpOptions, mut stopped: oneshot::Receiver<()>) {
    let limits = options.limits;
    let acceptor =
        options.tls.as_ref().map(|tls| if options.http2 { tls.http2_acceptor() } else { tls.http_acceptor() });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.header_bytes_max.max(HEADER_BYTES_MIN))
        .max_headers(limits.headers_max)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Pings find peers that went away; a connection that answers none is closed.
        .keep_alive_interval(Some(limits.header_read_timeout))
        .keep_alive_timeout(limits.header_read_timeout)
        .max_concurrent_streams(HTTP2_STREAMS_MAX)
        .max_header_list_size(u32::try_from(limits.header_bytes_max).unwrap_or(u32::MAX));
    if !options.http2 {
        builder = builder.http1_only();
    }
    let builder = Arc::new(builder);
    let connections = Arc::new(Semaphore::new(limits.connections_max));
    let graceful = GracefulShutdown::new();
    loop {
        // A slot first, then accept: past the bound, connections wait in the
        // backlog instead of costing a task and buffers each.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = &mut stopped => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let request_timeout = limits.request_timeout;
        let service = hyper::service::service_fn(move |request| handle(router.clone(), request_timeout, request));
        let builder = builder.clone();
        let http2 = options.http2;
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = OpenConnection::count();
            match acceptor {
                None => {
                    // hyper-util's version sniffing has no deadline of its own: a client that
                    // sends nothing (or half the HTTP/2 preface) would hold its slot forever.
                    if http2 && !version_arrives(&stream, limits.header_read_timeout).await {
                        metrics::counter!("tally_http_header_timeouts_total").increment(1);
                        return;
                    }
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(error) = watcher.watch(connection).await {
                        connection_error(&*error, "HTTP");
                    }
                }
                Some(acceptor) => {
                    let handshake = limits.header_read_timeout.min(TLS_HANDSHAKE_TIMEOUT);
                    let tls: tokio_rustls::server::TlsStream<TcpStream> =
                        match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(error)) => {
                                tracing::debug!(%error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                metrics::counter!("tally_http_header_timeouts_total").increment(1);
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        };
                    let connection = builder.serve_connection(TokioIo::new(tls), service);
                    if let Err(error) = watcher.watch(connection).await {
                        connection_error(&*error, "HTTPS");
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The HTTP/2 connection preface; a request that does not start with it is HTTP/1.
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether enough of the request arrives within `limit` to tell HTTP/1 from
/// HTTP/2 (the whole preface, or a first byte that is not its start). Peeks:
/// nothing is consumed. Polls every few ms for the rest of a partial preface,
/// bounded by `limit`.
async fn version_arrives(stream: &TcpStream, limit: Duration) -> bool {
    const POLL: Duration = Duration::from_millis(5);
    let sniff = async {
        let mut buffer = [0u8; HTTP2_PREFACE.len()];
        loop {
            match stream.peek(&mut buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n == buffer.len() || !HTTP2_PREFACE.starts_with(&buffer[..n]) => return true,
                Ok(_) => tokio::time::sleep(POLL).await,
            }
        }
    };
    tokio::time::timeout(limit, sniff).await.unwrap_or(false)
}

/// Counts a served connection in `tally_http_connections_open` for its life.
struct OpenConnection;

impl OpenConnection {
    fn count() -> OpenConnection {
        metrics::gauge!("tally_http_connections_open").increment(1.0);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("tally_http_connections_open").decrement(1.0);
    }
}

/// A connection that ended badly: a client's fault, logged at debug only;
/// header timeouts (slow or idle clients) are counted.
fn connection_error(error: &(dyn std::error::Error + Send + Sync + 'static), what: &str) {
    if error.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
        metrics::counter!("tally_http_header_timeouts_total").increment(1);
    }
    tracing::debug!(%error, "{what} connection ended with an error");
}

/// One request through the router, behind the request deadline.
async fn handle(
    router: Router,
    request_timeout: Duration,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Body>, Infallible> {
    match tokio::time::timeout(request_timeout, router.oneshot(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("tally_http_request_timeouts_total").increment(1);
            let mut response = hyper::Response::new(Body::from("request did not complete in time\n"));
            *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
            response.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
            Ok(response)
        }
    }
}

//! HTTP/1.1 connections whose clients are bounded in what they may hold: time (headers, idle,
//! bodies), number (a cap per executor, answered 503), and failure (a request that panics fails
//! alone). The data plane's API and the control plane's both serve through [`serve`].

use crate::metrics::Metrics;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::json;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long a stopping server waits for requests in flight.
pub const DRAIN_S_MAX: u64 = 30;

/// Refusals (503 and close) one executor writes at once; past that, a connection over the limit
/// is closed without an answer.
const REFUSING_MAX: usize = 256;

/// What one client may hold of a server (`ostore dev`/`node` flags; defaults in `main.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// HTTP/1.1 connections one executor holds; more are answered 503 and closed.
    pub connections_per_executor: usize,
    /// From a request's first byte to the end of its headers.
    pub header_read: Duration,
    /// Nothing moving on a connection that no handler is working on: idle between requests,
    /// or a response its client stopped reading.
    pub idle: Duration,
    /// Between two pieces of a request body.
    pub body_idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_per_executor: 1024,
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            body_idle: Duration::from_secs(30),
        }
    }
}

/// A server the connections belong to: its limits, its counters, whether it is stopping.
pub trait Host: Send + Sync + 'static {
    fn limits(&self) -> &Limits;
    fn metrics(&self) -> &Metrics;
    fn is_stopping(&self) -> bool;
}

/// `fut`'s output, or `None` if `limit` passes first (the future is dropped).
pub async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

/// Resolves once `host` is stopping.
pub async fn stopping<H: Host + ?Sized>(host: &H) {
    while !host.is_stopping() {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

/// The certificate a TLS client presented and its server verified (the end entity, DER), in
/// each request's extensions on a TLS listener; absent without TLS or without a certificate.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<[u8]>);

/// Accepts connections until the host stops, serving each request with `handler` (a request
/// that panics is answered with `failed()`); then waits for the connections to finish, at most
/// [`DRAIN_S_MAX`]. With `tls`, every connection is TLS first (the handshake within the
/// header-read limit); a verified client certificate reaches the handler as [`PeerCertificate`].
pub async fn serve<H, F, Fut, B>(
    host: Arc<H>,
    listener: glommio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: F,
    failed: fn() -> Response<B>,
) where
    H: Host,
    F: Fn(Arc<H>, Request<Incoming>) -> Fut + Clone + 'static,
    Fut: Future<Output = Response<B>> + 'static,
    B: http_body::Body<Data = Bytes> + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let active = Rc::new(Cell::new(0usize));
    let refusing = Rc::new(Cell::new(0usize));
    let cap = host.limits().connections_per_executor;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stopping(&*host).await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) if active.get() >= cap => {
                host.metrics()
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                // Answered and closed on the side, each within 2 s; beyond REFUSING_MAX
                // answers in flight, closed at once: a flood of refused clients holds nothing.
                if refusing.get() < REFUSING_MAX {
                    refusing.set(refusing.get() + 1);
                    let refusing = refusing.clone();
                    glommio::spawn_local(async move {
                        refuse(stream).await;
                        refusing.set(refusing.get() - 1);
                    })
                    .detach();
                }
            }
            Some(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                active.set(active.get() + 1);
                let (host, active, handler) = (host.clone(), active.clone(), handler.clone());
                let tls = tls.clone();
                glommio::spawn_local(async move {
                    let peer = stream.peer_addr().ok();
                    crate::guard::caught(
                        || format!("HTTP/1.1 connection from {peer:?}"),
                        connection(host, stream, tls, handler, failed),
                    )
                    .await;
                    active.set(active.get() - 1);
                })
                .detach();
            }
            Some(Err(e)) => {
                // Out of descriptors (EMFILE/ENFILE) or the like: the connections we hold time
                // out and free theirs, so accepting resumes.
                tracing::warn!("accept: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(DRAIN_S_MAX);
    while active.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

/// Tells a client over the connection limit to come back later, then closes (within 2 s,
/// whatever the client does).
async fn refuse(mut stream: glommio::net::TcpStream) {
    use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = json!({"error": {
        "code": "SlowDown",
        "message": "this server holds as many connections as it takes; retry later",
    }})
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = within(Duration::from_secs(2), async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown(std::net::Shutdown::Write).await;
        // Read what the client sent until it closes: closing with unread bytes would reset
        // the connection and could destroy the answer before the client reads it.
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// What a connection is doing, for its timeouts: shared by the socket wrapper (which sees
/// bytes move), the service (which sees requests start and end) and the watchdog.
#[derive(Default)]
struct Activity {
    /// When a byte last moved either way.
    last_progress: Cell<Option<Instant>>,
    /// When the first byte of headers not yet handed to a handler arrived.
    headers_since: Cell<Option<Instant>>,
    /// Handlers running (hyper runs one at a time per HTTP/1.1 connection).
    handling: Cell<usize>,
    /// Response bodies still being sent. Bytes that arrive meanwhile (a pipelined request) do
    /// not start the header clock: hyper reads that request only after this response.
    responding: Cell<usize>,
}

impl Activity {
    fn count(&self, work: Work) -> &Cell<usize> {
        match work {
            Work::Handling => &self.handling,
            Work::Responding => &self.responding,
        }
    }

    fn read(&self, n: usize) {
        if n > 0 {
            let now = Instant::now();
            self.last_progress.set(Some(now));
            if self.handling.get() == 0
                && self.responding.get() == 0
                && self.headers_since.get().is_none()
            {
                self.headers_since.set(Some(now));
            }
        }
    }

    fn wrote(&self, n: usize) {
        if n > 0 {
            self.last_progress.set(Some(Instant::now()));
        }
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, limits: &Limits, started: Instant, now: Instant) -> Option<&'static str> {
        if self.handling.get() > 0 {
            // The handler bounds its own waits (body reads time out).
            return None;
        }
        if let Some(t) = self.headers_since.get() {
            if now.duration_since(t) >= limits.header_read {
                return Some("its request headers took too long");
            }
        }
        let last = self.last_progress.get().unwrap_or(started);
        (now.duration_since(last) >= limits.idle).then_some("it was idle too long")
    }
}

/// The socket, counting what moves through it.
struct Watched {
    stream: glommio::net::TcpStream,
    activity: Rc<Activity>,
}

impl futures_lite::AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.activity.read(n);
        }
        r
    }
}

impl futures_lite::AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.activity.wrote(n);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}

impl std::os::fd::AsRawFd for Watched {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }
}

/// What a [`Busy`] guard counts: a handler running, or a response body being sent.
#[derive(Clone, Copy)]
enum Work {
    Handling,
    Responding,
}

/// Counts one piece of [`Work`] on a connection for its timeouts until dropped (also when a
/// handler panics or a body is dropped unfinished); its end counts as progress.
struct Busy(Rc<Activity>, Work);

impl Busy {
    fn begin(a: &Rc<Activity>, work: Work) -> Busy {
        if let Work::Handling = work {
            // Headers are complete once a handler runs.
            a.headers_since.set(None);
        }
        let c = a.count(work);
        c.set(c.get() + 1);
        Busy(a.clone(), work)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let c = self.0.count(self.1);
        c.set(c.get() - 1);
        self.0.last_progress.set(Some(Instant::now()));
    }
}

/// A response body, counted as [`Work::Responding`] while it lives.
struct Sending<B> {
    inner: B,
    _responding: Busy,
}

impl<B: http_body::Body + Unpin> http_body::Body for Sending<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves when the connection has broken one of its limits.
async fn watchdog(limits: Limits, activity: Rc<Activity>) -> &'static str {
    let started = Instant::now();
    let tick = limits
        .header_read
        .min(limits.idle)
        .checked_div(4)
        .unwrap_or_default()
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        glommio::timer::sleep(tick).await;
        if let Some(why) = activity.expired(&limits, started, Instant::now()) {
            return why;
        }
    }
}

async fn connection<H, F, Fut, B>(
    host: Arc<H>,
    stream: glommio::net::TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: F,
    failed: fn() -> Response<B>,
) where
    H: Host,
    F: Fn(Arc<H>, Request<Incoming>) -> Fut + 'static,
    Fut: Future<Output = Response<B>> + 'static,
    B: http_body::Body<Data = Bytes> + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Rc::new(Activity::default());
    let limits = *host.limits();
    let io = Watched {
        stream,
        activity: activity.clone(),
    };
    let Some(tls) = tls else {
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(
                crate::compat::HyperIo(io),
                service(host.clone(), activity.clone(), None, handler, failed),
            );
        return drive(host, activity, limits, conn).await;
    };
    // The handshake counts as reading headers: a client that stalls in it is closed.
    activity.headers_since.set(Some(Instant::now()));
    let accepted = within(
        limits.header_read,
        futures_rustls::TlsAcceptor::from(tls).accept(io),
    )
    .await;
    let io = match accepted {
        Some(Ok(io)) => io,
        Some(Err(e)) => {
            host.metrics()
                .tls_handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("TLS handshake failed: {e}");
            return;
        }
        None => {
            host.metrics()
                .connections_timed_out
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let cert = io
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| PeerCertificate(Arc::from(c.as_ref())));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(
            crate::compat::HyperStream(io),
            service(host.clone(), activity.clone(), cert, handler, failed),
        );
    drive(host, activity, limits, conn).await
}

/// The service serving one connection's requests with `handler`.
fn service<H, F, Fut, B>(
    host: Arc<H>,
    activity: Rc<Activity>,
    cert: Option<PeerCertificate>,
    handler: F,
    failed: fn() -> Response<B>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Sending<B>>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response<Sending<B>>, std::convert::Infallible>>,
>
where
    H: Host,
    F: Fn(Arc<H>, Request<Incoming>) -> Fut + 'static,
    Fut: Future<Output = Response<B>> + 'static,
    B: http_body::Body<Data = Bytes> + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    hyper::service::service_fn(move |mut req: Request<Incoming>| {
        if let Some(c) = &cert {
            req.extensions_mut().insert(c.clone());
        }
        let handling = Busy::begin(&activity, Work::Handling);
        let a3 = activity.clone();
        // Named only if the handler panics: no formatting on every request.
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let fut = handler(host.clone(), req);
        async move {
            let resp = crate::guard::caught(|| format!("{method} {uri}"), fut).await;
            let resp = resp.unwrap_or_else(|| {
                let mut r = failed();
                r.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                r
            });
            // The body counts as being sent from before the handler's count ends, so no
            // moment goes uncounted.
            let resp = resp.map(|inner| Sending {
                inner,
                _responding: Busy::begin(&a3, Work::Responding),
            });
            drop(handling);
            Ok::<_, std::convert::Infallible>(resp)
        }
    })
}

/// Runs one connection to its end: finished, the host stopping (gracefully), or a limit broken.
async fn drive<H, I, S, B>(
    host: Arc<H>,
    activity: Rc<Activity>,
    limits: Limits,
    conn: hyper::server::conn::http1::Connection<I, S>,
) where
    H: Host,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Sending<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(conn);
    enum End {
        Finished,
        Stopping,
        Expired(&'static str),
    }
    let end = futures_lite::future::or(
        async {
            let _ = conn.as_mut().await;
            End::Finished
        },
        futures_lite::future::or(
            async {
                stopping(&*host).await;
                End::Stopping
            },
            async { End::Expired(watchdog(limits, activity.clone()).await) },
        ),
    )
    .await;
    match end {
        End::Finished => {}
        End::Stopping => {
            // Requests in flight finish; idle and stalled connections still time out.
            conn.as_mut().graceful_shutdown();
            futures_lite::future::or(
                async {
                    let _ = conn.as_mut().await;
                },
                async {
                    watchdog(limits, activity.clone()).await;
                },
            )
            .await;
        }
        End::Expired(why) => {
            host.metrics()
                .connections_timed_out
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("closing an HTTP/1.1 connection: {why}");
        }
    }
}

/// The credentials of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive and followed by one or more spaces (RFC 9110 §11.1, §11.4).
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_expires_only_while_no_handler_runs() {
        let limits = Limits {
            connections_per_executor: 1,
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            body_idle: Duration::from_secs(30),
        };
        let t0 = Instant::now();
        let a = Rc::new(Activity::default());
        // Idle from the start: closed after `idle`.
        assert_eq!(a.expired(&limits, t0, t0 + Duration::from_secs(59)), None);
        assert!(a
            .expired(&limits, t0, t0 + Duration::from_secs(60))
            .is_some());
        // The first byte of a request starts the header clock, whatever trickles in after.
        a.read(1);
        let first = a.headers_since.get().unwrap();
        a.read(1);
        assert_eq!(a.headers_since.get(), Some(first));
        assert!(a
            .expired(&limits, t0, first + Duration::from_secs(10))
            .is_some_and(|w| w.contains("headers")));
        // A handler running: never expired by the connection (it bounds its own waits).
        let h = Busy::begin(&a, Work::Handling);
        assert_eq!(a.headers_since.get(), None);
        assert_eq!(
            a.expired(&limits, t0, first + Duration::from_secs(3600)),
            None
        );
        a.read(100); // body bytes read by the handler do not start a header clock
        assert_eq!(a.headers_since.get(), None);
        drop(h);
        // After the response, idle counts from the handler's end.
        let end = a.last_progress.get().unwrap();
        assert_eq!(a.expired(&limits, t0, end + Duration::from_secs(59)), None);
        assert!(a
            .expired(&limits, t0, end + Duration::from_secs(60))
            .is_some());
        // A response being written keeps it alive.
        a.wrote(10);
        let w = a.last_progress.get().unwrap();
        assert_eq!(a.expired(&limits, t0, w + Duration::from_secs(59)), None);
        // While a response body is out, a pipelined request's bytes start no header clock (hyper
        // reads it after the response); a client that stops reading still hits the idle limit.
        let r = Busy::begin(&a, Work::Responding);
        a.read(50);
        assert_eq!(a.headers_since.get(), None);
        let last = a.last_progress.get().unwrap();
        assert_eq!(a.expired(&limits, t0, last + Duration::from_secs(59)), None);
        assert!(a
            .expired(&limits, t0, last + Duration::from_secs(60))
            .is_some());
        drop(r);
        assert_eq!(a.responding.get(), 0);
    }
}

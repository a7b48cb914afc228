//! HTTP/3: the `h3` crate on quinn (tokio). One QUIC connection carries every request, made
//! on first use and again whenever it is lost. With 0-RTT on, a new connection resumes the TLS
//! session where a ticket is held and GET/HEAD go out at once; any other request waits until
//! the handshake has completed (and the server accepted the early data).

use crate::body::{Body, BodyKind};
use crate::error::{Error, Result};
use bytes::{Buf as _, Bytes};
use futures_util::StreamExt as _;
use h3::client::{RequestStream, SendRequest};
use http::header::{self, HeaderValue};
use http::Method;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};

/// Largest response header section accepted.
const FIELD_SECTION_BYTES_MAX: u64 = 64 * 1024;

pub(crate) struct H3 {
    authority: String,
    host: String,
    port: u16,
    config: quinn::ClientConfig,
    zero_rtt: bool,
    state: Mutex<State>,
    accepted: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    live: Option<Live>,
    /// The endpoints of connections given up for new requests (lost, or told to go away) whose
    /// answers may still be read: `disconnect` closes them too, so a server finishing those
    /// answers is told the client is gone instead of waiting out its idle timeout.
    retired: Vec<quinn::Endpoint>,
}

impl State {
    /// Stops giving out the live connection, keeping its endpoint to close later.
    fn retire(&mut self) {
        if let Some(l) = self.live.take() {
            self.retired.retain(|e| e.open_connections() > 0);
            self.retired.push(l.endpoint);
        }
    }
}

/// How long `disconnect` waits for a closed connection to drain.
const CLOSE_WAIT_MAX: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Live {
    send: SendRequest<h3_quinn::OpenStreams, Bytes>,
    quic: quinn::Connection,
    /// The connection's own UDP endpoint, to wait on when closing.
    endpoint: quinn::Endpoint,
    /// For a connection opened with 0-RTT: whether the server accepted it, once known.
    early: Option<watch::Receiver<Option<bool>>>,
}

impl Live {
    fn usable(&self) -> bool {
        self.quic.close_reason().is_none()
            && self
                .early
                .as_ref()
                .is_none_or(|e| *e.borrow() != Some(false))
    }
}

/// The receiving half of a response.
pub(crate) struct RecvBody {
    stream: RequestStream<h3_quinn::RecvStream, Bytes>,
    /// h3 closes a connection when its last `SendRequest` goes: a body being read keeps its
    /// connection open even after the client has moved on to a new one.
    _conn: SendRequest<h3_quinn::OpenStreams, Bytes>,
}

impl RecvBody {
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.stream.recv_data().await {
                Ok(None) => return Ok(None),
                Ok(Some(mut b)) => {
                    let b = b.copy_to_bytes(b.remaining());
                    if !b.is_empty() {
                        return Ok(Some(b));
                    }
                }
                Err(e) => return Err(Error::Transport(format!("HTTP/3 response body: {e}"))),
            }
        }
    }
}

/// How one attempt failed: `retry` where nothing reached the server's routes for sure (the
/// connection was gone or its early data refused), so an idempotent request may go again.
struct Failed {
    err: Error,
    retry: bool,
}

impl H3 {
    pub(crate) fn new(
        authority: &http::uri::Authority,
        roots: rustls::RootCertStore,
        zero_rtt: bool,
    ) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        tls.enable_early_data = zero_rtt;
        let q = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(q));
        let mut t = quinn::TransportConfig::default();
        // Windows sized for large objects: 4 MiB per stream, 16 MiB per connection.
        t.stream_receive_window((4u32 << 20).into())
            .receive_window((16u32 << 20).into())
            .send_window(16 << 20)
            .keep_alive_interval(Some(Duration::from_secs(10)))
            .max_idle_timeout(Some(
                Duration::from_secs(60)
                    .try_into()
                    .expect("a valid idle timeout"),
            ));
        config.transport_config(Arc::new(t));
        Ok(H3 {
            authority: authority.to_string(),
            host: authority
                .host()
                .trim_matches(|c| c == '[' || c == ']')
                .to_string(),
            port: authority.port_u16().unwrap_or(9080),
            config,
            zero_rtt,
            state: Mutex::new(State::default()),
            accepted: Arc::new(AtomicU64::new(0)),
        })
    }

    pub(crate) fn zero_rtt_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub(crate) async fn disconnect(&self) {
        let mut st = self.state.lock().await;
        st.retire();
        let endpoints = std::mem::take(&mut st.retired);
        for e in &endpoints {
            e.close(0x100u32.into(), b"");
        }
        // Until the server has been told (the close sent, the draining period over), so a
        // client that exits next does not leave the server waiting out its idle timeout for
        // acknowledgements that will never come.
        let idle = futures_util::future::join_all(endpoints.iter().map(|e| e.wait_idle()));
        let _ = tokio::time::timeout(CLOSE_WAIT_MAX, idle).await;
    }

    /// The shared connection, made (once, whoever asks first) if there is none usable.
    async fn live(&self) -> Result<Live> {
        let mut st = self.state.lock().await;
        if let Some(l) = &st.live {
            if l.usable() {
                return Ok(l.clone());
            }
        }
        st.retire();
        let l = self.connect().await?;
        st.live = Some(l.clone());
        Ok(l)
    }

    async fn forget(&self, l: &Live) {
        let mut st = self.state.lock().await;
        if st
            .live
            .as_ref()
            .is_some_and(|x| x.quic.stable_id() == l.quic.stable_id())
        {
            st.retire();
        }
    }

    async fn connect(&self) -> Result<Live> {
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| Error::Transport(format!("resolving {}: {e}", self.host)))?
            .next()
            .ok_or_else(|| Error::Transport(format!("{} has no address", self.host)))?;
        // A socket of its own for each connection: a connection still finishing its answers
        // (after the server's GOAWAY, say) keeps its socket, and the new one's handshake, even
        // one the server refuses, never touches it.
        let bind: std::net::SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("an address")
        } else {
            "0.0.0.0:0".parse().expect("an address")
        };
        let ep = quinn::Endpoint::client(bind)
            .map_err(|e| Error::Transport(format!("a UDP socket: {e}")))?;
        let connecting = ep
            .connect_with(self.config.clone(), addr, &self.host)
            .map_err(|e| Error::Transport(format!("QUIC to {addr}: {e}")))?;
        let failed = |e: quinn::ConnectionError| Error::Transport(format!("QUIC to {addr}: {e}"));
        let (quic, early) = if self.zero_rtt {
            match connecting.into_0rtt() {
                Ok((c, accepted)) => {
                    let (tx, rx) = watch::channel(None);
                    let count = self.accepted.clone();
                    tokio::spawn(async move {
                        let ok = accepted.await;
                        if ok {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = tx.send(Some(ok));
                    });
                    (c, Some(rx))
                }
                Err(c) => (c.await.map_err(failed)?, None),
            }
        } else {
            (connecting.await.map_err(failed)?, None)
        };
        let (mut driver, send) = h3::client::builder()
            .max_field_section_size(FIELD_SECTION_BYTES_MAX)
            .build::<_, _, Bytes>(h3_quinn::Connection::new(quic.clone()))
            .await
            .map_err(|e| Error::Transport(format!("HTTP/3 to {addr}: {e}")))?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Live {
            send,
            quic,
            endpoint: ep,
            early,
        })
    }

    /// A connection on which `idempotent` (or not) may be sent now: one whose early data the
    /// server accepted, or one past its handshake.
    async fn ready(&self, idempotent: bool) -> Result<Live> {
        for _ in 0..3 {
            let l = self.live().await?;
            let Some(early) = &l.early else {
                return Ok(l);
            };
            if idempotent {
                return Ok(l);
            }
            let mut rx = early.clone();
            let ok = rx
                .wait_for(|v| v.is_some())
                .await
                .map(|v| *v == Some(true))
                .unwrap_or(false);
            if ok {
                return Ok(l);
            }
            // Refused early data takes h3's own streams with it: start again.
            self.forget(&l).await;
        }
        Err(Error::Transport(
            "the server refused 0-RTT three times over".into(),
        ))
    }

    /// Sends `req`, and returns the answer with its body still to be read.
    pub(crate) async fn send(&self, req: http::Request<Body>) -> Result<http::Response<RecvBody>> {
        let idempotent = matches!(*req.method(), Method::GET | Method::HEAD);
        let again = if idempotent {
            req.body().replayable()
        } else {
            None
        };
        let (parts, body) = req.into_parts();
        match self.send_once(&parts, body, idempotent).await {
            Ok(r) => Ok(r),
            Err(f) => match (f.retry, again) {
                (true, Some(body)) => self
                    .send_once(&parts, body, idempotent)
                    .await
                    .map_err(|f| f.err),
                _ => Err(f.err),
            },
        }
    }

    async fn send_once(
        &self,
        parts: &http::request::Parts,
        body: Body,
        idempotent: bool,
    ) -> std::result::Result<http::Response<RecvBody>, Failed> {
        let fatal = |err| Failed { err, retry: false };
        let uri = format!("https://{}{}", self.authority, parts.uri);
        let mut req = http::Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(())
            .map_err(|e| fatal(Error::Invalid(e.to_string())))?;
        *req.headers_mut() = parts.headers.clone();
        if let Some(n) = body.len() {
            if n > 0 || parts.method == Method::PUT || parts.method == Method::PATCH {
                req.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        let lost = |l: &Live, e: &dyn std::fmt::Display, what: &str| Failed {
            err: Error::Transport(format!("HTTP/3 {what}: {e}")),
            retry: !l.usable(),
        };
        // Opening the request's stream fails when the connection is gone or going away (the
        // server sent GOAWAY): nothing was sent, so any request goes again on a new connection.
        let mut tries = 0;
        let (l, mut stream) = loop {
            let l = self.ready(idempotent).await.map_err(fatal)?;
            let mut send = l.send.clone();
            match send.send_request(req.clone()).await {
                Ok(s) => break (l, s),
                Err(e) => {
                    self.forget(&l).await;
                    tries += 1;
                    if tries == 3 {
                        return Err(fatal(Error::Transport(format!("HTTP/3 request: {e}"))));
                    }
                }
            }
        };
        let sent: std::result::Result<(), SendError> = async {
            match body.0 {
                BodyKind::Empty => {}
                BodyKind::Full(b) => {
                    if !b.is_empty() {
                        stream.send_data(b).await.map_err(SendError::Stream)?
                    }
                }
                BodyKind::Stream { stream: mut s, .. } => {
                    while let Some(c) = s.next().await {
                        let c = c.map_err(SendError::Body)?;
                        if !c.is_empty() {
                            stream.send_data(c).await.map_err(SendError::Stream)?;
                        }
                    }
                }
            }
            stream.finish().await.map_err(SendError::Stream)
        }
        .await;
        match sent {
            Ok(()) => {}
            Err(SendError::Body(e)) => {
                stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                return Err(fatal(Error::Invalid(format!(
                    "reading the body to send: {e}"
                ))));
            }
            // The server may have answered before taking the whole body (an error, say): the
            // answer is read below, and if there is none the send error stands.
            Err(SendError::Stream(e)) => {
                let err = lost(&l, &e, "request body");
                match tokio::time::timeout(Duration::from_secs(5), stream.recv_response()).await {
                    Ok(Ok(r)) => return Ok(finish(r, stream, &l)),
                    _ => return Err(err),
                }
            }
        }
        match stream.recv_response().await {
            Ok(r) => Ok(finish(r, stream, &l)),
            Err(e) => {
                let f = lost(&l, &e, "response");
                if f.retry {
                    self.forget(&l).await;
                }
                Err(f)
            }
        }
    }
}

enum SendError {
    Body(std::io::Error),
    Stream(h3::error::StreamError),
}

/// The answer `r` with its body, the receiving half of `stream`.
fn finish(
    r: http::Response<()>,
    stream: RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    l: &Live,
) -> http::Response<RecvBody> {
    let (_send, recv) = stream.split();
    r.map(|()| RecvBody {
        stream: recv,
        _conn: l.send.clone(),
    })
}

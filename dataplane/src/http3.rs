//! The native API over HTTP/3: the `h3` crate on the glommio QUIC driver (`crate::quic`, via
//! `crate::h3conn`), one endpoint per executor on UDP at the `--http` port (SO_REUSEPORT, as the
//! TCP listeners). Each request goes through the same `http::handle` as HTTP/1.1: same routes,
//! credentials and errors. Bodies stream both ways: the request body is read frame by frame as
//! the route consumes it, the response body is sent piece by piece as it is produced.

use crate::ctx::{wait_stopping, Node};
use crate::http::handle;
use crate::web::Front;
use crate::web::H3Body;
use crate::web::ReqBody;
use bytes::Bytes;
use h3::server::RequestStream;
use http::header::{self, HeaderValue};
use http::Request;
use http_body::Body;
use http_body_util::BodyExt;
use ostore_transport::http3::H3Conn;
use ostore_transport::quic;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Serves HTTP/3 on `ep` until the node stops; then refuses new connections, tells each open
/// one to send no more requests (GOAWAY), lets the requests in flight finish (for as long as
/// HTTP/1.1 gets, `conn::DRAIN_S_MAX`), and closes the connections with `H3_NO_ERROR`.
pub async fn serve(front: Arc<Front>, ep: quic::Endpoint) {
    ep.limit_connections(CONNECTIONS_PER_EXECUTOR_MAX);
    let in_flight = Rc::new(Cell::new(0usize));
    let accept = async {
        while let Some(conn) = ep.accept().await {
            let front = front.clone();
            let in_flight = in_flight.clone();
            glommio::spawn_local(async move {
                let peer = conn.remote_address();
                ostore_server::guard::caught(
                    || format!("HTTP/3 connection from {peer:?}"),
                    connection(front, conn, in_flight),
                )
                .await;
            })
            .detach();
        }
    };
    futures_lite::future::or(accept, wait_stopping(&front.node)).await;
    ep.refuse_new();
    let deadline = Instant::now() + Duration::from_secs(ostore_server::conn::DRAIN_S_MAX);
    while in_flight.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    ep.close_with(H3_NO_ERROR, b"");
}

/// HTTP/3 connections one executor holds at most; more are refused (CONNECTION_REFUSED), so a
/// flood of handshakes cannot take the executor's memory. Each may carry 256 requests at once.
const CONNECTIONS_PER_EXECUTOR_MAX: usize = 8192;

/// HTTP/3's "no error" code, for closing a connection that did nothing wrong.
const H3_NO_ERROR: u32 = 0x100;

/// Largest request header section accepted (h3's default is unlimited).
const FIELD_SECTION_BYTES_MAX: u64 = 64 * 1024;

/// Serves one connection's requests. It starts before the handshake completes, so that a
/// client resuming a session can send requests in 0-RTT; `early_request_may_run` decides what
/// such early requests may do. Once the node stops, it sends GOAWAY and takes no new request.
async fn connection(front: Arc<Front>, conn: quic::Connection, in_flight: Rc<Cell<usize>>) {
    let node = &front.node;
    let quic = conn.clone();
    let mut h = match h3::server::builder()
        .max_field_section_size(FIELD_SECTION_BYTES_MAX)
        .build::<_, Bytes>(H3Conn(conn))
        .await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!("HTTP/3 connection setup: {e}");
            return;
        }
    };
    let mut stopping = false;
    loop {
        let next = if stopping {
            Some(h.accept().await)
        } else {
            futures_lite::future::or(async { Some(h.accept().await) }, async {
                wait_stopping(node).await;
                None
            })
            .await
        };
        match next {
            None => {
                // GOAWAY: requests already sent are answered, no new ones are taken.
                stopping = true;
                if let Err(e) = h.shutdown(1).await {
                    tracing::debug!("HTTP/3 GOAWAY: {e}");
                    break;
                }
            }
            Some(Ok(Some(resolver))) if stopping => {
                // h3 lets one stream past its own GOAWAY (it rejects only IDs above the one it
                // sent, where RFC 9114 says that ID and above go unprocessed), and the client
                // has already failed that request on reading the GOAWAY: serving it would keep
                // the stop waiting on an answer nobody reads. Everything after GOAWAY is
                // rejected, as the client expects.
                reject(resolver);
            }
            Some(Ok(Some(resolver))) => {
                let front = front.clone();
                let quic = quic.clone();
                let in_flight = in_flight.clone();
                in_flight.set(in_flight.get() + 1);
                glommio::spawn_local(async move {
                    let limit = front.limits.header_read;
                    ostore_server::guard::caught(|| "an HTTP/3 request".to_string(), async {
                        // A stream whose headers do not arrive in time is dropped (reset).
                        let headers =
                            ostore_server::conn::within(limit, resolver.resolve_request()).await;
                        match headers {
                            Some(Ok((req, stream))) => {
                                if early_request_may_run(&front.node, &quic, req.method()).await {
                                    request(&front, req, stream, &quic).await
                                }
                            }
                            Some(Err(e)) => tracing::debug!("HTTP/3 request headers: {e}"),
                            None => tracing::debug!("HTTP/3 request headers: timed out"),
                        }
                    })
                    .await;
                    in_flight.set(in_flight.get() - 1);
                })
                .detach();
            }
            Some(Ok(None)) => break,
            Some(Err(e)) => {
                if !e.is_h3_no_error() {
                    tracing::debug!("HTTP/3 connection: {e}");
                }
                break;
            }
        }
    }
}

/// Refuses a request stream unprocessed (`H3_REQUEST_REJECTED`): the client may retry it on
/// another connection.
fn reject(resolver: h3::server::RequestResolver<H3Conn, Bytes>) {
    use h3::quic::{RecvStream as _, SendStream as _};
    let code = h3::error::Code::H3_REQUEST_REJECTED.value();
    let mut s = resolver.frame_stream.into_inner();
    s.stop_sending(code);
    s.reset(code);
}

/// Whether a request may run now, waiting first where it must. A request seen before the
/// handshake completed came as 0-RTT data, which an attacker can replay (though not read the
/// answer to). GET and HEAD change nothing and run at once; anything else waits until the
/// handshake completes, which a replayed flight never does (so it never runs), and which for
/// the real client costs one round trip, as without 0-RTT.
async fn early_request_may_run(node: &Node, conn: &quic::Connection, m: &http::Method) -> bool {
    use std::sync::atomic::Ordering;
    if conn.is_established() {
        return true;
    }
    node.metrics
        .h3_early_requests
        .fetch_add(1, Ordering::Relaxed);
    if is_safe(m) {
        return true;
    }
    node.metrics
        .h3_early_deferred
        .fetch_add(1, Ordering::Relaxed);
    conn.established().await.is_ok()
}

/// The methods 0-RTT data may carry: those that change nothing.
fn is_safe(m: &http::Method) -> bool {
    *m == http::Method::GET || *m == http::Method::HEAD
}

/// Headers HTTP/3 forbids (connection-specific, RFC 9114 section 4.2).
const CONNECTION_SPECIFIC: [header::HeaderName; 4] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HeaderName::from_static("keep-alive"),
];

async fn request(
    front: &Front,
    req: Request<()>,
    stream: RequestStream<ostore_transport::http3::H3Bidi<Bytes>, Bytes>,
    quic: &quic::Connection,
) {
    front
        .node
        .metrics
        .h3_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (mut send, recv) = stream.split();
    let (parts, ()) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let head = parts.method == http::Method::HEAD;
    let body = H3Body {
        stream: recv,
        declared,
        seen: 0,
    };
    let req = Request::from_parts(parts, ReqBody::H3(body));
    let resp = handle(front, req).await;
    let (mut parts, mut body) = resp.into_parts();
    for h in &CONNECTION_SPECIFIC {
        parts.headers.remove(h);
    }
    // The length of what follows, where the response has a body: not for HEAD (whose route
    // sets the length it would have), 1xx, 204 or 304.
    let status = parts.status;
    let bodyless = head
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED;
    if let (false, Some(n)) = (bodyless, body.size_hint().exact()) {
        if !parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    if let Err(e) = send
        .send_response(http::Response::from_parts(parts, ()))
        .await
    {
        tracing::debug!("HTTP/3 response headers: {e}");
        return;
    }
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    if d.is_empty() {
                        continue;
                    }
                    // A client that keeps the connection alive but grants no stream credit
                    // holds nothing for longer than the idle time.
                    let idle = front.limits.idle;
                    let sent = ostore_server::conn::within(idle, send.send_data(d)).await;
                    match sent {
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            tracing::debug!("HTTP/3 response body: {e}");
                            return;
                        }
                        None => {
                            tracing::debug!(
                                "HTTP/3 response body: the client read nothing for {idle:?}"
                            );
                            send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                // The status is out already: end the stream abruptly so the client cannot take
                // a cut-short body for a whole one.
                tracing::warn!("HTTP/3 response body failed midway: {e}");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        }
    }
    if let Err(e) = send.finish().await {
        tracing::debug!("HTTP/3 finishing a response: {e}");
        return;
    }
    // The request counts as in flight until the client has the whole answer: a stopping server
    // closes its connections once nothing is in flight, and closing drops what is undelivered.
    quic.send_settled(ostore_transport::http3::quic_id(send.send_id()))
        .await;
}

/// Where the client APIs' certificate and key come from (`--tls-cert`, `--tls-key`, PEM), and
/// whether plain HTTP off loopback was asked for (`--insecure-http`).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub insecure_http: bool,
}

impl TlsFiles {
    /// The same files named by absolute paths.
    pub fn absolute(self) -> anyhow::Result<TlsFiles> {
        let abs = |p: Option<std::path::PathBuf>| {
            p.map(|p| ostore_server::process::absolute(&p)).transpose()
        };
        Ok(TlsFiles {
            cert: abs(self.cert)?,
            key: abs(self.key)?,
            insecure_http: self.insecure_http,
        })
    }

    /// The TLS configuration of the HTTP/1.1 listeners (native API and S3) when a certificate
    /// was given: TLS 1.3 and 1.2 (what S3 tools and curl speak), ALPN `http/1.1`. Without one,
    /// `None` — refused unless every listener is on loopback or `--insecure-http` was given, so
    /// that no credential crosses a network in the clear by accident.
    pub fn https(
        &self,
        http: std::net::SocketAddr,
        s3: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        use anyhow::Context as _;
        let listeners: Vec<std::net::SocketAddr> = std::iter::once(http).chain(s3).collect();
        let (cert, key) = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => {
                let exposed: Vec<String> = listeners
                    .iter()
                    .filter(|a| !a.ip().is_loopback())
                    .map(|a| a.to_string())
                    .collect();
                if !exposed.is_empty() && !self.insecure_http {
                    anyhow::bail!(
                        "{} is not a loopback address and there is no certificate: clients' \
                         credentials would cross the network in the clear. Give \
                         --tls-cert/--tls-key (the client APIs are then served over HTTPS), or \
                         --insecure-http to serve plain HTTP anyway",
                        exposed.join(", ")
                    );
                }
                if !exposed.is_empty() {
                    tracing::warn!(
                        "--insecure-http: serving {} in the clear; credentials can be read off \
                         the network",
                        exposed.join(", ")
                    );
                }
                return Ok(None);
            }
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        let (chain, key_der) = read_pem(cert, key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .with_context(|| format!("the certificate {}", cert.display()))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(cfg)))
    }
}

/// A certificate chain and its key, from PEM files.
fn read_pem(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<(
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
)> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificate {}", cert.display()))?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the key {}", key.display()))?;
    Ok((chain, key_der))
}

/// The HTTP/3 server configuration and the certificate's path: from `--tls-cert`/`--tls-key`,
/// or, for `ostore dev` (`dev_dir`), a self-signed certificate kept in `DIR/tls` (made on the
/// first start, for `localhost` and the loopback and `--http` addresses) that clients can pin.
/// `None` where there is neither (a cluster node started without a certificate).
pub fn server_setup(
    files: &TlsFiles,
    dev_dir: Option<&std::path::Path>,
    http: std::net::SocketAddr,
) -> anyhow::Result<Option<(Arc<quinn_proto::ServerConfig>, std::path::PathBuf)>> {
    use anyhow::Context as _;
    let (cert, key) = match (&files.cert, &files.key, dev_dir) {
        (Some(c), Some(k), _) => (c.clone(), k.clone()),
        (Some(_), None, _) | (None, Some(_), _) => {
            anyhow::bail!("--tls-cert and --tls-key go together")
        }
        (None, None, None) => return Ok(None),
        (None, None, Some(dir)) => {
            let dir = dir.join("tls");
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !cert.exists() || !key.exists() {
                self_signed(&dir, &cert, &key, http)?;
            }
            (cert, key)
        }
    };
    let (chain, key_der) = read_pem(&cert, &key)?;
    let config = ostore_transport::http3::server_config(chain, key_der)
        .with_context(|| format!("the certificate {}", cert.display()))?;
    Ok(Some((config, cert)))
}

fn self_signed(
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    http: std::net::SocketAddr,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !http.ip().is_unspecified() && !http.ip().is_loopback() {
        names.push(http.ip().to_string());
    }
    let c = rcgen::generate_simple_self_signed(names)?;
    std::fs::create_dir_all(dir)?;
    let mut k = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(key)?;
    k.write_all(c.key_pair.serialize_pem().as_bytes())?;
    k.sync_all()?;
    std::fs::write(cert, c.cert.pem())?;
    Ok(())
}

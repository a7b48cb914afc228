//! The `h3` crate's QUIC traits over ostore's own QUIC driver (`crate::quic`: quinn-proto
//! driven by a glommio executor), so HTTP/3 runs on the executors exactly as the shard
//! protocol between nodes does. Nothing here is `Send`: a connection lives on one executor.

use crate::quic::{self, StreamError};
use bytes::{Buf, Bytes};
use h3::quic::{ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use quinn_proto::{ConnectionError, Dir};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// An HTTP/3 view of a QUIC connection; cheap to clone (h3 keeps one to open streams).
#[derive(Clone)]
pub struct H3Conn(pub quic::Connection);

fn connection_error(e: &ConnectionError) -> ConnectionErrorIncoming {
    match e {
        ConnectionError::ApplicationClosed(c) => ConnectionErrorIncoming::ApplicationClose {
            error_code: c.error_code.into_inner(),
        },
        ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        other => ConnectionErrorIncoming::Undefined(Arc::new(other.clone())),
    }
}

fn stream_error(e: StreamError) -> StreamErrorIncoming {
    match e {
        StreamError::Code(error_code) => StreamErrorIncoming::StreamTerminated { error_code },
        StreamError::Connection(c) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(&c),
        },
        StreamError::Other(m) => StreamErrorIncoming::Unknown(m.into()),
    }
}

fn accept_error(e: StreamError) -> ConnectionErrorIncoming {
    match e {
        StreamError::Connection(c) => connection_error(&c),
        other => ConnectionErrorIncoming::InternalError(other.to_string()),
    }
}

fn h3_id(id: quinn_proto::StreamId) -> StreamId {
    StreamId::try_from(u64::from(id)).expect("QUIC stream ids are varints")
}

/// The QUIC stream behind an h3 stream id.
pub fn quic_id(id: StreamId) -> quinn_proto::StreamId {
    quinn_proto::VarInt::from_u64(id.into_inner())
        .expect("h3 stream ids are varints")
        .into()
}

impl H3Conn {
    fn bidi<B: Buf>(&self, id: quinn_proto::StreamId) -> H3Bidi<B> {
        H3Bidi {
            send: H3Send::new(self.0.send_stream(id)),
            recv: H3Recv(self.0.recv_stream(id)),
        }
    }
}

impl<B: Buf> h3::quic::OpenStreams<B> for H3Conn {
    type BidiStream = H3Bidi<B>;
    type SendStream = H3Send<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        let id = ready!(self.0.poll_open(cx, Dir::Bi)).map_err(stream_error)?;
        Poll::Ready(Ok(self.bidi(id)))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        let id = ready!(self.0.poll_open(cx, Dir::Uni)).map_err(stream_error)?;
        Poll::Ready(Ok(H3Send::new(self.0.send_stream(id))))
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        self.0.close_with(code.value(), reason);
    }
}

impl<B: Buf> h3::quic::Connection<B> for H3Conn {
    type RecvStream = H3Recv;
    type OpenStreams = H3Conn;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        let id = ready!(self.0.poll_accept(cx, Dir::Uni)).map_err(accept_error)?;
        Poll::Ready(Ok(H3Recv(self.0.recv_stream(id))))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        let id = ready!(self.0.poll_accept(cx, Dir::Bi)).map_err(accept_error)?;
        Poll::Ready(Ok(self.bidi(id)))
    }

    fn opener(&self) -> Self::OpenStreams {
        self.clone()
    }
}

/// The sending half of a stream: h3 hands over one frame at a time (`send_data`) and then
/// waits in `poll_ready` until it is all written.
pub struct H3Send<B: Buf> {
    stream: quic::SendStream,
    writing: Option<WriteBuf<B>>,
}

impl<B: Buf> H3Send<B> {
    fn new(stream: quic::SendStream) -> Self {
        H3Send {
            stream,
            writing: None,
        }
    }
}

impl<B: Buf> h3::quic::SendStream<B> for H3Send<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        while let Some(data) = self.writing.as_mut() {
            if !data.has_remaining() {
                self.writing = None;
                break;
            }
            let n = ready!(self.stream.poll_write(cx, data.chunk())).map_err(stream_error)?;
            data.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.writing.is_some() {
            return Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::InternalError(
                    "send_data while a previous frame is still being written".into(),
                ),
            });
        }
        self.writing = Some(data.into());
        Ok(())
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        Poll::Ready(
            self.stream
                .finish()
                .map_err(|e| StreamErrorIncoming::Unknown(Box::new(e))),
        )
    }

    fn reset(&mut self, reset_code: u64) {
        self.stream.reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        h3_id(self.stream.id())
    }
}

/// The receiving half of a stream.
pub struct H3Recv(quic::RecvStream);

impl h3::quic::RecvStream for H3Recv {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Self::Buf>, StreamErrorIncoming>> {
        self.0.poll_read_chunk(cx, usize::MAX).map_err(stream_error)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.0.stop(error_code);
    }

    fn recv_id(&self) -> StreamId {
        h3_id(self.0.id())
    }
}

/// Both halves of a request stream.
pub struct H3Bidi<B: Buf> {
    send: H3Send<B>,
    recv: H3Recv,
}

impl<B: Buf> h3::quic::SendStream<B> for H3Bidi<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }
    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }
    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code)
    }
    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

impl<B: Buf> h3::quic::RecvStream for H3Bidi<B> {
    type Buf = Bytes;
    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Self::Buf>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }
    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code)
    }
    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

impl<B: Buf> h3::quic::BidiStream<B> for H3Bidi<B> {
    type SendStream = H3Send<B>;
    type RecvStream = H3Recv;
    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        (self.send, self.recv)
    }
}

/// ALPN of HTTP/3.
pub const ALPN: &[u8] = b"h3";

/// Transport settings for client connections: many concurrent requests, the three
/// unidirectional streams each side of HTTP/3 opens (control, QPACK encoder and decoder) plus
/// grease, and windows sized for large objects on a LAN (one stream can have 4 MiB in flight,
/// 335 Mb/s at 100 ms round trip; the connection 16 MiB). They bound what a client can make the
/// server buffer: h3 never reads the client's QPACK streams, so two stream windows per
/// connection can sit unread.
pub fn transport() -> Arc<quinn_proto::TransportConfig> {
    use quinn_proto::{IdleTimeout, VarInt};
    let mut t = quinn_proto::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(256));
    t.max_concurrent_uni_streams(VarInt::from_u32(16));
    t.stream_receive_window(VarInt::from_u32(4 << 20));
    t.receive_window(VarInt::from_u32(16 << 20));
    t.send_window(16 << 20);
    t.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(30_000))));
    Arc::new(t)
}

/// TLS sessions the server remembers for resumption and 0-RTT (shared by every executor).
const SESSION_CACHE: usize = 16 * 1024;

/// A QUIC server configuration for HTTP/3 presenting `chain`: TLS 1.3, ALPN `h3`, 0-RTT
/// accepted.
pub fn server_config(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<quinn_proto::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // 0-RTT: QUIC takes all or nothing here. Tickets live in this shared, stateful cache and
    // each can be used once, so a replayed first flight finds its ticket gone; what early data
    // may do is limited per request (`http3::early_request_may_run`).
    tls.max_early_data_size = u32::MAX;
    tls.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    let q = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut sc = quinn_proto::ServerConfig::with_crypto(Arc::new(q));
    sc.transport_config(transport());
    Ok(Arc::new(sc))
}

/// A QUIC client configuration for HTTP/3 trusting only `roots` (TLS 1.3, ALPN `h3`).
pub fn client_config(roots: rustls::RootCertStore) -> anyhow::Result<quinn_proto::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let q = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cc = quinn_proto::ClientConfig::new(Arc::new(q));
    cc.transport_config(transport());
    Ok(cc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use std::future::poll_fn;

    /// A self-signed certificate for `localhost`, and a root store trusting only it.
    fn tls() -> (Arc<quinn_proto::ServerConfig>, quinn_proto::ClientConfig) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = c.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(c.key_pair.serialize_der()),
        );
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der.clone()).unwrap();
        (
            server_config(vec![der], key).unwrap(),
            client_config(roots).unwrap(),
        )
    }

    /// Answers every request with its own body, and the body's length and method in headers.
    async fn echo_server(ep: quic::Endpoint) {
        while let Some(conn) = ep.accept().await {
            glommio::spawn_local(async move {
                conn.established().await.unwrap();
                let mut h = h3::server::builder()
                    .build::<_, Bytes>(H3Conn(conn))
                    .await
                    .unwrap();
                while let Ok(Some(resolver)) = h.accept().await {
                    glommio::spawn_local(async move {
                        let (req, mut s) = resolver.resolve_request().await.unwrap();
                        let mut body = BytesMut::new();
                        while let Some(mut c) = s.recv_data().await.unwrap() {
                            body.extend_from_slice(&c.copy_to_bytes(c.remaining()));
                        }
                        let resp = http::Response::builder()
                            .status(200)
                            .header("x-method", req.method().as_str())
                            .header("x-len", body.len())
                            .body(())
                            .unwrap();
                        s.send_response(resp).await.unwrap();
                        // In pieces, as a streamed object would go out.
                        for piece in body.freeze().chunks(1 << 20) {
                            s.send_data(Bytes::copy_from_slice(piece)).await.unwrap();
                        }
                        s.finish().await.unwrap();
                    })
                    .detach();
                }
            })
            .detach();
        }
    }

    async fn request(
        send: &mut h3::client::SendRequest<H3Conn, Bytes>,
        method: http::Method,
        body: Bytes,
    ) -> (http::Response<()>, Bytes) {
        let req = http::Request::builder()
            .method(method)
            .uri("https://localhost/echo")
            .body(())
            .unwrap();
        let mut s = send.send_request(req).await.unwrap();
        for piece in body.chunks(256 << 10) {
            s.send_data(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        s.finish().await.unwrap();
        let resp = s.recv_response().await.unwrap();
        let mut got = BytesMut::new();
        while let Some(mut c) = s.recv_data().await.unwrap() {
            got.extend_from_slice(&c.copy_to_bytes(c.remaining()));
        }
        (resp, got.freeze())
    }

    #[test]
    fn http3_over_the_glommio_quic_driver() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async move {
                glommio::timer::timeout(std::time::Duration::from_secs(60), async {
                    exchange().await;
                    Ok(())
                })
                .await
                .expect("the exchange did not finish within 60 s");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    async fn exchange() {
        let (server_cfg, client_cfg) = tls();
        let any = "127.0.0.1:0".parse().unwrap();
        let server = quic::Endpoint::bind(any, false, Some(server_cfg)).unwrap();
        let addr = server.local_addr().unwrap();
        glommio::spawn_local(echo_server(server.clone())).detach();
        let client = quic::Endpoint::bind(any, false, None).unwrap();
        let conn = client
            .connect(client_cfg.clone(), addr, "localhost")
            .await
            .unwrap();
        let (mut driver, mut send) = h3::client::new(H3Conn(conn)).await.unwrap();
        glommio::spawn_local(async move {
            let _ = poll_fn(|cx| driver.poll_close(cx)).await;
        })
        .detach();

        // 20 MiB each way: more than a stream's 4 MiB receive window, so both
        // directions run into flow control and must be credited as they are read.
        let big: Bytes = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
        let (resp, got) = request(&mut send, http::Method::PUT, big.clone()).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-method"], "PUT");
        assert_eq!(resp.headers()["x-len"], (20u32 << 20).to_string().as_str());
        assert!(got == big, "the echoed body differs");

        // 32 concurrent requests on the one connection, each with its own body.
        let mut tasks = Vec::new();
        for i in 0..32u32 {
            let mut send = send.clone();
            tasks.push(glommio::spawn_local(async move {
                let body = Bytes::from(format!("request {i} ").repeat(1000 + i as usize));
                let (resp, got) = request(&mut send, http::Method::GET, body.clone()).await;
                assert_eq!(resp.status(), 200);
                assert!(got == body, "request {i}: the echoed body differs");
            }));
        }
        for t in tasks {
            t.await;
        }

        // At its connection limit the server refuses a new connection; the open one goes on.
        server.limit_connections(1);
        let second = quic::Endpoint::bind(any, false, None).unwrap();
        assert!(
            second.connect(client_cfg, addr, "localhost").await.is_err(),
            "a connection past the limit was taken"
        );
        let (resp, got) = request(&mut send, http::Method::GET, Bytes::from("still")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(got, "still");
        second.close();
        client.close();
        server.close();
    }
}

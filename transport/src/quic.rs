//! QUIC on a glommio executor: `quinn-proto`'s state machines driven by this executor alone.
//!
//! One [`Endpoint`] per executor and UDP socket. Everything — the endpoint, its connections,
//! their streams — lives in one `Rc<RefCell<_>>` on the executor's thread, so no byte of a
//! stream ever crosses threads and no lock is taken. Two tasks drive an endpoint:
//! - the receiver waits until the socket is readable (a 1-byte `MSG_PEEK` through glommio's
//!   io_uring), then drains it with non-blocking `recvmsg` (GRO where the kernel offers it) and
//!   feeds every datagram to `quinn-proto`;
//! - the driver runs whenever something changed (a datagram, a stream write, a read that freed
//!   flow-control credit) or a connection timer fires: it handles timeouts, moves events between
//!   endpoint and connections, wakes the tasks waiting on streams, and sends what the
//!   connections want sent with non-blocking `sendmsg` (GSO batches where offered).
//!
//! The same driver serves node-to-node shard traffic and, later, HTTP/3 to clients: it knows
//! nothing of what the streams carry.

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, ConnectionError, ConnectionHandle, DatagramEvent, Dir, EndpointConfig, Event,
    ServerConfig, StreamEvent, StreamId, VarInt,
};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Kernel socket buffers asked for (the kernel caps them at `net.core.{r,w}mem_max`).
const SOCKET_BUFFER_BYTES: usize = 8 << 20;
/// Datagrams per GSO batch: a batch is one UDP send of at most 64 KiB, and larger bursts only
/// fight the pacer (quinn uses a similar bound).
const GSO_SEGMENTS_MAX: usize = 10;
/// Waits shorter than this (QUIC pacing) yield instead of arming a timer.
const TIMER_WAIT_MIN: Duration = Duration::from_millis(2);
/// Datagrams received per `recvmsg` batch.
const RECV_BATCH: usize = 16;

#[derive(Default)]
struct ConnState {
    connected: bool,
    lost: Option<ConnectionError>,
    wait_connected: Vec<Waker>,
    readable: HashMap<StreamId, Waker>,
    writable: HashMap<StreamId, Waker>,
    wait_accept: Vec<Waker>,
    wait_open: Vec<Waker>,
}

struct Conn {
    conn: quinn_proto::Connection,
    state: ConnState,
    /// Unique per endpoint: `quinn-proto` reuses the handles of drained connections, so a
    /// [`Connection`] checks this to never reach a newer connection under its old handle.
    serial: u64,
}

struct Inner {
    ep: quinn_proto::Endpoint,
    socket: std::net::UdpSocket,
    udp: quinn_udp::UdpSocketState,
    conns: HashMap<ConnectionHandle, Conn>,
    server: Option<Arc<ServerConfig>>,
    incoming: VecDeque<(ConnectionHandle, u64)>,
    wait_incoming: Option<Waker>,
    /// Something changed since the driver last ran.
    dirty: bool,
    driver: Option<Waker>,
    closed: bool,
    send_buf: Vec<u8>,
    next_serial: u64,
    /// A batch the kernel had no room for: sent before anything else, once there is room.
    blocked: Option<(quinn_proto::Transmit, Vec<u8>)>,
    /// Connections beyond this many are refused (none once the server is stopping).
    max_connections: usize,
}

/// A QUIC endpoint on this executor.
#[derive(Clone)]
pub struct Endpoint(Rc<RefCell<Inner>>);

/// A connection; cheap to clone.
#[derive(Clone)]
pub struct Connection {
    ep: Endpoint,
    ch: ConnectionHandle,
    serial: u64,
}

pub struct SendStream {
    conn: Connection,
    id: StreamId,
    finished: bool,
}

pub struct RecvStream {
    conn: Connection,
    id: StreamId,
    done: bool,
}

fn conn_error(e: &ConnectionError) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, e.to_string())
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the QUIC endpoint is closed")
}

/// Why a stream operation failed, with the peer's error code where there is one (HTTP/3 maps
/// these to its own errors).
#[derive(Debug, Clone)]
pub enum StreamError {
    /// The peer stopped the stream (our send side) or reset it (our receive side).
    Code(u64),
    /// The connection is gone: closed by either side, timed out or refused.
    Connection(ConnectionError),
    /// The endpoint was closed, or the stream cannot be used any more.
    Other(String),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Code(c) => write!(f, "the peer ended the stream with code {c:#x}"),
            StreamError::Connection(e) => write!(f, "{e}"),
            StreamError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StreamError {}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> io::Error {
        let kind = match &e {
            StreamError::Connection(_) => io::ErrorKind::ConnectionAborted,
            StreamError::Code(_) => io::ErrorKind::BrokenPipe,
            StreamError::Other(_) => io::ErrorKind::NotConnected,
        };
        io::Error::new(kind, e.to_string())
    }
}

/// An application error code as QUIC sends it (0 if it does not fit a varint).
fn app_code(code: u64) -> VarInt {
    VarInt::from_u64(code).unwrap_or(VarInt::from_u32(0))
}

fn gone() -> StreamError {
    StreamError::Other("the QUIC connection is gone".into())
}

impl Endpoint {
    /// Binds `addr` (with SO_REUSEPORT when `reuse_port`, so that every executor can own a
    /// socket on the same port) and starts the endpoint's tasks on this executor.
    pub fn bind(
        addr: SocketAddr,
        reuse_port: bool,
        server: Option<Arc<ServerConfig>>,
    ) -> io::Result<Endpoint> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        s.bind(&addr.into())?;
        s.set_nonblocking(true)?;
        let watch = {
            use std::os::fd::{FromRawFd, IntoRawFd};
            let fd = s.try_clone()?.into_raw_fd();
            // SAFETY: `fd` is a freshly duplicated, open UDP socket that nothing else owns.
            unsafe { glommio::net::UdpSocket::from_raw_fd(fd) }
        };
        let socket: std::net::UdpSocket = s.into();
        let udp = quinn_udp::UdpSocketState::new((&socket).into())?;
        let _ = udp.set_send_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES);
        let _ = udp.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES);
        let mut cfg = EndpointConfig::default();
        cfg.max_udp_payload_size(1500 - 28).ok();
        let ep = quinn_proto::Endpoint::new(Arc::new(cfg), server.clone(), true, None);
        let inner = Rc::new(RefCell::new(Inner {
            ep,
            socket,
            udp,
            conns: HashMap::new(),
            server,
            incoming: VecDeque::new(),
            wait_incoming: None,
            dirty: false,
            driver: None,
            closed: false,
            send_buf: Vec::with_capacity(64 * 1024),
            next_serial: 0,
            blocked: None,
            max_connections: usize::MAX,
        }));
        let e = Endpoint(inner);
        glommio::spawn_local(e.clone().receiver(watch)).detach();
        glommio::spawn_local(e.clone().driver()).detach();
        Ok(e)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.borrow().socket.local_addr()
    }

    /// Refuses connections (CONNECTION_REFUSED) beyond `n` open at once.
    pub fn limit_connections(&self, n: usize) {
        self.0.borrow_mut().max_connections = n;
    }

    /// Refuses new connections (CONNECTION_REFUSED) from now on; those open go on.
    pub fn refuse_new(&self) {
        self.limit_connections(0);
    }

    /// Stops the endpoint: every connection is closed, waiting tasks fail.
    pub fn close(&self) {
        self.close_with(0, b"shutdown");
    }

    /// Stops the endpoint, closing every connection with application error `code`.
    pub fn close_with(&self, code: u32, reason: &'static [u8]) {
        let mut i = self.0.borrow_mut();
        i.closed = true;
        let now = Instant::now();
        for c in i.conns.values_mut() {
            c.conn
                .close(now, VarInt::from_u32(code), Bytes::from_static(reason));
        }
        if let Some(w) = i.wait_incoming.take() {
            w.wake();
        }
        i.wake_driver();
    }

    /// Connects to `addr`, presenting `config`'s credentials; resolves once the handshake is
    /// done (the peer's certificate was verified).
    pub async fn connect(
        &self,
        config: ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> io::Result<Connection> {
        let (ch, serial) = {
            let mut i = self.0.borrow_mut();
            if i.closed {
                return Err(closed());
            }
            let (ch, conn) =
                i.ep.connect(Instant::now(), config, addr, server_name)
                    .map_err(|e| io::Error::other(format!("connecting to {addr}: {e}")))?;
            let serial = i.insert(ch, conn);
            i.wake_driver();
            (ch, serial)
        };
        let c = Connection {
            ep: self.clone(),
            ch,
            serial,
        };
        c.established().await?;
        Ok(c)
    }

    /// The next incoming connection, its handshake possibly still under way: the caller
    /// awaits [`Connection::established`] in the connection's own task, so that a client that
    /// never finishes its handshake holds up nobody else. `None` once closed.
    pub async fn accept(&self) -> Option<Connection> {
        let next = poll_fn(|cx| {
            let mut i = self.0.borrow_mut();
            if let Some(next) = i.incoming.pop_front() {
                return Poll::Ready(Some(next));
            }
            if i.closed {
                return Poll::Ready(None);
            }
            i.wait_incoming = Some(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Some(Connection {
            ep: self.clone(),
            ch: next.0,
            serial: next.1,
        })
    }

    /// Receives datagrams until the endpoint closes.
    async fn receiver(self, watch: glommio::net::UdpSocket) {
        let mut peek = [0u8; 1];
        let slot = 64 * 1024;
        let mut bufs: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; slot]).collect();
        let mut metas = vec![quinn_udp::RecvMeta::default(); RECV_BATCH];
        loop {
            if self.0.borrow().closed {
                return;
            }
            // Readable (or an error, which the drain below reports).
            let _ = watch.peek_from(&mut peek).await;
            let mut inner = self.0.borrow_mut();
            let inner = &mut *inner;
            loop {
                let n = {
                    let mut slices: Vec<IoSliceMut<'_>> =
                        bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                    match inner
                        .udp
                        .recv((&inner.socket).into(), &mut slices, &mut metas)
                    {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!("QUIC recv: {e}");
                            break;
                        }
                    }
                };
                let now = Instant::now();
                for (meta, buf) in metas.iter().zip(bufs.iter()).take(n) {
                    // One copy and one allocation per (GRO) batch, split into its datagrams.
                    let stride = meta.stride.max(1);
                    let mut data = BytesMut::from(&buf[..meta.len]);
                    while !data.is_empty() {
                        let d = data.split_to(stride.min(data.len()));
                        inner.datagram(now, meta, d);
                    }
                }
            }
            inner.wake_driver();
        }
    }

    /// Runs the connections' state machines whenever something changed or a timer fires.
    async fn driver(self) {
        loop {
            let (deadline, blocked) = {
                let mut i = self.0.borrow_mut();
                i.dirty = false;
                i.drive();
                if i.closed && i.conns.is_empty() {
                    return;
                }
                let d = i
                    .conns
                    .values_mut()
                    .filter_map(|c| c.conn.poll_timeout())
                    .min();
                (d, i.blocked.is_some())
            };
            if blocked {
                // The socket buffer is full; the peer drains it within microseconds.
                futures_lite::future::yield_now().await;
                continue;
            }
            let woken = poll_fn(|cx| {
                let mut i = self.0.borrow_mut();
                if i.dirty {
                    Poll::Ready(())
                } else {
                    i.driver = Some(cx.waker().clone());
                    Poll::Pending
                }
            });
            match deadline {
                Some(d) => {
                    let wait = d.saturating_duration_since(Instant::now());
                    if wait >= TIMER_WAIT_MIN {
                        futures_lite::future::or(woken, glommio::timer::sleep(wait)).await;
                    } else if !wait.is_zero() {
                        // Pacing gaps are tens of microseconds, finer than the reactor's timers:
                        // let other tasks run and come straight back.
                        futures_lite::future::yield_now().await;
                    }
                }
                None => {
                    futures_lite::future::or(woken, async {
                        // Re-check a closing endpoint now and then.
                        glommio::timer::sleep(Duration::from_secs(1)).await;
                    })
                    .await
                }
            }
        }
    }
}

fn ecn_in(e: Option<quinn_udp::EcnCodepoint>) -> Option<quinn_proto::EcnCodepoint> {
    e.and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8))
}

fn ecn_out(e: Option<quinn_proto::EcnCodepoint>) -> Option<quinn_udp::EcnCodepoint> {
    e.and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8))
}

impl Inner {
    fn insert(&mut self, ch: ConnectionHandle, conn: quinn_proto::Connection) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.conns.insert(
            ch,
            Conn {
                conn,
                state: ConnState::default(),
                serial,
            },
        );
        serial
    }

    fn conn_mut(&mut self, ch: ConnectionHandle, serial: u64) -> Option<&mut Conn> {
        self.conns.get_mut(&ch).filter(|c| c.serial == serial)
    }

    fn conn(&self, ch: ConnectionHandle, serial: u64) -> Option<&Conn> {
        self.conns.get(&ch).filter(|c| c.serial == serial)
    }

    fn wake_driver(&mut self) {
        self.dirty = true;
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    /// Sends one batch; `false` if the socket buffer is full (nothing was sent). Other errors
    /// (an unreachable peer) drop the batch: QUIC's loss recovery deals with it.
    fn send(&mut self, t: &quinn_proto::Transmit, contents: &[u8]) -> bool {
        let out = quinn_udp::Transmit {
            destination: t.destination,
            ecn: ecn_out(t.ecn),
            contents,
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        match self.udp.try_send((&self.socket).into(), &out) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => {
                tracing::debug!("QUIC send to {}: {e}", t.destination);
                true
            }
        }
    }

    fn datagram(&mut self, now: Instant, meta: &quinn_udp::RecvMeta, data: BytesMut) {
        let mut resp = Vec::new();
        match self.ep.handle(
            now,
            meta.addr,
            meta.dst_ip,
            ecn_in(meta.ecn),
            data,
            &mut resp,
        ) {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(c) = self.conns.get_mut(&ch) {
                    c.conn.handle_event(ev);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.closed || self.server.is_none() || self.conns.len() >= self.max_connections
                {
                    let t = self.ep.refuse(incoming, &mut resp);
                    let _ = self.send(&t, &resp[..t.size]);
                    return;
                }
                match self.ep.accept(incoming, now, &mut resp, None) {
                    Ok((ch, conn)) => {
                        let serial = self.insert(ch, conn);
                        self.incoming.push_back((ch, serial));
                        if let Some(w) = self.wait_incoming.take() {
                            w.wake();
                        }
                    }
                    Err(e) => {
                        if let Some(t) = e.response {
                            let _ = self.send(&t, &resp[..t.size]);
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(t)) => {
                let _ = self.send(&t, &resp[..t.size]);
            }
            None => {}
        }
    }

    /// One round of the state machines: timers, endpoint events, application events, sends.
    fn drive(&mut self) {
        let now = Instant::now();
        if let Some((t, data)) = self.blocked.take() {
            if !self.send(&t, &data) {
                self.blocked = Some((t, data));
            }
        }
        let max_segments = self.udp.max_gso_segments().clamp(1, GSO_SEGMENTS_MAX);
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        let mut buf = std::mem::take(&mut self.send_buf);
        for ch in handles {
            let mut drained = false;
            {
                let Some(c) = self.conns.get_mut(&ch) else {
                    continue;
                };
                if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                    c.conn.handle_timeout(now);
                }
            }
            while let Some(ev) = self
                .conns
                .get_mut(&ch)
                .and_then(|c| c.conn.poll_endpoint_events())
            {
                if ev.is_drained() {
                    drained = true;
                }
                if let Some(back) = self.ep.handle_event(ch, ev) {
                    if let Some(c) = self.conns.get_mut(&ch) {
                        c.conn.handle_event(back);
                    }
                }
            }
            let Some(c) = self.conns.get_mut(&ch) else {
                continue;
            };
            while let Some(ev) = c.conn.poll() {
                dispatch(&mut c.state, ev);
            }
            while self.blocked.is_none() {
                let Some(t) = self.conns.get_mut(&ch).and_then(|c| {
                    buf.clear();
                    c.conn.poll_transmit(now, max_segments, &mut buf)
                }) else {
                    break;
                };
                if !self.send(&t, &buf[..t.size]) {
                    let data = buf[..t.size].to_vec();
                    self.blocked = Some((t, data));
                }
            }
            if drained {
                if let Some(mut c) = self.conns.remove(&ch) {
                    let lost = c
                        .state
                        .lost
                        .clone()
                        .unwrap_or(ConnectionError::LocallyClosed);
                    c.state.lost = Some(lost);
                    wake_all(&mut c.state);
                }
            }
        }
        self.send_buf = buf;
    }
}

/// Adds `w` to `list` unless a waker there already wakes the same task (a task that polls
/// again and again while waiting must not grow the list).
fn push_waker(list: &mut Vec<Waker>, w: &Waker) {
    if !list.iter().any(|x| x.will_wake(w)) {
        list.push(w.clone());
    }
}

fn wake_all(s: &mut ConnState) {
    for w in s.wait_connected.drain(..) {
        w.wake();
    }
    for (_, w) in s.readable.drain() {
        w.wake();
    }
    for (_, w) in s.writable.drain() {
        w.wake();
    }
    for w in s.wait_accept.drain(..) {
        w.wake();
    }
    for w in s.wait_open.drain(..) {
        w.wake();
    }
}

fn dispatch(s: &mut ConnState, ev: Event) {
    match ev {
        Event::Connected => {
            s.connected = true;
            for w in s.wait_connected.drain(..) {
                w.wake();
            }
        }
        Event::ConnectionLost { reason } => {
            s.lost = Some(reason);
            wake_all(s);
        }
        Event::Stream(StreamEvent::Readable { id }) => {
            if let Some(w) = s.readable.remove(&id) {
                w.wake();
            }
        }
        Event::Stream(StreamEvent::Writable { id })
        | Event::Stream(StreamEvent::Finished { id })
        | Event::Stream(StreamEvent::Stopped { id, .. }) => {
            if let Some(w) = s.writable.remove(&id) {
                w.wake();
            }
        }
        Event::Stream(StreamEvent::Opened { .. }) => {
            for w in s.wait_accept.drain(..) {
                w.wake();
            }
        }
        Event::Stream(StreamEvent::Available { .. }) => {
            for w in s.wait_open.drain(..) {
                w.wake();
            }
        }
        Event::HandshakeDataReady | Event::DatagramReceived | Event::DatagramsUnblocked => {}
    }
}

impl Connection {
    fn with<T>(&self, f: impl FnOnce(&mut Conn) -> T) -> Result<T, io::Error> {
        let mut i = self.ep.0.borrow_mut();
        let c = i.conn_mut(self.ch, self.serial).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the QUIC connection is gone",
            )
        })?;
        let out = f(c);
        i.wake_driver();
        Ok(out)
    }

    /// Resolves once the handshake is done (the peer's certificate verified, where asked
    /// for); fails if it failed or the connection is gone.
    pub async fn established(&self) -> io::Result<()> {
        poll_fn(|cx| {
            let mut i = self.ep.0.borrow_mut();
            let Some(c) = i.conn_mut(self.ch, self.serial) else {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "the QUIC handshake failed",
                )));
            };
            if let Some(e) = &c.state.lost {
                return Poll::Ready(Err(conn_error(e)));
            }
            if c.state.connected {
                return Poll::Ready(Ok(()));
            }
            c.state.wait_connected.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Resolves once send stream `id` is settled: after a finish, all its data acknowledged by
    /// the peer; or it was stopped by the peer, or reset; or the connection is gone. Closing a
    /// connection drops what it has not delivered, so a server that is stopping waits for this
    /// before it closes.
    pub async fn send_settled(&self, id: StreamId) {
        poll_fn(|cx| {
            let mut i = self.ep.0.borrow_mut();
            let Some(c) = i.conn_mut(self.ch, self.serial) else {
                return Poll::Ready(());
            };
            if c.state.lost.is_some() {
                return Poll::Ready(());
            }
            match c.conn.send_stream(id).stopped() {
                Ok(None) => {
                    c.state.writable.insert(id, cx.waker().clone());
                    Poll::Pending
                }
                Ok(Some(_)) | Err(_) => Poll::Ready(()),
            }
        })
        .await
    }

    /// Whether the handshake has completed. Before, what the peer sends is 0-RTT data, which an
    /// attacker could have replayed.
    pub fn is_established(&self) -> bool {
        let i = self.ep.0.borrow();
        i.conn(self.ch, self.serial)
            .is_some_and(|c| c.state.connected)
    }

    /// Whether the connection was lost (closed by either side, timed out, refused).
    pub fn is_lost(&self) -> bool {
        let i = self.ep.0.borrow();
        i.conn(self.ch, self.serial)
            .is_none_or(|c| c.state.lost.is_some() || c.conn.is_closed())
    }

    /// The connection's statistics (RTT, congestion window, losses), for diagnostics.
    pub fn stats(&self) -> Option<quinn_proto::ConnectionStats> {
        let mut i = self.ep.0.borrow_mut();
        i.conn_mut(self.ch, self.serial).map(|c| c.conn.stats())
    }

    /// The certificate the peer presented in the handshake (the end entity, DER), once known.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        let i = self.ep.0.borrow();
        let c = i.conn(self.ch, self.serial)?;
        let any = c.conn.crypto_session().peer_identity()?;
        let chain = any
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()?;
        chain.first().map(|c| c.to_vec())
    }

    pub fn remote_address(&self) -> Option<SocketAddr> {
        let i = self.ep.0.borrow();
        i.conn(self.ch, self.serial)
            .map(|c| c.conn.remote_address())
    }

    pub fn close(&self, reason: &'static [u8]) {
        self.close_with(0, reason);
    }

    /// Opens a stream in `dir` once the peer's stream limit allows; pending (and woken) until
    /// then.
    pub fn poll_open(&self, cx: &mut Context<'_>, dir: Dir) -> Poll<Result<StreamId, StreamError>> {
        let mut i = self.ep.0.borrow_mut();
        let Some(c) = i.conn_mut(self.ch, self.serial) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some(e) = &c.state.lost {
            return Poll::Ready(Err(StreamError::Connection(e.clone())));
        }
        if let Some(id) = c.conn.streams().open(dir) {
            i.wake_driver();
            return Poll::Ready(Ok(id));
        }
        push_waker(&mut c.state.wait_open, cx.waker());
        Poll::Pending
    }

    /// The next stream in `dir` the peer opened; pending (and woken) until there is one.
    pub fn poll_accept(
        &self,
        cx: &mut Context<'_>,
        dir: Dir,
    ) -> Poll<Result<StreamId, StreamError>> {
        let mut i = self.ep.0.borrow_mut();
        let Some(c) = i.conn_mut(self.ch, self.serial) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some(id) = c.conn.streams().accept(dir) {
            i.wake_driver();
            return Poll::Ready(Ok(id));
        }
        if let Some(e) = &c.state.lost {
            return Poll::Ready(Err(StreamError::Connection(e.clone())));
        }
        push_waker(&mut c.state.wait_accept, cx.waker());
        Poll::Pending
    }

    pub async fn open_bi(&self) -> io::Result<(SendStream, RecvStream)> {
        let id = poll_fn(|cx| self.poll_open(cx, Dir::Bi)).await?;
        Ok(self.pair(id))
    }

    pub async fn accept_bi(&self) -> io::Result<(SendStream, RecvStream)> {
        let id = poll_fn(|cx| self.poll_accept(cx, Dir::Bi)).await?;
        Ok(self.pair(id))
    }

    /// Closes the connection with an application error `code` (0 where nothing went wrong).
    pub fn close_with(&self, code: u64, reason: &[u8]) {
        let reason = Bytes::copy_from_slice(reason);
        let _ = self.with(|c| c.conn.close(Instant::now(), app_code(code), reason));
    }

    /// The sending side of stream `id` (opened or accepted on this connection).
    pub fn send_stream(&self, id: StreamId) -> SendStream {
        SendStream {
            conn: self.clone(),
            id,
            finished: false,
        }
    }

    /// The receiving side of stream `id` (opened or accepted on this connection).
    pub fn recv_stream(&self, id: StreamId) -> RecvStream {
        RecvStream {
            conn: self.clone(),
            id,
            done: false,
        }
    }

    fn pair(&self, id: StreamId) -> (SendStream, RecvStream) {
        (self.send_stream(id), self.recv_stream(id))
    }
}

impl SendStream {
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Writes a prefix of `data` as flow control allows; pending (and woken) while blocked.
    pub fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<Result<usize, StreamError>> {
        let mut i = self.conn.ep.0.borrow_mut();
        let Some(c) = i.conn_mut(self.conn.ch, self.conn.serial) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some(e) = &c.state.lost {
            return Poll::Ready(Err(StreamError::Connection(e.clone())));
        }
        match c.conn.send_stream(self.id).write(data) {
            Ok(n) => {
                i.wake_driver();
                Poll::Ready(Ok(n))
            }
            Err(quinn_proto::WriteError::Blocked) => {
                c.state.writable.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
            Err(quinn_proto::WriteError::Stopped(code)) => {
                Poll::Ready(Err(StreamError::Code(code.into_inner())))
            }
            Err(e) => Poll::Ready(Err(StreamError::Other(e.to_string()))),
        }
    }

    /// Writes all of `data`, waiting for flow-control credit as needed.
    pub async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = poll_fn(|cx| self.poll_write(cx, data)).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Ends the stream (the peer reads its end).
    pub fn finish(&mut self) -> io::Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.conn
            .with(|c| c.conn.send_stream(self.id).finish())?
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))
    }

    /// Abandons the stream: the peer's reads fail with `code`.
    pub fn reset(&mut self, code: u64) {
        if self.finished {
            return;
        }
        self.finished = true;
        let _ = self
            .conn
            .with(|c| c.conn.send_stream(self.id).reset(app_code(code)));
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.conn.with(|c| c.conn.send_stream(self.id).finish());
        }
    }
}

impl RecvStream {
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The next bytes of the stream, at most `max`; `None` at its end. Pending (and woken)
    /// until some arrive.
    pub fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, StreamError>> {
        if self.done {
            return Poll::Ready(Ok(None));
        }
        let mut i = self.conn.ep.0.borrow_mut();
        let Some(c) = i.conn_mut(self.conn.ch, self.conn.serial) else {
            return Poll::Ready(Err(gone()));
        };
        let mut stream = c.conn.recv_stream(self.id);
        let mut chunks = match stream.read(true) {
            Ok(ch) => ch,
            Err(e) => return Poll::Ready(Err(StreamError::Other(e.to_string()))),
        };
        let r = chunks.next(max);
        let _ = chunks.finalize();
        let out = match r {
            Ok(Some(chunk)) => {
                i.wake_driver();
                Ok(Some(chunk.bytes))
            }
            Ok(None) => Ok(None),
            Err(quinn_proto::ReadError::Blocked) => {
                if let Some(e) = &c.state.lost {
                    return Poll::Ready(Err(StreamError::Connection(e.clone())));
                }
                c.state.readable.insert(self.id, cx.waker().clone());
                return Poll::Pending;
            }
            Err(quinn_proto::ReadError::Reset(code)) => Err(StreamError::Code(code.into_inner())),
        };
        drop(i);
        if matches!(out, Ok(None)) {
            self.done = true;
        }
        Poll::Ready(out)
    }

    /// The next bytes of the stream, at most `max`; `None` at its end.
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        Ok(poll_fn(|cx| self.poll_read_chunk(cx, max)).await?)
    }

    /// Tells the peer to stop sending, with `code`; what it sent is discarded.
    pub fn stop(&mut self, code: u64) {
        if self.done {
            return;
        }
        self.done = true;
        let _ = self
            .conn
            .with(|c| c.conn.recv_stream(self.id).stop(app_code(code)));
    }

    /// Fills `buf` completely; `UnexpectedEof` if the stream ends first.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if self.read_exact_or_end(buf).await? || buf.is_empty() {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }

    /// Like [`read_exact`](Self::read_exact), but `Ok(false)` when the stream ends cleanly
    /// before the first byte.
    pub async fn read_exact_or_end(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_chunk(buf.len() - filled).await? {
                Some(b) => {
                    buf[filled..filled + b.len()].copy_from_slice(&b);
                    filled += b.len();
                }
                None if filled == 0 => return Ok(false),
                None => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
        Ok(true)
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        self.stop(0);
    }
}

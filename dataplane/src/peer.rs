//! Shards between nodes: the server side of the peer protocol (`ostore_wire::peer`) over the
//! QUIC driver, and the client side behind `ShardFile::Peer`. The cluster's TLS is
//! `ostore_transport::tls`.

use crate::cluster::Cluster;
use crate::ctx::Node;
use ostore_control::records::ShardLoc;
use ostore_engine::latency::{DeadlineRule, LatencyWindow};
use ostore_transport::quic::{self, Connection, RecvStream, SendStream};
use ostore_transport::tls::NODE_NAME;
use ostore_wire::peer::{
    decode_answer, decode_error, Op, OpenMode, Request, ANSWER_BYTES, PREAMBLE,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Removing a shard file on a peer fails after this long (other operations have deadlines
/// drawn from observed latency, [`op_deadline`]).
const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to a peer fails after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Opening a shard file on a peer (one round trip on a fresh stream) fails after this long;
/// the connection is then replaced.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with an operation past its deadline and no answer for this long is replaced.
const STALLED_AFTER: Duration = Duration::from_secs(2);

thread_local! {
    /// This executor's client endpoint and its connections, by peer address.
    static CLIENT: RefCell<Option<quic::Endpoint>> = const { RefCell::new(None) };
    /// This executor's connections to other nodes, each with the fingerprint of the
    /// certificate its peer presented (looked up in the revocations at every reuse).
    static CONNS: RefCell<HashMap<SocketAddr, (Connection, [u8; 32])>> = RefCell::new(HashMap::new());
    /// When each peer last answered this executor (any request on any stream): a connection
    /// with operations past their deadline and no answer for [`STALLED_AFTER`] is replaced.
    static ANSWERED: RefCell<HashMap<SocketAddr, Instant>> = RefCell::new(HashMap::new());
    /// How long this executor's recent peer round trips took: an operation is given up on
    /// after [`DeadlineRule::PEER_OP`] of them.
    static ROUND_TRIPS: RefCell<LatencyWindow> = RefCell::new(LatencyWindow::new());
}

/// How long a peer operation may take before it is given up on (and the peer suspected):
/// from this executor's recent round trips, between 2 s and 10 s.
pub fn op_deadline() -> Duration {
    Duration::from_micros(ROUND_TRIPS.with(|w| w.borrow().deadline_us(DeadlineRule::PEER_OP)))
}

/// Notes a round trip to `addr` that took `took`.
fn answered(addr: SocketAddr, took: Duration) {
    let now = Instant::now();
    ANSWERED.with(|m| m.borrow_mut().insert(addr, now));
    ROUND_TRIPS.with(|w| {
        w.borrow_mut()
            .observe(took.as_micros().min(u64::MAX as u128) as u64)
    });
}

/// Notes that the node holding `drive` let an operation pass its deadline: placement keeps off
/// it for a while, and if nothing on this executor's connection to it was answered for
/// [`STALLED_AFTER`], the connection is closed and the next operation makes a new one (a peer
/// that accepts a connection and then stops reading wedges it; so does a path that went dark).
pub fn unresponsive(node: &Node, drive: u16) {
    let Some(cluster) = node.cluster.as_ref() else {
        return;
    };
    suspect_holder(cluster, drive, |id, addr| {
        let quiet = ANSWERED
            .with(|m| m.borrow().get(&addr).copied())
            .is_none_or(|t| t.elapsed() >= STALLED_AFTER);
        if quiet {
            tracing::warn!(
                "no answer from node {id} ({addr}) for {STALLED_AFTER:?}: new connection"
            );
            if CONNS.with(|m| m.borrow().contains_key(&addr)) {
                node.metrics
                    .peer_connections_replaced
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        quiet
    });
}

/// Suspects the node holding `drive`, and closes this executor's connection to it where
/// `replace(node id, address)` says so.
fn suspect_holder(cluster: &Cluster, drive: u16, replace: impl FnOnce(u32, SocketAddr) -> bool) {
    let Some((id, addr)) = cluster.with_node_of(drive, |n| (n.id, n.peer.parse().ok())) else {
        return;
    };
    if let Some(addr) = addr.filter(|a| replace(id, *a)) {
        forget_connection(addr);
    }
    cluster.suspect(id);
}

/// Whether `e`, from a shard file on another node, says that node did not answer in time or
/// the path to it broke (the connection, or this one stream: after either the stream is out of
/// step), so the operation can be tried elsewhere (as opposed to an error the node answered: a
/// full drive, a missing file).
pub fn peer_unresponsive(e: &io::Error) -> bool {
    transport_failure(e)
        || (crate::oserror::os_code(e).is_none()
            && matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ))
}

async fn connection(cluster: &Cluster, addr: SocketAddr) -> io::Result<Connection> {
    if let Some((c, fingerprint)) = CONNS.with(|m| m.borrow().get(&addr).cloned()) {
        if cluster.revoked.contains_fingerprint(&fingerprint) {
            // Made before the peer's certificate was revoked: the handshake of a new one
            // refuses it.
            forget_connection(addr);
        } else if !c.is_lost() {
            return Ok(c);
        }
    }
    let ep = match CLIENT.with(|c| c.borrow().clone()) {
        Some(ep) => ep,
        None => {
            let any: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0".parse().expect("address")
            } else {
                "[::]:0".parse().expect("address")
            };
            let ep = quic::Endpoint::bind(any, false, None)?;
            CLIENT.with(|c| *c.borrow_mut() = Some(ep.clone()));
            ep
        }
    };
    let c = futures_lite::future::or(
        ep.connect(cluster.tls.client.clone(), addr, NODE_NAME),
        async {
            glommio::timer::sleep(CONNECT_TIMEOUT).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no QUIC handshake with {addr} in {CONNECT_TIMEOUT:?}"),
            ))
        },
    )
    .await?;
    let fingerprint = ostore_transport::tls::fingerprint(&c.peer_certificate().unwrap_or_default());
    CONNS.with(|m| m.borrow_mut().insert(addr, (c.clone(), fingerprint)));
    Ok(c)
}

/// Drops this executor's connection to `addr` (closing it), so that the next operation makes
/// a new one.
fn forget_connection(addr: SocketAddr) {
    if let Some((c, _)) = CONNS.with(|m| m.borrow_mut().remove(&addr)) {
        c.close(b"no progress");
    }
}

/// A shard file on another node: one QUIC stream. Writes are pipelined: a WRITE is sent and
/// the call returns (its bytes are in the stream's send buffer, bounded by QUIC flow control);
/// its answer is read before the next request that waits for one — at the latest the SYNC that
/// makes the file durable, which therefore reports any failed write.
pub struct PeerFile {
    /// The peer's address, for [`answered`].
    addr: SocketAddr,
    streams: RefCell<Option<(SendStream, RecvStream)>>,
    lock: glommio::sync::Semaphore,
    /// Lengths of the WRITEs sent whose answers were not read yet.
    unanswered: RefCell<std::collections::VecDeque<u32>>,
}

pub(crate) fn peer_error(errno: i32, msg: String) -> io::Error {
    if errno != 0 {
        let os = io::Error::from_raw_os_error(errno);
        crate::oserror::OsError::into_io(errno, format!("{msg} ({os})"))
    } else {
        io::Error::other(msg)
    }
}

async fn roundtrip(
    send: &mut SendStream,
    recv: &mut RecvStream,
    req: &Request,
    data: Option<&[u8]>,
) -> io::Result<Vec<u8>> {
    send_request(send, req, data).await?;
    read_answer(recv).await
}

async fn send_request(send: &mut SendStream, req: &Request, data: Option<&[u8]>) -> io::Result<()> {
    send.write_all(&req.encode()).await?;
    if let Some(d) = data {
        send.write_all(d).await?;
    }
    Ok(())
}

async fn read_answer(recv: &mut RecvStream) -> io::Result<Vec<u8>> {
    let mut h = [0u8; ANSWER_BYTES];
    recv.read_exact(&mut h).await?;
    let (ok, len) = decode_answer(&h).map_err(io::Error::other)?;
    let mut payload = vec![0u8; len as usize];
    recv.read_exact(&mut payload).await?;
    if ok {
        Ok(payload)
    } else {
        let (errno, msg) = decode_error(&payload);
        Err(peer_error(errno, msg))
    }
}

fn loc_request(op: Op, loc: &ShardLoc, mode: OpenMode) -> Request {
    Request {
        op,
        mode,
        index: loc.index,
        drive: loc.drive,
        a: loc.file_id,
        b: loc.file_tag,
    }
}

/// Whether `e` says the connection to the peer failed (gone, refused, no answer in time), as
/// opposed to an error the peer answered or one stream's end (a reset stream leaves the
/// connection, and the other requests on it, alone).
fn transport_failure(e: &io::Error) -> bool {
    crate::oserror::os_code(e).is_none()
        && matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionRefused
                | io::ErrorKind::NotConnected
                | io::ErrorKind::TimedOut
        )
}

/// Notes that the node holding `drive` could not be reached: placement keeps off it for a
/// while, and this executor's connection to it is replaced on next use (whether or not the
/// view says it is up by now).
fn unreachable(cluster: &Cluster, drive: u16) {
    suspect_holder(cluster, drive, |_, _| true);
}

async fn open_stream(node: &Node, drive: u16) -> io::Result<(SocketAddr, SendStream, RecvStream)> {
    let cluster = node
        .cluster
        .as_ref()
        .ok_or_else(|| io::Error::other(format!("drive {drive} is not on this node")))?;
    let addr = cluster.peer_of(drive)?;
    // A cached connection can be dead without knowing it yet (the peer was killed a moment
    // ago): on failure, one more try on a fresh connection, whose handshake says for sure.
    let mut tries = 0;
    loop {
        tries += 1;
        let conn = match connection(cluster, addr).await {
            Ok(c) => c,
            Err(e) => {
                unreachable(cluster, drive);
                return Err(e);
            }
        };
        tracing::debug!(
            "drive {drive}: stream to {addr} ({:?})",
            conn.remote_address()
        );
        let opened = async {
            let (mut send, recv) = conn.open_bi().await?;
            send.write_all(&PREAMBLE).await?;
            Ok::<_, io::Error>((send, recv))
        }
        .await;
        match opened {
            Ok((send, recv)) => return Ok((addr, send, recv)),
            Err(e) if tries < 2 && transport_failure(&e) => forget_connection(addr),
            Err(e) => {
                if transport_failure(&e) {
                    unreachable(cluster, drive);
                }
                return Err(e);
            }
        }
    }
}

async fn timed<T>(
    what: &str,
    limit: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    futures_lite::future::or(f, async {
        glommio::timer::sleep(limit).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("peer {what} took over {limit:?}"),
        ))
    })
    .await
}

impl PeerFile {
    pub async fn open(node: &Node, loc: &ShardLoc, mode: OpenMode) -> io::Result<PeerFile> {
        let limit = op_deadline().min(OPEN_TIMEOUT);
        let opened = ostore_server::conn::within(limit, async {
            // open_stream notes its own failures; the round trip's are noted here.
            let (addr, mut send, mut recv) = open_stream(node, loc.drive).await?;
            let started = Instant::now();
            roundtrip(
                &mut send,
                &mut recv,
                &loc_request(Op::Open, loc, mode),
                None,
            )
            .await
            .inspect_err(|e| {
                if let Some(c) = node.cluster.as_ref().filter(|_| transport_failure(e)) {
                    unreachable(c, loc.drive);
                }
            })?;
            answered(addr, started.elapsed());
            Ok(PeerFile {
                addr,
                streams: RefCell::new(Some((send, recv))),
                lock: glommio::sync::Semaphore::new(1),
                unanswered: RefCell::new(std::collections::VecDeque::new()),
            })
        })
        .await;
        match opened {
            Some(r) => r,
            None => {
                // Not answered in many times the usual round trip: placement keeps off the
                // node meanwhile, and a connection that stopped making progress altogether (a
                // peer that stopped reading, a path that went dark) is replaced.
                unresponsive(node, loc.drive);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("peer open took over {limit:?}"),
                ))
            }
        }
    }

    /// Sends `req`; with `wait`, reads the answers of the WRITEs sent before it (returning the
    /// first error among them, if any) and then its own.
    async fn call(&self, req: Request, data: Option<&[u8]>, wait: bool) -> io::Result<Vec<u8>> {
        let _permit = self
            .lock
            .acquire_permit(1)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let Some((mut send, mut recv)) = self.streams.borrow_mut().take() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the peer stream failed earlier",
            ));
        };
        let unanswered = &self.unanswered;
        let started = Instant::now();
        let r = timed("I/O", op_deadline(), async {
            send_request(&mut send, &req, data).await?;
            if !wait {
                unanswered.borrow_mut().push_back(req.b);
                return Ok(Vec::new());
            }
            let mut first_error = None;
            loop {
                let Some(len) = unanswered.borrow_mut().pop_front() else {
                    break;
                };
                let written = read_answer(&mut recv).await.and_then(|p| {
                    p.get(..4)
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_le_bytes)
                        .ok_or_else(|| io::Error::other("malformed WRITE answer"))
                });
                match written {
                    Ok(n) if n == len => {}
                    Ok(n) => {
                        first_error.get_or_insert(io::Error::other(format!(
                            "peer wrote {n} of {len} bytes"
                        )));
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            let own = read_answer(&mut recv).await;
            if own.is_ok() {
                answered(self.addr, started.elapsed());
            }
            match first_error {
                Some(e) => Err(e),
                None => own,
            }
        })
        .await;
        // After a transport error the stream is out of step: drop it, later calls fail.
        if !matches!(&r, Err(e) if peer_unresponsive(e)) {
            *self.streams.borrow_mut() = Some((send, recv));
        }
        r
    }

    pub async fn write_at(&self, data: &[u8], pos: u64) -> io::Result<usize> {
        let req = Request {
            op: Op::Write,
            mode: OpenMode::Read,
            index: 0,
            drive: 0,
            a: pos,
            b: data.len() as u32,
        };
        self.call(req, Some(data), false).await?;
        Ok(data.len())
    }

    pub async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        self.call(
            Request {
                op: Op::Read,
                mode: OpenMode::Read,
                index: 0,
                drive: 0,
                a: pos,
                b: len as u32,
            },
            None,
            true,
        )
        .await
    }

    pub async fn fdatasync(&self) -> io::Result<()> {
        self.simple(Op::Sync, 0).await
    }

    pub async fn pre_allocate(&self, bytes: u64) -> io::Result<()> {
        self.simple(Op::Allocate, bytes).await
    }

    async fn simple(&self, op: Op, a: u64) -> io::Result<()> {
        self.call(
            Request {
                op,
                mode: OpenMode::Read,
                index: 0,
                drive: 0,
                a,
                b: 0,
            },
            None,
            true,
        )
        .await
        .map(|_| ())
    }
}

/// Removes a shard file on the node holding its drive.
pub async fn remove(node: &Node, loc: &ShardLoc) -> io::Result<()> {
    timed("remove", OP_TIMEOUT, async {
        let (_, mut send, mut recv) = open_stream(node, loc.drive).await?;
        roundtrip(
            &mut send,
            &mut recv,
            &loc_request(Op::Remove, loc, OpenMode::Read),
            None,
        )
        .await?;
        Ok(())
    })
    .await
}

//! The server side of the peer protocol (`ostore_wire::peer`): other nodes' reads and writes
//! of this node's shard files, over the QUIC driver, each stream under `guard::caught`.

use crate::ctx::Node;
use crate::shardio::{ReadBuf, ShardFile};
use ostore_control::records::ShardLoc;
use ostore_transport::quic::{self, RecvStream, SendStream};
use ostore_wire::peer::{
    encode_answer, encode_error, Op, OpenMode, Request, PREAMBLE, REQUEST_BYTES,
};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Serves the peer protocol on this executor's socket of the peer port until the node stops.
pub async fn serve(node: Arc<Node>, ep: quic::Endpoint) {
    loop {
        let next = futures_lite::future::or(ep.accept(), async {
            crate::ctx::wait_stopping(&node).await;
            None
        })
        .await;
        let Some(conn) = next else { break };
        let node = node.clone();
        glommio::spawn_local(async move {
            // A handshake that fails (an outsider's certificate) ends here.
            if conn.established().await.is_err() {
                return;
            }
            // Hashed once: revocation is looked up for every stream.
            let fingerprint =
                ostore_transport::tls::fingerprint(&conn.peer_certificate().unwrap_or_default());
            while let Ok((send, recv)) = conn.accept_bi().await {
                // Revoked after the handshake: nothing more is served on the connection.
                if node
                    .cluster
                    .as_ref()
                    .is_none_or(|c| c.revoked.contains_fingerprint(&fingerprint))
                {
                    tracing::warn!(
                        "closing a peer connection from {:?}: its certificate is revoked",
                        conn.remote_address()
                    );
                    conn.close(b"certificate revoked");
                    return;
                }
                if crate::faults::peer_stall() {
                    // Held unread while the fault lasts (see `faults`).
                    glommio::spawn_local(async move {
                        let _held = (send, recv);
                        while crate::faults::peer_stall() {
                            glommio::timer::sleep(Duration::from_millis(100)).await;
                        }
                    })
                    .detach();
                    continue;
                }
                let peer = conn.remote_address();
                let stream = serve_stream(node.clone(), send, recv);
                glommio::spawn_local(async move {
                    ostore_server::guard::caught(|| format!("peer stream from {peer:?}"), stream)
                        .await;
                })
                .detach();
            }
        })
        .detach();
    }
    ep.close();
}

async fn answer(send: &mut SendStream, r: io::Result<Vec<u8>>) -> io::Result<()> {
    match r {
        Ok(p) => {
            send.write_all(&encode_answer(true, p.len() as u32)).await?;
            send.write_all(&p).await
        }
        Err(e) => {
            let p = encode_error(crate::oserror::os_code(&e).unwrap_or(0), &e.to_string());
            send.write_all(&encode_answer(false, p.len() as u32))
                .await?;
            send.write_all(&p).await
        }
    }
}

async fn serve_stream(node: Arc<Node>, mut send: SendStream, mut recv: RecvStream) {
    let mut pre = [0u8; 4];
    if recv.read_exact(&mut pre).await.is_err() || pre != PREAMBLE {
        return;
    }
    let mut file: Option<Rc<ShardFile>> = None;
    let mut created_dir: Option<std::path::PathBuf> = None;
    loop {
        let mut h = [0u8; REQUEST_BYTES];
        match recv.read_exact_or_end(&mut h).await {
            Ok(true) => {}
            _ => break,
        }
        let req = match Request::decode(&h) {
            Ok(r) => r,
            Err(m) => {
                let _ = answer(&mut send, Err(io::Error::other(m))).await;
                break;
            }
        };
        // Shard I/O for another node counts as serving, like a client request.
        let _serving = crate::foreground::begin();
        let r: io::Result<Vec<u8>> = match req.op {
            Op::Open | Op::Remove => {
                let loc = ShardLoc {
                    index: req.index,
                    drive: req.drive,
                    file_id: req.a,
                    file_tag: req.b,
                };
                match node.local_drive(loc.drive) {
                    None => Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("drive {} is not on node {}", loc.drive, node.node_id),
                    )),
                    Some(d) if req.op == Op::Remove => {
                        crate::offload::remove_file(d.shard_path(&loc))
                            .await
                            .map(|()| Vec::new())
                    }
                    Some(d) => {
                        let path = d.shard_path(&loc);
                        if req.mode != OpenMode::Read {
                            created_dir = path.parent().map(|p| p.to_path_buf());
                        }
                        match ShardFile::open(loc.drive, &path, req.mode).await {
                            Ok(f) => {
                                file = Some(Rc::new(f));
                                Ok(Vec::new())
                            }
                            Err(e) => Err(e),
                        }
                    }
                }
            }
            op => match &file {
                None => Err(io::Error::other("no file open on this stream")),
                Some(f) => serve_io(f, op, &req, &mut recv, &mut created_dir).await,
            },
        };
        let fatal = r.is_err() && req.op == Op::Write;
        if answer(&mut send, r).await.is_err() || fatal {
            break;
        }
    }
    let _ = send.finish();
    if let Some(f) = file.and_then(|f| Rc::try_unwrap(f).ok()) {
        f.close().await;
    }
}

async fn serve_io(
    f: &Rc<ShardFile>,
    op: Op,
    req: &Request,
    recv: &mut RecvStream,
    created_dir: &mut Option<std::path::PathBuf>,
) -> io::Result<Vec<u8>> {
    match op {
        Op::Write => {
            let len = req.b as usize;
            let mut buf = glommio::allocate_dma_buffer(len.max(1));
            recv.read_exact(&mut buf.as_bytes_mut()[..len]).await?;
            let n = f.write_at(&Rc::new(buf), len, req.a).await?;
            Ok((n as u32).to_le_bytes().to_vec())
        }
        Op::Read => match f.read_at(req.a, req.b as usize).await? {
            ReadBuf::Dma(r) => Ok(r.to_vec()),
            ReadBuf::Heap(v) => Ok(v),
        },
        Op::Sync => {
            f.fdatasync().await?;
            // The first sync of a new file also makes its directory entry durable.
            if let Some(d) = created_dir.take() {
                crate::offload::sync_dir(d).await?;
            }
            Ok(Vec::new())
        }
        Op::Allocate => f.pre_allocate(req.a).await.map(|_| Vec::new()),
        Op::Open | Op::Remove => Err(io::Error::other("unexpected op")),
    }
}

//! Shard file I/O, done by the executor that owns the drive.
//!
//! Drive `d` belongs to executor `d % cores`. An executor opens, writes, reads and syncs files
//! only on its own drives, through its own io_uring; for a drive it does not own it sends the
//! operation over glommio's channel mesh to the owner and awaits the answer. The local path is
//! zero-copy (the DMA buffer goes to the kernel as is); the remote path copies the bytes once
//! each way into a plain buffer, because DMA buffers belong to one executor.

use crate::oserror::OsError;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
use ostore_control::records::ShardLoc;
use ostore_wire::peer::OpenMode;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Operations in flight from one executor to another, per direction.
pub const MESH_CHANNEL_OPS_MAX: usize = 1024;

type Reply<T> = futures_channel::oneshot::Sender<io::Result<T>>;

/// What one executor asks the owner of a drive to do.
pub enum Op {
    Open {
        path: PathBuf,
        mode: OpenMode,
        reply: Reply<u64>,
    },
    Write {
        handle: u64,
        pos: u64,
        data: Vec<u8>,
        reply: Reply<usize>,
    },
    Read {
        handle: u64,
        pos: u64,
        len: usize,
        reply: Reply<Vec<u8>>,
    },
    Sync {
        handle: u64,
        reply: Reply<()>,
    },
    Allocate {
        handle: u64,
        bytes: u64,
        reply: Reply<()>,
    },
    Close {
        handle: u64,
    },
}

pub type Mesh = MeshBuilder<Op, Full>;

pub fn mesh(cores: usize) -> Mesh {
    MeshBuilder::full(cores, MESH_CHANNEL_OPS_MAX)
}

/// This executor's place in the mesh.
struct Core {
    index: usize,
    /// Mesh peer id of each executor, by executor index.
    peers: Vec<usize>,
    senders: Senders<Op>,
    /// Files this executor opened on behalf of others.
    files: RefCell<HashMap<u64, Rc<DmaFile>>>,
    next_handle: Cell<u64>,
}

thread_local! {
    static CORE: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

fn core() -> Rc<Core> {
    CORE.with(|c| c.borrow().clone())
        .expect("shard I/O used outside a joined executor")
}

/// glommio's error as an `io::Error` that keeps both its context and its OS error number.
fn gio(e: glommio::GlommioError<()>) -> io::Error {
    if let glommio::GlommioError::EnhancedIoError { source, .. } = &e {
        if let Some(code) = source.raw_os_error() {
            return OsError::into_io(code, e.to_string());
        }
    }
    e.into()
}

fn gone() -> io::Error {
    io::Error::other("the executor owning this drive has stopped")
}

/// Joins the mesh as executor `index` of `peer_ids.len()`; returns when every executor has
/// joined. Serves the operations other executors send for this executor's drives.
pub async fn join(mesh: Mesh, index: usize, peer_ids: &[AtomicUsize]) -> io::Result<()> {
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|_| io::Error::other("joining the executor mesh"))?;
    peer_ids[index].store(senders.peer_id(), Ordering::SeqCst);
    // Every peer records its id right after joining; wait until all have.
    while peer_ids
        .iter()
        .any(|p| p.load(Ordering::SeqCst) == usize::MAX)
    {
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    let peers = peer_ids.iter().map(|p| p.load(Ordering::SeqCst)).collect();
    let core = Rc::new(Core {
        index,
        peers,
        senders,
        files: RefCell::new(HashMap::new()),
        next_handle: Cell::new(1),
    });
    CORE.with(|c| *c.borrow_mut() = Some(core.clone()));
    for (_, rx) in receivers.streams() {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Some(op) = rx.recv().await {
                glommio::spawn_local(serve(core.clone(), op)).detach();
            }
        })
        .detach();
    }
    Ok(())
}

async fn open_local(path: &Path, mode: OpenMode) -> io::Result<DmaFile> {
    let mut o = OpenOptions::new();
    o.read(true);
    match mode {
        OpenMode::Read => {}
        OpenMode::Create => {
            o.write(true).create_new(true);
        }
        OpenMode::Write => {
            o.write(true).create(true);
        }
    }
    o.dma_open(path).await.map_err(gio)
}

async fn serve(core: Rc<Core>, op: Op) {
    let file = |h: u64| {
        core.files
            .borrow()
            .get(&h)
            .cloned()
            .ok_or_else(|| io::Error::other("unknown shard handle"))
    };
    match op {
        Op::Open { path, mode, reply } => {
            let r = open_local(&path, mode).await.map(|f| {
                let h = core.next_handle.get();
                core.next_handle.set(h + 1);
                core.files.borrow_mut().insert(h, Rc::new(f));
                h
            });
            let _ = reply.send(r);
        }
        Op::Write {
            handle,
            pos,
            data,
            reply,
        } => {
            let r = async {
                let f = file(handle)?;
                let mut buf = f.alloc_dma_buffer(data.len());
                buf.as_bytes_mut().copy_from_slice(&data);
                f.write_at(buf, pos).await.map_err(gio)
            }
            .await;
            let _ = reply.send(r);
        }
        Op::Read {
            handle,
            pos,
            len,
            reply,
        } => {
            let r = async {
                let f = file(handle)?;
                let rr = f.read_at_aligned(pos, len).await.map_err(gio)?;
                Ok(rr.to_vec())
            }
            .await;
            let _ = reply.send(r);
        }
        Op::Sync { handle, reply } => {
            let r = async { file(handle)?.fdatasync().await.map_err(gio) }.await;
            let _ = reply.send(r);
        }
        Op::Allocate {
            handle,
            bytes,
            reply,
        } => {
            let r = async { file(handle)?.pre_allocate(bytes, false).await.map_err(gio) }.await;
            let _ = reply.send(r);
        }
        Op::Close { handle } => {
            let f = core.files.borrow_mut().remove(&handle);
            if let Some(f) = f.and_then(|f| Rc::try_unwrap(f).ok()) {
                let _ = f.close().await;
            }
        }
    }
}

/// Index of the executor owning `drive`.
pub fn owner_of(drive: u16) -> usize {
    drive as usize % core().peers.len()
}

/// A shard file, local to this executor or held by the drive's owner.
pub enum ShardFile {
    Local(Rc<DmaFile>),
    /// On a drive of this node that another executor owns.
    Remote {
        peer: usize,
        handle: u64,
    },
    /// On another node's drive, over QUIC.
    Peer(crate::peer::PeerFile),
}

/// Bytes read from a shard file.
pub enum ReadBuf {
    Dma(ReadResult),
    Heap(Vec<u8>),
}

impl std::ops::Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadBuf::Dma(r) => r,
            ReadBuf::Heap(v) => v,
        }
    }
}

async fn ask<T>(peer: usize, make: impl FnOnce(Reply<T>) -> Op) -> io::Result<T> {
    let (tx, rx) = futures_channel::oneshot::channel();
    core()
        .senders
        .send_to(peer, make(tx))
        .await
        .map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?
}

impl ShardFile {
    /// Opens (or creates a new) shard file on `drive`.
    pub async fn open(drive: u16, path: &Path, mode: OpenMode) -> io::Result<ShardFile> {
        let c = core();
        let owner = drive as usize % c.peers.len();
        if owner == c.index {
            return Ok(ShardFile::Local(Rc::new(open_local(path, mode).await?)));
        }
        let peer = c.peers[owner];
        let path = path.to_path_buf();
        let handle = ask(peer, |reply| Op::Open { path, mode, reply }).await?;
        Ok(ShardFile::Remote { peer, handle })
    }

    /// Opens the shard file `loc` names, wherever its drive is: on this executor, on another
    /// executor of this node, or on another node.
    pub async fn open_loc(
        node: &crate::ctx::Node,
        loc: &ShardLoc,
        mode: OpenMode,
    ) -> io::Result<ShardFile> {
        match node.local_drive(loc.drive) {
            Some(d) => ShardFile::open(loc.drive, &d.shard_path(loc), mode).await,
            None => crate::peer::PeerFile::open(node, loc, mode)
                .await
                .map(ShardFile::Peer),
        }
    }

    /// Writes `buf[..len]` at `pos` (both aligned).
    pub async fn write_at(&self, buf: &Rc<DmaBuffer>, len: usize, pos: u64) -> io::Result<usize> {
        match self {
            ShardFile::Local(f) if len == buf.len() => {
                f.write_rc_at(buf.clone(), pos).await.map_err(gio)
            }
            ShardFile::Local(f) => {
                let mut b = f.alloc_dma_buffer(len);
                b.as_bytes_mut().copy_from_slice(&buf.as_bytes()[..len]);
                f.write_at(b, pos).await.map_err(gio)
            }
            ShardFile::Peer(p) => p.write_at(&buf.as_bytes()[..len], pos).await,
            ShardFile::Remote { peer, handle } => {
                let data = buf.as_bytes()[..len].to_vec();
                ask(*peer, |reply| Op::Write {
                    handle: *handle,
                    pos,
                    data,
                    reply,
                })
                .await
            }
        }
    }

    /// Reads `len` bytes at `pos` (both aligned).
    pub async fn read_at(&self, pos: u64, len: usize) -> io::Result<ReadBuf> {
        match self {
            ShardFile::Local(f) => f
                .read_at_aligned(pos, len)
                .await
                .map(ReadBuf::Dma)
                .map_err(gio),
            ShardFile::Peer(p) => p.read_at(pos, len).await.map(ReadBuf::Heap),
            ShardFile::Remote { peer, handle } => ask(*peer, |reply| Op::Read {
                handle: *handle,
                pos,
                len,
                reply,
            })
            .await
            .map(ReadBuf::Heap),
        }
    }

    /// Reserves `bytes` of space and sets the file size, so that the writes that follow are
    /// overwrites within the file: ext4 then completes them asynchronously instead of punting
    /// each size-extending write to a kernel worker that takes the inode lock.
    pub async fn pre_allocate(&self, bytes: u64) -> io::Result<()> {
        match self {
            ShardFile::Local(f) => f.pre_allocate(bytes, false).await.map_err(gio),
            ShardFile::Peer(p) => p.pre_allocate(bytes).await,
            ShardFile::Remote { peer, handle } => {
                ask(*peer, |reply| Op::Allocate {
                    handle: *handle,
                    bytes,
                    reply,
                })
                .await
            }
        }
    }

    pub async fn fdatasync(&self) -> io::Result<()> {
        match self {
            ShardFile::Local(f) => f.fdatasync().await.map_err(gio),
            ShardFile::Peer(p) => p.fdatasync().await,
            ShardFile::Remote { peer, handle } => {
                ask(*peer, |reply| Op::Sync {
                    handle: *handle,
                    reply,
                })
                .await
            }
        }
    }

    /// Removes the shard file `loc` names; a file already gone counts as removed.
    pub async fn remove(node: &crate::ctx::Node, loc: &ShardLoc) -> io::Result<()> {
        let Some(d) = node.local_drive(loc.drive) else {
            return crate::peer::remove(node, loc).await;
        };
        crate::offload::remove_file(d.shard_path(loc)).await
    }

    /// Closes the file (for a remote file, the owner closes it).
    pub async fn close(self) {
        let local = match &self {
            ShardFile::Local(f) => Some(f.clone()),
            ShardFile::Remote { .. } | ShardFile::Peer(_) => None,
        };
        drop(self);
        if let Some(f) = local.and_then(|f| Rc::try_unwrap(f).ok()) {
            let _ = f.close().await;
        }
    }
}

impl Drop for ShardFile {
    /// A remote file is closed by its owner even when the reader or writer holding it goes
    /// away without closing (a client that disconnects mid-GET), so handles never leak.
    fn drop(&mut self) {
        if let ShardFile::Remote { peer, handle } = self {
            let (peer, handle) = (*peer, *handle);
            let _ = CORE.try_with(|c| {
                if let Some(core) = c.borrow().as_ref() {
                    if core
                        .senders
                        .try_send_to(peer, Op::Close { handle })
                        .is_err()
                    {
                        // The channel is full: send it when there is room.
                        let core = core.clone();
                        glommio::spawn_local(async move {
                            let _ = core.senders.send_to(peer, Op::Close { handle }).await;
                        })
                        .detach();
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oserror::os_code;

    #[test]
    fn a_full_drive_stays_a_full_drive_through_glommio_and_peers() {
        let e = glommio::GlommioError::<()>::EnhancedIoError {
            source: io::Error::from_raw_os_error(libc::ENOSPC),
            op: "Pre-allocate space",
            path: Some("/d/shards/0f/x.0".into()),
            fd: Some(3),
        };
        let io = gio(e);
        assert_eq!(os_code(&io), Some(libc::ENOSPC));
        assert!(io.to_string().contains("Pre-allocate space"), "{io}");
        let remote = crate::peer::peer_error(libc::EDQUOT, "allocating".into());
        assert_eq!(os_code(&remote), Some(libc::EDQUOT));
        assert_eq!(os_code(&io::Error::other("no number")), None);
    }
}

//! Runs metadata writes on a dedicated thread so that the data plane's executors never block on
//! a commit's fsync, and commits them in groups: every write queued while the previous commit
//! was in flight goes into the next one (one fsync for many requests). Reads run on the
//! caller's thread when the store reads a local snapshot without blocking (redb), and on a
//! pool of reader threads when each read is a network round trip (etcd, FoundationDB:
//! [`Kv::read_threads`]).

use crate::kv::{Kv, KvError};
use crate::meta::MetaError;
use std::sync::Arc;

/// Most writes one group commit carries.
pub const GROUP_COMMIT_WRITES_MAX: usize = 256;

type Reply = Box<dyn FnOnce(Result<(), KvError>) + Send>;
type Job = Box<dyn FnOnce(&dyn Kv) -> Reply + Send>;
type ReadJob = Box<dyn FnOnce(&dyn Kv) + Send>;

/// A cheap, cloneable handle to the metadata store.
#[derive(Clone)]
pub struct Meta {
    kv: Arc<dyn Kv + Send + Sync>,
    writes: flume::Sender<Job>,
    /// The reader threads' queue, for a store whose reads block on the network.
    reads: Option<flume::Sender<ReadJob>>,
}

fn writer(kv: Arc<dyn Kv + Send + Sync>, rx: flume::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < GROUP_COMMIT_WRITES_MAX {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(jobs.len());
        let r = kv.write_batch(&mut |b| {
            for job in jobs.drain(..) {
                replies.push(job(b));
            }
        });
        if let Err(e) = &r {
            tracing::error!(
                "metadata group commit of {} writes failed: {e}",
                replies.len()
            );
        }
        // Answers go out only after the commit: nobody learns of a write that may not last.
        for reply in replies {
            reply(r.clone());
        }
    }
}

impl Meta {
    /// Starts the writer thread over `kv`. The thread ends when the last handle is dropped.
    pub fn start(kv: Arc<dyn Kv + Send + Sync>) -> Self {
        let (tx, rx) = flume::unbounded::<Job>();
        let worker = kv.clone();
        std::thread::Builder::new()
            .name("ostore-meta".into())
            .spawn(move || writer(worker, rx))
            .expect("spawn metadata writer thread");
        let readers = kv.read_threads();
        let reads = (readers > 0).then(|| {
            let (tx, rx) = flume::unbounded::<ReadJob>();
            for i in 0..readers {
                let kv = kv.clone();
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("ostore-meta-r{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            job(&*kv);
                        }
                    })
                    .expect("spawn metadata reader thread");
            }
            tx
        });
        Meta {
            kv,
            writes: tx,
            reads,
        }
    }

    /// Runs `f` (read transactions): on the calling thread for a store that reads a local
    /// snapshot, else on a reader thread, waiting without blocking the calling executor.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Kv) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        let Some(reads) = &self.reads else {
            return f(self.kv());
        };
        let (tx, rx) = futures_channel::oneshot::channel();
        let job: ReadJob = Box::new(move |kv| {
            let _ = tx.send(f(kv));
        });
        if reads.send(job).is_err() {
            return Err(MetaError::Kv(KvError::Storage(
                "the metadata readers have stopped".into(),
            )));
        }
        rx.await.unwrap_or_else(|_| {
            Err(MetaError::Kv(KvError::Storage(
                "the metadata readers dropped a read".into(),
            )))
        })
    }

    /// The store, for reads on the calling thread (which [`read`](Self::read) avoids where a
    /// read blocks).
    pub fn kv(&self) -> &dyn Kv {
        &*self.kv
    }

    /// Runs one control-plane request: reads on the calling thread, writes through the
    /// group-commit writer. The answer is encoded as [`crate::rpc::execute`] encodes it.
    pub async fn call(&self, req: crate::rpc::Request) -> Result<Vec<u8>, MetaError> {
        if req.is_write() && self.kv.commit_outcome_known() {
            // Nobody retries a request made here with its token, and the store never leaves a
            // commit's outcome unknown: no idempotency marker is needed (one read and one write
            // fewer per request, and no marker to expire later).
            return self
                .write(move |kv| crate::rpc::execute(kv, req, now_ms()))
                .await;
        }
        let token = crate::rpc::Token::new(rand::random(), now_ms());
        self.call_with(token, req).await
    }

    /// [`call`](Self::call) with the caller's token (a request arriving over the network,
    /// possibly a retry).
    pub async fn call_with(
        &self,
        token: crate::rpc::Token,
        req: crate::rpc::Request,
    ) -> Result<Vec<u8>, MetaError> {
        if req.is_write() {
            self.write(move |kv| crate::rpc::execute_idempotent(kv, req, token, now_ms()))
                .await
        } else {
            self.read(move |kv| crate::rpc::execute(kv, req, now_ms()))
                .await
        }
    }

    /// [`call`](Self::call) for a leader's decision: a write runs inside
    /// [`crate::cluster::fenced`], so it applies only while `fence` still holds the leader
    /// lease.
    pub async fn call_fenced(
        &self,
        fence: crate::cluster::Fence,
        req: crate::rpc::Request,
    ) -> Result<Vec<u8>, MetaError> {
        if !req.is_write() {
            return self.call(req).await;
        }
        let known = self.kv.commit_outcome_known();
        let token = crate::rpc::Token::new(rand::random(), now_ms());
        self.write_fenced(fence, move |kv| {
            if known {
                crate::rpc::execute(kv, req.clone(), now_ms())
            } else {
                crate::rpc::execute_idempotent(kv, req.clone(), token, now_ms())
            }
        })
        .await
    }

    /// [`write`](Self::write) of a leader's decision: `f` runs inside
    /// [`crate::cluster::fenced`], as one transaction that applies only while `fence` still
    /// holds the leader lease.
    pub async fn write_fenced<T: Send + 'static>(
        &self,
        fence: crate::cluster::Fence,
        f: impl Fn(&dyn Kv) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        self.write(move |kv| crate::cluster::fenced(kv, fence, &f))
            .await
    }

    /// Runs `f` (write transactions) on the writer thread and waits, without blocking the
    /// calling executor, until its group is committed.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Kv) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        let (tx, rx) = futures_channel::oneshot::channel();
        let job: Job = Box::new(move |kv| {
            let out = f(kv);
            Box::new(move |committed: Result<(), KvError>| {
                let _ = tx.send(match (committed, out) {
                    (Ok(()), out) => out,
                    (Err(e), Ok(_)) => Err(MetaError::Kv(e)),
                    (Err(_), Err(app)) => Err(app),
                });
            })
        });
        if self.writes.send(job).is_err() {
            return Err(MetaError::Kv(KvError::Storage(
                "the metadata writer has stopped".into(),
            )));
        }
        rx.await.unwrap_or_else(|_| {
            Err(MetaError::Kv(KvError::Storage(
                "the metadata writer dropped a write".into(),
            )))
        })
    }
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

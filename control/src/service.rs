//! Runs metadata writes on a dedicated thread so that the data plane's executors never block on
//! a commit's fsync, and commits them in groups: every write queued while the previous commit
//! was in flight goes into the next one (one fsync for many requests). Reads run on the
//! caller's thread: they take a snapshot and never block.

use crate::kv::{Kv, KvError};
use crate::meta::MetaError;
use std::sync::Arc;

/// Most writes one group commit carries.
pub const GROUP_COMMIT_WRITES_MAX: usize = 256;

type Reply = Box<dyn FnOnce(Result<(), KvError>) + Send>;
type Job = Box<dyn FnOnce(&dyn Kv) -> Reply + Send>;

/// A cheap, cloneable handle to the metadata store.
#[derive(Clone)]
pub struct Meta {
    kv: Arc<dyn Kv + Send + Sync>,
    writes: flume::Sender<Job>,
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
        Meta { kv, writes: tx }
    }

    /// The store, for reads on the calling thread.
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
            crate::rpc::execute(self.kv(), req, now_ms())
        }
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

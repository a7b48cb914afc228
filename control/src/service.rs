//! Runs metadata writes on a dedicated thread so that the data plane's executors never block on
//! a commit's fsync. Reads run on the caller's thread: they take a snapshot and never block.

use crate::kv::Kv;
use std::sync::Arc;

type Job = Box<dyn FnOnce(&dyn Kv) + Send>;

/// A cheap, cloneable handle to the metadata store.
#[derive(Clone)]
pub struct Meta {
    kv: Arc<dyn Kv>,
    writes: flume::Sender<Job>,
}

impl Meta {
    /// Starts the writer thread over `kv`. The thread ends when the last handle is dropped.
    pub fn start(kv: Arc<dyn Kv>) -> Self {
        let (tx, rx) = flume::unbounded::<Job>();
        let worker = kv.clone();
        std::thread::Builder::new()
            .name("ostore-meta".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&*worker);
                }
            })
            .expect("spawn metadata writer thread");
        Meta { kv, writes: tx }
    }

    /// The store, for reads on the calling thread.
    pub fn kv(&self) -> &dyn Kv {
        &*self.kv
    }

    /// Runs `f` (a write transaction) on the writer thread and waits for its result without
    /// blocking the calling executor.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Kv) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = futures_channel::oneshot::channel();
        let job: Job = Box::new(move |kv| {
            let _ = tx.send(f(kv));
        });
        self.writes
            .send(job)
            .expect("metadata writer thread is running");
        rx.await.expect("metadata writer thread answered")
    }
}

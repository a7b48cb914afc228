//! Filesystem calls that io_uring does not cover (or that glommio does not expose through it)
//! run on the executor's helper thread, so the executor goes on serving while they wait on the
//! disk: unlinks, directory fsyncs, directory listings, statvfs. The helper is glommio's
//! blocking thread of this executor: one per executor, so the calls in flight are bounded and
//! queue behind each other rather than multiplying threads.

use std::io;
use std::path::PathBuf;

thread_local! {
    static ON_EXECUTOR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as a serving executor's: its blocking calls go to its helper thread from
/// now on. Elsewhere (start-up, before any executor runs) they are made in place.
pub fn on_executor_thread() {
    ON_EXECUTOR.with(|c| c.set(true));
}

/// Runs `f` on this executor's helper thread and waits for it without blocking the executor
/// (on a thread that is not a serving executor's, runs it in place).
pub async fn blocking<F, R>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if ON_EXECUTOR.with(|c| c.get()) {
        glommio::executor().spawn_blocking(f).await
    } else {
        f()
    }
}

/// Removes a file; one already gone counts as removed.
pub async fn remove_file(path: PathBuf) -> io::Result<()> {
    blocking(move || match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    })
    .await
}

/// Makes a directory's entries durable (fsync of the directory).
pub async fn sync_dir(path: PathBuf) -> io::Result<()> {
    blocking(move || crate::drives::fsync_dir(&path)).await
}

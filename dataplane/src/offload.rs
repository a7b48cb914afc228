//! Filesystem calls that io_uring does not cover (or that glommio does not expose through it)
//! run on the executor's helper thread, so the executor goes on serving while they wait on the
//! disk: unlinks, directory fsyncs, directory listings, statvfs. The helper is glommio's
//! blocking thread of this executor: one per executor, so the calls in flight are bounded and
//! queue behind each other rather than multiplying threads.

use std::io;
use std::path::PathBuf;

/// Runs `f` on this executor's helper thread and waits for it without blocking the executor.
pub async fn blocking<F, R>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    glommio::executor().spawn_blocking(f).await
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
    blocking(move || std::fs::File::open(&path)?.sync_all()).await
}

/// One entry of [`read_dir`]: its name, path, size and modification time.
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub len: u64,
    pub modified: Option<std::time::SystemTime>,
}

/// The entries of a directory with their metadata (read on the helper thread).
pub async fn read_dir(path: PathBuf) -> io::Result<Vec<Entry>> {
    blocking(move || {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&path)?.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            out.push(Entry {
                name: e.file_name().to_string_lossy().into_owned(),
                path: e.path(),
                len: meta.len(),
                modified: meta.modified().ok(),
            });
        }
        Ok(out)
    })
    .await
}

//! What a server process sets up about itself before it serves: who may read what it creates,
//! how many files it may hold open, and paths that stay right whatever the working directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// File descriptors kept back from client connections: drives, shard files being read or
/// written, QUIC sockets, the metadata store, the log.
pub const FDS_RESERVED: u64 = 256;

/// Most HTTP/1.1 connections one executor holds, whatever the file limit allows.
pub const CONNECTIONS_PER_EXECUTOR_MAX: usize = 16_384;

/// Makes everything the process creates from now on private to its user (files 0600,
/// directories 0700): shard files, metadata, probes, certificates. Object bytes and metadata
/// are nobody else's business on a shared machine.
pub fn private_umask() {
    // SAFETY: umask only changes the process's file-creation mask.
    unsafe { libc::umask(0o077) };
}

/// Raises the soft limit on open files to the hard limit (a common soft default is 1,024,
/// which a few hundred idle clients exhaust) and returns the soft limit now in force.
pub fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let now: u64 = lim.rlim_cur;
    if now != before {
        tracing::info!("open files: soft limit raised from {before} to {now}");
    }
    if now < 4096 {
        tracing::warn!(
            "open files: the limit is {now}; raise the hard limit (LimitNOFILE=, ulimit -Hn) for \
             more client connections"
        );
    }
    now
}

/// How many HTTP/1.1 connections each of `executors` takes before refusing more, so that
/// clients can never use up the descriptors the drives and peers need.
pub fn connections_per_executor(open_files: u64, executors: usize) -> usize {
    let for_clients = open_files.saturating_sub(FDS_RESERVED);
    // A quarter of the rest for HTTP/1.1 connections: each request also opens shard files (K+M
    // for a PUT, up to K+M for a GET), HTTP/3 and peers need sockets, and a refused connection
    // briefly holds one more.
    let per = for_clients / 4 / executors.max(1) as u64;
    (per as usize).clamp(16, CONNECTIONS_PER_EXECUTOR_MAX)
}

/// `path` made absolute against the working directory at start-up (symbolic links are left as
/// they are). glommio opens files and directories relative to no directory at all, so a
/// relative path works for `std::fs` and fails on the executors.
pub fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// Makes `dir` private to the user even when it was created before (by an older version, or
/// by hand with a looser mask).
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        let mode = meta.permissions().mode() & !0o077;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// [`make_private`], or a warning where the directory is not ours to change (a mount point
/// owned by root, say): what the process creates inside is private anyway (umask).
pub fn make_private_or_warn(dir: &Path) {
    if let Err(e) = make_private(dir) {
        tracing::warn!(
            "{} stays readable by others ({e}); what ostore creates inside it is private",
            dir.display()
        );
    }
}

/// Prints the one `ostore ready` line on stdout.
pub fn print_ready(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// SIGINT and SIGTERM, caught from now on: taken before the ready line is printed, so a signal
/// sent the moment a supervisor sees it stops the process cleanly instead of killing it.
pub fn stop_signals() -> anyhow::Result<signal_hook::iterator::Signals> {
    Ok(signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?)
}

/// What the main thread waits for once the node serves.
enum Event {
    Signal(i32),
    ExecutorEnded { core: usize, why: Option<String> },
}

/// How long a stopping node gives its executors beyond the requests' drain time before it
/// exits anyway.
const STOP_GRACE_S: u64 = 10;

/// Blocks until SIGINT or SIGTERM, then stops the node and waits for its executors (at most
/// the drain time and a grace, then it exits anyway). An executor that ends before
/// the node was told to stop means the node lost part of itself (its connections, its drives):
/// the process exits at once, non-zero, saying why, so a supervisor restarts a whole node
/// instead of a half-alive one serving on.
pub fn wait_for_signal_then_stop(
    stopping: &AtomicBool,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    mut signals: signal_hook::iterator::Signals,
) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("ostore-signals".into())
            .spawn(move || {
                for s in signals.forever() {
                    if tx.send(Event::Signal(s)).is_err() {
                        break;
                    }
                }
            })?;
    }
    let executors = handles.len();
    for (core, h) in handles.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("ostore-watch-{core}"))
            .spawn(move || {
                let why = match h.join() {
                    Ok(()) => None,
                    Err(glommio::GlommioError::BuilderError(
                        glommio::BuilderErrorKind::ThreadPanic(p),
                    )) => Some(format!("it panicked: {}", crate::guard::message(&*p))),
                    Err(e) => Some(e.to_string()),
                };
                let _ = tx.send(Event::ExecutorEnded { core, why });
            })?;
    }
    drop(tx);
    let mut deadline: Option<std::time::Instant> = None;
    let mut ended = 0;
    while ended < executors {
        let ev = match deadline {
            None => rx.recv().ok(),
            Some(d) => rx
                .recv_timeout(d.saturating_duration_since(std::time::Instant::now()))
                .ok(),
        };
        match ev {
            None => {
                tracing::warn!(
                    "{} of {executors} executors still busy {}s after the stop: exiting anyway",
                    executors - ended,
                    crate::conn::DRAIN_S_MAX + STOP_GRACE_S
                );
                return Ok(());
            }
            Some(Event::Signal(sig)) if deadline.is_some() => {
                // Supervisors repeat their signal; the drain is bounded either way.
                tracing::info!("signal {sig}: already stopping");
            }
            Some(Event::Signal(sig)) => {
                tracing::info!(
                    "signal {sig}: stopping, no new connections, finishing requests in flight"
                );
                stopping.store(true, Ordering::SeqCst);
                deadline = Some(
                    std::time::Instant::now()
                        + Duration::from_secs(crate::conn::DRAIN_S_MAX + STOP_GRACE_S),
                );
            }
            Some(Event::ExecutorEnded { core, why }) => {
                if deadline.is_none() || why.is_some() {
                    let why = why.unwrap_or_else(|| "it returned".into());
                    tracing::error!("executor {core} ended while serving ({why}): exiting");
                    eprintln!("ostore: executor {core} ended while serving ({why}); exiting so that the node restarts whole");
                    std::process::exit(70);
                }
                ended += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_cap_leaves_room_for_drives() {
        // 1,024 files, 2 executors: (1024 - 256) / 4 / 2.
        assert_eq!(connections_per_executor(1024, 2), 96);
        assert_eq!(connections_per_executor(100, 2), 16);
        assert_eq!(
            connections_per_executor(1 << 20, 1),
            CONNECTIONS_PER_EXECUTOR_MAX
        );
        assert_eq!(connections_per_executor(20_000, 0), 4936);
    }

    #[test]
    fn absolute_keeps_absolute_paths_and_anchors_relative_ones() {
        assert_eq!(absolute(Path::new("/a/b")).unwrap(), Path::new("/a/b"));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            absolute(Path::new("./ostore-data")).unwrap(),
            cwd.join("ostore-data")
        );
    }
}

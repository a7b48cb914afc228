//! Panics stay inside the request, connection or task they happen in.
//!
//! glommio propagates a task's panic out of the executor's run loop, which ends the executor
//! thread: its listener share, its drives and its QUIC endpoints with it. Every task that
//! handles bytes from outside (a client, a peer, another executor) therefore runs under
//! [`caught`], which turns a panic into a logged error and a counted one; the executor goes on.
//! A panic that still escapes ends the whole process (see `node::wait_for_signal_then_stop`).

use futures_util::FutureExt as _;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};

/// The message a panic carried.
pub fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Panics caught in this process: requests, connections, streams and their sub-tasks
/// (`ostore_panics_total`; one node or control plane per process).
pub static PANICS: AtomicU64 = AtomicU64::new(0);

/// Counts and logs a caught panic.
fn recovered(what: &str, payload: &(dyn std::any::Any + Send)) {
    PANICS.fetch_add(1, Ordering::Relaxed);
    tracing::error!("{what} panicked: {}", message(payload));
}

/// Runs `fut`; if it panics, logs the panic with `what` (the request, the connection), counts
/// it and returns `None`. What the future held is dropped as the panic unwinds.
pub async fn caught<F: Future>(what: impl FnOnce() -> String, fut: F) -> Option<F::Output> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(v) => Some(v),
        Err(p) => {
            recovered(&what(), &*p);
            None
        }
    }
}

/// Spawns a sub-task of a request on this executor; a panic in it is logged and counted, and
/// the task yields `failed()` instead, which the request turns into its error.
pub fn spawn_subtask<T: 'static, F: Future<Output = T> + 'static>(
    what: &'static str,
    fut: F,
    failed: fn() -> T,
) -> glommio::Task<T> {
    glommio::spawn_local(async move {
        caught(|| what.to_string(), fut)
            .await
            .unwrap_or_else(failed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_task_fails_alone_and_the_executor_serves_on() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .unwrap();
        let before = PANICS.load(Ordering::Relaxed);
        let got = ex.run(async {
            let a = caught(|| "a request".into(), async {
                let v: Vec<u8> = Vec::new();
                let i = v.len() + 5;
                v[i] // an out-of-bounds index, as a bad range once was
            })
            .await;
            // The executor still runs tasks after the panic.
            let b = glommio::spawn_local(async { 7 }).await;
            (a, b)
        });
        assert_eq!(got, (None, 7));
        assert!(PANICS.load(Ordering::Relaxed) > before);
    }

    #[test]
    fn a_panicking_subtask_yields_its_failure_value() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .unwrap();
        let before = PANICS.load(Ordering::Relaxed);
        let got: Result<u8, &str> = ex.run(async {
            spawn_subtask(
                "a test sub-task",
                async {
                    let v: Vec<u8> = Vec::new();
                    Ok(v[v.len() + 1])
                },
                || Err("failed"),
            )
            .await
        });
        assert_eq!(got, Err("failed"));
        assert!(PANICS.load(Ordering::Relaxed) > before);
    }
}

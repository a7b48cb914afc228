//! Faults a test can switch on in a running cluster node, to see the rest of the cluster live
//! with them. Off, and unreachable, unless `ostore node` was started with `OSTORE_FAULTS=1`;
//! then each SIGUSR1 toggles the one fault there is:
//!
//! - **peer stall**: the peer port keeps accepting connections and streams (its QUIC stack
//!   answers, so the connections stay alive) but reads nothing from them, like a node whose
//!   shard server is wedged while its heartbeats go on.

use std::sync::atomic::{AtomicBool, Ordering};

static PEER_STALL: AtomicBool = AtomicBool::new(false);

/// Whether the peer server holds new streams unread.
pub fn peer_stall() -> bool {
    PEER_STALL.load(Ordering::Relaxed)
}

/// With `OSTORE_FAULTS=1` in the environment, lets SIGUSR1 toggle the peer stall.
pub fn install() -> anyhow::Result<()> {
    if std::env::var("OSTORE_FAULTS").as_deref() != Ok("1") {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])?;
    std::thread::Builder::new()
        .name("ostore-faults".into())
        .spawn(move || {
            for _ in signals.forever() {
                let now = !PEER_STALL.fetch_xor(true, Ordering::Relaxed);
                tracing::warn!(
                    "fault injection: peer stall {}",
                    if now { "on" } else { "off" }
                );
            }
        })?;
    tracing::warn!("fault injection enabled (OSTORE_FAULTS=1): SIGUSR1 toggles a peer stall");
    Ok(())
}

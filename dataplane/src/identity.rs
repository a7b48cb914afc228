//! A cluster node's identity (its certificate, the CA's, and its private key): kept as PEM on
//! every drive (`DRIVE/node-identity.pem`, mode 0600), so that it survives a restart and the
//! loss of any drive but the last; got by joining with a join token when no drive has one.

use anyhow::Context as _;
use ostore_transport::tls::{Identity, NODE_NAME};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// The identity's file on each drive.
pub const FILE: &str = "node-identity.pem";

fn file(drive: &Path) -> PathBuf {
    drive.join(FILE)
}

/// The identity with the latest expiry among the drives' that are valid; a drive whose file is
/// unreadable or not a valid identity is reported and passed over.
pub fn load(drives: &[PathBuf]) -> Option<Identity> {
    let mut best: Option<Identity> = None;
    for d in drives {
        let f = file(d);
        let text = match std::fs::read(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!("reading {}: {e}", f.display());
                continue;
            }
        };
        match Identity::from_pem(&text, NODE_NAME) {
            Ok(id) if best.as_ref().is_none_or(|b| id.expires_s() > b.expires_s()) => {
                best = Some(id)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("{} is not a valid node identity: {e:#}", f.display()),
        }
    }
    best
}

/// Writes `identity` to every drive that lacks it (made durable: file, then directory).
pub fn store(drives: &[PathBuf], identity: &Identity) -> anyhow::Result<()> {
    let pem = identity.to_pem();
    for d in drives {
        let f = file(d);
        if std::fs::read(&f).is_ok_and(|t| t == pem.as_bytes()) {
            continue;
        }
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        let tmp = d.join(format!("{FILE}.tmp"));
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        w.write_all(pem.as_bytes())?;
        w.sync_all()?;
        std::fs::rename(&tmp, &f).with_context(|| format!("writing {}", f.display()))?;
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

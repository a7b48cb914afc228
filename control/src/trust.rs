//! What the control plane keeps of the cluster's trust (see the README's security model): the
//! cluster CA (its certificate, and its key sealed under the operator's cluster key — sealing
//! is the caller's, this module stores bytes), the join tokens already used, the certificates
//! each node presented, and the revoked ones. Certificates are named by the BLAKE3 fingerprint
//! of their DER.

use crate::keys;
use crate::kv::{run, Kv, Tx};
use crate::meta::{MetaError, Result};
use crate::records::{decode, encode};
use serde::{Deserialize, Serialize};

/// The cluster CA as stored (`keys::tag::CA`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRec {
    /// The CA certificate, DER.
    pub cert: Vec<u8>,
    /// Its private key (PKCS#8 DER), sealed (`ostore_transport::tls::seal`).
    pub sealed_key: Vec<u8>,
    pub created_ms: u64,
}

/// A revoked certificate (`keys::tag::REVOKED`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedRec {
    /// The node it was recorded for, if any.
    pub node: Option<u32>,
    /// When the certificate expires anyway; the record may go then.
    pub expires_ms: u64,
    pub revoked_ms: u64,
}

/// The client root secret as the control plane holds it (`keys::tag::ROOT_SECRET`). Every
/// secret in it is sealed under the cluster key by the caller; this module stores bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRec {
    /// 1 for the first; one more at each rotation. Nodes see it in the cluster view and fetch
    /// the secrets again when it changes.
    pub version: u64,
    /// The current root secret, sealed (bound to its version).
    pub current: Vec<u8>,
    /// Secrets it replaced whose grace still ran at the last rotation, oldest first (at most
    /// [`PREVIOUS_SECRETS_MAX`]): each still accepted until its own end.
    pub previous: Vec<PreviousSecret>,
    /// What S3 access-key secrets are derived from, sealed. Never rotated: rotating the root
    /// secret leaves every access key as it was (revoke those one by one).
    pub key_base: Vec<u8>,
    pub rotated_ms: u64,
    /// The id of the rotation that made `current` (zero for the first): a rotation retried
    /// after its answer was lost is answered with what it made instead of rotating again.
    pub rotation: [u8; 16],
}

/// A replaced root secret, within its grace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// The version it was current as (its seal is bound to it).
    pub version: u64,
    pub sealed: Vec<u8>,
    /// Accepted until then (ms).
    pub until_ms: u64,
}

/// Replaced secrets kept at most: a rotation run again within a grace keeps the secret the
/// first one replaced valid (to the sooner of the two graces' ends), and so on, up to this
/// many.
pub const PREVIOUS_SECRETS_MAX: usize = 4;

/// The root secret record, if the cluster has one yet.
pub fn secret(kv: &dyn Kv) -> Result<Option<SecretRec>> {
    run(kv, false, |tx| get::<SecretRec>(tx, &keys::root_secret()))
}

/// The root secret record; `seed` is stored first if there is none yet (the first node to
/// register brings the root secret it was started with).
pub fn seed_secret(kv: &dyn Kv, seed: &dyn Fn() -> Result<SecretRec>) -> Result<SecretRec> {
    made_once(kv, &keys::root_secret(), seed)
}

/// The record under the singleton key `k`, made by `make` and stored if there is none yet;
/// when two processes make one at once, one commits and the other reads the winner's.
fn made_once<T>(kv: &dyn Kv, k: &[u8], make: &dyn Fn() -> Result<T>) -> Result<T>
where
    T: Serialize + serde::de::DeserializeOwned + Clone + 'static,
{
    if let Some(rec) = run(kv, false, |tx| get::<T>(tx, k))? {
        return Ok(rec);
    }
    let made = make()?;
    run(kv, true, |tx| match get::<T>(tx, k)? {
        Some(rec) => Ok(rec),
        None => {
            tx.set(k, &encode(&made))?;
            Ok(made.clone())
        }
    })
}

/// Replaces the root secret with what `seal` makes of the next version (rotation `id`); the
/// current one stays valid until `grace_until_ms`, and earlier ones whose grace still runs to
/// the sooner of theirs and that ([`carry_over`]). Refused before the cluster has one. The
/// same `id` again changes nothing.
pub fn rotate_secret(
    kv: &dyn Kv,
    id: [u8; 16],
    seal: &dyn Fn(u64) -> Vec<u8>,
    grace_until_ms: u64,
    now_ms: u64,
) -> Result<SecretRec> {
    run(kv, true, |tx| {
        let old = get::<SecretRec>(tx, &keys::root_secret())?.ok_or_else(|| {
            MetaError::Refused(
                "the cluster has no root secret yet (the first node to register brings it)".into(),
            )
        })?;
        if old.rotation == id {
            return Ok(old);
        }
        let previous = carry_over(
            old.previous
                .iter()
                .map(|p| ((p.version, p.sealed.clone()), p.until_ms)),
            (old.version, old.current.clone()),
            grace_until_ms,
            now_ms,
        )
        .into_iter()
        .map(|((version, sealed), until_ms)| PreviousSecret {
            version,
            sealed,
            until_ms,
        })
        .collect();
        let version = old.version.saturating_add(1);
        let rec = SecretRec {
            rotation: id,
            version,
            current: seal(version),
            previous,
            key_base: old.key_base.clone(),
            rotated_ms: now_ms,
        };
        tx.set(&keys::root_secret(), &encode(&rec))?;
        Ok(rec)
    })
}

/// The secrets still accepted after a rotation that replaces `current` with a grace ending at
/// `grace_until`, given those replaced before (each with the end of its grace), oldest first:
/// the grace given now bounds every earlier one (a rotation without one, after a leak, ends
/// them all at once), what has ended is dropped, and at most [`PREVIOUS_SECRETS_MAX`] are kept,
/// the newest. The rule of every rotation, the cluster's (ms) and `ostore dev`'s (instants).
pub fn carry_over<T, U: Ord + Copy>(
    previous: impl IntoIterator<Item = (T, U)>,
    current: T,
    grace_until: U,
    now: U,
) -> Vec<(T, U)> {
    let mut kept: Vec<(T, U)> = previous
        .into_iter()
        .map(|(p, until)| (p, until.min(grace_until)))
        .filter(|(_, until)| *until > now)
        .collect();
    if grace_until > now {
        kept.push((current, grace_until));
    }
    let excess = kept.len().saturating_sub(PREVIOUS_SECRETS_MAX);
    kept.drain(..excess);
    kept
}

/// The root secret's version (0: none yet), as the cluster view carries it.
pub fn secret_version_in(tx: &mut dyn Tx) -> Result<u64> {
    Ok(get::<SecretRec>(tx, &keys::root_secret())?.map_or(0, |r| r.version))
}

/// The cluster CA, made by `make` and stored if there is none yet (the first control process of
/// a cluster makes it; every later one, and every restart, finds it).
pub fn ca(kv: &dyn Kv, make: &dyn Fn() -> Result<CaRec>) -> Result<CaRec> {
    made_once(kv, &keys::ca(), make)
}

/// Accepts the join token (`nonce`, valid until `expires_ms`) once: refused when expired or
/// already used. The record stays until the token would have expired.
pub fn use_join_token(kv: &dyn Kv, nonce: &[u8; 16], expires_ms: u64, now_ms: u64) -> Result<()> {
    if expires_ms <= now_ms {
        return Err(MetaError::Refused("the join token has expired".into()));
    }
    run(kv, true, |tx| {
        let k = keys::join_token(nonce);
        if tx.get(&k)?.is_some() {
            return Err(MetaError::Refused(
                "the join token was already used (each token joins one node)".into(),
            ));
        }
        tx.set(&k, &expires_ms.to_le_bytes())?;
        Ok(())
    })
}

/// Records that `node` presented the certificate `fingerprint` (valid until `expires_ms`), so
/// that revoking the node revokes it.
pub fn record_node_cert(
    kv: &dyn Kv,
    node: u32,
    fingerprint: &[u8; 32],
    expires_ms: u64,
) -> Result<()> {
    run(kv, true, |tx| {
        let k = keys::node_cert(node, fingerprint);
        if tx.get(&k)?.is_none() {
            tx.set(&k, &expires_ms.to_le_bytes())?;
        }
        Ok(())
    })
}

/// The node and the fingerprint a `keys::node_cert` key names.
fn node_cert_key(k: &[u8]) -> Option<(u32, [u8; 32])> {
    let node = u32::from_be_bytes(k.get(1..5)?.try_into().ok()?);
    Some((node, k.get(5..37)?.try_into().ok()?))
}

/// The node that presented the certificate `fingerprint`, if one did.
pub fn node_of_cert(kv: &dyn Kv, fingerprint: &[u8; 32]) -> Result<Option<u32>> {
    run(kv, false, |tx| {
        let (b, e) = keys::subspace(keys::tag::NODE_CERT);
        Ok(tx
            .get_range(&b, &e, usize::MAX, false)?
            .into_iter()
            .filter_map(|(k, _)| node_cert_key(&k))
            .find(|(_, fp)| fp == fingerprint)
            .map(|(node, _)| node))
    })
}

/// The certificates recorded for `node`.
pub fn certs_of(kv: &dyn Kv, node: u32) -> Result<Vec<[u8; 32]>> {
    run(kv, false, |tx| {
        let (b, e) = keys::node_certs(node);
        Ok(tx
            .get_range(&b, &e, usize::MAX, false)?
            .into_iter()
            .filter_map(|(k, _)| node_cert_key(&k).map(|(_, fp)| fp))
            .collect())
    })
}

/// Revokes every certificate `node` presented; how many there were.
pub fn revoke_node(kv: &dyn Kv, node: u32, now_ms: u64) -> Result<u32> {
    run(kv, true, |tx| {
        let (b, e) = keys::node_certs(node);
        let mut n = 0u32;
        for (k, v) in tx.get_range(&b, &e, usize::MAX, false)? {
            let Some((_, fp)) = node_cert_key(&k) else {
                continue;
            };
            let expires_ms = le_u64(&v);
            put_revoked(tx, &fp, Some(node), expires_ms, now_ms)?;
            n += 1;
        }
        Ok(n)
    })
}

/// Revokes one certificate by fingerprint.
pub fn revoke(kv: &dyn Kv, fingerprint: &[u8; 32], expires_ms: u64, now_ms: u64) -> Result<()> {
    run(kv, true, |tx| {
        put_revoked(tx, fingerprint, None, expires_ms, now_ms)
    })
}

fn put_revoked(
    tx: &mut dyn Tx,
    fp: &[u8; 32],
    node: Option<u32>,
    expires_ms: u64,
    now_ms: u64,
) -> Result<()> {
    let rec = RevokedRec {
        node,
        expires_ms,
        revoked_ms: now_ms,
    };
    Ok(tx.set(&keys::revoked(fp), &encode(&rec))?)
}

/// Every revoked certificate's fingerprint.
pub fn revoked_in(tx: &mut dyn Tx) -> Result<Vec<[u8; 32]>> {
    let (b, e) = keys::subspace(keys::tag::REVOKED);
    Ok(tx
        .get_range(&b, &e, usize::MAX, false)?
        .into_iter()
        .filter_map(|(k, _)| k.get(1..33).and_then(|f| f.try_into().ok()))
        .collect())
}

pub fn revoked(kv: &dyn Kv) -> Result<Vec<[u8; 32]>> {
    run(kv, false, revoked_in)
}

/// Forgets used join tokens, revocations and node certificates past their expiry (a
/// certificate past its expiry is refused anyway).
pub fn expire(kv: &dyn Kv, now_ms: u64) -> Result<usize> {
    run(kv, true, |tx| {
        let mut gone = 0;
        for t in [keys::tag::JOIN_TOKEN, keys::tag::NODE_CERT] {
            let (b, e) = keys::subspace(t);
            for (k, v) in tx.get_range(&b, &e, usize::MAX, false)? {
                if le_u64(&v) <= now_ms {
                    tx.clear(&k)?;
                    gone += 1;
                }
            }
        }
        let (b, e) = keys::subspace(keys::tag::REVOKED);
        for (k, v) in tx.get_range(&b, &e, usize::MAX, false)? {
            // An unreadable record stays: it still names a revoked certificate.
            if decode::<RevokedRec>(&v).is_ok_and(|r| r.expires_ms <= now_ms) {
                tx.clear(&k)?;
                gone += 1;
            }
        }
        Ok(gone)
    })
}

fn le_u64(v: &[u8]) -> u64 {
    // A malformed value reads as "never expires": nothing is dropped early.
    v.try_into().map(u64::from_le_bytes).unwrap_or(u64::MAX)
}

fn get<T: serde::de::DeserializeOwned + 'static>(tx: &mut dyn Tx, k: &[u8]) -> Result<Option<T>> {
    match tx.get(k)? {
        Some(v) => Ok(Some(decode(&v)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv() -> (tempfile::TempDir, crate::redb_kv::RedbKv) {
        let d = tempfile::tempdir().unwrap();
        let kv = crate::redb_kv::RedbKv::open(&d.path().join("m.redb")).unwrap();
        (d, kv)
    }

    #[test]
    fn the_first_ca_made_is_the_one_kept() {
        let (_d, kv) = kv();
        let rec = |n: u8| CaRec {
            cert: vec![n],
            sealed_key: vec![n, n],
            created_ms: u64::from(n),
        };
        assert_eq!(ca(&kv, &|| Ok(rec(1))).unwrap(), rec(1));
        assert_eq!(ca(&kv, &|| Ok(rec(2))).unwrap(), rec(1));
        assert_eq!(ca(&kv, &|| panic!("not made again")).unwrap(), rec(1));
    }

    #[test]
    fn the_root_secret_is_seeded_once_and_rotated_with_a_grace() {
        let (_d, kv) = kv();
        assert_eq!(secret(&kv).unwrap(), None);
        assert!(matches!(
            rotate_secret(&kv, [1; 16], &|_| b"x".to_vec(), 0, 1),
            Err(MetaError::Refused(_))
        ));
        let seed = |s: &[u8]| SecretRec {
            version: 1,
            current: s.to_vec(),
            previous: Vec::new(),
            key_base: b"base".to_vec(),
            rotated_ms: 5,
            rotation: [0; 16],
        };
        assert_eq!(
            seed_secret(&kv, &|| Ok(seed(b"one"))).unwrap(),
            seed(b"one")
        );
        // A second node's seed loses to the first's.
        assert_eq!(
            seed_secret(&kv, &|| Ok(seed(b"two"))).unwrap(),
            seed(b"one")
        );
        let sealed = |s: &'static [u8]| move |v: u64| [s, &v.to_le_bytes()].concat();
        let r = rotate_secret(&kv, [1; 16], &sealed(b"two"), 1500, 1000).unwrap();
        assert_eq!(r.version, 2);
        // The same rotation retried (its answer lost) rotates nothing more.
        assert_eq!(
            rotate_secret(&kv, [1; 16], &sealed(b"again"), 1600, 1100).unwrap(),
            r
        );
        assert_eq!(r.current, sealed(b"two")(2), "sealed for its version");
        let one = PreviousSecret {
            version: 1,
            sealed: b"one".to_vec(),
            until_ms: 1500,
        };
        assert_eq!(r.previous, vec![one.clone()]);
        assert_eq!(
            r.key_base, b"base",
            "the access keys' base is never rotated"
        );
        // Another rotation within the first grace keeps the first secret, to the sooner end.
        let r = rotate_secret(&kv, [2; 16], &sealed(b"three"), 3000, 1200).unwrap();
        assert_eq!(r.previous.len(), 2);
        assert_eq!(r.previous[0], one);
        assert_eq!((r.previous[1].version, r.previous[1].until_ms), (2, 3000));
        let r = rotate_secret(&kv, [3; 16], &sealed(b"four"), 2500, 1300).unwrap();
        assert_eq!(
            r.previous
                .iter()
                .map(|p| (p.version, p.until_ms))
                .collect::<Vec<_>>(),
            [(1, 1500), (2, 2500), (3, 2500)],
            "each grace ends by the newest one's end"
        );
        // Without a grace, every replaced secret ends at once.
        let r = rotate_secret(&kv, [4; 16], &sealed(b"five"), 1400, 1400).unwrap();
        assert_eq!(r.version, 5);
        assert!(r.previous.is_empty(), "{:?}", r.previous);
        // At most PREVIOUS_SECRETS_MAX are kept, the oldest dropped first.
        let mut r = r;
        for i in 0..6u8 {
            r = rotate_secret(&kv, [10 + i; 16], &sealed(b"more"), 9000, 2001).unwrap();
        }
        assert_eq!(r.previous.len(), PREVIOUS_SECRETS_MAX);
        assert_eq!(r.previous.last().unwrap().version, r.version - 1);
        assert_eq!(secret(&kv).unwrap().as_ref(), Some(&r));
        assert_eq!(
            run(&kv, false, secret_version_in).unwrap(),
            r.version,
            "the view carries the version"
        );
    }

    #[test]
    fn a_join_token_is_used_once_and_not_after_it_expires() {
        let (_d, kv) = kv();
        let n = [9u8; 16];
        assert!(matches!(
            use_join_token(&kv, &n, 100, 100),
            Err(MetaError::Refused(_))
        ));
        use_join_token(&kv, &n, 200, 100).unwrap();
        let again = use_join_token(&kv, &n, 200, 150).unwrap_err();
        assert!(again.to_string().contains("already used"), "{again}");
        use_join_token(&kv, &[8u8; 16], 200, 150).unwrap();
        // Expired records go; the token is refused for its expiry then anyway.
        assert_eq!(expire(&kv, 200).unwrap(), 2);
        assert!(use_join_token(&kv, &n, 200, 200).is_err());
    }

    #[test]
    fn revoking_a_node_revokes_every_certificate_it_presented() {
        let (_d, kv) = kv();
        record_node_cert(&kv, 3, &[1; 32], 1000).unwrap();
        record_node_cert(&kv, 3, &[2; 32], 2000).unwrap();
        record_node_cert(&kv, 4, &[3; 32], 1000).unwrap();
        assert_eq!(node_of_cert(&kv, &[2; 32]).unwrap(), Some(3));
        assert_eq!(node_of_cert(&kv, &[3; 32]).unwrap(), Some(4));
        assert_eq!(node_of_cert(&kv, &[9; 32]).unwrap(), None);
        assert!(revoked(&kv).unwrap().is_empty());
        assert_eq!(revoke_node(&kv, 3, 10).unwrap(), 2);
        assert_eq!(revoked(&kv).unwrap(), vec![[1; 32], [2; 32]]);
        revoke(&kv, &[7; 32], 5000, 10).unwrap();
        assert_eq!(revoked(&kv).unwrap().len(), 3);
        // Past their expiry the records go (the certificates are refused as expired then).
        expire(&kv, 1000).unwrap();
        assert_eq!(revoked(&kv).unwrap(), vec![[2; 32], [7; 32]]);
    }
}

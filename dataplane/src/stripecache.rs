//! The per-executor cache of decoded stripes: client GETs of a hot object are served from
//! memory instead of the drives (which O_DIRECT keeps out of the page cache).
//!
//! Each executor holds its own cache (a thread-local: executors share nothing, and a request
//! runs on one executor), a `Cache` from `ostore_engine::cache` (TinyLFU admission over LRU)
//! of whole stripes' data bytes as a client read verified them (every block's CRC32C, or
//! rebuilt from parity). Its budget is the node's `--stripe-cache` divided among the executors.
//!
//! **Keys name immutable bytes.** A stripe is keyed by its *stored instance*: a digest of the
//! content's BLAKE3, its stored size, erasure coding, encoding and the exact shard files
//! (drive, file id and the random tag of each), and the stripe's index. An overwrite or a
//! delete leads GETs to another content (or none); a repair or a move writes new files, with
//! new tags; a damaged content replaced by a new upload has new files too. Each of these
//! changes the key, so no entry is ever served for bytes other than its own, and no
//! invalidation message has to reach every executor: the old entries are no longer asked for
//! and leave as the cache turns over (their counts age like any other, so they lose their
//! place to what is asked for now).

use bytes::Bytes;
use ostore_control::records::{ContentRec, Encoding, ShardLoc};
use ostore_engine::cache::Cache;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

/// A stripe of one stored instance of a content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct StripeKey {
    pub instance: u128,
    pub stripe: u64,
}

/// Names a content's stored instance: everything that decides its stored bytes and where they
/// are.
pub fn instance(blake3: &[u8; 32], content: &ContentRec, locs: &[ShardLoc]) -> u128 {
    let mut h = blake3::Hasher::new_derive_key("ostore stripe cache instance");
    h.update(blake3);
    h.update(&content.stored_bytes().to_le_bytes());
    match content.encoding {
        Encoding::Identity => h.update(&[0]),
        Encoding::Zstd {
            stored_bytes,
            frames,
        } => h
            .update(&[1])
            .update(&stored_bytes.to_le_bytes())
            .update(&frames.to_le_bytes()),
    };
    h.update(&(locs.len() as u32).to_le_bytes());
    for l in locs {
        h.update(&[l.index])
            .update(&l.drive.to_le_bytes())
            .update(&l.file_id.to_le_bytes())
            .update(&l.file_tag.to_le_bytes());
    }
    let d = h.finalize();
    u128::from_le_bytes(d.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// Bytes held by the stripe caches of all executors of this process.
pub static BYTES: AtomicU64 = AtomicU64::new(0);
/// Stripes served from memory, stripes looked up and not found, stripes admitted.
pub static HITS: AtomicU64 = AtomicU64::new(0);
pub static MISSES: AtomicU64 = AtomicU64::new(0);
pub static ADMITTED: AtomicU64 = AtomicU64::new(0);

/// A 4+2 stripe's data bytes: what the sketch is sized for.
const TYPICAL_STRIPE_BYTES: u64 = 4 * 65_520;

thread_local! {
    static CACHE: RefCell<Option<Cache<StripeKey, Bytes>>> = const { RefCell::new(None) };
}

/// Runs `f` on this executor's cache of `capacity` bytes (made on first use); `None` when the
/// cache is off (`capacity` 0). `f` must not await (it holds the executor's cache).
pub fn with<R>(capacity: u64, f: impl FnOnce(&mut Cache<StripeKey, Bytes>) -> R) -> Option<R> {
    if capacity == 0 {
        return None;
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let cache =
            c.get_or_insert_with(|| Cache::new(capacity, TYPICAL_STRIPE_BYTES, rand::random()));
        let before = cache.used();
        let r = f(cache);
        let after = cache.used();
        if after >= before {
            BYTES.fetch_add(after - before, Ordering::Relaxed);
        } else {
            BYTES.fetch_sub(before - after, Ordering::Relaxed);
        }
        Some(r)
    })
}

/// A cached stripe, looked up as a client's request for it.
pub fn get(capacity: u64, key: &StripeKey) -> Option<Bytes> {
    let hit = with(capacity, |c| c.get(key).cloned()).flatten();
    let counter = if hit.is_some() { &HITS } else { &MISSES };
    counter.fetch_add(1, Ordering::Relaxed);
    hit
}

/// Whether the stripe is cached; not counted as a request.
pub fn contains(capacity: u64, key: &StripeKey) -> bool {
    with(capacity, |c| c.contains(key)).unwrap_or(false)
}

/// Records a request for a stripe read together with another that was looked up, and offers
/// its bytes (copied out of `bytes` only if admitted, so that an entry holds no more memory
/// than its own stripe).
pub fn offer(capacity: u64, key: StripeKey, bytes: &[u8], recorded: bool) {
    let admitted = with(capacity, |c| {
        if !recorded {
            c.record(&key);
        }
        c.offer_with(key, bytes.len() as u64, || Bytes::copy_from_slice(bytes))
    });
    if admitted == Some(true) {
        ADMITTED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Each executor's cache of verified outboard entries: level-0 runs (at most 32 KiB each) of
/// contents read lately, keyed by the content's BLAKE3 and the run's first group. Entries are
/// a function of the object's bytes alone (they were checked against its BLAKE3), so no
/// overwrite, repair or move can make one wrong. A read of a content whose runs are held reads
/// no outboard. Its budget is fixed and small, and it is kept even with `--stripe-cache 0`:
/// it holds tree entries (32 bytes per 64 KiB read), not object bytes.
pub const TREE_CACHE_BYTES: u64 = 4 << 20;

/// Outboard entries looked up and found, looked up and not found.
pub static TREE_HITS: AtomicU64 = AtomicU64::new(0);
pub static TREE_MISSES: AtomicU64 = AtomicU64::new(0);

type TreeKey = ([u8; 32], u64);
type TreeCache = Cache<TreeKey, std::rc::Rc<[[u8; 32]]>>;

thread_local! {
    static TREES: RefCell<Option<TreeCache>> = const { RefCell::new(None) };
}

fn with_trees<R>(f: impl FnOnce(&mut TreeCache) -> R) -> R {
    TREES.with(|c| {
        let mut c = c.borrow_mut();
        f(c.get_or_insert_with(|| Cache::new(TREE_CACHE_BYTES, 32 * 1024, rand::random())))
    })
}

/// The verified level-0 run of content `blake3` that starts at group `first`, if held.
pub fn tree_get(blake3: &[u8; 32], first: u64) -> Option<std::rc::Rc<[[u8; 32]]>> {
    let hit = with_trees(|c| c.get(&(*blake3, first)).cloned());
    let counter = if hit.is_some() {
        &TREE_HITS
    } else {
        &TREE_MISSES
    };
    counter.fetch_add(1, Ordering::Relaxed);
    hit
}

/// Offers a verified level-0 run (looked up before, so its request was counted).
pub fn tree_offer(blake3: &[u8; 32], first: u64, entries: &std::rc::Rc<[[u8; 32]]>) {
    with_trees(|c| {
        c.offer_with((*blake3, first), entries.len() as u64 * 32, || {
            entries.clone()
        })
    });
}

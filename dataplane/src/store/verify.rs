//! Every byte a GET sends, verified against the content's BLAKE3 before it leaves the node.
//!
//! A content written with a tree (`Tree::Outboard`) has, after its stored bytes, the outboard
//! of `ostore_engine::tree`: one chaining value per group of object bytes (64 KiB, or more for
//! contents over 16 GiB) under a tree of fan-out 1024 whose top merges into the content's
//! BLAKE3. A read widens its range to whole groups, reads the outboard entries of each run of
//! 1024 groups as it reaches it (one read per level, checked against the BLAKE3), and hands
//! on a group's bytes only once they match their entry. Stripes read from the drives reach
//! the stripe cache only once verified, so bytes served from the cache are not hashed again.
//!
//! A group that fails is read again with CRCs checked, then around each shard in turn, then
//! each pair, … as parity allows (rebuilt from the others, as a block with a bad CRC is), until
//! one version matches: those shards are then read around for the rest of the request and
//! reported, and the repair that follows finds them the same way
//! (`store::check_and_repair`). The outboard's own entries are recovered alike. A block
//! rewritten on a drive together with its CRC is caught here, where the CRC cannot catch it.
//!
//! A client that takes the stored zstd frames as they are (`Content-Encoding: zstd`) gets each
//! frame once every group its bytes touch has verified; a failure there ends the response
//! (nothing unverified was sent) and queues the repair, and the client's retry reads repaired
//! or rebuilt bytes.

use super::{Decoded, ShardReader, StoreError};
use crate::ctx::Node;
use bytes::Bytes;
use ostore_control::records::{ContentRec, Encoding, Tree};
use ostore_engine::tree::{Cv, Shape};
use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

type Result<T> = std::result::Result<T, StoreError>;

/// Outboard entries as read, one list per level, level 0 first.
type Levels = Vec<Vec<Cv>>;

/// Where a verified read's object bytes come from.
enum Source {
    Plain(ShardReader),
    Zstd(Decoded),
}

impl Source {
    /// Object bytes `range` of the content, read around the shards `exclude`. A client's
    /// source goes through the stripe cache (holding its offers until verified).
    async fn open(
        node: &Arc<Node>,
        blake3: [u8; 32],
        content: &ContentRec,
        range: Range<u64>,
        exclude: &[usize],
        client: bool,
        raw: bool,
    ) -> Result<Source> {
        let mut r = reader(node, blake3, content, exclude, client)?;
        match content.encoding {
            Encoding::Identity => {
                if client {
                    r.hold_offers();
                    // Every byte is checked against the tree here, and a group that fails
                    // is read again with CRCs: the CRC of blocks read in place is skipped.
                    r.trust_tree();
                }
                r.set_range(range);
                Ok(Source::Plain(r))
            }
            Encoding::Zstd { .. } => {
                let mut d = Decoded::with_reader(r, content, range).await?;
                if client {
                    d.reader_mut().hold_offers();
                }
                if raw {
                    d.keep_raw();
                }
                Ok(Source::Zstd(d))
            }
        }
    }

    /// The next object bytes, and whether they came from the stripe cache (verified before).
    async fn next(&mut self) -> Option<Result<(Bytes, bool)>> {
        match self {
            Source::Plain(r) => {
                let b = r.next().await?;
                Some(b.map(|b| (b, r.last_cached())))
            }
            Source::Zstd(d) => d.next().await.map(|b| b.map(|b| (b, false))),
        }
    }

    fn reader(&mut self) -> &mut ShardReader {
        match self {
            Source::Plain(r) => r,
            Source::Zstd(d) => d.reader_mut(),
        }
    }

    fn verified_to(&mut self, offset: u64) {
        match self {
            Source::Plain(r) => r.verified_to(offset),
            Source::Zstd(d) => d.verified_to(offset),
        }
    }

    /// Closes the files; a client's source reports the bad shards it found (queues the
    /// repair), a check's leaves that to the repair running it.
    async fn close(&mut self, client: bool) {
        let r = self.reader();
        if client {
            r.report().await;
        }
        r.close().await;
    }
}

/// A verified read of object bytes `want` of a content with a tree.
pub struct Verified {
    node: Arc<Node>,
    blake3: [u8; 32],
    content: ContentRec,
    shape: Shape,
    root: blake3::Hash,
    want: Range<u64>,
    /// The groups of the range; `group` is the one being assembled in `held`.
    end_group: u64,
    group: u64,
    held: Vec<Bytes>,
    held_len: u64,
    held_cached: bool,
    /// Level-0 entries, verified, of the groups `window`.
    window: Range<u64>,
    level0: Rc<[Cv]>,
    /// The first window's outboard entries, read while the first piece is read.
    early: Option<(Range<u64>, glommio::Task<Result<Levels>>)>,
    source: Source,
    /// Shards found to hold bytes that fail the tree, read around from then on.
    excluded: Vec<usize>,
    ready: VecDeque<Bytes>,
    /// The source's piece being taken, and the verified run of it not yet in `ready`: a
    /// piece's groups go out as one slice of it, not one per group.
    cur_piece: Bytes,
    pending: Option<(Bytes, Range<usize>)>,
    /// Sends the stored zstd frames rather than the object's bytes.
    raw: bool,
    /// A client's read (through the stripe cache, around nodes away), or a check's.
    client: bool,
    finished: bool,
}

/// Whether reads of `content` are verified by its tree.
pub fn has_tree(content: &ContentRec) -> bool {
    content.tree == Tree::Outboard && content.size_bytes > 0
}

impl Verified {
    /// Opens a verified read of object bytes `want` (non-empty), or with `raw` of the whole
    /// stored zstd form.
    pub async fn open(
        node: &Arc<Node>,
        blake3: [u8; 32],
        content: &ContentRec,
        want: Range<u64>,
        raw: bool,
    ) -> Result<Verified> {
        Verified::open_as(node, blake3, content, want, raw, true).await
    }

    async fn open_as(
        node: &Arc<Node>,
        blake3: [u8; 32],
        content: &ContentRec,
        want: Range<u64>,
        raw: bool,
        client: bool,
    ) -> Result<Verified> {
        let shape = Shape::new(content.size_bytes);
        let want = if raw { 0..content.size_bytes } else { want };
        let groups = shape.groups_of(&want);
        let aligned = shape.groups_bytes(&groups);
        let mut excluded = Vec::new();
        let source =
            match Source::open(node, blake3, content, aligned.clone(), &[], client, raw).await {
                Ok(s) => s,
                // A zstd content's seek table that does not parse (rewritten with its CRC): read
                // it around each shard in turn, each pair.
                Err(StoreError::Codec(first)) => {
                    let mut found = None;
                    for set in suspect_sets(content, &[]) {
                        let opened =
                            Source::open(node, blake3, content, aligned.clone(), &set, client, raw)
                                .await;
                        if let Ok(s) = opened {
                            found = Some((s, set));
                            break;
                        }
                    }
                    let (s, set) = found.ok_or(StoreError::Codec(first))?;
                    excluded = set;
                    s
                }
                Err(e) => return Err(e),
            };
        // The first window's entries are read alongside the first piece, unless held.
        let mut early = None;
        let (mut window, mut level0) = (0..0, Rc::from(Vec::new()));
        if client && !shape.levels.is_empty() {
            let w = shape.window(groups.start);
            if let Some(held) = crate::stripecache::tree_get(&blake3, w.start) {
                (window, level0) = (w, held);
            } else {
                let ranges = outboard_ranges(&shape, content, &w);
                let (node, content) = (node.clone(), content.clone());
                let read = async move {
                    let mut r = reader(&node, blake3, &content, &[], true)?;
                    let got = read_entries(&mut r, &ranges).await;
                    r.close().await;
                    got
                };
                let failed = || Err(StoreError::Codec("the outboard read panicked".into()));
                early = Some((
                    w,
                    ostore_server::guard::spawn_subtask("an outboard read", read, failed),
                ));
            }
        }
        Ok(Verified {
            node: node.clone(),
            blake3,
            content: content.clone(),
            root: blake3::Hash::from(blake3),
            want,
            end_group: groups.end,
            group: groups.start,
            held: Vec::new(),
            held_len: 0,
            held_cached: true,
            window,
            level0,
            early,
            source,
            excluded,
            ready: VecDeque::new(),
            cur_piece: Bytes::new(),
            pending: None,
            raw,
            client,
            finished: false,
            shape,
        })
    }

    /// Whether any shard was read around so far (bad, missing, or failing the tree).
    pub fn degraded(&mut self) -> bool {
        !self.excluded.is_empty() || self.source.reader().bad.iter().any(|b| *b)
    }

    /// The next verified bytes; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<Bytes>> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Some(Ok(b));
            }
            if self.finished {
                return None;
            }
            if self.group == self.end_group {
                self.finished = true;
                // Lets the reader close its files and report bad shards.
                let _ = self.source.next().await;
                if self.raw {
                    if let Source::Zstd(d) = &self.source {
                        self.ready.push_back(d.table());
                    }
                    continue;
                }
                return None;
            }
            let r = match self.source.next().await {
                Some(Ok((b, cached))) => self.take(b, cached).await,
                // Bytes that do not even decode (a zstd frame rewritten with its CRC) or end
                // early: the group being assembled is recovered as a mismatch is.
                Some(Err(StoreError::Codec(_))) | None => self.recover_current().await,
                Some(Err(e)) => Err(e),
            };
            if let Err(e) = r {
                self.finished = true;
                self.ready.clear();
                self.source.close(self.client).await;
                return Some(Err(e));
            }
        }
    }

    /// Takes object bytes in order, completing groups.
    async fn take(&mut self, mut b: Bytes, cached: bool) -> Result<()> {
        self.cur_piece = b.clone();
        let r = self.take_groups(&mut b, cached).await;
        self.flush();
        r
    }

    async fn take_groups(&mut self, b: &mut Bytes, cached: bool) -> Result<()> {
        while !b.is_empty() {
            let gr = self.shape.group_range(self.group);
            let need = (gr.end - gr.start - self.held_len) as usize;
            let piece = b.split_to(need.min(b.len()));
            self.held_len += piece.len() as u64;
            self.held.push(piece);
            self.held_cached &= cached;
            if self.held_len == gr.end - gr.start {
                let replaced = self.complete().await?;
                // A new source continues after a recovered group: the rest of this piece came
                // through the bad shard.
                if replaced || self.group == self.end_group {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The source failed while group `self.group` was being assembled: recovers the group
    /// from the drives and releases it.
    async fn recover_current(&mut self) -> Result<()> {
        let i = self.group;
        let cv = self.entry(i).await?;
        self.recover(i, &cv).await?;
        self.release();
        Ok(())
    }

    /// Checks the group in `held` (unless all of it came from the cache) and releases it.
    /// Whether the source was replaced (the group was recovered around a bad shard).
    async fn complete(&mut self) -> Result<bool> {
        let i = self.group;
        let mut replaced = false;
        if !self.held_cached {
            let cv = self.entry(i).await?;
            let pieces: Vec<&[u8]> = self.held.iter().map(|b| &b[..]).collect();
            if !self.shape.group_matches(&self.root, i, &pieces, &cv) {
                self.recover(i, &cv).await?;
                replaced = true;
            }
        }
        self.release();
        Ok(replaced)
    }

    /// Sends the verified group in `held` and moves to the next.
    fn release(&mut self) {
        let gr = self.shape.group_range(self.group);
        if self.raw {
            if let Source::Zstd(d) = &mut self.source {
                self.ready.extend(d.take_raw(gr.end));
            }
            self.held.clear();
        } else {
            let mut at = gr.start;
            let held = std::mem::take(&mut self.held);
            for b in held {
                let (a, e) = (at, at + b.len() as u64);
                at = e;
                let (lo, hi) = (self.want.start.max(a), self.want.end.min(e));
                if lo < hi {
                    self.emit(b.slice((lo - a) as usize..(hi - a) as usize));
                }
            }
        }
        self.source.verified_to(gr.end);
        self.group += 1;
        self.held_len = 0;
        self.held_cached = true;
    }

    /// Sends verified bytes: joined to the run pending when they continue it in the same
    /// piece (so a piece goes out whole), else after it.
    fn emit(&mut self, b: Bytes) {
        let s = b.as_ptr() as usize;
        if let Some((parent, r)) = self.pending.as_mut() {
            let p = parent.as_ptr() as usize;
            if s == p + r.end && r.end + b.len() <= parent.len() {
                r.end += b.len();
                return;
            }
        }
        self.flush();
        let p = self.cur_piece.as_ptr() as usize;
        if s >= p && s + b.len() <= p + self.cur_piece.len() {
            let at = s - p;
            self.pending = Some((self.cur_piece.clone(), at..at + b.len()));
        } else {
            let n = b.len();
            self.pending = Some((b, 0..n));
        }
    }

    fn flush(&mut self) {
        if let Some((parent, r)) = self.pending.take() {
            self.ready.push_back(parent.slice(r));
        }
    }

    /// Group `i`'s level-0 entry (for a content of one group, unused: its BLAKE3 is checked).
    async fn entry(&mut self, i: u64) -> Result<Cv> {
        if self.shape.levels.is_empty() {
            return Ok([0; 32]);
        }
        if !self.window.contains(&i) {
            self.load_window(i).await?;
        }
        Ok(self.level0[(i - self.window.start) as usize])
    }

    /// Reads and checks the outboard entries of the run of groups holding group `i` (or
    /// takes them from the executor's cache of verified entries).
    async fn load_window(&mut self, i: u64) -> Result<()> {
        let w = self.shape.window(i);
        let early = match self.early.take() {
            Some((ew, task)) if ew == w => Some(task.await),
            _ => None,
        };
        if early.is_none() && self.client {
            if let Some(l0) = crate::stripecache::tree_get(&self.blake3, w.start) {
                self.window = w;
                self.level0 = l0;
                return Ok(());
            }
        }
        let ranges = outboard_ranges(&self.shape, &self.content, &w);
        let (shape, root) = (self.shape.clone(), self.root);
        let check = |levels: &Levels| {
            let refs: Vec<&[Cv]> = levels.iter().map(Vec::as_slice).collect();
            shape.check_entries(&root, w.clone(), &refs).is_ok()
        };
        let first = match early {
            Some(r) => r,
            None => read_entries(self.source.reader(), &ranges).await,
        };
        let mut found = match first {
            Ok(levels) if check(&levels) => Some(levels),
            _ => None,
        };
        if found.is_none() {
            // With every CRC checked first (a block that fails it names its shard), then
            // around each shard, each pair.
            let tries = std::iter::once(Vec::new()).chain(self.suspect_sets());
            for set in tries {
                let ex: Vec<usize> = self.excluded.iter().chain(&set).copied().collect();
                let mut r = reader(&self.node, self.blake3, &self.content, &ex, false)?;
                let got = read_entries(&mut r, &ranges).await;
                let crc_bad: Vec<usize> = (0..r.bad.len())
                    .filter(|&j| r.bad[j] && !self.excluded.contains(&j) && !set.contains(&j))
                    .collect();
                r.close().await;
                if let Ok(levels) = got {
                    if check(&levels) {
                        found = Some(levels);
                        for c in set.into_iter().chain(crc_bad) {
                            self.mark_bad(c);
                        }
                        break;
                    }
                }
            }
        }
        let mut levels = found.ok_or_else(|| self.failed("its outboard"))?;
        self.level0 = Rc::from(levels.swap_remove(0));
        if self.client {
            crate::stripecache::tree_offer(&self.blake3, w.start, &self.level0);
        }
        self.window = w;
        Ok(())
    }

    /// The sets of shards not read around yet to try as the bad ones, smallest first: each
    /// shard, then each pair, … up to what parity can still rebuild around.
    fn suspect_sets(&mut self) -> Vec<Vec<usize>> {
        suspect_sets(&self.content, &self.excluded)
    }

    fn mark_bad(&mut self, c: usize) {
        tracing::warn!(
            "content {}: shard {c} holds bytes that fail the content's BLAKE3 tree; reading around it",
            hex::encode(self.blake3)
        );
        self.excluded.push(c);
        self.source.reader().exclude(c);
    }

    fn failed(&self, what: &str) -> StoreError {
        StoreError::Verification(format!(
            "content {}: {what} failed its BLAKE3 check with every shard read around in turn",
            hex::encode(self.blake3)
        ))
    }

    /// Group `i` failed: reads it again with CRCs checked, then around each shard, each pair,
    /// until it verifies, then continues after it around the shards found bad.
    async fn recover(&mut self, i: u64, cv: &Cv) -> Result<()> {
        let gr = self.shape.group_range(i);
        if self.raw {
            // Frames of this group may be queued already: end the response, repair.
            self.node.queue_repair(self.blake3).await;
            return Err(self.failed(&format!("group {i}")));
        }
        // First with every CRC checked: a block that fails its CRC (a reader that trusts the
        // tree took it unchecked) is read around, and its shard is the one to blame. Then
        // around each shard in turn, then each pair (as parity allows), for blocks whose CRCs
        // hold.
        let tries = std::iter::once(Vec::new()).chain(self.suspect_sets());
        for set in tries {
            let mut ex = self.excluded.clone();
            ex.extend(&set);
            let Ok(mut src) = Source::open(
                &self.node,
                self.blake3,
                &self.content,
                gr.clone(),
                &ex,
                false,
                false,
            )
            .await
            else {
                continue;
            };
            let mut pieces = Vec::new();
            let mut ok = true;
            while let Some(r) = src.next().await {
                match r {
                    Ok((b, _)) => pieces.push(b),
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            let crc_bad: Vec<usize> = (0..src.reader().bad.len())
                .filter(|&j| src.reader().bad[j] && !ex.contains(&j))
                .collect();
            src.reader().close().await;
            let refs: Vec<&[u8]> = pieces.iter().map(|b| &b[..]).collect();
            if ok && self.shape.group_matches(&self.root, i, &refs, cv) {
                self.held = pieces;
                // Stripes the source read and holds for the cache came through the bad
                // shard: none of them goes to the cache.
                self.source.reader().forget_held();
                if set.is_empty() && crc_bad.is_empty() {
                    // Read again, the same bytes verify: what failed was the read, not a
                    // shard (a block changed while in flight is the only way). Go on.
                    tracing::warn!(
                        "content {}: group {i} failed its check once and verified when read again",
                        hex::encode(self.blake3)
                    );
                }
                for j in set.into_iter().chain(crc_bad) {
                    self.mark_bad(j);
                }
                // What the source read past this group came through the bad shard: continue
                // after it with a source that reads around it (and reports it).
                let end = self.shape.group_range(self.end_group - 1).end;
                if gr.end < end {
                    self.source.close(self.client).await;
                    self.source = Source::open(
                        &self.node,
                        self.blake3,
                        &self.content,
                        gr.end..end,
                        &self.excluded,
                        self.client,
                        false,
                    )
                    .await?;
                }
                return Ok(());
            }
        }
        if self.client {
            self.node.queue_repair(self.blake3).await;
        }
        Err(self.failed(&format!("group {i}")))
    }
}

/// The shards whose bytes fail the content's tree (a repair's last check): every group of the
/// content read from the drives and checked, each failing one read around each shard in turn.
pub(super) async fn tree_suspects(
    node: &Arc<Node>,
    blake3: [u8; 32],
    content: &ContentRec,
) -> Result<Vec<usize>> {
    if !has_tree(content) {
        return Ok(Vec::new());
    }
    let mut v =
        Verified::open_as(node, blake3, content, 0..content.size_bytes, false, false).await?;
    let mut paced = 0u64;
    while let Some(b) = v.next().await {
        let b = b?;
        paced += b.len() as u64;
        if paced >= 1 << 20 {
            node.repair_pace.take(paced).await;
            paced = 0;
        }
    }
    Ok(v.excluded)
}

/// A reader of the content's shards that reads around `exclude`: a client's (through the
/// stripe cache, reporting the bad shards it finds), or a check's (reporting nothing: its
/// caller decides what the bad shards mean).
fn reader(
    node: &Arc<Node>,
    blake3: [u8; 32],
    content: &ContentRec,
    exclude: &[usize],
    client: bool,
) -> Result<ShardReader> {
    let mut r = ShardReader::new(node.clone(), blake3, content)
        .ok_or_else(|| StoreError::Codec("the content is not stored in shard files".into()))?;
    if client {
        r = r.for_client();
    } else {
        r.silence();
    }
    for &i in exclude {
        r.exclude(i);
    }
    Ok(r)
}

/// Where, in the stored bytes and outboard, the entries verifying groups `w` lie: one byte
/// range per level, level 0 first.
fn outboard_ranges(shape: &Shape, content: &ContentRec, w: &Range<u64>) -> Vec<Range<u64>> {
    let base = content.stored_bytes();
    shape
        .plan(w.clone())
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let o = base + shape.level_offset(k);
            o + r.start * 32..o + r.end * 32
        })
        .collect()
}

/// Reads the outboard byte ranges `ranges` (one per level) as entries.
async fn read_entries(r: &mut ShardReader, ranges: &[Range<u64>]) -> Result<Levels> {
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let b = r.read_aside(range.clone()).await?;
        if b.len() as u64 != range.end - range.start {
            return Err(StoreError::Codec("the outboard ended early".into()));
        }
        out.push(
            b.chunks_exact(32)
                .map(|c| c.try_into().expect("32 bytes"))
                .collect(),
        );
    }
    Ok(out)
}

/// The sets of `content`'s shards, beside `excluded`, to read around in turn: each shard, then
/// each pair, as parity allows.
fn suspect_sets(content: &ContentRec, excluded: &[usize]) -> Vec<Vec<usize>> {
    let (total, parity) = match &content.stored {
        ostore_control::records::Stored::Sharded { shards, parity, .. } => {
            (shards.len(), *parity as usize)
        }
        _ => (0, 0),
    };
    let left: Vec<usize> = (0..total).filter(|c| !excluded.contains(c)).collect();
    // At most pairs: with wide coding every larger set would be hundreds of reads.
    let most = parity.saturating_sub(excluded.len()).min(2);
    let mut sets: Vec<Vec<usize>> = vec![Vec::new()];
    let mut out = Vec::new();
    for _ in 0..most {
        let mut next = Vec::new();
        for set in &sets {
            let from = set.last().map_or(0, |&l| l + 1);
            for &c in left.iter().filter(|&&c| c >= from) {
                let mut s = set.clone();
                s.push(c);
                next.push(s);
            }
        }
        out.extend(next.iter().cloned());
        sets = next;
    }
    out
}

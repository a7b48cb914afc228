//! Verifying any byte range of a content against its BLAKE3: the chaining values of its
//! subtrees, kept in a tree of fixed fan-out beside the content (an *outboard*, in Bao's
//! terms), so a reader checks the groups it sends without reading the rest.
//!
//! BLAKE3 is itself a binary Merkle tree over 1 KiB chunks: every left subtree holds the
//! largest power of two of chunks that is less than the whole, so each aligned run of 2^k
//! chunks is a node, and so is the rest of the input after any such run. The outboard keeps
//! the chaining values (CVs) of some of those nodes:
//! - **level 0**: one CV per *group* of `group` bytes of the content (in the store 64 KiB, or
//!   the smallest larger power of two that keeps level 0 within [`LEVEL0_MAX`] entries), in
//!   order, the last group possibly shorter;
//! - **level k+1**: one CV per run of `fanout` consecutive level-k entries (1024 in the store),
//!   the merge of that run, the last run possibly shorter;
//! - up to the first level with at most `fanout` entries, the *top*, which merges into the
//!   content's BLAKE3 itself.
//!
//! A content of at most one group has no outboard: its BLAKE3 is checked directly.
//!
//! **Byte layout** (golden-tested below): the entries of level 0, then level 1, … then the top,
//! each entry the 32-byte CV, nothing else. Level sizes follow from the content's length, so
//! the outboard carries no header: with the store's parameters it is 32 bytes per 64 KiB of
//! content and about a thousandth more (0.05 %).
//!
//! To verify groups `a..b`, a reader reads the top (at most `fanout` entries) and, below it, for
//! each level only the runs holding the path to `a..b`: for a range within one run, one read of
//! at most 32 KiB per level (in the store, at most two levels). [`Shape::plan`]
//! names the entries; [`Shape::verify`] checks them against the BLAKE3 and the groups' data
//! against them. Sans-IO: the caller reads.

use crate::hash::HashState;
use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};
use std::ops::Range;

/// A subtree's chaining value.
pub type Cv = [u8; 32];

/// The store's smallest group: 64 KiB of content per level-0 entry.
pub const GROUP_BYTES: u64 = 1 << 16;
/// The store's fan-out: 1024 entries of a level per entry of the next.
pub const FANOUT: u64 = 1024;
/// The most level-0 entries of a content in the store (8 MiB of them, the most a writer holds
/// in memory): a content of more than `LEVEL0_MAX` × 64 KiB (16 GiB) has larger groups, the
/// smallest power of two that keeps level 0 within this. So the store's trees have at most
/// two levels.
pub const LEVEL0_MAX: u64 = 1 << 18;

/// The store's group size for a content of `len` bytes.
pub fn group_for(len: u64) -> u64 {
    group_within(len, LEVEL0_MAX)
}

/// The smallest group of at least [`GROUP_BYTES`] that keeps level 0 within `cap` entries.
fn group_within(len: u64, cap: u64) -> u64 {
    let mut g = GROUP_BYTES;
    while len.div_ceil(g) > cap {
        g *= 2;
    }
    g
}
const CV_BYTES: u64 = 32;

/// Why a verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("the outboard does not match the content's BLAKE3")]
    Outboard,
    #[error("group {0} does not match its chaining value")]
    Group(u64),
    #[error("the data does not match the content's BLAKE3")]
    Whole,
    #[error("missing or misplaced {0}")]
    Shape(&'static str),
}

/// The outboard's shape for a content of `len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub len: u64,
    pub group: u64,
    pub fanout: u64,
    /// Entries per level, level 0 first; empty for a content of at most one group.
    pub levels: Vec<u64>,
}

impl Shape {
    /// The store's shape: groups of [`group_for`]`(len)`, fan-out 1024.
    pub fn new(len: u64) -> Shape {
        Shape::with(len, group_for(len), FANOUT)
    }

    /// A shape with other parameters: `group` a power of two of at least 1 KiB, `fanout` a
    /// power of two of at least 2 (tests use small ones to build deep trees from little data).
    pub fn with(len: u64, group: u64, fanout: u64) -> Shape {
        assert!(group.is_power_of_two() && group >= 1024, "bad group size");
        assert!(fanout.is_power_of_two() && fanout >= 2, "bad fan-out");
        let mut levels = Vec::new();
        let groups = len.div_ceil(group);
        if groups > 1 {
            let mut n = groups;
            levels.push(n);
            while n > fanout {
                n = n.div_ceil(fanout);
                levels.push(n);
            }
        }
        Shape {
            len,
            group,
            fanout,
            levels,
        }
    }

    pub fn groups(&self) -> u64 {
        self.len.div_ceil(self.group)
    }

    /// Bytes of the outboard.
    pub fn outboard_bytes(&self) -> u64 {
        self.levels.iter().sum::<u64>() * CV_BYTES
    }

    /// Where level `k`'s entries start in the outboard.
    pub fn level_offset(&self, k: usize) -> u64 {
        self.levels[..k].iter().sum::<u64>() * CV_BYTES
    }

    /// The content bytes of group `i`.
    pub fn group_range(&self, i: u64) -> Range<u64> {
        i * self.group..((i + 1) * self.group).min(self.len)
    }

    /// The content bytes of groups `g` (non-empty, within the content's groups).
    pub fn groups_bytes(&self, g: &Range<u64>) -> Range<u64> {
        self.group_range(g.start).start..self.group_range(g.end - 1).end
    }

    /// The groups holding content bytes `r` (non-empty, within the content).
    pub fn groups_of(&self, r: &Range<u64>) -> Range<u64> {
        r.start / self.group..r.end.div_ceil(self.group)
    }

    /// The entries a reader needs to verify groups `g` (non-empty, within the content's
    /// groups), per level, level 0 first: whole runs of `fanout` entries below the top, and
    /// the whole top.
    pub fn plan(&self, g: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::with_capacity(self.levels.len());
        let (mut a, mut b) = (g.start, g.end);
        for (k, &n) in self.levels.iter().enumerate() {
            if k + 1 == self.levels.len() {
                out.push(0..n);
            } else {
                let run_a = a / self.fanout * self.fanout;
                let run_b = (b.div_ceil(self.fanout) * self.fanout).min(n);
                out.push(run_a..run_b);
            }
            a /= self.fanout;
            b = b.div_ceil(self.fanout);
        }
        out
    }

    /// The level-0 run (of `fanout` entries) holding group `i`: the groups one read of level 0
    /// covers, and what a streaming reader verifies at a time.
    pub fn window(&self, i: u64) -> Range<u64> {
        let a = i / self.fanout * self.fanout;
        a..(a + self.fanout).min(self.groups())
    }

    /// Checks the outboard entries a reader read for groups `g` against the content's BLAKE3
    /// `root`: `entries[k]` are the CVs of level k named by [`Shape::plan`]`(g)`. Once they
    /// pass, `entries[0]` are level 0's true entries for `plan(g)[0]`.
    pub fn check_entries(
        &self,
        root: &blake3::Hash,
        g: Range<u64>,
        entries: &[&[Cv]],
    ) -> Result<(), TreeError> {
        if self.levels.is_empty() {
            return if entries.is_empty() {
                Ok(())
            } else {
                Err(TreeError::Shape("outboard entries"))
            };
        }
        if g.start >= g.end || g.end > self.groups() {
            return Err(TreeError::Shape("groups"));
        }
        let plan = self.plan(g);
        if entries.len() != plan.len()
            || entries
                .iter()
                .zip(&plan)
                .any(|(e, p)| e.len() as u64 != p.end - p.start)
        {
            return Err(TreeError::Shape("outboard entries"));
        }
        let top = entries.len() - 1;
        if root_of(entries[top]) != *root {
            return Err(TreeError::Outboard);
        }
        // Each level's runs merge into the entries of the level above, which are verified.
        for k in (0..top).rev() {
            let (above, at) = (&plan[k + 1], &plan[k]);
            for (j, run) in entries[k].chunks(self.fanout as usize).enumerate() {
                let parent = at.start / self.fanout + j as u64;
                let want = entries[k + 1][(parent - above.start) as usize];
                if merge(run) != want {
                    return Err(TreeError::Outboard);
                }
            }
        }
        Ok(())
    }

    /// Whether `pieces`, in order, are group `i`'s bytes: against its level-0 entry `cv`
    /// (checked already), or for a content of at most one group (`cv` unused) against the
    /// content's BLAKE3 itself.
    pub fn group_matches(&self, root: &blake3::Hash, i: u64, pieces: &[&[u8]], cv: &Cv) -> bool {
        let want = self.group_range(i);
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        if len as u64 != want.end - want.start {
            return false;
        }
        let mut h = blake3::Hasher::new();
        if self.levels.is_empty() {
            for p in pieces {
                h.update(p);
            }
            return h.finalize() == *root;
        }
        h.set_input_offset(want.start);
        for p in pieces {
            h.update(p);
        }
        h.finalize_non_root() == *cv
    }

    /// The outboard's bytes from level 0's entries (`levels[0]` of them): level 0, then the
    /// levels above, each entry the merge of a run of the level below.
    pub fn outboard_from(&self, level0: &[Cv]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.outboard_bytes() as usize);
        if self.levels.is_empty() {
            return out;
        }
        debug_assert_eq!(level0.len() as u64, self.levels[0]);
        let mut level: Vec<Cv> = level0.to_vec();
        for k in 0..self.levels.len() {
            for cv in &level {
                out.extend_from_slice(cv);
            }
            if k + 1 < self.levels.len() {
                level = level.chunks(self.fanout as usize).map(merge).collect();
            }
        }
        out
    }

    /// Checks groups `g` of the content against its BLAKE3 `root`: `entries[k]` are the CVs of
    /// level k named by [`Shape::plan`] for `g`, and `data` the groups' bytes, whole and in
    /// order. For a content of at most one group, `entries` is empty and `data` the content.
    pub fn verify(
        &self,
        root: &blake3::Hash,
        g: Range<u64>,
        entries: &[&[Cv]],
        data: &[u8],
    ) -> Result<(), TreeError> {
        if self.levels.is_empty() {
            return if blake3::hash(data) == *root {
                Ok(())
            } else {
                Err(TreeError::Whole)
            };
        }
        self.check_entries(root, g.clone(), entries)?;
        let plan0 = self.plan(g.clone())[0].start;
        // The data against level 0.
        let want = self.groups_bytes(&g);
        if data.len() as u64 != want.end - want.start {
            return Err(TreeError::Shape("group data"));
        }
        let mut at = 0usize;
        for i in g {
            let n = (self.group_range(i).end - i * self.group) as usize;
            if !self.group_matches(
                root,
                i,
                &[&data[at..at + n]],
                &entries[0][(i - plan0) as usize],
            ) {
                return Err(TreeError::Group(i));
            }
            at += n;
        }
        Ok(())
    }

    /// [`Shape::verify`] against a whole outboard held in memory (as [`outboard`] makes it):
    /// the plan's entries are read out of it.
    pub fn verify_in(
        &self,
        root: &blake3::Hash,
        g: Range<u64>,
        outboard: &[u8],
        data: &[u8],
    ) -> Result<(), TreeError> {
        if self.levels.is_empty() {
            return self.verify(root, g, &[], data);
        }
        if g.start >= g.end || g.end > self.groups() {
            return Err(TreeError::Shape("groups"));
        }
        if outboard.len() as u64 != self.outboard_bytes() {
            return Err(TreeError::Shape("outboard length"));
        }
        let levels: Vec<Vec<Cv>> = self
            .plan(g.clone())
            .into_iter()
            .enumerate()
            .map(|(k, r)| self.entries(outboard, k, r))
            .collect();
        let refs: Vec<&[Cv]> = levels.iter().map(Vec::as_slice).collect();
        self.verify(root, g, &refs, data)
    }

    /// The entries of level `k` named by `r`, read out of a whole outboard.
    fn entries(&self, outboard: &[u8], k: usize, r: Range<u64>) -> Vec<Cv> {
        let at = self.level_offset(k);
        r.map(|i| {
            let o = (at + i * CV_BYTES) as usize;
            outboard[o..o + 32].try_into().expect("32 bytes")
        })
        .collect()
    }
}

/// The CV of the bytes `data` at content offset `offset` (a non-root subtree: a group).
pub fn group_cv(offset: u64, data: &[u8]) -> Cv {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(data);
    h.finalize_non_root()
}

/// The split of `n` subtrees of equal power-of-two size (the last possibly smaller) that BLAKE3
/// makes: the largest power of two less than `n` on the left.
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The CV of the subtree made of `cvs` (one or more consecutive subtrees, as above).
pub fn merge(cvs: &[Cv]) -> Cv {
    match cvs.len() {
        0 => [0; 32],
        1 => cvs[0],
        n => {
            let l = split(n);
            merge_subtrees_non_root(&merge(&cvs[..l]), &merge(&cvs[l..]), Mode::Hash)
        }
    }
}

/// The BLAKE3 of a content whose top subtrees are `cvs` (at least two).
pub fn root_of(cvs: &[Cv]) -> blake3::Hash {
    if cvs.len() < 2 {
        // A single subtree is never a root in an outboard: the content had more than one group.
        return blake3::Hash::from([0; 32]);
    }
    let l = split(cvs.len());
    merge_subtrees_root(&merge(&cvs[..l]), &merge(&cvs[l..]), Mode::Hash)
}

/// The BLAKE3 of a content and its outboard, in one pass over its bytes: what a PUT hashes
/// its body with. Groups start at [`GROUP_BYTES`] and double whenever level 0 would outgrow
/// [`LEVEL0_MAX`] (each pair of entries merges into one), so the content's length need not be
/// known before its end, and at most 8 MiB of level 0 is held.
pub struct ContentHasher {
    state: HashState,
    level0: Vec<Cv>,
    cap: u64,
}

impl ContentHasher {
    pub fn new() -> ContentHasher {
        ContentHasher::with_cap(LEVEL0_MAX)
    }

    /// With another bound on level 0 than the store's (tests reach the doubling with little
    /// data); the outboard is then that of `Shape::with(len, group, FANOUT)` with the group
    /// that bound gives.
    pub fn with_cap(cap: u64) -> ContentHasher {
        let mut state = HashState::new();
        state.set_group(GROUP_BYTES);
        ContentHasher {
            state,
            level0: Vec::new(),
            cap,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.state.update(data);
        if self.state.groups_pending() > 0 {
            self.level0.extend(self.state.take_groups());
            while self.level0.len() as u64 > self.cap {
                self.double();
            }
        }
    }

    /// Doubles the group: pairs of entries merge, and an unpaired last one is dropped (it is
    /// the left half of a group still open, which the state finishes at the new size).
    fn double(&mut self) {
        let pairs = self.level0.len() / 2;
        for j in 0..pairs {
            self.level0[j] = merge(&self.level0[2 * j..2 * j + 2]);
        }
        self.level0.truncate(pairs);
        self.state.set_group(self.state.group() * 2);
    }

    /// Bytes taken so far.
    pub fn len(&self) -> u64 {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// The content's BLAKE3 and its outboard (empty for a content of at most one group).
    pub fn finish(mut self) -> ([u8; 32], Vec<u8>) {
        let root = self.state.finalize();
        let len = self.state.len();
        let shape = Shape::with(len, group_within(len, self.cap), FANOUT);
        if shape.levels.is_empty() {
            return (root, Vec::new());
        }
        if let Some(last) = self.state.open_group() {
            self.level0.push(last);
        }
        // The last group may take level 0 past its bound: one more doubling (of whole groups
        // now, the last one possibly short).
        while self.state.group() < shape.group {
            let pairs: Vec<Cv> = self.level0.chunks(2).map(merge).collect();
            self.level0 = pairs;
            self.state.set_group(self.state.group() * 2);
        }
        debug_assert_eq!(self.level0.len() as u64, shape.levels[0]);
        (root, shape.outboard_from(&self.level0))
    }
}

impl Default for ContentHasher {
    fn default() -> Self {
        ContentHasher::new()
    }
}

/// The whole outboard of `data`, with any group size and fan-out (tests and the fuzz target;
/// the store's writers use [`ContentHasher`]).
pub fn outboard(data: &[u8], group: u64, fanout: u64) -> Vec<u8> {
    let shape = Shape::with(data.len() as u64, group, fanout);
    if shape.levels.is_empty() {
        return Vec::new();
    }
    let level0: Vec<Cv> = data
        .chunks(group as usize)
        .enumerate()
        .map(|(i, c)| group_cv(i as u64 * group, c))
        .collect();
    shape.outboard_from(&level0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
            .collect()
    }

    /// Verifies groups `g` of `data` out of its outboard.
    fn check(data: &[u8], ob: &[u8], shape: &Shape, g: Range<u64>) -> Result<(), TreeError> {
        check_bytes(data, ob, shape, g.clone(), groups_of(data, shape, &g))
    }

    /// Verifies groups `g` of `data` with `bytes` standing for their content.
    fn check_bytes(
        data: &[u8],
        ob: &[u8],
        shape: &Shape,
        g: Range<u64>,
        bytes: &[u8],
    ) -> Result<(), TreeError> {
        shape.verify_in(&blake3::hash(data), g, ob, bytes)
    }

    /// The bytes of groups `g` of `data` (all of it for a content of one group).
    fn groups_of<'d>(data: &'d [u8], shape: &Shape, g: &Range<u64>) -> &'d [u8] {
        if shape.levels.is_empty() {
            return data;
        }
        let r = shape.groups_bytes(g);
        &data[r.start as usize..r.end as usize]
    }

    #[test]
    fn every_range_of_every_shape_verifies() {
        // Small groups and fan-out build trees of one to four levels out of little data.
        for &(group, fanout) in &[(1024u64, 2u64), (1024, 4), (2048, 8)] {
            for len in [
                0usize, 1, 1023, 1024, 1025, 2048, 4095, 4096, 4097, 9000, 16384, 16385, 40_000,
                65_536, 70_001,
            ] {
                let data = bytes(len, 7);
                let shape = Shape::with(len as u64, group, fanout);
                let ob = outboard(&data, group, fanout);
                assert_eq!(ob.len() as u64, shape.outboard_bytes(), "len {len}");
                let n = shape.groups();
                if n <= 1 {
                    assert!(ob.is_empty());
                    check(&data, &ob, &shape, 0..1).unwrap();
                    continue;
                }
                for a in 0..n {
                    for b in [a + 1, (a + 3).min(n), n] {
                        check(&data, &ob, &shape, a..b).unwrap_or_else(|e| {
                            panic!("len {len} group {group} fanout {fanout} {a}..{b}: {e}")
                        });
                    }
                }
            }
        }
    }

    #[test]
    fn the_store_shape_matches_blake3_on_real_sizes() {
        for len in [65_536usize, 65_537, 3 * 65_536 + 17, 1024 * 65_536 + 5] {
            let data = bytes(len, 3);
            let shape = Shape::new(len as u64);
            let ob = outboard(&data, GROUP_BYTES, FANOUT);
            assert_eq!(ob.len() as u64, shape.outboard_bytes());
            let n = shape.groups();
            for g in [0..1, n - 1..n, 0..n] {
                check(&data, &ob, &shape, g).unwrap();
            }
        }
        // 64 MiB + 5 bytes: 1025 groups, so two levels (1025 entries, then 2).
        assert_eq!(Shape::new(1024 * 65_536 + 5).levels, vec![1025, 2]);
        // Level 0 stays within its bound: past 16 GiB groups grow, so two levels still.
        assert_eq!(Shape::new(16 << 30).levels, vec![1 << 18, 1 << 8]);
        assert_eq!(Shape::new((16 << 30) + 1).group, 2 * GROUP_BYTES);
        assert_eq!(Shape::new(64 << 30).levels, vec![1 << 18, 1 << 8]);
        assert_eq!(Shape::new(5 << 40).levels, vec![5 << 15, 160]);
        assert_eq!(Shape::new(5 << 40).group, 32 << 20);
    }

    #[test]
    fn a_changed_byte_a_changed_entry_or_a_wrong_root_fails() {
        let (group, fanout) = (1024, 4);
        let data = bytes(40_000, 9);
        let shape = Shape::with(40_000, group, fanout);
        let ob = outboard(&data, group, fanout);
        let n = shape.groups();
        // A byte of the content.
        for at in [0usize, 1023, 1024, 20_000, 39_999] {
            let mut bad = data.clone();
            bad[at] ^= 1;
            let g = (at as u64 / group)..(at as u64 / group + 1);
            assert_eq!(
                check_bytes(&data, &ob, &shape, g.clone(), groups_of(&bad, &shape, &g)),
                Err(TreeError::Group(g.start))
            );
        }
        // A byte of any outboard entry on the path of some range.
        for at in 0..ob.len() {
            let mut bad = ob.clone();
            bad[at] ^= 0x80;
            let caught = (0..n).any(|g| check(&data, &bad, &shape, g..g + 1).is_err());
            assert!(caught, "a flipped outboard byte at {at} went unnoticed");
        }
        // Another content's BLAKE3.
        assert_eq!(
            shape.verify_in(&blake3::hash(b"something else"), 0..1, &ob, &data[..1024]),
            Err(TreeError::Outboard)
        );
    }

    #[test]
    fn the_content_hasher_gives_blake3_and_the_outboard_in_one_pass() {
        let g = GROUP_BYTES as usize;
        // A bound of 4 entries makes groups double at 4, 8, 16 … groups' worth of data.
        for cap in [LEVEL0_MAX, 4, 5] {
            for len in [
                0usize,
                1,
                g,
                g + 1,
                2 * g,
                4 * g,
                4 * g + 1,
                5 * g - 1,
                8 * g,
                9 * g + 3,
                17 * g + 1000,
                32 * g,
            ] {
                let data = bytes(len, 11);
                let group = group_within(len as u64, cap);
                let want = outboard(&data, group, FANOUT);
                for piece in [1000usize, g, g + 1, 3 * g + 7, len.max(1)] {
                    let mut h = ContentHasher::with_cap(cap);
                    for c in data.chunks(piece) {
                        h.update(c);
                    }
                    let (root, ob) = h.finish();
                    assert_eq!(root, *blake3::hash(&data).as_bytes(), "cap {cap} len {len}");
                    assert_eq!(ob, want, "cap {cap} len {len} pieces of {piece}");
                }
            }
        }
    }

    /// The byte layout, pinned: level 0 then the levels above, 32-byte CVs and nothing else.
    #[test]
    fn golden_layout() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let ob = outboard(&data, 1024, 2);
        // 5 groups: levels of 5, 3 (runs 0-1, 2-3, 4) and 2 entries.
        let shape = Shape::with(5000, 1024, 2);
        assert_eq!(shape.levels, vec![5, 3, 2]);
        assert_eq!(ob.len(), 10 * 32);
        assert_eq!(&ob[..32], &group_cv(0, &data[..1024]));
        assert_eq!(&ob[4 * 32..5 * 32], &group_cv(4096, &data[4096..]));
        let l1_0 = merge(&[
            group_cv(0, &data[..1024]),
            group_cv(1024, &data[1024..2048]),
        ]);
        assert_eq!(&ob[5 * 32..6 * 32], &l1_0);
        assert_eq!(
            hex(&blake3::hash(&ob)),
            "e2b2fc1d260389e81848f2d20ce863c16794fa1f05f9aa7c5b8292e24640ae74"
        );
    }

    fn hex(h: &blake3::Hash) -> String {
        h.to_hex().to_string()
    }
}

//! BLAKE3 of an object that arrives in pieces, across requests and restarts.
//!
//! A resumable upload must end with the BLAKE3 of the whole object without re-reading it, and
//! its state must survive a restart of the server, so it cannot live in a `blake3::Hasher`.
//! [`HashState`] keeps what the hasher keeps, in a form that serializes: the chaining values of
//! the complete subtrees hashed so far (at most one per bit of the length) and the bytes of the
//! subtree still open (at most [`SUBTREE_BYTES`]). The result is exactly `blake3::hash` of the
//! concatenated input (tested against it for many split points).

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};

/// Bytes per subtree hashed at once: a power of two of chunks, large enough for BLAKE3's SIMD
/// parallelism, small enough to persist as the open part.
pub const SUBTREE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "StoredHashState")]
pub struct HashState {
    /// Chaining values of complete subtrees, largest (leftmost) first, with their lengths.
    stack: Vec<([u8; 32], u64)>,
    /// Bytes covered by `stack` (a multiple of [`SUBTREE_BYTES`]).
    hashed: u64,
    /// Bytes not yet in a subtree: never more than [`SUBTREE_BYTES`].
    open: Vec<u8>,
    /// With a group size (a power of two of subtrees; 0 for none), the chaining value of every
    /// group completed is kept for [`HashState::take_groups`]: the level 0 of the content's
    /// outboard (`crate::tree`). Not stored: the writer sets it again after a restart.
    #[serde(skip)]
    group: u64,
    #[serde(skip)]
    groups: Vec<[u8; 32]>,
}

/// A [`HashState`] as it was read back, before its invariants are checked: the stored state
/// comes from the metadata store, and a damaged one must fail to load, not panic later.
#[derive(serde::Deserialize)]
struct StoredHashState {
    stack: Vec<([u8; 32], u64)>,
    hashed: u64,
    open: Vec<u8>,
}

impl TryFrom<StoredHashState> for HashState {
    type Error = &'static str;
    fn try_from(s: StoredHashState) -> Result<Self, Self::Error> {
        if s.open.len() > SUBTREE_BYTES {
            return Err("open subtree longer than a subtree");
        }
        // Subtrees are powers of two of SUBTREE_BYTES, strictly shrinking left to right (two
        // of the same size would have been merged), and add up to `hashed`.
        let mut sum = 0u64;
        let mut previous = u64::MAX;
        for &(_, len) in &s.stack {
            let subtrees = len / SUBTREE_BYTES as u64;
            if len % SUBTREE_BYTES as u64 != 0 || !subtrees.is_power_of_two() || len >= previous {
                return Err("subtree lengths are not shrinking powers of two");
            }
            previous = len;
            sum = sum.checked_add(len).ok_or("subtree lengths overflow")?;
        }
        if sum != s.hashed {
            return Err("subtree lengths do not add up to the bytes hashed");
        }
        Ok(HashState {
            stack: s.stack,
            hashed: s.hashed,
            open: s.open,
            group: 0,
            groups: Vec::new(),
        })
    }
}

impl HashState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes taken so far.
    pub fn len(&self) -> u64 {
        self.hashed + self.open.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the chaining value of every group of `group` bytes completed from now on (a power
    /// of two of at least [`SUBTREE_BYTES`]), and from the next group on for a larger size
    /// (the groups kept so far then pair up into the larger ones: see `crate::tree`).
    pub fn set_group(&mut self, group: u64) {
        assert!(
            group.is_power_of_two() && group >= SUBTREE_BYTES as u64,
            "bad group size"
        );
        self.group = group;
    }

    pub fn group(&self) -> u64 {
        self.group
    }

    /// The chaining values of the groups completed since the last call, in order.
    pub fn take_groups(&mut self) -> Vec<[u8; 32]> {
        std::mem::take(&mut self.groups)
    }

    /// How many groups were completed so far, taken or not.
    pub fn groups_done(&self) -> u64 {
        self.hashed.checked_div(self.group).unwrap_or(0)
    }

    /// How many completed groups [`HashState::take_groups`] would return.
    pub fn groups_pending(&self) -> usize {
        self.groups.len()
    }

    /// The chaining value of the last group, not complete yet (the bytes after the last whole
    /// group); `None` when the content so far ends on a group boundary.
    pub fn open_group(&self) -> Option<[u8; 32]> {
        let mut right = (!self.open.is_empty()).then(|| subtree_cv(self.hashed, &self.open));
        for &(left, len) in self.stack.iter().rev() {
            if len >= self.group {
                break;
            }
            right = Some(match right {
                None => left,
                Some(r) => merge_subtrees_non_root(&left, &r, Mode::Hash),
            });
        }
        right
    }

    pub fn update(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            if self.open.len() == SUBTREE_BYTES {
                // More input follows the open subtree, so it is not the root: close it.
                self.push(subtree_cv(self.hashed, &self.open), SUBTREE_BYTES as u64);
                self.open.clear();
            }
            if self.open.is_empty() && input.len() > SUBTREE_BYTES {
                // A whole subtree with more after it, hashed where it lies.
                let (sub, rest) = input.split_at(SUBTREE_BYTES);
                self.push(subtree_cv(self.hashed, sub), SUBTREE_BYTES as u64);
                input = rest;
                continue;
            }
            let n = (SUBTREE_BYTES - self.open.len()).min(input.len());
            self.open.extend_from_slice(&input[..n]);
            input = &input[n..];
        }
    }

    fn push(&mut self, cv: [u8; 32], len: u64) {
        self.stack.push((cv, len));
        self.hashed += len;
        if len == self.group {
            self.groups.push(cv);
        }
        while self.stack.len() >= 2 {
            let n = self.stack.len();
            if self.stack[n - 1].1 != self.stack[n - 2].1 {
                break;
            }
            let (right, len) = self.stack.pop().expect("two");
            let (left, _) = self.stack.pop().expect("two");
            let merged = merge_subtrees_non_root(&left, &right, Mode::Hash);
            self.stack.push((merged, 2 * len));
            if 2 * len == self.group {
                self.groups.push(merged);
            }
        }
    }

    /// The BLAKE3 of everything taken.
    pub fn finalize(&self) -> [u8; 32] {
        if self.stack.is_empty() {
            return *blake3::hash(&self.open).as_bytes();
        }
        let mut right = subtree_cv(self.hashed, &self.open);
        for (i, (left, _)) in self.stack.iter().enumerate().rev() {
            if i == 0 {
                return *merge_subtrees_root(left, &right, Mode::Hash).as_bytes();
            }
            right = merge_subtrees_non_root(left, &right, Mode::Hash);
        }
        unreachable!("the stack is not empty")
    }
}

/// The chaining value of `data` at content offset `offset`, as a subtree that is not the root.
fn subtree_cv(offset: u64, data: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(data);
    h.finalize_non_root()
}

/// The name of a content assembled from parts (each given by its BLAKE3 and size, in order):
/// the BLAKE3 of that list after a domain tag, not of the bytes, which are never hashed whole.
/// It cannot be the name of any content written whole except by a BLAKE3 collision.
pub fn assembled_name<'a>(parts: impl IntoIterator<Item = (&'a [u8; 32], u64)>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"ostore assembled from parts v1\0");
    for (hash, size) in parts {
        h.update(hash);
        h.update(&size.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn equals_blake3_for_any_length_and_split() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let data: Vec<u8> = (0..2 * 1024 * 1024 + 77).map(|_| rng.gen()).collect();
        let s = SUBTREE_BYTES;
        let lengths = [
            0,
            1,
            1024,
            1025,
            s - 1,
            s,
            s + 1,
            2 * s,
            2 * s + 1,
            3 * s,
            5 * s + 3,
            7 * s,
            8 * s,
            8 * s + 1,
            data.len(),
        ];
        for len in lengths {
            let want = *blake3::hash(&data[..len]).as_bytes();
            let mut st = HashState::new();
            st.update(&data[..len]);
            assert_eq!(st.finalize(), want, "one piece of {len}");
            // Random pieces, each time through a serialization round trip (a restart).
            let mut st = HashState::new();
            let mut at = 0;
            while at < len {
                let n = rng.gen_range(1..=(len - at).min(3 * s));
                st.update(&data[at..at + n]);
                at += n;
                // A restart: the state goes through its stored encoding.
                let bytes = postcard::to_allocvec(&st).unwrap();
                st = postcard::from_bytes(&bytes).unwrap();
            }
            assert_eq!(st.len(), len as u64);
            assert_eq!(st.finalize(), want, "pieces of {len}");
        }
    }

    #[test]
    fn groups_come_out_in_order_across_restarts() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let s = SUBTREE_BYTES;
        let data: Vec<u8> = (0..9 * s + 333).map(|_| rng.gen()).collect();
        for group in [s as u64, 2 * s as u64, 4 * s as u64] {
            for len in [s + 1, 2 * s, 4 * s, 4 * s + 1, 9 * s, data.len()] {
                let want: Vec<[u8; 32]> = data[..len]
                    .chunks(group as usize)
                    .enumerate()
                    .map(|(i, c)| subtree_cv(i as u64 * group, c))
                    .collect();
                let mut st = HashState::new();
                st.set_group(group);
                let mut got = Vec::new();
                let mut at = 0;
                while at < len {
                    let n = rng.gen_range(1..=(len - at).min(3 * s));
                    st.update(&data[at..at + n]);
                    at += n;
                    got.extend(st.take_groups());
                    let bytes = postcard::to_allocvec(&st).unwrap();
                    st = postcard::from_bytes(&bytes).unwrap();
                    st.set_group(group);
                }
                assert_eq!(st.groups_done(), got.len() as u64);
                got.extend(st.open_group());
                assert_eq!(got, want, "group {group} len {len}");
                assert_eq!(st.finalize(), *blake3::hash(&data[..len]).as_bytes());
            }
        }
    }

    #[test]
    fn a_damaged_stored_state_fails_to_load() {
        let mut st = HashState::new();
        st.update(&vec![7u8; 3 * SUBTREE_BYTES + 5]);
        let good = postcard::to_allocvec(&st).unwrap();
        assert_eq!(postcard::from_bytes::<HashState>(&good).unwrap(), st);
        let bad = |stack: Vec<([u8; 32], u64)>, hashed: u64, open: Vec<u8>| {
            let raw = postcard::to_allocvec(&(stack, hashed, open)).unwrap();
            postcard::from_bytes::<HashState>(&raw).is_err()
        };
        let s = SUBTREE_BYTES as u64;
        assert!(bad(vec![], 0, vec![0; SUBTREE_BYTES + 1]), "open too long");
        assert!(bad(vec![([0; 32], s)], 2 * s, vec![]), "sum");
        assert!(
            bad(vec![([0; 32], s), ([0; 32], s)], 2 * s, vec![]),
            "unmerged"
        );
        assert!(
            bad(vec![([0; 32], 3 * s)], 3 * s, vec![]),
            "not a power of two"
        );
        assert!(bad(vec![([0; 32], u64::MAX)], u64::MAX, vec![]), "huge");
        assert!(!bad(vec![([0; 32], 2 * s), ([0; 32], s)], 3 * s, vec![1]));
    }
}

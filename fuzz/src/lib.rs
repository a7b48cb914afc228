//! Fuzz targets for every parser of bytes ostore did not produce itself in this process:
//! request headers, keys and query strings, tus headers, shard headers and block trailers read
//! from drives, peer frames, the control-plane envelope and the metadata values read back from
//! the store, seek tables and saved hash states.
//!
//! Each target takes arbitrary bytes and must not panic; where a parser has an encoder, the
//! target also checks that what decodes encodes back to the same value, and where a parser
//! promises bounds (a range inside the object), that they hold.
//!
//! The toolchain here is stable, where libFuzzer's coverage instrumentation (cargo-fuzz) is not
//! available, so [`run`] is a mutational fuzzer of its own: seeded, reproducible, starting from
//! the committed corpus (`fuzz/corpus/<target>/`) and a per-target dictionary of tokens. It is
//! not coverage-guided. The target functions have libFuzzer's shape (`fn(&[u8])`), so they can
//! be wrapped in `fuzz_target!` unchanged where a nightly toolchain is at hand.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod input;
pub mod targets;

pub use input::{headers, Input, Target, HEADER_NAMES};

/// Every target.
pub fn all() -> &'static [Target] {
    targets::ALL
}

pub fn by_name(name: &str) -> Option<&'static Target> {
    all().iter().find(|t| t.name == name)
}

/// The committed corpus directory of a target.
pub fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

/// The committed corpus of a target (sorted by file name, so runs are reproducible).
pub fn corpus(name: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(name))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Stats {
    pub execs: u64,
    pub elapsed: Duration,
    /// The input that panicked, and the panic's message.
    pub crash: Option<(Vec<u8>, String)>,
}

impl Stats {
    pub fn execs_per_s(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A small, fast, seedable generator (xorshift64*): runs replay exactly from their seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Integers at the edges of what parsers handle, as text and little-endian bytes.
const INTERESTING_U64: [u64; 12] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX - 2,
    u64::MAX - 1,
    u64::MAX,
];

/// One mutation of `input`, in place.
pub fn mutate(
    rng: &mut Rng,
    input: &mut Vec<u8>,
    pool: &[Vec<u8>],
    dictionary: &[&[u8]],
    len_max: usize,
) {
    let at = |rng: &mut Rng, v: &Vec<u8>| rng.below(v.len() + 1);
    match rng.below(10) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = [0, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'-', b','][rng.below(9)];
        }
        2 => {
            // An interesting integer, as little-endian bytes over the input.
            let v = INTERESTING_U64[rng.below(INTERESTING_U64.len())].to_le_bytes();
            let w = [1, 2, 4, 8][rng.below(4)];
            let i = at(rng, input);
            for (k, b) in v[..w].iter().enumerate() {
                if i + k < input.len() {
                    input[i + k] = *b;
                } else {
                    input.push(*b);
                }
            }
        }
        3 => {
            // An interesting integer as decimal text.
            let v = INTERESTING_U64[rng.below(INTERESTING_U64.len())].to_string();
            let i = at(rng, input);
            input.splice(i..i, v.bytes());
        }
        4 if !dictionary.is_empty() => {
            let t = dictionary[rng.below(dictionary.len())];
            let i = at(rng, input);
            input.splice(i..i, t.iter().copied());
        }
        5 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = 1 + rng.below((input.len() - i).min(32));
            input.drain(i..i + n);
        }
        6 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = 1 + rng.below((input.len() - i).min(64));
            let piece: Vec<u8> = input[i..i + n].to_vec();
            let j = at(rng, input);
            input.splice(j..j, piece);
        }
        7 if !pool.is_empty() => {
            // Splice: the head of this input and the tail of another.
            let other = &pool[rng.below(pool.len())];
            let i = at(rng, input);
            let j = rng.below(other.len() + 1);
            input.truncate(i);
            input.extend_from_slice(&other[j..]);
        }
        8 => {
            let n = 1 + rng.below(16);
            let i = at(rng, input);
            for k in 0..n {
                let b = rng.next_u64() as u8;
                input.insert(i + k, b);
            }
        }
        _ => {
            if !input.is_empty() {
                let n = rng.below(input.len());
                input.truncate(n);
            }
        }
    }
    input.truncate(len_max);
}

/// Runs `target` on its corpus, then on mutated inputs until `execs_max` inputs or `time_max`
/// have passed; stops at the first panic and returns it with the input.
pub fn run(target: &Target, seed: u64, execs_max: u64, time_max: Duration) -> Stats {
    let started = Instant::now();
    let _quiet = QuietPanics::new();
    let mut execs = 0u64;
    let crash = explore(target, seed, execs_max, time_max, started, &mut execs);
    Stats {
        execs,
        elapsed: started.elapsed(),
        crash,
    }
}

/// The corpus first, then mutations; the first input that panics, with its message.
fn explore(
    target: &Target,
    seed: u64,
    execs_max: u64,
    time_max: Duration,
    started: Instant,
    execs: &mut u64,
) -> Option<(Vec<u8>, String)> {
    let mut pool = corpus(target.name);
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let seeds = pool.len();
    let mut rng = Rng::new(seed ^ fnv(target.name.as_bytes()));
    let mut try_one = |input: &[u8]| -> Option<(Vec<u8>, String)> {
        *execs += 1;
        let r = catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
        r.err()
            .map(|p| (input.to_vec(), ostore_server::guard::message(&*p)))
    };
    for input in &pool {
        if let Some(c) = try_one(input) {
            return Some(c);
        }
    }
    let mut input = Vec::new();
    let mut n = pool.len() as u64;
    while n < execs_max && started.elapsed() < time_max {
        // Mostly from a seed, sometimes further from the last input.
        if rng.below(4) != 0 {
            input.clone_from(&pool[rng.below(pool.len())]);
        }
        for _ in 0..1 + rng.below(4) {
            mutate(
                &mut rng,
                &mut input,
                &pool,
                target.dictionary,
                target.len_max,
            );
        }
        n += 1;
        if let Some(c) = try_one(&input) {
            return Some(c);
        }
        // Keep a few generated inputs as starting points too (bounded pool).
        if pool.len() < seeds + 256 && rng.below(64) == 0 {
            pool.push(input.clone());
        }
    }
    None
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Silences the panic hook while a run catches panics (the crash is reported by the run).
struct QuietPanics;

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl QuietPanics {
    fn new() -> QuietPanics {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !QUIET.with(|q| q.get()) {
                    previous(info);
                }
            }));
        });
        QUIET.with(|q| q.set(true));
        QuietPanics
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        QUIET.with(|q| q.set(false));
    }
}

/// Saves a crashing input where the runner and the README say to look for it, and returns
/// the path.
pub fn save_crash(target: &str, input: &[u8]) -> std::io::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/fuzz-crashes")
        .join(target);
    std::fs::create_dir_all(&dir)?;
    let p = dir.join(hex::encode(&blake3::hash(input).as_bytes()[..8]));
    std::fs::write(&p, input)?;
    Ok(p)
}

//! A bounded run of every fuzz target: its committed corpus, then mutated inputs from a fixed
//! seed (`OSTORE_FUZZ_EXECS` inputs per target, default 500,000, and at most
//! `OSTORE_FUZZ_SECONDS`, default 20). Longer runs: `cargo run --release -p ostore-fuzz -- run`.

use std::time::Duration;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fuzz(name: &str) {
    let target = ostore_fuzz::by_name(name).expect("target");
    assert!(
        !ostore_fuzz::corpus(name).is_empty(),
        "{name} has no committed corpus (fuzz/corpus/{name}/)"
    );
    let stats = ostore_fuzz::run(
        target,
        env_u64("OSTORE_FUZZ_SEED", 1),
        env_u64("OSTORE_FUZZ_EXECS", 500_000),
        Duration::from_secs(env_u64("OSTORE_FUZZ_SECONDS", 20)),
    );
    eprintln!(
        "fuzz {name}: {} execs in {:.2?} ({:.0} execs/s)",
        stats.execs,
        stats.elapsed,
        stats.execs_per_s()
    );
    if let Some((input, msg)) = stats.crash {
        let saved = ostore_fuzz::save_crash(name, &input);
        panic!(
            "{name} panicked on a {}-byte input ({saved:?}): {msg}\ninput: {}",
            input.len(),
            hex::encode(&input[..input.len().min(512)])
        );
    }
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { fuzz(stringify!($name)); })*

        #[test]
        fn every_target_has_a_test() {
            let tested = [$(stringify!($name)),*];
            for t in ostore_fuzz::all() {
                assert!(tested.contains(&t.name), "no test runs {}", t.name);
            }
        }
    };
}

targets!(
    range,
    http_headers,
    key_and_query,
    tus_metadata,
    shard_header,
    block,
    peer_frames,
    rpc_envelope,
    records,
    seek_table,
    outboard,
    hash_state,
    keys,
    s3_sigv4,
    s3_chunked,
    s3_xml,
    trust,
);

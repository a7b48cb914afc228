//! `ostore-sim [--seeds N] [--from S] [--steps N] [--all] [--seed S --history] [--bug NAME]`: runs
//! seeds and reports the first that breaks a promise (with the events that led to it), and the
//! rate. `--bug` puts back a fixed bug (`sweep-skips-read-back`,
//! `sweep-deletes-listed`, `rebuild-skips-sync`) to show which seeds catch it.

use std::time::Instant;

fn arg(args: &[String], name: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn config(args: &[String], seed: u64, steps: usize) -> ostore_sim::Config {
    let mut cfg = ostore_sim::Config::new(seed);
    cfg.steps = steps;
    let bug = args
        .iter()
        .position(|a| a == "--bug")
        .and_then(|i| args.get(i + 1));
    match bug.map(String::as_str) {
        None => {}
        Some("sweep-deletes-listed") => cfg.bugs.sweep_deletes_listed = true,
        Some("rebuild-skips-sync") => cfg.bugs.rebuild_skips_sync = true,
        Some("sweep-skips-read-back") => cfg.bugs.sweep_skips_read_back = true,
        Some(other) => {
            eprintln!("unknown bug {other:?}");
            std::process::exit(2);
        }
    }
    cfg
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps = arg(&args, "--steps").unwrap_or(600) as usize;
    if let Some(seed) = arg(&args, "--seed") {
        let r = ostore_sim::run(config(&args, seed, steps));
        if args.iter().any(|a| a == "--history") || r.violation.is_some() {
            for line in &r.history {
                println!("{line}");
            }
        }
        match r.violation {
            Some(v) => {
                eprintln!("seed {seed}: {v}");
                std::process::exit(1);
            }
            None => println!(
                "seed {seed}: ok ({} PUTs acknowledged, {} calls lost, {} contents collected)",
                r.puts_acknowledged, r.lost_calls, r.gc_collected
            ),
        }
        return;
    }
    let n = arg(&args, "--seeds").unwrap_or(1000);
    let from = arg(&args, "--from").unwrap_or(1);
    // With --all, every seed runs and the failing ones are counted; else the first stops.
    let all = args.iter().any(|a| a == "--all");
    let t0 = Instant::now();
    let mut failed = Vec::new();
    for seed in from..from + n {
        let r = ostore_sim::run(config(&args, seed, steps));
        if let Some(v) = r.violation {
            eprintln!("seed {seed}: {v}\nreplay: ostore-sim --seed {seed} --steps {steps}");
            if !all {
                std::process::exit(1);
            }
            failed.push(seed);
        }
    }
    let s = t0.elapsed().as_secs_f64();
    if !failed.is_empty() {
        println!(
            "{} of {n} seeds broke a promise, the first: {:?}",
            failed.len(),
            &failed[..failed.len().min(10)]
        );
        std::process::exit(1);
    }
    println!(
        "{n} seeds ({from}..{}) of {steps} steps: no violation, {s:.1} s, {:.1} seeds/s",
        from + n - 1,
        n as f64 / s
    );
}

//! `osbench`: the ostore load generator.
//!
//! Thread-per-core on monoio (one runtime per thread, no shared state on the hot path), closed
//! loop with `--concurrency` requests in flight, HDR latency histograms per operation.
//! `osbench disk --path DIR` measures a drive through the same direct-I/O path the store uses.

mod cpu;
mod disk;
mod load;
mod quic;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "osbench", version, about = "Load generator for ostore")]
pub struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    load: load::LoadArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Raw direct-I/O limits of a drive: sequential 1 MiB write and read at queue depth 16, and
    /// 4 KiB random-read IOPS.
    Disk(disk::DiskArgs),
    /// Bulk QUIC stream throughput: ostore's glommio-driven QUIC against quinn on tokio, on
    /// loopback, in one run.
    Quic(quic::QuicArgs),
    /// CPU cost per byte of a PUT (BLAKE3, Reed-Solomon, CRC32C) on one core: the CPU limit.
    Cpu(cpu::CpuArgs),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Some(Cmd::Disk(a)) => disk::run(a),
        Some(Cmd::Quic(a)) => quic::run(a),
        Some(Cmd::Cpu(a)) => cpu::run(a),
        None => load::run(cli.load),
    };
    if let Err(e) = r {
        eprintln!("osbench: {e:#}");
        std::process::exit(1);
    }
}

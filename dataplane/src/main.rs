//! `ostore`: the server binary.

use clap::{Parser, Subcommand};
use ostore_engine::EcParams;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ostore",
    version,
    about = "A distributed, erasure-coded object store"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One process: the control plane on the embedded metadata store and one data node.
    Dev {
        /// Data directory: metadata under DIR/meta, drives DIR/drive-0 .. DIR/drive-{N-1}.
        #[arg(long, default_value = "./ostore-data")]
        data: PathBuf,
        /// Native HTTP API address (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:9080")]
        http: SocketAddr,
        /// S3 API address (the S3 API is not served yet; the flag is accepted).
        #[arg(long, default_value = "127.0.0.1:9000")]
        s3: SocketAddr,
        /// Number of drives.
        #[arg(long, default_value_t = 6)]
        drives: u16,
        /// Erasure coding, K data + M parity shards.
        #[arg(long, default_value = "4+2")]
        ec: EcParams,
        /// Executors (one per core, pinned); defaults to the number of CPUs.
        #[arg(long)]
        cores: Option<usize>,
    },
    /// The control plane of a cluster (not available yet).
    Control {
        #[arg(long)]
        listen: Option<String>,
        #[arg(long)]
        meta: Option<String>,
    },
    /// A data node of a cluster (not available yet).
    Node {
        #[arg(long)]
        control: Option<String>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OSTORE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Dev {
            data,
            http,
            s3: _,
            drives,
            ec,
            cores,
        } => {
            let cores = cores
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                })
                .max(1);
            if drives == 0 {
                eprintln!("ostore: --drives must be at least 1");
                std::process::exit(2);
            }
            ostore_dataplane::node::run_dev(ostore_dataplane::node::DevOptions {
                data,
                http,
                drives,
                ec,
                cores,
            })
        }
        Cmd::Control { .. } | Cmd::Node { .. } => {
            eprintln!("ostore: cluster mode (control, node) is not available in this build yet; use `ostore dev`");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("ostore: {e:#}");
        std::process::exit(1);
    }
}

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

/// How a data node stores objects and keeps uploads (`ostore dev` and `ostore node`).
#[derive(clap::Args)]
struct Storing {
    /// Store objects that compress as seekable zstd (decided per object), or never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "off"])]
    compression: String,
    /// How long an unfinished resumable upload is kept after its last change (e.g. 24h, 30s).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    upload_expiry: std::time::Duration,
    /// How long content stays on the drives after its last version was removed (in-flight
    /// reads finish) before garbage collection deletes it (e.g. 1h, 0s).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    gc_grace: std::time::Duration,
    /// Memory for decoded stripes of hot objects, shared among the executors (each keeps its
    /// own part): `auto` (a sixteenth of the machine's memory, at most 4 GiB), `0` (off), or a
    /// size such as 512MiB. A stripe enters once it was asked for twice recently, so a one-off
    /// read of a large object passes through.
    #[arg(long, default_value = "auto", value_parser = parse_cache_size)]
    stripe_cache: CacheSize,
}

#[derive(clap::Args)]
struct Tls {
    /// PEM certificate chain of the client APIs (with --tls-key): HTTPS on --http and --s3,
    /// and HTTP/3. `ostore dev` without one makes a self-signed certificate under DIR/tls for
    /// HTTP/3 only and prints its path; a node without one serves no HTTP/3.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback without a certificate (refused
    /// otherwise: credentials would cross the network in the clear).
    #[arg(long)]
    insecure_http: bool,
}

impl Tls {
    fn files(&self) -> ostore_dataplane::http3::TlsFiles {
        ostore_dataplane::http3::TlsFiles {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            insecure_http: self.insecure_http,
        }
    }
}

/// What one client may hold of a node: connections, and time between bytes.
#[derive(clap::Args)]
struct Serving {
    /// Most HTTP/1.1 connections per executor; more are refused with 503. Defaults to what the
    /// open-file limit allows (after raising the soft limit to the hard one).
    #[arg(long)]
    max_connections: Option<usize>,
    /// How long a client may take to send a request's headers, from its first byte.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: std::time::Duration,
    /// How long a connection may sit with nothing moving: idle between requests, or a response
    /// its client stopped reading.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: std::time::Duration,
    /// How long a request body may stop arriving before the request fails (408) and what it
    /// wrote is discarded.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    body_idle_timeout: std::time::Duration,
}

impl Serving {
    fn limits(&self, cores: usize, open_files: u64) -> ostore_server::conn::Limits {
        ostore_server::conn::Limits {
            connections_per_executor: self.max_connections.unwrap_or_else(|| {
                ostore_server::process::connections_per_executor(open_files, cores)
            }),
            header_read: self.header_read_timeout,
            idle: self.idle_timeout,
            body_idle: self.body_idle_timeout,
        }
    }
}

impl Storing {
    fn options(&self, cores: usize) -> ostore_dataplane::ctx::StoreOptions {
        let cache = match self.stripe_cache {
            CacheSize::Auto => auto_stripe_cache_bytes(),
            CacheSize::Bytes(b) => b,
        };
        ostore_dataplane::ctx::StoreOptions {
            compress: self.compression == "auto",
            upload_expiry: self.upload_expiry,
            gc_grace: self.gc_grace,
            stripe_cache_bytes: cache / cores.max(1) as u64,
        }
    }
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
        /// S3 API address (path-style; the root key is `root` with the root secret).
        #[arg(long, default_value = "127.0.0.1:9000")]
        s3: SocketAddr,
        /// Also serve S3 virtual-hosted style: `BUCKET.DOMAIN` in the Host header names the
        /// bucket (path-style is always served).
        #[arg(long)]
        s3_domain: Option<String>,
        /// Number of drives.
        #[arg(long, default_value_t = 6)]
        drives: u16,
        /// Erasure coding, K data + M parity shards.
        #[arg(long, default_value = "4+2")]
        ec: EcParams,
        /// Executors (one per core, pinned); defaults to the number of CPUs.
        #[arg(long)]
        cores: Option<usize>,
        #[command(flatten)]
        storing: Storing,
        #[command(flatten)]
        serving: Serving,
        #[command(flatten)]
        tls: Tls,
    },
    /// The control plane of a cluster: metadata and membership (needs OSTORE_CLUSTER_KEY).
    Control {
        /// Address nodes reach the control-plane API on.
        #[arg(long)]
        listen: SocketAddr,
        /// Metadata store: redb:PATH (embedded, one control process), etcd:HOST:PORT[,…][/PREFIX]
        /// (several control processes over one etcd cluster), or fdb:CLUSTER_FILE (feature
        /// `fdb`).
        #[arg(long)]
        meta: String,
        /// Erasure coding of a new cluster, K data + M parity shards.
        #[arg(long, default_value = "4+2")]
        ec: EcParams,
        /// How long a node may stay down before its shards are rebuilt elsewhere (e.g. 10m, 30s).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        down_grace: std::time::Duration,
        /// Nodes that must be up for a write to be taken. At least, and by default,
        /// ceil((K+M)/M): the fewest that hold K+M shards with at most M on any one node, so
        /// that losing a node loses nothing. Stored with the cluster; omitted, the stored value
        /// stays.
        #[arg(long)]
        write_quorum: Option<u32>,
        /// How long the node certificates this control plane signs are valid (nodes renew
        /// theirs when two thirds have passed). Default: a year.
        #[arg(long, default_value = "365d", value_parser = parse_node_cert_lifetime)]
        node_cert_lifetime: std::time::Duration,
        /// With --meta etcd:…, reach the members over TLS: the CA (PEM) that signed their
        /// certificates. Needs --etcd-cert and --etcd-key.
        #[arg(long, requires_all = ["etcd_cert", "etcd_key"])]
        etcd_ca: Option<std::path::PathBuf>,
        /// This process's certificate (PEM) for etcd's --client-cert-auth.
        #[arg(long, requires = "etcd_ca")]
        etcd_cert: Option<std::path::PathBuf>,
        /// Its key (PEM).
        #[arg(long, requires = "etcd_ca")]
        etcd_key: Option<std::path::PathBuf>,
        #[command(flatten)]
        serving: Serving,
    },
    /// A data node of a cluster (needs OSTORE_SECRET).
    Node {
        /// Addresses of the cluster's `ostore control` processes, comma-separated: any of
        /// them serves, and calls fail over from one that fails or stops answering.
        #[arg(long, value_delimiter = ',', required = true)]
        control: Vec<SocketAddr>,
        /// Native HTTP API address.
        #[arg(long)]
        http: SocketAddr,
        /// S3 API address (path-style); not served without it.
        #[arg(long)]
        s3: Option<SocketAddr>,
        /// Also serve S3 virtual-hosted style: `BUCKET.DOMAIN` in the Host header names the
        /// bucket (path-style is always served).
        #[arg(long)]
        s3_domain: Option<String>,
        /// UDP address other nodes send shards to over QUIC.
        #[arg(long)]
        peer: SocketAddr,
        /// A drive (a directory on its own disk); repeat for each.
        #[arg(long = "drive", required = true)]
        drives: Vec<PathBuf>,
        /// A join token (`osctl nodes token`): how a new node gets its certificate. Needed only
        /// when none of its drives holds one yet (a node keeps its identity on every drive).
        #[arg(long, env = "OSTORE_JOIN_TOKEN", hide_env_values = true)]
        join_token: Option<String>,
        /// Failure domain (rack, room): shards of an object spread over zones first.
        #[arg(long, default_value = "default")]
        zone: String,
        /// Executors (one per core, pinned); defaults to the number of CPUs.
        #[arg(long)]
        cores: Option<usize>,
        #[command(flatten)]
        storing: Storing,
        #[command(flatten)]
        serving: Serving,
        #[command(flatten)]
        tls: Tls,
    },
}

/// At least a minute: a node renews with a third of it left, and checks every second.
fn parse_node_cert_lifetime(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d < std::time::Duration::from_secs(60) {
        return Err(format!("{s:?}: a node certificate lives a minute at least"));
    }
    Ok(d)
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let per = match unit {
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h, d)")),
    };
    let secs = n
        .checked_mul(per)
        .ok_or_else(|| format!("duration {s:?} too long"))?;
    Ok(std::time::Duration::from_secs(secs))
}

/// A stripe cache size: `auto`, or bytes with an optional unit (`0` turns the cache off).
#[derive(Clone, Copy, Debug)]
enum CacheSize {
    Auto,
    Bytes(u64),
}

fn parse_cache_size(s: &str) -> Result<CacheSize, String> {
    if s == "auto" {
        return Ok(CacheSize::Auto);
    }
    ostore_engine::units::parse_bytes(s).map(CacheSize::Bytes)
}

/// The stripe cache a node keeps when given `auto`: a sixteenth of the machine's memory, at
/// most 4 GiB, so that a node beside other processes keeps to a small share of it.
fn auto_stripe_cache_bytes() -> u64 {
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid out-pointer for sysinfo(2).
    let total = if unsafe { libc::sysinfo(&mut info) } == 0 {
        (info.totalram as u64).saturating_mul(u64::from(info.mem_unit))
    } else {
        0
    };
    (total / 16).min(4 << 30)
}

fn cores_or_all(cores: Option<usize>) -> usize {
    cores
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1)
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
    // Everything the server creates is private to its user, and clients get as many
    // descriptors as the hard limit allows.
    ostore_server::process::private_umask();
    let open_files = ostore_server::process::raise_open_files_limit();
    let r = match cli.cmd {
        Cmd::Dev {
            data,
            http,
            s3,
            s3_domain,
            drives,
            ec,
            cores,
            storing,
            serving,
            tls,
        } => {
            let cores = cores_or_all(cores);
            if drives == 0 {
                eprintln!("ostore: --drives must be at least 1");
                std::process::exit(2);
            }
            ostore_dataplane::node::run_dev(ostore_dataplane::node::DevOptions {
                data,
                http,
                s3: Some(s3),
                s3_domain,
                tls: tls.files(),
                drives,
                ec,
                cores,
                store: storing.options(cores),
                limits: serving.limits(cores, open_files),
            })
        }
        Cmd::Control {
            listen,
            meta,
            ec,
            down_grace,
            write_quorum,
            node_cert_lifetime,
            etcd_ca,
            etcd_cert,
            etcd_key,
            serving,
        } => {
            ostore_controlplane::server::run_control(ostore_controlplane::server::ControlOptions {
                listen,
                meta,
                ec,
                down_grace,
                write_quorum,
                // One executor serves the control-plane API.
                limits: serving.limits(1, open_files),
                node_cert_lifetime,
                etcd_tls: match (etcd_ca, etcd_cert, etcd_key) {
                    (Some(ca), Some(cert), Some(key)) => {
                        Some(ostore_controlplane::EtcdTls { ca, cert, key })
                    }
                    _ => None,
                },
            })
        }
        Cmd::Node {
            control,
            http,
            s3,
            s3_domain,
            peer,
            drives,
            join_token,
            zone,
            cores,
            storing,
            serving,
            tls,
        } => {
            let cores = cores_or_all(cores);
            ostore_dataplane::node::run_node(ostore_dataplane::node::NodeOptions {
                control,
                http,
                s3,
                s3_domain,
                tls: tls.files(),
                peer,
                drives,
                join_token,
                zone,
                cores,
                store: storing.options(cores),
                limits: serving.limits(cores, open_files),
            })
        }
    };
    if let Err(e) = r {
        eprintln!("ostore: {e:#}");
        std::process::exit(1);
    }
}

//! `osctl`: the ostore operations tool. Talks to a node's HTTP API with the root secret, over
//! HTTP/1.1 or HTTP/3, through `ostore-client`.

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "osctl", version, about = "Operate an ostore deployment")]
struct Cli {
    /// Node endpoint.
    #[arg(long, env = "OSTORE_ENDPOINT", default_value = "http://127.0.0.1:9080")]
    endpoint: String,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// File holding the root secret (else OSTORE_SECRET).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// http (HTTP/1.1) or h3 (HTTP/3 on the endpoint's port over UDP).
    #[arg(long, global = true, default_value = "http", value_parser = ["http", "h3"])]
    protocol: String,
    /// For https:// endpoints and h3: trust the certificate(s) in this PEM file (e.g.
    /// DIR/tls/cert.pem of `ostore dev`) instead of the system's roots.
    #[arg(long, global = true, env = "OSTORE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum NodesCmd {
    /// Make a single-use join token for one new node (`ostore node --join-token`). Made here,
    /// offline, from the operator's cluster key (OSTORE_CLUSTER_KEY or --cluster-key-file),
    /// which client credentials never are.
    Token {
        /// How long the token is valid: 30s, 10m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
        /// A file holding the cluster key (else OSTORE_CLUSTER_KEY).
        #[arg(long)]
        cluster_key_file: Option<PathBuf>,
    },
    /// Revoke every certificate a node (id or address) presented: within a second no other
    /// node and no control process accepts it. It must join again with a new token.
    Revoke { node: String },
}

/// A duration in seconds from `30s`, `10m`, `1h`, `2d` (or plain seconds).
fn parse_ttl(s: &str) -> Result<u64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("bad duration {s:?} (use s, m, h or d)")),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("{s:?} is not a usable lifetime")),
        Some(v) => Ok(v),
    }
}

/// The operator's cluster key, from `file` or OSTORE_CLUSTER_KEY (a trailing newline in the
/// file is not part of it).
fn cluster_key(file: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    let key = match file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        None => std::env::var("OSTORE_CLUSTER_KEY").unwrap_or_default(),
    };
    if key.len() < 32 {
        anyhow::bail!(
            "join tokens are made with the operator's cluster key (the one the control plane \
             runs with): set OSTORE_CLUSTER_KEY or give --cluster-key-file (32 characters or \
             more)"
        );
    }
    Ok(key.into_bytes())
}

#[derive(Subcommand)]
enum Cmd {
    /// Health, drives and capacity of the node.
    Status,
    /// Every version of a key, newest first.
    Versions {
        key: String,
        #[arg(long, default_value = "default")]
        bucket: String,
    },
    /// Cluster membership: every node, its state, zone, addresses and drives; or make a join
    /// token, or revoke a node's certificates.
    Nodes {
        #[command(subcommand)]
        cmd: Option<NodesCmd>,
    },
    /// Move every shard off a node (named by id or address) onto the others, keeping the
    /// placement rules; it then holds nothing and can be removed.
    Drain {
        node: String,
        /// Wait until the node holds no shard, showing progress.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 3).
        #[arg(long, default_value_t = 24 * 3600)]
        timeout: u64,
    },
    /// Stop draining a node: it takes new shards again (what moved stays moved).
    Undrain { node: String },
    /// Read and verify every shard (CRC32C of every block, each shard's header) and rebuild
    /// what is corrupt or missing.
    Scrub {
        /// Only the objects with a shard on this node (id or address).
        #[arg(long)]
        node: Option<String>,
        /// Wait for the pass to finish and report what it found (exit 4 if anything could not
        /// be repaired).
        #[arg(long)]
        wait: bool,
    },
    /// The continuous scrub: show each drive's schedule and progress, or change the schedule
    /// (cluster-wide, or for one drive with --drive).
    ScrubSchedule {
        /// Only this drive's schedule (else the cluster default).
        #[arg(long)]
        drive: Option<u16>,
        /// Read rate per drive, e.g. 32MiB (per second), or `off`.
        #[arg(long)]
        rate: Option<String>,
        /// Rest between passes, e.g. 1h, 10m, 0s.
        #[arg(long)]
        pause: Option<String>,
        /// Remove the setting (a drive then follows the default, the default the built-in one).
        #[arg(long, conflicts_with_all = ["rate", "pause"])]
        clear: bool,
    },
    /// Delete content no version refers to any more (past the servers' --gc-grace), on the
    /// drives of every node.
    Gc {
        /// Wait for the pass to finish and report what it removed.
        #[arg(long)]
        wait: bool,
    },
    /// Queue every object whose shards are missing, damaged or misplaced for repair.
    Repair {
        /// Wait until the repair queue is empty, showing progress.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 3).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// The rate each node's repairs (rebuilds, and the rewrites of scrubs) may read at: shown
    /// with what every node reads now, or set, e.g. `200MiB`, `unlimited`, `default`.
    RepairRate { rate: Option<String> },
    /// Versions kept per key (the cluster default, or one bucket's override); what falls out
    /// is removed by the next gc.
    Retention {
        #[command(subcommand)]
        action: RetentionCmd,
    },
    /// S3 access keys besides `root`.
    Keys {
        #[command(subcommand)]
        action: KeysCmd,
    },
    /// The client root secret.
    Secret {
        #[command(subcommand)]
        action: SecretCmd,
    },
}

#[derive(Subcommand)]
enum SecretCmd {
    /// Replace the root secret with a new random one, on every node within about a second and
    /// without a restart; the new secret is printed this once (and `ostore dev` writes it to
    /// its DIR/root.secret). Access keys keep their secrets.
    Rotate {
        /// How long the old secret stays valid, for clients still using it (0: not at all;
        /// at most 7d).
        #[arg(long, default_value = "0s")]
        grace: String,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// A new key; its secret is printed this once (it is derived, never stored, and unchanged
    /// by `osctl secret rotate`).
    Create {
        name: String,
        /// A bucket the key may use; repeat for more. Without any: every bucket.
        #[arg(long = "bucket")]
        buckets: Vec<String>,
        /// Reads and listings only.
        #[arg(long)]
        read_only: bool,
    },
    /// Every key (never their secrets).
    List,
    /// Revoke a key by its access key id or its name; requests signed with it fail at once.
    Revoke { key: String },
}

#[derive(Subcommand)]
enum RetentionCmd {
    /// Keep the newest N versions of every key (delete markers count as versions).
    Set {
        n: u32,
        /// Only this bucket (overrides the default).
        #[arg(long)]
        bucket: Option<String>,
    },
    /// Keep every version again.
    Clear {
        #[arg(long)]
        bucket: Option<String>,
    },
    /// Show the setting.
    Show {
        #[arg(long)]
        bucket: Option<String>,
    },
}

fn secret(cli: &Cli) -> anyhow::Result<String> {
    if let Some(f) = &cli.secret_file {
        return Ok(std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_string());
    }
    std::env::var("OSTORE_SECRET").context("no secret: set OSTORE_SECRET or pass --secret-file")
}

/// The client (made on first use) and the runtime it runs on.
static API: std::sync::OnceLock<(tokio::runtime::Runtime, ostore_client::Client)> =
    std::sync::OnceLock::new();

fn api(cli: &Cli) -> anyhow::Result<&'static (tokio::runtime::Runtime, ostore_client::Client)> {
    if let Some(a) = API.get() {
        return Ok(a);
    }
    let mut b = ostore_client::Client::builder(cli.endpoint.trim_end_matches('/'))
        .secret(secret(cli)?)
        .protocol(match cli.protocol.as_str() {
            "h3" => ostore_client::Protocol::Http3,
            _ => ostore_client::Protocol::Http1,
        });
    if let Some(ca) = &cli.tls_ca {
        b = b.tls_ca_file(ca)?;
    }
    let client = b.build()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(API.get_or_init(|| (rt, client)))
}

/// A successful answer's body.
struct Answer(bytes::Bytes);

impl Answer {
    fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.0).context("the answer is not the JSON expected")
    }

    fn text(&self) -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&self.0).into_owned())
    }
}

/// `method path` with the secret; its body, or an error naming the URL and what the server
/// said.
fn call(cli: &Cli, method: http::Method, path: &str) -> anyhow::Result<Answer> {
    let (rt, client) = api(cli)?;
    rt.block_on(send(
        client,
        cli.endpoint.trim_end_matches('/'),
        method,
        path,
    ))
}

/// `method path` through `client` (whose endpoint is `base`).
async fn send(
    client: &ostore_client::Client,
    base: &str,
    method: http::Method,
    path: &str,
) -> anyhow::Result<Answer> {
    let url = format!("{base}{path}");
    let r = client
        .request(method.clone(), path, Default::default(), Default::default())
        .await
        .with_context(|| format!("{method} {url}"))?
        .error_for_status()
        .await
        .with_context(|| url.clone())?;
    Ok(Answer(
        r.bytes().await.with_context(|| format!("{method} {url}"))?,
    ))
}

fn get(cli: &Cli, path: &str) -> anyhow::Result<Answer> {
    call(cli, http::Method::GET, path)
}

/// GET `path` from another node (`host:port`) with the same secret, over HTTP/1.1.
fn get_from(cli: &Cli, http_addr: &str, path: &str) -> anyhow::Result<Answer> {
    let (rt, _) = api(cli)?;
    // The other node speaks what the endpoint speaks (a cluster's nodes share a certificate
    // set-up).
    let scheme = if cli.endpoint.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    let base = format!("{scheme}://{http_addr}");
    let mut b = ostore_client::Client::builder(&base).secret(secret(cli)?);
    if let Some(ca) = &cli.tls_ca {
        b = b.tls_ca_file(ca)?;
    }
    let client = b.build()?;
    rt.block_on(send(&client, &base, http::Method::GET, path))
}

/// What every up node's repairs read now (bytes per second), by node id; this node's alone in
/// `ostore dev`. A node that does not answer is left out.
fn repair_rates(cli: &Cli, cluster: &serde_json::Value) -> Vec<(String, u64)> {
    let nodes = cluster["nodes"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for n in nodes.iter().filter(|n| n["state"] == "up") {
        let r = match n["http"].as_str() {
            Some(addr) => get_from(cli, addr, "/admin/repair-rate"),
            None => get(cli, "/admin/repair-rate"),
        };
        if let Ok(v) = r.and_then(|a| a.json::<serde_json::Value>()) {
            out.push((
                n["id"].as_str().unwrap_or("").to_string(),
                v["bytes_per_s"].as_u64().unwrap_or(0),
            ));
        }
    }
    out
}

/// A rate limit as the control plane gives it: a number or "unlimited".
fn limit_text(v: &serde_json::Value) -> String {
    match v.as_u64() {
        Some(r) => format!("{}/s", human(r as f64)),
        None => v.as_str().unwrap_or("?").to_string(),
    }
}

fn human_secs(s: u64) -> String {
    match s {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn post(cli: &Cli, path: &str) -> anyhow::Result<Answer> {
    call(cli, http::Method::POST, path)
}

/// A progress bar on stderr when it is a terminal (indicatif hides it otherwise), none with
/// `--json`.
fn progress(cli: &Cli, len: u64, what: &str) -> indicatif::ProgressBar {
    if cli.json {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Starts a maintenance pass (`POST path`), or with `wait` runs it to its end behind a spinner;
/// returns the server's answer.
fn maintenance(cli: &Cli, path: &str, wait: bool, what: &str) -> anyhow::Result<serde_json::Value> {
    if !wait {
        return post(cli, path)?.json();
    }
    let pb = spinner(cli, what);
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = post(cli, &format!("{path}{sep}wait=true")).and_then(|a| a.json());
    pb.finish_and_clear();
    r
}

/// A spinner while one long request runs.
fn spinner(cli: &Cli, what: &str) -> indicatif::ProgressBar {
    if cli.json {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(100));
    pb
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

/// Bytes in the largest binary unit that keeps the number at least 1.
fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn print_nodes(cluster: &serde_json::Value) {
    println!(
        "{:<6} {:<8} {:<10} {:<22} {:<22} {:>7} {:>12} {:>12}",
        "node", "state", "zone", "http", "peer", "drives", "capacity", "free"
    );
    for n in cluster["nodes"].as_array().into_iter().flatten() {
        let drives = n["drives"].as_array().cloned().unwrap_or_default();
        let cap: f64 = drives
            .iter()
            .filter_map(|d| d["capacity_bytes"].as_f64())
            .sum();
        let free: f64 = drives.iter().filter_map(|d| d["free_bytes"].as_f64()).sum();
        println!(
            "{:<6} {:<8} {:<10} {:<22} {:<22} {:>7} {:>12} {:>12}",
            n["id"].as_str().unwrap_or(""),
            n["drain"]
                .as_str()
                .unwrap_or(n["state"].as_str().unwrap_or("")),
            n["zone"].as_str().unwrap_or(""),
            n["http"].as_str().unwrap_or("-"),
            n["peer"].as_str().unwrap_or("-"),
            drives.len(),
            gib(cap),
            gib(free)
        );
    }
}

/// `32MiB`, `500MB`, `1GiB`, `1048576` (per second), or `off` (0).
fn parse_rate(s: &str) -> anyhow::Result<u64> {
    if s == "off" {
        return Ok(0);
    }
    let t = s.trim().trim_end_matches("/s");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().with_context(|| format!("bad rate {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => bail!("bad rate {s:?}: use e.g. 32MiB, 500MB or off"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("rate {s:?} is too large"))
}

/// `90s`, `10m`, `1h`, `2d`, `0`.
fn parse_duration_ms(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().with_context(|| format!("bad duration {s:?}"))?;
    let mult = match unit {
        "" | "s" => 1000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("bad duration {s:?}: use e.g. 90s, 10m, 1h"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("duration {s:?} is too long"))
}

fn rate_text(p: &serde_json::Value) -> String {
    match p["bytes_per_s"].as_u64() {
        Some(0) | None => "off".into(),
        Some(r) => format!("{:.0} MiB/s", r as f64 / (1 << 20) as f64),
    }
}

fn print_scrub(r: &serde_json::Value) {
    let d = &r["default_policy"];
    println!(
        "default: {} per drive, {:.0} s between passes",
        rate_text(d),
        d["pause_ms"].as_f64().unwrap_or(0.0) / 1000.0
    );
    println!(
        "{:<6} {:<6} {:>10} {:>7} {:>16} {:>14} {:>9}  last pass",
        "node", "drive", "rate", "passes", "this pass", "shards", "corrupt"
    );
    for x in r["drives"].as_array().into_iter().flatten() {
        let pass = match x["pass"]["shards"].as_u64() {
            Some(n) => format!("{n} checked"),
            None => "resting".into(),
        };
        let last = match &x["last_pass"] {
            serde_json::Value::Null => "-".to_string(),
            l => format!(
                "{} shards, {} corrupt, ended {}",
                l["shards"],
                l["corrupt_found"],
                l["ended"].as_str().unwrap_or("")
            ),
        };
        println!(
            "{:<6} {:<6} {:>10} {:>7} {:>16} {:>14} {:>9}  {last}",
            x["node"].as_str().unwrap_or(""),
            x["drive"].to_string(),
            rate_text(&x["policy"]),
            x["passes"].to_string(),
            pass,
            x["shards_on_drive"].to_string(),
            x["corrupt_found_total"].to_string()
        );
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("osctl: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Status => {
            let m = get(cli, "/metrics")?.text()?;
            let cluster: serde_json::Value = get(cli, "/admin/cluster")?.json()?;
            let st: serde_json::Value = get(cli, "/admin/status")?.json()?;
            let nodes = cluster["nodes"].as_array().cloned().unwrap_or_default();
            let up = nodes.iter().filter(|n| n["state"] == "up").count();
            let drives: Vec<&serde_json::Value> = nodes
                .iter()
                .flat_map(|n| n["drives"].as_array().into_iter().flatten())
                .collect();
            let cap: f64 = drives
                .iter()
                .filter_map(|d| d["capacity_bytes"].as_f64())
                .sum();
            let free: f64 = drives.iter().filter_map(|d| d["free_bytes"].as_f64()).sum();
            let healthy = drives.iter().filter(|d| d["refill"] == false).count();
            let repaired = metric(&m, "ostore_shards_repaired_total").unwrap_or(0.0);
            // Rebuild progress: bytes to go from the queue, bytes/s summed over the nodes.
            let rates = repair_rates(cli, &cluster);
            let rate: u64 = rates.iter().map(|r| r.1).sum();
            let to_go = st["repair"]["bytes_to_go"].as_u64().unwrap_or(0)
                + st["repair"]["move_bytes_to_go"].as_u64().unwrap_or(0);
            let eta_s = (rate > 0 && to_go > 0).then(|| to_go.div_ceil(rate));
            let mut repair = st["repair"].clone();
            repair["bytes_per_s"] = serde_json::json!(rate);
            repair["eta_s"] = serde_json::json!(eta_s);
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"endpoint": cli.endpoint, "mode": cluster["mode"],
                        "epoch": cluster["epoch"], "ec": cluster["ec"],
                        "nodes": cluster["nodes"], "nodes_up": up, "nodes_total": nodes.len(),
                        "drives": drives.len(), "drives_healthy": healthy,
                        "capacity_bytes": cap, "free_bytes": free,
                        "objects": st["objects"], "versions": st["versions"],
                        "contents": st["contents"], "logical_bytes": st["logical_bytes"],
                        "stored_bytes": st["stored_bytes"], "repair_queued": st["repair_queued"],
                        "degraded_objects": st["repair_queued"], "missing_shards": st["missing_shards"],
                        "shards_repaired": repaired, "repair": repair, "jobs": st["jobs"],
                        "shards_per_drive": st["drives"]})
                );
            } else {
                println!("endpoint        {}", cli.endpoint);
                println!(
                    "mode            {} (epoch {}, ec {}+{})",
                    cluster["mode"].as_str().unwrap_or(""),
                    cluster["epoch"],
                    cluster["ec"]["data"],
                    cluster["ec"]["parity"]
                );
                println!("nodes           {up}/{} up", nodes.len());
                println!("drives          {healthy}/{} healthy", drives.len());
                println!("capacity        {} ({} free)", gib(cap), gib(free));
                println!(
                    "objects         {} ({} versions, {} distinct contents)",
                    st["objects"], st["versions"], st["contents"]
                );
                let logical = st["logical_bytes"].as_f64().unwrap_or(0.0);
                let stored = st["stored_bytes"].as_f64().unwrap_or(0.0);
                println!(
                    "data            {} ({} stored before parity)",
                    human(logical),
                    human(stored)
                );
                println!(
                    "degraded        {} object(s) queued for repair, {} shard(s) on drives out of service",
                    st["repair_queued"], st["missing_shards"]
                );
                println!("shards repaired {repaired}");
                let more = if repair["more"] == true { "+" } else { "" };
                println!(
                    "rebuild         {}{more} to go at {}/s, ETA {} (limit {} per node)",
                    human(to_go as f64),
                    human(rate as f64),
                    match eta_s {
                        Some(s) => format!("{s} s"),
                        None if to_go == 0 => "-".into(),
                        None => "unknown (nothing read in the last 10 s)".into(),
                    },
                    limit_text(&repair["limit_bytes_per_s"])
                );
                let jobs = st["jobs"].as_array().cloned().unwrap_or_default();
                if jobs.is_empty() {
                    println!("jobs            none");
                }
                for (i, j) in jobs.iter().enumerate() {
                    let what = match j["kind"].as_str().unwrap_or("") {
                        "scrub" => format!(
                            "scrub of drive {} (node {}): {}/{} shards",
                            j["drive"],
                            j["node"].as_str().unwrap_or(""),
                            j["shards_done"],
                            j["shards_total"]
                        ),
                        "drain" => format!(
                            "drain of node {}: {}, {} of {} shards left",
                            j["node"].as_str().unwrap_or(""),
                            j["state"].as_str().unwrap_or(""),
                            j["shards_left"],
                            j["shards_at_start"]
                        ),
                        "repair" => format!("repair: {} object(s) queued", j["queued"]),
                        "move" => {
                            format!("moves (drain, rebalance): {} object(s) queued", j["queued"])
                        }
                        k => format!(
                            "{k} pass on node {} since {}",
                            j["node"].as_str().unwrap_or(""),
                            j["started"].as_str().unwrap_or("")
                        ),
                    };
                    println!("{:<16}{what}", if i == 0 { "jobs" } else { "" });
                }
                println!();
                print_nodes(&cluster);
            }
            Ok(())
        }
        Cmd::RepairRate { rate } => {
            let r: serde_json::Value = match rate.as_deref() {
                None => get(cli, "/admin/repair-rate")?.json()?,
                Some(s @ ("unlimited" | "default")) => {
                    post(cli, &format!("/admin/repair-rate?rate={s}"))?.json()?
                }
                Some(s) => {
                    let r = parse_rate(s)?;
                    if r == 0 {
                        bail!("a repair rate must be above 0 (or unlimited)");
                    }
                    post(cli, &format!("/admin/repair-rate?rate={r}"))?.json()?
                }
            };
            let cluster: serde_json::Value = get(cli, "/admin/cluster")?.json()?;
            let rates = repair_rates(cli, &cluster);
            let total: u64 = rates.iter().map(|r| r.1).sum();
            if cli.json {
                let nodes: Vec<_> = rates
                    .iter()
                    .map(|(n, b)| serde_json::json!({"node": n, "bytes_per_s": b}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"limit_bytes_per_s": r["limit_bytes_per_s"],
                        "bytes_per_s": total, "nodes": nodes})
                );
            } else {
                println!(
                    "repair rate     {} per node",
                    limit_text(&r["limit_bytes_per_s"])
                );
                println!("reading now     {}/s in all", human(total as f64));
                for (n, b) in &rates {
                    println!("  node {n:<10}{}/s", human(*b as f64));
                }
            }
            Ok(())
        }
        Cmd::Nodes {
            cmd:
                Some(NodesCmd::Token {
                    ttl,
                    cluster_key_file,
                }),
        } => {
            let key = cluster_key(cluster_key_file.as_ref())?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let expires = now.saturating_add(*ttl);
            let token = ostore_wire::join::Token::new(
                &ostore_wire::join::token_key(&key),
                expires,
                rand::random(),
            );
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"token": token.to_string(), "expires": expires})
                );
            } else {
                println!("{token}");
                eprintln!(
                    "valid once, for {}: ostore node --join-token <token> (or OSTORE_JOIN_TOKEN)",
                    human_secs(*ttl)
                );
            }
            Ok(())
        }
        Cmd::Nodes {
            cmd: Some(NodesCmd::Revoke { node }),
        } => {
            let q = form_urlencoded::byte_serialize(node.as_bytes()).collect::<String>();
            let r: serde_json::Value = post(cli, &format!("/admin/revoke?node={q}"))?.json()?;
            if cli.json {
                println!("{r}");
            } else {
                println!(
                    "node {}: {} certificate(s) revoked",
                    r["node"].as_str().unwrap_or(node),
                    r["certificates_revoked"]
                );
            }
            Ok(())
        }
        Cmd::Nodes { cmd: None } => {
            let cluster: serde_json::Value = get(cli, "/admin/cluster")?.json()?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"epoch": cluster["epoch"], "nodes": cluster["nodes"]})
                );
            } else {
                print_nodes(&cluster);
            }
            Ok(())
        }
        Cmd::Repair { wait, timeout } => {
            let started: serde_json::Value = post(cli, "/admin/repair")?.json()?;
            let queued = started["queued"].as_u64().unwrap_or(0);
            if !cli.json {
                println!("{queued} object(s) queued for repair");
            }
            let mut left = queued;
            if *wait {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(*timeout);
                let pb = progress(cli, queued, "repairing");
                loop {
                    let s: serde_json::Value = get(cli, "/admin/repair")?.json()?;
                    left = s["queued"].as_u64().unwrap_or(0);
                    // The queue can grow while it drains (reads that find damage add to it).
                    pb.set_length(pb.length().unwrap_or(0).max(left));
                    pb.set_position(pb.length().unwrap_or(0).saturating_sub(left));
                    if left == 0 {
                        pb.finish_and_clear();
                        break;
                    }
                    if std::time::Instant::now() > deadline {
                        pb.abandon();
                        if cli.json {
                            println!(
                                "{}",
                                serde_json::json!({"queued": queued, "remaining": left, "done": false})
                            );
                        } else {
                            eprintln!("osctl: {left} object(s) still queued after {timeout} s");
                        }
                        std::process::exit(3);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                if !cli.json {
                    eprintln!("repair done");
                }
            }
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"queued": queued, "remaining": left, "done": left == 0})
                );
            }
            Ok(())
        }
        Cmd::Versions { key, bucket } => {
            let (rt, client) = api(cli)?;
            let vs = rt
                .block_on(client.with_bucket(bucket.as_str()).versions(key))
                .with_context(|| format!("the versions of {key:?}"))?;
            let j = serde_json::to_value(&vs)?;
            if cli.json {
                println!("{j}");
            } else {
                println!(
                    "{:>8}  {:>12}  {:<24}  blake3",
                    "version", "size", "created"
                );
                for v in j["versions"].as_array().into_iter().flatten() {
                    let b = if v["delete_marker"].as_bool() == Some(true) {
                        "(delete marker)".to_string()
                    } else {
                        v["blake3"].as_str().unwrap_or("").to_string()
                    };
                    println!(
                        "{:>8}  {:>12}  {:<24}  {b}",
                        v["version"],
                        v["size"],
                        v["created"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        Cmd::Retention { action } => {
            let q = |bucket: &Option<String>| match bucket {
                Some(b) => format!("&bucket={b}"),
                None => String::new(),
            };
            let r: serde_json::Value = match action {
                RetentionCmd::Set { n, bucket } => {
                    if *n == 0 {
                        bail!("retention must keep at least 1 version");
                    }
                    post(cli, &format!("/admin/retention?keep={n}{}", q(bucket)))?.json()?
                }
                RetentionCmd::Clear { bucket } => {
                    post(cli, &format!("/admin/retention?keep=all{}", q(bucket)))?.json()?
                }
                RetentionCmd::Show { bucket } => {
                    let qs = q(bucket);
                    let path = match qs.strip_prefix('&') {
                        Some(rest) => format!("/admin/retention?{rest}"),
                        None => "/admin/retention".to_string(),
                    };
                    get(cli, &path)?.json()?
                }
            };
            if cli.json {
                println!("{r}");
            } else {
                let scope = r["bucket"]
                    .as_str()
                    .map_or("cluster default".to_string(), |b| format!("bucket {b}"));
                match r["keep"].as_u64() {
                    Some(n) => println!("{scope}: keep the newest {n} version(s) per key"),
                    None => println!("{scope}: keep every version"),
                }
            }
            Ok(())
        }
        Cmd::Keys { action } => {
            // Percent-encoded (a space as %20, for the path too).
            let enc = |s: &str| {
                form_urlencoded::byte_serialize(s.as_bytes())
                    .collect::<String>()
                    .replace('+', "%20")
            };
            let r: serde_json::Value = match action {
                KeysCmd::Create {
                    name,
                    buckets,
                    read_only,
                } => {
                    let mut path = format!("/admin/keys?name={}", enc(name));
                    if !buckets.is_empty() {
                        path.push_str(&format!("&buckets={}", enc(&buckets.join(","))));
                    }
                    if *read_only {
                        path.push_str("&read_only=true");
                    }
                    post(cli, &path)?.json()?
                }
                KeysCmd::List => get(cli, "/admin/keys")?.json()?,
                KeysCmd::Revoke { key } => call(
                    cli,
                    http::Method::DELETE,
                    &format!("/admin/keys/{}", enc(key)),
                )?
                .json()?,
            };
            if cli.json {
                println!("{r}");
                return Ok(());
            }
            let scope = |k: &serde_json::Value| {
                let buckets: Vec<&str> = k["buckets"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|b| b.as_str()).collect())
                    .unwrap_or_default();
                let on = if buckets.is_empty() {
                    "every bucket".to_string()
                } else {
                    format!("buckets {}", buckets.join(", "))
                };
                let how = if k["read_only"] == true {
                    "read-only"
                } else {
                    "read-write"
                };
                format!("{how}, {on}")
            };
            match action {
                KeysCmd::Create { .. } => {
                    println!("access key: {}", r["access_key"].as_str().unwrap_or(""));
                    println!("secret:     {}", r["secret"].as_str().unwrap_or(""));
                    println!("({}; the secret is not shown again)", scope(&r));
                }
                KeysCmd::List => {
                    for k in r["keys"].as_array().cloned().unwrap_or_default() {
                        println!(
                            "{:<26}  {:<20}  {}",
                            k["access_key"].as_str().unwrap_or(""),
                            k["name"].as_str().unwrap_or(""),
                            scope(&k)
                        );
                    }
                }
                KeysCmd::Revoke { key } => println!("revoked {key}"),
            }
            Ok(())
        }
        Cmd::Secret {
            action: SecretCmd::Rotate { grace },
        } => {
            let grace_ms = parse_duration_ms(grace)?;
            if grace_ms % 1000 != 0 {
                bail!("--grace is whole seconds (e.g. 90s, 10m, 1h), not {grace:?}");
            }
            // The rotation's id: a request sent again rotates once.
            let id = format!("{:032x}", rand::random::<u128>());
            let path = format!("/admin/secret/rotate?grace={}&id={id}", grace_ms / 1000);
            let r: serde_json::Value = post(cli, &path)?.json()?;
            if cli.json {
                println!("{r}");
                return Ok(());
            }
            println!("root secret: {}", r["secret"].as_str().unwrap_or(""));
            println!(
                "(version {}; the old secret is valid {} s more; the new one is not shown again)",
                r["version"], r["previous_valid_s"]
            );
            if let Some(f) = r["file"].as_str() {
                println!("the server wrote it to {f}");
            }
            Ok(())
        }
        Cmd::ScrubSchedule {
            drive,
            rate,
            pause,
            clear,
        } => {
            let r: serde_json::Value = if rate.is_none() && pause.is_none() && !clear {
                get(cli, "/admin/scrub")?.json()?
            } else {
                let mut q = Vec::new();
                if let Some(d) = drive {
                    q.push(format!("drive={d}"));
                }
                if *clear {
                    q.push("clear=true".into());
                }
                if let Some(r) = rate {
                    q.push(format!("rate={}", parse_rate(r)?));
                }
                if let Some(p) = pause {
                    q.push(format!("pause_ms={}", parse_duration_ms(p)?));
                }
                post(cli, &format!("/admin/scrub/schedule?{}", q.join("&")))?.json()?
            };
            if cli.json {
                println!("{r}");
            } else {
                print_scrub(&r);
            }
            Ok(())
        }
        Cmd::Scrub { node, wait } => {
            let path = match node {
                Some(n) => format!(
                    "/admin/scrub?node={}",
                    form_urlencoded::byte_serialize(n.as_bytes()).collect::<String>()
                ),
                None => "/admin/scrub".to_string(),
            };
            let r = maintenance(cli, &path, *wait, "scrubbing")?;
            if cli.json {
                println!("{r}");
            } else if *wait {
                println!(
                    "{} shard(s) of {} object(s) checked: {} corrupt or missing, {} repaired, {} unrepairable",
                    r["shards_checked"].as_u64().unwrap_or(0),
                    r["contents"].as_u64().unwrap_or(0),
                    r["corrupt_found"].as_u64().unwrap_or(0),
                    r["repaired"].as_u64().unwrap_or(0),
                    r["unrepairable"].as_u64().unwrap_or(0)
                );
            } else {
                println!("scrub started");
            }
            if r["unrepairable"].as_u64().unwrap_or(0) > 0 {
                std::process::exit(4);
            }
            Ok(())
        }
        Cmd::Gc { wait } => {
            let r = maintenance(cli, "/admin/gc", *wait, "collecting garbage")?;
            if cli.json {
                println!("{r}");
            } else if *wait {
                println!(
                    "{} old version(s) trimmed, {} unreferenced content(s) removed, {} freed",
                    r["versions_trimmed"].as_u64().unwrap_or(0),
                    r["collected"].as_u64().unwrap_or(0),
                    human(r["bytes_freed"].as_f64().unwrap_or(0.0))
                );
            } else {
                println!("garbage collection started");
            }
            Ok(())
        }
        Cmd::Drain {
            node,
            wait,
            timeout,
        } => {
            let q = form_urlencoded::byte_serialize(node.as_bytes()).collect::<String>();
            let mut p: serde_json::Value = post(cli, &format!("/admin/drain?node={q}"))?.json()?;
            let total = p["shards_at_start"].as_u64().unwrap_or(0);
            if !cli.json {
                eprintln!(
                    "draining node {}: {} shard(s) to move",
                    p["node"].as_str().unwrap_or(node),
                    p["shards"].as_u64().unwrap_or(0)
                );
            }
            if *wait {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(*timeout);
                let pb = progress(cli, total, "moving shards");
                while p["state"] != "drained" {
                    if p["state"] == "none" {
                        pb.abandon();
                        bail!("the drain of node {node} was stopped (osctl undrain)");
                    }
                    let left = p["shards"].as_u64().unwrap_or(0);
                    pb.set_length(pb.length().unwrap_or(0).max(left));
                    pb.set_position(pb.length().unwrap_or(0).saturating_sub(left));
                    if std::time::Instant::now() > deadline {
                        pb.abandon();
                        if cli.json {
                            println!("{p}");
                        } else {
                            eprintln!(
                                "osctl: {left} shard(s) still on node {node} after {timeout} s"
                            );
                        }
                        std::process::exit(3);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    p = get(cli, &format!("/admin/drain?node={q}"))?.json()?;
                }
                pb.finish_and_clear();
            }
            if cli.json {
                println!("{p}");
            } else {
                println!(
                    "node {}: {} ({} shard(s), {} write(s) in flight, {} upload(s) left on it)",
                    p["node"].as_str().unwrap_or(node),
                    p["state"].as_str().unwrap_or(""),
                    p["shards"],
                    p["intents"],
                    p["uploads"]
                );
            }
            Ok(())
        }
        Cmd::Undrain { node } => {
            let q = form_urlencoded::byte_serialize(node.as_bytes()).collect::<String>();
            let r: serde_json::Value = post(cli, &format!("/admin/undrain?node={q}"))?.json()?;
            if cli.json {
                println!("{r}");
            } else if r["was_draining"] == true {
                println!(
                    "node {}: no longer draining",
                    r["node"].as_str().unwrap_or(node)
                );
            } else {
                println!(
                    "node {}: was not draining",
                    r["node"].as_str().unwrap_or(node)
                );
            }
            Ok(())
        }
    }
}

//! `osctl`: the ostore operations tool. Talks to a node's HTTP API with the root secret.

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
    #[command(subcommand)]
    cmd: Cmd,
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
    /// Cluster membership (not available yet).
    Nodes,
    /// Move every shard off a node (not available yet).
    Drain { node: String },
    /// Stop draining a node (not available yet).
    Undrain { node: String },
    /// Verify every shard (not available yet).
    Scrub,
    /// Reclaim unreferenced content (not available yet).
    Gc,
    /// Rebuild missing shards (not available yet).
    Repair,
    /// Version retention (not available yet).
    Retention,
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

fn get(cli: &Cli, path: &str) -> anyhow::Result<reqwest::blocking::Response> {
    let url = format!("{}{}", cli.endpoint.trim_end_matches('/'), path);
    let r = reqwest::blocking::Client::new()
        .get(&url)
        .bearer_auth(secret(cli)?)
        .send()
        .with_context(|| format!("GET {url}"))?;
    if !r.status().is_success() {
        let status = r.status();
        let body = r.text().unwrap_or_default();
        bail!("{url}: {status}: {body}");
    }
    Ok(r)
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
            let drives = metric(&m, "ostore_drives").unwrap_or(0.0);
            let healthy = metric(&m, "ostore_drives_healthy").unwrap_or(0.0);
            let free = metric(&m, "ostore_drive_free_bytes").unwrap_or(0.0);
            let repaired = metric(&m, "ostore_shards_repaired_total").unwrap_or(0.0);
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"endpoint": cli.endpoint, "drives": drives, "drives_healthy": healthy,
                        "free_bytes": free, "shards_repaired": repaired})
                );
            } else {
                println!("endpoint        {}", cli.endpoint);
                println!("drives          {healthy}/{drives} healthy");
                println!("free            {:.1} GiB", free / (1u64 << 30) as f64);
                println!("shards repaired {repaired}");
            }
            Ok(())
        }
        Cmd::Versions { key, bucket } => {
            let j: serde_json::Value =
                get(cli, &format!("/versions/{key}?bucket={bucket}"))?.json()?;
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
        _ => {
            eprintln!(
                "osctl: this command needs the cluster control plane, which is not available yet"
            );
            std::process::exit(2);
        }
    }
}

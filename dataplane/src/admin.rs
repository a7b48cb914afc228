//! The operators' API under `/admin` (what `osctl` calls) and `/metrics`.

use crate::ctx::Node;
use crate::store::{self, StoreError};
use crate::time::rfc3339_ms;
use crate::web::ReqBody;
use crate::web::{bucket_of, err, json_response, query, ApiError, Resp, RespBody};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use ostore_control::cluster;
use ostore_control::meta::{Backlog, MetaError, Stats};
use ostore_control::records::{IntentRec, IntentState};
use ostore_control::rpc::ask;
use ostore_control::scrub::{Policies, ScrubCursor, ScrubPolicy, DEFAULT_POLICY};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Membership as `osctl status` and `osctl nodes` show it. `ostore dev` is one node.
pub(crate) async fn cluster(node: &Node) -> Result<Resp, ApiError> {
    node.refresh_view().await;
    let now = store::now_ms();
    let drive_json = |id: u16, path: &str, capacity: u64, free: u64, refill: bool| json!({"id": id, "path": path, "capacity_bytes": capacity, "free_bytes": free, "refill": refill});
    let body = match &node.cluster {
        None => {
            let drives: Vec<_> = node
                .drives
                .iter()
                .map(|d| {
                    drive_json(
                        d.id,
                        &d.root.display().to_string(),
                        crate::drives::total_bytes(&d.root).unwrap_or(0),
                        d.free_bytes.load(Ordering::Relaxed),
                        !d.healthy.load(Ordering::Relaxed),
                    )
                })
                .collect();
            json!({"mode": "dev", "epoch": 0, "ec": {"data": node.ec.data, "parity": node.ec.parity},
                "nodes": [{"id": node.node_id, "state": "up", "zone": "default", "http": null, "peer": null,
                    "heartbeat_age_ms": 0, "since": null, "drives": drives}]})
        }
        Some(c) => {
            // The view as the control plane has it now (refreshed above).
            let v = c.view();
            let nodes: Vec<_> = v
                .nodes
                .iter()
                .map(|n| {
                    let drives: Vec<_> = n
                        .drives
                        .iter()
                        .map(|d| drive_json(d.id, &d.path, d.capacity_bytes, d.free_bytes, d.refill))
                        .collect();
                    let drain = v.drains.iter().find(|(id, _)| *id == n.id).map(|(_, d)| {
                        if d.done_ms.is_some() { "drained" } else { "draining" }
                    });
                    json!({"id": n.id.to_string(), "state": if n.up { "up" } else { "down" }, "drain": drain, "zone": n.zone,
                        "http": n.http, "peer": n.peer, "heartbeat_age_ms": now.saturating_sub(n.heartbeat_ms),
                        "since": rfc3339_ms(n.since_ms), "drives": drives})
                })
                .collect();
            let rule = ostore_engine::placement::WriteRule::new(node.ec, v.write_quorum);
            json!({"mode": "cluster", "epoch": v.epoch, "ec": {"data": v.data, "parity": v.parity},
                "write_quorum": rule.nodes_needed(), "nodes": nodes})
        }
    };
    Ok(json_response(StatusCode::OK, body))
}

/// Queues for repair every object whose shards are not where placement wants them (in `ostore
/// dev`: every sharded object, so that all shards are verified and rebuilt where needed).
pub(crate) async fn repair_start(node: &Node) -> Result<Resp, ApiError> {
    let queued = node.meta.repair_scan().await?;
    node.wake_repair();
    Ok(json_response(StatusCode::OK, json!({"queued": queued})))
}

/// Versions kept per key: `?bucket=B` for a bucket's override (else the cluster default);
/// POST with `keep=N` sets it, `keep=all` removes it.
pub(crate) async fn retention(
    node: &Arc<Node>,
    req: &Request<ReqBody>,
    set: bool,
) -> Result<Resp, ApiError> {
    let q = query(req);
    let bucket = match q.get("bucket") {
        None => None,
        Some(_) => Some(bucket_of(&q)?),
    };
    if set {
        let keep = match q.get("keep").map(String::as_str) {
            Some("all") => None,
            Some(n) => Some(n.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                err(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgument",
                    "keep must be a positive number of versions, or all",
                )
            })?),
            None => {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgument",
                    "keep=N or keep=all is required",
                ))
            }
        };
        node.meta
            .ask(ask::SetRetention {
                bucket: bucket.clone(),
                keep,
            })
            .await?;
    }
    let keep: Option<u32> = node
        .meta
        .ask(ask::Retention {
            bucket: bucket.clone(),
        })
        .await?;
    Ok(json_response(
        StatusCode::OK,
        json!({"bucket": bucket, "keep": keep}),
    ))
}

/// S3 access keys besides `root` (never their secrets).
pub(crate) async fn keys_list(node: &Arc<Node>) -> Result<Resp, ApiError> {
    let keys = node.meta.ask(ask::KeyList {}).await?;
    let list: Vec<_> = keys
        .iter()
        .map(|(id, k)| {
            json!({"access_key": id, "name": k.name, "buckets": k.buckets,
                "read_only": k.read_only, "created": crate::time::rfc3339_ms(k.created_ms)})
        })
        .collect();
    Ok(json_response(StatusCode::OK, json!({ "keys": list })))
}

/// Creates an S3 access key: `name=N`, `buckets=A,B` (omitted: every bucket),
/// `read_only=true`. The answer carries its secret, which is shown this once: it is derived
/// from the key base (`web::Secrets`) and never stored.
pub(crate) async fn keys_create(
    front: &crate::web::Front,
    req: &Request<ReqBody>,
) -> Result<Resp, ApiError> {
    let q = query(req);
    let bad = |m: &str| err(StatusCode::BAD_REQUEST, "InvalidArgument", m.to_string());
    let name = q
        .get("name")
        .filter(|n| !n.is_empty() && n.len() <= 128)
        .ok_or_else(|| bad("name=NAME (1 to 128 bytes) is required"))?
        .clone();
    let buckets: Vec<String> = q
        .get("buckets")
        .map(|b| {
            b.split(',')
                .filter(|b| !b.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Some(b) = buckets
        .iter()
        .find(|b| !ostore_control::keys::valid_bucket(b))
    {
        return Err(bad(&format!("{b:?} is not a valid bucket name")));
    }
    let read_only = match q.get("read_only").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(bad("read_only is true or false")),
    };
    let id = ostore_s3::keys::new_id(rand::random());
    let rec = ostore_control::records::AccessKeyRec {
        name,
        salt: rand::random(),
        buckets,
        read_only,
        created_ms: crate::store::now_ms(),
    };
    front
        .node
        .meta
        .ask(ask::KeyCreate {
            id: id.clone(),
            rec: rec.clone(),
        })
        .await?;
    let secret = front.creds.derived_s3_secret(&id, &rec.salt);
    Ok(json_response(
        StatusCode::CREATED,
        json!({"access_key": id, "secret": secret, "name": rec.name, "buckets": rec.buckets,
            "read_only": rec.read_only}),
    ))
}

/// Revokes an S3 access key by its id or name: requests signed with it fail from now on.
pub(crate) async fn keys_revoke(node: &Arc<Node>, id_or_name: &str) -> Result<Resp, ApiError> {
    let id_or_name = percent_encoding::percent_decode_str(id_or_name)
        .decode_utf8_lossy()
        .into_owned();
    if node.meta.ask(ask::KeyRevoke { id_or_name }).await? {
        Ok(json_response(StatusCode::OK, json!({"revoked": true})))
    } else {
        Err(err(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "no access key has this id or name",
        ))
    }
}

/// Maintenance passes running in this process (started by `osctl`), for `osctl status`.
static RUNNING: std::sync::Mutex<Vec<(u64, &'static str, u64)>> = std::sync::Mutex::new(Vec::new());

/// A running pass, listed in [`RUNNING`] until dropped.
struct Job(u64);

impl Job {
    fn start(what: &'static str) -> Job {
        let id: u64 = rand::random();
        RUNNING
            .lock()
            .expect("jobs")
            .push((id, what, store::now_ms()));
        Job(id)
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        RUNNING.lock().expect("jobs").retain(|j| j.0 != self.0);
    }
}

/// Runs a maintenance pass over every content from this node: with `wait=true` it answers with
/// the pass's report, else it starts the pass and answers 202.
pub(crate) async fn maintenance<F, Fut>(
    node: &Arc<Node>,
    req: &Request<ReqBody>,
    what: &'static str,
    pass: F,
) -> Result<Resp, ApiError>
where
    F: FnOnce(Arc<Node>) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, StoreError>> + 'static,
{
    let wait = query(req)
        .get("wait")
        .is_some_and(|v| v == "true" || v == "1");
    let pass = pass(node.clone());
    let run = async move {
        let _job = Job::start(what);
        pass.await
    };
    if !wait {
        glommio::spawn_local(async move {
            if let Err(e) = run.await {
                tracing::warn!("{what}: {e}");
            }
        })
        .detach();
        return Ok(json_response(
            StatusCode::ACCEPTED,
            json!({"started": true}),
        ));
    }
    Ok(json_response(StatusCode::OK, run.await?))
}

/// Scrub: every shard read and verified, what is bad rebuilt.
/// With `?node=N`, only the objects with a shard on that node.
pub(crate) async fn scrub(node: &Arc<Node>, req: &Request<ReqBody>) -> Result<Resp, ApiError> {
    let only = match query(req).get("node") {
        None => None,
        Some(name) => Some(drives_of(node, name)?),
    };
    maintenance(node, req, "scrub", |n| async move {
        let r = match only {
            None => store::scrub_pass(&n, false).await?,
            Some(drives) => store::scrub_drives(&n, &drives).await?,
        };
        Ok(json!({"contents": r.contents, "shards_checked": r.shards_checked, "corrupt_found": r.corrupt_found, "repaired": r.repaired, "unrepairable": r.unrepairable, "done": true}))
    })
    .await
}

/// Every drive of the deployment: (node id, drive id, path).
fn all_drives(node: &Node) -> Vec<(String, u16, String)> {
    match &node.cluster {
        None => node
            .drives
            .iter()
            .map(|d| (node.node_id.clone(), d.id, d.root.display().to_string()))
            .collect(),
        Some(c) => c
            .view()
            .nodes
            .iter()
            .flat_map(|n| {
                n.drives
                    .iter()
                    .map(move |d| (n.id.to_string(), d.id, d.path.clone()))
            })
            .collect(),
    }
}

/// The drives of the node named `name` (its id, or in a cluster its HTTP or peer address).
fn drives_of(node: &Node, name: &str) -> Result<Vec<u16>, ApiError> {
    let id = match &node.cluster {
        None if name == node.node_id => name.to_string(),
        None => return Err(MetaError::NoSuchNode.into()),
        Some(c) => c
            .view()
            .nodes
            .iter()
            .find(|n| n.id.to_string() == name || n.http == name || n.peer == name)
            .map(|n| n.id.to_string())
            .ok_or(MetaError::NoSuchNode)?,
    };
    Ok(all_drives(node)
        .into_iter()
        .filter(|(n, _, _)| *n == id)
        .map(|(_, d, _)| d)
        .collect())
}

fn policy_json(p: &ScrubPolicy) -> serde_json::Value {
    json!({"bytes_per_s": p.bytes_per_s, "pause_ms": p.pause_ms, "enabled": p.bytes_per_s > 0})
}

fn pass_json(
    started_ms: u64,
    ended_ms: Option<u64>,
    shards: u64,
    bytes: u64,
    corrupt: u64,
) -> serde_json::Value {
    json!({"started": rfc3339_ms(started_ms), "ended": ended_ms.map(rfc3339_ms), "shards": shards,
        "bytes": bytes, "corrupt_found": corrupt})
}

/// The continuous scrub, drive by drive: schedule, the pass in progress, the last pass.
pub(crate) async fn scrub_status(node: &Node) -> Result<Resp, ApiError> {
    let drives = all_drives(node);
    let ids: Vec<u16> = drives.iter().map(|d| d.1).collect();
    let cursors: Vec<ScrubCursor> = node
        .meta
        .ask(ask::ScrubCursors {
            drives: ids.clone(),
        })
        .await?;
    let counts: Vec<i64> = node.meta.ask(ask::DriveShardCounts { drives: ids }).await?;
    let (default, overrides): Policies = node.meta.ask(ask::ScrubPolicies {}).await?;
    let base = default.unwrap_or(DEFAULT_POLICY);
    let mut out = Vec::new();
    for (((n, d, path), c), count) in drives.iter().zip(&cursors).zip(&counts) {
        let p = overrides
            .iter()
            .find(|(id, _)| id == d)
            .map_or(base, |(_, p)| *p);
        out.push(json!({
            "node": n, "drive": d, "path": path, "policy": policy_json(&p),
            "shards_on_drive": count, "passes": c.passes, "corrupt_found_total": c.corrupt_total,
            "pass": c.started_ms.map(|s| pass_json(s, None, c.shards, c.bytes, c.corrupt)),
            "last_pass": c.last.as_ref().map(|l| pass_json(l.started_ms, Some(l.ended_ms), l.shards, l.bytes, l.corrupt)),
        }));
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"default_policy": policy_json(&base), "drives": out}),
    ))
}

/// `POST /admin/scrub/schedule?rate=BYTES_PER_S&pause_ms=MS[&drive=D]`, or `clear=true` to
/// fall back to the default: the continuous scrub's schedule, cluster-wide or for one drive.
pub(crate) async fn scrub_schedule(node: &Node, req: &Request<ReqBody>) -> Result<Resp, ApiError> {
    let q = query(req);
    let bad = |m: &str| err(StatusCode::BAD_REQUEST, "InvalidArgument", m.to_string());
    let drive = match q.get("drive") {
        None => None,
        Some(d) => {
            let d: u16 = d.parse().map_err(|_| bad("drive must be a drive id"))?;
            if !all_drives(node).iter().any(|x| x.1 == d) {
                return Err(bad("no such drive"));
            }
            Some(d)
        }
    };
    let policy = if q.get("clear").is_some_and(|v| v == "true") {
        None
    } else {
        let current: ScrubPolicy = match drive {
            Some(d) => node.meta.ask(ask::ScrubPolicy { drive: d }).await?,
            None => node
                .meta
                .ask(ask::ScrubPolicies {})
                .await?
                .0
                .unwrap_or(DEFAULT_POLICY),
        };
        let num = |k: &str, dflt: u64| -> Result<u64, ApiError> {
            match q.get(k) {
                None => Ok(dflt),
                Some(v) => v.parse().map_err(|_| bad(&format!("{k} must be a number"))),
            }
        };
        Some(ScrubPolicy {
            bytes_per_s: num("rate", current.bytes_per_s)?,
            pause_ms: num("pause_ms", current.pause_ms)?,
        })
    };
    node.meta.ask(ask::SetScrubPolicy { drive, policy }).await?;
    scrub_status(node).await
}

/// Garbage collection: retention, then unreferenced content past its grace.
pub(crate) async fn gc(node: &Arc<Node>, req: &Request<ReqBody>) -> Result<Resp, ApiError> {
    maintenance(node, req, "gc", |n| async move {
        let r = store::gc_pass(&n, false).await?;
        // Then this node's drives are scanned for files nothing refers to.
        let o = crate::orphans::orphan_pass(&n, n.store.gc_grace).await?;
        Ok(json!({"versions_trimmed": r.versions_trimmed, "candidates": r.candidates, "collected": r.collected,
            "bytes_freed": r.bytes_freed + o.bytes, "orphans_removed": o.removed, "orphan_bytes_freed": o.bytes,
            "files_scanned": o.files, "files_unreadable": o.unreadable, "done": true}))
    })
    .await
}

/// A rate as JSON: a number of bytes per second, or "unlimited".
fn rate_json(r: u64) -> serde_json::Value {
    if r == u64::MAX {
        json!("unlimited")
    } else {
        json!(r)
    }
}

/// The rate each node's repairs may read at (`osctl repair-rate`): shown, or set with
/// `?rate=BYTES_PER_S`, `?rate=unlimited` or `?rate=default`; with what this node's repairs
/// read over the last seconds.
pub(crate) async fn repair_rate(
    node: &Node,
    req: &Request<ReqBody>,
    set: bool,
) -> Result<Resp, ApiError> {
    if set {
        let q = query(req);
        let bad = |m: &str| err(StatusCode::BAD_REQUEST, "InvalidArgument", m.to_string());
        let rate =
            match q.get("rate").map(|s| s.as_str()) {
                None => {
                    return Err(bad(
                        "rate is required: bytes per second, unlimited or default",
                    ))
                }
                Some("default") => None,
                Some("unlimited") => Some(u64::MAX),
                Some(v) => match v.parse::<u64>() {
                    Ok(r) if r > 0 => Some(r),
                    _ => return Err(bad(
                        "rate must be a positive number of bytes per second, unlimited or default",
                    )),
                },
            };
        node.meta
            .ask(ask::SetRepairRate { bytes_per_s: rate })
            .await?;
    }
    let limit: u64 = node.meta.ask(ask::RepairRate {}).await?;
    node.repair_pace.limit.store(limit, Ordering::Relaxed);
    Ok(json_response(
        StatusCode::OK,
        json!({"limit_bytes_per_s": rate_json(limit), "node": node.node_id,
            "bytes_per_s": node.repair_pace.bytes_per_s()}),
    ))
}

/// How many objects wait for repair (counted up to 100 000).
pub(crate) async fn repair_status(node: &Node) -> Result<Resp, ApiError> {
    let q: Vec<([u8; 32], u64)> = node
        .meta
        .ask(ask::WorkQueue {
            moves: false,
            from: [0; 32],
            limit: 100_000,
        })
        .await?;
    Ok(json_response(
        StatusCode::OK,
        json!({"queued": q.len(), "shards_repaired": node.metrics.shards_repaired.load(Ordering::Relaxed)}),
    ))
}

pub(crate) async fn metrics(node: &Node) -> Resp {
    let mut free = 0u64;
    let mut healthy = 0u64;
    for d in &node.drives {
        free += d.free_bytes.load(Ordering::Relaxed);
        healthy += d.healthy.load(Ordering::Relaxed) as u64;
    }
    let mut text = node.metrics.render(&[
        (
            "ostore_drives",
            "Drives of this node.",
            node.drives.len() as f64,
        ),
        (
            "ostore_drives_healthy",
            "Drives in service.",
            healthy as f64,
        ),
        (
            "ostore_drive_free_bytes",
            "Free bytes summed over drives.",
            free as f64,
        ),
    ]);
    text.push_str(&drive_metrics(node).await);
    text.push_str(&stripe_cache_metrics(node));
    let mut r = Response::new(RespBody::Full(Some(Bytes::from(text))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// The stripe caches of this node's executors, together.
fn stripe_cache_metrics(node: &Node) -> String {
    use crate::stripecache::{ADMITTED, BYTES, HITS, MISSES, TREE_HITS, TREE_MISSES};
    let executors = node.store.stripe_cache_bytes;
    let mut o = String::new();
    for (name, help, kind, v) in [
        (
            "ostore_stripe_cache_bytes",
            "Bytes of decoded stripes held in memory for client GETs.",
            "gauge",
            BYTES.load(Ordering::Relaxed),
        ),
        (
            "ostore_stripe_cache_executor_budget_bytes",
            "The most each executor's stripe cache holds (--stripe-cache over the executors).",
            "gauge",
            executors,
        ),
        (
            "ostore_stripe_cache_hits_total",
            "Stripes a client GET was served from memory.",
            "counter",
            HITS.load(Ordering::Relaxed),
        ),
        (
            "ostore_stripe_cache_misses_total",
            "Stripes a client GET looked up in memory and read from the drives.",
            "counter",
            MISSES.load(Ordering::Relaxed),
        ),
        (
            "ostore_stripe_cache_admitted_total",
            "Stripes admitted to memory (asked for often enough lately).",
            "counter",
            ADMITTED.load(Ordering::Relaxed),
        ),
        (
            "ostore_tree_cache_hits_total",
            "Runs of verified BLAKE3 tree entries a verified read found in memory.",
            "counter",
            TREE_HITS.load(Ordering::Relaxed),
        ),
        (
            "ostore_tree_cache_misses_total",
            "Runs of BLAKE3 tree entries a verified read had to read from the shard files.",
            "counter",
            TREE_MISSES.load(Ordering::Relaxed),
        ),
    ] {
        o.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    }
    o
}

/// A gauge family: name, help, and a value per drive.
type Family = (&'static str, &'static str, Vec<(u16, f64)>);

/// Per-drive gauges of this node's drives: health, space, shards held, and the continuous
/// scrub's progress (from the metadata; left out if it cannot be read now).
async fn drive_metrics(node: &Node) -> String {
    use std::fmt::Write as _;
    let ids: Vec<u16> = node.drives.iter().map(|d| d.id).collect();
    let cursors = node
        .meta
        .ask(ask::ScrubCursors {
            drives: ids.clone(),
        })
        .await;
    let counts = node.meta.ask(ask::DriveShardCounts { drives: ids }).await;
    let mut families: Vec<Family> = vec![
        (
            "ostore_drive_healthy",
            "1 while the drive is in service.",
            vec![],
        ),
        (
            "ostore_drive_available_bytes",
            "Free bytes of the drive.",
            vec![],
        ),
        (
            "ostore_drive_capacity_bytes",
            "Size of the drive's filesystem.",
            vec![],
        ),
    ];
    for d in &node.drives {
        families[0]
            .2
            .push((d.id, d.healthy.load(Ordering::Relaxed) as u8 as f64));
        families[1]
            .2
            .push((d.id, d.free_bytes.load(Ordering::Relaxed) as f64));
        families[2].2.push((
            d.id,
            crate::drives::total_bytes(&d.root).unwrap_or(0) as f64,
        ));
    }
    if let (Ok(cursors), Ok(counts)) = (cursors, counts) {
        let mut shards = vec![];
        let mut done = vec![];
        let mut ratio = vec![];
        let mut passes = vec![];
        let mut last_end = vec![];
        for ((d, c), n) in node.drives.iter().zip(&cursors).zip(&counts) {
            shards.push((d.id, *n as f64));
            done.push((d.id, c.shards as f64));
            let r = match c.started_ms {
                Some(_) if *n > 0 => (c.shards as f64 / *n as f64).min(1.0),
                _ => 1.0,
            };
            ratio.push((d.id, r));
            passes.push((d.id, c.passes as f64));
            if let Some(l) = &c.last {
                last_end.push((d.id, l.ended_ms as f64 / 1000.0));
            }
        }
        families.push(("ostore_drive_shards", "Shards the drive holds.", shards));
        families.push((
            "ostore_scrub_pass_shards",
            "Shards checked so far by the scrub pass in progress.",
            done,
        ));
        families.push((
            "ostore_scrub_pass_progress_ratio",
            "Part of the drive the scrub pass in progress has checked (1 between passes).",
            ratio,
        ));
        families.push((
            "ostore_scrub_passes",
            "Scrub passes completed over the drive.",
            passes,
        ));
        families.push((
            "ostore_scrub_last_pass_end_seconds",
            "When the last complete scrub pass over the drive ended (Unix time).",
            last_end,
        ));
    }
    let mut o = String::new();
    for (name, help, values) in families {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (d, v) in values {
            let _ = writeln!(o, "{name}{{drive=\"{d}\"}} {v}");
        }
    }
    o
}

/// The node `?node=` names: its id, or its HTTP or peer address.
fn named_node(node: &Node, req: &Request<ReqBody>) -> Result<u32, ApiError> {
    let Some(c) = &node.cluster else {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "draining moves shards between nodes: this is a single-node `ostore dev`",
        ));
    };
    let q = query(req);
    let name = q.get("node").ok_or_else(|| {
        err(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "name the node: ?node=ID or its address",
        )
    })?;
    let view = c.view();
    view.nodes
        .iter()
        .find(|n| n.id.to_string() == *name || n.http == *name || n.peer == *name)
        .map(|n| n.id)
        .ok_or_else(|| MetaError::NoSuchNode.into())
}

fn drain_json(p: &cluster::DrainProgress) -> serde_json::Value {
    let state = match &p.drain {
        None => "none",
        Some(d) if d.done_ms.is_some() => "drained",
        Some(_) => "draining",
    };
    json!({
        "node": p.node.to_string(),
        "state": state,
        "shards": p.shards,
        "intents": p.intents,
        "uploads": p.uploads,
        "shards_at_start": p.drain.as_ref().map(|d| d.shards_at_start),
        "started": p.drain.as_ref().map(|d| rfc3339_ms(d.started_ms)),
        "done": p.drain.as_ref().and_then(|d| d.done_ms).map(rfc3339_ms),
    })
}

/// `POST /admin/drain?node=N` starts draining a node (idempotent); `GET` shows how far it is.
pub(crate) async fn drain(
    node: &Node,
    req: &Request<ReqBody>,
    start: bool,
) -> Result<Resp, ApiError> {
    let id = named_node(node, req)?;
    let mut p: cluster::DrainProgress = node
        .meta
        .ask(ask::DrainProgress {
            node: id,
            exact: false,
        })
        .await?;
    if start && p.drain.is_none() {
        // The control plane refuses (409) a drain that would leave too little in service to
        // hold every object (`placement::can_hold`).
        let d: cluster::DrainRec = node
            .meta
            .ask(ask::DrainStart {
                node: id,
                shards_at_start: p.shards,
            })
            .await?;
        tracing::info!("draining node {id}: {} shard(s) to move", d.shards_at_start);
        p.drain = Some(d);
        node.refresh_view().await;
    }
    Ok(json_response(StatusCode::OK, drain_json(&p)))
}

/// `POST /admin/undrain?node=N`: the node takes shards again (what moved stays moved).
pub(crate) async fn undrain(node: &Node, req: &Request<ReqBody>) -> Result<Resp, ApiError> {
    let id = named_node(node, req)?;
    let was: bool = node.meta.ask(ask::DrainStop { node: id }).await?;
    node.refresh_view().await;
    Ok(json_response(
        StatusCode::OK,
        json!({"node": id.to_string(), "was_draining": was}),
    ))
}

/// `POST /admin/revoke?node=N`: revokes every certificate the node presented; within a second
/// no peer, and no control process, accepts it (it must join again with a new token).
pub(crate) async fn revoke(node: &Node, req: &Request<ReqBody>) -> Result<Resp, ApiError> {
    let id = named_node(node, req)?;
    let n: u32 = node.meta.ask(ask::RevokeNode { node: id }).await?;
    tracing::warn!("node {id}: {n} certificate(s) revoked");
    node.refresh_view().await;
    Ok(json_response(
        StatusCode::OK,
        json!({"node": id.to_string(), "certificates_revoked": n}),
    ))
}

/// What `osctl status` shows beyond membership: the cluster-wide counters, degraded and missing
/// shards, and the jobs running (drains, the repair queue, scrub passes in progress, passes
/// started on this node).
pub(crate) async fn status(node: &Node) -> Result<Resp, ApiError> {
    node.refresh_view().await;
    let stats: Stats = node.meta.ask(ask::Stats {}).await?;
    let (repairs, move_backlog): (Backlog, Backlog) =
        node.meta.ask(ask::Backlog { limit: 100_000 }).await?;
    let queued = repairs.contents as usize;
    let drives = all_drives(node);
    let ids: Vec<u16> = drives.iter().map(|d| d.1).collect();
    let counts: Vec<i64> = node
        .meta
        .ask(ask::DriveShardCounts {
            drives: ids.clone(),
        })
        .await?;
    let cursors: Vec<ScrubCursor> = node.meta.ask(ask::ScrubCursors { drives: ids }).await?;
    // Shards on drives out of service: a node down, a drive replaced or failed.
    let view = node.cluster.as_ref().map(|c| c.view());
    let out_of_service = |drive: u16| match &view {
        None => node
            .local_drive(drive)
            .is_some_and(|d| !d.healthy.load(Ordering::Relaxed)),
        Some(v) => v.nodes.iter().any(|n| {
            n.drives
                .iter()
                .any(|d| d.id == drive && (!n.up || d.refill))
        }),
    };
    let mut missing = 0;
    let mut per_drive = Vec::new();
    let mut jobs = Vec::new();
    for (((n, d, _), count), c) in drives.iter().zip(&counts).zip(&cursors) {
        if out_of_service(*d) {
            missing += count;
        }
        per_drive.push(
            json!({"node": n, "drive": d, "shards": count, "in_service": !out_of_service(*d)}),
        );
        if let Some(started) = c.started_ms {
            jobs.push(json!({"kind": "scrub", "node": n, "drive": d, "started": rfc3339_ms(started),
                "shards_done": c.shards, "shards_total": count, "bytes_done": c.bytes, "corrupt_found": c.corrupt}));
        }
    }
    if let Some(v) = &view {
        for (id, dr) in &v.drains {
            let left: i64 = v
                .nodes
                .iter()
                .filter(|n| n.id == *id)
                .flat_map(|n| n.drives.iter())
                .filter_map(|d| drives.iter().position(|x| x.1 == d.id).map(|i| counts[i]))
                .sum();
            jobs.push(json!({"kind": "drain", "node": id.to_string(),
                "state": if dr.done_ms.is_some() { "drained" } else { "draining" },
                "started": rfc3339_ms(dr.started_ms), "shards_left": left, "shards_at_start": dr.shards_at_start}));
        }
    }
    if queued > 0 {
        jobs.push(json!({"kind": "repair", "queued": queued}));
    }
    let moves = move_backlog.contents;
    if moves > 0 {
        jobs.push(json!({"kind": "move", "queued": moves}));
    }
    for (_, what, started) in RUNNING.lock().expect("jobs").iter() {
        jobs.push(json!({"kind": what, "node": node.node_id, "started": rfc3339_ms(*started)}));
    }
    // Writes in flight, and what failed writes left to delete.
    let intents: Vec<(u64, IntentRec)> = node.meta.ask(ask::Intents {}).await?;
    let abandoned = intents
        .iter()
        .filter(|(_, r)| r.state == IntentState::Abandoned)
        .count();
    Ok(json_response(
        StatusCode::OK,
        json!({"objects": stats.objects, "versions": stats.versions, "contents": stats.contents,
            "logical_bytes": stats.content_bytes, "stored_bytes": stats.stored_bytes,
            "repair_queued": queued, "missing_shards": missing,
            "repair": {"queued": repairs.contents, "bytes_to_go": repairs.bytes, "more": repairs.more,
                "moves_queued": move_backlog.contents, "move_bytes_to_go": move_backlog.bytes,
                "limit_bytes_per_s": rate_json(node.repair_pace.limit.load(Ordering::Relaxed)),
                "node_bytes_per_s": node.repair_pace.bytes_per_s()},
            "intents": {"open": intents.len(), "abandoned": abandoned},
            "drives": per_drive, "jobs": jobs}),
    ))
}

/// The longest a replaced root secret stays valid.
const SECRET_GRACE_MAX_S: u64 = 7 * 24 * 3600;

/// Rotates the client root secret (`grace=SECONDS`: how long the replaced one stays valid, 0
/// by default, at most 7 days). In a cluster the control plane makes the new secret and every
/// node follows within about a second; `ostore dev` rewrites `DIR/root.secret`. Access keys
/// keep their secrets (they derive from the key base, which never rotates). The answer carries
/// the new secret: it is shown this once.
pub(crate) async fn secret_rotate(
    front: &crate::web::Front,
    req: &Request<ReqBody>,
) -> Result<Resp, ApiError> {
    let bad = |m: String| err(StatusCode::BAD_REQUEST, "InvalidArgument", m);
    let grace_s = match query(req).get("grace") {
        None => 0,
        Some(g) => g
            .parse::<u64>()
            .ok()
            .filter(|g| *g <= SECRET_GRACE_MAX_S)
            .ok_or_else(|| {
                bad(format!(
                    "grace is whole seconds, at most {SECRET_GRACE_MAX_S}"
                ))
            })?,
    };
    let grace = std::time::Duration::from_secs(grace_s);
    // The rotation's id (osctl sends one): the same id again rotates nothing more.
    let id = match query(req).get("id") {
        None => rand::random(),
        Some(h) => hex::decode(h)
            .ok()
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .ok_or_else(|| bad("id is 16 bytes in hex".into()))?,
    };
    let creds = &front.creds;
    let now = std::time::Instant::now();
    // `ostore dev`: one rotation at a time, so the file and what the front ends hold agree.
    static DEV_ROTATION: std::sync::Mutex<Option<([u8; 16], u64, String)>> =
        std::sync::Mutex::new(None);
    let mut dev_guard = None;
    let fresh = if let ostore_controlplane::client::MetaClient::Remote(remote) = &front.node.meta {
        let s = remote.rotate_secret(id, grace).await?;
        crate::web::cluster_secrets(s)
    } else {
        let Some(file) = &creds.file else {
            return Err(err(
                StatusCode::CONFLICT,
                "SecretFromEnvironment",
                "this server's root secret comes from OSTORE_SECRET: change it there (and \
                 restart), or start without it to keep the secret in DIR/root.secret, which a \
                 rotation rewrites",
            ));
        };
        let mut last = DEV_ROTATION.lock().unwrap_or_else(|p| p.into_inner());
        let old = creds.secrets();
        if let Some((done, version, secret)) = last.as_ref() {
            if *done == id {
                return Ok(rotated(*version, secret, grace_s, creds));
            }
        }
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let write = |path: &std::path::Path, s: &str| {
            crate::web::write_secret_file(path, s).map_err(|e| {
                err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    format!("writing {}: {e}", path.display()),
                )
            })
        };
        // Access keys were derived from the first root secret: it is kept as their base
        // before the root secret file changes, so a crash in between loses neither.
        let dir = file.parent().unwrap_or(std::path::Path::new("."));
        let base = dir.join(crate::web::KEY_BASE_FILE);
        if !base.exists() {
            write(&base, &old.key_base)?;
        }
        write(file, &secret)?;
        // The same rule as in a cluster (`trust::rotate_secret`).
        let previous = ostore_control::trust::carry_over(
            old.previous.iter().cloned(),
            old.current.clone(),
            now + grace,
            now,
        );
        *last = Some((id, old.version + 1, secret.clone()));
        dev_guard = Some(last);
        crate::web::Secrets {
            version: old.version + 1,
            current: secret,
            previous,
            key_base: old.key_base.clone(),
        }
    };
    let (version, secret) = (fresh.version, fresh.current.clone());
    creds.set(fresh);
    drop(dev_guard);
    tracing::warn!(
        "the root secret was rotated (version {version}; the old one valid {grace_s} s more)"
    );
    Ok(rotated(version, &secret, grace_s, creds))
}

/// The answer to a rotation: the new secret (shown this once).
fn rotated(version: u64, secret: &str, grace_s: u64, creds: &crate::web::Credentials) -> Resp {
    json_response(
        StatusCode::OK,
        json!({"version": version, "secret": secret, "previous_valid_s": grace_s,
            "file": creds.file.as_ref().map(|f| f.display().to_string())}),
    )
}

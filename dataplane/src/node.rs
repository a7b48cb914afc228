//! A data node: its drives, its executors (one per core, pinned), its listeners, and the
//! background work (repair, drive watch) that runs on executor 0.

use crate::ctx::{repair_share, sleep_unless_stopping, unrepairable};
use crate::ctx::{Node, StoreOptions};
use crate::drives::{Drive, DriveState};
use crate::store::{self, StoreError};
use anyhow::Context as _;
use glommio::{LocalExecutorBuilder, Placement};
use ostore_control::cluster::{ClusterView, DriveReport, NodeRec, Registration};
use ostore_control::records::{DriveRec, IntentRec, IntentState};
use ostore_control::redb_kv::RedbKv;
use ostore_control::rpc::ask;
use ostore_control::service::Meta;
use ostore_controlplane::client::MetaClient;
use ostore_engine::lifecycle::{Sweep, SweepAction, SweepEvent, SweepSeen};
use ostore_engine::EcParams;
use ostore_server::metrics::Metrics;
use ostore_server::process::{print_ready, stop_signals, wait_for_signal_then_stop};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Options of `ostore dev`.
pub struct DevOptions {
    pub data: PathBuf,
    pub http: SocketAddr,
    /// The S3 API's address (`None`: not served).
    pub s3: Option<SocketAddr>,
    /// The domain under which S3 is also served virtual-hosted style (`BUCKET.DOMAIN`).
    pub s3_domain: Option<String>,
    /// HTTP/3's certificate; without one, a self-signed one under `DIR/tls`.
    pub tls: crate::http3::TlsFiles,
    pub drives: u16,
    pub ec: EcParams,
    pub cores: usize,
    pub store: StoreOptions,
    pub limits: ostore_server::conn::Limits,
}

/// `ostore dev`'s client secrets: the root secret from `OSTORE_SECRET`, else from
/// `DIR/root.secret` (made on first start); the access-key base from
/// `DIR/access-keys.secret` once a rotation wrote it there, else the root secret. Also where
/// the root secret is kept, if in a file.
fn load_secrets(data: &Path) -> anyhow::Result<(crate::web::Secrets, Option<PathBuf>)> {
    // Only a file that is not there is made (or, for the key base, means "the root secret"):
    // one that cannot be read is an error, never replaced.
    let read = |path: &Path| match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Ok(_) => anyhow::bail!("{} is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    };
    let (current, file) = match std::env::var("OSTORE_SECRET") {
        Ok(s) if !s.is_empty() => (s, None),
        _ => {
            let path = data.join("root.secret");
            match read(&path)? {
                Some(s) => (s, Some(path)),
                None => {
                    let secret = hex::encode(rand::random::<[u8; 32]>());
                    crate::web::write_secret_file(&path, &secret)
                        .with_context(|| format!("writing {}", path.display()))?;
                    (secret, Some(path))
                }
            }
        }
    };
    let key_base = read(&data.join(crate::web::KEY_BASE_FILE))?.unwrap_or_else(|| current.clone());
    Ok((
        crate::web::Secrets {
            version: 0,
            current,
            previous: Vec::new(),
            key_base,
        },
        file,
    ))
}

/// Removes what interrupted writes left behind: every intent still open at start-up, whose
/// writers were all this process's earlier lives (`ostore dev` is the only writer).
async fn clean_intents(node: &Node) -> anyhow::Result<()> {
    let intents: Vec<(u64, IntentRec)> = node.meta.ask(ask::Intents {}).await?;
    let now = store::now_ms();
    for (id, rec) in intents {
        let seen = ostore_control::meta::sweep_seen(&rec, now, true);
        // What is kept (a file that cannot be deleted now) the sweeper tries again.
        sweep_intent(node, id, rec, seen).await;
    }
    Ok(())
}

/// Carries out `lifecycle::Sweep` for intent `id`, as `rec` shows it: fences and reads it back
/// where its writer is taken as gone, deletes the files it lists (as read back) or only ends
/// it, or leaves it for a later sweep.
async fn sweep_intent(node: &Node, id: u64, mut rec: IntentRec, seen: SweepSeen) {
    let (mut sweep, mut todo) = Sweep::start(seen);
    while let Some(action) = todo.pop() {
        let event = match action {
            SweepAction::Fence => match node.meta.ask(ask::AbandonIntent { id }).await {
                Ok(()) => SweepEvent::Fenced { ok: true },
                Err(e) => {
                    tracing::warn!("abandoning intent {id:016x}: {e}");
                    SweepEvent::Fenced { ok: false }
                }
            },
            SweepAction::ReadIntent => match node.meta.ask(ask::Intent { id }).await {
                Ok(back) => {
                    let fate =
                        ostore_control::meta::intent_fate(back.as_ref().map(|b| b.state.clone()));
                    if let Some(back) = back {
                        rec = back;
                    }
                    SweepEvent::Read(Some(fate))
                }
                Err(e) => {
                    tracing::warn!("reading intent {id:016x}: {e}");
                    SweepEvent::Read(None)
                }
            },
            SweepAction::RemoveListed => {
                if store::remove_files(node, &rec.shards).await {
                    end_intent(node, id).await;
                }
                continue;
            }
            SweepAction::EndIntent => {
                end_intent(node, id).await;
                continue;
            }
            SweepAction::Leave => continue,
        };
        todo.extend(sweep.on(event));
    }
}

async fn end_intent(node: &Node, id: u64) {
    if let Err(e) = node.meta.ask(ask::EndIntent { id }).await {
        tracing::warn!("ending intent {id:016x}: {e}");
    }
}

/// Checks one drive against the metadata; a drive found empty is formatted and its shards are
/// queued for repair. Returns whether it was refilled.
async fn check_drive(node: &Node, d: &Drive) -> anyhow::Result<bool> {
    let recorded: Option<DriveRec> = node.meta.ask(ask::Drive { id: d.id }).await?;
    let (state, rec) = d
        .check(recorded.as_ref())
        .with_context(|| format!("preparing drive {}", d.root.display()))?;
    if let Some(rec) = rec {
        node.meta.ask(ask::SetDrive { id: d.id, rec }).await?;
    }
    if state == (DriveState::Formatted { was_known: true }) {
        tracing::warn!(
            "drive {} was found empty: refilling it from the other shards",
            d.root.display()
        );
        node.meta.queue_drive_for_repair(d.id).await?;
        node.wake_repair();
        return Ok(true);
    }
    Ok(false)
}

/// Rebuilds queued contents, then moves queued shards, one content at a time, until the node
/// stops. In a cluster the nodes split both queues by content hash.
async fn repair_worker(node: Arc<Node>) {
    loop {
        let round = work_repairs(&node).await;
        if node.stopping.load(Ordering::Relaxed) {
            return;
        }
        // A batch of moves at a time, then the repair queue again: moves never hold up repairs.
        if work_moves(&node).await || round == Round::More {
            continue;
        }
        let retry_later = round == Round::RetryLater;
        // Drain wake-ups; the durable queues are the source of truth.
        while node.repair_rx.try_recv().is_ok() {}
        let wait = if retry_later {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        };
        futures_lite::future::or(
            async {
                let _ = node.repair_rx.recv_async().await;
            },
            async {
                sleep_unless_stopping(&node, wait).await;
            },
        )
        .await;
        if node.stopping.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// One round over (a page of) this node's share of the repair queue.
async fn work_repairs(node: &Arc<Node>) -> Round {
    let (queue, more) = match repair_share(node).work(node, false, REPAIR_PAGE).await {
        Ok(q) => q,
        Err(e) => {
            tracing::error!("reading the repair queue: {e}");
            return Round::RetryLater;
        }
    };
    let retry_later = std::cell::Cell::new(false);
    if !queue.is_empty() {
        // Work queued after nodes returned must see them: the view is at least as new as the
        // queue, not a heartbeat older.
        node.refresh_view().await;
    }
    // The operator's rate, as it is now, and again every few seconds of a long round.
    let rate_read = std::cell::Cell::new(None::<std::time::Instant>);
    let read_rate = || async {
        if rate_read
            .get()
            .is_some_and(|t| t.elapsed() < REPAIR_RATE_EVERY)
        {
            return;
        }
        rate_read.set(Some(std::time::Instant::now()));
        if let Ok(r) = node.meta.ask(ask::RepairRate {}).await {
            node.repair_pace.limit.store(r, Ordering::Relaxed);
        }
    };
    // Several contents at once: each reads its K+M shards from as many nodes and writes the
    // rebuilt ones to others, so the reads and writes of one overlap the waits of another.
    use futures_util::StreamExt;
    let work =
        futures_util::stream::iter(queue).for_each_concurrent(REPAIRS_AT_ONCE, |(h, nonce)| {
            let retry_later = &retry_later;
            let read_rate = &read_rate;
            async move {
                if node.stopping.load(Ordering::Relaxed) {
                    return;
                }
                read_rate().await;
                repair_one(node, h, nonce, retry_later).await;
            }
        });
    work.await;
    if node.stopping.load(Ordering::Relaxed) {
        Round::Done
    } else if retry_later.get() {
        Round::RetryLater
    } else if more {
        Round::More
    } else {
        Round::Done
    }
}

/// How a round over the repair queue ended.
#[derive(PartialEq, Eq)]
enum Round {
    /// This node's part of the queue is empty (or the node stops).
    Done,
    /// A page was worked and more of this node's part waits: the next round starts at once.
    More,
    /// Something failed and is to be tried again in a while.
    RetryLater,
}

/// Entries of this node's part of the repair queue read per round.
const REPAIR_PAGE: usize = 256;

/// Contents one node repairs at once.
const REPAIRS_AT_ONCE: usize = 4;
/// How often a repair round reads the operator's rate again.
const REPAIR_RATE_EVERY: Duration = Duration::from_secs(2);

/// Repairs one queued content, ends its queue entry unless it is to be tried again.
async fn repair_one(
    node: &Arc<Node>,
    h: [u8; 32],
    nonce: u64,
    retry_later: &std::cell::Cell<bool>,
) {
    match store::repair(node, h).await {
        Ok(n) => {
            if n > 0 {
                tracing::info!("repaired {n} shard(s) of {}", hex::encode(h));
                node.metrics
                    .shards_repaired
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            let _ = node.meta.ask(ask::RepairDone { blake3: h, nonce }).await;
            store::move_again_if_held_back(node, h).await;
        }
        Err(StoreError::InsufficientShards { have, need }) => {
            unrepairable(node, &h, have, need).await;
            let _ = node.meta.ask(ask::RepairDone { blake3: h, nonce }).await;
        }
        Err(e) => {
            tracing::warn!("repair of {} failed, will retry: {e}", hex::encode(h));
            retry_later.set(true);
        }
    }
}

/// Contents of the move queue looked at per round (of this node's share).
const MOVE_BATCH: usize = 16;

/// One batch of this node's share of the move queue (drains, rebalancing); `true` if a whole
/// batch was worked (more may wait). Every entry leaves the queue once tried, moved or not: a
/// move that failed is queued again by the drain or rebalance that wants it, so entries that
/// keep failing never pile up in front of the others.
async fn work_moves(node: &Arc<Node>) -> bool {
    let (batch, full) = match repair_share(node).work(node, true, MOVE_BATCH).await {
        Ok(q) => q,
        Err(e) => {
            tracing::error!("reading the move queue: {e}");
            return false;
        }
    };
    if !batch.is_empty() {
        node.refresh_view().await;
    }
    for (h, nonce) in batch {
        if node.stopping.load(Ordering::Relaxed) {
            return false;
        }
        match store::relocate(node, h, true).await {
            Ok(n) if n > 0 => {
                tracing::debug!("moved {n} shard(s) of {}", hex::encode(h));
                node.metrics
                    .shards_moved
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(StoreError::InsufficientShards { have, need }) => {
                unrepairable(node, &h, have, need).await;
            }
            Err(e) => tracing::warn!("moving shards of {}: {e}", hex::encode(h)),
        }
        let _ = node.meta.ask(ask::MoveDone { blake3: h, nonce }).await;
        store::move_again_if_held_back(node, h).await;
    }
    full
}

/// Watches every drive: refreshes free space and notices a drive that was emptied or replaced.
async fn drive_watcher(node: Arc<Node>) {
    while sleep_unless_stopping(&node, Duration::from_secs(1)).await {
        // statvfs and the identity files are read on the helper thread.
        let n = node.clone();
        let intact: Vec<bool> = crate::offload::blocking(move || {
            n.drives
                .iter()
                .map(|d| {
                    d.refresh_free();
                    d.identity_intact()
                })
                .collect()
        })
        .await;
        if node.cluster.is_some() {
            if intact.iter().any(|ok| !ok) {
                for (d, _) in node.drives.iter().zip(&intact).filter(|(_, ok)| !**ok) {
                    tracing::warn!(
                        "drive {} lost its identity (emptied or replaced): registering it again",
                        d.root.display()
                    );
                    d.healthy.store(false, Ordering::Relaxed);
                }
                if let Err(e) = reregister(&node).await {
                    tracing::error!("registering replaced drives: {e:#}");
                }
            }
            continue;
        }
        for (d, ok) in node.drives.iter().zip(intact) {
            if !ok {
                match check_drive(&node, d).await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!("drive {}: {e:#}", d.root.display());
                        d.healthy.store(false, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            d.healthy.store(true, Ordering::Relaxed);
        }
    }
}

/// glommio decides once per block device and thread whether reads may use the polled ring, by
/// reading the first file it opens with direct I/O. When that file is still empty (a shard file
/// being created) the probe read succeeds trivially and every later read on the device fails
/// with EOPNOTSUPP on devices without poll queues. So each executor first opens a small file
/// that has data on every drive, which makes the probe exercise a real read.
async fn prime_iopoll_probe(node: &Node) {
    for d in &node.drives {
        let p = d.root.join(".iopoll-probe");
        if std::fs::metadata(&p)
            .map(|m| m.len() < 4096)
            .unwrap_or(true)
        {
            if let Err(e) = std::fs::write(&p, [0u8; 4096]) {
                tracing::warn!("writing {}: {e}", p.display());
                continue;
            }
        }
        match glommio::io::DmaFile::open(&p).await {
            Ok(f) => {
                let _ = f.close().await;
            }
            Err(e) => tracing::warn!("opening {}: {e}", p.display()),
        }
    }
}

/// How long a port still held by a listener is waited for at start (see [`reserve_port`]).
const PORT_RELEASE_WAIT: Duration = Duration::from_secs(3);

fn reserve_port(addr: SocketAddr) -> anyhow::Result<(socket2::Socket, SocketAddr)> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() != 0 {
        // The executors share the port through SO_REUSEPORT, which would also let a second
        // ostore on the same port silently take half the connections: check the port is free
        // with a plain socket first.
        // A process killed just now may still hold its listener for a moment: io_uring
        // releases the sockets of a dead process's rings asynchronously, and they accept
        // meanwhile. A live listener still there after PORT_RELEASE_WAIT is another process.
        let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
        loop {
            let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            probe.set_reuse_address(true)?;
            let Err(e) = probe.bind(&addr.into()) else {
                break;
            };
            // Connections of a previous process on this port linger (TIME_WAIT, FIN_WAIT)
            // after it died; only a live listener makes the port unusable.
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(e).with_context(|| format!("{addr} is already in use"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    let local = s.local_addr()?.as_socket().context("bound address")?;
    Ok((s, local))
}

/// HTTP/3's server configuration where there is a certificate (`--tls-cert`/`--tls-key`, or for
/// `ostore dev`, whose data directory is `dev_dir`, the one made there), and its UDP port (the
/// HTTP port's number) held until the executors bind it.
fn http3_setup(
    tls: &crate::http3::TlsFiles,
    dev_dir: Option<&Path>,
    http_addr: SocketAddr,
) -> anyhow::Result<(
    Option<Arc<quinn_proto::ServerConfig>>,
    Option<socket2::Socket>,
)> {
    match crate::http3::server_setup(tls, dev_dir, http_addr)? {
        Some((config, cert)) => {
            eprintln!("HTTP/3 certificate: {}", cert.display());
            Ok((Some(config), Some(reserve_udp_port(http_addr)?.0)))
        }
        None => {
            tracing::warn!("no --tls-cert/--tls-key: HTTP/3 is not served");
            Ok((None, None))
        }
    }
}

/// Advertises HTTP/3 in HTTP/1.1 responses and adds `quic=` to the ready line.
fn announce_http3(line: &mut String, http_addr: SocketAddr) {
    crate::web::advertise(http_addr.port());
    line.push_str(&format!(" quic={http_addr}"));
}

/// Runs `ostore dev` until SIGINT or SIGTERM.
pub fn run_dev(mut opts: DevOptions) -> anyhow::Result<()> {
    // Every path is resolved once, here: the executors cannot open relative ones.
    opts.data = ostore_server::process::absolute(&opts.data)?;
    opts.tls = opts.tls.absolute()?;
    std::fs::create_dir_all(&opts.data)
        .with_context(|| format!("creating {}", opts.data.display()))?;
    ostore_server::process::make_private_or_warn(&opts.data);
    let (secrets, secret_file) = load_secrets(&opts.data)?;
    let meta_dir = opts.data.join("meta");
    std::fs::create_dir_all(&meta_dir)?;
    let kv = RedbKv::open(&meta_dir.join("ostore.redb")).context("opening the metadata store")?;
    let meta = MetaClient::Local(Meta::start(Arc::new(kv)));
    futures_lite::future::block_on(meta.ask(ask::Init {}))?;
    // Drives are numbered densely; shards on a drive beyond --drives would be unreachable.
    let beyond: Option<DriveRec> =
        futures_lite::future::block_on(meta.ask(ask::Drive { id: opts.drives }))?;
    if let Some(rec) = beyond {
        anyhow::bail!(
            "the metadata knows drive {} ({}), but --drives is {}: removing drives is not supported; \
             start with as many drives as before",
            opts.drives,
            rec.path,
            opts.drives
        );
    }
    let drives = (0..opts.drives)
        .map(|i| Drive::new(i, opts.data.join(format!("drive-{i}"))))
        .collect();
    let (repair_tx, repair_rx) = flume::bounded(4096);
    let node = Arc::new(Node {
        meta,
        drives,
        ec: opts.ec,
        store: opts.store,
        boot: rand::random(),
        node_id: "dev".into(),
        metrics: Metrics::default(),
        stopping: AtomicBool::new(false),
        cluster: None,
        repair_tx,
        repair_rx,
        repair_pace: Default::default(),
    });
    for d in &node.drives {
        futures_lite::future::block_on(check_drive(&node, d))?;
    }
    futures_lite::future::block_on(clean_intents(&node))?;
    if (opts.drives as usize) * (opts.ec.parity as usize) < opts.ec.total() {
        tracing::warn!(
            "{} drive(s) hold at most {} of the {} shards (no more than {} on one drive): writes of objects over the inline size will fail with 507",
            opts.drives,
            opts.drives as usize * opts.ec.parity as usize,
            opts.ec.total(),
            opts.ec.parity
        );
    } else if (opts.drives as usize) < opts.ec.total() {
        tracing::warn!(
            "{} drives for {} shards: some drives hold two or more shards of an object",
            opts.drives,
            opts.ec.total()
        );
    }

    let (placeholder, http_addr) = reserve_port(opts.http)?;
    let s3 = opts.s3.map(reserve_port).transpose()?;
    let s3_addr = s3.as_ref().map(|(_, a)| *a);
    let (h3, udp_placeholder) = http3_setup(&opts.tls, Some(&opts.data), http_addr)?;
    let https = opts.tls.https(http_addr, s3_addr)?;
    let front = Arc::new(crate::web::Front {
        node: node.clone(),
        creds: crate::web::Credentials::new(secrets, secret_file.clone()),
        limits: opts.limits,
        s3_domain: opts.s3_domain.clone(),
        https,
    });
    let handles = start_executors(
        front,
        opts.cores,
        http_addr,
        s3_addr,
        None,
        h3.clone(),
        spawn_background,
    )?;
    drop(placeholder);
    drop(udp_placeholder);

    drop(s3);
    let mut line = format!("ostore ready http={http_addr}");
    if let Some(a) = s3_addr {
        line.push_str(&format!(" s3={a}"));
    }
    if h3.is_some() {
        announce_http3(&mut line, http_addr);
    }
    if let Some(p) = &secret_file {
        line.push_str(&format!(" secret-file={}", p.display()));
    }
    line.push_str(&format!(" data={}", opts.data.display()));
    let signals = stop_signals()?;
    print_ready(&line)?;
    wait_for_signal_then_stop(&node.stopping, handles, signals)
}

/// Starts one pinned executor per core: each joins the drive mesh, listens on `http_addr`
/// (SO_REUSEPORT) and, in a cluster, on the peer port over QUIC; executor 0 also runs
/// `background`. Returns once every executor is listening.
fn start_executors(
    front: Arc<crate::web::Front>,
    cores: usize,
    http_addr: SocketAddr,
    s3_addr: Option<SocketAddr>,
    peer_addr: Option<SocketAddr>,
    h3: Option<Arc<quinn_proto::ServerConfig>>,
    background: fn(Arc<Node>),
) -> anyhow::Result<Vec<glommio::ExecutorJoinHandle<()>>> {
    // The executors' own coordination, kept by the wiring: the mesh peer id of each
    // (usize::MAX until it joined), and how many still serve clients (each keeps serving its
    // drives to the others until none does).
    let peer_ids: Arc<Vec<AtomicUsize>> =
        Arc::new((0..cores).map(|_| AtomicUsize::new(usize::MAX)).collect());
    let serving = Arc::new(AtomicUsize::new(cores));
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut handles = Vec::new();
    let mesh = crate::shardio::mesh(cores);
    for core in 0..cores {
        let front = front.clone();
        let node = front.node.clone();
        let peer_ids = peer_ids.clone();
        let serving = serving.clone();
        let bound_tx = bound_tx.clone();
        let mesh = mesh.clone();
        let h3 = h3.clone();
        let builder = LocalExecutorBuilder::new(Placement::Fixed(core % cpus))
            .name(&format!("ostore-core-{core}"));
        let h = builder
            .spawn(move || async move {
                crate::offload::on_executor_thread();
                if let Err(e) = crate::shardio::join(mesh, core, &peer_ids).await {
                    let _ = bound_tx.send(Err(anyhow::anyhow!("executor {core}: {e}")));
                    return;
                }
                prime_iopoll_probe(&node).await;
                let listener = match glommio::net::TcpListener::bind(http_addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send(Err(anyhow::anyhow!("binding {http_addr}: {e}")));
                        return;
                    }
                };
                let mut s3_serving = None;
                if let Some(addr) = s3_addr {
                    match glommio::net::TcpListener::bind(addr) {
                        Ok(l) => {
                            s3_serving =
                                Some(glommio::spawn_local(crate::s3::serve(front.clone(), l)));
                        }
                        Err(e) => {
                            let _ = bound_tx.send(Err(anyhow::anyhow!("binding {addr}: {e}")));
                            return;
                        }
                    }
                }
                let mut h3_serving = None;
                if let Some(config) = h3 {
                    // HTTP/3 on UDP at the HTTP port, one endpoint per executor.
                    match ostore_transport::quic::Endpoint::bind(http_addr, true, Some(config)) {
                        Ok(ep) => {
                            h3_serving =
                                Some(glommio::spawn_local(crate::http3::serve(front.clone(), ep)));
                        }
                        Err(e) => {
                            let _ =
                                bound_tx.send(Err(anyhow::anyhow!("binding UDP {http_addr}: {e}")));
                            return;
                        }
                    }
                }
                if let (Some(addr), Some(cluster)) = (peer_addr, &node.cluster) {
                    match ostore_transport::quic::Endpoint::bind(
                        addr,
                        true,
                        Some(cluster.tls.server.clone()),
                    ) {
                        Ok(ep) => {
                            glommio::spawn_local(crate::peer_server::serve(node.clone(), ep))
                                .detach();
                        }
                        Err(e) => {
                            let _ = bound_tx.send(Err(anyhow::anyhow!("binding UDP {addr}: {e}")));
                            return;
                        }
                    }
                }
                let _ = bound_tx.send(Ok(()));
                if core == 0 {
                    background(node.clone());
                    glommio::spawn_local(crate::web::follow_root_secret(front.clone())).detach();
                }
                // Each executor scrubs the drives it owns.
                for d in node
                    .drives
                    .iter()
                    .filter(|d| crate::shardio::owner_of(d.id) == core)
                {
                    glommio::spawn_local(crate::scrub::drive_scrubber(node.clone(), d.id)).detach();
                }
                crate::http::serve(front, listener).await;
                // HTTP/3 and S3 stop alongside, letting their requests in flight finish too.
                if let Some(t) = h3_serving {
                    t.await;
                }
                if let Some(t) = s3_serving {
                    t.await;
                }
                // Keep serving this executor's drives until every executor has drained.
                serving.fetch_sub(1, Ordering::SeqCst);
                while serving.load(Ordering::SeqCst) > 0 {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            })
            .map_err(|e| anyhow::anyhow!("starting executor {core}: {e}"))?;
        handles.push(h);
    }
    drop(bound_tx);
    for _ in 0..cores {
        bound_rx.recv().context("executor died while starting")??;
    }
    Ok(handles)
}

/// Now and then, finishes what intents left undone: deletes files that no content refers to
/// (left when their node was down or a deletion failed) and files of abandoned uploads, then
/// ends the intents. In a cluster the nodes split the intents between them.
async fn intent_sweeper(node: Arc<Node>) {
    while sleep_unless_stopping(&node, Duration::from_secs(10)).await {
        // In a cluster the control plane's leader expires request markers.
        if node.cluster.is_none() {
            if let Err(e) = node.meta.ask(ask::ExpireDone {}).await {
                tracing::warn!("expiring request markers: {e}");
            }
        }
        let intents: Vec<(u64, IntentRec)> = match node.meta.ask(ask::Intents {}).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("reading intents: {e}");
                continue;
            }
        };
        let mine = repair_share(&node);
        let now = store::now_ms();
        let view = node.cluster.as_ref().map(|c| c.view());
        for (id, rec) in intents {
            // Intents of this process's earlier lives are its own to resolve; the others are
            // split between the nodes.
            if !of_earlier_life(&node, &rec.state)
                && !mine.contains(&blake3::hash(&id.to_le_bytes()).into())
            {
                continue;
            }
            let seen = ostore_control::meta::sweep_seen(
                &rec,
                now,
                owner_gone(&node, view.as_deref(), &rec.state),
            );
            sweep_intent(&node, id, rec, seen).await;
        }
    }
}

/// Whether an intent was written by this node before it last restarted.
fn of_earlier_life(node: &Node, state: &IntentState) -> bool {
    let me = node.owner();
    matches!(state, IntentState::WritingBy(o) if o.node == me.node && o.boot != me.boot)
}

/// Whether the process that wrote an intent is known to be gone: this process restarted since
/// (the write died with the old one), or the writer's node was evacuated (it will not come
/// back to resolve its intents). Another node's writer is otherwise left to that node's next
/// life, or to the intent's age.
fn owner_gone(node: &Node, view: Option<&ClusterView>, state: &IntentState) -> bool {
    match state {
        IntentState::WritingBy(o) => {
            of_earlier_life(node, state)
                || (o.node != node.owner().node
                    && view.is_some_and(|v| v.nodes.iter().any(|n| n.id == o.node && n.evacuated)))
        }
        _ => false,
    }
}

/// The background work of a data node, on executor 0: repair, intent sweeping, upload expiry,
/// garbage collection, the drive watcher.
fn spawn_background(node: Arc<Node>) {
    glommio::spawn_local(repair_worker(node.clone())).detach();
    glommio::spawn_local(intent_sweeper(node.clone())).detach();
    glommio::spawn_local(upload_expirer(node.clone())).detach();
    glommio::spawn_local(garbage_collector(node.clone())).detach();
    glommio::spawn_local(orphan_sweeper(node.clone())).detach();
    glommio::spawn_local(drive_watcher(node)).detach();
}

/// How often every node scans its drives for orphan files (`orphans::orphan_pass`).
const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Scans this node's drives for files nothing refers to, daily (the first scan a day after
/// start: a node that just started has resolved its intents already).
async fn orphan_sweeper(node: Arc<Node>) {
    while sleep_unless_stopping(&node, ORPHAN_SCAN_EVERY).await {
        let grace = node.store.gc_grace.max(Duration::from_secs(3600));
        match crate::orphans::orphan_pass(&node, grace).await {
            Ok(r) if r.removed > 0 => tracing::warn!(
                "orphan scan: {} file(s) nothing referred to deleted ({} bytes)",
                r.removed,
                r.bytes
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("orphan scan: {e}"),
        }
    }
}

/// Deletes resumable (tus) and multipart (S3) uploads whose expiry passed, often enough for
/// short test expiries; GC then reclaims what they held.
async fn upload_expirer(node: Arc<Node>) {
    let every =
        (node.store.upload_expiry / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
    while sleep_unless_stopping(&node, every).await {
        crate::tus::expire(&node).await;
        match node.meta.ask(ask::MpuExpire { limit: 100 }).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} multipart upload(s) expired"),
            Err(e) => tracing::warn!("expiring multipart uploads: {e}"),
        }
    }
}

/// Deletes content no version refers to any more, once its grace period passed. In a cluster
/// the nodes split the contents by hash, as for repairs.
async fn garbage_collector(node: Arc<Node>) {
    let every = (node.store.gc_grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    while sleep_unless_stopping(&node, every).await {
        match store::gc_pass(&node, true).await {
            Ok(r) if r.collected > 0 => tracing::info!(
                "gc: {} contents removed, {} bytes freed",
                r.collected,
                r.bytes_freed
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("gc: {e}"),
        }
    }
}

/// Options of `ostore node`.
pub struct NodeOptions {
    /// Every control process of the cluster (any serves; see `RemoteMeta`).
    pub control: Vec<SocketAddr>,
    pub http: SocketAddr,
    /// The S3 API's address (`None`: not served).
    pub s3: Option<SocketAddr>,
    /// The domain under which S3 is also served virtual-hosted style (`BUCKET.DOMAIN`).
    pub s3_domain: Option<String>,
    /// HTTP/3's certificate; without one the node serves HTTP/1.1 only.
    pub tls: crate::http3::TlsFiles,
    pub peer: SocketAddr,
    pub drives: Vec<PathBuf>,
    /// A join token (`osctl nodes token`), needed when no drive holds the node's identity.
    pub join_token: Option<String>,
    pub zone: String,
    pub cores: usize,
    pub store: StoreOptions,
    pub limits: ostore_server::conn::Limits,
}

fn reserve_udp_port(addr: SocketAddr) -> anyhow::Result<(socket2::Socket, SocketAddr)> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() != 0 {
        // As for TCP: SO_REUSEPORT would let a second node share the port silently.
        let probe = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        probe
            .bind(&addr.into())
            .with_context(|| format!("UDP {addr} is already in use"))?;
    }
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("binding UDP {addr}"))?;
    let local = s.local_addr()?.as_socket().context("bound address")?;
    Ok((s, local))
}

fn registration(
    opts: &NodeOptions,
    http: SocketAddr,
    peer: SocketAddr,
) -> anyhow::Result<Registration> {
    let mut drives = Vec::with_capacity(opts.drives.len());
    for path in &opts.drives {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        ostore_server::process::make_private_or_warn(path);
        let probe = Drive::new(0, path.clone());
        probe.refresh_free();
        drives.push(DriveReport {
            path: path.display().to_string(),
            uuid: probe.identity(),
            fresh_uuid: rand::random(),
            capacity_bytes: crate::drives::total_bytes(path).unwrap_or(0),
            free_bytes: probe.free_bytes.load(Ordering::Relaxed),
        });
    }
    Ok(Registration {
        peer: peer.to_string(),
        http: http.to_string(),
        zone: opts.zone.clone(),
        drives,
    })
}

/// Registers with the control plane, retrying while it is unreachable (it may start later).
async fn register(meta: &MetaClient, reg: &Registration) -> anyhow::Result<NodeRec> {
    let mut tries = 0;
    loop {
        match meta.ask(ask::Register { reg: reg.clone() }).await {
            Ok(n) => return Ok(n),
            Err(e) if tries < 60 => {
                tries += 1;
                tracing::warn!("registering with the control plane: {e}; retrying");
                glommio::timer::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("registering with the control plane"),
        }
    }
}

/// Sends a heartbeat every [`ostore_control::cluster::HEARTBEAT_MS`]; fetches the cluster view
/// when the answer's membership epoch differs from the view's (a node marked down or up, a
/// drain: known here within a heartbeat of the control plane's decision) and every
/// [`VIEW_REFRESH`] anyway (the other nodes' free space); registers again if the control plane
/// no longer knows this node.
async fn heartbeat(node: Arc<Node>) {
    let Some(cluster) = &node.cluster else { return };
    let period = Duration::from_millis(ostore_control::cluster::HEARTBEAT_MS);
    let mut fetched = std::time::Instant::now();
    // When this node's certificate is next to be renewed (Unix seconds; 0: look now).
    let mut renew_at_s = 0;
    while sleep_unless_stopping(&node, period).await {
        if ostore_control::service::now_ms() / 1000 >= renew_at_s {
            renew_at_s = renew_certificate(&node).await;
        }
        let free: Vec<(u16, u64)> = node
            .drives
            .iter()
            // Read by the drive watcher within the last second, off the executor.
            .map(|d| (d.id, d.placeable_bytes()))
            .collect();
        let beat = node
            .meta
            .ask(ask::Heartbeat {
                node: cluster.me,
                free,
            })
            .await;
        match beat {
            Ok(b) if b.known => {
                if b.epoch == cluster.view().epoch && fetched.elapsed() < VIEW_REFRESH {
                    continue;
                }
            }
            Ok(_) => {
                tracing::warn!("the control plane does not know this node: registering again");
                if let Err(e) = reregister(&node).await {
                    tracing::warn!("registering again: {e:#}");
                }
            }
            Err(e) => {
                tracing::warn!("heartbeat: {e}");
                continue;
            }
        }
        node.refresh_view().await;
        fetched = std::time::Instant::now();
    }
}

/// How long after a failed renewal of its certificate a node tries again.
const RENEW_RETRY_S: u64 = 10;

/// Renews this node's certificate once two thirds of its life have passed: a fresh key, signed
/// by the control plane on the strength of the current certificate, written to every drive,
/// then presented from the next handshake on (peers and the control API alike; connections
/// open go on). Returns when to look again (Unix seconds): the certificate's renewal time, or
/// [`RENEW_RETRY_S`] from now after a failure (logged).
async fn renew_certificate(node: &Node) -> u64 {
    let (Some(cluster), MetaClient::Remote(remote)) = (&node.cluster, &node.meta) else {
        return u64::MAX;
    };
    let current = cluster.identity.current();
    let now_s = ostore_control::service::now_ms() / 1000;
    // A certificate whose validity cannot be read is renewed now.
    let due = ostore_transport::tls::renew_at_s(&current.cert).unwrap_or(0);
    if now_s < due {
        return due;
    }
    let renewed = async {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let public: [u8; 32] = key
            .public_key_raw()
            .try_into()
            .context("an Ed25519 public key is 32 bytes")?;
        let cert = remote.renew(&public).await?;
        // It must chain to the cluster's CA.
        let fresh = ostore_transport::tls::Identity {
            ca: current.ca.clone(),
            cert: cert.into(),
            key: ostore_transport::tls::ed25519_pkcs8(&key),
        }
        .verified(ostore_transport::tls::NODE_NAME)?;
        let due = ostore_transport::tls::renew_at_s(&fresh.cert)
            .context("the renewed certificate's validity")?;
        let drives: Vec<PathBuf> = node.drives.iter().map(|d| d.root.clone()).collect();
        let stored = fresh.clone();
        crate::offload::blocking(move || crate::identity::store(&drives, &stored)).await?;
        cluster.identity.set(fresh)?;
        Ok::<_, anyhow::Error>(due)
    };
    match renewed.await {
        Ok(due) => {
            tracing::info!("renewed this node's certificate");
            due
        }
        Err(e) => {
            tracing::warn!("renewing this node's certificate: {e:#}");
            now_s + RENEW_RETRY_S
        }
    }
}

/// The cluster view is fetched at least this often (free space changes without an epoch).
const VIEW_REFRESH: Duration = Duration::from_secs(1);

/// Registers this node again with its drives as they are now: the control plane flags drives
/// found empty for refill and gives them a fresh identity, which they are formatted with.
async fn reregister(node: &Node) -> anyhow::Result<()> {
    let Some(cluster) = &node.cluster else {
        return Ok(());
    };
    let view = cluster.view();
    let me = view
        .nodes
        .iter()
        .find(|n| n.id == cluster.me)
        .context("this node is missing from the cluster view")?;
    let reg = Registration {
        peer: me.peer.clone(),
        http: me.http.clone(),
        zone: me.zone.clone(),
        drives: node
            .drives
            .iter()
            .map(|d| DriveReport {
                path: d.root.display().to_string(),
                uuid: d.identity(),
                fresh_uuid: rand::random(),
                capacity_bytes: crate::drives::total_bytes(&d.root).unwrap_or(0),
                free_bytes: d.free_bytes.load(Ordering::Relaxed),
            })
            .collect(),
    };
    let rec: NodeRec = node.meta.ask(ask::Register { reg }).await?;
    for d in &node.drives {
        let path = d.root.display().to_string();
        if let Some(r) = rec.drives.iter().find(|r| r.path == path) {
            d.adopt(r.uuid)
                .with_context(|| format!("formatting {path}"))?;
            d.healthy.store(true, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// This node's identity: from its drives, or got by joining with `--join-token` (then written
/// to every drive).
fn node_identity(opts: &NodeOptions) -> anyhow::Result<ostore_transport::tls::Identity> {
    let now_s = ostore_control::service::now_ms() / 1000;
    let found = crate::identity::load(&opts.drives);
    let identity = match (found, &opts.join_token) {
        (Some(id), _) if id.expires_s().is_some_and(|e| e > now_s) => id,
        (found, Some(token)) => {
            if found.is_some() {
                tracing::warn!("this node's certificate has expired: joining again");
            }
            let addrs = opts.control.clone();
            let token = token.clone();
            let id = LocalExecutorBuilder::new(Placement::Unbound)
                .make()
                .map_err(|e| anyhow::anyhow!("starting the join executor: {e}"))?
                .run(async move { ostore_controlplane::client::join(&addrs, &token).await })?;
            tracing::info!("joined the cluster");
            id
        }
        (Some(_), None) => anyhow::bail!(
            "this node's certificate has expired: give it a new join token (`osctl nodes \
             token` on an operator's machine, then --join-token or OSTORE_JOIN_TOKEN)"
        ),
        (None, None) => anyhow::bail!(
            "this node has no identity yet (none of its drives holds {}): give it a join token \
             (`osctl nodes token` with the cluster key, then --join-token or \
             OSTORE_JOIN_TOKEN)",
            crate::identity::FILE
        ),
    };
    crate::identity::store(&opts.drives, &identity)?;
    Ok(identity)
}

/// Runs `ostore node` until SIGINT or SIGTERM.
pub fn run_node(mut opts: NodeOptions) -> anyhow::Result<()> {
    // Every path is resolved once, here: the executors cannot open relative ones.
    opts.drives = opts
        .drives
        .iter()
        .map(|d| ostore_server::process::absolute(d))
        .collect::<anyhow::Result<_>>()?;
    opts.tls = opts.tls.absolute()?;
    let secret = std::env::var("OSTORE_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .context(
            "a node needs the root secret it checks clients with in OSTORE_SECRET (the client \
             credential: it opens nothing between nodes or to the control plane)",
        )?;
    let identity = ostore_transport::tls::LiveIdentity::new(node_identity(&opts)?)?;
    let revoked = ostore_transport::tls::Revoked::default();
    let tls = ostore_transport::tls::peer_tls(&identity, &revoked)?;
    let meta = MetaClient::Remote(ostore_controlplane::client::RemoteMeta::new(
        opts.control.clone(),
        &identity,
        &revoked,
    )?);
    let (http_placeholder, http_addr) = reserve_port(opts.http)?;
    let s3 = opts.s3.map(reserve_port).transpose()?;
    let s3_addr = s3.as_ref().map(|(_, a)| *a);
    let (udp_placeholder, peer_addr) = reserve_udp_port(opts.peer)?;
    let reg = registration(&opts, http_addr, peer_addr)?;
    // Registration runs on a short-lived executor of this thread: the client needs a reactor.
    let (rec, view, secrets) = LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .map_err(|e| anyhow::anyhow!("starting the registration executor: {e}"))?
        .run(async {
            let rec = register(&meta, &reg).await?;
            let view: ClusterView = meta.ask(ask::Cluster {}).await?;
            let MetaClient::Remote(remote) = &meta else {
                unreachable!("a node's metadata is remote")
            };
            // The cluster keeps the root secret: the first node brings it, and a rotation
            // since overrides what OSTORE_SECRET says.
            let secrets = remote
                .root_secret(Some(&secret))
                .await
                .context("reading the cluster's root secret")?;
            if secrets.current != secret && !secrets.previous.iter().any(|p| p.0 == secret) {
                tracing::warn!(
                    "OSTORE_SECRET is not the cluster's root secret (version {}; it was \
                     rotated, or another node brought it first): clients are checked against \
                     the cluster's",
                    secrets.version
                );
            }
            Ok::<_, anyhow::Error>((rec, view, secrets))
        })?;
    let ec = EcParams::new(view.data, view.parity)
        .map_err(|e| anyhow::anyhow!("the cluster's erasure coding: {e}"))?;
    let mut drives = Vec::with_capacity(opts.drives.len());
    for path in &opts.drives {
        let p = path.display().to_string();
        let d = rec
            .drives
            .iter()
            .find(|d| d.path == p)
            .context("the control plane did not register every drive")?;
        let drive = Drive::new(d.id, path.clone());
        drive
            .adopt(d.uuid)
            .with_context(|| format!("preparing drive {p}"))?;
        if d.refill {
            tracing::warn!("drive {p} came back empty: its shards will be rebuilt");
        }
        drives.push(drive);
    }
    let (repair_tx, repair_rx) = flume::bounded(4096);
    let node = Arc::new(Node {
        meta,
        drives,
        ec,
        store: opts.store,
        boot: rand::random(),
        node_id: rec.id.to_string(),
        metrics: Metrics::default(),
        stopping: AtomicBool::new(false),
        cluster: Some(crate::cluster::Cluster::new(
            rec.id, view, tls, revoked, identity,
        )),
        repair_tx,
        repair_rx,
        repair_pace: Default::default(),
    });
    let (h3, h3_placeholder) = http3_setup(&opts.tls, None, http_addr)?;
    let https = opts.tls.https(http_addr, s3_addr)?;
    let front = Arc::new(crate::web::Front {
        node: node.clone(),
        creds: crate::web::Credentials::new(crate::web::cluster_secrets(secrets), None),
        limits: opts.limits,
        s3_domain: opts.s3_domain.clone(),
        https,
    });
    let handles = start_executors(
        front,
        opts.cores,
        http_addr,
        s3_addr,
        Some(peer_addr),
        h3.clone(),
        |node| {
            glommio::spawn_local(heartbeat(node.clone())).detach();
            spawn_background(node);
        },
    )?;
    drop(http_placeholder);
    drop(udp_placeholder);
    drop(h3_placeholder);
    drop(s3);
    let mut line = format!(
        "ostore ready node={} http={http_addr} peer={peer_addr}",
        rec.id
    );
    if let Some(a) = s3_addr {
        line.push_str(&format!(" s3={a}"));
    }
    if h3.is_some() {
        announce_http3(&mut line, http_addr);
    }
    let signals = stop_signals()?;
    crate::faults::install()?;
    print_ready(&line)?;
    wait_for_signal_then_stop(&node.stopping, handles, signals)
}

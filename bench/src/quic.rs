//! `osbench quic`: bulk stream throughput of ostore's QUIC path (quinn-proto driven by a glommio
//! executor, as nodes use it for shards) against quinn's own tokio runtime, in one run, on
//! loopback, with the same TLS (the cluster's mutual TLS 1.3) and the same transport settings.
//! Each side is one sender thread and one receiver thread, pinned to different CPUs.

use ostore_transport::tls::{peer_tls, ClusterCa, LiveIdentity, PeerTls, Revoked, NODE_NAME};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct QuicArgs {
    /// Bytes to send, split over the streams.
    #[arg(long, default_value = "1GiB", value_parser = ostore_engine::units::parse_bytes)]
    bytes: u64,
    /// Concurrent streams on one connection.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Runs of each side (the best is kept, to see past a noisy neighbour).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Also write the result as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const CHUNK: usize = 64 * 1024;

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// ostore's driver: receiver and sender on two glommio executors.
fn ours(tls: &PeerTls, bytes: u64, streams: usize) -> anyhow::Result<Duration> {
    use glommio::{LocalExecutorBuilder, Placement};
    use ostore_transport::quic::Endpoint;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let server_cfg = tls.server.clone();
    let server = LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn(move || async move {
            let ep = Endpoint::bind("127.0.0.1:0".parse().unwrap(), false, Some(server_cfg))
                .expect("bind");
            addr_tx.send(ep.local_addr().unwrap()).unwrap();
            let conn = ep.accept().await.expect("a connection");
            conn.established().await.expect("a handshake");
            let mut tasks = Vec::new();
            for _ in 0..streams {
                let (mut send, mut recv) = conn.accept_bi().await.expect("a stream");
                tasks.push(glommio::spawn_local(async move {
                    while recv.read_chunk(usize::MAX).await.expect("read").is_some() {}
                    send.write_all(b"k").await.expect("ack");
                    send.finish().expect("finish");
                    // Let the ack go out before the stream is dropped.
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }));
            }
            for t in tasks {
                t.await;
            }
            glommio::timer::sleep(Duration::from_millis(200)).await;
            ep.close();
        })
        .map_err(|e| anyhow::anyhow!("server executor: {e}"))?;
    let addr = addr_rx.recv_timeout(Duration::from_secs(10))?;
    let client_cfg = tls.client.clone();
    let client = LocalExecutorBuilder::new(Placement::Fixed(1 % cpus()))
        .spawn(move || async move {
            let ep = Endpoint::bind("127.0.0.1:0".parse().unwrap(), false, None).expect("bind");
            let conn = ep
                .connect(client_cfg, addr, NODE_NAME)
                .await
                .expect("connect");
            let per = bytes / streams as u64;
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..streams {
                let conn = conn.clone();
                tasks.push(glommio::spawn_local(async move {
                    let (mut send, mut recv) = conn.open_bi().await.expect("open");
                    let buf = vec![0x5au8; CHUNK];
                    let mut left = per;
                    while left > 0 {
                        let n = left.min(CHUNK as u64) as usize;
                        send.write_all(&buf[..n]).await.expect("write");
                        left -= n as u64;
                    }
                    send.finish().expect("finish");
                    let mut ack = [0u8; 1];
                    recv.read_exact(&mut ack).await.expect("ack");
                }));
            }
            for t in tasks {
                t.await;
            }
            let took = t0.elapsed();
            if std::env::var_os("OSBENCH_QUIC_STATS").is_some() {
                eprintln!("ostore client connection: {:#?}", conn.stats());
            }
            conn.close(b"done");
            glommio::timer::sleep(Duration::from_millis(100)).await;
            ep.close();
            took
        })
        .map_err(|e| anyhow::anyhow!("client executor: {e}"))?;
    let took = client.join().map_err(|e| anyhow::anyhow!("client: {e}"))?;
    server.join().map_err(|e| anyhow::anyhow!("server: {e}"))?;
    Ok(took)
}

/// quinn on tokio: receiver and sender on two single-threaded runtimes.
fn theirs(tls: &PeerTls, bytes: u64, streams: usize) -> anyhow::Result<Duration> {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let server_cfg = (*tls.server).clone();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let ep =
                quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).expect("bind");
            addr_tx.send(ep.local_addr().unwrap()).unwrap();
            let conn = ep
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("handshake");
            let mut tasks = Vec::new();
            for _ in 0..streams {
                let (mut send, mut recv) = conn.accept_bi().await.expect("a stream");
                tasks.push(tokio::spawn(async move {
                    while recv
                        .read_chunk(usize::MAX, true)
                        .await
                        .expect("read")
                        .is_some()
                    {}
                    send.write_all(b"k").await.expect("ack");
                    send.finish().expect("finish");
                    let _ = send.stopped().await;
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            ep.wait_idle().await;
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10))?;
    let client_cfg = tls.client.clone();
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("bind");
            let conn = ep
                .connect_with(client_cfg, addr, NODE_NAME)
                .expect("connect")
                .await
                .expect("handshake");
            let per = bytes / streams as u64;
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..streams {
                let conn = conn.clone();
                tasks.push(tokio::spawn(async move {
                    let (mut send, mut recv) = conn.open_bi().await.expect("open");
                    let buf = vec![0x5au8; CHUNK];
                    let mut left = per;
                    while left > 0 {
                        let n = left.min(CHUNK as u64) as usize;
                        send.write_all(&buf[..n]).await.expect("write");
                        left -= n as u64;
                    }
                    send.finish().expect("finish");
                    let mut ack = [0u8; 1];
                    recv.read_exact(&mut ack).await.expect("ack");
                }));
            }
            for t in tasks {
                t.await.expect("stream task");
            }
            let took = t0.elapsed();
            conn.close(0u32.into(), b"done");
            ep.wait_idle().await;
            took
        })
    });
    let took = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
    Ok(took)
}

pub fn run(a: QuicArgs) -> anyhow::Result<()> {
    let ca = ClusterCa::generate(std::time::SystemTime::now())?;
    let tls = peer_tls(
        &LiveIdentity::new(ca.node_identity(std::time::SystemTime::now())?)?,
        &Revoked::default(),
    )?;
    let mb_s = |d: Duration| a.bytes as f64 / d.as_secs_f64() / 1e6;
    let mut best_ours: f64 = 0.0;
    let mut best_theirs: f64 = 0.0;
    // Interleaved, so that a noisy moment hurts both sides alike.
    for run in 0..a.runs.max(1) {
        let o = mb_s(ours(&tls, a.bytes, a.streams)?);
        let t = mb_s(theirs(&tls, a.bytes, a.streams)?);
        eprintln!(
            "run {run}: ostore (glommio + quinn-proto) {o:.0} MB/s, quinn on tokio {t:.0} MB/s"
        );
        best_ours = best_ours.max(o);
        best_theirs = best_theirs.max(t);
    }
    let ratio = best_ours / best_theirs;
    println!(
        "QUIC bulk streams on loopback, {} over {} streams, best of {}:",
        a.bytes, a.streams, a.runs
    );
    println!("  ostore (glommio + quinn-proto): {best_ours:.0} MB/s");
    println!("  quinn on tokio:                 {best_theirs:.0} MB/s");
    println!("  ratio ostore / quinn:           {ratio:.2}");
    if let Some(p) = &a.json {
        std::fs::write(
            p,
            serde_json::json!({"bytes": a.bytes, "streams": a.streams, "runs": a.runs,
                "ostore_mb_s": best_ours, "quinn_tokio_mb_s": best_theirs, "ratio": ratio})
            .to_string(),
        )?;
    }
    Ok(())
}

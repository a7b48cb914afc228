//! A control plane that survives its own failure, on a real replicated store: three etcd
//! members (Debian's `etcd-server`), three `ostore control` processes over them, six nodes
//! given all three, and a steady load of PUTs and GETs. Then, in turn: the leading control
//! process is killed (SIGKILL), an etcd member is killed, and the new leader is paused
//! (SIGSTOP) for 10 s. No acknowledged write is lost, no GET returns wrong bytes, and requests
//! fail (or stall) only in a window after each fault, which the test measures and prints.

use ostore_tests::cluster::Cluster;
use ostore_tests::eventually;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request of the load: when it started and ended (seconds since the load began), and
/// whether it succeeded.
#[derive(Debug, Clone)]
struct Op {
    start: f64,
    end: f64,
    ok: bool,
    what: String,
}

/// A request slower than this counts as part of a failover window, like a failed one.
const STALL_S: f64 = 1.0;

fn load(
    c: Arc<Cluster>,
    thread: usize,
    t0: Instant,
    stop: Arc<AtomicBool>,
    ops: Arc<Mutex<Vec<Op>>>,
    acked: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    wrong: Arc<Mutex<Vec<String>>>,
) {
    let nodes = c.nodes.len();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("ha/t{thread}-{n}");
        let body: Vec<u8> = (0..8192u32)
            .map(|i| (i as usize * 31 + n * 7 + thread) as u8)
            .collect();
        let start = t0.elapsed().as_secs_f64();
        let put = c.try_put((thread + n) % nodes, &key, body.clone());
        let end = t0.elapsed().as_secs_f64();
        let ok = matches!(put, Ok(s) if s == 200 || s == 201);
        ops.lock().unwrap().push(Op {
            start,
            end,
            ok,
            what: format!("PUT {key}: {put:?}"),
        });
        if !ok {
            continue;
        }
        acked.lock().unwrap().insert(key.clone(), body.clone());
        let start = t0.elapsed().as_secs_f64();
        let got = c.try_get((thread + n + 1) % nodes, &key);
        let end = t0.elapsed().as_secs_f64();
        let ok = match &got {
            Ok((200, bytes)) => {
                if *bytes != body {
                    wrong.lock().unwrap().push(key.clone());
                }
                true
            }
            _ => false,
        };
        ops.lock().unwrap().push(Op {
            start,
            end,
            ok,
            what: format!(
                "GET {key}: {:?}",
                got.as_ref().map(|g| g.0).map_err(|e| e.clone())
            ),
        });
    }
}

#[test]
fn control_plane_survives_leader_kill_etcd_member_kill_and_leader_pause() {
    let c = Cluster::start_ha(3, 3, 6, 1);
    // Wait for the control processes to settle on a leader.
    assert!(
        eventually(Duration::from_secs(20), || c.leader().is_some()),
        "no control process took the lead"
    );
    let c = Arc::new(c);
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let wrong = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (c, stop, ops, acked, wrong) = (
                c.clone(),
                stop.clone(),
                ops.clone(),
                acked.clone(),
                wrong.clone(),
            );
            std::thread::spawn(move || load(c, t, t0, stop, ops, acked, wrong))
        })
        .collect();
    let now = || t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));

    // 1. SIGKILL of the leading control process.
    let (first, term1) = c.leader().expect("a leader");
    let f1 = now();
    c.signal_control(first, libc::SIGKILL);
    let took_over = eventually(Duration::from_secs(20), || {
        c.leader().is_some_and(|(i, t)| i != first && t > term1)
    });
    let lead1_s = now() - f1;
    assert!(
        took_over,
        "no control process took over from the killed leader"
    );
    std::thread::sleep(Duration::from_secs(8).saturating_sub(Duration::from_secs_f64(now() - f1)));

    // 2. SIGKILL of an etcd member.
    let f2 = now();
    kill_etcd_member(&c, 0);
    std::thread::sleep(Duration::from_secs(8));

    // 3. SIGSTOP of the new leader for 10 s.
    let (second, term2) = c.leader().expect("a leader after the etcd member's loss");
    let f3 = now();
    c.signal_control(second, libc::SIGSTOP);
    let took_over = eventually(Duration::from_secs(10), || {
        c.leader().is_some_and(|(i, t)| i != second && t > term2)
    });
    let lead3_s = now() - f3;
    std::thread::sleep(Duration::from_secs(10).saturating_sub(Duration::from_secs_f64(now() - f3)));
    c.signal_control(second, libc::SIGCONT);
    let resumed = now();
    assert!(
        took_over,
        "no control process took over from the paused leader"
    );
    // The paused leader wakes up deposed: it says so once its next renewal finds the lease
    // taken (its decisions meanwhile were fenced).
    assert!(
        eventually(Duration::from_secs(10), || c
            .control_leads(second)
            .is_none()),
        "the paused leader still says it leads after waking"
    );
    std::thread::sleep(
        Duration::from_secs(8).saturating_sub(Duration::from_secs_f64(now() - resumed)),
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let end = now();

    // What the load saw.
    let ops = ops.lock().unwrap().clone();
    let faults = [
        ("leader control SIGKILL", f1),
        ("etcd member SIGKILL", f2),
        ("leader control SIGSTOP 10 s", f3),
    ];
    let bounds = [f1, f2, f3, end];
    let mut report = Vec::new();
    for (k, (name, at)) in faults.iter().enumerate() {
        let next = bounds[k + 1];
        // A request belongs to the last fault before it ended.
        let in_phase: Vec<&Op> = ops
            .iter()
            .filter(|o| o.end >= *at && o.end < next)
            .collect();
        let bad: Vec<&&Op> = in_phase
            .iter()
            .filter(|o| !o.ok || o.end - o.start > STALL_S)
            .collect();
        let window = bad.iter().map(|o| o.end - at).fold(0.0f64, f64::max);
        let failed = bad.iter().filter(|o| !o.ok).count();
        let ok_after = in_phase
            .iter()
            .filter(|o| o.ok && o.start > at + window)
            .count();
        report.push(format!(
            "{name}: window {window:.2} s ({failed} failed, {} slow of {} requests; {ok_after} \
             succeeded after it)",
            bad.len() - failed,
            in_phase.len()
        ));
        eprintln!(
            "{}; first failures: {:?}",
            report.last().unwrap(),
            bad.iter()
                .take(5)
                .map(|o| (o.start - at, o.end - at, &o.what))
                .collect::<Vec<_>>()
        );
        assert!(
            ok_after > 10,
            "{name}: the load did not recover ({ok_after} requests succeeded after the window)"
        );
        // Bounded by the nodes' call budget (6 s) and a failover; never a long hang.
        assert!(
            window < 8.0,
            "{name}: requests failed or stalled for {window:.2} s: {:?}",
            bad.iter().map(|o| &o.what).collect::<Vec<_>>()
        );
    }
    // Before the first fault, nothing failed.
    let early: Vec<&Op> = ops
        .iter()
        .filter(|o| o.end < f1 - STALL_S && !o.ok)
        .collect();
    assert!(
        early.is_empty(),
        "requests failed before any fault: {early:?}"
    );
    eprintln!(
        "control plane failover: new leader {lead1_s:.2} s after SIGKILL, {lead3_s:.2} s after \
         SIGSTOP; {} requests;\n  {}",
        ops.len(),
        report.join("\n  ")
    );

    // No wrong bytes during the run, and every acknowledged write reads back now.
    let wrong = wrong.lock().unwrap().clone();
    assert!(wrong.is_empty(), "GETs returned wrong bytes for {wrong:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "too little load: {} writes", acked.len());
    for (i, (key, body)) in acked.iter().enumerate() {
        let (s, got) = c.get_bytes(i % c.nodes.len(), key);
        assert_eq!(s, 200, "acknowledged {key} is gone");
        assert!(got == *body, "acknowledged {key} reads back wrong");
    }
}

fn kill_etcd_member(c: &Cluster, i: usize) {
    let pid = c
        .etcd
        .as_ref()
        .and_then(|e| e.pid(i))
        .expect("a running etcd member");
    // SAFETY: kill(2) on an etcd member this test's cluster started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// The rule while no control process answers: a request fails fast and clearly (503 with
/// `Retry-After`) instead of hanging, and the node serves again as soon as one answers.
#[test]
fn with_the_control_plane_paused_requests_fail_fast_with_retry_after() {
    let c = Cluster::start(4, 1);
    assert_eq!(c.put(0, "b/k", vec![7u8; 1000]).status().as_u16(), 201);
    c.signal_control(0, libc::SIGSTOP);
    let started = Instant::now();
    let r = reqwest::blocking::Client::new()
        .get(c.url(1, "/objects/b/k"))
        .bearer_auth(&c.secret)
        .timeout(Duration::from_secs(30))
        .send()
        .expect("an answer while the control plane is paused");
    let took = started.elapsed();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = r.status().as_u16();
    c.signal_control(0, libc::SIGCONT);
    assert_eq!(status, 503, "a GET with the control plane paused");
    assert_eq!(retry.as_deref(), Some("1"));
    // The node's call budget (6 s), not a long timer.
    assert!(took < Duration::from_secs(9), "the 503 took {took:?}");
    assert!(
        eventually(Duration::from_secs(10), || c.get_bytes(1, "b/k")
            == (200, vec![7u8; 1000])),
        "the node did not serve again once the control plane resumed"
    );
    eprintln!("control plane paused: 503 with Retry-After after {took:?}");
}

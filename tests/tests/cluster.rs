//! A cluster on loopback: one control process and six nodes.

use ostore_tests::cluster::Cluster;
use ostore_tests::{eventually, random_bytes};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Node states by node id, as `osctl nodes --json` reports them through node `via`.
/// Now, in milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// Milliseconds since the Unix epoch of a UTC time as the API prints it,
/// `2026-12-03T21:02:39.344Z`.
fn rfc3339_ms(s: &str) -> u64 {
    let n = |r: std::ops::Range<usize>| -> i64 { s[r].parse().expect("a number") };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (hh, mm, ss) = (n(11..13), n(14..16), n(17..19));
    let frac = s[19..].trim_start_matches('.').trim_end_matches('Z');
    let ms: i64 = format!("{frac:0<3}")[..3].parse().expect("milliseconds");
    // Days from 1970-01-01 of a proleptic Gregorian date.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (((days * 24 + hh) * 60 + mm) * 60 + ss) as u64 * 1000 + ms as u64
}

#[test]
fn rfc3339_ms_reads_what_the_api_prints() {
    assert_eq!(rfc3339_ms("1970-01-01T00:00:00.000Z"), 0);
    assert_eq!(rfc3339_ms("2000-03-01T00:00:01.5Z"), 951_868_801_500);
    assert_eq!(rfc3339_ms("2026-12-03T21:02:39.344Z"), 1_796_331_759_344);
}

fn states(c: &Cluster, via: usize) -> Vec<(String, String)> {
    c.osctl_json(via, &["nodes"])["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn wait_states(c: &Cluster, via: usize, want_down: &[&str], within: Duration) -> Duration {
    let t0 = Instant::now();
    let ok = eventually(within, || {
        states(c, via).iter().all(|(id, st)| {
            let down = want_down.contains(&id.as_str());
            st == if down { "down" } else { "up" }
        })
    });
    assert!(
        ok,
        "nodes {want_down:?} (and only they) should be down within {within:?}: {:?}",
        states(c, via)
    );
    t0.elapsed()
}

/// The distinct nodes holding the shards of `blake3`, and how many shards there are.
fn shard_nodes(c: &Cluster, via: usize, blake3: &str) -> (usize, BTreeSet<String>) {
    let (s, j) = c.json(via, &format!("/locate/{blake3}"));
    assert_eq!(s, 200, "locate {blake3}: {j}");
    let shards = j["shards"].as_array().expect("shards");
    (
        shards.len(),
        shards
            .iter()
            .map(|s| s["node"].as_str().unwrap().to_string())
            .collect(),
    )
}

/// How many shards of `blake3` each node holds.
fn shards_per_node(c: &Cluster, via: usize, blake3: &str) -> BTreeMap<String, usize> {
    let (s, j) = c.json(via, &format!("/locate/{blake3}"));
    assert_eq!(s, 200, "locate {blake3}: {j}");
    let mut m = BTreeMap::new();
    for sh in j["shards"].as_array().expect("shards") {
        *m.entry(sh["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    m
}

struct Obj {
    key: String,
    body: Vec<u8>,
    blake3: String,
}

fn put(c: &Cluster, via: usize, key: &str, body: Vec<u8>) -> Obj {
    let r = c.put(via, key, body.clone());
    let status = r.status().as_u16();
    let j: serde_json::Value = r.json().expect("PUT JSON");
    assert_eq!(status, 201, "PUT {key} via node {via}: {j}");
    Obj {
        key: key.to_string(),
        blake3: j["blake3"].as_str().unwrap().to_string(),
        body,
    }
}

fn check_all(c: &Cluster, objs: &[Obj], via: &[usize]) {
    for (i, o) in objs.iter().enumerate() {
        let node = via[i % via.len()];
        let (s, b) = c.get_bytes(node, &o.key);
        assert_eq!(s, 200, "GET {} via node {node}", o.key);
        assert!(b == o.body, "GET {} via node {node}: bytes differ", o.key);
    }
}

#[test]
fn six_nodes_survive_two_failures_repair_and_two_more() {
    let mut c = Cluster::start(6, 2);
    let sizes = [1000usize, 70_000, 300_000, 1 << 20, 5 << 20];
    let mut objs = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        objs.push(put(
            &c,
            i % 6,
            &format!("obj/{i}"),
            random_bytes(i as u64, *size),
        ));
    }
    // Read back through other nodes; sharded objects sit on six distinct nodes.
    check_all(&c, &objs, &[3, 4, 5, 0, 1, 2]);
    for o in objs.iter().filter(|o| o.body.len() > 16 * 1024) {
        let (n, nodes) = shard_nodes(&c, 2, &o.blake3);
        assert_eq!((n, nodes.len()), (6, 6), "{}: {nodes:?}", o.key);
    }

    // Two nodes die: the control plane notices within ~10 s; everything still reads; writes go on.
    let down = [c.nodes[1].id.clone(), c.nodes[2].id.clone()];
    c.kill9(1);
    c.kill9(2);
    let took = wait_states(&c, 0, &[&down[0], &down[1]], Duration::from_secs(15));
    eprintln!("two nodes marked down {took:?} after kill -9");
    check_all(&c, &objs, &[0, 3, 4, 5]);
    let degraded_from = objs.len();
    for i in 0..4 {
        let k = objs.len();
        objs.push(put(
            &c,
            [0, 3, 4, 5][i],
            &format!("degraded/{i}"),
            random_bytes(100 + k as u64, 400_000 + i * 300_000),
        ));
    }
    check_all(&c, &objs, &[5, 4, 3, 0]);
    for o in &objs[degraded_from..] {
        let (n, nodes) = shard_nodes(&c, 0, &o.blake3);
        assert_eq!(n, 6);
        assert!(nodes.len() == 4 && !nodes.contains(&down[0]) && !nodes.contains(&down[1]));
    }

    // They return, one with its drive emptied; repair restores six distinct nodes per object.
    let emptied = c.nodes[2].drives[0].clone();
    std::fs::remove_dir_all(&emptied).expect("empty the drive");
    c.restart(1);
    c.restart(2);
    assert_eq!(
        (c.nodes[1].id.as_str(), c.nodes[2].id.as_str()),
        (down[0].as_str(), down[1].as_str()),
        "returning nodes keep their ids"
    );
    wait_states(&c, 0, &[], Duration::from_secs(15));
    let out = c.osctl(0, &["repair", "--wait", "--timeout", "180"]);
    assert!(out.status.success(), "osctl repair --wait: {out:?}");
    // The refilled drive is rebuilt by the background repair; wait for every object to be whole.
    let ok = eventually(Duration::from_secs(120), || {
        let out = c.osctl(0, &["repair", "--wait", "--timeout", "60"]);
        out.status.success()
            && objs
                .iter()
                .filter(|o| o.body.len() > 16 * 1024)
                .all(|o| shard_nodes(&c, 0, &o.blake3).1.len() == 6)
    });
    assert!(
        ok,
        "repair did not restore six distinct nodes for every object"
    );
    let refilled = ostore_tests::files_under(&emptied.join("shards"));
    assert!(!refilled.is_empty(), "the emptied drive was not refilled");

    // Two other nodes die: every object, including those written while degraded, reads back.
    let down2 = [c.nodes[3].id.clone(), c.nodes[4].id.clone()];
    c.kill9(3);
    c.kill9(4);
    wait_states(&c, 0, &[&down2[0], &down2[1]], Duration::from_secs(15));
    check_all(&c, &objs, &[0, 1, 2, 5]);
}

/// Six nodes with one drive each, 4+2 (a small cluster of one-disk machines): with one and
/// then two of them down, writes go on, a node holding two shards where it must (never more
/// than the two parity shards), and everything reads; when the nodes return, the objects
/// written meanwhile spread out to six nodes by themselves, after which any two nodes can go.
#[test]
fn writes_go_on_with_one_and_then_two_of_six_single_drive_nodes_down() {
    let mut c = Cluster::start(6, 1);
    let mut objs = vec![put(&c, 0, "before", random_bytes(1, 300_000))];
    let down = [c.nodes[5].id.clone(), c.nodes[4].id.clone()];
    c.kill9(5);
    wait_states(&c, 0, &[&down[0]], Duration::from_secs(15));
    for i in 0..3 {
        objs.push(put(
            &c,
            i,
            &format!("one-down/{i}"),
            random_bytes(10 + i as u64, 200_000 + i * 150_000),
        ));
    }
    c.kill9(4);
    wait_states(&c, 0, &[&down[0], &down[1]], Duration::from_secs(15));
    for i in 0..3 {
        objs.push(put(
            &c,
            3 - i,
            &format!("two-down/{i}"),
            random_bytes(20 + i as u64, 250_000 + i * 200_000),
        ));
    }
    check_all(&c, &objs, &[0, 1, 2, 3]);
    for (o, up) in objs[1..].iter().zip([5, 5, 5, 4, 4, 4]) {
        let per = shards_per_node(&c, 0, &o.blake3);
        assert_eq!(per.values().sum::<usize>(), 6, "{}: {per:?}", o.key);
        assert_eq!(per.len(), up, "{}: on every node up: {per:?}", o.key);
        assert!(
            per.values().all(|&n| n <= 2) && !per.contains_key(&down[0]),
            "{}: {per:?}",
            o.key
        );
    }

    // Back: the leader finds the objects written short of full spread and moves them apart.
    c.restart(5);
    c.restart(4);
    wait_states(&c, 0, &[], Duration::from_secs(15));
    let spread = eventually(Duration::from_secs(90), || {
        objs.iter().all(|o| {
            let (n, nodes) = shard_nodes(&c, 0, &o.blake3);
            n == 6 && nodes.len() == 6
        })
    });
    assert!(
        spread,
        "objects written with nodes down were not spread out: {:?}",
        objs.iter()
            .map(|o| shards_per_node(&c, 0, &o.blake3))
            .collect::<Vec<_>>()
    );
    let (a, b) = (c.nodes[0].id.clone(), c.nodes[1].id.clone());
    c.kill9(0);
    c.kill9(1);
    wait_states(&c, 2, &[&a, &b], Duration::from_secs(15));
    check_all(&c, &objs, &[2, 3, 4, 5]);
}

/// kill -9 of a node: the control plane's failure detector (phi accrual over heartbeats every
/// 250 ms) marks it down within 3 s; started again, it is up within a few heartbeats.
#[test]
fn a_killed_node_is_marked_down_within_three_seconds() {
    let mut c = Cluster::start(4, 1);
    let o = put(&c, 0, "held", random_bytes(60, 400_000));
    // A few seconds of heartbeats, so the detector has their rhythm.
    std::thread::sleep(Duration::from_secs(3));
    let dead = c.nodes[3].id.clone();
    let t0 = Instant::now();
    let killed_ms = unix_ms();
    c.kill9(3);
    let ok = eventually(Duration::from_secs(10), || {
        states(&c, 0)
            .iter()
            .any(|(id, st)| *id == dead && st == "down")
    });
    assert!(ok, "the killed node was not marked down within 10 s");
    // The detector's window is from the kill to when the control plane recorded the node down
    // (its `since`), not to when this test's polling (an osctl process per look, slow on a
    // loaded machine) happened to see it.
    let nodes = c.osctl_json(0, &["nodes"]);
    let since = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"].as_str() == Some(dead.as_str()))
        .and_then(|n| n["since"].as_str())
        .map(rfc3339_ms)
        .expect("the dead node's since");
    let took = Duration::from_millis(since.saturating_sub(killed_ms));
    eprintln!(
        "node marked down {took:?} after kill -9 (seen by polling after {:?})",
        t0.elapsed()
    );
    assert!(
        took <= Duration::from_secs(3),
        "the killed node was marked down after {took:?}, not within 3 s"
    );
    // The others stay up: the detector condemned only the silent one.
    wait_states(&c, 1, &[&dead], Duration::from_secs(1));
    // Reads go around the missing shards without rebuilding them: the node may be back
    // within the grace period (10 minutes by default).
    check_all(&c, std::slice::from_ref(&o), &[1, 2, 0]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.json(0, "/admin/status").1["repair_queued"], 0);
    assert!(shard_nodes(&c, 0, &o.blake3).1.contains(&dead));
    c.restart(3);
    let t1 = Instant::now();
    wait_states(&c, 0, &[], Duration::from_secs(15));
    eprintln!("node up again {:?} after its restart", t1.elapsed());
}

/// Latency quantile `q` of `v` (nearest rank).
fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

/// The body of the `i`-th PUT of a steady load: 200–500 kB, made from its seed.
fn load_body(i: u64) -> Vec<u8> {
    random_bytes(10_000 + i, 200_000 + (i as usize % 7) * 50_000)
}

/// A node hangs (SIGSTOP) for 30 s under a steady PUT and GET load through the other nodes:
/// no request fails, and GETs stay fast. Reads of a shard that is late go to parity after a
/// deadline drawn from recent read latency (hedged reads); a PUT whose shard file on the hung
/// node stops answering gives that file up and rebuilds the shard on another node before it
/// answers (or, when the file could not even be opened, places its shards again).
#[test]
fn a_node_stopped_for_thirty_seconds_under_load_costs_no_request() {
    let c = Cluster::start(6, 1);
    let stopped = 5;
    let via = [0usize, 1, 2, 3, 4];
    let objs: Vec<Obj> = (0..10)
        .map(|i| {
            put(
                &c,
                via[i % via.len()],
                &format!("steady/{i}"),
                random_bytes(500 + i as u64, 300_000),
            )
        })
        .collect();
    // Heartbeats settle, reads and round trips give the deadlines their rhythm.
    check_all(&c, &objs, &via);
    std::thread::sleep(Duration::from_secs(2));

    let hang = Duration::from_secs(30);
    let stop_at = Duration::from_secs(3);
    let end_at = stop_at + hang + Duration::from_secs(3);
    let t0 = Instant::now();
    let during = |at: Duration, took: Duration| at + took >= stop_at && at <= stop_at + hang;
    let (puts, gets, stop_was) = std::thread::scope(|s| {
        let puts = s.spawn(|| {
            let mut out = Vec::new();
            let mut i = 0u64;
            while t0.elapsed() < end_at {
                let node = via[i as usize % via.len()];
                let key = format!("load/{i}");
                let at = t0.elapsed();
                let r = c.put(node, &key, load_body(i));
                let took = t0.elapsed() - at;
                let status = r.status().as_u16();
                let text = r.text().unwrap_or_default();
                out.push((at, took, status, text, key, i));
                i += 1;
            }
            out
        });
        let gets = s.spawn(|| {
            let mut out = Vec::new();
            let mut i = 0usize;
            while t0.elapsed() < end_at {
                let node = via[i % via.len()];
                let o = &objs[i % objs.len()];
                let at = t0.elapsed();
                let (status, body) = c.get_bytes(node, &o.key);
                let took = t0.elapsed() - at;
                out.push((at, took, status, body == o.body, o.key.clone(), node));
                i += 1;
            }
            out
        });
        std::thread::sleep(stop_at.saturating_sub(t0.elapsed()));
        c.signal(stopped, libc::SIGSTOP);
        let stop_was = t0.elapsed();
        std::thread::sleep(hang);
        c.signal(stopped, libc::SIGCONT);
        (puts.join().unwrap(), gets.join().unwrap(), stop_was)
    });
    eprintln!("node {stopped} stopped at {stop_was:?} for {hang:?}");

    let put_lat: Vec<Duration> = puts
        .iter()
        .filter(|p| during(p.0, p.1))
        .map(|p| p.1)
        .collect();
    let get_lat: Vec<Duration> = gets
        .iter()
        .filter(|g| during(g.0, g.1))
        .map(|g| g.1)
        .collect();
    let failed_puts: Vec<String> = puts
        .iter()
        .filter(|p| p.2 != 201)
        .map(|p| format!("{} at {:?}: {} {}", p.4, p.0, p.2, p.3))
        .collect();
    let failed_gets: Vec<String> = gets
        .iter()
        .filter(|g| g.2 != 200 || !g.3)
        .map(|g| format!("{} at {:?}: {} (bytes right: {})", g.4, g.0, g.2, g.3))
        .collect();
    eprintln!(
        "during the hang: {} PUTs (p50 {:?}, p99 {:?}, max {:?}), {} GETs (p50 {:?}, p99 {:?}, \
         max {:?}); failed: {} PUTs, {} GETs of {} and {} in all",
        put_lat.len(),
        quantile(&put_lat, 0.5),
        quantile(&put_lat, 0.99),
        quantile(&put_lat, 1.0),
        get_lat.len(),
        quantile(&get_lat, 0.5),
        quantile(&get_lat, 0.99),
        quantile(&get_lat, 1.0),
        failed_puts.len(),
        failed_gets.len(),
        puts.len(),
        gets.len(),
    );
    for g in gets.iter().filter(|g| g.1 > Duration::from_millis(500)) {
        eprintln!(
            "slow GET {} via node {}: at {:?}, took {:?}",
            g.4, g.5, g.0, g.1
        );
    }
    assert!(failed_puts.is_empty(), "PUTs failed: {failed_puts:#?}");
    assert!(failed_gets.is_empty(), "GETs failed: {failed_gets:#?}");
    assert!(
        put_lat.len() >= 5 && get_lat.len() >= 50,
        "too little load to judge"
    );
    let p99 = quantile(&get_lat, 0.99);
    assert!(
        p99 < Duration::from_secs(1),
        "GET p99 during the hang: {p99:?}"
    );
    // Also over its first seconds alone, before the node is marked down: what a late shard
    // costs is bounded by the hedge, not by a time-out.
    let first: Vec<Duration> = gets
        .iter()
        .filter(|g| g.0 + g.1 >= stop_at && g.0 <= stop_at + Duration::from_secs(5))
        .map(|g| g.1)
        .collect();
    let p99_first = quantile(&first, 0.99);
    eprintln!(
        "GETs in the hang's first 5 s: {}, p99 {p99_first:?}",
        first.len()
    );
    assert!(
        p99_first < Duration::from_secs(1),
        "GET p99 in the hang's first 5 s: {p99_first:?}"
    );
    // Everything written under load reads back right, through every node, the one that hung
    // included (bodies made again from their seeds, not all held at once).
    for (n, p) in puts.iter().enumerate() {
        let obj = Obj {
            key: p.4.clone(),
            body: load_body(p.5),
            blake3: String::new(),
        };
        check_all(
            &c,
            std::slice::from_ref(&obj),
            &[[stopped, 0, 1, 2, 3, 4][n % 6]],
        );
    }
}

/// A node whose shard server stops reading while its QUIC stack and its heartbeats go on (the
/// wedge seen in the field: every operation to it timed out, for good, while it looked up).
/// Operations to it are given up on after a deadline drawn from recent round trips, its
/// connections are closed and made anew, PUTs and GETs through the other nodes go on; once it
/// reads again it takes new shards again, and nothing is left waiting.
#[test]
fn a_wedged_peer_connection_is_replaced_and_nothing_waits_on_it() {
    let c = Cluster::start(6, 1);
    let wedged = 5;
    let via = [0usize, 1, 2, 3, 4];
    let mut objs: Vec<Obj> = (0..6)
        .map(|i| {
            put(
                &c,
                i,
                &format!("wedge/{i}"),
                random_bytes(700 + i as u64, 300_000),
            )
        })
        .collect();
    // Every node has a live connection to the one about to wedge.
    check_all(&c, &objs, &via);
    c.signal(wedged, libc::SIGUSR1);
    let t0 = Instant::now();
    let mut i = 0usize;
    let mut slowest = Duration::ZERO;
    while t0.elapsed() < Duration::from_secs(15) {
        let node = via[i % via.len()];
        let at = Instant::now();
        objs.push(put(
            &c,
            node,
            &format!("wedged/{i}"),
            random_bytes(800 + i as u64, 250_000),
        ));
        check_all(&c, &objs[i % 6..i % 6 + 1], &[node]);
        slowest = slowest.max(at.elapsed());
        i += 1;
    }
    let replaced: f64 = via
        .iter()
        .map(|&n| c.metric(n, "ostore_peer_connections_replaced_total"))
        .sum();
    eprintln!(
        "{i} PUT+GET pairs in 15 s with node {wedged} wedged, none failed, slowest {slowest:?}; \
         {replaced} connection(s) to it replaced"
    );
    assert!(replaced >= 1.0, "no wedged connection was replaced");
    // Its heartbeats went on: it was never taken for dead.
    wait_states(&c, 0, &[], Duration::from_secs(1));
    c.signal(wedged, libc::SIGUSR1);
    let id = c.nodes[wedged].id.clone();
    let t1 = Instant::now();
    let mut k = 0;
    let back = eventually(Duration::from_secs(30), || {
        k += 1;
        let o = put(
            &c,
            k % 5,
            &format!("after/{k}"),
            random_bytes(900 + k as u64, 250_000),
        );
        let on_it = shard_nodes(&c, 0, &o.blake3).1.contains(&id);
        objs.push(o);
        on_it
    });
    assert!(
        back,
        "no new shard went to node {wedged} within 30 s of it reading again"
    );
    eprintln!(
        "node {wedged} took new shards {:?} after it read again",
        t1.elapsed()
    );
    let resolved = eventually(Duration::from_secs(60), || {
        c.json(0, "/admin/status").1["intents"]["open"].as_u64() == Some(0)
    });
    assert!(
        resolved,
        "intents left: {}",
        c.json(0, "/admin/status").1["intents"]
    );
    check_all(&c, &objs, &[wedged, 0, 1, 2, 3, 4]);
}

/// PUTs the moment a node dies, before it is marked down: each still succeeds, its shards
/// placed again around the node it cannot reach; the files it started are left to an intent
/// marked abandoned, which is resolved (files deleted, intent ended) within a minute of the
/// node's return, not after 24 h.
#[test]
fn puts_around_a_dead_node_leave_nothing_once_it_returns() {
    let mut c = Cluster::start(6, 1);
    c.kill9(5);
    let objs: Vec<Obj> = (0..5)
        .map(|i| {
            put(
                &c,
                i,
                &format!("around/{i}"),
                random_bytes(40 + i as u64, 300_000),
            )
        })
        .collect();
    check_all(&c, &objs, &[1, 2, 3, 4, 0]);
    let status = |c: &Cluster| c.json(0, "/admin/status").1;
    let abandoned = status(&c)["intents"]["abandoned"].as_u64().unwrap();
    assert!(abandoned > 0, "no PUT tried the dead node: {}", status(&c));
    c.restart(5);
    let t0 = Instant::now();
    let resolved = eventually(Duration::from_secs(60), || {
        status(&c)["intents"]["open"].as_u64() == Some(0)
    });
    assert!(
        resolved,
        "intents left a minute after the node returned: {}",
        status(&c)["intents"]
    );
    eprintln!(
        "{abandoned} abandoned intent(s) resolved {:?} after the node's return",
        t0.elapsed()
    );
    check_all(&c, &objs, &[5, 4, 3, 2, 1]);
}

#[test]
fn a_node_down_past_the_grace_period_is_rebuilt_elsewhere() {
    let mut c = Cluster::start_with(7, 1, &["--down-grace", "2s"]);
    let objs: Vec<Obj> = (0..4)
        .map(|i| {
            put(
                &c,
                i,
                &format!("g/{i}"),
                random_bytes(50 + i as u64, 200_000 * (i + 1)),
            )
        })
        .collect();
    let dead = c.nodes[6].id.clone();
    c.kill9(6);
    wait_states(&c, 0, &[&dead], Duration::from_secs(15));
    // Past the grace period every shard the dead node held is rebuilt on the six others.
    let ok = eventually(Duration::from_secs(60), || {
        objs.iter().all(|o| {
            let (n, nodes) = shard_nodes(&c, 0, &o.blake3);
            n == 6 && nodes.len() == 6 && !nodes.contains(&dead)
        })
    });
    assert!(ok, "the dead node's shards were not rebuilt elsewhere");
    // Now two more nodes can die and nothing is lost.
    let (d1, d2) = (c.nodes[0].id.clone(), c.nodes[1].id.clone());
    c.kill9(0);
    c.kill9(1);
    wait_states(&c, 2, &[&dead, &d1, &d2], Duration::from_secs(15));
    check_all(&c, &objs, &[2, 3, 4, 5]);
}

/// `osctl repair-rate` paces a rebuild, `osctl status` tells its progress (bytes to go, bytes
/// per second over every node, an ETA), and lifting the limit lets it finish.
#[test]
fn the_repair_rate_paces_a_rebuild_that_status_reports() {
    let mut c = Cluster::start_with(7, 1, &["--down-grace", "1s"]);
    let limit = 256 * 1024u64;
    let set = c.osctl_json(0, &["repair-rate", "256KiB"]);
    assert_eq!(set["limit_bytes_per_s"], limit, "{set}");
    let objs: Vec<Obj> = (0..8)
        .map(|i| {
            put(
                &c,
                i % 6,
                &format!("paced/{i}"),
                random_bytes(1200 + i as u64, 1_500_000),
            )
        })
        .collect();
    let dead = c.nodes[6].id.clone();
    c.kill9(6);
    wait_states(&c, 0, &[&dead], Duration::from_secs(15));
    // The rebuild runs, paced: status shows bytes to go, a rate within the six survivors'
    // limits, and an ETA.
    let mut seen = None;
    let ok = eventually(Duration::from_secs(30), || {
        let st = c.osctl_json(0, &["status"]);
        let r = &st["repair"];
        if r["bytes_to_go"].as_u64().unwrap_or(0) > 0
            && r["bytes_per_s"].as_u64().unwrap_or(0) > 0
            && r["eta_s"].as_u64().is_some()
        {
            seen = Some(r.clone());
        }
        seen.is_some()
    });
    let seen = seen.unwrap_or_default();
    assert!(
        ok,
        "status never showed a rebuild under way: {}",
        c.osctl_json(0, &["status"])
    );
    eprintln!("rebuild under a {limit} B/s limit per node: {seen}");
    assert_eq!(seen["limit_bytes_per_s"], limit, "{seen}");
    let rate = seen["bytes_per_s"].as_u64().unwrap();
    // Six survivors, each at most its limit (and one batch of burst) over the 10 s window.
    assert!(
        rate <= 6 * (limit + 1_600_000 / 10),
        "rebuild read {rate} B/s, over six nodes' limits of {limit} B/s"
    );
    let lifted = c.osctl_json(0, &["repair-rate", "unlimited"]);
    assert_eq!(lifted["limit_bytes_per_s"], "unlimited", "{lifted}");
    let t0 = Instant::now();
    let done = eventually(Duration::from_secs(60), || {
        objs.iter().all(|o| {
            let (n, nodes) = shard_nodes(&c, 0, &o.blake3);
            n == 6 && nodes.len() == 6 && !nodes.contains(&dead)
        })
    });
    assert!(
        done,
        "the rebuild did not finish once unlimited: {}",
        c.osctl_json(0, &["status"])
    );
    eprintln!(
        "rebuild finished {:?} after the limit was lifted",
        t0.elapsed()
    );
    let st = c.osctl_json(0, &["status"]);
    assert_eq!(st["repair"]["bytes_to_go"], 0, "{st}");
    let back = c.osctl_json(0, &["repair-rate", "default"]);
    assert_eq!(back["limit_bytes_per_s"], 256u64 << 20, "{back}");
    check_all(&c, &objs, &[0, 1, 2, 3, 4, 5]);
}

#[test]
fn too_few_nodes_refuse_writes_instead_of_risking_them() {
    // 4+2 on three nodes puts two shards on each: allowed. On two nodes one would hold three,
    // more than the two parity shards: refused with 503, nothing acknowledged.
    let mut c = Cluster::start(3, 3);
    let o = put(&c, 0, "three", random_bytes(7, 500_000));
    let (n, nodes) = shard_nodes(&c, 1, &o.blake3);
    assert_eq!((n, nodes.len()), (6, 3));
    resumable_upload_across_nodes(&c);
    // Draining one of three nodes would leave two: one would have to hold three shards.
    let out = c.osctl(0, &["drain", &c.nodes[2].id.clone()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{out:?}"
    );
    let dead = c.nodes[2].id.clone();
    c.kill9(2);
    wait_states(&c, 0, &[&dead], Duration::from_secs(15));
    let r = c.put(0, "two", random_bytes(8, 500_000));
    assert_eq!(r.status().as_u16(), 503);
    // A condition that passes, said as such: not 507 (the drives have room), with a retry time.
    assert!(r.headers().get("retry-after").is_some(), "{r:?}");
    let j: serde_json::Value = r.json().expect("error JSON");
    assert_eq!(j["error"]["code"], "ServiceUnavailable", "{j}");
    let m = j["error"]["message"].as_str().unwrap();
    assert!(m.contains("2 node(s) up, 3 needed"), "{m}");
    assert_eq!(c.json(0, "/admin/cluster").1["write_quorum"], 3);
    let (s, _) = c.get_bytes(1, "two");
    assert_eq!(s, 404);
    let (s, b) = c.get_bytes(1, "three");
    assert!(s == 200 && b == o.body);
}

/// An operator's write quorum above the minimum: three nodes could hold 4+2 safely, but the
/// cluster asks for four, so writes are refused until a fourth node is up.
#[test]
fn the_write_quorum_the_operator_sets_is_kept() {
    let mut c = Cluster::start_with(3, 2, &["--write-quorum", "4"]);
    assert_eq!(c.json(1, "/admin/cluster").1["write_quorum"], 4);
    let r = c.put(0, "short", random_bytes(9, 300_000));
    assert_eq!(r.status().as_u16(), 503);
    let j: serde_json::Value = r.json().expect("error JSON");
    let m = j["error"]["message"].as_str().unwrap();
    assert!(m.contains("3 node(s) up, 4 needed"), "{m}");
    // Small objects live in the metadata and need no quorum of drives.
    assert_eq!(c.put(0, "tiny", b"tiny".to_vec()).status().as_u16(), 201);
    c.add_node(1);
    let o = put(&c, 0, "enough", random_bytes(10, 300_000));
    let (n, nodes) = shard_nodes(&c, 3, &o.blake3);
    assert_eq!((n, nodes.len()), (6, 4));
}

/// A tus upload created on one node, continued on the others (whose shard files are on every
/// node), finished on the first; the object is stored compressed and reads back from any node.
fn resumable_upload_across_nodes(c: &Cluster) {
    let body = ostore_tests::json_lines(21, 3 * 1024 * 1024 + 12_345);
    let client = reqwest::blocking::Client::new();
    let tus = |node: usize, m: reqwest::Method, path: &str| {
        client
            .request(m, c.url(node, path))
            .bearer_auth(&c.secret)
            .header("tus-resumable", "1.0.0")
    };
    let r = tus(0, reqwest::Method::POST, "/uploads")
        .header("upload-length", body.len().to_string())
        .header("upload-metadata", "key dHVzL2NsdXN0ZXI=") // base64("tus/cluster")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let at = r.headers()["location"].to_str().unwrap().to_string();
    let cuts = [0, 1_000_000, 2_100_000, body.len()];
    for (i, w) in cuts.windows(2).enumerate() {
        let node = (i + 1) % 3;
        let r = tus(node, reqwest::Method::PATCH, &at)
            .header("upload-offset", w[0].to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(body[w[0]..w[1]].to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status(), 204, "PATCH {i} via node {node}: {:?}", r.text());
        if w[1] < body.len() {
            assert_eq!(c.get_bytes(2 - node, "tus/cluster").0, 404, "visible early");
        }
    }
    for node in 0..3 {
        let (s, got) = c.get_bytes(node, "tus/cluster");
        assert!(s == 200 && got == body, "via node {node}");
    }
    let (_, j) = c.json(1, &format!("/locate/{}", blake3::hash(&body).to_hex()));
    assert_eq!(j["encoding"], "zstd", "{j}");
    let r = client
        .get(c.url(2, "/objects/tus/cluster"))
        .bearer_auth(&c.secret)
        .header("range", "bytes=1500000-1600000")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().unwrap() == body[1_500_000..=1_600_000]);
}

/// Shard files under node `i`'s drives.
fn files_on(c: &Cluster, i: usize) -> usize {
    c.nodes[i]
        .drives
        .iter()
        .map(|d| ostore_tests::files_under(&d.join("shards")).len())
        .sum()
}

/// `osctl drain NODE --wait` through node `via` for node `i` (named by `name`, its id or
/// address): the drain ends with nothing left on the node, no shard, no intent, no file.
fn drain(c: &Cluster, via: usize, i: usize, name: &str) -> serde_json::Value {
    let j = c.osctl_json(via, &["drain", name, "--wait", "--timeout", "180"]);
    assert_eq!(j["state"], "drained", "{j}");
    assert_eq!(
        (j["shards"].as_u64(), j["intents"].as_u64()),
        (Some(0), Some(0)),
        "{j}"
    );
    assert_eq!(files_on(c, i), 0, "a drained node must hold no shard file");
    j
}

/// A drain that follows faults finishes: a node hung (SIGSTOP) and a wedged shard server, each
/// under writes, then a node killed while writes go on (its PUTs' first files left to intents
/// that could not delete them) and started again. Draining that node then ends, holding
/// nothing, with no intent left to wait on.
#[test]
fn a_drain_after_faults_finishes() {
    let mut c = Cluster::start(7, 1);
    let mut objs: Vec<Obj> = Vec::new();
    let mut n = 0u64;
    let mut write = |c: &Cluster, objs: &mut Vec<Obj>, via: &[usize], count: usize| {
        for _ in 0..count {
            n += 1;
            let node = via[n as usize % via.len()];
            objs.push(put(c, node, &format!("f/{n}"), random_bytes(n, 280_000)));
        }
    };
    write(&c, &mut objs, &[0, 1, 2, 3, 4, 5, 6], 7);
    // A hang.
    c.signal(4, libc::SIGSTOP);
    let t = Instant::now();
    write(&c, &mut objs, &[0, 1, 2, 3], 6);
    std::thread::sleep(Duration::from_secs(6).saturating_sub(t.elapsed()));
    c.signal(4, libc::SIGCONT);
    // A wedge.
    c.signal(3, libc::SIGUSR1);
    write(&c, &mut objs, &[0, 1, 2, 4, 5], 6);
    c.signal(3, libc::SIGUSR1);
    // A death, writes meanwhile, and a return.
    c.kill9(5);
    write(&c, &mut objs, &[0, 1, 2, 3, 4], 6);
    c.restart(5);
    wait_states(&c, 0, &[], Duration::from_secs(20));
    write(&c, &mut objs, &[0, 1, 2, 3, 4, 5, 6], 4);

    let leaving = c.nodes[5].id.clone();
    let t0 = Instant::now();
    let j = drain(&c, 0, 5, &leaving);
    eprintln!("drain after faults finished in {:?}: {j}", t0.elapsed());
    check_all(&c, &objs, &[0, 1, 2, 3, 4, 6]);
}

#[test]
fn a_drained_node_holds_nothing_and_two_more_losses_lose_nothing() {
    let mut c = Cluster::start(7, 2);
    let mut objs: Vec<Obj> = (0..14)
        .map(|i| {
            let size = [1000usize, 90_000, 400_000, 1 << 20, 3 << 20][i % 5];
            put(
                &c,
                i % 7,
                &format!("d/{i}"),
                random_bytes(900 + i as u64, size),
            )
        })
        .collect();
    let leaving = c.nodes[6].id.clone();
    assert!(
        files_on(&c, 6) > 0,
        "node 6 should hold shards before the drain"
    );

    // Drain node 6 by id, from node 0, while writes go on: they avoid the draining node.
    c.osctl_json(0, &["drain", &leaving]);
    for i in 0..3 {
        objs.push(put(
            &c,
            i,
            &format!("during/{i}"),
            random_bytes(70 + i as u64, 600_000),
        ));
    }
    drain(&c, 1, 6, &leaving);
    let (_, v) = c.json(0, "/admin/cluster");
    let me = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == leaving.as_str())
        .unwrap();
    assert_eq!(me["drain"], "drained", "{v}");
    let st = c.osctl_json(4, &["status"]);
    let job = st["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "drain")
        .unwrap_or_else(|| panic!("no drain job in {st}"))
        .clone();
    assert_eq!(
        (
            job["node"].as_str(),
            job["state"].as_str(),
            job["shards_left"].as_i64()
        ),
        (Some(leaving.as_str()), Some("drained"), Some(0)),
        "{job}"
    );
    assert_eq!(st["objects"].as_i64(), Some(objs.len() as i64), "{st}");
    for o in objs.iter().filter(|o| o.body.len() > 16 * 1024) {
        let (n, nodes) = shard_nodes(&c, 0, &o.blake3);
        assert!(
            n == 6 && nodes.len() == 6 && !nodes.contains(&leaving),
            "{}: {nodes:?}",
            o.key
        );
    }

    // Undrain: the node takes shards again; drained again by its address.
    let out = c.osctl(2, &["undrain", &leaving]);
    assert!(out.status.success(), "osctl undrain: {out:?}");
    let ok = eventually(Duration::from_secs(30), || {
        let k = objs.len();
        objs.push(put(
            &c,
            1,
            &format!("after/{k}"),
            random_bytes(k as u64, 200_000),
        ));
        files_on(&c, 6) > 0
    });
    assert!(ok, "an undrained node should take new shards");
    drain(&c, 3, 6, &c.nodes[6].http.clone());

    // The drained node and one more die: nothing is lost.
    let other = c.nodes[0].id.clone();
    c.kill9(6);
    c.kill9(0);
    wait_states(&c, 1, &[&leaving, &other], Duration::from_secs(15));
    check_all(&c, &objs, &[1, 2, 3, 4, 5]);
    let st = c.osctl_json(1, &["status"]);
    assert!(
        st["missing_shards"].as_i64() > Some(0),
        "node 0's shards are missing: {st}"
    );
}

#[test]
fn a_new_node_gets_its_share_by_rebalance() {
    let mut c = Cluster::start(6, 1);
    let objs: Vec<Obj> = (0..14)
        .map(|i| {
            put(
                &c,
                i % 6,
                &format!("r/{i}"),
                random_bytes(300 + i as u64, 150_000 + i * 20_000),
            )
        })
        .collect();
    let shards_per_node = |c: &Cluster| -> Vec<(String, i64)> {
        let st = c.osctl_json(0, &["status"]);
        let mut per: Vec<(String, i64)> = Vec::new();
        for d in st["shards_per_drive"].as_array().unwrap() {
            let n = d["node"].as_str().unwrap().to_string();
            let k = d["shards"].as_i64().unwrap();
            match per.iter_mut().find(|(x, _)| *x == n) {
                Some((_, t)) => *t += k,
                None => per.push((n, k)),
            }
        }
        per
    };
    assert!(
        shards_per_node(&c).iter().all(|(_, k)| *k == 14),
        "{:?}",
        shards_per_node(&c)
    );
    let new = c.add_node(1);
    let id = c.nodes[new].id.clone();
    // 84 shards over 7 nodes: 12 each. The new node fills up to within 5 % of that.
    let ok = eventually(Duration::from_secs(90), || {
        shards_per_node(&c)
            .iter()
            .all(|(_, k)| (11..=13).contains(k))
    });
    assert!(ok, "not rebalanced: {:?}", shards_per_node(&c));
    assert!(
        files_on(&c, new) >= 11,
        "the new node holds the shard files"
    );
    // Every object still spans six distinct nodes and reads back exactly through the new node.
    for o in &objs {
        let (n, nodes) = shard_nodes(&c, new, &o.blake3);
        assert!(n == 6 && nodes.len() == 6, "{}: {nodes:?}", o.key);
    }
    check_all(&c, &objs, &[new]);
    assert!(shards_per_node(&c).iter().any(|(n, _)| *n == id));
}

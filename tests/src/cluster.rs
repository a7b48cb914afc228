//! Harness for cluster tests: `ostore control` (one over redb, or several over a local etcd
//! cluster) and N `ostore node`s on loopback, each node with its own drive directories in one
//! temporary directory.

use crate::binary;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn ready_line(child: &mut Child, what: &str) -> String {
    crate::ready_line(child, what, Duration::from_secs(90))
}

fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name}= missing from {line:?}"))
        .to_string()
}

/// Sends signal `sig` to the child process `pid` this harness started.
fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child process this harness owns.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A port below the usual ephemeral range (32768+) that is free for both TCP and UDP now, and
/// never handed out before in this process. A port is free while the node holding it is
/// killed and not yet restarted; handed to another cluster then, both nodes would listen on it
/// (the executors bind with SO_REUSEPORT) and split its connections between two secrets.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let p: u16 = rand::random::<u16>() % 12_000 + 20_000;
        if given.contains(&p) {
            continue;
        }
        let tcp = std::net::TcpListener::bind(("127.0.0.1", p));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", p));
        if tcp.is_ok() && udp.is_ok() {
            given.push(p);
            return p;
        }
    }
    panic!("no free port in 20000..32000")
}

fn log_level() -> String {
    std::env::var("OSTORE_TEST_LOG").unwrap_or_else(|_| "warn".into())
}

pub struct Node {
    child: Option<Child>,
    pub id: String,
    pub http: String,
    pub peer: String,
    pub drives: Vec<PathBuf>,
    /// The S3 API's address, on clusters started with [`Cluster::start_https`].
    pub s3: Option<String>,
}

/// One `ostore control` process.
pub struct ControlProc {
    child: Option<Child>,
    /// Its API address (fixed, so a restarted process is found where it was).
    pub addr: String,
}

pub struct Cluster {
    dir: tempfile::TempDir,
    pub controls: Vec<ControlProc>,
    /// What every control process is started with after `--meta`.
    meta: String,
    control_args: Vec<String>,
    /// The etcd cluster the control processes share, when there are several.
    pub etcd: Option<ostore_etcd::local::LocalEtcd>,
    /// The client root secret (nodes check client requests with it).
    pub secret: String,
    /// The operator's cluster key (control processes and `osctl nodes token` only).
    pub cluster_key: String,
    pub nodes: Vec<Node>,
    client: reqwest::blocking::Client,
    /// With [`Cluster::start_https`]: the CA (PEM file) that signed the nodes' certificate.
    pub tls_ca: Option<PathBuf>,
    /// And the certificate and key every node serves the client APIs with.
    tls_files: Option<(PathBuf, PathBuf)>,
}

/// A CA and a certificate for `127.0.0.1`/`localhost` it signed, as PEM files under `dir`:
/// (ca.pem, cert.pem, key.pem).
pub fn server_certificate(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut p =
        CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).expect("params");
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let cert = p.signed_by(&key, &ca_cert, &ca_key).expect("certificate");
    std::fs::create_dir_all(dir).expect("dir");
    let (a, b, c) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&a, ca_cert.pem()).expect("write");
    std::fs::write(&b, cert.pem()).expect("write");
    std::fs::write(&c, key.serialize_pem()).expect("write");
    (a, b, c)
}

impl Cluster {
    /// Starts a control process and `nodes` nodes with `drives` drives each.
    pub fn start(nodes: usize, drives: usize) -> Cluster {
        Self::start_with(nodes, drives, &[])
    }

    /// As [`start`](Self::start), with extra arguments for `ostore control`.
    pub fn start_with(nodes: usize, drives: usize, control_args: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("ostore-cluster-")
            .tempdir()
            .expect("tempdir");
        let meta = format!("redb:{}", dir.path().join("meta/control.redb").display());
        Self::start_over(dir, None, meta, 1, nodes, drives, control_args, false)
    }

    /// As [`start`](Self::start), with every node serving the client APIs over HTTPS (a
    /// certificate from a test CA, [`Cluster::tls_ca`]): TLS on every listener.
    pub fn start_https(nodes: usize, drives: usize) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("ostore-cluster-")
            .tempdir()
            .expect("tempdir");
        let meta = format!("redb:{}", dir.path().join("meta/control.redb").display());
        Self::start_over(dir, None, meta, 1, nodes, drives, &[], true)
    }

    /// A highly available control plane: an etcd cluster of `etcd_members` on loopback
    /// (Debian's `etcd-server`, TLS on between members and to the control processes, each
    /// side's certificate checked), `controls` control processes over it, and `nodes` nodes
    /// that are given every control process.
    pub fn start_ha(controls: usize, etcd_members: usize, nodes: usize, drives: usize) -> Cluster {
        Self::start_ha_over(controls, etcd_members, nodes, drives, false)
    }

    /// As [`start_ha`](Self::start_ha), with the nodes serving the client APIs over HTTPS as
    /// [`start_https`](Self::start_https) does: TLS on every link, etcd's included.
    pub fn start_ha_https(
        controls: usize,
        etcd_members: usize,
        nodes: usize,
        drives: usize,
    ) -> Cluster {
        Self::start_ha_over(controls, etcd_members, nodes, drives, true)
    }

    fn start_ha_over(
        controls: usize,
        etcd_members: usize,
        nodes: usize,
        drives: usize,
        https: bool,
    ) -> Cluster {
        if ostore_etcd::local::etcd_binary().is_none() {
            crate::missing_prerequisite(
                "Cluster::start_ha",
                "the etcd binary (Debian's etcd-server, or ETCD_BIN)",
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("ostore-cluster-")
            .tempdir()
            .expect("tempdir");
        let etcd_dir = dir.path().join("etcd");
        std::fs::create_dir_all(&etcd_dir).expect("etcd dir");
        let etcd =
            ostore_etcd::local::LocalEtcd::start_tls(&etcd_dir, etcd_members, &mut free_port)
                .unwrap_or_else(|e| panic!("starting etcd: {e}"));
        let meta = format!("etcd:{}", etcd.spec());
        Self::start_over(dir, Some(etcd), meta, controls, nodes, drives, &[], https)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_over(
        dir: tempfile::TempDir,
        etcd: Option<ostore_etcd::local::LocalEtcd>,
        meta: String,
        controls: usize,
        nodes: usize,
        drives: usize,
        control_args: &[&str],
        https: bool,
    ) -> Cluster {
        let secret = hex::encode(rand::random::<[u8; 16]>());
        let cluster_key = hex::encode(rand::random::<[u8; 24]>());
        let (mut client, mut tls_ca, mut tls_files) = (
            reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)),
            None,
            None,
        );
        if https {
            let (ca, cert, key) = server_certificate(&dir.path().join("tls"));
            let pem = std::fs::read(&ca).expect("CA");
            client = client.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"));
            tls_ca = Some(ca);
            tls_files = Some((cert, key));
        }
        let mut c = Cluster {
            cluster_key,
            tls_ca,
            tls_files,
            dir,
            controls: Vec::new(),
            meta,
            control_args: control_args.iter().map(|a| a.to_string()).collect(),
            etcd,
            secret,
            nodes: Vec::new(),
            client: client.build().expect("http client"),
        };
        for _ in 0..controls {
            let mut p = ControlProc {
                child: None,
                addr: format!("127.0.0.1:{}", free_port()),
            };
            c.launch_control(&mut p);
            c.controls.push(p);
        }
        for i in 0..nodes {
            let drives = (0..drives)
                .map(|d| c.dir.path().join(format!("node-{i}/drive-{d}")))
                .collect();
            // Fixed ports below the ephemeral range, so that a restarted node finds its
            // addresses free (an ephemeral port may be reused by any outgoing connection).
            let mut n = Node {
                child: None,
                id: String::new(),
                http: format!("127.0.0.1:{}", free_port()),
                peer: format!("127.0.0.1:{}", free_port()),
                drives,
                s3: https.then(|| format!("127.0.0.1:{}", free_port())),
            };
            c.launch(&mut n);
            c.nodes.push(n);
        }
        c.wait_all_see_all();
        c
    }

    fn launch_control(&self, p: &mut ControlProc) {
        let mut cmd = Command::new(binary("ostore"));
        cmd.args(["control", "--listen", &p.addr, "--meta", &self.meta]);
        if let Some(t) = self.etcd.as_ref().and_then(|e| e.client_tls()) {
            cmd.arg("--etcd-ca")
                .arg(&t.ca)
                .arg("--etcd-cert")
                .arg(&t.cert)
                .arg("--etcd-key")
                .arg(&t.key);
        }
        let mut child = cmd
            .args(&self.control_args)
            .env_remove("OSTORE_SECRET")
            .env("OSTORE_CLUSTER_KEY", &self.cluster_key)
            .env("OSTORE_LOG", log_level())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ostore control");
        let line = ready_line(&mut child, "ostore control");
        p.addr = field(&line, "control");
        p.child = Some(child);
    }

    /// What control process `i` says of itself on `/health`: `Some(term)` while it leads,
    /// `None` as a follower or when it does not answer within a second.
    pub fn control_leads(&self, i: usize) -> Option<u64> {
        let r = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(1))
            // Its certificate is for the cluster CA's name; the role is all that is asked.
            .danger_accept_invalid_certs(true)
            .build()
            .ok()?
            .get(format!("https://{}/health", self.controls[i].addr))
            .send()
            .ok()?;
        let body = r.text().ok()?;
        body.strip_prefix("ok leader term ")?.trim().parse().ok()
    }

    /// The running control process that leads, with its term, if one says so.
    pub fn leader(&self) -> Option<(usize, u64)> {
        (0..self.controls.len())
            .filter(|&i| self.controls[i].child.is_some())
            .find_map(|i| self.control_leads(i).map(|t| (i, t)))
    }

    /// The PID of control process `i`.
    pub fn control_pid(&self, i: usize) -> u32 {
        self.controls[i]
            .child
            .as_ref()
            .expect("control running")
            .id()
    }

    /// Sends signal `sig` to control process `i`.
    pub fn signal_control(&self, i: usize, sig: i32) {
        signal(self.control_pid(i), sig);
    }

    /// Waits until every running node's view lists every node up (views refresh each second).
    pub fn wait_all_see_all(&self) {
        let n = self.nodes.len();
        for i in (0..n).filter(|&i| self.nodes[i].child.is_some()) {
            let ok = crate::eventually(Duration::from_secs(15), || {
                let (s, j) = self.json(i, "/admin/cluster");
                s == 200
                    && j["nodes"]
                        .as_array()
                        .is_some_and(|a| a.len() == n && a.iter().all(|x| x["state"] == "up"))
            });
            assert!(ok, "node {i} does not see all {n} nodes up");
        }
    }

    fn launch(&self, n: &mut Node) {
        let mut cmd = Command::new(binary("ostore"));
        let controls: Vec<&str> = self.controls.iter().map(|c| c.addr.as_str()).collect();
        cmd.args([
            "node",
            "--control",
            &controls.join(","),
            "--http",
            &n.http,
            "--peer",
            &n.peer,
            "--cores",
            "1",
        ]);
        for d in &n.drives {
            cmd.arg("--drive").arg(d);
        }
        if let Some((cert, key)) = &self.tls_files {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        if let Some(s3) = &n.s3 {
            cmd.args(["--s3", s3]);
        }
        // A node that joined before (a restart) finds its identity on its drives and is given
        // no token, as an operator would not.
        if n.drives
            .iter()
            .any(|d| d.join("node-identity.pem").exists())
        {
            cmd.env_remove("OSTORE_JOIN_TOKEN");
        } else {
            cmd.env("OSTORE_JOIN_TOKEN", self.join_token("1h"));
        }
        // Faults a test can switch on with SIGUSR1 (see the data plane's `faults`).
        let mut child = cmd
            .env("OSTORE_FAULTS", "1")
            .env("OSTORE_SECRET", &self.secret)
            .env("OSTORE_LOG", log_level())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ostore node");
        let line = ready_line(&mut child, "ostore node");
        n.id = field(&line, "node");
        n.http = field(&line, "http");
        n.peer = field(&line, "peer");
        if n.s3.is_some() {
            n.s3 = Some(field(&line, "s3"));
        }
        n.child = Some(child);
    }

    /// A fresh join token from `osctl nodes token --ttl TTL` with the cluster key.
    pub fn join_token(&self, ttl: &str) -> String {
        let out = Command::new(binary("osctl"))
            .args(["nodes", "token", "--ttl", ttl])
            .env("OSTORE_CLUSTER_KEY", &self.cluster_key)
            .stderr(Stdio::inherit())
            .output()
            .expect("run osctl nodes token");
        assert!(out.status.success(), "osctl nodes token failed");
        String::from_utf8(out.stdout)
            .expect("UTF-8")
            .trim()
            .to_string()
    }

    /// Starts one more node with `drives` drives; returns its index.
    pub fn add_node(&mut self, drives: usize) -> usize {
        let i = self.nodes.len();
        let mut n = Node {
            child: None,
            id: String::new(),
            http: format!("127.0.0.1:{}", free_port()),
            peer: format!("127.0.0.1:{}", free_port()),
            drives: (0..drives)
                .map(|d| self.dir.path().join(format!("node-{i}/drive-{d}")))
                .collect(),
            s3: self
                .tls_files
                .is_some()
                .then(|| format!("127.0.0.1:{}", free_port())),
        };
        self.launch(&mut n);
        self.nodes.push(n);
        self.wait_all_see_all();
        i
    }

    /// SIGKILL of node `i`.
    pub fn kill9(&mut self, i: usize) {
        kill(&mut self.nodes[i].child);
    }

    /// Sends signal `sig` (`libc::SIGSTOP`, `libc::SIGCONT`, ...) to node `i`.
    pub fn signal(&self, i: usize, sig: i32) {
        signal(
            self.nodes[i].child.as_ref().expect("node running").id(),
            sig,
        );
    }

    /// Starts node `i` again on the same addresses (so it is the same member).
    pub fn restart(&mut self, i: usize) {
        kill(&mut self.nodes[i].child);
        let mut n = std::mem::replace(
            &mut self.nodes[i],
            Node {
                child: None,
                id: String::new(),
                http: String::new(),
                peer: String::new(),
                drives: Vec::new(),
                s3: None,
            },
        );
        self.launch(&mut n);
        self.nodes[i] = n;
    }

    pub fn url(&self, node: usize, path: &str) -> String {
        format!("{}://{}{}", self.scheme(), self.nodes[node].http, path)
    }

    /// `https` when the nodes serve HTTPS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn put(&self, node: usize, key: &str, body: Vec<u8>) -> reqwest::blocking::Response {
        self.client
            .put(self.url(node, &format!("/objects/{key}")))
            .bearer_auth(&self.secret)
            .body(body)
            .send()
            .expect("PUT")
    }

    /// A PUT that reports a failure to send instead of panicking (for load during faults).
    pub fn try_put(&self, node: usize, key: &str, body: Vec<u8>) -> Result<u16, String> {
        self.client
            .put(self.url(node, &format!("/objects/{key}")))
            .bearer_auth(&self.secret)
            .timeout(Duration::from_secs(20))
            .body(body)
            .send()
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    }

    /// A GET that reports a failure instead of panicking.
    pub fn try_get(&self, node: usize, key: &str) -> Result<(u16, Vec<u8>), String> {
        let r = self
            .client
            .get(self.url(node, &format!("/objects/{key}")))
            .bearer_auth(&self.secret)
            .timeout(Duration::from_secs(20))
            .send()
            .map_err(|e| e.to_string())?;
        let s = r.status().as_u16();
        Ok((s, r.bytes().map_err(|e| e.to_string())?.to_vec()))
    }

    pub fn get_bytes(&self, node: usize, key: &str) -> (u16, Vec<u8>) {
        let r = self
            .client
            .get(self.url(node, &format!("/objects/{key}")))
            .bearer_auth(&self.secret)
            .send()
            .expect("GET");
        let s = r.status().as_u16();
        (s, r.bytes().expect("body").to_vec())
    }

    pub fn json(&self, node: usize, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .get(self.url(node, path))
            .bearer_auth(&self.secret)
            .send()
            .expect("GET");
        let s = r.status().as_u16();
        (s, r.json().unwrap_or(serde_json::Value::Null))
    }

    /// The value of a counter or gauge in node `i`'s `/metrics` (panics if it is missing).
    pub fn metric(&self, i: usize, name: &str) -> f64 {
        let text = self
            .client
            .get(self.url(i, "/metrics"))
            .bearer_auth(&self.secret)
            .send()
            .expect("GET /metrics")
            .text()
            .expect("metrics");
        crate::metric_in(&text, name)
    }

    /// `osctl --json ARGS` against node `via`; panics unless it succeeds.
    pub fn osctl_json(&self, via: usize, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.osctl(via, &all);
        assert!(out.status.success(), "osctl {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("osctl JSON")
    }

    /// `osctl` against node `via`, with the cluster secret.
    pub fn osctl(&self, via: usize, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(binary("osctl"));
        if let Some(ca) = &self.tls_ca {
            cmd.arg("--tls-ca").arg(ca);
        }
        cmd.arg("--endpoint")
            .arg(format!("{}://{}", self.scheme(), self.nodes[via].http))
            .args(args)
            .env("OSTORE_SECRET", &self.secret)
            .output()
            .expect("run osctl")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            kill(&mut n.child);
        }
        for c in &mut self.controls {
            // SIGKILL ends a stopped (SIGSTOP) process too.
            kill(&mut c.child);
        }
        // The etcd members (if any) go with `self.etcd`.
    }
}

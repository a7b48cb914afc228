//! A local etcd cluster on loopback, started from the `etcd` binary (Debian's `etcd-server`,
//! or `$ETCD_BIN`): what the tests run the etcd backend against, and a way to try a highly
//! available control plane on one machine. Members are started and killed by PID; dropping
//! the cluster kills every member it started.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The settings ostore needs of every etcd member (see KEYS.md, "On etcd"): transactions of
/// up to this many guards and writes.
pub const MAX_TXN_OPS: u32 = 16_384;
/// Requests up to this size (etcd's default is 1.5 MiB).
pub const MAX_REQUEST_BYTES: u32 = 8 << 20;

struct Member {
    name: String,
    client: u16,
    peer: u16,
    /// Plain HTTP `/health` and `/metrics` (`--listen-metrics-urls`), also with TLS on.
    metrics: u16,
    child: Option<Child>,
}

pub struct LocalEtcd {
    dir: PathBuf,
    members: Vec<Member>,
    token: String,
    /// With TLS: the members' own files (the CA, their certificate and key), used for the
    /// client port and between members, each side's certificate checked.
    server: Option<crate::EtcdTls>,
    /// And a client's: what `ostore control --etcd-ca --etcd-cert --etcd-key` takes.
    client: Option<crate::EtcdTls>,
}

/// The etcd binary: `$ETCD_BIN`, else `etcd` on the `PATH`.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    })
}

/// A port the kernel says is free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Fails the test `test` unless the etcd binary is there, saying what to install (and, under
/// `CI`, that the CI script must install it).
pub fn require_etcd(test: &str) {
    if etcd_binary().is_some() {
        return;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if ci {
        panic!("{test}: prerequisite missing under CI: the etcd binary (Debian's etcd-server); .ci/run must install it");
    }
    panic!(
        "{test}: prerequisite missing: the etcd binary (Debian's etcd-server, or ETCD_BIN). \
         Install it, or leave this test out visibly: cargo test --workspace -- --skip {test}"
    );
}

impl LocalEtcd {
    /// Starts `n` members under `dir` (their data and logs), on ports from `port`, and waits
    /// until every one answers as healthy.
    pub fn start(dir: &Path, n: usize, port: &mut dyn FnMut() -> u16) -> Result<Self, String> {
        Self::start_over(dir, n, port, false)
    }

    /// As [`start`](Self::start), with TLS on the client port and between members (mutual:
    /// etcd's `--client-cert-auth` and `--peer-client-cert-auth`), from a CA made for the
    /// cluster under `dir/tls`; [`client_tls`](Self::client_tls) is a client's certificate.
    pub fn start_tls(dir: &Path, n: usize, port: &mut dyn FnMut() -> u16) -> Result<Self, String> {
        Self::start_over(dir, n, port, true)
    }

    fn start_over(
        dir: &Path,
        n: usize,
        port: &mut dyn FnMut() -> u16,
        tls: bool,
    ) -> Result<Self, String> {
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: port(),
                peer: port(),
                metrics: port(),
                child: None,
            })
            .collect();
        let (server, client) = if tls {
            let (s, c) = make_certificates(&dir.join("tls"))?;
            (Some(s), Some(c))
        } else {
            (None, None)
        };
        let mut etcd = LocalEtcd {
            dir: dir.to_path_buf(),
            members,
            token: format!("ostore-{:016x}", rand::random::<u64>()),
            server,
            client,
        };
        for i in 0..n {
            etcd.spawn(i)?;
        }
        for i in 0..n {
            etcd.wait_healthy(i, Duration::from_secs(30))?;
        }
        Ok(etcd)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let bin = etcd_binary().ok_or(
            "the etcd binary was not found: install Debian's etcd-server, or set ETCD_BIN",
        )?;
        let scheme = self.scheme();
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={scheme}://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let data = self.dir.join(&m.name);
        let log = self.dir.join(format!("{}.log", m.name));
        let client = format!("{scheme}://127.0.0.1:{}", m.client);
        let peer = format!("{scheme}://127.0.0.1:{}", m.peer);
        let mut cmd = Command::new(&bin);
        if let Some(t) = &self.server {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--cert-file")
                .arg(&t.cert)
                .arg("--key-file")
                .arg(&t.key)
                .arg("--peer-client-cert-auth")
                .arg("--peer-trusted-ca-file")
                .arg(&t.ca)
                .arg("--peer-cert-file")
                .arg(&t.cert)
                .arg("--peer-key-file")
                .arg(&t.key);
        }
        let child = cmd
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", m.metrics),
            ])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--max-txn-ops", &MAX_TXN_OPS.to_string()])
            .args(["--max-request-bytes", &MAX_REQUEST_BYTES.to_string()])
            .args(["--auto-compaction-mode", "revision"])
            .args(["--auto-compaction-retention", "10000"])
            // Loopback: a leader is missed after 1 s, not the default 1 s of a WAN-tuned
            // cluster's 100 ms heartbeats times ten (the same numbers, said explicitly).
            .args(["--heartbeat-interval", "100"])
            .args(["--election-timeout", "1000"])
            .args(["--logger", "zap"])
            .arg("--log-outputs")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until member `i` says it is healthy (it has a leader and serves reads).
    pub fn wait_healthy(&mut self, i: usize, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = self.members[i].child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "etcd member {} exited ({status}); its log: {}",
                        self.members[i].name,
                        self.log_tail(i)
                    ));
                }
            }
            if health(self.members[i].metrics) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd member {} not healthy within {within:?}; its log: {}",
                    self.members[i].name,
                    self.log_tail(i)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self, i: usize) -> String {
        let log = self.dir.join(format!("{}.log", self.members[i].name));
        let s = std::fs::read_to_string(log).unwrap_or_default();
        let start = s.len().saturating_sub(2000);
        s.get(start..).unwrap_or_default().to_string()
    }

    /// `HOST:PORT,…` of every member: what `--meta etcd:` takes.
    pub fn spec(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client))
            .collect()
    }

    fn scheme(&self) -> &'static str {
        if self.server.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// With [`start_tls`](Self::start_tls): a client's CA, certificate and key files.
    pub fn client_tls(&self) -> Option<&crate::EtcdTls> {
        self.client.as_ref()
    }

    /// The PID of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A CA under `dir`, a certificate it signed for the members (`127.0.0.1`, `localhost`; used
/// as server and as client between members) and one for a client: the members' files and the
/// client's.
fn make_certificates(dir: &Path) -> Result<(crate::EtcdTls, crate::EtcdTls), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let e = |e: rcgen::Error| format!("making etcd's test certificates: {e}");
    let write = |p: &Path, text: String| {
        std::fs::write(p, text).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "local etcd CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let ca_path = dir.join("ca.pem");
    write(&ca_path, ca_cert.pem())?;
    let issue = |name: &str| -> Result<crate::EtcdTls, String> {
        let key = KeyPair::generate().map_err(e)?;
        let mut p =
            CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).map_err(e)?;
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(e)?;
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        write(&c, cert.pem())?;
        write(&k, key.serialize_pem())?;
        Ok(crate::EtcdTls {
            ca: ca_path.clone(),
            cert: c,
            key: k,
        })
    };
    Ok((issue("member")?, issue("client")?))
}

/// Whether the member with metrics port `port` answers `/health` with `"health":"true"`.
fn health(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

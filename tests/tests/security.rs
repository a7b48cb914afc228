//! The cluster's security model, tried as an attacker holding what a client holds (the root
//! secret), what an outsider holds (a CA of their own), and what a removed node holds (its
//! revoked certificate): on the peer port (QUIC, mutual TLS) and on the control-plane API
//! (HTTPS, mutual TLS), with the legitimate credential as the control experiment each time.

use ostore_tests::cluster::Cluster;
use ostore_tests::eventually;
use ostore_transport::tls::{ClusterCa, Identity, NODE_NAME};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Accepts any server certificate: the attacker does not care who the server is, it only
/// wants in.
#[derive(Debug)]
struct TrustAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Creds = Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>;

fn tls_client(cert: Creds, alpn: &[u8]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything(provider)));
    let mut cfg = match cert {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg
}

fn creds(id: &Identity) -> Creds {
    Some((
        vec![id.cert.clone()],
        PrivateKeyDer::Pkcs8(id.key.clone_key()),
    ))
}

/// The node certificate anyone holding the root secret could mint before the cluster CA had a
/// key of its own: the CA key was derived from the secret. The attack this model closes.
fn minted_from_secret(secret: &str) -> Creds {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa};
    let seed = blake3::derive_key("ostore 2026 cluster CA key v1", secret.as_bytes());
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    let ca_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der),
        &rcgen::PKCS_ED25519,
    )
    .unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "ostore cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut p = CertificateParams::new(vec![NODE_NAME.to_string()]).unwrap();
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
    Some((
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

/// A node certificate from a CA of the attacker's own.
fn outsider() -> Creds {
    let now = SystemTime::now();
    creds(
        &ClusterCa::generate(now)
            .unwrap()
            .node_identity(now)
            .unwrap(),
    )
}

/// Node `i`'s identity, as it keeps it on its first drive.
fn node_identity(c: &Cluster, i: usize) -> Identity {
    let pem = std::fs::read(c.nodes[i].drives[0].join("node-identity.pem")).unwrap();
    Identity::from_pem(&pem, NODE_NAME).unwrap()
}

/// Connects to a peer port with an independent QUIC stack (quinn on tokio), opens a stream and
/// sends an OPEN request for a shard; returns the answer's first bytes.
fn peer_attempt(addr: SocketAddr, cert: Creds) -> Result<Vec<u8>, String> {
    let cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls_client(cert, b"ostore-peer/1"))
            .unwrap(),
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let run = async {
            let conn = ep
                .connect_with(cfg, addr, NODE_NAME)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let mut req = b"OSP\x01".to_vec();
            // OPEN drive 0, shard 0, file 1, tag 1.
            req.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
            send.write_all(&req).await.map_err(|e| e.to_string())?;
            let mut answer = [0u8; 8];
            recv.read_exact(&mut answer)
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            Ok(answer.to_vec())
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    })
}

/// One HTTP/1.1 request over TLS to a control process: the status, or why there was none.
fn control_call(
    addr: SocketAddr,
    cert: Creds,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<u16, String> {
    control_exchange(addr, cert, path, headers, body).map(|(status, _)| status)
}

/// As [`control_call`], with the answer's body.
fn control_exchange(
    addr: SocketAddr,
    cert: Creds,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = Arc::new(tls_client(cert, b"http/1.1"));
    let mut req = format!("POST {path} HTTP/1.1\r\nhost: ostore-control\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let run = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let name = ServerName::try_from("ostore-control").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tls.write_all(&req).await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            tls.read_to_end(&mut out)
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            let text = String::from_utf8_lossy(&out);
            let status = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
            let body = out
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(Vec::new(), |at| out[at + 4..].to_vec());
            Ok((status, body))
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    })
}

#[test]
fn the_peer_port_admits_only_the_clusters_nodes() {
    let c = Cluster::start(2, 1);
    let addr: SocketAddr = c.nodes[0].peer.parse().unwrap();
    for (what, cert) in [
        ("no certificate", None),
        ("a certificate of another CA", outsider()),
        (
            "a certificate minted from the client root secret",
            minted_from_secret(&c.secret),
        ),
    ] {
        let r = peer_attempt(addr, cert);
        assert!(r.is_err(), "{what} got an answer on the peer port: {r:?}");
        eprintln!("{what}: refused ({})", r.unwrap_err());
    }
    // The control experiment: a node's own certificate is served (an error answer: there is
    // no such shard), so the refusals above are the handshake's.
    let id1 = node_identity(&c, 1);
    let answer = peer_attempt(addr, creds(&id1)).expect("a node's certificate is served");
    assert_eq!(
        answer[0], 1,
        "expected an error answer for a missing shard: {answer:?}"
    );
    // Node 1 is revoked, through node 1 itself: node 0 hears of it with its next view of the
    // cluster and refuses the certificate within seconds (the window is printed).
    let out = c.osctl(1, &["nodes", "revoke", &c.nodes[1].id]);
    assert!(out.status.success(), "osctl nodes revoke: {out:?}");
    let revoked_at = std::time::Instant::now();
    let refused = eventually(Duration::from_secs(5), || {
        peer_attempt(addr, creds(&id1)).is_err()
    });
    assert!(
        refused,
        "a revoked node's certificate is still served after 5 s"
    );
    eprintln!(
        "revocation: another node refused the certificate {:.2} s after `osctl nodes revoke` returned",
        revoked_at.elapsed().as_secs_f64()
    );
    // Node 0's own certificate is still served.
    assert!(peer_attempt(addr, creds(&node_identity(&c, 0))).is_ok());
}

#[test]
fn the_control_api_takes_node_certificates_and_join_tokens_only() {
    let c = Cluster::start(1, 1);
    let addr: SocketAddr = c.controls[0].addr.parse().unwrap();
    let bearer = format!("Bearer {}", c.secret);
    // In the clear, nothing is answered at all (the listener speaks TLS only).
    let plain = reqwest::blocking::Client::new()
        .post(format!("http://{addr}/v1/rpc"))
        .header("authorization", &bearer)
        .body(vec![1u8])
        .timeout(Duration::from_secs(5))
        .send();
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // Over TLS: the client secret, nothing, another CA's or a secret-minted certificate.
    let rpc =
        |cert: Creds, auth: &[(&str, &str)]| control_call(addr, cert, "/v1/rpc", auth, b"\x01");
    assert_eq!(rpc(None, &[("authorization", &bearer)]), Ok(401));
    assert_eq!(rpc(None, &[]), Ok(401));
    for (what, cert) in [
        ("another CA", outsider()),
        ("minted from the secret", minted_from_secret(&c.secret)),
    ] {
        let r = rpc(cert, &[("authorization", &bearer)]);
        assert!(
            r.is_err(),
            "a certificate of {what} reached the control API: {r:?}"
        );
    }
    // The control experiment: a node's certificate gets through to the RPC decoder (which
    // refuses this one-byte body).
    let id = node_identity(&c, 0);
    assert_eq!(rpc(creds(&id), &[]), Ok(400));

    // Join tokens: the client secret makes none that the cluster accepts; a real one works
    // once; an expired one never.
    let join = |token: &str| -> Result<u16, String> {
        let t = ostore_wire::join::Token::parse(token).unwrap();
        let public = [5u8; 32];
        let body = serde_json::json!({
            "expires": t.expires_s,
            "nonce": hex::encode(t.nonce),
            "public_key": hex::encode(public),
            "proof": hex::encode(t.proof(&public)),
        });
        control_call(addr, None, "/v1/join", &[], body.to_string().as_bytes())
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged = ostore_wire::join::Token::new(
        &ostore_wire::join::token_key(c.secret.as_bytes()),
        now + 600,
        rand::random(),
    );
    assert_eq!(join(&forged.to_string()), Ok(403));
    let good = c.join_token("10m");
    assert_eq!(join(&good), Ok(200));
    assert_eq!(join(&good), Ok(403), "a join token was accepted twice");
    let expired = ostore_wire::join::Token::new(
        &ostore_wire::join::token_key(c.cluster_key.as_bytes()),
        now - 1,
        rand::random(),
    );
    assert_eq!(join(&expired.to_string()), Ok(403));
    // osctl refuses to make a token without the cluster key (the client secret is not one).
    let out = std::process::Command::new(ostore_tests::binary("osctl"))
        .args(["nodes", "token"])
        .env_remove("OSTORE_CLUSTER_KEY")
        .env("OSTORE_SECRET", &c.secret)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_node_without_identity_or_token_does_not_start_and_a_restart_needs_no_token() {
    let mut c = Cluster::start(1, 1);
    // A restart finds the identity on the node's drives: the harness gives a node that has one
    // no token.
    c.kill9(0);
    for d in &c.nodes[0].drives {
        assert!(d.join("node-identity.pem").exists());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(d.join("node-identity.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(
            mode & 0o077,
            0,
            "the node's key is readable by others: {mode:o}"
        );
    }
    c.restart(0);
    let (s, _) = c.json(0, "/admin/cluster");
    assert_eq!(s, 200);
    // A new node with no token at all is refused with a clear error.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(ostore_tests::binary("ostore"))
        .args([
            "node",
            "--control",
            &c.controls[0].addr,
            "--http",
            "127.0.0.1:0",
            "--peer",
            "127.0.0.1:0",
            "--drive",
        ])
        .arg(dir.path())
        .env("OSTORE_SECRET", &c.secret)
        .env_remove("OSTORE_JOIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("join token"), "{err}");
}

fn curl(args: &[&str], body: Option<&[u8]>) -> (bool, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl (Debian's curl package) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.unwrap_or_default())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_client_apis_speak_https_when_given_a_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ostore_tests::cluster::server_certificate(certs.path());
    let (ca, cert, key) = (
        ca.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let dev = ostore_tests::Dev::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let auth = format!("authorization: Bearer {}", dev.secret);
    let url = format!("https://{}/objects/tls/k", dev.http);
    let (ok, out) = curl(
        &[
            "--cacert",
            &ca,
            "-H",
            &auth,
            "-X",
            "PUT",
            "--data-binary",
            "@-",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ],
        Some(b"over TLS"),
    );
    assert!(ok && out == "201", "PUT over HTTPS: {out}");
    let (ok, out) = curl(&["--cacert", &ca, "-H", &auth, &url], None);
    assert!(ok && out == "over TLS", "GET over HTTPS: {out}");
    // Without trusting the CA, curl refuses the server; in the clear, nothing is served.
    let (ok, out) = curl(&["-H", &auth, &url], None);
    assert!(!ok, "curl trusted an unknown CA: {out}");
    let (ok, out) = curl(
        &["-H", &auth, &format!("http://{}/objects/tls/k", dev.http)],
        None,
    );
    assert!(
        !ok || !out.contains("over TLS"),
        "plain HTTP was served: {out}"
    );
    // S3 over HTTPS, signed by curl's own SigV4.
    let s3 = format!("https://{}/tls-bucket", dev.s3);
    let sig = ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"];
    let user = format!("root:{}", dev.secret);
    let (ok, out) = curl(
        &[
            &["--cacert", &ca],
            &sig[..],
            &[
                &user,
                "-H",
                "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                "-X",
                "PUT",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &s3,
            ],
        ]
        .concat(),
        None,
    );
    assert!(ok && out == "200", "CreateBucket over HTTPS: {out}");
    // osctl over HTTPS with the CA.
    let out = std::process::Command::new(ostore_tests::binary("osctl"))
        .args([
            "--endpoint",
            &format!("https://{}", dev.http),
            "--tls-ca",
            &ca,
            "--json",
            "status",
        ])
        .env("OSTORE_SECRET", &dev.secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "osctl over HTTPS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn plain_http_off_loopback_needs_to_be_asked_for() {
    let data = tempfile::tempdir().unwrap();
    let cmd = |extra: &[&str]| {
        let mut c = std::process::Command::new("timeout");
        c.arg("20")
            .arg(ostore_tests::binary("ostore"))
            .arg("dev")
            .arg("--data")
            .arg(data.path())
            .args(["--http", "0.0.0.0:0", "--s3", "127.0.0.1:0"])
            .args(extra)
            .env_remove("OSTORE_SECRET");
        c
    };
    // Refused at once, saying how to go on (`timeout` ends one that wrongly serves).
    let out = cmd(&[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served in the clear off loopback");
    assert_ne!(
        out.status.code(),
        Some(124),
        "served in the clear off loopback"
    );
    assert!(err.contains("--insecure-http"), "{err}");
    // Asked for, it serves.
    let mut child = cmd(&["--insecure-http"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = ostore_tests::ready_line(
        &mut child,
        "ostore dev --insecure-http",
        Duration::from_secs(20),
    );
    assert!(line.contains("http=0.0.0.0:"), "{line}");
    // SIGTERM to `timeout`, which passes it on: the server stops cleanly.
    // SAFETY: kill(2) on a child process this test owns.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// A loopback capture (`tcpdump`) of a cluster with TLS on every link (two control processes
/// over a three-member etcd, so the metadata crosses loopback too), through joining, writes,
/// reads and admin calls: none of its secrets, and none of the object's bytes or its key,
/// crosses in the clear. The capture is shown to work by a marker sent in the clear
/// alongside. (Other tests run at the same time on loopback with secrets of their own, some in
/// the clear on purpose: only this cluster's are looked for.)
#[test]
fn a_capture_of_a_cluster_shows_nothing_secret() {
    if std::process::Command::new("tcpdump")
        .arg("--version")
        .output()
        .is_err()
    {
        ostore_tests::missing_prerequisite(
            "a_capture_of_a_cluster_shows_nothing_secret",
            "tcpdump (Debian's tcpdump), run as root",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("lo.pcap");
    let mut dump = std::process::Command::new("tcpdump")
        // A large buffer: a burst of shards on loopback must not be dropped.
        .args(["-i", "lo", "-U", "-s", "0", "-B", "131072", "-w"])
        .arg(&pcap)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // tcpdump says "listening on lo" once it captures.
    let stats = {
        use std::io::Read as _;
        let mut err = dump.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            let n = err.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "tcpdump did not start: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            rest
        })
    };
    let c = Cluster::start_ha_https(2, 3, 3, 2);
    // An object of random bytes with markers: incompressible, so stored and sent as it is.
    let marker = format!("OBJECT-BYTES-{}", hex::encode(rand::random::<[u8; 8]>()));
    let mut body = ostore_tests::random_bytes(7, 3 << 20);
    for at in (0..body.len() - 64).step_by(65536) {
        body[at..at + marker.len()].copy_from_slice(marker.as_bytes());
    }
    // The key has a marker of its own: it crosses to etcd as metadata, not with the bytes.
    let key = format!(
        "secret/OBJECT-KEY-{}",
        hex::encode(rand::random::<[u8; 8]>())
    );
    assert_eq!(c.put(0, &key, body.clone()).status(), 201);
    for node in 0..3 {
        assert_eq!(c.get_bytes(node, &key), (200, body.clone()));
    }
    let out = c.osctl(1, &["--json", "status"]);
    assert!(out.status.success(), "osctl over HTTPS: {out:?}");
    // The control experiment: a marker sent in the clear on loopback is in the capture.
    let clear = format!("CLEAR-MARKER-{}", hex::encode(rand::random::<[u8; 8]>()));
    {
        use std::io::Write as _;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut r, _) = l.accept().unwrap();
        s.write_all(clear.as_bytes()).unwrap();
        let mut got = vec![0u8; clear.len()];
        std::io::Read::read_exact(&mut r, &mut got).unwrap();
    }
    // tcpdump writes packets in the order it took them (each at once, -U), but may be behind:
    // once the marker, sent last, is in the file, so is everything before it. Stopping it
    // earlier would leave what it had not written yet out of the capture.
    let has = |captured: &[u8], needle: &[u8]| captured.windows(needle.len()).any(|w| w == needle);
    let written = eventually(Duration::from_secs(30), || {
        has(&std::fs::read(&pcap).unwrap_or_default(), clear.as_bytes())
    });
    // SAFETY: kill(2) on a child process this test owns; SIGINT makes tcpdump flush and end.
    unsafe { libc::kill(dump.id() as libc::pid_t, libc::SIGINT) };
    dump.wait().unwrap();
    eprintln!("tcpdump: {}", stats.join().unwrap().trim());
    assert!(
        written,
        "the capture missed the clear-text marker within 30 s: it saw nothing"
    );
    let captured = std::fs::read(&pcap).unwrap();
    let has = |needle: &[u8]| has(&captured, needle);
    eprintln!("captured {} bytes on loopback", captured.len());
    for (what, needle) in [
        ("the root secret", c.secret.as_bytes()),
        ("the cluster key", c.cluster_key.as_bytes()),
        ("the object's bytes", marker.as_bytes()),
        ("the object's key", key.as_bytes()),
    ] {
        assert!(!has(needle), "{what} crossed loopback in the clear");
    }
}

/// The credential kinds of the auth matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cred {
    Nothing,
    Wrong,
    /// The root secret.
    Root,
    /// An S3 access key `osctl keys create` made.
    AccessKey,
    /// An access key revoked since (`osctl keys revoke`).
    RevokedKey,
    /// A node's certificate (from its drive).
    NodeCert,
    /// The certificate of a node revoked since (`osctl nodes revoke`).
    RevokedNodeCert,
    /// A certificate of a CA the cluster does not know.
    OutsiderCert,
}

const CREDS: [Cred; 8] = [
    Cred::Nothing,
    Cred::Wrong,
    Cred::Root,
    Cred::AccessKey,
    Cred::RevokedKey,
    Cred::NodeCert,
    Cred::RevokedNodeCert,
    Cred::OutsiderCert,
];

/// What a request got: served (any answer but 401 and 403: the request reached the route), 401,
/// 403, refused before any answer (the TLS handshake failed), or not applicable (the listener
/// has no way to carry this kind of credential).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Got {
    Served,
    E401,
    E403,
    Refused,
    NotApplicable,
}

fn got(r: Result<u16, String>) -> Got {
    match r {
        Err(_) => Got::Refused,
        Ok(401) => Got::E401,
        Ok(403) => Got::E403,
        Ok(_) => Got::Served,
    }
}

/// Everything the matrix's requests present.
struct Keys {
    root: String,
    access: (String, String),
    revoked: (String, String),
    ca: String,
    node_pem: String,
    revoked_node_pem: String,
    outsider_pem: String,
    node: Identity,
    revoked_node: Identity,
    outsider: Identity,
}

/// An HTTPS request with curl presenting `cred` as a bearer or a client certificate.
fn https_bearer(k: &Keys, cred: Cred, method: &str, url: &str) -> Result<u16, String> {
    let mut args: Vec<String> = vec!["--cacert".into(), k.ca.clone()];
    // HEAD is curl's -I (with -X HEAD it would wait for a body).
    if method == "HEAD" {
        args.push("-I".into());
    } else {
        args.extend(["-X".into(), method.into()]);
    }
    let bearer = |s: &str| vec!["-H".to_string(), format!("authorization: Bearer {s}")];
    let cert = |pem: &str| vec!["--cert".to_string(), pem.to_string()];
    args.extend(match cred {
        Cred::Nothing => vec![],
        Cred::Wrong => bearer("not-the-secret"),
        Cred::Root => bearer(&k.root),
        Cred::AccessKey => bearer(&k.access.1),
        Cred::RevokedKey => bearer(&k.revoked.1),
        Cred::NodeCert => cert(&k.node_pem),
        Cred::RevokedNodeCert => cert(&k.revoked_node_pem),
        Cred::OutsiderCert => cert(&k.outsider_pem),
    });
    curl_status(args, url)
}

/// An S3 request with curl, SigV4-signed with `cred`'s key (a certificate is presented
/// instead, unsigned, for the certificate kinds).
fn s3_signed(k: &Keys, cred: Cred, method: &str, url: &str) -> Result<u16, String> {
    let mut args: Vec<String> = vec![
        "--cacert".into(),
        k.ca.clone(),
        "-X".into(),
        method.into(),
        "-H".into(),
        "x-amz-content-sha256: UNSIGNED-PAYLOAD".into(),
    ];
    let sign = |id: &str, secret: &str| {
        vec![
            "--aws-sigv4".to_string(),
            "aws:amz:us-east-1:s3".to_string(),
            "--user".to_string(),
            format!("{id}:{secret}"),
        ]
    };
    let cert = |pem: &str| vec!["--cert".to_string(), pem.to_string()];
    args.extend(match cred {
        Cred::Nothing => vec![],
        Cred::Wrong => sign("root", "not-the-secret"),
        Cred::Root => sign("root", &k.root),
        Cred::AccessKey => sign(&k.access.0, &k.access.1),
        Cred::RevokedKey => sign(&k.revoked.0, &k.revoked.1),
        Cred::NodeCert => cert(&k.node_pem),
        Cred::RevokedNodeCert => cert(&k.revoked_node_pem),
        Cred::OutsiderCert => cert(&k.outsider_pem),
    });
    curl_status(args, url)
}

fn curl_status(mut args: Vec<String>, url: &str) -> Result<u16, String> {
    args.extend([
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
    ]);
    args.push(url.to_string());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = curl(&argv, None);
    if !ok {
        return Err(out);
    }
    out.trim().parse().map_err(|_| out)
}

/// An HTTP/3 request with ostore-client (which presents no client certificate: the certificate
/// kinds do not apply).
fn h3_bearer(
    k: &Keys,
    cred: Cred,
    method: &str,
    endpoint: &str,
    path: &str,
) -> Option<Result<u16, String>> {
    let secret = match cred {
        Cred::Nothing => None,
        Cred::Wrong => Some("not-the-secret".to_string()),
        Cred::Root => Some(k.root.clone()),
        Cred::AccessKey => Some(k.access.1.clone()),
        Cred::RevokedKey => Some(k.revoked.1.clone()),
        _ => return None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Some(rt.block_on(async {
        let mut b = ostore_client::Client::builder(endpoint)
            .protocol(ostore_client::Protocol::Http3)
            .tls_ca_file(&k.ca)
            .map_err(|e| e.to_string())?;
        if let Some(s) = secret {
            b = b.secret(s);
        }
        let c = b.build().map_err(|e| e.to_string())?;
        let m = http::Method::from_bytes(method.as_bytes()).unwrap();
        match c
            .request(m, path, Default::default(), Default::default())
            .await
        {
            Ok(r) => Ok(r.status.as_u16()),
            Err(e) => e.status().ok_or_else(|| e.to_string()),
        }
    }))
}

fn write_pem(dir: &std::path::Path, name: &str, id: &Identity) -> String {
    let p = dir.join(name);
    std::fs::write(&p, id.to_pem()).unwrap();
    p.display().to_string()
}

/// Every route of every listener of a cluster with TLS on, against every kind of credential.
#[test]
fn the_auth_matrix() {
    let c = Cluster::start_https(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let make_key = |name: &str| {
        let k = c.osctl_json(0, &["keys", "create", name]);
        (
            k["access_key"].as_str().unwrap().to_string(),
            k["secret"].as_str().unwrap().to_string(),
        )
    };
    let access = make_key("matrix-app");
    let revoked = make_key("matrix-gone");
    let out = c.osctl(0, &["keys", "revoke", &revoked.0]);
    assert!(out.status.success(), "{out:?}");
    let node = node_identity(&c, 0);
    let revoked_node = node_identity(&c, 1);
    let out = c.osctl(0, &["nodes", "revoke", &c.nodes[1].id]);
    assert!(out.status.success(), "{out:?}");
    let now = SystemTime::now();
    let outsider = ClusterCa::generate(now)
        .unwrap()
        .node_identity(now)
        .unwrap();
    let k = Keys {
        root: c.secret.clone(),
        access,
        revoked,
        ca: c.tls_ca.as_ref().unwrap().display().to_string(),
        node_pem: write_pem(dir.path(), "node.pem", &node),
        revoked_node_pem: write_pem(dir.path(), "revoked.pem", &revoked_node),
        outsider_pem: write_pem(dir.path(), "outsider.pem", &outsider),
        node,
        revoked_node,
        outsider,
    };
    // Revocations reach node 0 and the control process within a second or two.
    std::thread::sleep(Duration::from_secs(3));

    let http = format!("https://{}", c.nodes[0].http);
    let s3 = format!("https://{}", c.nodes[0].s3.as_ref().unwrap());
    let control: SocketAddr = c.controls[0].addr.parse().unwrap();
    let peer: SocketAddr = c.nodes[0].peer.parse().unwrap();
    let zeros = "0".repeat(64);
    use Cred::*;
    use Got::*;
    // What the bearer-secret listeners answer: only the root secret is served; no credential
    // (a client certificate is not one here) is 401, a wrong one 403.
    let bearer_rule = |c: Cred| match c {
        Root => Served,
        Nothing | NodeCert | RevokedNodeCert | OutsiderCert => E401,
        Wrong | AccessKey | RevokedKey => E403,
    };
    let open = |_: Cred| Served;
    // S3: a signature by the root key or a live access key; anything else is 403 (anonymous
    // requests too).
    let s3_rule = |c: Cred| match c {
        Root | AccessKey => Served,
        _ => E403,
    };
    // The control API: node certificates only; a revoked or outsider certificate fails the
    // handshake; a bearer secret is nothing to it.
    let rpc_rule = |c: Cred| match c {
        NodeCert => Served,
        RevokedNodeCert | OutsiderCert => Refused,
        _ => E401,
    };
    // /v1/join takes a join token's proof, which none of these is.
    let join_rule = |c: Cred| match c {
        RevokedNodeCert | OutsiderCert => Refused,
        _ => E403,
    };
    let control_health_rule = |c: Cred| match c {
        RevokedNodeCert | OutsiderCert => Refused,
        _ => Served,
    };
    // The peer port: a live node certificate only.
    let peer_rule = |c: Cred| match c {
        NodeCert => Served,
        _ => Refused,
    };
    let h3_rule = |c: Cred| match c {
        NodeCert | RevokedNodeCert | OutsiderCert => NotApplicable,
        c => bearer_rule(c),
    };
    let h3_open = |c: Cred| match c {
        NodeCert | RevokedNodeCert | OutsiderCert => NotApplicable,
        _ => Served,
    };
    type Call<'a> = Box<dyn Fn(Cred) -> Got + 'a>;
    type Rule<'a> = &'a dyn Fn(Cred) -> Got;
    let native = |m: &'static str, path: String| -> Call {
        let url = format!("{http}{path}");
        let k = &k;
        Box::new(move |cred| got(https_bearer(k, cred, m, &url)))
    };
    let h3 = |m: &'static str, path: &'static str| -> Call {
        let (k, http) = (&k, &http);
        Box::new(move |cred| h3_bearer(k, cred, m, http, path).map_or(NotApplicable, got))
    };
    let s3_call = |m: &'static str, path: &'static str| -> Call {
        let url = format!("{s3}{path}");
        let k = &k;
        Box::new(move |cred| got(s3_signed(k, cred, m, &url)))
    };
    let control_call_with = |path: &'static str, body: Vec<u8>| -> Call {
        let k = &k;
        Box::new(move |cred| {
            let (cert, auth) = match cred {
                NodeCert => (creds(&k.node), None),
                RevokedNodeCert => (creds(&k.revoked_node), None),
                OutsiderCert => (creds(&k.outsider), None),
                Nothing => (None, None),
                Wrong => (None, Some("Bearer not-the-secret".to_string())),
                Root => (None, Some(format!("Bearer {}", k.root))),
                AccessKey => (None, Some(format!("Bearer {}", k.access.1))),
                RevokedKey => (None, Some(format!("Bearer {}", k.revoked.1))),
            };
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            got(control_call(control, cert, path, &headers, &body))
        })
    };
    let join_body = serde_json::json!({
        "expires": u64::MAX / 2000, "nonce": "00".repeat(16),
        "public_key": "00".repeat(32), "proof": "00".repeat(32),
    })
    .to_string()
    .into_bytes();
    let peer_call: Call = Box::new(|cred| {
        let cert = match cred {
            NodeCert => creds(&k.node),
            RevokedNodeCert => creds(&k.revoked_node),
            OutsiderCert => creds(&k.outsider),
            _ => None,
        };
        // Any answer on a stream means the handshake let the request in.
        got(peer_attempt(peer, cert).map(|_| 200))
    });
    let rows: Vec<(String, Call, Rule)> = vec![
        (
            "native PUT /objects/m".into(),
            native("PUT", "/objects/m".into()),
            &bearer_rule,
        ),
        (
            "native GET /objects/m".into(),
            native("GET", "/objects/m".into()),
            &bearer_rule,
        ),
        (
            "native HEAD /objects/m".into(),
            native("HEAD", "/objects/m".into()),
            &bearer_rule,
        ),
        (
            "native DELETE /objects/m".into(),
            native("DELETE", "/objects/m".into()),
            &bearer_rule,
        ),
        (
            "native GET /versions/m".into(),
            native("GET", "/versions/m".into()),
            &bearer_rule,
        ),
        (
            "native GET /objects".into(),
            native("GET", "/objects?limit=1".into()),
            &bearer_rule,
        ),
        (
            "native GET /locate".into(),
            native("GET", format!("/locate/{zeros}")),
            &bearer_rule,
        ),
        (
            "native POST /uploads (tus)".into(),
            native("POST", "/uploads".into()),
            &bearer_rule,
        ),
        (
            "native GET /health".into(),
            native("GET", "/health".into()),
            &open,
        ),
        (
            "metrics GET /metrics".into(),
            native("GET", "/metrics".into()),
            &bearer_rule,
        ),
        (
            "admin GET /admin/status".into(),
            native("GET", "/admin/status".into()),
            &bearer_rule,
        ),
        (
            "admin GET /admin/cluster".into(),
            native("GET", "/admin/cluster".into()),
            &bearer_rule,
        ),
        (
            "admin GET /admin/keys".into(),
            native("GET", "/admin/keys".into()),
            &bearer_rule,
        ),
        (
            "admin POST /admin/gc".into(),
            native("POST", "/admin/gc".into()),
            &bearer_rule,
        ),
        (
            "admin POST /admin/revoke".into(),
            native("POST", "/admin/revoke?node=999".into()),
            &bearer_rule,
        ),
        (
            // An invalid grace: served means refused by the route (400), so nothing rotates.
            "admin POST /admin/secret/rotate".into(),
            native("POST", "/admin/secret/rotate?grace=never".into()),
            &bearer_rule,
        ),
        (
            "HTTP/3 GET /objects/m".into(),
            h3("GET", "/objects/m"),
            &h3_rule,
        ),
        (
            "HTTP/3 GET /admin/status".into(),
            h3("GET", "/admin/status"),
            &h3_rule,
        ),
        ("HTTP/3 GET /health".into(), h3("GET", "/health"), &h3_open),
        ("S3 ListBuckets".into(), s3_call("GET", "/"), &s3_rule),
        (
            "S3 CreateBucket".into(),
            s3_call("PUT", "/matrix"),
            &s3_rule,
        ),
        ("S3 PutObject".into(), s3_call("PUT", "/matrix/o"), &s3_rule),
        ("S3 GetObject".into(), s3_call("GET", "/matrix/o"), &s3_rule),
        (
            "S3 ListObjectsV2".into(),
            s3_call("GET", "/matrix?list-type=2"),
            &s3_rule,
        ),
        (
            "control POST /v1/rpc".into(),
            control_call_with("/v1/rpc", vec![1]),
            &rpc_rule,
        ),
        (
            "control POST /v1/join".into(),
            control_call_with("/v1/join", join_body),
            &join_rule,
        ),
        (
            "control GET /health".into(),
            control_call_with("/health", vec![]),
            &control_health_rule,
        ),
        ("peer OPEN (QUIC)".into(), peer_call, &peer_rule),
    ];
    let mut table = format!("{:<30}", "listener route");
    for cred in CREDS {
        table.push_str(&format!(" {:<15}", format!("{cred:?}")));
    }
    let mut wrong = Vec::new();
    for (name, call, rule) in &rows {
        table.push_str(&format!("\n{name:<30}"));
        for cred in CREDS {
            let (have, want) = (call(cred), rule(cred));
            let mark = if have == want { "" } else { "  <-- WRONG" };
            table.push_str(&format!(" {:<15}", format!("{have:?}{mark}")));
            if have != want {
                wrong.push(format!("{name} with {cred:?}: {have:?}, expected {want:?}"));
            }
        }
    }
    eprintln!("{table}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Node certificates are renewed before they expire, without a restart: with a control plane
/// signing one-minute certificates, every node has a new one after 40 s, and once the first
/// ones have expired the cluster still writes, reads across nodes and hears every heartbeat. A
/// renewed certificate is still its node's: revoking the node refuses it.
#[test]
fn node_certificates_are_renewed_before_they_expire_without_a_restart() {
    let c = Cluster::start_with(3, 2, &["--node-cert-lifetime", "60s"]);
    let first: Vec<Identity> = (0..3).map(|i| node_identity(&c, i)).collect();
    let expiry = first.iter().filter_map(|id| id.expires_s()).max().unwrap();
    let renewed = eventually(Duration::from_secs(70), || {
        (0..3).all(|i| node_identity(&c, i).cert != first[i].cert)
    });
    assert!(
        renewed,
        "not every node renewed its one-minute certificate within 70 s"
    );
    // Past the first certificates' expiry.
    while SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= expiry + 2
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let body = ostore_tests::random_bytes(3, 1 << 20);
    assert_eq!(c.put(0, "renewed/k", body.clone()).status(), 201);
    for i in 0..3 {
        assert_eq!(
            c.get_bytes(i, "renewed/k"),
            (200, body.clone()),
            "via node {i}"
        );
    }
    c.wait_all_see_all();
    // The expired certificate is refused; the renewed one is served and stays its node's.
    let peer: SocketAddr = c.nodes[0].peer.parse().unwrap();
    assert!(peer_attempt(peer, creds(&first[1])).is_err());
    let renewed2 = node_identity(&c, 2);
    assert!(peer_attempt(peer, creds(&renewed2)).is_ok());
    let out = c.osctl(0, &["nodes", "revoke", &c.nodes[2].id]);
    assert!(out.status.success(), "{out:?}");
    let refused = eventually(Duration::from_secs(5), || {
        peer_attempt(peer, creds(&renewed2)).is_err()
    });
    assert!(
        refused,
        "revoking a node left its renewed certificate valid"
    );
}

/// curl's arguments to trust `ca` (none: plain HTTP).
fn trusting(ca: Option<&std::path::Path>) -> Vec<String> {
    ca.map(|ca| vec!["--cacert".to_string(), ca.display().to_string()])
        .unwrap_or_default()
}

/// A native API listing at `base` with the bearer `secret`: its status.
fn bearer_at(ca: Option<&std::path::Path>, base: &str, secret: &str) -> Result<u16, String> {
    let mut args = trusting(ca);
    args.extend(["-H".into(), format!("authorization: Bearer {secret}")]);
    curl_status(args, &format!("{base}/objects?limit=1"))
}

/// An S3 ListBuckets at `base`, SigV4-signed as `id` with `secret`: its status.
fn sigv4_at(
    ca: Option<&std::path::Path>,
    base: &str,
    id: &str,
    secret: &str,
) -> Result<u16, String> {
    let mut args = trusting(ca);
    args.extend([
        "-H".into(),
        "x-amz-content-sha256: UNSIGNED-PAYLOAD".into(),
        "--aws-sigv4".into(),
        "aws:amz:us-east-1:s3".into(),
        "--user".into(),
        format!("{id}:{secret}"),
    ]);
    curl_status(args, &format!("{base}/"))
}

fn bearer_status(c: &Cluster, i: usize, secret: &str) -> Result<u16, String> {
    bearer_at(c.tls_ca.as_deref(), &c.url(i, ""), secret)
}

fn s3_status(c: &Cluster, i: usize, id: &str, secret: &str) -> Result<u16, String> {
    let base = format!("https://{}", c.nodes[i].s3.as_ref().unwrap());
    sigv4_at(c.tls_ca.as_deref(), &base, id, secret)
}

/// A POST to an admin route of node `i` with the bearer `secret`: its status.
fn admin_post(c: &Cluster, i: usize, path: &str, secret: &str) -> Result<u16, String> {
    let mut args = trusting(c.tls_ca.as_deref());
    args.extend([
        "-X".into(),
        "POST".into(),
        "-H".into(),
        format!("authorization: Bearer {secret}"),
    ]);
    curl_status(args, &c.url(i, path))
}

/// Rotates the root secret (with `current`, through node 0, with `grace`) and waits until
/// every node serves the new one, which it returns.
fn rotate_everywhere(c: &mut Cluster, current: &str, grace: &str) -> String {
    c.secret = current.to_string();
    let r = c.osctl_json(0, &["secret", "rotate", "--grace", grace]);
    let new = r["secret"].as_str().unwrap().to_string();
    for i in 0..c.nodes.len() {
        let ok = eventually(Duration::from_secs(5), || {
            bearer_status(c, i, &new) == Ok(200)
        });
        assert!(ok, "node {i} did not take the rotated secret within 5 s");
    }
    new
}

#[test]
fn the_root_secret_rotates_on_every_node_without_a_restart() {
    let mut c = Cluster::start_https(3, 1);
    let first = c.secret.clone();
    let key = c.osctl_json(0, &["keys", "create", "app"]);
    let (ak, sk) = (
        key["access_key"].as_str().unwrap().to_string(),
        key["secret"].as_str().unwrap().to_string(),
    );
    for i in 0..3 {
        assert_eq!(bearer_status(&c, i, &first), Ok(200));
        assert_eq!(s3_status(&c, i, &ak, &sk), Ok(200));
    }
    // Rotated through node 1, with a grace for clients still holding the first secret (long
    // enough that the checks below run well within it).
    let r = c.osctl_json(1, &["secret", "rotate", "--grace", "60s"]);
    let rotated_at = std::time::Instant::now();
    let second = r["secret"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!(r["version"], 2, "{r}");
    // Every node takes the new secret within seconds (the window is printed).
    let mut windows = Vec::new();
    for i in 0..3 {
        let ok = eventually(Duration::from_secs(5), || {
            bearer_status(&c, i, &second) == Ok(200)
        });
        assert!(ok, "node {i} did not take the rotated secret within 5 s");
        windows.push(rotated_at.elapsed().as_secs_f64());
    }
    eprintln!("rotation: every node served the new secret within {windows:.2?} s of `osctl secret rotate` returning");
    // Within the grace, both work everywhere, natively and as S3's root key; access keys
    // keep their secrets. The old secret opens no admin route: it can neither rotate again
    // nor make an access key (a leaked secret being rotated out gains nothing).
    for i in 0..3 {
        assert_eq!(
            bearer_status(&c, i, &first),
            Ok(200),
            "old secret, node {i}"
        );
        assert_eq!(
            s3_status(&c, i, "root", &first),
            Ok(200),
            "old secret as S3 root, node {i}"
        );
        assert_eq!(
            s3_status(&c, i, "root", &second),
            Ok(200),
            "new secret as S3 root, node {i}"
        );
        assert_eq!(s3_status(&c, i, &ak, &sk), Ok(200), "access key, node {i}");
        assert_eq!(admin_post(&c, i, "/admin/secret/rotate", &first), Ok(403));
        assert_eq!(
            admin_post(&c, i, "/admin/keys?name=stolen", &first),
            Ok(403)
        );
    }
    // A second rotation within the first grace: the first secret stays valid too.
    let third = rotate_everywhere(&mut c, &second, "30s");
    for i in 0..3 {
        for old in [&first, &second] {
            assert_eq!(
                bearer_status(&c, i, old),
                Ok(200),
                "within the graces, node {i}"
            );
        }
    }
    // A node restarted with the OSTORE_SECRET it was first given checks clients against the
    // cluster's secrets, not that one alone.
    c.secret = first.clone();
    c.restart(2);
    assert_eq!(bearer_status(&c, 2, &third), Ok(200));
    assert_eq!(bearer_status(&c, 2, &second), Ok(200));
    assert_eq!(s3_status(&c, 2, &ak, &sk), Ok(200));
    // A rotation with a short grace ends every earlier secret's with it: after 2 s only the
    // newest is accepted, natively and as S3's root key.
    let fourth = rotate_everywhere(&mut c, &third, "2s");
    for i in 0..3 {
        let ok = eventually(Duration::from_secs(10), || {
            [&first, &second, &third]
                .iter()
                .all(|old| bearer_status(&c, i, old) == Ok(403))
        });
        assert!(ok, "node {i}: earlier secrets outlived a 2 s grace");
        assert_eq!(s3_status(&c, i, "root", &third), Ok(403));
        assert_eq!(s3_status(&c, i, "root", &fourth), Ok(200));
        assert_eq!(s3_status(&c, i, &ak, &sk), Ok(200), "access key, node {i}");
    }
    // A rotation without a grace ends the previous secret at once.
    rotate_everywhere(&mut c, &fourth, "0s");
    for i in 0..3 {
        assert_eq!(bearer_status(&c, i, &fourth), Ok(403), "node {i}");
    }
    // The rotation is an admin route: an access key cannot call it.
    assert_eq!(admin_post(&c, 0, "/admin/secret/rotate", &sk), Ok(403));
}

#[test]
fn a_node_certificate_speaks_for_its_own_node_only() {
    let c = Cluster::start(2, 1);
    let addr: SocketAddr = c.controls[0].addr.parse().unwrap();
    let id1 = node_identity(&c, 1);
    let (n0, n1): (u32, u32) = (
        c.nodes[0].id.parse().unwrap(),
        c.nodes[1].id.parse().unwrap(),
    );
    let token = || {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        ostore_control::rpc::Token::new(rand::random(), now)
    };
    let rpc = |req: ostore_control::rpc::Request| {
        let body = ostore_control::rpc::encode_request(&token(), &req);
        control_call(addr, creds(&id1), "/v1/rpc", &[], &body)
    };
    let beat = |node| ostore_control::rpc::Request::Heartbeat {
        node,
        free: Vec::new(),
    };
    // The control experiment: node 1's own heartbeat.
    assert_eq!(rpc(beat(n1)), Ok(200));
    // Node 1's certificate cannot speak for node 0: neither its heartbeats (which would keep a
    // dead node 0 up) nor a registration at node 0's address (which would move it).
    assert_eq!(rpc(beat(n0)), Ok(403));
    // Who is where (not their heartbeats' ages or free space, which change).
    let members = || {
        c.osctl_json(0, &["nodes"])["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["id"].to_string(),
                    n["peer"].to_string(),
                    n["http"].to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let view = members();
    let reg = ostore_control::cluster::Registration {
        peer: c.nodes[0].peer.clone(),
        http: "127.0.0.1:1".into(),
        zone: String::new(),
        drives: Vec::new(),
    };
    assert_eq!(
        rpc(ostore_control::rpc::Request::Register { reg: reg.clone() }),
        Ok(403)
    );
    // Nor at a new address (a certificate belongs to the node it registered as).
    let elsewhere = ostore_control::cluster::Registration {
        peer: "127.0.0.1:2".into(),
        ..reg.clone()
    };
    assert_eq!(
        rpc(ostore_control::rpc::Request::Register { reg: elsewhere }),
        Ok(403)
    );
    // A certificate just joined (bound to no node yet) cannot take the address of a node that
    // is up and has its own certificate.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let public: [u8; 32] = key.public_key_raw().try_into().unwrap();
    let t = ostore_wire::join::Token::parse(&c.join_token("10m")).unwrap();
    let join = serde_json::json!({
        "expires": t.expires_s,
        "nonce": hex::encode(t.nonce),
        "public_key": hex::encode(public),
        "proof": hex::encode(t.proof(&public)),
    });
    let (status, answer) =
        control_exchange(addr, None, "/v1/join", &[], join.to_string().as_bytes()).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let cert = hex::decode(answer["certificate"].as_str().unwrap()).unwrap();
    let fresh = || -> Creds {
        Some((
            vec![CertificateDer::from(cert.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ))
    };
    let register = |reg: ostore_control::cluster::Registration| {
        let req = ostore_control::rpc::Request::Register { reg };
        control_call(
            addr,
            fresh(),
            "/v1/rpc",
            &[],
            &ostore_control::rpc::encode_request(&token(), &req),
        )
    };
    assert_eq!(
        register(reg.clone()),
        Ok(403),
        "a new certificate took a live node's place"
    );
    // Nothing changed: node 0 is where it was.
    assert_eq!(members(), view);
    c.wait_all_see_all();
}

#[test]
fn ostore_dev_rotates_its_root_secret_and_rewrites_its_file() {
    let mut dev = ostore_tests::Dev::start(&[]);
    let old = dev.secret.clone();
    let key = dev.osctl_json(&["keys", "create", "app"]);
    let (ak, sk) = (
        key["access_key"].as_str().unwrap().to_string(),
        key["secret"].as_str().unwrap().to_string(),
    );
    let native = |dev: &ostore_tests::Dev, secret: &str| bearer_at(None, &dev.url(""), secret);
    let s3 = |dev: &ostore_tests::Dev, id: &str, secret: &str| {
        sigv4_at(None, &format!("http://{}", dev.s3), id, secret)
    };
    let r = dev.osctl_json(&["secret", "rotate", "--grace", "60s"]);
    let new = r["secret"].as_str().unwrap().to_string();
    let file = dev.data().join("root.secret");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), new);
    assert_eq!(r["file"].as_str(), Some(file.to_str().unwrap()));
    assert_eq!(native(&dev, &new), Ok(200));
    assert_eq!(native(&dev, &old), Ok(200), "within the grace");
    assert_eq!(s3(&dev, "root", &old), Ok(200), "within the grace");
    assert_eq!(s3(&dev, "root", &new), Ok(200));
    assert_eq!(
        s3(&dev, &ak, &sk),
        Ok(200),
        "access keys keep their secrets"
    );
    // The old secret opens no admin route, even within its grace.
    let admin = |secret: &str| {
        curl_status(
            vec![
                "-X".into(),
                "POST".into(),
                "-H".into(),
                format!("authorization: Bearer {secret}"),
            ],
            &dev.url("/admin/secret/rotate"),
        )
    };
    assert_eq!(admin(&old), Ok(403));
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), new);
    // A restart reads the new secret from its file; access keys still work.
    dev.restart();
    assert_eq!(dev.secret, new);
    assert_eq!(native(&dev, &old), Ok(403));
    assert_eq!(native(&dev, &new), Ok(200));
    assert_eq!(s3(&dev, &ak, &sk), Ok(200));
    // A key made after the rotation works too, across another rotation.
    let key2 = dev.osctl_json(&["keys", "create", "later"]);
    dev.secret = new.clone();
    let r = dev.osctl_json(&["secret", "rotate"]);
    dev.secret = r["secret"].as_str().unwrap().to_string();
    assert_eq!(native(&dev, &new), Ok(403), "no grace: refused at once");
    assert_eq!(
        s3(
            &dev,
            key2["access_key"].as_str().unwrap(),
            key2["secret"].as_str().unwrap()
        ),
        Ok(200)
    );
    assert_eq!(s3(&dev, &ak, &sk), Ok(200));
}

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
            text.split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no HTTP answer: {text:?}"))
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
    // Node 1 is revoked: its certificate is refused within seconds.
    let out = c.osctl(0, &["nodes", "revoke", &c.nodes[1].id]);
    assert!(out.status.success(), "osctl nodes revoke: {out:?}");
    let refused = eventually(Duration::from_secs(5), || {
        peer_attempt(addr, creds(&id1)).is_err()
    });
    assert!(
        refused,
        "a revoked node's certificate is still served after 5 s"
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

/// A CA and a server certificate for `127.0.0.1` and `localhost` it signed, as PEM files in
/// `dir`: (ca.pem, cert.pem, key.pem).
fn server_certificate(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let path = |n: &str| dir.join(n).display().to_string();
    std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
    (path("ca.pem"), path("cert.pem"), path("key.pem"))
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
    let (ca, cert, key) = server_certificate(certs.path());
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

//! The cluster's TLS: the CA every node builds, the certificate each node presents, and the
//! mutual-TLS 1.3 configurations and transport settings of the peer protocol.
//!
//! Authentication: a cluster CA whose Ed25519 key is derived from the cluster secret
//! (`blake3::derive_key`). Every node builds the same CA from `OSTORE_SECRET`, signs a fresh key
//! of its own with it, and demands the same of its peers in both directions (mutual TLS 1.3).
//! A process without the secret cannot present a certificate the CA signed, so the handshake
//! fails before any stream opens: it can neither read nor write shards.

use ostore_wire::peer::PEER_ALPN;
use quinn_proto::{ClientConfig, IdleTimeout, ServerConfig, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use std::time::Duration;

/// The name every node certificate carries and every client checks.
pub const NODE_NAME: &str = "ostore-node";
/// A peer that shows no sign of life for this long is disconnected (keep-alives every second).
const IDLE_TIMEOUT_MS: u32 = 5_000;

/// TLS for the peer protocol, built from the cluster secret.
#[derive(Clone)]
pub struct PeerTls {
    pub server: Arc<ServerConfig>,
    pub client: ClientConfig,
}

fn tls_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("peer TLS: {e}")
}

/// Flow-control windows sized for shard streams of many MiB on fast links.
pub fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(4096));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(16 << 20));
    t.receive_window(VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))));
    Arc::new(t)
}

/// The cluster CA's key: Ed25519 with a seed derived from the secret, as PKCS#8 v1.
fn ca_key(secret: &str) -> anyhow::Result<rcgen::KeyPair> {
    let seed = blake3::derive_key("ostore 2026 cluster CA key v1", secret.as_bytes());
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der),
        &rcgen::PKCS_ED25519,
    )
    .map_err(tls_err)
}

/// Builds the CA from `secret` and a certificate for this process signed by it.
pub fn credentials(secret: &str) -> anyhow::Result<PeerTls> {
    let (ca, chain, key) = node_certificate(secret)?;
    tls_configs(ca, chain, key)
}

/// The cluster CA's certificate for `secret`, and a fresh node certificate chain and key that
/// it signed.
#[allow(clippy::type_complexity)]
pub fn node_certificate(
    secret: &str,
) -> anyhow::Result<(
    CertificateDer<'static>,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyUsagePurpose,
    };
    let ca_key = ca_key(secret)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "ostore cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(tls_err)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(tls_err)?;
    let mut p = CertificateParams::new(vec![NODE_NAME.to_string()]).map_err(tls_err)?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, NODE_NAME);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(tls_err)?;
    Ok((
        ca_cert.der().clone(),
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

/// Mutual-TLS configurations trusting only `ca`, presenting `chain`.
pub fn tls_configs(
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<PeerTls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(tls_err)?;
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(tls_err)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(tls_err)?;
    server.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(tls_err)?;
    client.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let qs = quinn_proto::crypto::rustls::QuicServerConfig::try_from(server).map_err(tls_err)?;
    let mut sc = ServerConfig::with_crypto(Arc::new(qs));
    sc.transport_config(transport());
    let qc = quinn_proto::crypto::rustls::QuicClientConfig::try_from(client).map_err(tls_err)?;
    let mut cc = ClientConfig::new(Arc::new(qc));
    cc.transport_config(transport());
    Ok(PeerTls {
        server: Arc::new(sc),
        client: cc,
    })
}

//! The cluster's TLS: its certificate authority, the identities it signs, and the mutual-TLS
//! 1.3 configurations of the peer protocol and of the control-plane API.
//!
//! Trust (see the README's security model):
//! - The **cluster CA** has a random Ed25519 key, made once when the cluster is created and held
//!   by the control plane only (sealed under the operator's cluster key, [`seal`]). No client
//!   credential derives anything here.
//! - A **node** makes its own key and has the control plane sign it when it joins (a join token,
//!   `ostore_wire::join`); its certificate ([`NODE_NAME`]) serves peers and the control API.
//! - A **control process** presents a certificate for [`CONTROL_NAME`] that it signs itself with
//!   the CA key at start; nodes accept no other for the control API.
//! - Every handshake checks the presented certificate against the CA and against the set of
//!   revoked certificates ([`Revoked`], by BLAKE3 fingerprint of the DER), which the control
//!   plane keeps and every process refreshes each second.

use anyhow::Context as _;
use ostore_wire::peer::PEER_ALPN;
use quinn_proto::{ClientConfig, IdleTimeout, ServerConfig, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The name every node certificate carries and every peer checks.
pub const NODE_NAME: &str = "ostore-node";
/// The name a control process's certificate carries and every node checks.
pub const CONTROL_NAME: &str = "ostore-control";
/// How long a node certificate is valid.
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far before its issue a certificate's validity starts (clocks a little behind).
pub const BACKDATE: Duration = Duration::from_secs(300);
/// How long a control process's own certificate is valid (it makes a fresh one at each start,
/// and another when two thirds of this have passed).
pub const CONTROL_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// ALPN of the control-plane API: HTTP/1.1.
pub const CONTROL_ALPN: &[u8] = b"http/1.1";
/// A peer that shows no sign of life for this long is disconnected (keep-alives every second).
const IDLE_TIMEOUT_MS: u32 = 5_000;

/// TLS for the peer protocol, built from a node's identity.
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

fn ca_params() -> anyhow::Result<rcgen::CertificateParams> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "ostore cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca)
}

fn at(t: SystemTime) -> anyhow::Result<time::OffsetDateTime> {
    let s = t.duration_since(UNIX_EPOCH).map_err(tls_err)?.as_secs();
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(s).map_err(tls_err)?).map_err(tls_err)
}

/// An Ed25519 public key given as its 32 raw bytes (what a joining node sends).
struct Ed25519Public<'a>(&'a [u8; 32]);

impl rcgen::PublicKeyData for Ed25519Public<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// The cluster's certificate authority: its certificate and its private key. Only the control
/// plane holds one.
pub struct ClusterCa {
    cert: CertificateDer<'static>,
    key: rcgen::KeyPair,
    /// The CA as an issuer (its name and key; the certificate stored is `cert`).
    issuer: rcgen::Certificate,
}

/// The BLAKE3 fingerprint of a certificate's DER: what revocation names.
pub fn fingerprint(cert: &[u8]) -> [u8; 32] {
    *blake3::hash(cert).as_bytes()
}

impl ClusterCa {
    /// A new CA with a fresh random key (valid for a century; its key never leaves the control
    /// plane unsealed).
    pub fn generate(now: SystemTime) -> anyhow::Result<ClusterCa> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(tls_err)?;
        let mut params = ca_params()?;
        params.not_before = at(now - Duration::from_secs(3600))?;
        params.not_after = at(now + Duration::from_secs(100 * 365 * 24 * 3600))?;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
        let cert = params.self_signed(&key).map_err(tls_err)?;
        Self::from_parts(cert.der().to_vec(), ed25519_pkcs8(&key).secret_pkcs8_der())
    }

    /// The CA from its certificate (DER) and its key (PKCS#8 DER).
    pub fn from_parts(cert: Vec<u8>, key_pkcs8: &[u8]) -> anyhow::Result<ClusterCa> {
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()),
            &rcgen::PKCS_ED25519,
        )
        .map_err(tls_err)?;
        let issuer = ca_params()?.self_signed(&key).map_err(tls_err)?;
        let ca = ClusterCa {
            cert: CertificateDer::from(cert),
            key,
            issuer,
        };
        // The key must be the certificate's: sign a probe and check it chains.
        let probe = ca.issue(
            &[],
            CONTROL_NAME,
            SystemTime::now(),
            Duration::from_secs(60),
        )?;
        verify_chain(&ca.cert, &probe.cert, CONTROL_NAME)
            .context("the cluster CA's key does not match its certificate")?;
        Ok(ca)
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key, PKCS#8 DER (to be sealed before it is stored).
    pub fn key_pkcs8(&self) -> Vec<u8> {
        ed25519_pkcs8(&self.key).secret_pkcs8_der().to_vec()
    }

    /// A node certificate for the Ed25519 `public_key`, valid from now for `lifetime`.
    pub fn issue_node(
        &self,
        public_key: &[u8; 32],
        now: SystemTime,
        lifetime: Duration,
    ) -> anyhow::Result<CertificateDer<'static>> {
        let p = self.params(
            NODE_NAME,
            &[
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
            now,
            lifetime,
        )?;
        let cert = p
            .signed_by(&Ed25519Public(public_key), &self.issuer, &self.key)
            .map_err(tls_err)?;
        Ok(cert.der().clone())
    }

    /// A fresh identity for a control process (server authentication only).
    pub fn control_identity(&self, now: SystemTime) -> anyhow::Result<Identity> {
        self.issue(
            &[rcgen::ExtendedKeyUsagePurpose::ServerAuth],
            CONTROL_NAME,
            now,
            CONTROL_CERT_LIFETIME,
        )
    }

    /// A fresh node identity signed here (nodes make their own key and join; this is for tools
    /// and tests that stand in for one).
    pub fn node_identity(&self, now: SystemTime) -> anyhow::Result<Identity> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(tls_err)?;
        let public: [u8; 32] = key.public_key_raw().try_into().map_err(tls_err)?;
        Ok(Identity {
            ca: self.cert.clone(),
            cert: self.issue_node(&public, now, NODE_CERT_LIFETIME)?,
            key: ed25519_pkcs8(&key),
        })
    }

    fn params(
        &self,
        name: &str,
        usages: &[rcgen::ExtendedKeyUsagePurpose],
        now: SystemTime,
        lifetime: Duration,
    ) -> anyhow::Result<rcgen::CertificateParams> {
        use rcgen::{CertificateParams, DistinguishedName, DnType};
        let mut p = CertificateParams::new(vec![name.to_string()]).map_err(tls_err)?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = usages.to_vec();
        // A few minutes back, for clocks a little behind this one.
        p.not_before = at(now - BACKDATE)?;
        p.not_after = at(now + lifetime)?;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
        Ok(p)
    }

    fn issue(
        &self,
        usages: &[rcgen::ExtendedKeyUsagePurpose],
        name: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> anyhow::Result<Identity> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(tls_err)?;
        let cert = self
            .params(name, usages, now, lifetime)?
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(tls_err)?;
        Ok(Identity {
            ca: self.cert.clone(),
            cert: cert.der().clone(),
            key: ed25519_pkcs8(&key),
        })
    }
}

/// An Ed25519 key as PKCS#8 v1 (RFC 8410: the 32-byte seed only). ring writes v2 (with the
/// public key), which OpenSSL 3.0 cannot read; v1 is what every tool reads, so that operators
/// can inspect a node's identity with `openssl` and present it with `curl`.
pub fn ed25519_pkcs8(key: &rcgen::KeyPair) -> PrivatePkcs8KeyDer<'static> {
    const V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let der = key.serialize_der();
    // v2 from ring: SEQUENCE { INTEGER 1, AlgorithmIdentifier, OCTET STRING { OCTET STRING
    // seed }, [1] public key }: the seed sits where it sits in v1.
    match der.get(16..48) {
        Some(seed) if der.get(7..12) == Some(&V1_PREFIX[7..12]) => {
            let mut v1 = V1_PREFIX.to_vec();
            v1.extend_from_slice(seed);
            PrivatePkcs8KeyDer::from(v1)
        }
        _ => PrivatePkcs8KeyDer::from(der),
    }
}

/// 16 random bytes with the top bit clear (a positive DER integer).
fn random_serial() -> [u8; 16] {
    let mut s = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s)
        .expect("the system's random source");
    s[0] &= 0x7f;
    s[0] |= 0x01;
    s
}

/// Whether `cert` chains to `ca` for `name` now (a check outside any handshake).
fn verify_chain(
    ca: &CertificateDer<'static>,
    cert: &CertificateDer<'static>,
    name: &str,
) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider)
        .build()
        .map_err(tls_err)?;
    let name = ServerName::try_from(name.to_string()).map_err(tls_err)?;
    v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        .map_err(tls_err)?;
    Ok(())
}

/// What a process presents in a handshake: the cluster CA it trusts, its certificate and key.
pub struct Identity {
    pub ca: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

const PEM_CERT: &str = "CERTIFICATE";
const PEM_KEY: &str = "PRIVATE KEY";

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Identity {
    /// PEM: the certificate, then the CA's certificate, then the PKCS#8 private key.
    pub fn to_pem(&self) -> String {
        let mut s = pem(PEM_CERT, &self.cert);
        s.push_str(&pem(PEM_CERT, &self.ca));
        s.push_str(&pem(PEM_KEY, self.key.secret_pkcs8_der()));
        s
    }

    /// Reads what [`Identity::to_pem`] wrote; refuses a certificate that does not chain to the
    /// CA given with it for `name`.
    pub fn from_pem(text: &[u8], name: &str) -> anyhow::Result<Identity> {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(text)
            .collect::<Result<_, _>>()
            .map_err(tls_err)?;
        let [cert, ca] = <[CertificateDer<'static>; 2]>::try_from(certs)
            .map_err(|_| anyhow::anyhow!("an identity holds two certificates"))?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(text).map_err(tls_err)?;
        Identity { ca, cert, key }.verified(name)
    }

    /// The identity, if its certificate chains to its CA for `name` now.
    pub fn verified(self, name: &str) -> anyhow::Result<Identity> {
        verify_chain(&self.ca, &self.cert, name)?;
        Ok(self)
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert)
    }

    /// When the certificate stops being valid (Unix seconds), as the certificate says.
    pub fn expires_s(&self) -> Option<u64> {
        not_after_s(&self.cert)
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The `notAfter` of a DER certificate (Unix seconds); see [`validity_s`].
pub fn not_after_s(der: &[u8]) -> Option<u64> {
    validity_s(der).map(|(_, after)| after)
}

/// The `notBefore` and `notAfter` of a DER certificate (Unix seconds), read by hand: the
/// validity is the fifth element of the TBS sequence (after an explicit version). `None` if the
/// bytes are not such a certificate.
pub fn validity_s(der: &[u8]) -> Option<(u64, u64)> {
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = b.split_first()?;
        let (&l0, rest) = rest.split_first()?;
        let (len, rest) = if l0 < 0x80 {
            (usize::from(l0), rest)
        } else {
            let n = usize::from(l0 & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |a, &x| (a << 8) | usize::from(x));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }
    let (_, cert, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(cert)?;
    // [0] version, serial, signature algorithm, issuer, validity.
    let mut skip = 0;
    if tbs.first() == Some(&0xa0) {
        skip = 1;
    }
    for _ in 0..skip + 3 {
        tbs = tlv(tbs)?.2;
    }
    let (_, validity, _) = tlv(tbs)?;
    let (tag0, t0, rest) = tlv(validity)?;
    let (tag1, t1, _) = tlv(rest)?;
    Some((time_s(tag0, t0)?, time_s(tag1, t1)?))
}

/// A DER UTCTime (0x17) or GeneralizedTime (0x18) in UTC, as Unix seconds.
fn time_s(tag: u8, t: &[u8]) -> Option<u64> {
    let t = std::str::from_utf8(t).ok()?;
    let digits = t.strip_suffix('Z')?;
    let full = match tag {
        // UTCTime: YYMMDDHHMMSS, 50..99 meaning 19xx.
        0x17 if digits.len() == 12 => {
            let yy: u32 = digits[..2].parse().ok()?;
            format!("{}{digits}", if yy >= 50 { "19" } else { "20" })
        }
        0x18 if digits.len() == 14 => digits.to_string(),
        _ => return None,
    };
    let f = |a: usize, b: usize| full.get(a..b)?.parse::<i64>().ok();
    let date = time::Date::from_calendar_date(
        i32::try_from(f(0, 4)?).ok()?,
        time::Month::try_from(u8::try_from(f(4, 6)?).ok()?).ok()?,
        u8::try_from(f(6, 8)?).ok()?,
    )
    .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(f(8, 10)?).ok()?,
        u8::try_from(f(10, 12)?).ok()?,
        u8::try_from(f(12, 14)?).ok()?,
    )
    .ok()?;
    u64::try_from(date.with_time(t).assume_utc().unix_timestamp()).ok()
}

/// An identity that can be replaced while the configurations built with it are in use (a
/// renewed certificate): their certificate resolvers hand out the current one at each handshake.
#[derive(Clone)]
pub struct LiveIdentity(Arc<RwLock<(Identity, Arc<CertifiedKey>)>>);

impl std::fmt::Debug for LiveIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveIdentity")
    }
}

fn certified(id: &Identity) -> anyhow::Result<Arc<CertifiedKey>> {
    let provider = rustls::crypto::ring::default_provider();
    let key = provider
        .key_provider
        .load_private_key(id.key_der())
        .map_err(tls_err)?;
    Ok(Arc::new(CertifiedKey::new(vec![id.cert.clone()], key)))
}

impl LiveIdentity {
    pub fn new(id: Identity) -> anyhow::Result<LiveIdentity> {
        let c = certified(&id)?;
        Ok(LiveIdentity(Arc::new(RwLock::new((id, c)))))
    }

    /// Presents `id` from the next handshake on; it must be of the same CA.
    pub fn set(&self, id: Identity) -> anyhow::Result<()> {
        let c = certified(&id)?;
        let mut cur = self.0.write().unwrap_or_else(|e| e.into_inner());
        anyhow::ensure!(
            cur.0.ca == id.ca,
            "a renewed identity must be of the same CA"
        );
        *cur = (id, c);
        Ok(())
    }

    pub fn current(&self) -> Identity {
        self.0.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    fn ca(&self) -> CertificateDer<'static> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .ca
            .clone()
    }
}

impl rustls::server::ResolvesServerCert for LiveIdentity {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl rustls::client::ResolvesClientCert for LiveIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// When the certificate `der` should be replaced: once two thirds of the lifetime it was
/// issued for have passed (its validity less [`BACKDATE`]). `None` if it cannot be read.
pub fn renew_at_s(der: &[u8]) -> Option<u64> {
    let (before, after) = validity_s(der)?;
    let lifetime = after.saturating_sub(before.saturating_add(BACKDATE.as_secs()));
    Some(after.saturating_sub(lifetime / 3))
}

/// The certificates the cluster has revoked, by fingerprint; shared by every configuration
/// built with it, so an update applies to the next handshake.
#[derive(Clone, Default, Debug)]
pub struct Revoked(Arc<RwLock<HashSet<[u8; 32]>>>);

impl Revoked {
    /// Replaces the set.
    pub fn set(&self, fingerprints: impl IntoIterator<Item = [u8; 32]>) {
        let new: HashSet<[u8; 32]> = fingerprints.into_iter().collect();
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = new;
    }

    /// Whether the certificate `cert` (DER) is revoked; hashed only when anything is.
    pub fn contains(&self, cert: &[u8]) -> bool {
        let set = self.0.read().unwrap_or_else(|e| e.into_inner());
        !set.is_empty() && set.contains(&fingerprint(cert))
    }

    /// Whether the certificate with this fingerprint is revoked.
    pub fn contains_fingerprint(&self, fingerprint: &[u8; 32]) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(fingerprint)
    }
}

fn revoked_error() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
}

/// The handshake-signature checks of a verifier wrapping another (`inner`): the wrapped one's.
macro_rules! delegate_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// A client-certificate verifier: the CA's, then the revocation set.
#[derive(Debug)]
struct ClientCheck {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Revoked,
}

impl ClientCertVerifier for ClientCheck {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.revoked.contains(end_entity) {
            return Err(revoked_error());
        }
        Ok(ok)
    }
    delegate_signatures!();
}

/// A server-certificate verifier: the CA's (with the name), then the revocation set.
#[derive(Debug)]
struct ServerCheck {
    inner: Arc<dyn ServerCertVerifier>,
    revoked: Revoked,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if self.revoked.contains(end_entity) {
            return Err(revoked_error());
        }
        Ok(ok)
    }
    delegate_signatures!();
}

fn roots(ca: &CertificateDer<'static>) -> anyhow::Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(tls_err)?;
    Ok(Arc::new(roots))
}

/// Verifies client certificates against `ca` and `revoked`.
fn client_verifier(
    ca: &CertificateDer<'static>,
    revoked: &Revoked,
    optional: bool,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider);
    let b = if optional {
        b.allow_unauthenticated()
    } else {
        b
    };
    Ok(Arc::new(ClientCheck {
        inner: b.build().map_err(tls_err)?,
        revoked: revoked.clone(),
    }))
}

/// A TLS 1.3 server configuration presenting `identity` and verifying clients against its CA
/// and `revoked`; `optional_client` lets clients without a certificate finish the handshake
/// (the control API's join route; every other route checks for one).
pub fn server_config(
    identity: &LiveIdentity,
    revoked: &Revoked,
    optional_client: bool,
    alpn: &[u8],
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = client_verifier(&identity.ca(), revoked, optional_client)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(identity.clone()));
    server.alpn_protocols = vec![alpn.to_vec()];
    Ok(server)
}

/// A TLS 1.3 client configuration presenting `identity` and verifying servers against its CA
/// and `revoked` (the name checked is the one connected to: [`NODE_NAME`], [`CONTROL_NAME`]).
pub fn client_config(
    identity: &LiveIdentity,
    revoked: &Revoked,
    alpn: &[u8],
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(&identity.ca())?,
        provider.clone(),
    )
    .build()
    .map_err(tls_err)?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerCheck {
            inner,
            revoked: revoked.clone(),
        }))
        .with_client_cert_resolver(Arc::new(identity.clone()));
    client.alpn_protocols = vec![alpn.to_vec()];
    Ok(client)
}

/// The TLS 1.3 client configuration of a node joining, before it has a certificate: it
/// presents none and takes any server's. The join answer is checked by its seal
/// (`ostore_wire::join`), not by the handshake: a node that joins does not know the CA yet.
pub fn join_client() -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(
            rustls::crypto::ring::default_provider(),
        )))
        .with_no_client_auth();
    c.alpn_protocols = vec![CONTROL_ALPN.to_vec()];
    Ok(c)
}

/// Accepts any server certificate (signatures still checked): for the join call only, whose
/// answer is authenticated by the token's seal.
#[derive(Debug)]
struct AnyServer(rustls::crypto::CryptoProvider);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The context the sealing key is derived in from the operator's cluster key.
const SEAL_CONTEXT: &str = "ostore 2026 cluster CA key seal v1";
/// Leads every sealed value: the format's version.
const SEAL_VERSION: u8 = 1;

fn seal_key(cluster_key: &[u8]) -> ring::aead::LessSafeKey {
    let k = blake3::derive_key(SEAL_CONTEXT, cluster_key);
    ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &k)
            .expect("a 32-byte ChaCha20-Poly1305 key"),
    )
}

/// Seals `plain` under the cluster key: `version:u8 (1) ‖ nonce:12 ‖ ChaCha20-Poly1305
/// ciphertext and tag`, with `aad` authenticated alongside.
pub fn seal(cluster_key: &[u8], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .expect("the system's random source");
    let mut body = plain.to_vec();
    seal_key(cluster_key)
        .seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(aad),
            &mut body,
        )
        .expect("sealing a short value");
    let mut out = vec![SEAL_VERSION];
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    out
}

/// Opens what [`seal`] sealed; an error if the cluster key or `aad` differ or the bytes were
/// changed.
pub fn unseal(cluster_key: &[u8], aad: &[u8], sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (Some(&SEAL_VERSION), Some(nonce)) = (sealed.first(), sealed.get(1..13)) else {
        anyhow::bail!("not a sealed value of a known version");
    };
    let nonce: [u8; 12] = nonce.try_into().expect("12 bytes");
    let mut body = sealed[13..].to_vec();
    let plain = seal_key(cluster_key)
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(aad),
            &mut body,
        )
        .map_err(|_| anyhow::anyhow!("the sealed value does not open under this cluster key"))?;
    Ok(plain.to_vec())
}

/// Mutual-TLS configurations for the peer protocol: trusting only `identity`'s CA, refusing
/// `revoked` certificates, presenting `identity`'s certificate.
pub fn peer_tls(identity: &LiveIdentity, revoked: &Revoked) -> anyhow::Result<PeerTls> {
    let server = server_config(identity, revoked, false, PEER_ALPN)?;
    let client = client_config(identity, revoked, PEER_ALPN)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_round_trips_through_its_parts_and_signs_what_it_did_before() {
        let now = SystemTime::now();
        let ca = ClusterCa::generate(now).unwrap();
        let again = ClusterCa::from_parts(ca.cert().to_vec(), &ca.key_pkcs8()).unwrap();
        // A node signed by the reloaded CA chains to the certificate stored.
        let id = again.node_identity(now).unwrap();
        verify_chain(ca.cert(), &id.cert, NODE_NAME).unwrap();
        assert!(verify_chain(ca.cert(), &id.cert, CONTROL_NAME).is_err());
        // Another CA's key does not pass for this one.
        let other = ClusterCa::generate(now).unwrap();
        assert!(ClusterCa::from_parts(ca.cert().to_vec(), &other.key_pkcs8()).is_err());
        assert!(verify_chain(other.cert(), &id.cert, NODE_NAME).is_err());
    }

    #[test]
    fn keys_are_written_as_pkcs8_v1_that_openssl_reads() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let v1 = ed25519_pkcs8(&key);
        assert_eq!(v1.secret_pkcs8_der().len(), 48);
        // The same key: it signs what the public key verifies.
        let again =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&v1, &rcgen::PKCS_ED25519).unwrap();
        assert_eq!(again.public_key_raw(), key.public_key_raw());
    }

    #[test]
    fn identities_round_trip_through_pem_and_know_their_expiry() {
        let now = SystemTime::now();
        let ca = ClusterCa::generate(now).unwrap();
        let id = ca.node_identity(now).unwrap();
        let back = Identity::from_pem(id.to_pem().as_bytes(), NODE_NAME).unwrap();
        assert_eq!(back.cert, id.cert);
        assert_eq!(back.ca, id.ca);
        assert_eq!(back.key.secret_pkcs8_der(), id.key.secret_pkcs8_der());
        let want = now.duration_since(UNIX_EPOCH).unwrap().as_secs() + NODE_CERT_LIFETIME.as_secs();
        assert_eq!(id.expires_s(), Some(want));
        // Renewed with a third of the year left.
        assert_eq!(
            renew_at_s(&id.cert),
            Some(want - NODE_CERT_LIFETIME.as_secs() / 3)
        );
        // A certificate of another cluster with this CA is refused.
        let other = ClusterCa::generate(now)
            .unwrap()
            .node_identity(now)
            .unwrap();
        let mixed = Identity {
            ca: id.ca.clone(),
            ..other
        };
        assert!(Identity::from_pem(mixed.to_pem().as_bytes(), NODE_NAME).is_err());
        assert!(not_after_s(b"\x30\x03\x02\x01\x00").is_none());
    }

    #[test]
    fn sealed_values_open_only_under_their_key_and_context() {
        let s = seal(b"cluster key one", b"ca", b"private");
        assert_eq!(unseal(b"cluster key one", b"ca", &s).unwrap(), b"private");
        assert!(unseal(b"cluster key two", b"ca", &s).is_err());
        assert!(unseal(b"cluster key one", b"cb", &s).is_err());
        let mut flipped = s.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(unseal(b"cluster key one", b"ca", &flipped).is_err());
        assert!(unseal(b"cluster key one", b"ca", &s[..12]).is_err());
    }

    #[test]
    fn revocation_applies_to_configurations_already_built() {
        let now = SystemTime::now();
        let ca = ClusterCa::generate(now).unwrap();
        let a = ca.node_identity(now).unwrap();
        let revoked = Revoked::default();
        server_config(
            &LiveIdentity::new(a.clone()).unwrap(),
            &revoked,
            false,
            PEER_ALPN,
        )
        .unwrap();
        let v = client_verifier(&a.ca, &revoked, false).unwrap();
        let b = ca.node_identity(now).unwrap();
        assert!(v.verify_client_cert(&b.cert, &[], UnixTime::now()).is_ok());
        revoked.set([b.fingerprint()]);
        assert!(v.verify_client_cert(&b.cert, &[], UnixTime::now()).is_err());
        assert!(v.verify_client_cert(&a.cert, &[], UnixTime::now()).is_ok());
        // A control process's certificate is not a client certificate.
        let c = ca.control_identity(now).unwrap();
        assert!(v.verify_client_cert(&c.cert, &[], UnixTime::now()).is_err());
    }
}

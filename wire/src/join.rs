//! Join tokens: how a new node proves to the control plane that an operator let it in, and how
//! it knows the answer came from the control plane, without the token itself ever crossing the
//! network.
//!
//! The operator's **cluster key** (`OSTORE_CLUSTER_KEY`, held by the control processes and the
//! operator, never by clients) derives every token; `osctl nodes token` makes one offline.
//!
//! A token is the text `osj1_<expires>_<nonce>_<secret>`:
//! - `expires`: when it stops being accepted, Unix seconds in decimal;
//! - `nonce`: 16 random bytes, 32 lowercase hex digits; the control plane accepts each nonce
//!   once (single use);
//! - `secret`: 32 bytes, 64 lowercase hex digits:
//!   `blake3::keyed_hash(derive_key(TOKEN_CONTEXT, cluster key), expires:u64be ‖ nonce)`.
//!
//! The node sends `expires`, `nonce`, its Ed25519 public key (32 bytes) and a **proof**,
//! `keyed_hash(secret, "ostore join request v1" ‖ public key)`: the control plane recomputes the
//! secret, checks the proof and signs a certificate for that key only, so a proof replayed by
//! someone else gets a certificate for a key they do not hold. The answer (CA certificate and
//! node certificate, DER) carries a **seal**,
//! `keyed_hash(secret, "ostore join answer v1" ‖ ca_len:u32be ‖ ca ‖ cert_len:u32be ‖ cert)`,
//! so the node trusts the CA only if whoever answered knew the secret too.

/// The key-derivation context of token secrets.
pub const TOKEN_CONTEXT: &str = "ostore 2026 join token v1";
/// What every token starts with.
pub const TOKEN_PREFIX: &str = "osj1_";
const REQUEST_LABEL: &[u8] = b"ostore join request v1";
const ANSWER_LABEL: &[u8] = b"ostore join answer v1";

/// A join token's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Unix seconds after which it is refused.
    pub expires_s: u64,
    pub nonce: [u8; 16],
    pub secret: [u8; 32],
}

/// Why a token's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a join token (expected osj1_<expires>_<32 hex>_<64 hex>)")]
pub struct BadToken;

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The key every token secret is derived under, from the cluster key.
pub fn token_key(cluster_key: &[u8]) -> [u8; 32] {
    blake3::derive_key(TOKEN_CONTEXT, cluster_key)
}

/// The secret of the token (`expires_s`, `nonce`) under `token_key`.
pub fn secret(token_key: &[u8; 32], expires_s: u64, nonce: &[u8; 16]) -> [u8; 32] {
    let mut m = [0u8; 24];
    m[..8].copy_from_slice(&expires_s.to_be_bytes());
    m[8..].copy_from_slice(nonce);
    *blake3::keyed_hash(token_key, &m).as_bytes()
}

impl Token {
    /// A fresh token under `token_key`.
    pub fn new(token_key: &[u8; 32], expires_s: u64, nonce: [u8; 16]) -> Token {
        Token {
            expires_s,
            nonce,
            secret: secret(token_key, expires_s, &nonce),
        }
    }

    pub fn parse(s: &str) -> Result<Token, BadToken> {
        let rest = s.trim().strip_prefix(TOKEN_PREFIX).ok_or(BadToken)?;
        let mut parts = rest.split('_');
        let (Some(e), Some(n), Some(k), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BadToken);
        };
        if e.is_empty() || e.len() > 20 || !e.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadToken);
        }
        Ok(Token {
            expires_s: e.parse().map_err(|_| BadToken)?,
            nonce: unhex(n).ok_or(BadToken)?,
            secret: unhex(k).ok_or(BadToken)?,
        })
    }

    /// The proof a joining node sends for its Ed25519 `public_key`.
    pub fn proof(&self, public_key: &[u8; 32]) -> [u8; 32] {
        request_proof(&self.secret, public_key)
    }

    /// Whether `seal` is this token's seal over the answer (`ca`, `cert`).
    pub fn answer_sealed(&self, ca: &[u8], cert: &[u8], seal: &[u8; 32]) -> bool {
        // A timing leak here would only tell the node about its own answer.
        answer_seal(&self.secret, ca, cert) == *seal
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}{}_{}_{}",
            self.expires_s,
            hex(&self.nonce),
            hex(&self.secret)
        )
    }
}

/// `keyed_hash(secret, "ostore join request v1" ‖ public key)`.
pub fn request_proof(secret: &[u8; 32], public_key: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(REQUEST_LABEL);
    h.update(public_key);
    *h.finalize().as_bytes()
}

/// `keyed_hash(secret, "ostore join answer v1" ‖ ca_len:u32be ‖ ca ‖ cert_len:u32be ‖ cert)`.
/// Certificates are far below 4 GiB; a longer one is cut at `u32::MAX` in the length only,
/// which still binds every byte.
pub fn answer_seal(secret: &[u8; 32], ca: &[u8], cert: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(ANSWER_LABEL);
    for part in [ca, cert] {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        h.update(&len.to_be_bytes());
        h.update(part);
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_is_pinned() {
        let key = token_key(b"an operator's cluster key of 32 bytes+");
        let t = Token::new(&key, 1_800_000_000, [7u8; 16]);
        let s = t.to_string();
        assert!(s.starts_with("osj1_1800000000_07070707070707070707070707070707_"));
        assert_eq!(s.len(), 5 + 10 + 1 + 32 + 1 + 64);
        assert_eq!(Token::parse(&s), Ok(t.clone()));
        assert_eq!(Token::parse(&format!("  {s}\n")), Ok(t));
        // Golden: the derivation is part of the format (osctl and the control plane must agree
        // across versions).
        assert_eq!(
            hex(&secret(&token_key(b"k"), 1, &[0u8; 16])),
            "78ed93345b4ddcc4af5970b8a3892e7a96605ee9a0786dfc35280fc7612223cc"
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = Token::new(&[1; 32], 5, [2; 16]).to_string();
        for bad in [
            "",
            "osj1_",
            "osj2_5_02020202020202020202020202020202_0101",
            &good[..good.len() - 1],
            &format!("{good}_x"),
            &good.replace("osj1_5", "osj1_-5"),
            &good.replace("osj1_5", "osj1_"),
            &good.replace("_0202", "_zz02"),
            "osj1_99999999999999999999999_02020202020202020202020202020202_0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(Token::parse(bad), Err(BadToken), "{bad:?}");
        }
    }

    #[test]
    fn proofs_and_seals_bind_their_inputs() {
        let t = Token::new(&token_key(b"k"), 10, [3; 16]);
        let other = Token::new(&token_key(b"k2"), 10, [3; 16]);
        assert_ne!(t.secret, other.secret);
        assert_ne!(t.proof(&[1; 32]), t.proof(&[2; 32]));
        assert_ne!(t.proof(&[1; 32]), other.proof(&[1; 32]));
        let seal = answer_seal(&t.secret, b"ca", b"cert");
        assert!(t.answer_sealed(b"ca", b"cert", &seal));
        assert!(!t.answer_sealed(b"cac", b"ert", &seal));
        assert!(!other.answer_sealed(b"ca", b"cert", &seal));
    }
}

//! The `aws-chunked` content encoding, decoded without I/O.
//!
//! ```text
//! body    = *chunk last-chunk *trailer CRLF
//! chunk   = size-hex [";chunk-signature=" sig] CRLF data CRLF
//! last    = "0" [";chunk-signature=" sig] CRLF
//! trailer = name ":" value CRLF          (x-amz-checksum-*, x-amz-trailer-signature)
//! ```
//!
//! A signed body (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`) chains its signatures: each
//! chunk's signs `AWS4-HMAC-SHA256-PAYLOAD`, the date, the scope, the previous signature (the
//! request's for the first chunk), the SHA-256 of nothing and the SHA-256 of the chunk's data;
//! the trailer's signs `AWS4-HMAC-SHA256-TRAILER`, the date, the scope, the last chunk's
//! signature and the SHA-256 of the trailer lines. A chunk's data is handed on as it arrives
//! and its signature checked at its end: the caller commits nothing before [`Step::Done`].
//!
//! Every line is bounded ([`LINE_BYTES_MAX`]), as are the trailers ([`TRAILERS_MAX`]) and the
//! size of a chunk ([`CHUNK_BYTES_MAX`]); sizes are checked arithmetic.

use crate::error::{Code, S3Error};
use crate::sigv4::{Chain, EMPTY_SHA256};
use bytes::{Buf, Bytes};
use sha2::{Digest, Sha256};

/// Longest chunk-size or trailer line.
pub const LINE_BYTES_MAX: usize = 4096;
/// Most trailer lines.
pub const TRAILERS_MAX: usize = 16;
/// Largest chunk (S3's single PUT limit).
pub const CHUNK_BYTES_MAX: u64 = 5 << 30;

/// What [`Decoder::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes, in order.
    Data(Bytes),
    /// The input is used up: feed more.
    NeedMore,
    /// The body ended, every signature checked; [`Decoder::trailers`] holds the trailers.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SizeLine,
    Data { left: u64 },
    DataEnd { seen: u8 },
    Trailers,
    Done,
}

/// An `aws-chunked` body being decoded.
pub struct Decoder {
    state: State,
    chain: Option<(Chain, [u8; 32])>,
    trailer: bool,
    line: Vec<u8>,
    /// The signature the current chunk claims, and the hash of its data so far.
    claimed: Option<[u8; 32]>,
    hash: Sha256,
    trailers: Vec<(String, String)>,
    trailer_text: String,
    trailer_signature: Option<[u8; 32]>,
    decoded_bytes: u64,
}

/// The signature of one chunk of a signed body: `prev` is the request's signature for the
/// first chunk, else the previous chunk's.
pub fn chunk_signature(chain: &Chain, prev: &[u8; 32], data: &[u8]) -> [u8; 32] {
    payload_signature(chain, prev, &Sha256::digest(data).into())
}

fn payload_signature(chain: &Chain, prev: &[u8; 32], data_hash: &[u8; 32]) -> [u8; 32] {
    let sts = format!(
        "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{EMPTY_SHA256}\n{}",
        chain.amz_date,
        chain.scope,
        hex::encode(prev),
        hex::encode(data_hash)
    );
    crate::sigv4::signature(&chain.key, &sts)
}

/// The signature of a signed body's trailer (`trailer_text`: each `name:value\n`), after the
/// last chunk's signature `prev`.
pub fn trailer_signature(chain: &Chain, prev: &[u8; 32], trailer_text: &str) -> [u8; 32] {
    let sts = format!(
        "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{}\n{}",
        chain.amz_date,
        chain.scope,
        hex::encode(prev),
        hex::encode(Sha256::digest(trailer_text.as_bytes()))
    );
    crate::sigv4::signature(&chain.key, &sts)
}

fn bad(m: impl Into<String>) -> S3Error {
    S3Error::new(Code::IncompleteBody, m)
}

fn mismatch(m: impl Into<String>) -> S3Error {
    S3Error::new(Code::SignatureDoesNotMatch, m)
}

impl Decoder {
    /// A decoder for a body whose chunks are signed in `chain` (`None`: unsigned chunks) and
    /// which may end with trailers (`trailer`).
    pub fn new(chain: Option<Chain>, trailer: bool) -> Decoder {
        Decoder {
            state: State::SizeLine,
            chain: chain.map(|c| {
                let seed = c.seed;
                (c, seed)
            }),
            trailer,
            line: Vec::new(),
            claimed: None,
            hash: Sha256::new(),
            trailers: Vec::new(),
            trailer_text: String::new(),
            trailer_signature: None,
            decoded_bytes: 0,
        }
    }

    /// Body bytes handed on so far.
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded_bytes
    }

    /// The trailers, lower-case names, once done (the trailer signature excluded).
    pub fn trailers(&self) -> &[(String, String)] {
        &self.trailers
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes a line (without its CRLF) from `input`, across calls; `None` if it has not ended.
    fn take_line(&mut self, input: &mut Bytes) -> Result<Option<Vec<u8>>, S3Error> {
        while input.has_remaining() {
            let b = input.get_u8();
            self.line.push(b);
            if self.line.ends_with(b"\r\n") {
                self.line.truncate(self.line.len() - 2);
                return Ok(Some(std::mem::take(&mut self.line)));
            }
            if self.line.len() > LINE_BYTES_MAX {
                return Err(bad("an aws-chunked line is too long"));
            }
        }
        Ok(None)
    }

    fn check_chunk(&mut self) -> Result<(), S3Error> {
        let Some((chain, prev)) = &mut self.chain else {
            return Ok(());
        };
        let data_hash: [u8; 32] = std::mem::replace(&mut self.hash, Sha256::new())
            .finalize()
            .into();
        let Some(claimed) = self.claimed.take() else {
            return Err(mismatch(
                "a chunk of a signed body carries no chunk-signature",
            ));
        };
        let expected = payload_signature(chain, prev, &data_hash);
        use subtle::ConstantTimeEq;
        if !bool::from(expected.ct_eq(&claimed)) {
            return Err(mismatch("a chunk's signature does not match its data"));
        }
        *prev = claimed;
        Ok(())
    }

    fn size_line(&mut self, line: &[u8]) -> Result<u64, S3Error> {
        let line = std::str::from_utf8(line).map_err(|_| bad("a chunk-size line is not ASCII"))?;
        let (size, ext) = match line.split_once(';') {
            Some((s, e)) => (s, Some(e)),
            None => (line, None),
        };
        if size.is_empty() || size.len() > 16 {
            return Err(bad(format!("bad chunk size {size:?}")));
        }
        let n =
            u64::from_str_radix(size, 16).map_err(|_| bad(format!("bad chunk size {size:?}")))?;
        if n > CHUNK_BYTES_MAX {
            return Err(S3Error::new(
                Code::EntityTooLarge,
                "an aws-chunked chunk is over 5 GiB",
            ));
        }
        self.claimed = None;
        if let Some(ext) = ext {
            match ext.split_once('=') {
                Some(("chunk-signature", sig)) if self.chain.is_some() => {
                    let mut s = [0u8; 32];
                    if sig.len() != 64 || hex::decode_to_slice(sig, &mut s).is_err() {
                        return Err(mismatch("a chunk-signature is not 64 hex digits"));
                    }
                    self.claimed = Some(s);
                }
                _ => return Err(bad(format!("unexpected chunk extension {ext:?}"))),
            }
        }
        Ok(n)
    }

    fn trailer_line(&mut self, line: &[u8]) -> Result<(), S3Error> {
        let line = std::str::from_utf8(line).map_err(|_| bad("a trailer line is not ASCII"))?;
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(format!("a trailer line without a colon: {line:?}")));
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().to_string();
        if !self.trailer {
            return Err(bad("trailers after a body that declared none"));
        }
        if name == "x-amz-trailer-signature" {
            let mut s = [0u8; 32];
            if self.chain.is_none()
                || value.len() != 64
                || hex::decode_to_slice(&value, &mut s).is_err()
            {
                return Err(mismatch("a bad x-amz-trailer-signature"));
            }
            self.trailer_signature = Some(s);
            return Ok(());
        }
        if self.trailers.len() >= TRAILERS_MAX {
            return Err(bad("too many trailers"));
        }
        self.trailer_text.push_str(&name);
        self.trailer_text.push(':');
        self.trailer_text.push_str(&value);
        self.trailer_text.push('\n');
        self.trailers.push((name, value));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), S3Error> {
        if let Some((chain, prev)) = &self.chain {
            if self.trailer {
                let Some(claimed) = self.trailer_signature else {
                    return Err(mismatch(
                        "the trailer of a signed body carries no signature",
                    ));
                };
                let expected = trailer_signature(chain, prev, &self.trailer_text);
                use subtle::ConstantTimeEq;
                if !bool::from(expected.ct_eq(&claimed)) {
                    return Err(mismatch("the trailer's signature does not match"));
                }
            }
        }
        self.state = State::Done;
        Ok(())
    }

    /// Decodes what it can of `input` (taking what it uses from its front).
    pub fn next(&mut self, input: &mut Bytes) -> Result<Step, S3Error> {
        loop {
            match self.state {
                State::Done => {
                    return if input.has_remaining() {
                        Err(bad("bytes after the end of an aws-chunked body"))
                    } else {
                        Ok(Step::Done)
                    };
                }
                State::SizeLine => {
                    let Some(line) = self.take_line(input)? else {
                        return Ok(Step::NeedMore);
                    };
                    let n = self.size_line(&line)?;
                    if n == 0 {
                        self.check_chunk()?;
                        self.state = State::Trailers;
                    } else {
                        self.state = State::Data { left: n };
                    }
                }
                State::Data { left } => {
                    if !input.has_remaining() {
                        return Ok(Step::NeedMore);
                    }
                    let take = (input.len() as u64).min(left) as usize;
                    let d = input.split_to(take);
                    if self.chain.is_some() {
                        self.hash.update(&d);
                    }
                    self.decoded_bytes = self
                        .decoded_bytes
                        .checked_add(take as u64)
                        .ok_or_else(|| bad("an aws-chunked body too long"))?;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd { seen: 0 }
                    } else {
                        State::Data { left }
                    };
                    return Ok(Step::Data(d));
                }
                State::DataEnd { seen } => {
                    if !input.has_remaining() {
                        return Ok(Step::NeedMore);
                    }
                    let want = b"\r\n"[seen as usize];
                    if input.get_u8() != want {
                        return Err(bad("a chunk's data is not followed by CRLF"));
                    }
                    if seen == 1 {
                        self.check_chunk()?;
                        self.state = State::SizeLine;
                    } else {
                        self.state = State::DataEnd { seen: 1 };
                    }
                }
                State::Trailers => {
                    let Some(line) = self.take_line(input)? else {
                        return Ok(Step::NeedMore);
                    };
                    if line.is_empty() {
                        self.finish()?;
                    } else {
                        self.trailer_line(&line)?;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sigv4::signing_key;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn decode_all(mut d: Decoder, body: &[u8], piece: usize) -> Result<Vec<u8>, S3Error> {
        let mut out = Vec::new();
        for part in body.chunks(piece.max(1)) {
            let mut b = Bytes::copy_from_slice(part);
            loop {
                match d.next(&mut b)? {
                    Step::Data(x) => out.extend_from_slice(&x),
                    Step::NeedMore => break,
                    Step::Done => return Ok(out),
                }
            }
        }
        Err(bad("ended early"))
    }

    /// AWS's published example of a signed streaming upload: 65,536 and 1,024 bytes of 'a'.
    fn example() -> (Chain, Vec<u8>) {
        let chain = Chain {
            key: signing_key(SECRET, "20130524", "us-east-1", "s3"),
            amz_date: "20130524T000000Z".into(),
            scope: "20130524/us-east-1/s3/aws4_request".into(),
            seed: hex_sig("4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"),
        };
        let mut body = Vec::new();
        body.extend_from_slice(b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n");
        body.extend(std::iter::repeat_n(b'a', 65_536));
        body.extend_from_slice(b"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n");
        body.extend(std::iter::repeat_n(b'a', 1024));
        body.extend_from_slice(b"\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n");
        (chain, body)
    }

    fn hex_sig(s: &str) -> [u8; 32] {
        let mut o = [0u8; 32];
        hex::decode_to_slice(s, &mut o).unwrap();
        o
    }

    #[test]
    fn the_published_signed_example_decodes_in_any_pieces() {
        let (chain, body) = example();
        for piece in [1, 2, 3, 7, 100, 4096, body.len()] {
            let out = decode_all(Decoder::new(Some(chain.clone()), false), &body, piece).unwrap();
            assert_eq!(out.len(), 66_560, "piece {piece}");
            assert!(out.iter().all(|&b| b == b'a'));
        }
    }

    #[test]
    fn chunk_signature_makes_the_published_chain() {
        let (chain, _) = example();
        let first = chunk_signature(&chain, &chain.seed, &vec![b'a'; 65_536]);
        assert_eq!(
            hex::encode(first),
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
        let second = chunk_signature(&chain, &first, &[b'a'; 1024]);
        let last = chunk_signature(&chain, &second, b"");
        assert_eq!(
            hex::encode(last),
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        );
    }

    #[test]
    fn a_changed_byte_or_signature_is_refused() {
        let (chain, body) = example();
        // A data byte.
        let mut b = body.clone();
        b[200] = b'b';
        let e = decode_all(Decoder::new(Some(chain.clone()), false), &b, 999).unwrap_err();
        assert_eq!(e.code, Code::SignatureDoesNotMatch);
        // The chain's seed.
        let mut other = chain.clone();
        other.seed[0] ^= 1;
        let e = decode_all(Decoder::new(Some(other), false), &body, 999).unwrap_err();
        assert_eq!(e.code, Code::SignatureDoesNotMatch);
        // Chunks swapped in order would break the chain; a missing signature too.
        let unsigned = b"3\r\nabc\r\n0\r\n\r\n";
        let e = decode_all(Decoder::new(Some(chain), false), unsigned, 5).unwrap_err();
        assert_eq!(e.code, Code::SignatureDoesNotMatch);
    }

    #[test]
    fn unsigned_chunks_with_a_trailer() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n";
        for piece in [1, 4, body.len()] {
            let mut d = Decoder::new(None, true);
            let mut out = Vec::new();
            for part in body.chunks(piece) {
                let mut b = Bytes::copy_from_slice(part);
                while let Step::Data(x) = d.next(&mut b).unwrap() {
                    out.extend_from_slice(&x);
                }
            }
            assert!(d.is_done());
            assert_eq!(out, b"hello world");
            assert_eq!(
                d.trailers(),
                &[("x-amz-checksum-crc32".to_string(), "DUoRhQ==".to_string())]
            );
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [
            &b"zz\r\nab\r\n0\r\n\r\n"[..],
            b"2\r\nabX\r\n0\r\n\r\n",
            b"2;foo=bar\r\nab\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"0\r\nx-amz-checksum-crc32:AAAA\r\n\r\n",
            b"0\r\n\r\nextra",
        ] {
            let r = decode_all(Decoder::new(None, false), body, 3);
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(body));
        }
        let long = vec![b'1'; LINE_BYTES_MAX + 10];
        assert!(decode_all(Decoder::new(None, false), &long, 100).is_err());
    }
}

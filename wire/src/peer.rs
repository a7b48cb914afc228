//! The node-to-node shard protocol, carried on QUIC bidirectional streams (ALPN
//! [`PEER_ALPN`]). Version 1, all integers little-endian.
//!
//! A stream starts with the 4-byte preamble [`PREAMBLE`] (`"OSP"`, version 1) from the opening
//! side. Then the opener sends requests and the other side answers each one, in order, before
//! reading the next. A stream is one shard-file session: `OPEN` first (or a single `REMOVE`);
//! finishing the stream closes the file.
//!
//! Request header, [`REQUEST_BYTES`] = 20 bytes:
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 1 | op: 1 OPEN, 2 WRITE, 3 READ, 4 SYNC, 5 ALLOCATE, 6 REMOVE |
//! | 1 | 1 | open mode (OPEN): 0 read, 1 create a new file, 2 write (created if missing); else 0 |
//! | 2 | 1 | shard index (OPEN, REMOVE) |
//! | 3 | 1 | 0 |
//! | 4 | 2 | drive id (OPEN, REMOVE) |
//! | 6 | 2 | 0 |
//! | 8 | 8 | `a`: file id (OPEN, REMOVE), position (WRITE, READ), bytes (ALLOCATE) |
//! | 16 | 4 | `b`: file tag (OPEN, REMOVE), length (WRITE, READ) |
//!
//! A WRITE header is followed by `b` bytes of data. Positions and lengths of WRITE and READ are
//! multiples of 4096 (direct I/O).
//!
//! Answer header, [`ANSWER_BYTES`] = 8 bytes: status (0 ok, 1 error), three zero bytes, and the
//! length `n` of what follows (u32). An ok READ carries the bytes read (possibly fewer than
//! asked at the end of the file); an ok WRITE carries the count written as a u32; other oks
//! carry nothing. An error carries the OS error number as an i32 (0 if none) and a UTF-8
//! message.

/// QUIC ALPN of the shard protocol.
pub const PEER_ALPN: &[u8] = b"ostore-peer/1";
/// First bytes of every stream.
pub const PREAMBLE: [u8; 4] = *b"OSP\x01";
pub const REQUEST_BYTES: usize = 20;
pub const ANSWER_BYTES: usize = 8;
/// Largest READ or WRITE length accepted.
pub const IO_BYTES_MAX: u32 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Open = 1,
    Write = 2,
    Read = 3,
    Sync = 4,
    Allocate = 5,
    Remove = 6,
}

/// How OPEN opens the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpenMode {
    Read = 0,
    /// A new file, for writing (and reading); refused if it exists.
    Create = 1,
    /// An existing file (created if missing, never truncated), for writing and reading: a
    /// resumable upload's next bytes.
    Write = 2,
}

/// One request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub mode: OpenMode,
    pub index: u8,
    pub drive: u16,
    pub a: u64,
    pub b: u32,
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_BYTES] {
        let mut h = [0u8; REQUEST_BYTES];
        h[0] = self.op as u8;
        h[1] = self.mode as u8;
        h[2] = self.index;
        h[4..6].copy_from_slice(&self.drive.to_le_bytes());
        h[8..16].copy_from_slice(&self.a.to_le_bytes());
        h[16..20].copy_from_slice(&self.b.to_le_bytes());
        h
    }

    pub fn decode(h: &[u8; REQUEST_BYTES]) -> Result<Request, String> {
        let op = match h[0] {
            1 => Op::Open,
            2 => Op::Write,
            3 => Op::Read,
            4 => Op::Sync,
            5 => Op::Allocate,
            6 => Op::Remove,
            o => return Err(format!("unknown peer op {o}")),
        };
        if h[1] > 2 || h[3] != 0 || h[6] != 0 || h[7] != 0 {
            return Err("malformed peer request header".into());
        }
        let r = Request {
            op,
            mode: match h[1] {
                0 => OpenMode::Read,
                1 => OpenMode::Create,
                _ => OpenMode::Write,
            },
            index: h[2],
            drive: u16::from_le_bytes([h[4], h[5]]),
            a: u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")),
            b: u32::from_le_bytes(h[16..20].try_into().expect("4 bytes")),
        };
        if matches!(op, Op::Write | Op::Read) && r.b > IO_BYTES_MAX {
            return Err(format!("peer I/O of {} bytes is over the limit", r.b));
        }
        Ok(r)
    }
}

/// An answer header: `Ok(len)` or `Err(len)` of the payload that follows.
pub fn encode_answer(ok: bool, len: u32) -> [u8; ANSWER_BYTES] {
    let mut h = [0u8; ANSWER_BYTES];
    h[0] = if ok { 0 } else { 1 };
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h
}

pub fn decode_answer(h: &[u8; ANSWER_BYTES]) -> Result<(bool, u32), String> {
    if h[0] > 1 || h[1..4] != [0, 0, 0] {
        return Err("malformed peer answer header".into());
    }
    Ok((
        h[0] == 0,
        u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")),
    ))
}

/// The payload of an error answer.
pub fn encode_error(errno: i32, message: &str) -> Vec<u8> {
    let mut v = errno.to_le_bytes().to_vec();
    v.extend_from_slice(message.as_bytes());
    v
}

pub fn decode_error(p: &[u8]) -> (i32, String) {
    if p.len() < 4 {
        return (0, "malformed peer error".into());
    }
    (
        i32::from_le_bytes(p[..4].try_into().expect("4 bytes")),
        String::from_utf8_lossy(&p[4..]).into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_request_and_answer() {
        let r = Request {
            op: Op::Open,
            mode: OpenMode::Create,
            index: 3,
            drive: 0x0102,
            a: 0x1122_3344_5566_7788,
            b: 0xAABB_CCDD,
        };
        let h = r.encode();
        assert_eq!(
            h,
            [
                1, 1, 3, 0, 0x02, 0x01, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xDD,
                0xCC, 0xBB, 0xAA
            ]
        );
        assert_eq!(Request::decode(&h).unwrap(), r);
        let mut bad = h;
        bad[0] = 9;
        assert!(Request::decode(&bad).is_err());
        let mut big = Request {
            op: Op::Write,
            b: IO_BYTES_MAX + 1,
            ..r
        }
        .encode();
        assert!(Request::decode(&big).is_err());
        big[1] = 7;
        assert!(Request::decode(&big).is_err());
        assert_eq!(encode_answer(false, 5), [1, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(decode_answer(&encode_answer(true, 9)).unwrap(), (true, 9));
        assert!(decode_answer(&[2, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let e = encode_error(28, "no space");
        assert_eq!(decode_error(&e), (28, "no space".to_string()));
    }
}

//! The targets. Each must not panic on any input; the asserts inside state what a parser
//! promises about what it accepts.

use crate::input::{headers, Input, Target};
use ostore_control::records;
use ostore_dataplane::web as api;
use ostore_engine::range::{resolve, RangeDecision};

pub static ALL: &[Target] = &[
    Target {
        name: "range",
        run: range,
        dictionary: &[
            b"bytes=",
            b"-",
            b",",
            b" ",
            b"items=",
            b"18446744073709551615",
        ],
        len_max: 256,
    },
    Target {
        name: "http_headers",
        run: http_headers,
        dictionary: &[
            b"\"",
            b"W/",
            b"*",
            b",",
            b"bytes=",
            b"-",
            b"blake3 ",
            b"sha1 ",
            b"Bearer ",
            b"bearer ",
            b"zstd",
            b"gzip",
            b";q=",
            b"0.5",
            b"GMT",
            b"Thu, 01 Jan 1970 00:00:00 GMT",
            b"\x00",
        ],
        len_max: 1024,
    },
    Target {
        name: "key_and_query",
        run: key_and_query,
        dictionary: &[
            b"%",
            b"%00",
            b"%ff",
            b"%2F",
            b"&",
            b"=",
            b"bucket=",
            b"version=",
            b"/",
        ],
        len_max: 2048,
    },
    Target {
        name: "tus_metadata",
        run: tus_metadata,
        dictionary: &[
            b"key ",
            b"bucket ",
            b"blake3 ",
            b",",
            b" ",
            b"=",
            b"dGVzdA==",
        ],
        len_max: 1024,
    },
    Target {
        name: "shard_header",
        run: shard_header,
        dictionary: &[b"OSSHARD\0"],
        len_max: 4200,
    },
    Target {
        name: "block",
        run: block,
        dictionary: &[],
        len_max: 8192,
    },
    Target {
        name: "peer_frames",
        run: peer_frames,
        dictionary: &[b"OSP\x01"],
        len_max: 128,
    },
    Target {
        name: "rpc_envelope",
        run: rpc_envelope,
        dictionary: &[b"\x01"],
        len_max: 1024,
    },
    Target {
        name: "records",
        run: records_values,
        dictionary: &[b"\x01", b"\x02"],
        len_max: 1024,
    },
    Target {
        name: "seek_table",
        run: seek_table,
        dictionary: &[
            b"\x5e\x2a\x4d\x18",
            b"\xb1\xea\x92\x8f",
            b"\x28\xb5\x2f\xfd",
        ],
        len_max: 1024,
    },
    Target {
        name: "outboard",
        run: outboard,
        dictionary: &[],
        len_max: 12 * 1024,
    },
    Target {
        name: "hash_state",
        run: hash_state,
        dictionary: &[],
        len_max: 512,
    },
    Target {
        name: "keys",
        run: keys,
        dictionary: &[],
        len_max: 64,
    },
    Target {
        name: "s3_sigv4",
        run: s3_sigv4,
        dictionary: &[
            b"AWS4-HMAC-SHA256 ",
            b"AWS root:",
            b"Fri, 24 May 2013 00:00:00 GMT",
            b"Credential=",
            b", SignedHeaders=",
            b", Signature=",
            b"/s3/aws4_request",
            b"host;x-amz-content-sha256;x-amz-date",
            b"X-Amz-Signature=",
            b"X-Amz-Expires=",
            b"UNSIGNED-PAYLOAD",
            b"STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            b"20130524T000000Z",
            b"%",
            b"&",
            b"=",
            b"/",
        ],
        len_max: 2048,
    },
    Target {
        name: "s3_chunked",
        run: s3_chunked,
        dictionary: &[
            b"\r\n",
            b";chunk-signature=",
            b"0\r\n",
            b"x-amz-checksum-crc32:",
            b"x-amz-trailer-signature:",
            b"ffffffffffffffff",
        ],
        len_max: 4096,
    },
    Target {
        name: "s3_xml",
        run: s3_xml,
        dictionary: &[
            b"<Delete>",
            b"</Delete>",
            b"<Object><Key>",
            b"</Key></Object>",
            b"<VersionId>",
            b"<Quiet>true</Quiet>",
            b"<CompleteMultipartUpload>",
            b"<Part><PartNumber>",
            b"</PartNumber><ETag>",
            b"</ETag></Part>",
            b"&amp;",
            b"<![CDATA[",
            b"]]>",
            b"<!DOCTYPE",
        ],
        len_max: 4096,
    },
    Target {
        name: "trust",
        run: trust,
        dictionary: &[
            b"osj1_",
            b"_",
            b"0123456789abcdef0123456789abcdef",
            b"-----BEGIN CERTIFICATE-----\n",
            b"-----END CERTIFICATE-----\n",
            b"-----BEGIN PRIVATE KEY-----\n",
            b"\x30\x82",
            b"\x17\x0d",
            b"\x18\x0f",
            b"Z",
        ],
        len_max: 2048,
    },
];

/// `Range` against any object size: a partial answer lies inside the object and is not empty.
pub fn range(data: &[u8]) {
    let mut i = Input(data);
    let size = i.u64();
    let header = String::from_utf8_lossy(i.rest());
    if let RangeDecision::Partial(r) = resolve(Some(&header), size) {
        assert!(
            r.start < r.end && r.end <= size,
            "{header:?} on {size}: {r:?}"
        );
    }
}

/// Every request header the API parses, as a client may send them.
pub fn http_headers(data: &[u8]) {
    let mut i = Input(data);
    let modified_ms = i.u64();
    let h = headers(&mut i);
    let etag = format!("\"{}\"", hex::encode([7u8; 32]));
    let _ = api::preconditions(&h, &etag, modified_ms);
    let _ = api::write_condition(&h);
    let _ = api::accepted_coding(&h);
    let _ = api::parse_digest(&h);
    let _ = ostore_dataplane::tus::Checksum::parse(&h);
    for name in ["upload-offset", "upload-length", "content-length"] {
        let _ = ostore_dataplane::tus::header_u64(&h, name);
    }
    if let Some(v) = h.get("authorization") {
        if let Some(t) = ostore_server::conn::bearer_token(v.as_bytes()) {
            assert!(!t.is_empty());
        }
    }
    if let Some(v) = h.get("range").and_then(|v| v.to_str().ok()) {
        let _ = resolve(Some(v), modified_ms);
    }
}

/// An object key from the path and the query string.
pub fn key_and_query(data: &[u8]) {
    let mut i = Input(data);
    let raw = String::from_utf8_lossy(i.field()).into_owned();
    if let Ok(k) = api::decode_key(&raw) {
        assert!(ostore_control::keys::valid_object_key(&k));
    }
    let q = api::parse_query(&String::from_utf8_lossy(i.rest()));
    if let Ok(b) = api::bucket_of(&q) {
        assert!(ostore_control::keys::valid_bucket(&b));
    }
    if let Ok(Some(v)) = api::version_of(&q) {
        assert!(v > 0);
    }
}

/// tus `Upload-Metadata`.
pub fn tus_metadata(data: &[u8]) {
    let _ = ostore_dataplane::tus::parse_metadata(&String::from_utf8_lossy(data));
}

/// A shard file's header as read back from a drive: what decodes encodes to the same bytes.
pub fn shard_header(data: &[u8]) {
    if let Ok(h) = ostore_wire::shard::ShardHeader::decode(data) {
        let mut out = vec![0u8; ostore_wire::shard::HEADER_BYTES];
        h.encode(&mut out);
        assert_eq!(ostore_wire::shard::ShardHeader::decode(&out).ok(), Some(h));
    }
}

/// A block read back from a drive, checked against the payload length, index and tag the
/// reader expects.
pub fn block(data: &[u8]) {
    let mut i = Input(data);
    let payload = i.u32() as usize % (ostore_wire::shard::BLOCK_PAYLOAD_BYTES_MAX + 1);
    let index = i.u32();
    let tag = i.u32();
    let block = i.rest();
    let unchecked = ostore_wire::shard::open_block_unchecked(block, payload, index, tag);
    if let Ok(p) = unchecked {
        assert_eq!(p.len(), payload);
    }
    if let Ok(p) = ostore_wire::shard::open_block(block, payload, index, tag) {
        assert_eq!(p.len(), payload);
        // What passes with its CRC passes without it, the same bytes.
        assert_eq!(unchecked.ok(), Some(p));
    }
    // A block sealed from these bytes opens to them.
    let len = ostore_wire::shard::block_len_on_disk(payload.min(block.len()));
    let mut b = vec![0u8; len];
    let n = payload.min(block.len());
    b[..n].copy_from_slice(&block[..n]);
    ostore_wire::shard::seal_block(&mut b, n, index, tag);
    assert_eq!(
        ostore_wire::shard::open_block(&b, n, index, tag).ok(),
        Some(&block[..n])
    );
}

/// Peer protocol request and answer headers and error payloads, as another node sends them.
pub fn peer_frames(data: &[u8]) {
    use ostore_wire::peer::*;
    let mut h = [0u8; REQUEST_BYTES];
    let n = data.len().min(REQUEST_BYTES);
    h[..n].copy_from_slice(&data[..n]);
    if let Ok(r) = Request::decode(&h) {
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        if matches!(r.op, Op::Write | Op::Read) {
            assert!(r.b <= IO_BYTES_MAX);
        }
    }
    let mut a = [0u8; ANSWER_BYTES];
    let m = data.len().min(ANSWER_BYTES);
    a[..m].copy_from_slice(&data[..m]);
    if let Ok((ok, len)) = decode_answer(&a) {
        assert_eq!(decode_answer(&encode_answer(ok, len)), Ok((ok, len)));
    }
    let _ = decode_error(data);
}

/// The control-plane envelope: a request as a node sends it, an answer as the control plane
/// sends it back.
pub fn rpc_envelope(data: &[u8]) {
    use ostore_control::rpc;
    if let Ok((token, req)) = rpc::decode_request(data) {
        let again = rpc::encode_request(&token, &req);
        let (t2, _) = rpc::decode_request(&again).expect("what decoded encodes and decodes");
        assert_eq!(t2, token);
    }
    let _ = rpc::decode_answer::<ostore_control::meta::Resolved>(data);
    let _ = rpc::decode_answer::<Option<records::ContentRec>>(data);
    let _ = rpc::decode_answer::<ostore_control::cluster::ClusterView>(data);
    let _ = rpc::decode_answer::<Vec<(u64, records::IntentRec)>>(data);
}

/// Metadata values as read back from the store.
pub fn records_values(data: &[u8]) {
    if let Ok(c) = records::decode_content(data) {
        assert_eq!(
            records::decode_content(&records::encode_content(&c)).ok(),
            Some(c)
        );
    }
    let _ = records::decode::<records::VersionRec>(data);
    let _ = records::decode::<records::AccessKeyRec>(data);
    let _ = records::decode::<ostore_control::multipart::MpuRec>(data);
    let _ = records::decode::<ostore_control::multipart::PartRec>(data);
    let _ = records::decode::<records::HeadRec>(data);
    let _ = records::decode::<records::IntentRec>(data);
    let _ = records::decode::<records::DriveRec>(data);
    let _ = records::decode::<records::RepairRec>(data);
    let _ = records::decode::<ostore_control::upload::UploadRec>(data);
    let _ = records::decode::<ostore_control::cluster::NodeRec>(data);
    let _ = records::decode::<ostore_control::scrub::ScrubCursor>(data);
    let _ = records::decode::<ostore_control::trust::CaRec>(data);
    let _ = records::decode::<ostore_control::trust::RevokedRec>(data);
    let _ = records::decode::<ostore_control::trust::SecretRec>(data);
}

/// A seek table read back from a drive (CRC-checked, but never trusted for sizes), and a frame
/// decompressed by its entries. The object and stored sizes come from the metadata, which the
/// drive cannot change; here they are whatever the table adds up to, so mutated entries reach
/// the reader.
pub fn seek_table(data: &[u8]) {
    use ostore_engine::compress::{decompress_frame, FrameEntry, FrameIndex};
    let mut i = Input(data);
    let entries = i.u8() as usize;
    let table_len = (entries * 8 + 17).min(i.0.len());
    let table = &i.0[..table_len];
    let frame = &i.0[table_len..];
    let (mut object_bytes, mut stored_bytes) = (0u64, table.len() as u64);
    if table.len() >= 17 {
        if let Some(fs) = FrameEntry::decode_all(&table[8..table.len() - 9]) {
            for f in fs {
                object_bytes += f.object_bytes as u64;
                stored_bytes += f.stored_bytes as u64;
            }
        }
    }
    let Ok(index) = FrameIndex::parse(table, object_bytes, stored_bytes) else {
        return;
    };
    let frames = index.frame_count();
    if frames == 0 || object_bytes == 0 {
        return;
    }
    let plan = index.plan(0..object_bytes);
    assert!(plan.frames.end == frames && plan.stored.end <= stored_bytes);
    let mut dctx = zstd::bulk::Decompressor::new().expect("zstd");
    let mut out = Vec::new();
    let _ = decompress_frame(&mut dctx, &index, 0, frame, &mut out);
    assert!(
        out.capacity() <= 2 * ostore_engine::compress::FRAME_BYTES,
        "a frame's entry made the reader allocate {} bytes",
        out.capacity()
    );
}

/// A resumable upload's saved hash state, as read back from the metadata: one that loads can
/// take more bytes and finish.
pub fn hash_state(data: &[u8]) {
    if let Ok(mut st) = postcard::from_bytes::<ostore_engine::hash::HashState>(data) {
        st.update(b"more bytes");
        let _ = st.finalize();
    }
}

/// Keys of the metadata's indexes, as a range read returns them.
pub fn keys(data: &[u8]) {
    use ostore_control::keys;
    if let Some((since, h)) = keys::parse_unreferenced(data) {
        assert_eq!(keys::unreferenced(since, &h), data);
    }
    if let Some((h, shard)) = keys::parse_drive_shard(data) {
        assert_eq!(
            keys::parse_drive_shard(&keys::drive_shard(0, &h, shard)),
            Some((h, shard))
        );
    }
}

/// The S3 secret the `s3_sigv4` target's requests are signed with (its seeds sign with it).
pub const S3_FUZZ_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// The time (seconds) the `s3_sigv4` target checks requests at: its seeds' time.
pub const S3_FUZZ_NOW_S: i64 = 1_369_353_600;

/// A signed S3 request (SigV4 or SigV2): method, path and query fields, then headers. Whatever the bytes, no
/// panic; a request that verifies names the one key there is, and routes to an operation on one
/// bucket (a single path segment) or fails with an S3 error.
pub fn s3_sigv4(data: &[u8]) {
    use ostore_s3::auth::verify;
    use ostore_s3::sigv4::RequestHead;
    let mut i = Input(data);
    let method = String::from_utf8_lossy(i.field()).into_owned();
    let path = String::from_utf8_lossy(i.field()).into_owned();
    let query = String::from_utf8_lossy(i.field()).into_owned();
    let h = headers(&mut i);
    let head = RequestHead {
        method: &method,
        path: &path,
        query: &query,
        headers: &h,
    };
    let secret = |ak: &str| (ak == "root").then(|| S3_FUZZ_SECRET.to_string());
    // Path-style, and as a virtual-hosted request for a bucket (SigV2 signs the bucket).
    for host_bucket in [None, Some("b")] {
        if let Ok(v) = verify(&head, host_bucket, S3_FUZZ_NOW_S, &secret) {
            assert_eq!(v.access_key, "root");
        }
    }
    if let Ok(op) =
        ostore_s3::route::route(&method, &path, &query, h.contains_key("x-amz-copy-source"))
    {
        if let Some(b) = op.bucket() {
            assert!(!b.is_empty() && !b.contains('/'), "{b:?}");
        }
    }
    if let Ok(c) = ostore_s3::route::copy_source(&path) {
        assert!(!c.bucket.is_empty() && !c.key.is_empty(), "{c:?}");
    }
}

/// An aws-chunked body (a flags byte: signed, trailer; a piece size), fed in pieces: the data
/// handed on is exactly what the decoder counts, never an empty piece.
pub fn s3_chunked(data: &[u8]) {
    use ostore_s3::chunked::{Decoder, Step};
    let mut i = Input(data);
    let flags = i.u8();
    let piece = (i.u8() as usize % 64) + 1;
    let body = i.rest();
    let chain = (flags & 1 == 1).then(|| ostore_s3::sigv4::Chain {
        key: ostore_s3::sigv4::signing_key(S3_FUZZ_SECRET, "20130524", "us-east-1", "s3"),
        amz_date: "20130524T000000Z".into(),
        scope: "20130524/us-east-1/s3/aws4_request".into(),
        seed: [0x4f; 32],
    });
    let mut d = Decoder::new(chain, flags & 2 == 2);
    let mut out = 0u64;
    'feed: for part in body.chunks(piece) {
        let mut b = bytes::Bytes::copy_from_slice(part);
        loop {
            match d.next(&mut b) {
                Ok(Step::Data(x)) => {
                    assert!(!x.is_empty());
                    out += x.len() as u64;
                }
                Ok(Step::NeedMore) => break,
                Ok(Step::Done) => {
                    assert!(d.is_done());
                    break 'feed;
                }
                Err(_) => break 'feed,
            }
        }
    }
    assert_eq!(out, d.decoded_bytes());
}

/// S3's XML request bodies (first byte picks the document): what parses keeps S3's limits.
pub fn s3_xml(data: &[u8]) {
    use ostore_s3::xml;
    let mut i = Input(data);
    let which = i.u8();
    let body = i.rest();
    match which % 4 {
        0 => {
            if let Ok((objs, _)) = xml::delete_objects(body) {
                assert!(!objs.is_empty() && objs.len() <= xml::DELETE_OBJECTS_MAX);
                assert!(objs.iter().all(|o| !o.key.is_empty()));
            }
        }
        1 => {
            if let Ok(parts) = xml::complete_multipart(body) {
                assert!(!parts.is_empty() && parts.len() <= xml::PARTS_MAX);
                assert!(parts.iter().all(|p| (1..=10_000).contains(&p.number)));
            }
        }
        2 => {
            let _ = xml::versioning(body);
        }
        _ => {
            let _ = xml::location_constraint(body);
        }
    }
}

/// What a joining node and the control plane parse of each other, and what a node reads back
/// from its drives: join tokens (text), certificates' expiry (DER, read by hand), identities
/// (PEM). A token that parses prints back to the same token.
pub fn trust(data: &[u8]) {
    match data.first() {
        Some(0) => {
            if let Ok(s) = std::str::from_utf8(&data[1..]) {
                if let Ok(t) = ostore_wire::join::Token::parse(s) {
                    assert_eq!(ostore_wire::join::Token::parse(&t.to_string()), Ok(t));
                }
            }
        }
        Some(1) => {
            let _ = ostore_transport::tls::not_after_s(&data[1..]);
        }
        Some(2) => {
            // A sealed value as the metadata store may hand it back.
            let _ =
                ostore_transport::tls::unseal(b"a cluster key of 32 characters..", b"", &data[1..]);
        }
        Some(_) => {
            let _ = ostore_transport::tls::Identity::from_pem(&data[1..], "ostore-node");
        }
        None => {}
    }
}

/// The outboard check (`engine::tree`), whose entries come from the drives: any entries, data
/// and group range are refused without a panic, and an honest outboard verifies every range.
pub fn outboard(data: &[u8]) {
    use ostore_engine::tree::{outboard, Cv, Shape};
    let mut i = Input(data);
    let group = 1024u64 << (i.u8() % 2);
    let fanout = 2u64 << (i.u8() % 3);
    let (a, b) = (u64::from(i.u8()), u64::from(i.u8()));
    let honest = i.u8() % 2 == 0;
    let content = i.rest();
    let shape = Shape::with(content.len() as u64, group, fanout);
    let root = blake3::hash(content);
    let n = shape.groups();
    let g = a % (n + 2)..b % (n + 2);
    let valid = g.start < g.end && g.end <= n;
    if shape.levels.is_empty() {
        assert!(shape.verify(&root, g, &[], content).is_ok());
        return;
    }
    let data_of = |g: &std::ops::Range<u64>| -> &[u8] {
        if !valid {
            return content;
        }
        let r = shape.groups_bytes(g);
        &content[r.start as usize..r.end as usize]
    };
    if honest {
        let ob = outboard(content, group, fanout);
        let r = shape.verify_in(&root, g.clone(), &ob, data_of(&g));
        assert_eq!(
            r.is_ok(),
            valid,
            "an honest outboard: {r:?} for groups {g:?} of {n}"
        );
    } else {
        // Entries made of the content's own bytes, cut to whatever lengths the plan asks.
        let cvs: Vec<Cv> = content
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32"))
            .collect();
        let lens: Vec<usize> = if valid {
            shape
                .plan(g.clone())
                .iter()
                .map(|r| (r.end - r.start) as usize)
                .collect()
        } else {
            vec![cvs.len() / 2, cvs.len() - cvs.len() / 2]
        };
        let mut at = 0;
        let mut refs: Vec<&[Cv]> = Vec::new();
        for l in lens {
            let e = (at + l).min(cvs.len());
            refs.push(&cvs[at..e]);
            at = e;
        }
        let _ = shape.verify(&root, g.clone(), &refs, data_of(&g));
    }
}

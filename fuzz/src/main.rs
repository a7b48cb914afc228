//! `ostore-fuzz`: runs the fuzz targets for as long as asked, or writes their seed corpus.
//!
//!     cargo run --release -p ostore-fuzz -- run [TARGET ...] [--seconds N] [--seed S]
//!     cargo run --release -p ostore-fuzz -- list
//!     cargo run --release -p ostore-fuzz -- seeds      # rewrites fuzz/corpus/*/seed-*
//!
//! A crash stops the run, is saved under `target/fuzz-crashes/TARGET/`, and exits 1.

use ostore_fuzz::{all, by_name, corpus_dir, run, save_crash};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") => {
            for t in all() {
                println!("{}", t.name);
            }
        }
        Some("seeds") => seeds(),
        Some("run") => {
            let mut seconds = 60u64;
            let mut seed = 1u64;
            let mut names = Vec::new();
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--seconds" => seconds = it.next().and_then(|s| s.parse().ok()).unwrap_or(60),
                    "--seed" => seed = it.next().and_then(|s| s.parse().ok()).unwrap_or(1),
                    n => names.push(n.to_string()),
                }
            }
            let targets: Vec<_> = if names.is_empty() {
                all().iter().collect()
            } else {
                names
                    .iter()
                    .map(|n| {
                        by_name(n).unwrap_or_else(|| {
                            eprintln!("no target {n:?} (ostore-fuzz list)");
                            std::process::exit(2)
                        })
                    })
                    .collect()
            };
            for t in targets {
                let s = run(t, seed, u64::MAX, Duration::from_secs(seconds));
                println!(
                    "{:<14} {:>12} execs {:>10.0} execs/s",
                    t.name,
                    s.execs,
                    s.execs_per_s()
                );
                if let Some((input, msg)) = s.crash {
                    let p = save_crash(t.name, &input);
                    eprintln!("{}: CRASH: {msg}\n  input saved to {p:?}", t.name);
                    std::process::exit(1);
                }
            }
        }
        _ => {
            eprintln!(
                "usage: ostore-fuzz run [TARGET ...] [--seconds N] [--seed S] | list | seeds"
            );
            std::process::exit(2);
        }
    }
}

/// Valid inputs for each target, made with the real encoders, so mutation starts from bytes
/// that pass the first checks.
fn seeds() {
    use ostore_control::records::{self, ContentRec, Encoding, ShardLoc, Stored, Tree, VersionRec};
    let put = |target: &str, i: usize, bytes: Vec<u8>| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(format!("seed-{i:02}")), bytes).expect("seed");
    };
    // range: 8 bytes of size, then the header.
    for (i, h) in [
        "bytes=0-99",
        "bytes=5-",
        "bytes=-10",
        "bytes=5-18446744073709551615",
        "bytes=0-1,3-4",
    ]
    .iter()
    .enumerate()
    {
        let mut v = 1000u64.to_le_bytes().to_vec();
        v.extend_from_slice(h.as_bytes());
        put("range", i, v);
    }
    // http_headers: 8 bytes of time, then (name index, value, 0) triples.
    let header = |pairs: &[(u8, &str)]| {
        let mut v = 1_700_000_000_000u64.to_le_bytes().to_vec();
        for (n, val) in pairs {
            v.push(*n);
            v.extend_from_slice(val.as_bytes());
            v.push(0);
        }
        v
    };
    let etag = format!("\"{}\"", hex::encode([7u8; 32]));
    put(
        "http_headers",
        0,
        header(&[(0, "bytes=1-2"), (6, "zstd;q=0.5, gzip")]),
    );
    put("http_headers", 1, header(&[(1, &etag), (2, "W/\"x\", *")]));
    put(
        "http_headers",
        2,
        header(&[
            (3, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (5, "Wed, 21 Oct 2015 07:28:00 GMT"),
        ]),
    );
    put(
        "http_headers",
        3,
        header(&[(7, &hex::encode([1u8; 32])), (13, "Bearer abc")]),
    );
    put(
        "http_headers",
        4,
        header(&[
            (9, "blake3 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            (10, "5"),
            (12, "18446744073709551613"),
        ]),
    );
    put(
        "key_and_query",
        0,
        b"photos%2F1.jpg\0bucket=b1&version=3".to_vec(),
    );
    put("key_and_query", 1, b"a/b/c\0prefix=p&limit=10".to_vec());
    put(
        "tus_metadata",
        0,
        b"key cGhvdG9zLzEuanBn,bucket ZGVmYXVsdA==,empty".to_vec(),
    );
    // shard_header: a real header.
    let h = ostore_wire::shard::ShardHeader {
        data_shards: 4,
        parity_shards: 2,
        shard_index: 3,
        file_tag: 0xdead_beef,
        object_size_bytes: 3 << 20,
        blake3: [9; 32],
        block_count: 12,
    };
    let mut b = vec![0u8; ostore_wire::shard::HEADER_BYTES];
    h.encode(&mut b);
    put("shard_header", 0, b);
    // block: payload length, index, tag (8 bytes each), then a sealed block.
    for (i, payload) in [100usize, 4000].into_iter().enumerate() {
        let len = ostore_wire::shard::block_len_on_disk(payload);
        let mut blk = vec![0x5a; len];
        ostore_wire::shard::seal_block(&mut blk, payload, 7, 42);
        let mut v = (payload as u64).to_le_bytes().to_vec();
        v.extend_from_slice(&7u64.to_le_bytes());
        v.extend_from_slice(&42u64.to_le_bytes());
        v.extend_from_slice(&blk);
        put("block", i, v);
    }
    // peer_frames: a request header and an answer header.
    use ostore_wire::peer::{encode_answer, Op, OpenMode, Request};
    for (i, op) in [Op::Open, Op::Write, Op::Read].into_iter().enumerate() {
        let r = Request {
            op,
            mode: OpenMode::Create,
            index: 2,
            drive: 5,
            a: 4096,
            b: 65536,
        };
        put("peer_frames", i, r.encode().to_vec());
    }
    put("peer_frames", 3, encode_answer(false, 12).to_vec());
    // rpc_envelope: requests and answers as they cross the wire.
    use ostore_control::rpc::{encode_answer as rpc_answer, encode_request, Request as Rq, Token};
    let token = Token {
        id: [3; 16],
        issued_ms: 1_700_000_000_000,
    };
    put(
        "rpc_envelope",
        0,
        encode_request(
            &token,
            &Rq::Resolve {
                bucket: "default".into(),
                key: "a/b".into(),
                version: Some(2),
            },
        ),
    );
    put("rpc_envelope", 1, encode_request(&token, &Rq::Cluster));
    let content = ContentRec {
        size_bytes: 3 << 20,
        refs: 2,
        created_ms: 1_700_000_000_000,
        unreferenced_since_ms: None,
        stored: Stored::Sharded {
            data: 4,
            parity: 2,
            shards: (0..6)
                .map(|i| ShardLoc {
                    index: i,
                    drive: i as u16,
                    file_id: 1000 + i as u64,
                    file_tag: 77,
                })
                .collect(),
        },
        damaged: false,
        encoding: Encoding::Identity,
        tree: Tree::Outboard,
    };
    put(
        "rpc_envelope",
        2,
        rpc_answer(&Ok(postcard::to_stdvec(&Some(content.clone())).unwrap())),
    );
    put("records", 0, records::encode_content(&content));
    put(
        "records",
        1,
        records::encode(&VersionRec {
            version: 3,
            created_ms: 1_700_000_000_000,
            size_bytes: 12,
            blake3: [1; 32],
            delete_marker: false,
            attrs: records::ObjectAttrs {
                md5: Some([2; 16]),
                parts: 0,
                headers: vec![("content-type".into(), "text/plain".into())],
            },
        }),
    );
    // seek_table: object size, stored size, the table's length in entries, table, a frame.
    let object = vec![b'a'; 300_000];
    let mut w = ostore_engine::compress::FrameWriter::new().unwrap();
    let mut stored = Vec::new();
    w.push(&object, &mut stored).unwrap();
    w.flush(&mut stored).unwrap();
    let first_frame_len = w.frames()[0].stored_bytes as usize;
    let mut table = Vec::new();
    ostore_engine::compress::write_seek_table(w.frames(), &mut table);
    let mut v = vec![w.frames().len() as u8];
    v.extend_from_slice(&table);
    v.extend_from_slice(&stored[..first_frame_len]);
    put("seek_table", 0, v);
    // outboard: group and fan-out selectors, a group range, honest or not, then the content
    // (its outboard is built by the target itself).
    for (n, (head, len)) in [([0u8, 0, 0, 3, 0], 5000usize), ([1, 1, 1, 2, 1], 9000)]
        .into_iter()
        .enumerate()
    {
        let mut v = head.to_vec();
        v.extend((0..len).map(|i| (i * (2 * n + 1) % 251) as u8));
        put("outboard", n, v);
    }
    let mut st = ostore_engine::hash::HashState::new();
    st.update(&vec![1u8; 200_000]);
    put("hash_state", 0, postcard::to_stdvec(&st).unwrap());
    put(
        "keys",
        0,
        ostore_control::keys::unreferenced(1_700_000_000_000, &[4; 32]),
    );
    put("keys", 1, ostore_control::keys::drive_shard(3, &[4; 32], 5));
    // s3_sigv4: signed requests, in the header and presigned (method, path, query fields, then
    // headers: name index, value, 0).
    let signer = ostore_s3::sigv4::Signer {
        access_key: "root",
        secret: ostore_fuzz::targets::S3_FUZZ_SECRET,
        region: "us-east-1",
        now_s: ostore_fuzz::targets::S3_FUZZ_NOW_S,
    };
    for (i, (method, path, query)) in [
        ("GET", "/photos/2024/a%20b.jpg", "versionId=3"),
        ("PUT", "/photos", ""),
        ("GET", "/photos", "list-type=2&prefix=a%2F&delimiter=%2F"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut h = http::HeaderMap::new();
        h.insert("host", http::HeaderValue::from_static("127.0.0.1:9000"));
        let auth = ostore_s3::sigv4::sign(
            method,
            path,
            query,
            &mut h,
            ostore_s3::sigv4::UNSIGNED_PAYLOAD,
            &signer,
        );
        let mut v = Vec::new();
        for f in [method, path, query] {
            v.extend_from_slice(f.as_bytes());
            v.push(0);
        }
        let idx = |n: &str| {
            ostore_fuzz::input::HEADER_NAMES
                .iter()
                .position(|x| *x == n)
                .unwrap() as u8
        };
        for name in ["host", "x-amz-date", "x-amz-content-sha256"] {
            v.push(idx(name));
            v.extend_from_slice(h[name].as_bytes());
            v.push(0);
        }
        v.push(idx("authorization"));
        v.extend_from_slice(auth.as_bytes());
        v.push(0);
        put("s3_sigv4", i, v);
    }
    put(
        "s3_sigv4",
        3,
        b"GET\0/test.txt\0X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404\0\x10examplebucket.s3.amazonaws.com\0".to_vec(),
    );
    // A SigV2 header-signed request, its time in x-amz-date.
    {
        let date = "Fri, 24 May 2013 00:00:00 GMT";
        let mut h = http::HeaderMap::new();
        h.insert("x-amz-date", http::HeaderValue::from_static(date));
        let head = ostore_s3::sigv4::RequestHead {
            method: "GET",
            path: "/photos/a.jpg",
            query: "",
            headers: &h,
        };
        let sig = ostore_s3::sigv2::signature(
            ostore_fuzz::targets::S3_FUZZ_SECRET,
            &ostore_s3::sigv2::string_to_sign(&head, None, ""),
        );
        let mut v = b"GET\0/photos/a.jpg\0\0".to_vec();
        for (name, value) in [
            ("x-amz-date", date.to_string()),
            ("authorization", format!("AWS root:{sig}")),
        ] {
            v.push(
                ostore_fuzz::input::HEADER_NAMES
                    .iter()
                    .position(|x| *x == name)
                    .unwrap() as u8,
            );
            v.extend_from_slice(value.as_bytes());
            v.push(0);
        }
        put("s3_sigv4", 4, v);
    }
    // s3_chunked: flags (1 signed, 2 trailer), piece size, body.
    put(
        "s3_chunked",
        0,
        b"\x02\x075\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n".to_vec(),
    );
    put(
        "s3_chunked",
        1,
        b"\x00\x03a\r\n0123456789\r\n0\r\n\r\n".to_vec(),
    );
    put(
        "s3_chunked",
        2,
        b"\x01\x10400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\naaaa\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n".to_vec(),
    );
    // s3_xml: a selector byte, then the document.
    put(
        "s3_xml",
        0,
        b"\x00<?xml version=\"1.0\"?><Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Object><Key>a &amp; b</Key></Object><Object><Key>c</Key><VersionId>7</VersionId></Object><Quiet>true</Quiet></Delete>".to_vec(),
    );
    put(
        "s3_xml",
        1,
        b"\x01<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"a54357aff0632cce46d942af68356b38\"</ETag></Part><Part><PartNumber>2</PartNumber><ETag>0c78aef83f66abc1fa1e8477f296d394</ETag></Part></CompleteMultipartUpload>".to_vec(),
    );
    put(
        "s3_xml",
        2,
        b"\x02<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>".to_vec(),
    );
    put(
        "s3_xml",
        3,
        b"\x03<CreateBucketConfiguration><LocationConstraint>us-east-1</LocationConstraint></CreateBucketConfiguration>".to_vec(),
    );
    println!("seeds written under {}", corpus_dir("").display());
}

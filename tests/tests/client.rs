//! The Rust client library (`ostore-client`) against the real `ostore dev`, over HTTP/1.1 and
//! HTTP/3 alike: streaming PUT and GET of 7 MiB, ranges, versions, listing, deletes, errors,
//! a tus upload broken off and resumed; and 0-RTT on a resumed HTTP/3 connection, where a GET
//! is served from the early data and a PUT waits for the handshake.

use ostore_client::{
    Body, ByteRange, Client, Error, GetOptions, ListOptions, Protocol, PutOptions,
};
use ostore_tests::{random_bytes, Dev};

fn client(dev: &Dev, p: Protocol, secret: Option<&str>) -> ostore_client::ClientBuilder {
    let mut b = Client::builder(format!("http://{}", dev.http)).protocol(p);
    if let Some(s) = secret {
        b = b.secret(s);
    }
    if p == Protocol::Http3 {
        b = b.tls_ca_file(dev.data().join("tls/cert.pem")).unwrap();
    }
    b
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A body sent as a stream of 64 KiB pieces, so nothing has to hold it whole.
fn streamed(data: &[u8]) -> Body {
    let pieces: Vec<std::io::Result<bytes::Bytes>> = data
        .chunks(64 << 10)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(Some(data.len() as u64), futures_util::stream::iter(pieces))
}

async fn the_api(dev: &Dev, p: Protocol) {
    let c = client(dev, p, Some(&dev.secret)).build().unwrap();
    let tag = format!("{p:?}");
    let key = format!("client/{tag}/seven bytes ü");
    let body = random_bytes(11, 7 << 20);

    // PUT streamed, GET streamed, exact.
    let put = c.put(&key, streamed(&body)).await.unwrap();
    assert_eq!(put.size, body.len() as u64);
    assert_eq!(put.blake3, blake3::hash(&body).to_hex().as_str());
    let mut obj = c.get(&key).await.unwrap();
    assert_eq!(obj.info.version, put.version);
    assert_eq!(obj.info.size, body.len() as u64);
    let mut got = Vec::new();
    let mut pieces = 0;
    while let Some(b) = obj.chunk().await.unwrap() {
        got.extend_from_slice(&b);
        pieces += 1;
    }
    assert!(pieces > 1, "the body came in one piece: not streamed");
    assert!(got == body, "{tag}: GET is not what was PUT");

    // Ranges.
    let r = ByteRange::FromTo(1_000_000, 3_999_999);
    let opts = GetOptions {
        range: Some(r),
        ..Default::default()
    };
    let part = c.get_with(&key, &opts).await.unwrap();
    assert_eq!(part.info.range, Some((1_000_000, 3_999_999)));
    assert_eq!(part.info.size, body.len() as u64);
    assert!(part.bytes().await.unwrap() == body[1_000_000..4_000_000]);
    let tail = GetOptions {
        range: Some(ByteRange::Last(10)),
        ..Default::default()
    };
    let t = c
        .get_with(&key, &tail)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(t == body[body.len() - 10..]);
    let beyond = GetOptions {
        range: Some(ByteRange::From(body.len() as u64 + 5)),
        ..Default::default()
    };
    let e = c.get_with(&key, &beyond).await.err().unwrap();
    assert_eq!((e.status(), e.code()), (Some(416), Some("InvalidRange")));

    // Versions, HEAD, a checked digest, deletes.
    let small = c.put(&key, Body::from(b"second".to_vec())).await.unwrap();
    assert!(small.version > put.version);
    let first = GetOptions {
        version: Some(put.version),
        ..Default::default()
    };
    let old = c.get_with(&key, &first).await.unwrap();
    assert!(old.bytes_verified().await.unwrap() == body);
    let info = c.head(&key, None).await.unwrap();
    assert_eq!((info.version, info.size), (small.version, 6));
    let vs = c.versions(&key).await.unwrap();
    let listed: Vec<u64> = vs.versions.iter().map(|v| v.version).collect();
    assert_eq!(listed, vec![small.version, put.version]);
    let wrong = PutOptions {
        blake3: Some(blake3::hash(b"other").to_hex().to_string()),
    };
    let e = c
        .put_with(&key, Body::from(b"this".to_vec()), &wrong)
        .await
        .err()
        .unwrap();
    assert_eq!((e.status(), e.code()), (Some(400), Some("BadDigest")));
    let page = c
        .list(&ListOptions {
            prefix: Some(format!("client/{tag}/")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.objects.len(), 1);
    assert_eq!(page.objects[0].key, key);
    c.delete(&key).await.unwrap();
    let e = c.get(&key).await.err().unwrap();
    assert_eq!((e.status(), e.code()), (Some(404), Some("NoSuchKey")));
    c.delete_version(&key, put.version).await.unwrap();
    let e = c.get_with(&key, &first).await.err().unwrap();
    assert_eq!(e.status(), Some(404));

    // A bucket that does not exist, bad keys, credentials.
    let e = c.with_bucket("nobucket").get("x").await.err().unwrap();
    assert_eq!(e.status(), Some(404));
    assert!(matches!(c.get("").await.err().unwrap(), Error::Invalid(_)));
    let anon = client(dev, p, None).build().unwrap();
    assert_eq!(anon.get("x").await.err().unwrap().status(), Some(401));
    let wrong = client(dev, p, Some("not-the-secret")).build().unwrap();
    assert_eq!(wrong.get("x").await.err().unwrap().status(), Some(403));
    anon.health().await.unwrap();

    // tus: a chunk at a wrong offset is refused, the upload is resumed from the server's
    // offset and committed as a PUT would be.
    let ukey = format!("client/{tag}/upload");
    let data = bytes::Bytes::from(random_bytes(12, (3 << 20) + 17));
    let mut up = c
        .create_upload(&ukey, data.len() as u64, None)
        .await
        .unwrap();
    assert!(c
        .upload_chunk(&mut up, data.slice(0..1 << 20))
        .await
        .unwrap()
        .is_none());
    let mut stale = up.clone();
    stale.offset = 0;
    let e = c
        .upload_chunk(&mut stale, data.slice(0..10))
        .await
        .err()
        .unwrap();
    assert_eq!(e.status(), Some(409));
    let mut again = c.resume_upload(&up.location, &ukey).await.unwrap();
    assert_eq!((again.offset, again.length), (1 << 20, data.len() as u64));
    let done = c
        .upload_chunk(&mut again, data.slice(1 << 20..))
        .await
        .unwrap()
        .expect("the last chunk commits");
    assert_eq!(done.blake3, blake3::hash(&data).to_hex().as_str());
    assert!(c.get(&ukey).await.unwrap().bytes().await.unwrap() == data);
    let whole = c
        .upload(&format!("{ukey}-2"), data.clone(), 1 << 20, 0)
        .await
        .unwrap();
    assert_eq!(whole.size, data.len() as u64);
}

#[test]
fn the_native_api_over_http1() {
    let dev = Dev::start(&[]);
    rt().block_on(the_api(&dev, Protocol::Http1));
}

#[test]
fn the_native_api_over_http3() {
    let dev = Dev::start(&[]);
    rt().block_on(the_api(&dev, Protocol::Http3));
}

/// 64 requests at once on one HTTP/3 connection, each a different range, all exact.
#[test]
fn concurrent_requests_share_one_http3_connection() {
    let dev = Dev::start(&[]);
    rt().block_on(async {
        let c = client(&dev, Protocol::Http3, Some(&dev.secret))
            .build()
            .unwrap();
        let body = random_bytes(13, 5 << 20);
        c.put("many", Body::from(body.clone())).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let a = i * 80_000;
                let opts = GetOptions {
                    range: Some(ByteRange::FromTo(a, a + 70_000)),
                    ..Default::default()
                };
                let got = c.get_with("many", &opts).await?.bytes().await?;
                Ok::<_, Error>((a, got))
            }));
        }
        for t in tasks {
            let (a, got) = t.await.unwrap().unwrap();
            let a = a as usize;
            assert!(got == body[a..a + 70_001], "range at {a}");
        }
    });
}

/// A client that resumes its TLS session sends its GET in 0-RTT and the server answers it
/// from the early data; a PUT on such a connection is held until the handshake completes and
/// then stored. The server's counters say what happened.
/// A counter from `/metrics`, read with `m` (an HTTP/1.1 client, not to disturb the HTTP/3
/// connection under test).
async fn metric(m: &Client, name: &str) -> f64 {
    let text = m
        .request(
            http::Method::GET,
            "/metrics",
            Default::default(),
            Body::empty(),
        )
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

#[test]
fn zero_rtt_serves_gets_and_holds_back_puts() {
    let dev = Dev::start(&[]);
    rt().block_on(async {
        let c = client(&dev, Protocol::Http3, Some(&dev.secret))
            .zero_rtt(true)
            .build()
            .unwrap();
        let m = client(&dev, Protocol::Http1, Some(&dev.secret))
            .build()
            .unwrap();
        let body = random_bytes(14, 100_000);
        c.put("early", Body::from(body.clone())).await.unwrap();
        // The session ticket arrives after the handshake; a request's round trip gives it time.
        assert!(c.get("early").await.unwrap().bytes().await.unwrap() == body);
        assert_eq!(metric(&m, "ostore_http3_early_requests_total").await, 0.0);

        c.disconnect().await;
        let got = c.get("early").await.unwrap().bytes().await.unwrap();
        assert!(got == body);
        assert_eq!(
            c.zero_rtt_accepted(),
            1,
            "the server refused the early data"
        );
        // Whether the server still saw it before the handshake completed is a race on
        // loopback; it counts such requests.
        let early = metric(&m, "ostore_http3_early_requests_total").await;
        eprintln!("GETs the server saw in 0-RTT: {early}");
        assert_eq!(metric(&m, "ostore_http3_early_deferred_total").await, 0.0);

        // A PUT as the first request of a resumed connection: the client holds it until the
        // handshake is done, so it is never early data; the server would hold it too.
        c.disconnect().await;
        let v = c.put("early", Body::from(b"later".to_vec())).await.unwrap();
        assert!(c.get("early").await.unwrap().bytes().await.unwrap() == b"later"[..]);
        assert_eq!(c.head("early", None).await.unwrap().version, v.version);
    });
}

/// SIGTERM while an HTTP/3 response is on its way: the server refuses new connections, tells
/// the open one to send no more requests (GOAWAY), finishes the response, and exits 0.
#[test]
fn sigterm_lets_http3_requests_in_flight_finish() {
    let mut dev = Dev::start(&[]);
    let pid = dev.pid();
    rt().block_on(async {
        let c = client(&dev, Protocol::Http3, Some(&dev.secret))
            .build()
            .unwrap();
        let body = random_bytes(15, 40 << 20);
        c.put("big", Body::from(body.clone())).await.unwrap();
        let mut obj = c.get("big").await.unwrap();
        let mut got = obj.chunk().await.unwrap().unwrap().to_vec();
        // The server cannot have sent more than the flow-control windows allow: most of the
        // body is still to come.
        assert!(got.len() < 20 << 20);
        // SAFETY: a signal to the server this test started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let fresh = client(&dev, Protocol::Http3, Some(&dev.secret))
            .build()
            .unwrap();
        assert!(
            fresh.health().await.is_err(),
            "a stopping server took a new HTTP/3 connection"
        );
        assert!(
            c.get("big").await.is_err(),
            "a stopping server took a new request"
        );
        while let Some(b) = obj.chunk().await.unwrap() {
            got.extend_from_slice(&b);
        }
        assert!(got == body, "the response in flight was not finished whole");
        // Gone as a client should go: the server then has nothing left to wait for.
        c.disconnect().await;
    });
    assert_eq!(dev.stop(), Some(0));
}

//! The S3 API of `ostore dev` (`--s3`), against real clients: boto3 for what a user does, and
//! requests signed here with `ostore_s3::sigv4::sign` for what boto3 will not send (a skewed
//! clock, an expired or tampered presigned URL, no signature at all). Every refusal is a 403 with
//! S3's error code in S3's XML, and changes nothing.

use ostore_s3::sigv4::{sign, Signer, UNSIGNED_PAYLOAD};
use ostore_tests::Dev;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

fn s3_request(
    dev: &Dev,
    method: &str,
    path: &str,
    query: &str,
    secret: &str,
    now_s: i64,
) -> reqwest::blocking::Response {
    s3_request_to(dev, &dev.s3, method, path, query, secret, now_s)
}

/// [`s3_request`] with `host` in the Host header (signed), sent to the dev's S3 address.
fn s3_request_to(
    dev: &Dev,
    host: &str,
    method: &str,
    path: &str,
    query: &str,
    secret: &str,
    now_s: i64,
) -> reqwest::blocking::Response {
    let mut h = http::HeaderMap::new();
    h.insert("host", http::HeaderValue::from_str(host).unwrap());
    let auth = sign(
        method,
        path,
        query,
        &mut h,
        UNSIGNED_PAYLOAD,
        &Signer {
            access_key: "root",
            secret,
            region: "us-east-1",
            now_s,
        },
    );
    let url = if query.is_empty() {
        format!("http://{}{path}", dev.s3)
    } else {
        format!("http://{}{path}?{query}", dev.s3)
    };
    let mut r = reqwest::blocking::Client::new()
        .request(method.parse().unwrap(), url)
        .header("authorization", auth);
    for (n, v) in &h {
        if n != "host" || host != dev.s3 {
            r = r.header(n, v);
        }
    }
    r.send().unwrap()
}

/// A Python with boto3; the test fails, saying what is missing, without one.
fn boto3(test: &str) -> PathBuf {
    ostore_tests::python_with("boto3").unwrap_or_else(|| {
        ostore_tests::missing_prerequisite(
            test,
            "a Python with boto3 (OSTORE_TEST_PYTHON, or target/pyvenv as .ci/run makes it)",
        )
    })
}

/// Runs `tests/py/SCRIPT ENDPOINT SECRET ARGS…` (one "ok NAME" or "FAIL NAME: why" line per
/// check): it must succeed, having made at least `checks` checks.
fn run_boto3(py: &PathBuf, dev: &Dev, script: &str, args: &[&OsStr], checks: usize) {
    let out = Command::new(py)
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("py")
                .join(script),
        )
        .arg(format!("http://{}", dev.s3))
        .arg(&dev.secret)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{script}: boto3 checks failed:\n{stdout}"
    );
    assert!(stdout.lines().count() >= checks, "{stdout}");
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn code_of(body: &str) -> String {
    body.split("<Code>")
        .nth(1)
        .and_then(|r| r.split("</Code>").next())
        .unwrap_or("")
        .to_string()
}

#[test]
fn boto3_manages_buckets_and_sees_s3_errors() {
    let py = boto3("boto3_manages_buckets_and_sees_s3_errors");
    let dev = Dev::start(&[]);
    // A bucket with a version in it, made through the S3 API and filled through the native
    // one: the same buckets.
    let r = s3_request(&dev, "PUT", "/full", "", &dev.secret, now_s());
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let r = dev
        .req(reqwest::Method::PUT, "/objects/k?bucket=full")
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    run_boto3(&py, &dev, "s3_buckets.py", &[OsStr::new("full")], 14);
}

#[test]
fn boto3_lists_keys_written_through_the_native_api() {
    let py = boto3("boto3_lists_keys_written_through_the_native_api");
    let dev = Dev::start(&[]);
    let r = s3_request(&dev, "PUT", "/listing", "", &dev.secret, now_s());
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    for key in [
        "a.txt",
        "photos/1.jpg",
        "photos/2.jpg",
        "photos/2024/x.jpg",
        "videos/a%20b%2Bc.mp4",
    ] {
        let decoded = key.replace("%20", " ").replace("%2B", "+");
        let r = dev
            .req(
                reqwest::Method::PUT,
                &format!("/objects/{key}?bucket=listing"),
            )
            .body(decoded)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{key}");
    }
    run_boto3(&py, &dev, "s3_list.py", &[OsStr::new("listing")], 11);
}

#[test]
fn boto3_reads_and_deletes_objects_written_through_the_native_api() {
    let py = boto3("boto3_reads_and_deletes_objects_written_through_the_native_api");
    let dev = Dev::start(&[]);
    let r = s3_request(&dev, "PUT", "/objs", "", &dev.secret, now_s());
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let big = ostore_tests::random_bytes(5, 20 * 1024 * 1024 + 1);
    let dir = tempfile::tempdir().unwrap();
    let big_file = dir.path().join("big");
    std::fs::write(&big_file, &big).unwrap();
    for (key, body) in [
        ("small", b"hello world".to_vec()),
        ("big", big),
        ("gone/1", b"1".to_vec()),
        ("gone/2", b"2".to_vec()),
    ] {
        let r = dev
            .req(reqwest::Method::PUT, &format!("/objects/{key}?bucket=objs"))
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{key}");
    }
    run_boto3(
        &py,
        &dev,
        "s3_objects.py",
        &[OsStr::new("objs"), big_file.as_os_str()],
        19,
    );
    // What S3 deleted, the native API sees deleted.
    assert_eq!(dev.get_bytes("small?bucket=objs").0, 404);
}

#[test]
fn boto3_writes_with_its_default_checksums() {
    let py = boto3("boto3_writes_with_its_default_checksums");
    let dev = Dev::start(&[]);
    let r = s3_request(&dev, "PUT", "/puts", "", &dev.secret, now_s());
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    run_boto3(&py, &dev, "s3_put.py", &[OsStr::new("puts")], 17);
    // What S3 wrote, the native API reads.
    let (status, body) = dev.get_bytes("c?bucket=puts");
    assert_eq!((status, body.as_slice()), (200, &b"second"[..]));
}

#[test]
fn boto3_keeps_metadata_copies_without_bytes_and_lists_versions() {
    let py = boto3("boto3_keeps_metadata_copies_without_bytes_and_lists_versions");
    let dev = Dev::start(&["--gc-grace", "0s"]);
    for b in ["meta", "meta2"] {
        let r = s3_request(&dev, "PUT", &format!("/{b}"), "", &dev.secret, now_s());
        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    }
    run_boto3(
        &py,
        &dev,
        "s3_meta.py",
        &[OsStr::new("meta"), OsStr::new("meta2")],
        50,
    );
    // A copy is a new version of the same content: the native ETag (the BLAKE3) is the
    // source's, and no content was added for it.
    let tag = |key: &str| {
        let r = dev.get(key);
        assert_eq!(r.status(), 200, "{key}");
        r.headers()["etag"].to_str().unwrap().to_string()
    };
    assert_eq!(tag("doc.txt?bucket=meta"), tag("copy.txt?bucket=meta"));
    assert_eq!(
        tag("doc.txt?bucket=meta"),
        tag("dir/re%20placed?bucket=meta2")
    );
    // Seven bodies are still referred to (the fox, v0, v1, v2, o, and the suspended section's
    // first and last); the copies stored nothing. The null versions replaced or deleted
    // dropped their references: GC reclaims those contents (the two null writes, the
    // multipart upload's part and the object assembled from it).
    let contents = || dev.json("/admin/status").1["contents"].as_u64().unwrap();
    assert!(
        ostore_tests::eventually(std::time::Duration::from_secs(20), || contents() == 7),
        "{} contents",
        contents()
    );
    // The Content-Type S3 kept, the native API gives back.
    let r = dev.get("copy.txt?bucket=meta");
    assert_eq!(r.headers()["content-type"], "text/plain");
}

#[test]
fn boto3_uploads_in_parts_and_gc_reclaims_what_was_left_out() {
    let py = boto3("boto3_uploads_in_parts_and_gc_reclaims_what_was_left_out");
    let dev = Dev::start(&["--gc-grace", "0s"]);
    let r = s3_request(&dev, "PUT", "/parts", "", &dev.secret, now_s());
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    run_boto3(&py, &dev, "s3_multipart.py", &[OsStr::new("parts")], 34);
    // Through the native API: the same bytes (10 MiB + 1), with an ETag that names the part
    // list (`-3`), which a client does not check the body against.
    let r = dev.get("mp/obj?bucket=parts");
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.ends_with("-3\""), "{etag}");
    assert_eq!(r.bytes().unwrap().len(), 10 * 1024 * 1024 + 1);
    // Left out: the first upload of part 2, the aborted upload's part, the small upload's
    // part 2. GC (every second here) takes those three and nothing else: what is left are the
    // parts of mp/obj (3), mp/small (1), mp/transfer (4) and mp/copied (two new; its third is
    // mp/small's "tiny" again, deduplicated); assembled objects store nothing of their own.
    let contents = || dev.json("/admin/status").1["contents"].as_u64().unwrap();
    assert!(
        ostore_tests::eventually(std::time::Duration::from_secs(20), || contents() == 10),
        "{} contents",
        contents()
    );
    assert!(dev.get_bytes("mp/obj?bucket=parts").1.len() == 10 * 1024 * 1024 + 1);
    // Once no version refers to the assembled object, GC takes it, and then its three parts.
    for key in ["mp/obj", "mp/copy"] {
        let r = dev
            .req(
                reqwest::Method::DELETE,
                &format!("/objects/{key}?bucket=parts&version=1"),
            )
            .send()
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    assert!(
        ostore_tests::eventually(std::time::Duration::from_secs(20), || contents() == 7),
        "{} contents",
        contents()
    );
    assert_eq!(dev.get_bytes("mp/small?bucket=parts").1, b"tiny");
}

/// `tests/py/s3_crash.py` STEP for `key`: its output.
fn crash_step(py: &PathBuf, dev: &Dev, key: &str, step: &str, upload: &str) -> String {
    let out = Command::new(py)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/s3_crash.py"))
        .arg(format!("http://{}", dev.s3))
        .args([&dev.secret, "crash", key, step, upload])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{step}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn kill_9_during_a_multipart_upload_and_its_completion_loses_nothing_acknowledged() {
    let py =
        boto3("kill_9_during_a_multipart_upload_and_its_completion_loses_nothing_acknowledged");
    let mut dev = Dev::start(&[]);
    let r = s3_request(&dev, "PUT", "/crash", "", &dev.secret, now_s());
    assert_eq!(r.status(), 200);
    // Every part acknowledged, then kill -9: the upload and its parts are still there, and
    // completing it gives the object.
    let out = crash_step(&py, &dev, "a", "parts", "");
    let upload = out.strip_prefix("upload ").expect(&out).to_string();
    dev.restart();
    assert_eq!(crash_step(&py, &dev, "a", "state", &upload), "upload 3");
    assert_eq!(crash_step(&py, &dev, "a", "complete", &upload), "completed");
    assert_eq!(crash_step(&py, &dev, "a", "state", &upload), "object");
    // kill -9 while CompleteMultipartUpload runs, at a different moment each round: the
    // object is whole, or the upload is still complete-able with all its parts; never half.
    for (round, delay_ms) in [0u64, 15, 40, 80].into_iter().enumerate() {
        let key = format!("b{round}");
        let out = crash_step(&py, &dev, &key, "parts", "");
        let upload = out.strip_prefix("upload ").expect(&out).to_string();
        let mut child = Command::new(&py)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/s3_crash.py"))
            .arg(format!("http://{}", dev.s3))
            .args([dev.secret.as_str(), "crash", &key, "complete", &upload])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300 + delay_ms));
        dev.restart();
        let _ = child.wait();
        match crash_step(&py, &dev, &key, "state", &upload).as_str() {
            "object" => {}
            "upload 3" => {
                assert_eq!(
                    crash_step(&py, &dev, &key, "complete", &upload),
                    "completed"
                );
                assert_eq!(crash_step(&py, &dev, &key, "state", &upload), "object");
            }
            other => panic!("round {round}: after kill -9 during completion: {other}"),
        }
    }
}

#[test]
fn virtual_hosted_requests_name_the_bucket_in_the_host() {
    let dev = Dev::start(&["--s3-domain", "s3.test"]);
    let port = dev.s3.rsplit_once(':').unwrap().1.to_string();
    let vhost = format!("vhosted.s3.test:{port}");
    let at = |host: &str, method: &str, path: &str, query: &str| {
        s3_request_to(&dev, host, method, path, query, &dev.secret, now_s())
    };
    let r = at(&vhost, "PUT", "/", "");
    assert_eq!(r.status(), 200, "CreateBucket: {}", r.text().unwrap());
    let r = dev
        .req(reqwest::Method::PUT, "/objects/dir/key?bucket=vhosted")
        .body("vhost")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = at(&vhost, "GET", "/", "list-type=2");
    let listing = r.text().unwrap();
    assert!(listing.contains("<Key>dir/key</Key>"), "{listing}");
    let r = at(&vhost, "GET", "/dir/key", "");
    assert_eq!(r.text().unwrap(), "vhost");
    // The same object path-style.
    assert_eq!(at(&dev.s3, "HEAD", "/vhosted/dir/key", "").status(), 200);
    // The domain itself is path-style: GET / lists the buckets.
    let r = at(&format!("s3.test:{port}"), "GET", "/", "");
    assert!(r.text().unwrap().contains("<Name>vhosted</Name>"));
    // A host under another domain is not taken for a bucket.
    let r = at(
        &format!("vhosted.elsewhere.test:{port}"),
        "GET",
        "/",
        "list-type=2",
    );
    assert!(!r.text().unwrap().contains("<Key>dir/key</Key>"));
    // SigV2 signs the bucket of a virtual-hosted request as part of the resource: in a header
    // and in a presigned URL; a signature made without it does not verify.
    let v2 = |signed_bucket: Option<&str>, presigned: bool| {
        let mut h = http::HeaderMap::new();
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let expires = (now_s() + 300).to_string();
        if !presigned {
            h.insert("date", date.parse().unwrap());
        }
        let head = ostore_s3::sigv4::RequestHead {
            method: "GET",
            path: "/dir/key",
            query: "",
            headers: &h,
        };
        let when = if presigned { &expires } else { &date };
        let sts = ostore_s3::sigv2::string_to_sign(&head, signed_bucket, when);
        let sig = ostore_s3::sigv2::signature(&dev.secret, &sts);
        let client = reqwest::blocking::Client::new();
        if presigned {
            let q = format!(
                "AWSAccessKeyId=root&Expires={expires}&Signature={}",
                percent_encoding::utf8_percent_encode(&sig, percent_encoding::NON_ALPHANUMERIC)
            );
            client
                .get(format!("http://{}/dir/key?{q}", dev.s3))
                .header("host", &vhost)
                .send()
                .unwrap()
        } else {
            client
                .get(format!("http://{}/dir/key", dev.s3))
                .header("host", &vhost)
                .header("date", date)
                .header("authorization", format!("AWS root:{sig}"))
                .send()
                .unwrap()
        }
    };
    for presigned in [false, true] {
        let r = v2(Some("vhosted"), presigned);
        assert_eq!(r.status(), 200, "presigned {presigned}");
        assert_eq!(r.text().unwrap(), "vhost");
        let r = v2(None, presigned);
        assert_eq!(r.status(), 403, "presigned {presigned}");
        assert!(r.text().unwrap().contains("SignatureDoesNotMatch"));
    }
}

#[test]
fn access_keys_are_limited_to_their_buckets_or_to_reads_and_revoked_at_once() {
    let py = boto3("access_keys_are_limited_to_their_buckets_or_to_reads_and_revoked_at_once");
    let dev = Dev::start(&[]);
    for b in ["allowed", "other"] {
        assert_eq!(
            s3_request(&dev, "PUT", &format!("/{b}"), "", &dev.secret, now_s()).status(),
            200
        );
    }
    let app = dev.osctl_json(&["keys", "create", "app", "--bucket", "allowed"]);
    let reader = dev.osctl_json(&["keys", "create", "reader", "--read-only"]);
    let (app_key, app_secret) = (
        app["access_key"].as_str().unwrap().to_string(),
        app["secret"].as_str().unwrap().to_string(),
    );
    let field = |v: &serde_json::Value, f: &str| v[f].as_str().unwrap().to_string();
    let args = [
        app_key.clone(),
        app_secret.clone(),
        field(&reader, "access_key"),
        field(&reader, "secret"),
    ];
    let mut argv: Vec<&OsStr> = vec![OsStr::new("scoped")];
    argv.extend(args.iter().map(OsStr::new));
    run_boto3(&py, &dev, "s3_keys.py", &argv, 19);
    // Listed without their secrets; a name is taken once.
    let list = dev.osctl_json(&["keys", "list"]);
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{list}");
    assert!(!list.to_string().contains(&app_secret), "{list}");
    assert!(keys
        .iter()
        .any(|k| k["name"] == "app" && k["buckets"][0] == "allowed"));
    assert!(keys
        .iter()
        .any(|k| k["name"] == "reader" && k["read_only"] == true));
    let again = dev.osctl(&["keys", "create", "app"]);
    assert!(!again.status.success(), "a second key named app was made");
    // No secret is stored: not in the metadata's files.
    let meta = dev.data().join("meta");
    for f in std::fs::read_dir(&meta).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(
            !bytes
                .windows(app_secret.len())
                .any(|w| w == app_secret.as_bytes()),
            "the secret is in the metadata"
        );
    }
    // Revoked by name: refused at once.
    dev.osctl_json(&["keys", "revoke", "app"]);
    run_boto3(
        &py,
        &dev,
        "s3_keys.py",
        &[
            OsStr::new("revoked"),
            OsStr::new(&app_key),
            OsStr::new(&app_secret),
        ],
        1,
    );
    assert_eq!(
        dev.osctl_json(&["keys", "list"])["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// A PUT with a signed `aws-chunked` body (chunks of `piece` bytes; with `trailer`, a CRC32
/// in a signed trailer), as the AWS SDKs send over TLS. `tamper` flips a byte of the data after
/// signing.
fn chunked_put(
    dev: &Dev,
    path: &str,
    data: &[u8],
    piece: usize,
    trailer: bool,
    tamper: bool,
) -> reqwest::blocking::Response {
    use ostore_s3::chunked::{chunk_signature, trailer_signature};
    use ostore_s3::sigv4::{Chain, STREAMING_SIGNED, STREAMING_SIGNED_TRAILER};
    let t = now_s();
    let mut h = http::HeaderMap::new();
    h.insert("host", http::HeaderValue::from_str(&dev.s3).unwrap());
    h.insert(
        "content-encoding",
        http::HeaderValue::from_static("aws-chunked"),
    );
    h.insert(
        "x-amz-decoded-content-length",
        http::HeaderValue::from(data.len() as u64),
    );
    if trailer {
        h.insert(
            "x-amz-trailer",
            http::HeaderValue::from_static("x-amz-checksum-crc32"),
        );
    }
    let mode = if trailer {
        STREAMING_SIGNED_TRAILER
    } else {
        STREAMING_SIGNED
    };
    let auth = sign(
        "PUT",
        path,
        "",
        &mut h,
        mode,
        &Signer {
            access_key: "root",
            secret: &dev.secret,
            region: "us-east-1",
            now_s: t,
        },
    );
    let date = ostore_s3::time::amz_date(t);
    let mut seed = [0u8; 32];
    hex::decode_to_slice(auth.rsplit("Signature=").next().unwrap(), &mut seed).unwrap();
    let chain = Chain {
        key: ostore_s3::sigv4::signing_key(&dev.secret, &date[..8], "us-east-1", "s3"),
        scope: format!("{}/us-east-1/s3/aws4_request", &date[..8]),
        amz_date: date,
        seed,
    };
    let mut body = Vec::new();
    let mut prev = chain.seed;
    for c in data.chunks(piece).chain(std::iter::once(&[][..])) {
        let sig = chunk_signature(&chain, &prev, c);
        body.extend_from_slice(
            format!("{:x};chunk-signature={}\r\n", c.len(), hex::encode(sig)).as_bytes(),
        );
        let at = body.len();
        body.extend_from_slice(c);
        if tamper && !c.is_empty() {
            body[at] ^= 1;
        }
        if !c.is_empty() {
            body.extend_from_slice(b"\r\n");
        }
        prev = sig;
    }
    if trailer {
        use base64::Engine as _;
        let crc =
            base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(data).to_be_bytes());
        let text = format!("x-amz-checksum-crc32:{crc}\n");
        let sig = trailer_signature(&chain, &prev, &text);
        body.extend_from_slice(
            format!(
                "x-amz-checksum-crc32:{crc}\r\nx-amz-trailer-signature:{}\r\n",
                hex::encode(sig)
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(b"\r\n");
    let mut r = reqwest::blocking::Client::new()
        .put(format!("http://{}{path}", dev.s3))
        .header("authorization", auth)
        .body(body);
    for (n, v) in &h {
        if n != "host" {
            r = r.header(n, v);
        }
    }
    r.send().unwrap()
}

#[test]
fn signed_aws_chunked_bodies_are_checked_chunk_by_chunk() {
    let dev = Dev::start(&[]);
    let r = s3_request(&dev, "PUT", "/chunks", "", &dev.secret, now_s());
    assert_eq!(r.status(), 200);
    let data = ostore_tests::random_bytes(9, 300_000);
    for (key, trailer) in [("plain", false), ("trailer", true)] {
        let r = chunked_put(
            &dev,
            &format!("/chunks/{key}"),
            &data,
            65_536,
            trailer,
            false,
        );
        let checksum = r.headers().get("x-amz-checksum-crc32").cloned();
        assert_eq!(r.status(), 200, "{key}: {}", r.text().unwrap());
        assert_eq!(checksum.is_some(), trailer, "{key}");
        let (status, got) = dev.get_bytes(&format!("{key}?bucket=chunks"));
        assert_eq!(status, 200);
        assert!(got == data, "{key}: the bytes read back differ");
    }
    // A byte changed after signing: refused, nothing written.
    let r = chunked_put(&dev, "/chunks/tampered", &data, 65_536, true, true);
    assert_eq!(r.status(), 403);
    assert_eq!(code_of(&r.text().unwrap()), "SignatureDoesNotMatch");
    assert_eq!(dev.get_bytes("tampered?bucket=chunks").0, 404);
}

#[test]
fn refused_signatures_are_403_with_s3_codes_and_change_nothing() {
    let dev = Dev::start(&[]);
    let t = now_s();
    // A clock 20 minutes off either way.
    for skew in [-1200, 1200] {
        let r = s3_request(&dev, "PUT", "/skewed", "", &dev.secret, t + skew);
        assert_eq!(r.status(), 403);
        assert_eq!(code_of(&r.text().unwrap()), "RequestTimeTooSkewed");
    }
    // No signature at all.
    let r = reqwest::blocking::Client::new()
        .put(format!("http://{}/anonymous", dev.s3))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(code_of(&r.text().unwrap()), "AccessDenied");
    // The wrong secret.
    let r = s3_request(&dev, "PUT", "/wrong", "", "not-the-secret", t);
    assert_eq!(r.status(), 403);
    assert_eq!(code_of(&r.text().unwrap()), "SignatureDoesNotMatch");
    // None of them created anything.
    let r = s3_request(&dev, "GET", "/", "", &dev.secret, t);
    let listing = r.text().unwrap();
    for b in ["skewed", "anonymous", "wrong"] {
        assert!(!listing.contains(&format!("<Name>{b}</Name>")), "{listing}");
    }
    assert!(listing.contains("<Name>default</Name>"), "{listing}");
    // A presigned URL: good until it expires, refused when tampered with.
    let presign = |expires: u64, at: i64| {
        let date = ostore_s3::time::amz_date(at);
        let q = format!(
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=root%2F{}%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date={date}&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host",
            &date[..8]
        );
        let mut h = http::HeaderMap::new();
        h.insert("host", http::HeaderValue::from_str(&dev.s3).unwrap());
        let head = ostore_s3::sigv4::RequestHead {
            method: "GET",
            path: "/",
            query: &q,
            headers: &h,
        };
        let canonical =
            ostore_s3::sigv4::canonical_request(&head, &["host"], UNSIGNED_PAYLOAD).unwrap();
        let scope = format!("{}/us-east-1/s3/aws4_request", &date[..8]);
        let key = ostore_s3::sigv4::signing_key(&dev.secret, &date[..8], "us-east-1", "s3");
        let sig = ostore_s3::sigv4::signature(
            &key,
            &ostore_s3::sigv4::string_to_sign(&date, &scope, &canonical),
        );
        format!(
            "http://{}/?{q}&X-Amz-Signature={}",
            dev.s3,
            hex::encode(sig)
        )
    };
    let get = |url: &str| reqwest::blocking::get(url).unwrap();
    let r = get(&presign(600, t));
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let r = get(&presign(60, t - 120));
    assert_eq!(r.status(), 403);
    assert_eq!(code_of(&r.text().unwrap()), "AccessDenied");
    let r = get(&presign(600, t).replace("X-Amz-Expires=600", "X-Amz-Expires=900"));
    assert_eq!(r.status(), 403);
    assert_eq!(code_of(&r.text().unwrap()), "SignatureDoesNotMatch");
}

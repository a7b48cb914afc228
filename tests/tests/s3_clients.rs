//! The S3 API of `ostore dev` against the command-line clients people use, unchanged and with
//! their default settings: the aws CLI (`aws s3` and `aws s3api`), rclone and s3cmd. Each test
//! writes a tree of files (0 B, 1 B, 5 MiB + 1, names with spaces and non-ASCII), syncs it up
//! and back down, and compares every byte; rclone and s3cmd also check each file against the
//! MD5 ETag the server answered. A 2 GiB object (`OSTORE_TEST_BIG_BYTES`) goes up and down
//! through the aws CLI in parts with the server's memory flat.

use ostore_tests::{sample_rss, Dev, RandomReader};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The first of `candidates` (paths, or names looked up on PATH) that runs with `--version`;
/// the test fails, saying what is missing, without one.
fn tool(test: &str, what: &str, candidates: &[PathBuf]) -> PathBuf {
    candidates
        .iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .cloned()
        .unwrap_or_else(|| ostore_tests::missing_prerequisite(test, what))
}

/// Runs `cmd`, which must succeed; its output (stdout and stderr).
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// A tree of files with the sizes and names that trip clients up.
fn make_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let files: BTreeMap<String, Vec<u8>> = [
        ("empty", Vec::new()),
        ("one", b"1".to_vec()),
        (
            "dir/five mib plus one",
            ostore_tests::random_bytes(1, 5 * 1024 * 1024 + 1),
        ),
        ("dir/sub/ünïcödé.txt", b"utf-8 name".to_vec()),
        ("dir/sub/a+b=c&d.txt", b"reserved characters".to_vec()),
        ("other/x", ostore_tests::random_bytes(2, 100_000)),
    ]
    .into_iter()
    .map(|(n, b)| (n.to_string(), b))
    .collect();
    for (name, body) in &files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    files
}

/// Every file under `root`, by its path relative to it.
fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn assert_same_tree(want: &BTreeMap<String, Vec<u8>>, root: &Path) {
    let got = read_tree(root);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the files that came back"
    );
    for (name, body) in want {
        assert!(got[name] == *body, "{name} came back different");
    }
}

/// The aws CLI (target/awsvenv as .ci/run makes it, or aws on PATH).
fn aws_cli(test: &str) -> PathBuf {
    tool(
        test,
        "the aws CLI (target/awsvenv as .ci/run makes it, or aws on PATH)",
        &[
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/awsvenv/bin/aws"),
            PathBuf::from("aws"),
        ],
    )
}

/// `aws --endpoint-url` the dev's S3 API, with the root key and no configuration of the user's.
fn aws_command(aws: &Path, dev: &Dev, work: &Path) -> Command {
    let mut c = Command::new(aws);
    c.args(["--endpoint-url", &format!("http://{}", dev.s3)])
        .env("AWS_ACCESS_KEY_ID", "root")
        .env("AWS_SECRET_ACCESS_KEY", &dev.secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", work.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", work.join("no-credentials"))
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_CA_BUNDLE")
        .current_dir(work);
    c
}

/// Upper bound on the server's resident memory while a 2 GiB object goes up and down in parts.
const RSS_BYTES_MAX: u64 = 256 << 20;

#[test]
fn the_aws_cli_streams_a_multi_gib_object_in_parts_with_flat_memory() {
    let aws = aws_cli("the_aws_cli_streams_a_multi_gib_object_in_parts_with_flat_memory");
    let size: u64 = std::env::var("OSTORE_TEST_BIG_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2 << 30);
    let dev = Dev::start(&[]);
    let work = tempfile::tempdir().unwrap();
    run(aws_command(&aws, &dev, work.path()).args(["s3", "mb", "s3://big-parts"]));
    let expect = {
        let mut h = blake3::Hasher::new();
        std::io::copy(&mut RandomReader::new(7, size), &mut h).unwrap();
        h.finalize()
    };
    let (stop, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = sample_rss(dev.pid(), stop.clone(), peak.clone());
    // Up from a pipe (the CLI cuts it into 8 MiB parts and sends several at once)...
    let mut up = aws_command(&aws, &dev, work.path())
        .args(["s3", "cp", "-", "s3://big-parts/huge", "--expected-size"])
        .arg(size.to_string())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = up.stdin.take().unwrap();
        let mut src = RandomReader::new(7, size);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            stdin.write_all(&buf[..n]).unwrap();
        }
    }
    assert!(up.wait().unwrap().success(), "aws s3 cp - failed");
    let put_peak = peak.swap(0, Ordering::Relaxed);
    // ...and down into a pipe, hashed as it comes.
    let mut down = aws_command(&aws, &dev, work.path())
        .args(["s3", "cp", "s3://big-parts/huge", "-"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut down.stdout.take().unwrap(), &mut h).unwrap();
    assert!(down.wait().unwrap().success(), "aws s3 cp to - failed");
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let get_peak = peak.load(Ordering::Relaxed);
    assert_eq!(n, size);
    assert_eq!(h.finalize(), expect, "the object came back different");
    eprintln!(
        "RSS: peak during the upload {} MiB, during the download {} MiB, object {} MiB",
        put_peak >> 20,
        get_peak >> 20,
        size >> 20
    );
    assert!(
        put_peak < RSS_BYTES_MAX,
        "upload peak RSS {} MiB",
        put_peak >> 20
    );
    assert!(
        get_peak < RSS_BYTES_MAX,
        "download peak RSS {} MiB",
        get_peak >> 20
    );
}

#[test]
fn the_aws_cli_syncs_a_tree_both_ways_and_manages_objects() {
    let test = "the_aws_cli_syncs_a_tree_both_ways_and_manages_objects";
    let aws = aws_cli(test);
    let dev = Dev::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{}", dev.s3);
    let cli = |args: &[&str]| {
        let mut c = Command::new(&aws);
        c.args(["--endpoint-url", &endpoint])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "root")
            .env("AWS_SECRET_ACCESS_KEY", &dev.secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", work.path().join("no-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                work.path().join("no-credentials"),
            )
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_CA_BUNDLE")
            .current_dir(work.path());
        run(&mut c)
    };
    let tree = work.path().join("tree");
    let mut files = make_tree(&tree);
    // 64 MiB: the aws CLI sends it in parts (8 MiB each, several at once).
    let big = ostore_tests::random_bytes(3, 64 * 1024 * 1024);
    std::fs::create_dir_all(tree.join("big")).unwrap();
    std::fs::write(tree.join("big/64mib"), &big).unwrap();
    files.insert("big/64mib".to_string(), big);
    cli(&["s3", "mb", "s3://cli-bucket"]);
    cli(&[
        "s3",
        "sync",
        "tree",
        "s3://cli-bucket/tree",
        "--no-progress",
    ]);
    let ls = cli(&["s3", "ls", "--recursive", "s3://cli-bucket"]);
    for (name, body) in &files {
        assert!(
            ls.lines().any(
                |l| l.ends_with(&format!("tree/{name}")) && l.contains(&body.len().to_string())
            ),
            "{name} ({} B) not in the listing:\n{ls}",
            body.len()
        );
    }
    // Nothing changed: a second sync uploads nothing.
    let again = cli(&[
        "s3",
        "sync",
        "tree",
        "s3://cli-bucket/tree",
        "--no-progress",
    ]);
    assert!(!again.contains("upload:"), "{again}");
    cli(&[
        "s3",
        "sync",
        "s3://cli-bucket/tree",
        "back",
        "--no-progress",
    ]);
    assert_same_tree(&files, &work.path().join("back"));
    // Listing with a delimiter.
    let top = cli(&["s3", "ls", "s3://cli-bucket/tree/"]);
    assert!(
        top.contains("PRE dir/") && top.contains("PRE other/"),
        "{top}"
    );
    // One file up and down through a pipe.
    cli(&["s3", "cp", "tree/one", "s3://cli-bucket/single"]);
    assert_eq!(cli(&["s3", "cp", "s3://cli-bucket/single", "-"]), "1");
    // aws s3api: the MD5 ETag, a copy, versions, versioning.
    let head = cli(&[
        "s3api",
        "head-object",
        "--bucket",
        "cli-bucket",
        "--key",
        "single",
    ]);
    // MD5("1") = c4ca4238a0b923820dcc509a6f75849b.
    assert!(head.contains("c4ca4238a0b923820dcc509a6f75849b"), "{head}");
    cli(&[
        "s3api",
        "copy-object",
        "--bucket",
        "cli-bucket",
        "--key",
        "copied",
        "--copy-source",
        "cli-bucket/tree/other/x",
    ]);
    cli(&["s3", "cp", "s3://cli-bucket/copied", "copied"]);
    assert!(std::fs::read(work.path().join("copied")).unwrap() == files["other/x"]);
    cli(&["s3", "cp", "tree/empty", "s3://cli-bucket/single"]);
    let versions = cli(&[
        "s3api",
        "list-object-versions",
        "--bucket",
        "cli-bucket",
        "--prefix",
        "single",
    ]);
    assert_eq!(versions.matches("\"VersionId\"").count(), 2, "{versions}");
    let big_head = cli(&[
        "s3api",
        "head-object",
        "--bucket",
        "cli-bucket",
        "--key",
        "tree/big/64mib",
    ]);
    assert!(
        big_head.contains("-8\\\""),
        "uploaded in 8 parts: {big_head}"
    );
    // aws s3api multipart: an upload listed, then aborted.
    let created = cli(&[
        "s3api",
        "create-multipart-upload",
        "--bucket",
        "cli-bucket",
        "--key",
        "pending",
    ]);
    let upload: String = created
        .split("\"UploadId\": \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();
    let listed = cli(&["s3api", "list-multipart-uploads", "--bucket", "cli-bucket"]);
    assert!(listed.contains(&upload), "{listed}");
    cli(&[
        "s3api",
        "abort-multipart-upload",
        "--bucket",
        "cli-bucket",
        "--key",
        "pending",
        "--upload-id",
        &upload,
    ]);
    let listed = cli(&["s3api", "list-multipart-uploads", "--bucket", "cli-bucket"]);
    assert!(!listed.contains(&upload), "{listed}");
    let status = cli(&["s3api", "get-bucket-versioning", "--bucket", "cli-bucket"]);
    assert!(status.contains("Enabled"), "{status}");
    // Remove everything; the listing is empty.
    cli(&["s3", "rm", "--recursive", "s3://cli-bucket"]);
    assert_eq!(cli(&["s3", "ls", "--recursive", "s3://cli-bucket"]), "");
    // What the aws CLI wrote, the native API reads (a bucket is the native API's bucket).
    let (status, body) = dev.get_bytes("copied?bucket=cli-bucket&version=1");
    assert_eq!(status, 200);
    assert!(body == files["other/x"]);
}

#[test]
fn rclone_copies_checks_by_md5_and_syncs_back() {
    let test = "rclone_copies_checks_by_md5_and_syncs_back";
    let rclone = tool(
        test,
        "rclone (the Debian package, as .ci/run installs it)",
        &[PathBuf::from("rclone")],
    );
    let dev = Dev::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("rclone.conf");
    std::fs::write(&config, "").unwrap();
    let rc = |args: &[&str]| {
        let mut c = Command::new(&rclone);
        c.args(args)
            .arg("--config")
            .arg(&config)
            .env("RCLONE_CONFIG_OS_TYPE", "s3")
            .env("RCLONE_CONFIG_OS_PROVIDER", "Other")
            .env("RCLONE_CONFIG_OS_ENDPOINT", format!("http://{}", dev.s3))
            .env("RCLONE_CONFIG_OS_ACCESS_KEY_ID", "root")
            .env("RCLONE_CONFIG_OS_SECRET_ACCESS_KEY", &dev.secret)
            .env("RCLONE_CONFIG_OS_FORCE_PATH_STYLE", "true")
            .env_remove("AWS_CA_BUNDLE")
            .current_dir(work.path());
        run(&mut c)
    };
    let mut files = make_tree(&work.path().join("tree"));
    // 12 MiB, sent in 5 MiB parts (the cutoff is lowered from rclone's 200 MiB).
    let big = ostore_tests::random_bytes(4, 12 * 1024 * 1024);
    std::fs::write(work.path().join("tree/twelve"), &big).unwrap();
    files.insert("twelve".to_string(), big);
    rc(&["mkdir", "os:rclone-bucket"]);
    rc(&[
        "copy",
        "tree",
        "os:rclone-bucket/tree",
        "--s3-upload-cutoff",
        "5M",
        "--s3-chunk-size",
        "5M",
    ]);
    // rclone compares sizes and the MD5 of every file with the ETag the server lists.
    let check = rc(&["check", "tree", "os:rclone-bucket/tree"]);
    assert!(check.contains("0 differences found"), "{check}");
    assert!(
        check.contains(&format!("{} matching files", files.len())),
        "{check}"
    );
    let sums = rc(&["md5sum", "os:rclone-bucket/tree"]);
    assert!(
        sums.lines()
            .any(|l| l.starts_with("d41d8cd98f00b204e9800998ecf8427e") && l.ends_with("empty")),
        "{sums}"
    );
    rc(&["sync", "os:rclone-bucket/tree", "back"]);
    assert_same_tree(&files, &work.path().join("back"));
    // A changed file is found by check, then synced.
    std::fs::write(work.path().join("tree/one"), b"2").unwrap();
    let mut differs = Command::new(&rclone);
    differs
        .args(["check", "tree", "os:rclone-bucket/tree", "--config"])
        .arg(&config)
        .envs([
            ("RCLONE_CONFIG_OS_TYPE", "s3"),
            ("RCLONE_CONFIG_OS_PROVIDER", "Other"),
            ("RCLONE_CONFIG_OS_ACCESS_KEY_ID", "root"),
            ("RCLONE_CONFIG_OS_FORCE_PATH_STYLE", "true"),
        ])
        .env("RCLONE_CONFIG_OS_ENDPOINT", format!("http://{}", dev.s3))
        .env("RCLONE_CONFIG_OS_SECRET_ACCESS_KEY", &dev.secret)
        .env_remove("AWS_CA_BUNDLE")
        .current_dir(work.path());
    assert!(
        !differs.output().unwrap().status.success(),
        "check missed a changed file"
    );
    rc(&["sync", "tree", "os:rclone-bucket/tree"]);
    assert!(rc(&["check", "tree", "os:rclone-bucket/tree"]).contains("0 differences found"));
    rc(&["delete", "os:rclone-bucket"]);
    assert_eq!(rc(&["lsf", "-R", "os:rclone-bucket"]).trim(), "");
}

#[test]
fn s3cmd_puts_gets_syncs_and_copies() {
    let test = "s3cmd_puts_gets_syncs_and_copies";
    let s3cmd = tool(
        test,
        "s3cmd (the Debian package, as .ci/run installs it)",
        &[PathBuf::from("s3cmd")],
    );
    let dev = Dev::start(&[]);
    let work = tempfile::tempdir().unwrap();
    // s3cmd with a configuration of its own: the secret, and whether it signs with SigV2.
    let s3cmd_with = |secret: &str, v2: bool, args: &[&str]| {
        let config = work.path().join(if v2 { "s3cfg-v2" } else { "s3cfg" });
        std::fs::write(
            &config,
            format!(
                "[default]\naccess_key = root\nsecret_key = {secret}\nhost_base = {h}\n\
                 host_bucket = {h}\nuse_https = False\nsignature_v2 = {}\n\
                 bucket_location = us-east-1\n",
                if v2 { "True" } else { "False" },
                h = dev.s3
            ),
        )
        .unwrap();
        let mut c = Command::new(&s3cmd);
        c.arg("-c")
            .arg(&config)
            .args(args)
            .env_remove("AWS_CA_BUNDLE")
            .current_dir(work.path());
        c
    };
    let s3 = |args: &[&str]| run(&mut s3cmd_with(&dev.secret, false, args));
    let files = make_tree(&work.path().join("tree"));
    s3(&["mb", "s3://s3cmd-bucket"]);
    // s3cmd compares the MD5 it computed with the ETag answered, and fails on a mismatch.
    s3(&["put", "tree/dir/five mib plus one", "s3://s3cmd-bucket/big"]);
    // 20 MiB: s3cmd sends it in 15 MiB parts, and checks the multipart ETag it gets.
    let twenty = ostore_tests::random_bytes(5, 20 * 1024 * 1024);
    std::fs::write(work.path().join("twenty"), &twenty).unwrap();
    s3(&["put", "twenty", "s3://s3cmd-bucket/twenty"]);
    s3(&["get", "s3://s3cmd-bucket/twenty", "twenty.back"]);
    assert!(std::fs::read(work.path().join("twenty.back")).unwrap() == twenty);
    s3(&["del", "s3://s3cmd-bucket/twenty"]);
    s3(&["get", "s3://s3cmd-bucket/big", "big.back"]);
    assert!(std::fs::read(work.path().join("big.back")).unwrap() == files["dir/five mib plus one"]);
    s3(&["sync", "tree/", "s3://s3cmd-bucket/tree/"]);
    let ls = s3(&["ls", "-r", "s3://s3cmd-bucket"]);
    assert_eq!(ls.lines().count(), files.len() + 1, "{ls}");
    // A second sync finds every file unchanged by its MD5.
    let again = s3(&["sync", "tree/", "s3://s3cmd-bucket/tree/"]);
    assert!(!again.contains("upload:"), "{again}");
    s3(&["sync", "s3://s3cmd-bucket/tree/", "back/"]);
    assert_same_tree(&files, &work.path().join("back"));
    let info = s3(&["info", "s3://s3cmd-bucket/tree/one"]);
    // MD5("1") = c4ca4238a0b923820dcc509a6f75849b.
    assert!(info.contains("c4ca4238a0b923820dcc509a6f75849b"), "{info}");
    s3(&["cp", "s3://s3cmd-bucket/big", "s3://s3cmd-bucket/big2"]);
    s3(&["get", "s3://s3cmd-bucket/big2", "big2.back"]);
    assert!(
        std::fs::read(work.path().join("big2.back")).unwrap() == files["dir/five mib plus one"]
    );
    s3(&["del", "--recursive", "--force", "s3://s3cmd-bucket"]);
    assert_eq!(s3(&["ls", "-r", "s3://s3cmd-bucket"]).trim(), "");
    // The same client signing with SigV2 (`Authorization: AWS KEY:SIGNATURE`), multipart
    // included; and a wrong secret refused.
    let v2 = |secret: &str, args: &[&str]| s3cmd_with(secret, true, args);
    run(&mut v2(
        &dev.secret,
        &["put", "twenty", "s3://s3cmd-bucket/v2/twenty"],
    ));
    run(&mut v2(
        &dev.secret,
        &["get", "s3://s3cmd-bucket/v2/twenty", "twenty.v2"],
    ));
    assert!(std::fs::read(work.path().join("twenty.v2")).unwrap() == twenty);
    let ls = run(&mut v2(&dev.secret, &["ls", "s3://s3cmd-bucket/v2/"]));
    assert!(ls.contains("v2/twenty"), "{ls}");
    let refused = v2("not-the-secret", &["ls", "s3://s3cmd-bucket/v2/"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("SignatureDoesNotMatch"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    run(&mut v2(
        &dev.secret,
        &["del", "s3://s3cmd-bucket/v2/twenty"],
    ));
}

//! A full drive: PUTs answer 507 InsufficientStorage, nothing partial is left behind, and
//! everything stored before reads back. Needs root to loop-mount a small ext4 filesystem; fails
//! loudly where that is not possible.

use ostore_tests::{random_bytes, shard_files, Dev};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn small_filesystem(dir: &Path, bytes: u64) -> Result<Mount, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    let img = dir.join("fs.img");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(bytes))
        .map_err(|e| e.to_string())?;
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    if !ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img)) {
        return Err("mkfs.ext4 failed or is missing".into());
    }
    if !ok(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt))
    {
        return Err("mount -o loop failed".into());
    }
    Ok(Mount(mnt))
}

#[test]
fn full_disk_answers_507_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mount = match small_filesystem(dir.path(), 96 << 20) {
        Ok(m) => m,
        Err(why) => {
            ostore_tests::missing_prerequisite(
                "full_disk_answers_507_and_loses_nothing",
                &format!("root, mkfs.ext4 and loop devices to make a small filesystem ({why})"),
            );
        }
    };
    {
        let dev = Dev::start_at(&mount.0.join("data"), &[]);
        let mut stored = Vec::new();
        let mut refused = None;
        for i in 0..60u64 {
            let body = random_bytes(i, 4 << 20);
            let r = dev.put(&format!("fill/{i}"), body.clone());
            match r.status().as_u16() {
                201 => stored.push((i, body)),
                507 => {
                    let j: serde_json::Value = r.json().unwrap();
                    refused = Some(j["error"]["code"].as_str().unwrap().to_string());
                    break;
                }
                other => panic!("PUT {i} on a filling disk answered {other}: {:?}", r.text()),
            }
        }
        assert_eq!(
            refused.as_deref(),
            Some("InsufficientStorage"),
            "the disk never filled"
        );
        assert!(stored.len() >= 3, "only {} objects fit", stored.len());
        for (i, body) in &stored {
            assert!(
                dev.get_bytes(&format!("fill/{i}")).1 == *body,
                "object {i} after the disk filled"
            );
        }
        assert_eq!(
            shard_files(&dev, 6).len(),
            6 * stored.len(),
            "the refused PUT left shard files"
        );
    }
    drop(mount);
}

//! A full disk: a member whose data directory fills up stops taking writes without losing any
//! it acknowledged, and works again, with everything, once there is space.
//!
//! The disk is a small tmpfs mounted for the test (it needs root, as CI runs; elsewhere the
//! test says it was skipped).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::GetOptions;

use crate::client_kv::connect;
use crate::harness::{Server, lone_member_flags};

/// A tmpfs mounted at a path, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs of `megabytes` at `path`; `None` when this process may not mount.
    fn tmpfs(path: &Path, megabytes: u64) -> Option<Mount> {
        std::fs::create_dir_all(path).unwrap();
        let size = format!("size={megabytes}m");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
            .arg(path)
            .status()
            .ok()?;
        status.success().then(|| Mount(path.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the disk is full; returns how many bytes fit.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = file.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_writes_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    // The WAL preallocates a 64 MiB segment; the rest is for the database and the filler.
    let Some(_mount) = Mount::tmpfs(&disk, 160) else {
        println!("skipped: this process cannot mount a tmpfs (run as root)");
        return;
    };
    let data_dir = disk.join("data");
    let mut server = Server::spawn(data_dir.clone(), lone_member_flags(), true).listening();
    let filled = fill(&disk.join("filler"));
    println!("filled the disk with {} MiB", filled >> 20);

    // Puts of 8 KiB values until the member refuses them or stops.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut c = connect(&server).await;
    let value = "v".repeat(8 << 10);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refusal = None;
    for i in 0.. {
        assert!(Instant::now() < deadline, "the full disk never stopped a write");
        let key = format!("full/{i:06}");
        let put = tokio::time::timeout(Duration::from_secs(5), c.put(key.clone(), value.clone(), None));
        match put.await {
            Ok(Ok(_)) => acked.lock().unwrap().push(key),
            Ok(Err(err)) => {
                refusal = Some(err.to_string());
                break;
            }
            Err(_) => {
                refusal = Some("no answer within 5 s".into());
                break;
            }
        }
    }
    let acked = acked.lock().unwrap().clone();
    println!(
        "{} puts acknowledged, then: {}",
        acked.len(),
        refusal.unwrap_or_default()
    );
    // The member stops rather than serve on with a store it cannot write; it says why.
    let status = server.wait_exit(Duration::from_secs(30));
    let said = server.log_lines_containing("No space left on device");
    assert!(
        !said.is_empty(),
        "no log line names the full disk:\n{}",
        server.log_tail()
    );
    println!("the member exited: {status:?}");

    // Space again: the member starts on its data and has every acknowledged put.
    std::fs::remove_file(disk.join("filler")).unwrap();
    drop(c);
    server.restart();
    let mut c = connect(&server).await;
    let stored = c
        .get("full/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    let stored: std::collections::HashSet<String> = stored
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    for key in &acked {
        assert!(stored.contains(key), "acknowledged {key} lost");
    }
    c.put("after", "space", None).await.unwrap();
}

//! `concordctl lock` and `concordctl elect`, over etcd's Lock and Election services, beside
//! etcdctl's.

use super::support::{Background, concordctl};
use crate::harness::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concordctl_lock_runs_a_command_under_the_lock_and_waits_its_turn() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // A command runs with the lock's key in its environment; its exit code is concordctl's.
    let out = concordctl(
        &server.url(),
        &["lock", "job", "--", "sh", "-c", "echo \"$ETCD_LOCK_KEY\"; exit 3"],
        None,
    );
    assert_eq!(out.status.code(), Some(3));
    let key = String::from_utf8(out.stdout).unwrap();
    assert!(key.starts_with("job/"), "{key}");
    assert_eq!(
        server.ctl(&["get", "job/", "--prefix", "--keys-only"]),
        "",
        "released after the command"
    );

    // Held until interrupted; the next waits its turn, etcdctl's lock included.
    let holder = Background::concordctl(&server.url(), &["lock", "job"]);
    holder.stdout_containing("job/").await;
    let mut next = Background::concordctl(&server.url(), &["lock", "job", "--", "echo", "second"]);
    let mut theirs = Background::spawn(&server, &["lock", "job", "echo", "etcdctl's"]);
    next.still_waiting();
    theirs.still_waiting();
    let (status, _, _) = holder.signal("INT");
    assert!(status.success());
    let (status, out, err) = next.wait_exit();
    assert!(status.success(), "{err}");
    assert_eq!(out, "second\n");
    let (status, out, _) = theirs.wait_exit();
    assert!(status.success());
    assert_eq!(out, "etcdctl's\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concordctl_elect_campaigns_and_observes_beside_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let observer = Background::concordctl(&server.url(), &["elect", "boss"]);
    let alice = Background::concordctl(&server.url(), &["elect", "boss", "alice"]);
    let led = alice.stdout_containing("alice").await;
    assert!(led.starts_with("boss/") && led.ends_with("\nalice\n"), "{led}");
    observer.stdout_containing("alice\n").await;
    // etcdctl's candidate waits, then leads when alice resigns (on Ctrl-C).
    let mut bob = Background::spawn(&server, &["elect", "boss", "bob"]);
    bob.still_waiting();
    let (status, _, _) = alice.signal("INT");
    assert!(status.success());
    bob.stdout_containing("bob").await;
    let seen = observer.stdout_containing("bob\n").await;
    assert_eq!(seen, "alice\nbob\n");
    bob.kill();
    observer.kill();
}

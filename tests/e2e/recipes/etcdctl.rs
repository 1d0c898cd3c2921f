//! `etcdctl lock` and `etcdctl elect`, as a user runs them. etcdctl 3.4 builds both on its
//! client-side recipes (a session lease, a key `name/<lease hex>`, a watch on the key ahead),
//! so these drive KV, Lease and Watch rather than the Lock and Election services. The expected
//! outputs are what etcdctl 3.4.23 prints against etcd 3.4.23 for the same commands: `lock`
//! prints the lock key and its (empty) value, `elect` the leader key and the proposal, and
//! `elect -l` those two lines for every leader.

use std::time::Instant;

use crate::harness::Server;

use super::support::{EXPIRY_LIMIT, Etcdctl, FAST};

/// The lease hex of a key `name/<lease hex>` that etcdctl printed as the first line of `out`.
fn lease_of(out: &str, name: &str) -> String {
    let first = out.lines().next().unwrap_or_default();
    let hex = first
        .strip_prefix(&format!("{name}/"))
        .unwrap_or_else(|| panic!("not a key of {name}: {out:?}"));
    assert!(
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{out:?}"
    );
    hex.to_string()
}

/// Asserts the session lease `hex` has TTL `ttl` and holds exactly `key`.
fn assert_session(server: &Server, hex: &str, ttl: u32, key: &str) {
    let out = server.ctl(&["lease", "timetolive", "--keys", hex]);
    assert!(
        out.starts_with(&format!("lease {hex} granted with TTL({ttl}s), remaining("))
            && out.ends_with(&format!("attached keys([{key}])\n")),
        "{out}"
    );
}

#[test]
fn etcdctl_lock_holds_until_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let first = Etcdctl::spawn(&server, &["lock", "door"]);
    let out = first.lines(2);
    let a = lease_of(&out, "door");
    assert_eq!(out, format!("door/{a}\n\n"), "the key, then its empty value");
    // etcdctl's session TTL is 10 s unless --ttl says otherwise.
    assert_session(&server, &a, 10, &format!("door/{a}"));

    let mut second = Etcdctl::spawn(&server, &["lock", "door"]);
    second.still_waiting();
    let queued = server.ctl(&["get", "door/", "--prefix", "--keys-only"]);
    assert_eq!(queued.lines().filter(|l| !l.is_empty()).count(), 2, "{queued}");

    // SIGTERM: etcdctl unlocks and exits 0, printing nothing more.
    let (status, out, err) = first.signal("TERM");
    assert!(status.success(), "{status:?} {err}");
    assert_eq!(
        (out.as_str(), err.as_str()),
        (format!("door/{a}\n\n").as_str(), "")
    );
    let out = second.lines(2);
    let b = lease_of(&out, "door");
    assert_ne!(a, b);
    assert_eq!(out, format!("door/{b}\n\n"));
    assert_session(&server, &b, 10, &format!("door/{b}"));

    let (status, _, err) = second.signal("INT");
    assert!(status.success(), "{status:?} {err}");
    assert_eq!(server.ctl(&["get", "door/", "--prefix"]), "", "both unlocked");
}

#[test]
fn etcdctl_lock_runs_a_command_while_holding() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.ctl(&["lock", "door", "echo", "hello"]), "hello\n");

    // The command sees the key and the revision it was locked at; the unlock is the next one.
    let out = server.ctl(&[
        "lock",
        "door",
        "--",
        "sh",
        "-c",
        "echo \"$ETCD_LOCK_KEY $ETCD_LOCK_REV\"",
    ]);
    let (key, rev) = out.trim_end().split_once(' ').unwrap();
    lease_of(key, "door");
    let rev: i64 = rev.parse().unwrap();
    let now = server.ctl(&["get", "x", "-w", "json"]);
    assert!(now.contains(&format!("\"revision\":{}", rev + 1)), "{now}");
    assert_eq!(
        server.ctl(&["get", "door/", "--prefix"]),
        "",
        "unlocked after the command"
    );

    // A failing command: etcdctl 3.4 exits 1 with the command's status as the error.
    let out = server.etcdctl(&["lock", "door", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "Error: exit status 3\n");

    // Behind a holder, the command waits, then runs.
    let holder = Etcdctl::spawn(&server, &["lock", "door"]);
    holder.lines(2);
    let mut waiting = Etcdctl::spawn(&server, &["lock", "door", "echo", "hello"]);
    waiting.still_waiting();
    let (status, _, _) = holder.signal("INT");
    assert!(status.success());
    let (status, out, err) = waiting.wait_exit();
    assert!(status.success(), "{err}");
    assert_eq!(out, "hello\n");
    assert_eq!(server.ctl(&["get", "door/", "--prefix"]), "");
}

/// A holder killed with SIGKILL cannot unlock: its key goes when its 1 s lease expires, and
/// the waiter prints its key then.
#[test]
fn etcdctl_lock_killed_holder_hands_over_at_lease_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST);
    let holder = Etcdctl::spawn(&server, &["lock", "--ttl", "1", "door"]);
    let a = lease_of(&holder.lines(2), "door");
    assert_session(&server, &a, 1, &format!("door/{a}"));
    let mut waiter = Etcdctl::spawn(&server, &["lock", "--ttl", "5", "door"]);
    waiter.still_waiting();

    let killed = Instant::now();
    holder.kill9();
    let out = waiter.lines(2);
    let took = killed.elapsed();
    let b = lease_of(&out, "door");
    assert_eq!(out, format!("door/{b}\n\n"));
    // etcdctl renews every TTL/3, so the lease had at least ~2/3 s left when the holder died.
    assert!(
        took >= std::time::Duration::from_millis(500) && took <= EXPIRY_LIMIT,
        "the waiter got the lock {took:?} after the holder died"
    );
    assert_eq!(
        server.ctl(&["lease", "timetolive", &a]),
        format!("lease {a} already expired\n")
    );
    let (status, _, _) = waiter.signal("TERM");
    assert!(status.success());
}

#[test]
fn etcdctl_elect_leads_observes_and_hands_over() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // An observer of an election nobody leads yet prints nothing until someone does.
    let mut observer = Etcdctl::spawn(&server, &["elect", "-l", "vote"]);
    observer.still_waiting();

    let first = Etcdctl::spawn(&server, &["elect", "vote", "alpha"]);
    let out = first.lines(2);
    let a = lease_of(&out, "vote");
    assert_eq!(
        out,
        format!("vote/{a}\nalpha\n"),
        "the leader key, then the proposal"
    );
    // etcdctl elect's session has the client library's default TTL, 60 s.
    assert_session(&server, &a, 60, &format!("vote/{a}"));
    assert_eq!(observer.lines(2), format!("vote/{a}\nalpha\n"));

    let mut second = Etcdctl::spawn(&server, &["elect", "vote", "beta"]);
    second.still_waiting();

    // SIGINT: the leader resigns and exits 0; the next candidate leads.
    let (status, out, err) = first.signal("INT");
    assert!(status.success(), "{err}");
    assert_eq!(out, format!("vote/{a}\nalpha\n"));
    let out = second.lines(2);
    let b = lease_of(&out, "vote");
    assert_eq!(out, format!("vote/{b}\nbeta\n"));
    let seen = observer.lines(4);
    assert_eq!(seen, format!("vote/{a}\nalpha\nvote/{b}\nbeta\n"));

    let (status, _, err) = second.signal("TERM");
    assert!(status.success(), "{err}");
    assert_eq!(server.ctl(&["get", "vote/", "--prefix"]), "", "both resigned");
    let (status, out, err) = observer.signal("INT");
    assert!(status.success(), "{err}");
    assert_eq!(
        out, seen,
        "no leader after the last resigned: nothing more printed"
    );

    // A late observer prints the current leader first.
    let third = Etcdctl::spawn(&server, &["elect", "vote", "gamma"]);
    let c = lease_of(&third.lines(2), "vote");
    let late = Etcdctl::spawn(&server, &["elect", "-l", "vote"]);
    assert_eq!(late.lines(2), format!("vote/{c}\ngamma\n"));
}

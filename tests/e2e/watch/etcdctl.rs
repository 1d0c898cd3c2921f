//! `etcdctl watch` against Concord prints exactly what it prints against etcd 3.4.23. Every
//! expected output below was captured from a real etcd running the same steps on a fresh data
//! directory (revisions included).

use serde_json::{Value, json};

use super::support::{Etcdctl, wait_for_gauge};
use crate::harness::Server;

/// An expected output, written from the line after the opening quote on.
fn output(text: &str) -> String {
    text.strip_prefix('\n').expect("starts on a new line").to_string()
}

const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_and_history_output_matches_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);

    // Live watches: a key, a range, a prefix with previous values, everything, and the exec
    // form that hands each event to a command through environment variables.
    let key = Etcdctl::spawn(&server, &["watch", "foo"]);
    let range = Etcdctl::spawn(&server, &["watch", "foo", "foo3"]);
    let prefix = Etcdctl::spawn(&server, &["watch", "--prefix", "foo", "--prev-kv"]);
    let all = Etcdctl::spawn(&server, &["watch", "--prefix", ""]);
    let exec = Etcdctl::spawn(
        &server,
        &[
            "watch",
            "foo1",
            "--",
            "sh",
            "-c",
            r#"echo "exec: $ETCD_WATCH_REVISION $ETCD_WATCH_KEY $ETCD_WATCH_EVENT_TYPE [$ETCD_WATCH_VALUE]""#,
        ],
    );
    // etcdctl prints nothing when its watch is created: wait for the server to have them all.
    wait_for_gauge(&server, WATCHERS, 5).await;

    server.ctl(&["put", "foo", "bar"]); // 2
    server.ctl(&["put", "foo1", "x"]); // 3
    server.ctl(&["put", "foo3", "y"]); // 4: outside [foo, foo3)
    server.ctl(&["put", "fox", "z"]); // 5: outside the prefix and the range
    server.ctl(&["put", "foo", "two words"]); // 6
    assert_eq!(server.ctl(&["del", "foo", "foo3"]), "2\n"); // 7: foo and foo1, one revision
    server.ctl(&["put", "foo", ""]); // 8: a new generation with an empty value
    let txn = server.etcdctl_with_stdin(&["txn"], Some("\nput foo1 t1\nput foo2 t2\n\n\n")); // 9
    assert!(txn.status.success());
    server.ctl(&["put", "foo", "end"]); // 10

    let expected_key = output(
        r#"
PUT
foo
bar
PUT
foo
two words
DELETE
foo

PUT
foo

PUT
foo
end
"#,
    );
    let expected_range = output(
        r#"
PUT
foo
bar
PUT
foo1
x
PUT
foo
two words
DELETE
foo

DELETE
foo1

PUT
foo

PUT
foo1
t1
PUT
foo2
t2
PUT
foo
end
"#,
    );
    // With --prev-kv a PUT over an existing key and every DELETE print the previous key-value
    // between the event type and the event's own key-value.
    let expected_prefix = output(
        r#"
PUT
foo
bar
PUT
foo1
x
PUT
foo3
y
PUT
foo
bar
foo
two words
DELETE
foo
two words
foo

DELETE
foo1
x
foo1

PUT
foo

PUT
foo1
t1
PUT
foo2
t2
PUT
foo

foo
end
"#,
    );
    let expected_all = output(
        r#"
PUT
foo
bar
PUT
foo1
x
PUT
foo3
y
PUT
fox
z
PUT
foo
two words
DELETE
foo

DELETE
foo1

PUT
foo

PUT
foo1
t1
PUT
foo2
t2
PUT
foo
end
"#,
    );
    let expected_exec = output(
        r#"
PUT
foo1
x
exec: 3 "foo1" "PUT" ["x"]
DELETE
foo1

exec: 7 "foo1" "DELETE" [""]
PUT
foo1
t1
exec: 9 "foo1" "PUT" ["t1"]
"#,
    );
    for (name, ctl, expected) in [
        ("watch foo", key, &expected_key),
        ("watch foo foo3", range, &expected_range),
        ("watch --prefix foo --prev-kv", prefix, &expected_prefix),
        ("watch --prefix ''", all, &expected_all),
        ("watch foo1 -- sh -c ...", exec, &expected_exec),
    ] {
        ctl.stdout_like(expected).await;
        let (stdout, stderr) = ctl.kill();
        assert_eq!(&stdout, expected, "etcdctl {name}");
        assert_eq!(stderr, "", "etcdctl {name}");
    }

    // History: the same events replayed from a past revision, by a fresh watch.
    for (args, expected) in [
        (&["watch", "--rev=2", "foo"][..], expected_key.clone()),
        (
            &["watch", "--rev=4", "--prefix", "foo", "--prev-kv"][..],
            output(
                r#"
PUT
foo3
y
PUT
foo
bar
foo
two words
DELETE
foo
two words
foo

DELETE
foo1
x
foo1

PUT
foo

PUT
foo1
t1
PUT
foo2
t2
PUT
foo

foo
end
"#,
            ),
        ),
    ] {
        let ctl = Etcdctl::spawn(&server, args);
        ctl.stdout_like(&expected).await;
        let (stdout, stderr) = ctl.kill();
        assert_eq!(stdout, expected, "etcdctl {args:?}");
        assert_eq!(stderr, "", "etcdctl {args:?}");
    }

    // JSON shows the response itself: history from 9 arrives as one response holding both
    // revisions, with the header at the current revision, as etcd sends it.
    let ctl = Etcdctl::spawn(&server, &["watch", "-w", "json", "--rev=9", "foo", "foo3"]);
    ctl.stdout_lines(1).await;
    let (stdout, _) = ctl.kill();
    assert_eq!(stdout.lines().count(), 1, "one response: {stdout}");
    let response: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(response["Header"]["revision"], 10);
    assert_eq!(
        response["Events"],
        json!([
            {"kv": {"key": "Zm9vMQ==", "create_revision": 9, "mod_revision": 9, "version": 1, "value": "dDE="}},
            {"kv": {"key": "Zm9vMg==", "create_revision": 9, "mod_revision": 9, "version": 1, "value": "dDI="}},
            {"kv": {"key": "Zm9v", "create_revision": 8, "mod_revision": 10, "version": 2, "value": "ZW5k"}}
        ])
    );
    assert_eq!(
        (
            &response["CompactRevision"],
            &response["Canceled"],
            &response["Created"]
        ),
        (&json!(0), &json!(false), &json!(false))
    );

    // Below the compacted revision the server cancels the watch and etcdctl exits 5 by itself;
    // at the compacted revision itself history is still there.
    assert_eq!(server.ctl(&["compact", "6"]), "compacted revision 6\n");
    let (status, stdout, stderr) = Etcdctl::spawn(&server, &["watch", "--rev=5", "foo"]).exit().await;
    assert_eq!(status.code(), Some(5));
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "watch was canceled (etcdserver: mvcc: required revision has been compacted)\n\
         Error: watch is canceled by the server\n"
    );
    let expected = output(
        r#"
PUT
foo
two words
DELETE
foo

DELETE
foo1

PUT
foo

PUT
foo1
t1
PUT
foo2
t2
PUT
foo
end
"#,
    );
    let ctl = Etcdctl::spawn(&server, &["watch", "--rev=6", "--prefix", "foo"]);
    ctl.stdout_like(&expected).await;
    assert_eq!(ctl.kill(), (expected, String::new()));
}

/// `etcdctl watch -i` reads commands from stdin: `watch [options] key [range_end]` adds a watch
/// on the same stream, `progress` asks for a progress notification (printed once per watch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_mode_matches_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.ctl(&["put", "foo0", "a"]); // 2
    server.ctl(&["put", "foo0", "b"]); // 3
    server.ctl(&["compact", "3"]);

    let mut ctl = Etcdctl::spawn(&server, &["watch", "-i"]);
    let mut expected = String::new();
    // Each step's output must arrive before the next step starts.
    let mut step = async |ctl: &Etcdctl, more: &str| {
        expected.push_str(more);
        let out = ctl.stdout_like(&expected).await;
        assert_eq!(out, expected);
    };
    ctl.line("watch foo");
    wait_for_gauge(&server, WATCHERS, 1).await;
    server.ctl(&["put", "foo", "i1"]); // 4
    step(&ctl, "PUT\nfoo\ni1\n").await;
    ctl.line("progress");
    step(&ctl, "progress notify: 4\n").await;

    ctl.line("watch --prefix zz --prev-kv");
    wait_for_gauge(&server, WATCHERS, 2).await;
    server.ctl(&["put", "zz1", "v"]); // 5
    server.ctl(&["put", "zz1", "w"]); // 6
    step(&ctl, "PUT\nzz1\nv\nPUT\nzz1\nv\nzz1\nw\n").await;
    server.ctl(&["put", "foo", "i2"]); // 7
    step(&ctl, "PUT\nfoo\ni2\n").await;
    // One progress response for the stream, printed by each of its two watches.
    ctl.line("progress");
    step(&ctl, "progress notify: 7\nprogress notify: 7\n").await;

    ctl.line("bogus");
    ctl.line("watch");
    ctl.line("watch --rev=2 foo1"); // below the compacted revision
    let errors = "Invalid command bogus (only support watch)\n\
                  Invalid command watch (command type or key is not provided)\n\
                  watch was canceled (etcdserver: mvcc: required revision has been compacted)\n";
    assert_eq!(ctl.stderr_like(errors).await, errors);

    // End of input ends etcdctl with exit code 3 (ExitInvalidInput).
    let (status, stdout, stderr) = ctl.exit().await;
    assert_eq!(status.code(), Some(3));
    assert_eq!(stdout, expected);
    assert_eq!(
        stderr,
        format!("{errors}Error: Error reading watch request line: EOF\n")
    );
}

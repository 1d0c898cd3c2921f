use serde_json::json;

use super::*;
use crate::memory::MemoryKv;
use crate::test_util::{FlakyKv, bounded};

fn put(value: &str) -> Put {
    Put {
        value: value.to_string(),
        author: "alice".into(),
        ..Default::default()
    }
}

fn formatted(value: &str, format: Format) -> Put {
    Put {
        format: Some(format),
        ..put(value)
    }
}

async fn values<K: Kv>(center: &ConfigCenter<K>, ns: &str, key: &str) -> Vec<String> {
    center
        .history(ns, key)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.value)
        .collect()
}

fn refused(result: Result<Version>) -> String {
    match result {
        Err(Error::InvalidArgument(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn versions_are_numbered_kept_and_readable_by_number() {
    let kv = MemoryKv::new();
    let center = ConfigCenter::new(kv.clone());
    let v1 = center
        .put("app", "db", formatted(r#"{"port": 1}"#, Format::Json))
        .await
        .unwrap();
    let v2 = center.put("app", "db", put(r#"{"port": 2}"#)).await.unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert!(v1.revision < v2.revision);
    assert_eq!(v2.format, Format::Json, "a put without a format keeps the key's");
    assert_eq!(v2.author, "alice");

    let latest = center.get("app", "db", 0).await.unwrap();
    assert_eq!((latest.version, latest.value.as_str()), (2, r#"{"port": 2}"#));
    assert_eq!(latest.revision, v2.revision);
    assert_eq!(center.get("app", "db", 1).await.unwrap().value, r#"{"port": 1}"#);
    // The current value is a plain key, as written.
    let plain = kv
        .range(RangeRequest {
            key: b"config/values/app/db".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(plain.kvs[0].value, &br#"{"port": 2}"#[..]);
}

#[tokio::test]
async fn bad_values_are_refused_with_their_position_and_nothing_is_stored() {
    let kv = MemoryKv::new();
    let center = ConfigCenter::new(kv.clone());
    center
        .put("app", "conf", formatted("a: 1\n", Format::Yaml))
        .await
        .unwrap();
    let before = kv.revision();

    let yaml = refused(center.put("app", "conf", put("a: 1\nb: [2\n")).await);
    assert!(yaml.starts_with("config: invalid yaml at line "), "{yaml}");
    let json = refused(
        center
            .put("app", "j", formatted("{\"a\": 1,}", Format::Json))
            .await,
    );
    assert!(
        json.starts_with("config: invalid json at line 1 column "),
        "{json}"
    );
    let toml = refused(center.put("app", "t", formatted("a = \n", Format::Toml)).await);
    assert!(
        toml.starts_with("config: invalid toml at line 1 column "),
        "{toml}"
    );
    for name in ["", "a/b", "tab\there"] {
        assert!(matches!(
            center.put(name, "k", put("x")).await,
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            center.put("app", name, put("x")).await,
            Err(Error::InvalidArgument(_))
        ));
    }
    assert_eq!(kv.revision(), before, "nothing was written");
    assert_eq!(values(&center, "app", "conf").await, ["a: 1\n"]);
}

#[tokio::test]
async fn a_schema_refuses_values_that_break_it_and_is_refused_if_stored_values_would() {
    let kv = MemoryKv::new();
    let center = ConfigCenter::new(kv.clone());
    let schema = json!({"type": "object", "properties": {"port": {"type": "integer"}}, "required": ["port"]});
    center.set_schema("svc", Some(schema.clone())).await.unwrap();
    assert_eq!(center.schema("svc").await.unwrap(), Some(schema));

    center
        .put("svc", "web", formatted("port: 80\n", Format::Yaml))
        .await
        .unwrap();
    let broken = refused(center.put("svc", "web", put("port: eighty\n")).await);
    assert!(broken.contains("at /port: "), "{broken}");
    let toml = refused(
        center
            .put("svc", "web", formatted("other = 1\n", Format::Toml))
            .await,
    );
    assert!(toml.contains("at /: "), "{toml}");
    assert_eq!(center.get("svc", "web", 0).await.unwrap().version, 1);

    // A schema the stored value breaks is refused, naming the key; a bad schema too.
    let strict = json!({"type": "object", "required": ["host"]});
    let Err(Error::InvalidArgument(message)) = center.set_schema("svc", Some(strict)).await else {
        panic!("a schema that breaks svc/web was set");
    };
    assert!(message.contains("svc/web"), "{message}");
    assert!(center.set_schema("svc", Some(json!({"type": 5}))).await.is_err());
    // Removing it lets anything in again.
    center.set_schema("svc", None).await.unwrap();
    center.put("svc", "web", put("port: eighty\n")).await.unwrap();
}

#[tokio::test]
async fn compare_and_set_on_the_expected_version() {
    let center = ConfigCenter::new(MemoryKv::new());
    let create = Put {
        if_version: Some(0),
        ..put("one")
    };
    center.put("app", "flag", create.clone()).await.unwrap();
    let Err(Error::Conflict(message)) = center.put("app", "flag", create).await else {
        panic!("a second create succeeded");
    };
    assert_eq!(message, "config: app/flag is at version 1, not 0");
    let next = Put {
        if_version: Some(1),
        ..put("two")
    };
    assert_eq!(center.put("app", "flag", next.clone()).await.unwrap().version, 2);
    assert!(matches!(
        center.put("app", "flag", next).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(values(&center, "app", "flag").await, ["one", "two"]);
}

#[tokio::test]
async fn rollback_is_a_new_version_and_old_versions_are_trimmed_to_the_limit() {
    let center = ConfigCenter::new(MemoryKv::new()).keeping(3);
    for i in 1..=4 {
        center.put("app", "k", put(&format!("v{i}"))).await.unwrap();
    }
    assert_eq!(values(&center, "app", "k").await, ["v2", "v3", "v4"]);
    let rolled = center.rollback("app", "k", 2, "bob", "").await.unwrap();
    assert_eq!((rolled.version, rolled.value.as_str()), (5, "v2"));
    assert_eq!(
        (rolled.rollback_of, rolled.comment.as_str()),
        (Some(2), "rollback to version 2")
    );
    assert_eq!(values(&center, "app", "k").await, ["v3", "v4", "v2"]);

    let Err(Error::NotFound(gone)) = center.get("app", "k", 1).await else {
        panic!("a trimmed version was found");
    };
    assert_eq!(
        gone,
        "config: version 1 of app/k is not kept (versions 3 to 5 are)"
    );
    assert!(matches!(
        center.rollback("app", "k", 1, "bob", "").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        center.revision_of("app", "k", 1).await,
        Err(Error::OutOfRange(_))
    ));
}

#[tokio::test]
async fn unknown_namespaces_and_keys_are_not_found() {
    let center = ConfigCenter::new(MemoryKv::new());
    let missing = |result: Result<Version>| match result {
        Err(Error::NotFound(message)) => message,
        other => panic!("expected not found, got {other:?}"),
    };
    assert_eq!(
        missing(center.get("nope", "k", 0).await),
        "config: namespace nope not found"
    );
    assert!(matches!(
        center.watch("nope", None, 0).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(center.schema("nope").await, Err(Error::NotFound(_))));
    center.put("app", "k", put("x")).await.unwrap();
    assert_eq!(
        missing(center.get("app", "other", 0).await),
        "config: key app/other not found"
    );
    assert!(matches!(
        center.status("app", "other").await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn watches_see_every_version_in_order_resume_and_survive_compaction() {
    let kv = FlakyKv::default();
    let center = ConfigCenter::new(kv.clone()).keeping(100);
    let first = center.put("app", "a", put("a1")).await.unwrap();
    let mut namespace = center.watch("app", None, 0).await.unwrap();
    let mut key = center.watch("app", Some("a"), first.revision).await.unwrap();
    center.put("app", "b", put("b1")).await.unwrap();
    center.put("app", "a", put("a2")).await.unwrap();

    let seen: Vec<String> = vec![
        bounded(namespace.next()).await.unwrap().value,
        bounded(namespace.next()).await.unwrap().value,
    ];
    assert_eq!(seen, ["b1", "a2"]);
    assert_eq!(
        bounded(key.next()).await.unwrap().value,
        "a1",
        "replayed from the start revision"
    );
    assert_eq!(bounded(key.next()).await.unwrap().value, "a2");

    // The stream breaks while versions land and their history is compacted away: the watch
    // reads the missed versions from the kept records, in order, none twice.
    kv.cut_watches();
    let a3 = center.put("app", "a", put("a3")).await.unwrap();
    center.put("app", "a", put("a4")).await.unwrap();
    kv.compact(a3.revision + 2);
    assert_eq!(bounded(key.next()).await.unwrap().value, "a3");
    assert_eq!(bounded(key.next()).await.unwrap().value, "a4");
    center.put("app", "a", put("a5")).await.unwrap();
    assert_eq!(bounded(key.next()).await.unwrap().value, "a5");

    // A new watch from a compacted revision works too, from the records.
    let mut late = center.watch("app", Some("a"), first.revision).await.unwrap();
    let mut versions = Vec::new();
    for _ in 0..5 {
        versions.push(bounded(late.next()).await.unwrap().version);
    }
    assert_eq!(versions, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn status_lists_what_each_client_runs_and_rejections() {
    let kv = MemoryKv::new();
    let center = ConfigCenter::new(kv.clone());
    center
        .put("app", "k", formatted("{}", Format::Json))
        .await
        .unwrap();
    center.put("app", "k", put("{\"x\": 1}")).await.unwrap();
    let lease = kv.lease_grant(10).await.unwrap().id;
    let applied = Report {
        client: "web-1".into(),
        version: 2,
        applied: true,
        error: String::new(),
    };
    let rejected = Report {
        client: "web-2".into(),
        version: 2,
        applied: false,
        error: "missing field `y`".into(),
    };
    center.report("app", "k", &applied, lease).await.unwrap();
    center.report("app", "k", &rejected, 0).await.unwrap();
    let status = center.status("app", "k").await.unwrap();
    assert_eq!(status.latest, 2);
    assert_eq!(status.reports, [applied, rejected.clone()]);
    // A client that goes away takes its report with it.
    kv.expire_lease(lease);
    assert_eq!(center.status("app", "k").await.unwrap().reports, [rejected]);
}

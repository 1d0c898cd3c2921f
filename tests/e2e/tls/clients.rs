//! One member serving clients over TLS.

use std::process::Command;
use std::time::Duration;

use super::Pki;
use crate::harness::Server;

/// A lone member with an `https://` client listener (and `extra` flags), on a port of its own
/// that it also advertises (so `--cluster` commands find it).
pub fn start(dir: &std::path::Path, pki: &Pki, extra: &[&str]) -> Server {
    let url = format!("https://127.0.0.1:{}", crate::cluster::harness::free_ports(1)[0]);
    let mut args = vec![
        "--listen-client-urls".to_string(),
        url.clone(),
        "--advertise-client-urls".to_string(),
        url,
        "--listen-peer-urls".to_string(),
        "http://127.0.0.1:0".to_string(),
    ];
    args.extend(pki.server_flags());
    args.extend(extra.iter().map(|s| s.to_string()));
    // /health is served over TLS too: the harness's plain-HTTP wait would not reach it.
    Server::spawn(dir.join("data"), args, false).listening()
}

/// etcdctl against `server` with `flags` (TLS files, user): (success, stdout + stderr).
fn etcdctl(server: &Server, flags: &[String], args: &[&str]) -> (bool, String) {
    let out = server.etcdctl(
        &flags
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect::<Vec<_>>(),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Waits (bounded) until etcdctl with `flags` can write through `server`.
fn until_serving(server: &Server, flags: &[String]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out) = etcdctl(server, flags, &["put", "ready", "1"]);
        if ok {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never served over TLS: {out}\n{}",
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_a_tls_listener_only_with_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let server = start(dir.path(), &pki, &[]);
    let with_ca = vec![format!("--cacert={}", pki.path("ca.pem"))];
    until_serving(&server, &with_ca);
    assert!(etcdctl(&server, &with_ca, &["get", "ready"]).1.contains("ready"));
    // Without the CA (or with a plain-text client) nothing gets through.
    let (ok, out) = etcdctl(
        &server,
        &[
            "--dial-timeout=2s".to_string(),
            "--command-timeout=3s".to_string(),
        ],
        &["get", "ready"],
    );
    assert!(!ok, "{out}");
    let (ok, out) = etcdctl(
        &server,
        &[
            format!("--cacert={}", pki.path("stranger.pem")),
            "--command-timeout=3s".to_string(),
        ],
        &["get", "ready"],
    );
    assert!(!ok, "{out}");

    // etcdctl 3.4 dials the members of `--cluster` commands by URL, which puts `https://` in
    // the request's `:authority`: repaired behind TLS as in the clear.
    let (ok, out) = etcdctl(&server, &with_ca, &["endpoint", "status", "--cluster"]);
    assert!(ok && out.contains(&server.endpoint), "{out}");

    // The etcd-client crate.
    let tls = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(
        std::fs::read(pki.path("ca.pem")).unwrap(),
    ));
    let options = etcd_client::ConnectOptions::new().with_tls(tls);
    let mut etcd = etcd_client::Client::connect([format!("https://{}", server.endpoint)], Some(options))
        .await
        .unwrap();
    etcd.put("from/etcd-client", "1", None).await.unwrap();

    // concord-client.
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(std::fs::read(pki.path("ca.pem")).unwrap()),
    );
    let options = concord_client::ClientOptions {
        tls: Some(tls),
        ..Default::default()
    };
    let client = concord_client::Client::connect_with([format!("https://{}", server.endpoint)], options)
        .await
        .unwrap();
    assert_eq!(
        client.get("from/etcd-client").await.unwrap().unwrap().value,
        &b"1"[..]
    );
    let lock = client.lock("over/tls").await.unwrap();
    lock.unlock().await.unwrap();

    // concordctl, with and without the CA.
    let url = format!("https://{}", server.endpoint);
    let cacert = format!("--cacert={}", pki.path("ca.pem"));
    let out = crate::services::support::concordctl(&url, &[cacert.as_str(), "pub", "news", "hello"], None);
    assert!(out.status.success(), "{out:?}");
    let out =
        crate::services::support::concordctl(&url, &["--command-timeout=2s", "pub", "news", "hello"], None);
    assert!(!out.status.success(), "{out:?}");

    // /health and /metrics over TLS.
    let curl = |path: &str| {
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert", &pki.path("ca.pem")])
            .arg(format!("https://{}{path}", server.endpoint))
            .output()
            .unwrap()
    };
    let health = curl("/health");
    assert!(
        String::from_utf8_lossy(&health.stdout).contains("\"health\":\"true\""),
        "{health:?}"
    );
    let metrics = curl("/metrics");
    assert!(
        metrics.status.success() && !metrics.stdout.is_empty(),
        "{metrics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_name_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let server = start(dir.path(), &pki, &["--client-cert-auth"]);
    let ca = format!("--cacert={}", pki.path("ca.pem"));
    let as_cert = |name: &str| {
        vec![
            ca.clone(),
            format!("--cert={}", pki.path(&format!("{name}.pem"))),
            format!("--key={}", pki.path(&format!("{name}-key.pem"))),
        ]
    };
    let root = as_cert("root");
    until_serving(&server, &root);
    // No certificate, or one from a CA nobody trusts: refused.
    let (ok, out) = etcdctl(
        &server,
        &[ca.clone(), "--command-timeout=3s".to_string()],
        &["get", "ready"],
    );
    assert!(!ok, "{out}");
    let (ok, out) = etcdctl(
        &server,
        &as_cert("stranger"),
        &["--command-timeout=3s", "get", "ready"],
    );
    assert!(!ok, "{out}");

    // With auth on, a request without a token acts as its certificate's common name.
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "foo"],
        &["user", "add", "alice:alicepw"],
        &["user", "grant-role", "alice", "reader"],
        &["put", "foo", "bar"],
        &["auth", "enable"],
    ] {
        let (ok, out) = etcdctl(&server, &root, args);
        assert!(ok, "{args:?}: {out}");
    }
    let alice = as_cert("alice");
    let (ok, out) = etcdctl(&server, &alice, &["get", "foo"]);
    assert!(ok && out.contains("bar"), "{out}");
    let (ok, out) = etcdctl(&server, &alice, &["put", "foo", "x"]);
    assert!(!ok && out.contains("etcdserver: permission denied"), "{out}");
    let (ok, out) = etcdctl(&server, &root, &["put", "foo", "y"]);
    assert!(ok, "root's certificate is root: {out}");
    // A token still wins over the certificate.
    let (ok, out) = etcdctl(&server, &alice, &["put", "foo", "z", "--user=root:rootpw"]);
    assert!(ok, "{out}");
}

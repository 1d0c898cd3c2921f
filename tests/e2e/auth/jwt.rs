//! JWT tokens: issued by one member, good on every member; refused when tampered with, when
//! expired, or once the auth store has changed since they were issued.

use std::time::Duration;

use concord_proto::etcdserverpb::RangeRequest;
use concord_proto::etcdserverpb::kv_client::KvClient;

use super::rbac;
use crate::cluster::harness::Cluster;

/// A range of `foo` through `url` with `token`: the error message, if any.
async fn get_with_token(url: &str, token: &str) -> Result<(), String> {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(RangeRequest {
        key: b"foo".to_vec(),
        ..Default::default()
    });
    request.metadata_mut().insert("token", token.parse().unwrap());
    KvClient::new(channel)
        .range(request)
        .await
        .map(|_| ())
        .map_err(|status| status.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_from_one_member_is_good_on_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let (private, public) = (dir.path().join("jwt.key"), dir.path().join("jwt.pub"));
    std::fs::write(&private, key.serialize_pem()).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let flag = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=2s",
        public.display(),
        private.display()
    );
    let mut cluster = Cluster::start_with(dir.path(), 3, &["--auth-token", &flag]);
    cluster.wait_for_leader(Duration::from_secs(10));
    rbac(cluster.member(0));
    cluster.set_ctl_args(&["--user=root:rootpw"]);

    // Authenticate on member 0; use the token on members 1 and 2.
    let channel = tonic::transport::Channel::from_shared(cluster.client_url(0).to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let issued = concord_proto::etcdserverpb::auth_client::AuthClient::new(channel)
        .authenticate(concord_proto::etcdserverpb::AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(issued.split('.').count(), 3, "a JWT: {issued}");
    for i in 0..3 {
        get_with_token(cluster.client_url(i), &issued).await.unwrap();
    }

    // Tampered with (the user changed to root), it is refused.
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = issued.split('.').collect();
    let claims = String::from_utf8(engine.decode(parts[1]).unwrap()).unwrap();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        engine.encode(claims.replace("alice", "root")),
        parts[2]
    );
    let invalid = "etcdserver: invalid auth token";
    assert_eq!(
        get_with_token(cluster.client_url(1), &forged).await.unwrap_err(),
        invalid
    );

    // After an auth change anywhere, tokens issued before it are refused everywhere.
    cluster.ctl_on(2, &["role", "add", "another"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for i in 0..3 {
        while get_with_token(cluster.client_url(i), &issued).await != Err(invalid.to_string()) {
            assert!(
                std::time::Instant::now() < deadline,
                "member {i} still takes the old token"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // And a token expires with its TTL (2 s here), used or not. A JWT's expiry is in whole
    // seconds and it is good through that second: up to a second more than the TTL.
    let options = etcd_client::ConnectOptions::new().with_user("alice", "alicepw");
    let mut fresh = etcd_client::Client::connect([cluster.client_url(1)], Some(options))
        .await
        .unwrap();
    fresh.get("foo", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let expired = fresh.get("foo", None).await.unwrap_err().to_string();
    assert!(expired.contains(invalid), "{expired}");
}

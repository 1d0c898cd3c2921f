//! Generates prost messages and tonic clients/servers from `proto/`.

use std::path::PathBuf;

const PROTO_DIR: &str = "proto";

const PROTOS: &[&str] = &[
    "proto/mvccpb/kv.proto",
    "proto/authpb/auth.proto",
    "proto/etcdserverpb/rpc.proto",
    "proto/v3lockpb/v3lock.proto",
    "proto/v3electionpb/v3election.proto",
    "proto/concord/raftpb.proto",
    "proto/concord/registry/v1/registry.proto",
    "proto/concord/pubsub/v1/pubsub.proto",
    "proto/concord/config/v1/config.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");

    // Prefer an explicitly configured protoc; otherwise use the vendored binary
    // so the build does not depend on a system installation.
    let protoc: PathBuf = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::GuardedCodec")
        .compile_with_config(config, PROTOS, &[PROTO_DIR])?;
    Ok(())
}

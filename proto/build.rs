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

/// The packages that get serde (JSON) implementations.
const JSON_PACKAGES: &[&str] = &[
    ".mvccpb",
    ".authpb",
    ".etcdserverpb",
    ".v3lockpb",
    ".v3electionpb",
    ".concord",
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
    let descriptors = PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    config.file_descriptor_set_path(&descriptors);
    // Keys and values as shared buffers: an event fanned out to many watchers is cloned per
    // watcher, and cloning a `Bytes` copies no data.
    config.bytes([".mvccpb.KeyValue"]);

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::GuardedCodec")
        .compile_with_config(config, PROTOS, &[PROTO_DIR])?;

    // The JSON mapping of the client API (the HTTP gateway's): proto field names, 64-bit
    // integers as strings, bytes as base64, enums by name, defaults omitted, unknown fields
    // refused. Raft's own commands never travel as JSON.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .build(JSON_PACKAGES)?;
    Ok(())
}

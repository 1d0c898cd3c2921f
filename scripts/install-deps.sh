#!/usr/bin/env bash
# Installs, on Debian, what building and testing Concord needs beyond Rust: make for the build of
# jemalloc (the server's allocator), etcdctl for the end-to-end tests, curl for the HTTP
# gateway's, protoc for the etcd-client crate's build script, and libfaketime for the
# robustness suite's wall-clock jumps; with --with-etcd also the etcd server, for the
# side-by-side scenarios and tests.
# Does nothing when all are present.
set -euo pipefail
need=()
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v make >/dev/null 2>&1 || need+=(make)   # jemalloc's build (tikv-jemalloc-sys)
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(libfaketime)
if [ "${1:-}" = --with-etcd ]; then
    command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing ${need[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null

#!/usr/bin/env bash
# Runs Concord's whole test suite (installing etcdctl and protoc first if they are missing).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo test --workspace --all-targets "$@"

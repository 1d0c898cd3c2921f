#!/usr/bin/env bash
# Runs Concord's whole test suite (installing etcdctl and protoc first if they are missing),
# then the side-by-side scenarios against real etcd when the team's compat tool is beside the
# checkout (CONCORD_SKIP_COMPAT=1 skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo test --workspace --all-targets "$@"
if [ -z "${CONCORD_SKIP_COMPAT:-}" ]; then
    ./scripts/compat.sh
fi

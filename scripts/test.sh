#!/usr/bin/env bash
# Runs Concord's whole test suite, doc tests and a check of the docs' links (installing
# etcdctl, curl, protoc and etcd 3.4 first if they are missing: the gateway's side-by-side test
# runs real etcd),
# then the side-by-side scenarios against real etcd when the team's compat tool is beside the
# checkout (CONCORD_SKIP_COMPAT=1 skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --with-etcd
# The examples as programs (`cargo test` builds them only as test harnesses): the e2e tests
# run each of them against a real server.
cargo build --examples
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
# The docs lean on intra-doc links: a broken one fails the run.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
if [ -z "${CONCORD_SKIP_COMPAT:-}" ]; then
    ./scripts/compat.sh
fi

#!/usr/bin/env bash
# Runs etcdctl scenarios against real etcd 3.4 and Concord side by side with the team's
# difftest (../shared/compat, beside the checkout in development and CI) and fails on any
# difference. Skipped, with a message, where that tool or python3 is not available.
#
#   scripts/compat.sh                      # every scenario Concord supports today
#   scripts/compat.sh tests/compat/x.txt   # just these
set -euo pipefail
cd "$(dirname "$0")/.."
COMPAT=${COMPAT_DIR:-../shared/compat}
if [ ! -f "$COMPAT/difftest.py" ] || ! command -v python3 >/dev/null 2>&1; then
    echo "compat: $COMPAT/difftest.py or python3 not found; side-by-side scenarios skipped"
    exit 0
fi
./scripts/install-deps.sh --with-etcd
cargo build -q -p concord
export CONCORD_BIN=target/debug/concord

if [ $# -gt 0 ]; then
    scenarios=("$@")
else
    # The shared scenarios whose features are built (lease, lock-elect and cluster come with
    # their issues), then our own.
    scenarios=("$COMPAT"/scenarios/{kv,txn,restart,watch,lease}.txt tests/compat/*.txt)
fi
failed=0
for scenario in "${scenarios[@]}"; do
    echo "compat: $scenario"
    python3 "$COMPAT/difftest.py" "$scenario" || failed=1
done
exit $failed

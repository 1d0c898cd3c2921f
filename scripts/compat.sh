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

# The difftest listens on fixed ports (etcd's members from 32000, Concord's from 33000, 10
# apart) inside the kernel's range for outgoing connections' local ports: a connection that
# happens to take one of them (etcd's own members dial each other) keeps a member from
# starting. Keep the kernel from handing them out, where we may (root; a no-op elsewhere).
reserve_compat_ports() {
    local file=/proc/sys/net/ipv4/ip_local_reserved_ports wanted=32000-32099,33000-33099
    [ -w "$file" ] || return 0
    local current
    current=$(cat "$file")
    case ",$current," in *",32000-32099,"*) return 0 ;; esac
    echo "${current:+$current,}$wanted" >"$file" 2>/dev/null || true
}
reserve_compat_ports
cargo build -q -p concord
export CONCORD_BIN=target/debug/concord

# etcd 3.4 lists a lease's attached keys in Go map order, which changes from run to run
# (`Lease.Keys` ranges over a map), while Concord lists them sorted. So the shared lease
# scenario runs with that one step compared by exit code only (`@loose`); tests/e2e/lease.rs
# checks the listed keys themselves.
lease_scenario() {
    mkdir -p target/compat
    sed 's/^lease timetolive --keys /@loose lease timetolive --keys /' \
        "$COMPAT/scenarios/lease.txt" >target/compat/lease.txt
    echo target/compat/lease.txt
}

if [ $# -gt 0 ]; then
    scenarios=("$@")
else
    # Every shared scenario, then our own.
    scenarios=("$COMPAT"/scenarios/{kv,txn,restart,watch}.txt "$(lease_scenario)" \
        "$COMPAT"/scenarios/{lock-elect,cluster,auth}.txt tests/compat/*.txt)
fi
failed=0
for scenario in "${scenarios[@]}"; do
    # A multi-member scenario says so on its first line ("Run with --size 3").
    size=$(head -n 1 "$scenario" | sed -n 's/.*--size \([0-9]\+\).*/\1/p')
    echo "compat: $scenario${size:+ (--size $size)}"
    python3 "$COMPAT/difftest.py" "$scenario" --size "${size:-1}" || failed=1
done
exit $failed

#!/usr/bin/env bash
# Benchmarks of Concord's own services on one member (release build), which etcd has no
# equivalent of (its closest, N watchers of one prefix, is `WORKLOAD=watch scripts/bench.sh`):
#
#   scripts/bench-services.sh
#     registry: INSTANCES (10,000) registered, WATCHERS (1,000) subscribers, REGISTRATIONS (200)
#               timed registrations: register -> every subscriber has it, p50/p99
#     config:   CONFIG_WATCHERS (100) watchers of one key, VERSIONS (200) timed puts:
#               put -> every watcher has the version, p50/p99
#     leave:    an instance registered by `concordctl` with TTL (10 s) is killed with SIGKILL:
#               seconds until a watcher sees it removed, ROUNDS (3) times
#
# Each result line also gives the server's CPU time per operation and per delivered event.
set -euo pipefail
cd "$(dirname "$0")/.."
INSTANCES=${INSTANCES:-10000}
WATCHERS=${WATCHERS:-1000}
REGISTRATIONS=${REGISTRATIONS:-200}
CONFIG_WATCHERS=${CONFIG_WATCHERS:-100}
VERSIONS=${VERSIONS:-200}
TTL=${TTL:-10}
ROUNDS=${ROUNDS:-3}

cargo build --release -q -p concord -p concord-bench
BENCH=target/release/concord-bench
CTL=target/release/concordctl
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

start() { # -> sets ENDPOINT, SERVER
    rm -rf "$WORK/data"
    target/release/concord --data-dir "$WORK/data" --listen-client-urls http://127.0.0.1:34379 \
        --advertise-client-urls http://127.0.0.1:34379 --listen-peer-urls http://127.0.0.1:34380 \
        --initial-advertise-peer-urls http://127.0.0.1:34380 --initial-cluster default=http://127.0.0.1:34380 \
        >"$WORK/concord.log" 2>&1 &
    SERVER=$!
    PIDS+=("$SERVER")
    for _ in $(seq 1 200); do
        if (exec 3<>/dev/tcp/127.0.0.1/34379) 2>/dev/null; then break; fi
        sleep 0.05
    done
    sleep 1
    ENDPOINT=http://127.0.0.1:34379
}
stop() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; }

start
$BENCH --endpoint "$ENDPOINT" --workload registry --instances "$INSTANCES" --watchers "$WATCHERS" \
    --total "$REGISTRATIONS" --pids "$SERVER" --label "concord"
stop

start
$BENCH --endpoint "$ENDPOINT" --workload config --watchers "$CONFIG_WATCHERS" --total "$VERSIONS" \
    --pids "$SERVER" --label "concord"
stop

start
for round in $(seq 1 "$ROUNDS"); do
    $CTL --endpoints 127.0.0.1:34379 registry register crash "c$round" 10.0.0.1:80 --ttl "$TTL" >/dev/null &
    registrant=$!
    until $CTL --endpoints 127.0.0.1:34379 registry list crash | grep -q "c$round "; do sleep 0.05; done
    # A watcher that prints the time each line arrives.
    $CTL --endpoints 127.0.0.1:34379 registry watch crash \
        | while read -r line; do echo "$(date +%s.%N) $line"; done >"$WORK/watch-$round" &
    watcher=$!
    sleep 0.5
    killed=$(date +%s.%N)
    kill -9 "$registrant"
    until grep -q "REMOVED c$round" "$WORK/watch-$round" 2>/dev/null; do sleep 0.05; done
    removed=$(grep "REMOVED c$round" "$WORK/watch-$round" | cut -d' ' -f1)
    awk -v a="$killed" -v b="$removed" -v ttl="$TTL" -v r="$round" \
        'BEGIN { printf "concord round=%s workload=leave ttl_s=%s gone_after_s=%.2f\n", r, ttl, b - a }'
    kill "$watcher" 2>/dev/null || true
    pkill -f "registry watch crash" || true
done
stop

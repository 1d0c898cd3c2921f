#!/usr/bin/env bash
# Operations side by side with etcd: defragmentation under write load, and backup + restore of
# a large database. Each server runs alone, on a fresh data directory on the same disk.
#
#   scripts/bench-ops.sh                      # both: 300 MiB defrag, 1 GiB backup/restore
#   OPS=defrag FILL_MB=300 CLIENTS=16 ROUNDS=3 scripts/bench-ops.sh
#   OPS=backup BACKUP_MB=1024 scripts/bench-ops.sh
#
# defrag: FILL_MB of 64 KiB values over 16 keys, compacted away; CLIENTS writers of 256-byte
#   values; one Defragment a second in. Prints the defragmentation's time, the database size
#   before and after, the put rate before and during, and the worst and p99 put latency of the
#   puts in flight during it.
# backup: BACKUP_MB of live 100 KiB values; the time to stream Maintenance.Snapshot to a file
#   (what `etcdctl snapshot save` does), then the time of the offline restore (`concord snapshot
#   restore`, `etcdctl snapshot restore`) and of the restored member's start until it serves.
#
# Needs etcd (Debian: apt-get install etcd-server).
set -euo pipefail
cd "$(dirname "$0")/.."
OPS=${OPS:-"defrag backup"}
FILL_MB=${FILL_MB:-300}
BACKUP_MB=${BACKUP_MB:-1024}
CLIENTS=${CLIENTS:-16}
ROUNDS=${ROUNDS:-1}
command -v etcd >/dev/null || { echo "etcd not found: apt-get install -y etcd-server" >&2; exit 1; }
cargo build --release -q -p concord -p concord-bench
BENCH=target/release/concord-bench
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

wait_port() { # host:port
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on $1" >&2; return 1
}

# start NAME DATA_DIR: one member on 127.0.0.1:34379 (peer 34380); sets PID.
start() {
    local flags=(--name m0 --data-dir "$2"
        --listen-client-urls http://127.0.0.1:34379 --advertise-client-urls http://127.0.0.1:34379
        --listen-peer-urls http://127.0.0.1:34380 --initial-advertise-peer-urls http://127.0.0.1:34380
        --initial-cluster m0=http://127.0.0.1:34380 --quota-backend-bytes 8589934592)
    if [ "$1" = etcd ]; then etcd "${flags[@]}" >"$WORK/$1.log" 2>&1 &
    else target/release/concord "${flags[@]}" >"$WORK/$1.log" 2>&1 & fi
    PID=$!
    wait_port 127.0.0.1:34379
    for _ in $(seq 1 200); do   # until it has a leader
        curl -sf http://127.0.0.1:34379/health >/dev/null && return 0
        sleep 0.05
    done
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }
seconds() { date +%s.%N; }

for round in $(seq 1 "$ROUNDS"); do
    for server in etcd concord; do
        if [[ " $OPS " == *" defrag "* ]]; then
            rm -rf "$WORK/data"
            start $server "$WORK/data"
            $BENCH --endpoint http://127.0.0.1:34379 --workload defrag --clients "$CLIENTS" \
                --fill-mb "$FILL_MB" --label "round=$round $server"
            stop
        fi
        if [[ " $OPS " == *" backup "* ]]; then
            rm -rf "$WORK/data" "$WORK/restored" "$WORK/backup.db"
            start $server "$WORK/data"
            $BENCH --endpoint http://127.0.0.1:34379 --workload backup --fill-mb "$BACKUP_MB" \
                --out "$WORK/backup.db" --label "round=$round $server"
            stop
            rm -rf "$WORK/data"
            t0=$(seconds)
            if [ $server = etcd ]; then
                ETCDCTL_API=3 etcdctl snapshot restore "$WORK/backup.db" --name m0 --data-dir "$WORK/restored" \
                    --initial-cluster m0=http://127.0.0.1:34380 \
                    --initial-advertise-peer-urls http://127.0.0.1:34380 >/dev/null 2>&1
            else
                target/release/concord snapshot restore "$WORK/backup.db" --name m0 --data-dir "$WORK/restored" \
                    --initial-cluster m0=http://127.0.0.1:34380 \
                    --initial-advertise-peer-urls http://127.0.0.1:34380 >/dev/null
            fi
            t1=$(seconds)
            start $server "$WORK/restored"
            t2=$(seconds)
            keys=$(ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:34379 get /bench-backup/ --prefix --limit 1 -w json \
                | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
            stop
            printf 'round=%s %-8s restore %6.2f s, restored member serving after %6.2f s, %s keys\n' \
                "$round" "$server" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "${keys:-?}"
        fi
    done
done

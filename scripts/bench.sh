#!/usr/bin/env bash
# Side-by-side benchmark: the same client (concord-bench) drives real etcd and Concord, one after
# the other in one run, each on a fresh data directory on the same disk.
#
#   scripts/bench.sh                 # durable puts at 1 and 64 clients (8-byte keys, 256-byte values)
#   WORKLOAD=get scripts/bench.sh    # linearizable gets (WORKLOAD=serial-get: serializable)
#   CLIENTS="1 16 64" TOTAL=50000 ROUNDS=5 scripts/bench.sh
#   MEMBERS=3 WORKLOAD=get scripts/bench.sh   # 3-member clusters, clients spread over members
#   MEMBERS=3 AT=leader scripts/bench.sh       # every client at the leader (AT=follower: at one
#                                    # follower), as etcdctl endpoint status names them
#   WORKLOAD=http-put CLIENTS=64 scripts/bench.sh
#                                    # durable puts through the HTTP/JSON gateway (POST
#                                    # /v3/kv/put), each client on its own HTTP/1.1 connection
#   WORKLOAD=lease scripts/bench.sh  # lease cycles: grant, put with the lease, one keepalive, revoke
#   WORKLOAD=txn CLIENTS=64 scripts/bench.sh   # compare-and-swap txns, a key per client
#   WORKLOAD=lock CLIENTS=16 scripts/bench.sh  # 16 contenders on one lock (Lock service):
#                                    # cycles/s of lock, one CAS guarded by the lock key, unlock
#   WORKLOAD=election CLIENTS=16 scripts/bench.sh  # 16 contenders on one election:
#                                    # rounds/s of campaign, one proclaim, resign
#   MEMBERS=3 WORKLOAD=failover CLIENTS=8 scripts/bench.sh
#                                    # kill -9 the leader under 8 writers: ms from the kill to the
#                                    # first acknowledged put sent after it (lower is better)
#   WORKLOAD=watch scripts/bench.sh  # 1,000 watchers on one prefix, one writer doing 2,000 puts
#                                    # (WATCHERS=..., TOTAL=...): events/s and delivery latency
#   AUTH=1 scripts/bench.sh          # auth on, both servers: a user with readwrite on the keys
#                                    # (not root), simple tokens; the clients authenticate once
#   TLS=1 scripts/bench.sh           # clients over TLS (a CA and certificate made with openssl)
#   AUTH=1 STORM=16 scripts/bench.sh # and 16 more tasks guessing passwords all along
#   CONCORD=/tmp/concord-before scripts/bench.sh  # another build of the server (A/B runs)
#
# Each run also prints the servers' CPU time per operation (user + system, from /proc) and their
# peak resident memory (VmHWM, summed over the members).
#
# Needs etcd (Debian: apt-get install etcd-server). Prints one line per run and the ratio of the
# medians, Concord/etcd, per client count.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKLOAD=${WORKLOAD:-put}
CLIENTS=${CLIENTS:-"1 64"}
TOTAL=${TOTAL:-40000}
WATCHERS=${WATCHERS:-1000}
MEMBERS=${MEMBERS:-1}       # 3: a 3-member cluster of each; clients spread over the members
if [ "$WORKLOAD" = watch ]; then CLIENTS=1; TOTAL_1=${TOTAL_WATCH:-2000}; fi
TOTAL_1=${TOTAL_1:-5000}   # a lone client is slow: fewer ops keep the run short

command -v etcd >/dev/null || { echo "etcd not found: apt-get install -y etcd-server" >&2; exit 1; }
AUTH=${AUTH:-0}
TLS=${TLS:-0}
SCHEME=http
# BUILD=0 skips the build (a script running several benchmarks of one build, say).
if [ "${BUILD:-1}" = 1 ]; then cargo build --release -q -p concord -p concord-bench; fi
BENCH=target/release/concord-bench
CONCORD=${CONCORD:-target/release/concord}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

TLS_SERVER=()
TLS_CLIENT=()
CTL_TLS=()
if [ "$TLS" = 1 ]; then
    SCHEME=https
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
        -keyout "$WORK/ca-key.pem" -out "$WORK/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=server \
        -keyout "$WORK/server-key.pem" -out "$WORK/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$WORK/san.ext"
    openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca-key.pem" \
        -CAcreateserial -days 2 -extfile "$WORK/san.ext" -out "$WORK/server.pem" 2>/dev/null
    TLS_SERVER=(--cert-file "$WORK/server.pem" --key-file "$WORK/server-key.pem")
    TLS_CLIENT=(--cacert "$WORK/ca.pem")
    CTL_TLS=(--cacert "$WORK/ca.pem")
fi
BENCH_USER=()
if [ "$AUTH" = 1 ]; then BENCH_USER=(--user bench:benchpw --storm "${STORM:-0}"); fi

# Auth on $ENDPOINT: root, and a user `bench` that may read and write every key from "0" on.
enable_auth() {
    local ctl=(etcdctl --endpoints "${ENDPOINT%%,*}" "${CTL_TLS[@]}")
    "${ctl[@]}" user add root:rootpw >/dev/null
    "${ctl[@]}" user grant-role root root >/dev/null
    "${ctl[@]}" role add bench >/dev/null
    "${ctl[@]}" role grant-permission bench readwrite --from-key 0 >/dev/null
    "${ctl[@]}" user add bench:benchpw >/dev/null
    "${ctl[@]}" user grant-role bench bench >/dev/null
    "${ctl[@]}" auth enable >/dev/null
}

# User + system CPU time of the given processes, in clock ticks.
cpu_ticks() {
    local total=0
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] || continue
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
    done
    echo "$total"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# Peak resident memory (VmHWM) of the given processes, summed, in MB: the high-water mark since
# each started, so a round's later client counts include its earlier ones.
peak_rss_mb() {
    local total=0
    for p in "$@"; do
        [ -r "/proc/$p/status" ] || continue
        total=$((total + $(awk '/^VmHWM:/ { print $2 }' "/proc/$p/status")))
    done
    echo $((total / 1024))
}

wait_port() { # host:port
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on $1" >&2; return 1
}

start() { # name client-port peer-port -> sets ENDPOINT (MEMBERS members, ports +10 apart)
    local name=$1 port=$2 peer=$3 cluster="" endpoints=""
    for m in $(seq 0 $((MEMBERS - 1))); do
        cluster+="${cluster:+,}m$m=http://127.0.0.1:$((peer + 10 * m))"
    done
    ROUND_PIDS=()
    for m in $(seq 0 $((MEMBERS - 1))); do
        local cp=$((port + 10 * m)) pp=$((peer + 10 * m))
        local common=(--name "m$m" --data-dir "$WORK/$name/m$m"
            --listen-client-urls "$SCHEME://127.0.0.1:$cp" --advertise-client-urls "$SCHEME://127.0.0.1:$cp"
            --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp"
            --initial-cluster "$cluster" "${TLS_SERVER[@]}")
        if [ "$name" = etcd ]; then
            etcd "${common[@]}" >"$WORK/$name-m$m.log" 2>&1 &
        else
            "$CONCORD" "${common[@]}" >"$WORK/$name-m$m.log" 2>&1 &
        fi
        PIDS+=($!)
        ROUND_PIDS+=($!)
        endpoints+="${endpoints:+,}$SCHEME://127.0.0.1:$cp"
    done
    for m in $(seq 0 $((MEMBERS - 1))); do wait_port "127.0.0.1:$((port + 10 * m))"; done
    sleep $((MEMBERS == 1 ? 1 : 3))   # let them elect a leader
    ENDPOINT=$endpoints
    if [ -n "${AT:-}" ]; then ENDPOINT=$(pick_endpoint "$AT" "$endpoints"); fi
}

pick_endpoint() { # leader|follower endpoints -> the first endpoint in that role
    etcdctl --endpoints "$2" "${CTL_TLS[@]}" endpoint status -w json | python3 -c '
import json, sys
want_leader = sys.argv[1] == "leader"
for e in json.load(sys.stdin):
    s = e["Status"]
    if (s["header"]["member_id"] == s["leader"]) == want_leader:
        print(e["Endpoint"])
        break
else:
    sys.exit("no member is the " + sys.argv[1])
' "$1"
}

# Rounds alternate etcd and Concord so that the machine's drift (this disk's fsync rate varies
# a lot over minutes) hits both alike; the ratio is taken of the medians.
ROUNDS=${ROUNDS:-3}
declare -A RATES
for round in $(seq 1 "$ROUNDS"); do
    for server in etcd concord; do
        if [ $server = etcd ]; then start etcd 32379 32380; else start concord 33379 33380; fi
        if [ "$AUTH" = 1 ]; then enable_auth; fi
        for c in $CLIENTS; do
            total=$TOTAL; [ "$c" = 1 ] && total=$TOTAL_1
            before=$(cpu_ticks "${ROUND_PIDS[@]}")
            line=$($BENCH --endpoint "$ENDPOINT" --workload "$WORKLOAD" --clients "$c" --total "$total" \
                --watchers "$WATCHERS" --pids "$(IFS=,; echo "${ROUND_PIDS[*]}")" \
                "${BENCH_USER[@]}" "${TLS_CLIENT[@]}" --label "round=$round $server")
            after=$(cpu_ticks "${ROUND_PIDS[@]}")
            line+=" server_cpu_us_per_op=$(( (after - before) * TICK_US / total ))"
            line+=" peak_rss_mb=$(peak_rss_mb "${ROUND_PIDS[@]}")"
            echo "$line"
            RATES[$server-$c]+="$(sed -n 's/.*\(_per_sec\|failover_ms\)=\([0-9]*\).*/\2/p' <<<"$line") "
        done
        # (failover already killed one; bash would report it as "Killed")
        { kill "${ROUND_PIDS[@]}"; wait "${ROUND_PIDS[@]}"; } 2>/dev/null || true
        rm -rf "${WORK:?}/$server"
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for c in $CLIENTS; do
    a=$(median <<<"${RATES[concord-$c]}"); b=$(median <<<"${RATES[etcd-$c]}")
    awk -v c="$c" -v a="$a" -v b="$b" -v w="$WORKLOAD" \
        -v unit="$([ "$WORKLOAD" = failover ] && echo ms || echo /s)" \
        'BEGIN { printf "%s clients=%s median concord/etcd=%.2f (concord %d%s, etcd %d%s)\n", w, c, a / b, a, unit, b, unit }'
done

#!/usr/bin/env bash
# Issue 18's benchmark matrix against etcd 3.4, one workload after another (about 15 minutes):
# durable puts at 1 and 256 clients, lock cycles and election rounds with 16 contenders, watch
# fan-out to 1,000 watchers, compare-and-swap txns, puts on 3-member clusters and linearizable
# gets. Each line of scripts/bench.sh carries the server CPU per operation and the peak RSS.
#
#   scripts/bench-matrix.sh                              # the current build
#   CONCORD=/tmp/concord-before scripts/bench-matrix.sh  # another build of the server
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p concord -p concord-bench
run() { echo "== $*"; env BUILD=0 "$@" scripts/bench.sh | grep -v '^$'; }
run WORKLOAD=put CLIENTS="1 256" TOTAL=40000 TOTAL_1=3000 ROUNDS=3
run WORKLOAD=lock CLIENTS=16 TOTAL=1600 ROUNDS=3
run WORKLOAD=election CLIENTS=16 TOTAL=1600 ROUNDS=3
run WORKLOAD=watch ROUNDS=3
run WORKLOAD=txn CLIENTS=64 TOTAL=20000 ROUNDS=3
run WORKLOAD=put MEMBERS=3 CLIENTS="1 256" TOTAL=40000 TOTAL_1=3000 ROUNDS=3
run WORKLOAD=get CLIENTS=64 TOTAL=40000 ROUNDS=3

#!/usr/bin/env bash
# A long robustness run: the suite of tests/e2e/robustness with FAULTS faults per cluster
# (default 120) on 3 and on 5 members, one cluster at a time, every kind of fault in turn.
#
#   scripts/robustness.sh                       # 120 faults on each cluster size
#   FAULTS=300 scripts/robustness.sh            # a longer soak
#   SEED=0x18ee2498052d54c3 scripts/robustness.sh five   # replay one run's choices
#   KINDS=Loss,Minority scripts/robustness.sh   # only those kinds of fault
#
# Prints each run's seed, its figures (operations, faults by kind, how long writes stalled after
# each) and its verdicts; exits non-zero on any violation. The short version (each kind once)
# runs with the e2e suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONCORD_ROBUSTNESS_FAULTS=${FAULTS:-120}
if [ -n "${SEED:-}" ]; then export CONCORD_ROBUSTNESS_SEED=$SEED; fi
if [ -n "${KINDS:-}" ]; then export CONCORD_ROBUSTNESS_KINDS=$KINDS; fi
FILTER=robustness${1:+::$1}
cargo test --test e2e "$FILTER" -- --nocapture --test-threads=1

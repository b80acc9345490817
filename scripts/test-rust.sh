#!/usr/bin/env bash
# The Rust tests against a real PostgreSQL and a real NATS server (all features, so the NATS backend runs
# the shared suite too): the unit tests, the integration tests of crates/leaderlease/tests/ and the doc
# tests. `npm test` leaves out the slow ones listed below; `--all` (`npm run test:all`) runs every one. A
# new tests/*.rs file runs in both unless it is listed.
#   bash scripts/test-rust.sh [--all]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg-env.sh
. scripts/nats-env.sh

# Slow: each stops, restarts or promotes servers of its own and waits out leases around it. Test time on
# a 2-core machine shared with other builds (2026-12-07): failover 50 s (promoted standbys), nats_cluster
# 26 s (a three-server JetStream cluster, servers killed), outage 21 s (PostgreSQL stopped and started).
slow=(failover nats_cluster outage)

if [ "${1:-}" = --all ]; then
  cargo test --workspace --all-features
  exit
fi
targets=()
for f in crates/leaderlease/tests/*.rs; do
  t=$(basename "$f" .rs)
  [[ " ${slow[*]} " == *" $t "* ]] || targets+=(--test "$t")
done
echo "test-rust: leaving out the slow tests ${slow[*]} (npm run test:all runs them)" >&2
cargo test --workspace --all-features --lib --bins "${targets[@]}"
cargo test --workspace --all-features --doc

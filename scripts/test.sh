#!/usr/bin/env bash
# Runs every Rust test: formatting and lints, then the unit and integration tests against a real
# PostgreSQL and a real NATS server (all features, so the NATS backend runs the shared suite too).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg-env.sh
. scripts/nats-env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features

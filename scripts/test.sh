#!/usr/bin/env bash
# Runs every test: formatting and lints, then the Rust tests against a real PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg-env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace

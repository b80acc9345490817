#!/usr/bin/env bash
# `npm test`: what a contributor runs after a change, once `npm install` (or `npm ci`) has run: formatting
# and lints (cargo fmt, clippy), the Rust tests, the addon and the TypeScript built (tsc type-checks the
# package and the tests) and the Node tests, against a real PostgreSQL and a real NATS server. The slow
# tests (listed in scripts/test-rust.sh and scripts/test-node.sh), the crate's packaging check, the arm64
# cross build under qemu and the chaos checker run in `npm run test:all` (scripts/test-all.sh), which CI
# runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg-env.sh
. scripts/nats-env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
bash scripts/test-rust.sh
bash scripts/test-node.sh

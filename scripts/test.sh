#!/usr/bin/env bash
# Runs every test: formatting and lints, the Rust unit and integration tests against a real
# PostgreSQL and a real NATS server (all features, so the NATS backend runs the shared suite too), the
# Node tests, then the chaos checker's short profile.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg-env.sh
. scripts/nats-env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
# The crate as crates.io would get it: packaged (the SQL and licence files in it) and built from the package
# alone. Needs crates.io; about 80 s the first time (it builds in target/package), 5 s after.
cargo publish --dry-run -p leaderlease --allow-dirty
cargo test --workspace --all-features
# The Node package: the addon, the TypeScript API and its tests (npm install, build, node --test).
bash scripts/test-node.sh
# The cross leg (README, "Platforms"): the linux-arm64-gnu addon, built on this x86_64 machine with the quick
# `cross-test` profile, loaded by an arm64 Node under qemu-user for the core Node tests (election, release
# handover, pause safety). `npm run test:cross -- all` also builds and tests linux-x64-gnu (glibc 2.17) and
# both musl targets.
bash scripts/test-cross.sh linux-arm64-gnu
# The chaos checker's short profile (docs/chaos.md): Node, Rust and Nest candidates on a throwaway
# PostgreSQL and a throwaway NATS server of its own, random faults of every kind, then a check of every
# leadership they saw.
bash scripts/chaos.sh

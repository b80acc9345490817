#!/usr/bin/env bash
# `npm run test:all`: every test, what CI (.ci/run) runs; about 25 minutes on 2 cores. `npm test` (scripts/
# test.sh) and then what it leaves out: the crate packaged as crates.io gets it, the slow Rust and Node
# tests (the peer matrix, the demo, servers stopped and promoted), the arm64 cross build under qemu, and
# the chaos checker's short profile.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg-env.sh
. scripts/nats-env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
# The crate as crates.io would get it: packaged (the SQL and licence files in it) and built from the package
# alone. Needs crates.io; about 80 s the first time (it builds in target/package), 5 s after.
cargo publish --dry-run -p leaderlease --allow-dirty
bash scripts/test-rust.sh --all
# The Node package: the addon, the TypeScript API and every Node test.
bash scripts/test-node.sh --all
# The cross leg (docs/platforms.md): the linux-arm64-gnu addon, built on this x86_64 machine with the quick
# `cross-test` profile, loaded by an arm64 Node under qemu-user for the core Node tests (election, release
# handover, pause safety). `npm run test:cross -- all` also builds and tests linux-x64-gnu (glibc 2.17) and
# both musl targets.
bash scripts/test-cross.sh linux-arm64-gnu
# The chaos checker's short profile (docs/chaos.md): Node, Rust and Nest candidates on a throwaway
# PostgreSQL and a throwaway NATS server of its own, random faults of every kind, then a check of every
# leadership they saw.
bash scripts/chaos.sh

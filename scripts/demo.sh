#!/usr/bin/env bash
# The live demo: three candidate processes, a leader killed and replaced, a graceful handover.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg-env.sh
cargo run --quiet --release --example cluster -- "$@"

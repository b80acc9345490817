#!/usr/bin/env bash
# Builds the `leaderlease` command line (the Rust crate with the cargo feature `cli`) and puts it next
# to the addon as native/leaderlease-<platform>, the file that dist/cli.js (`npx leaderlease`) runs in
# a checkout (scripts/stage-platform.sh cli-<platform> puts it into its package, leaderlease-cli-<platform>).
# One implementation: the same binary `cargo install leaderlease --features cli` gives.
#   bash scripts/build-cli.sh [release|release-fast|dev]   (default release)
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) arch=x64 ;;
  Linux-aarch64) arch=arm64 ;;
  *) echo "leaderlease: no command-line build for $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
if ldd --version 2>&1 | grep -qi musl; then abi=musl; else abi=gnu; fi
cargo build --profile "$profile" -p leaderlease --features cli --bin leaderlease
dir="$profile"
[ "$profile" = dev ] && dir=debug
install -m 0755 "target/$dir/leaderlease" "native/leaderlease-linux-$arch-$abi"

#!/usr/bin/env bash
# Fills a platform package (npm/<platform>/, made by `napi create-npm-dirs`) with what it ships: the addon
# native/leaderlease.<platform>.node and, for Linux, the command line native/leaderlease-<platform> as
# `leaderlease` (dist/cli.js, `npx leaderlease`, runs it from there). In place by default (before
# `napi prepublish` / `npm publish`), or into a copy in DEST (the pack tests).
#   bash scripts/stage-platform.sh PLATFORM [DEST]        e.g. linux-x64-gnu
set -euo pipefail
cd "$(dirname "$0")/.."
platform="$1"
dest="${2:-npm/$platform}"
[ -f "npm/$platform/package.json" ] || { echo "stage-platform: no npm/$platform/package.json" >&2; exit 1; }
addon="native/leaderlease.$platform.node"
[ -f "$addon" ] || { echo "stage-platform: no $addon: build it first (npm run build, npm run build:cross)" >&2; exit 1; }
if [ "$dest" != "npm/$platform" ]; then
  mkdir -p "$dest"
  cp "npm/$platform/package.json" "npm/$platform/README.md" "$dest/"
fi
install -m 0755 "$addon" "$dest/"
case "$platform" in
  linux-*)
    cli="native/leaderlease-$platform"
    [ -f "$cli" ] || { echo "stage-platform: no $cli: build it first (scripts/build-cli.sh, npm run build:cross)" >&2; exit 1; }
    install -m 0755 "$cli" "$dest/leaderlease"
    ;;
esac

#!/usr/bin/env bash
# Fills a platform package with what it ships: npm/<platform>/ (made by `napi create-npm-dirs`,
# `leaderlease-<platform>`) with the addon native/leaderlease.<platform>.node; npm/cli-<platform>/ (Linux
# only, `leaderlease-cli-<platform>`) with the command line native/leaderlease-<platform> as `leaderlease`,
# which dist/cli.js (`npx leaderlease`) runs. Two packages, so that each stays small (docs/platforms.md).
# In place by default (before `napi prepublish` / `npm publish`), or into a copy in DEST (the pack tests).
#   bash scripts/stage-platform.sh PACKAGE [DEST]        e.g. linux-x64-gnu, cli-linux-x64-gnu
set -euo pipefail
cd "$(dirname "$0")/.."
package="$1"
dest="${2:-npm/$package}"
[ -f "npm/$package/package.json" ] || { echo "stage-platform: no npm/$package/package.json" >&2; exit 1; }
if [ "$dest" != "npm/$package" ]; then
  mkdir -p "$dest"
  cp "npm/$package/package.json" "npm/$package/README.md" "$dest/"
fi
case "$package" in
  cli-*)
    platform="${package#cli-}"
    cli="native/leaderlease-$platform"
    [ -f "$cli" ] || { echo "stage-platform: no $cli: build it first (scripts/build-cli.sh, npm run build:cross)" >&2; exit 1; }
    install -m 0755 "$cli" "$dest/leaderlease"
    ;;
  *)
    addon="native/leaderlease.$package.node"
    [ -f "$addon" ] || { echo "stage-platform: no $addon: build it first (npm run build, npm run build:cross)" >&2; exit 1; }
    install -m 0755 "$addon" "$dest/"
    ;;
esac

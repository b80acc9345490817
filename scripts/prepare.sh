#!/usr/bin/env bash
# npm's `prepare` step. npm runs it after `npm install` (no arguments) in a checkout and before
# `npm pack` / `npm publish`, never when the package is installed from the registry or from a tarball:
# those ship the compiled TypeScript (dist/) and the loader (native/index.js), and the prebuilt addon and
# command line come in the platform packages that fit (npm/<platform>/ and, on Linux, npm/cli-<platform>/,
# optional dependencies), so an install needs no Rust.
#   npm install / npm ci: compiles the TypeScript and builds the addon from source with the
#     `release-fast` profile, the one scripts/test-node.sh uses (so `npm install && npm test` builds once).
#     Without cargo it warns and goes on: everything but the addon still works (typecheck, docs).
#   npm pack / npm publish (of this root package): compiles the TypeScript, builds no addon (none ships
#     in this package: `npm run build` / `npm run build:cross` and scripts/stage-platform.sh make the
#     platform packages), then checks that the tarball will have what it needs.
#   LEADERLEASE_SKIP_BUILD=1: builds nothing, e.g. in scripts/test-node.sh, which builds right after its
#     `npm install`, and in the pack test, which packs what that script built. Pack still checks.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "leaderlease: $*" >&2; }

packing=false
case "${npm_command:-}" in
  pack | publish) packing=true ;;
esac

addon() { compgen -G 'native/leaderlease.*.node' >/dev/null; }

if [ "${LEADERLEASE_SKIP_BUILD:-}" = 1 ]; then
  say "LEADERLEASE_SKIP_BUILD=1: not building the TypeScript nor the addon"
else
  node_modules/.bin/tsc -p tsconfig.json
  if $packing; then
    : # the root package ships no addon
  elif ! command -v cargo >/dev/null 2>&1; then
    if addon; then
      say "cargo not found: the addon in native/ was not rebuilt and may be out of date"
    else
      say "WARNING: cargo not found, the native addon was not built; install Rust (https://rustup.rs)" \
        "and run \`npm run build\` before using the package from this checkout"
    fi
  else
    npm run build:fast
  fi
fi

if $packing; then
  for f in dist/index.js dist/index.d.ts native/index.js native/index.d.ts; do
    [ -f "$f" ] || { say "$f is missing: run \`npm run build:ts\` first"; exit 1; }
  done
fi

#!/usr/bin/env bash
# npm's `prepare` step. npm runs it after `npm install` (no arguments) in a checkout and before
# `npm pack` / `npm publish`, never when the package is installed from the registry or from a tarball:
# those ship the prebuilt addon (native/*.node) and the compiled TypeScript (dist/), and need no Rust.
#   npm install / npm ci: compiles the TypeScript and builds the addon from source with the
#     `release-fast` profile, the one scripts/test-node.sh uses (so `npm install && npm test` builds once).
#     Without cargo it warns and goes on: everything but the addon still works (typecheck, docs).
#   npm pack / npm publish: compiles the TypeScript and builds the addon that ships (`release`, fat LTO),
#     then checks that the tarball will have both.
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
  if ! command -v cargo >/dev/null 2>&1; then
    if $packing; then
      say "cargo not found: cannot build the addon to pack (install Rust: https://rustup.rs), or set" \
        "LEADERLEASE_SKIP_BUILD=1 to pack the addon already in native/"
      exit 1
    fi
    if addon; then
      say "cargo not found: the addon in native/ was not rebuilt and may be out of date"
    else
      say "WARNING: cargo not found, the native addon was not built; install Rust (https://rustup.rs)" \
        "and run \`npm run build\` before using the package from this checkout"
    fi
  elif $packing; then
    npm run build
  else
    npm run build:fast
  fi
fi

if $packing; then
  for f in dist/index.js dist/index.d.ts native/index.js native/index.d.ts; do
    [ -f "$f" ] || { say "$f is missing: run \`npm run build:ts\` and \`npm run build\` first"; exit 1; }
  done
  addon || { say "no native/leaderlease.*.node to pack: run \`npm run build\` first"; exit 1; }
  compgen -G 'native/leaderlease-*' >/dev/null ||
    { say "no native/leaderlease-<platform> (the command line) to pack: run \`npm run build\` first"; exit 1; }
fi

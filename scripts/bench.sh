#!/usr/bin/env bash
# npm run bench [-- flags]: leaderlease against nest-leader-election 1.1.2, side by side, on a throwaway
# PostgreSQL that logs every statement (so statements are counted exactly), removed at the end.
#
#   --quick      short settings only, fewer rounds (a few minutes)
#   --build      rebuild leaderlease first (npm run build:fast && npm run build:ts; with --release only
#                build:ts); without it, it is built only if dist/ or native/*.node is missing
#   --release    measure the shipped build (release profile, fat LTO), built into bench/.addon; native/
#                is left as it is. Either addon is loaded from a copy in bench/.addon (through
#                NAPI_RS_NATIVE_LIBRARY_PATH), so a rebuild of native/ during the run changes nothing
#   everything else goes to bench/run.mjs: --settings short|default|both, --only <package>,
#   --takeovers N, --handovers N, --pauses N, --elections N, --window S, --json FILE, --markdown FILE
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "bench: $*" >&2; }

build=false
release=false
pass=()
for a in "$@"; do
  case "$a" in
    --build) build=true ;;
    --release) release=true ;;
    *) pass+=("$a") ;;
  esac
done

# leaderlease, from this checkout.
addon_file() { compgen -G 'native/leaderlease.*.node' | head -n 1; }
if [ ! -f dist/index.js ] || [ -z "$(addon_file)" ] || { $build && ! $release; }; then
  say "building leaderlease (npm run build:fast && npm run build:ts)"
  npm run build:fast >&2
  npm run build:ts >&2
elif $build; then
  say "building leaderlease's TypeScript (npm run build:ts)"
  npm run build:ts >&2
fi
triple=x86_64-unknown-linux-gnu
if $release; then
  say "building the release addon (fat LTO) into bench/.addon"
  cargo build --quiet --release --target "$triple" -p leaderlease-node
  mkdir -p bench/.addon
  cp "target/$triple/release/libleaderlease_node.so" bench/.addon/leaderlease.node
  export NAPI_RS_NATIVE_LIBRARY_PATH="$PWD/bench/.addon/leaderlease.node"
  export BENCH_ADDON="release profile (fat LTO)"
else
  f=$(addon_file)
  profile="unknown profile"
  for p in release-fast release debug; do
    if cmp -s "$f" "target/$triple/$p/libleaderlease_node.so"; then
      profile="$p profile"
      break
    fi
  done
  # A copy, so that a rebuild of native/ during the run cannot change the addon under it.
  mkdir -p bench/.addon
  cp "$f" bench/.addon/leaderlease.node
  export NAPI_RS_NATIVE_LIBRARY_PATH="$PWD/bench/.addon/leaderlease.node"
  export BENCH_ADDON="$f ($profile), built $(date -u -r "$f" '+%Y-%m-%d %H:%M UTC')"
fi

# nest-leader-election 1.1.2 and its peers, in bench/'s own install (they conflict with the root's).
npm install --prefix bench --no-audit --no-fund --loglevel=error >&2

# A throwaway PostgreSQL: own port, own data directory, every statement logged with its application_name.
pg_dir=$(bash scripts/throwaway-pg.sh start -c max_connections=2600 -c log_statement=all -c 'log_line_prefix=%n|%a|%p| ') \
  || { say "could not start a throwaway PostgreSQL (see above)"; exit 1; }
cleanup() { bash scripts/throwaway-pg.sh destroy "$pg_dir"; }
trap cleanup EXIT
say "throwaway PostgreSQL $(cat "$pg_dir/version") on $(cat "$pg_dir/url") ($pg_dir)"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export BENCH_DATABASE_URL="$(cat "$pg_dir/url")"
export BENCH_PG_LOG="$pg_dir/log"
export BENCH_REV="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates ts 2>/dev/null || echo ' with uncommitted changes in crates/ or ts/')"
node bench/run.mjs "${pass[@]}"

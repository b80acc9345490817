#!/usr/bin/env bash
# Builds the addon (and with --cli the command line) for the Linux targets on this x86_64 machine, into
# native/ under napi-rs's names (native/leaderlease.<platform>.node, native/leaderlease-<platform>), where
# native/index.js and scripts/stage-platform.sh find them. Installs what it uses (scripts/cross-setup.sh).
#   bash scripts/cross-build.sh [--profile P] [--cli] [--strip] PLATFORM...   PLATFORM: linux-x64-gnu, linux-arm64-gnu,
#        linux-x64-musl, linux-arm64-musl, or all          (default profile: release; `npm run build:cross`)
# The routes (docs/platforms.md):
#   linux-x64-gnu    rustup's Rust, linked by zig (cargo-zigbuild) against glibc 2.17: runs on glibc >= 2.17
#                    (RHEL/CentOS 7, Amazon Linux 2, Debian 8+), where the machine's own linker would tie
#                    it to this machine's glibc.
#   linux-arm64-gnu  Debian's Rust 1.96 (rustc-web) with Debian's arm64 standard library
#                    (libstd-rust-web-dev:arm64), linked by zig against glibc 2.17.
#   linux-*-musl     Debian's Rust 1.96 building its standard library from source (rust-web-src,
#                    -Zbuild-std, RUSTC_BOOTSTRAP=1: neither Debian nor rustup here has a musl standard
#                    library), linked by zig against musl, with `-C target-feature=-crt-static` (a
#                    cdylib cannot link musl statically: Node loads it into its own musl).
# Debian's cargo and rustc are called by full path; rustup's stay first in PATH for everything else.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
cli=false
strip=false
platforms=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --cli) cli=true; shift ;;
    --strip) strip=true; shift ;;
    all) platforms+=(linux-x64-gnu linux-arm64-gnu linux-x64-musl linux-arm64-musl); shift ;;
    linux-x64-gnu | linux-arm64-gnu | linux-x64-musl | linux-arm64-musl) platforms+=("$1"); shift ;;
    *) echo "cross-build: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#platforms[@]} -gt 0 ] || { echo "usage: cross-build.sh [--profile P] [--cli] PLATFORM... | all" >&2; exit 2; }

bash scripts/cross-setup.sh build
TOOLS="$PWD/target/cross-tools"
# cargo-zigbuild and the zig it finds (python3 -m ziglang) come from the venv; rustup's cargo stays ahead
# of Debian's /usr/bin.
export PATH="$TOOLS/venv/bin:$PATH"
DEBIAN_CARGO=/usr/bin/cargo
DEBIAN_RUSTC=/usr/bin/rustc
mkdir -p "$TOOLS/debian-rust-bin"
ln -sfn "$DEBIAN_CARGO" "$TOOLS/debian-rust-bin/cargo"
ln -sfn "$DEBIAN_RUSTC" "$TOOLS/debian-rust-bin/rustc"
dir="$profile"
[ "$profile" = dev ] && dir=debug
# --strip: no symbols in what ships (the profile's own setting otherwise).
$strip && export "CARGO_PROFILE_$(echo "$profile" | tr a-z- A-Z_)_STRIP=symbols"

for platform in "${platforms[@]}"; do
  start=$(date +%s)
  env=()
  build_std=()
  case "$platform" in
    linux-x64-gnu) triple=x86_64-unknown-linux-gnu; zig_target="$triple.2.17"; target_dir=target ;;
    linux-arm64-gnu) triple=aarch64-unknown-linux-gnu; zig_target="$triple.2.17"; target_dir=target/debian-rust ;;
    linux-x64-musl | linux-arm64-musl)
      if [ "$platform" = linux-x64-musl ]; then triple=x86_64-unknown-linux-musl; else triple=aarch64-unknown-linux-musl; fi
      zig_target="$triple"
      target_dir=target/debian-rust
      build_std=(-Zbuild-std=std,panic_abort)
      env+=(RUSTC_BOOTSTRAP=1)
      upper=$(echo "$triple" | tr a-z- A-Z_)
      env+=("CARGO_TARGET_${upper}_RUSTFLAGS=-C target-feature=-crt-static")
      ;;
  esac
  path="$PATH"
  if [ "$target_dir" != target ]; then
    # cargo-zigbuild runs `cargo` from PATH: for these builds only, a directory whose cargo and rustc are
    # Debian's comes first.
    path="$TOOLS/debian-rust-bin:$PATH"
    env+=(RUSTC="$DEBIAN_RUSTC")
  fi
  echo "cross-build: $platform ($zig_target, profile $profile, $(PATH="$path" cargo --version))" >&2
  env "${env[@]}" PATH="$path" CARGO_TARGET_DIR="$target_dir" nice -n 10 cargo-zigbuild zigbuild --profile "$profile" \
    --target "$zig_target" "${build_std[@]}" -p leaderlease-node
  install -m 0755 "$target_dir/$triple/$dir/libleaderlease_node.so" "native/leaderlease.$platform.node"
  if $cli; then
    env "${env[@]}" PATH="$path" CARGO_TARGET_DIR="$target_dir" nice -n 10 cargo-zigbuild zigbuild --profile "$profile" \
      --target "$zig_target" "${build_std[@]}" -p leaderlease --features cli --bin leaderlease
    install -m 0755 "$target_dir/$triple/$dir/leaderlease" "native/leaderlease-$platform"
  fi
  echo "cross-build: $platform done in $(($(date +%s) - start)) s" >&2
done

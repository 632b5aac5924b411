#!/usr/bin/env bash
# Regenerate requirements.lock (runtime) and requirements-dev.lock (runtime + dev extras) from
# pyproject.toml, with hashes, for Debian 12's Python 3.11 on x86_64: the one the broker host,
# the Debian package build and CI install with `pip install --require-hashes`.
# The resolver (uv) lives in a throwaway venv under /tmp, never in the project's .venv.
# Run after changing [project] dependencies or the dev extras; commit both files.
# Extra arguments go to both compiles, e.g.  deploy/lock.sh --upgrade-package rich
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.10
tooldir=$(mktemp -d /tmp/broker-lock.XXXXXX)
trap 'rm -rf "$tooldir"' EXIT
/usr/bin/python3 -m venv "$tooldir/venv"
"$tooldir/venv/bin/python" -m pip install -q "uv==$UV_VERSION"
uv=("$tooldir/venv/bin/uv" pip compile pyproject.toml --generate-hashes --quiet
    --python-version 3.11 --python-platform x86_64-unknown-linux-gnu
    --custom-compile-command deploy/lock.sh)

# Keep the versions already locked unless asked (--upgrade), so a new dependency does not
# silently move every other pin.
"${uv[@]}" "$@" -o requirements.lock
# The dev lock is a superset of the runtime lock, at the same versions (-c pins them), so CI
# tests exactly what the package ships.
"${uv[@]}" "$@" --extra dev -c requirements.lock -o requirements-dev.lock
echo "lock: wrote requirements.lock ($(grep -c '==' requirements.lock) pins)" \
     "and requirements-dev.lock ($(grep -c '==' requirements-dev.lock) pins)"

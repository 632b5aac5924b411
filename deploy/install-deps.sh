#!/usr/bin/env bash
# Install what the broker, its tests and the lab need on Debian 12, then the project into .venv.
# Idempotent: apt-get runs only when a package is missing; pip only when the venv is stale.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  samba samba-ad-dc samba-ad-provision winbind krb5-user ldap-utils python3-sss
  openssh-server openssh-client sudo pamtester stunnel4
  python3 python3-venv python3-dev libkrb5-dev gcc
  util-linux iproute2 openssl sqlite3 curl tzdata rsyslog rsyslog-openssl
  make clang libclang-rt-14-dev binutils libpam0g-dev libsodium-dev
  dpkg-dev git  # packaging/broker/build.sh: dpkg-shlibdeps, the sources as the tree has them
  chromium  # the report's browser test (tests/browser.py): headless, loads the page offline
  libpq5 postgresql-15  # store.url = postgresql://: psycopg's libpq; the store tests' own cluster
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "install-deps: need root to apt-get install: ${missing[*]}" >&2; exit 2; }
  echo "install-deps: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The project runs on Debian's own Python, the one a node or broker host has.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
# Exactly the locked versions, each checked against its hash (requirements-dev.lock holds the
# runtime lock's pins too; deploy/lock.sh regenerates both), then the project without letting
# pip resolve anything. The stamp covers pyproject and both locks: a change to any reinstalls.
stamp=.venv/.installed-from
want=$(cat pyproject.toml requirements.lock requirements-dev.lock | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import broker" 2>/dev/null; then
  echo "install-deps: pip install --require-hashes -r requirements-dev.lock"
  log=$(mktemp)
  if ! { .venv/bin/python -m pip install -q --require-hashes -r requirements-dev.lock &&
         .venv/bin/python -m pip install -q --no-deps -e .; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2; rm -f "$log"; echo "install-deps: pip install failed" >&2; exit 1
  fi
  rm -f "$log"
  echo "$want" > "$stamp"
fi

# The node side in C (pam/Makefile): pam_broker.so and broker-grant-check, which bootstrap
# installs on nodes. make rebuilds only what changed.
make -s -C pam all

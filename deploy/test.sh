#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine, as root:
# install dependencies, lint, type-check, check the import contracts, then unit tests and lab tests
# (the lab - a real Samba AD DC and namespaced nodes - is brought up once and torn down).
# Extra arguments go to pytest, e.g.  deploy/test.sh -m "not lab"
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "deploy/test.sh: run as root (the lab starts a DC and sshd in namespaces)" >&2
  exit 2
fi
deploy/install-deps.sh
echo "== ruff"
.venv/bin/ruff check broker tests bench deploy pam
.venv/bin/ruff format --check broker tests bench deploy pam
echo "== mypy (strict)"
.venv/bin/mypy
echo "== C unit tests of the PAM module (AddressSanitizer, UBSan)"
make -s -C pam test
echo "== node package (build, contents, modes, extracted program; not installed here)"
PYTHON=.venv/bin/python bash packaging/node/ci-check.sh
echo "== dependency floors (every runtime dependency at its declared minimum)"
deploy/check-floors.sh
echo "== the broker host's Debian package (build, apt-get install, check, purge)"
bash packaging/broker/ci-check.sh
echo "== fuzzing the node's parsers (libFuzzer, 6 x 15 s)"
make -s -C pam fuzz FUZZ_SECONDS=15
echo "== vermin (pam/ runs on the nodes' /usr/bin/python3: 3.9 on EL9)"
.venv/bin/vermin --no-tips --violations -t=3.9- --eval-annotations --no-config-file \
    --exclude-regex '/pam/fuzz/' pam/  # the fuzz corpus maker runs on the build machine
echo "== import contracts (the package graph points one way)"
.venv/bin/lint-imports --no-cache
echo "== pytest"
.venv/bin/python -m pytest -p no:cacheprovider -ra "$@"

#!/usr/bin/env bash
# Test the declared dependency floors: a throwaway venv on Debian's python3 gets every runtime
# dependency at exactly the minimum pyproject.toml declares (derived by deploy/floors.py, so a
# new dependency is tested too), the project with --no-deps, then a smoke set: the CLI's help
# and version, every command's --help, the daemon's imports and the pure unit tests that need
# no servers. A floor that does not work fails here instead of on a site's machine.
# Called by deploy/test.sh; runs alone too. pip's wheel cache keeps reruns well under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
start=$SECONDS

venv=$(mktemp -d /tmp/broker-floors.XXXXXX)
trap 'rm -rf "$venv"' EXIT
/usr/bin/python3 -m venv "$venv"
py="$venv/bin/python"

mapfile -t floors < <(/usr/bin/python3 deploy/floors.py floors)
# The test runner at the versions CI locks, not whatever is newest.
mapfile -t runner < <(grep -E '^(pytest|pytest-timeout|hypothesis)==' requirements-dev.lock |
                      cut -d' ' -f1)
echo "floors: ${floors[*]}"
log="$venv/pip.log"
if ! { "$py" -m pip install -q "${floors[@]}" "${runner[@]}" &&
       "$py" -m pip install -q --no-deps "$repo"; } >"$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" | tail -n 20 >&2
  echo "check-floors: the declared floors do not install together (pyproject.toml)" >&2
  exit 1
fi

failed=0
fail() { echo "check-floors: FAILED at the floors: $*" >&2; failed=1; }
# Outside the checkout, so the installed package is what runs.
cd "$venv"
"$venv/bin/broker" --help >/dev/null || fail "broker --help"
"$venv/bin/broker" --version >/dev/null || fail "broker --version"
mapfile -t commands < <("$py" "$repo/deploy/floors.py" commands)
[ "${#commands[@]}" -gt 1 ] || fail "no commands found below broker"
for path in "${commands[@]}"; do
  [ -n "$path" ] || continue
  # shellcheck disable=SC2086  # a command path is words: "grants list"
  "$venv/bin/broker" $path --help >/dev/null 2>"$venv/err" || { fail "broker $path --help"; head -n 5 "$venv/err" >&2; }
done
"$py" -c 'import broker.app, broker.daemon.server' || fail "import broker.app, broker.daemon.server"
cd "$repo"

# Pure unit tests, one or more per dependency: pydantic (config, wire), jinja2 (sudoers), pyotp
# and segno (mfa), cryptography (chain), krb5 (keytab files), ClusterShell (host lists),
# ldap3 (directory), paramiko (host keys), mmh3 (detection), typer and rich (cli).
"$py" -m pytest -p no:cacheprovider -q --timeout 120 \
  tests/unit/test_config.py tests/unit/test_wire.py tests/unit/test_sudoers_render.py \
  tests/unit/test_mfa_codes.py tests/unit/test_policy_load.py tests/unit/test_policy_evaluate.py \
  tests/unit/test_chain_verify.py tests/unit/test_keytabfile.py tests/unit/test_hostlist_probe.py \
  tests/unit/test_directory_logic.py tests/unit/test_fleet_hostkeys.py tests/unit/test_detect.py \
  tests/unit/test_durations.py || fail "unit tests"

[ "$failed" = 0 ] || exit 1
echo "check-floors: ok, ${#commands[@]} commands and the unit tests at the floors ($((SECONDS - start)) s)"

#!/usr/bin/env bash
# CI check of the node package, without installing it here (its postinst would change this
# machine's services and its prerm/postrm its PAM stacks): build it, compare its file list and
# modes with what `broker node bootstrap` installs (broker/provision/bundle.py), read its
# control data, run lintian where installed, extract it and run the extracted program and
# grant checker against the extracted tree.
#   bash packaging/node/ci-check.sh     (PYTHON: an interpreter with the broker's dependencies)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
fail() { echo "ci-check: $*" >&2; exit 1; }

for script in postinst prerm postrm; do
  sh -n "packaging/node/$script" || fail "$script does not parse"
done
deb=$(bash packaging/node/build.sh)
[ -f "$deb" ] || fail "build.sh made no package"
version=$(dpkg-deb -f "$deb" Version)
[ "$(dpkg-deb -f "$deb" Package)" = hpc-access-broker-node ] || fail "wrong package name"
for dep in libpam0g libsodium23 'python3 (>= 3.9)' sudo stunnel4; do
  dpkg-deb -f "$deb" Depends | grep -qF "$dep" || fail "Depends lacks $dep"
done

# Every file bootstrap pushes, at the same path and mode (the watcher unit in the vendor
# directory), plus the marker and the pam-auth-update profile.
expected=$(PYTHONPATH=. "$PYTHON" -c '
from broker.provision import bundle, packaged
rows = [(p.replace("/etc/systemd/system/", "/lib/systemd/system/"), m)
        for _n, p, m in (*bundle.PROGRAM_FILES, *bundle.BUILT_FILES)]
rows += [(packaged.MARKER, 0o644), ("/usr/share/pam-configs/broker", 0o644)]
for path, mode in sorted(rows):
    print(f"{mode:04o} .{path}")')
listing=$(dpkg-deb -c "$deb")
echo "$listing" | awk '$2 != "root/root" {print; bad=1} END {exit bad}' \
  || fail "files not owned by root"
echo "$listing" | awk 'substr($1, 9, 1) == "w" {print; bad=1} END {exit bad}' \
  || fail "world-writable files or directories"
actual=$(echo "$listing" | awk '$1 ~ /^-/ {print $1, $6}' | grep -v '/usr/share/doc/' | sort -k2)
perm() {  # -rw-r--r-- -> 0644
  local s=$1 o=0 d i
  for i in 0 1 2; do
    d=0
    [ "${s:$((1 + 3 * i)):1}" = r ] && d=$((d + 4))
    [ "${s:$((2 + 3 * i)):1}" = w ] && d=$((d + 2))
    [ "${s:$((3 + 3 * i)):1}" = x ] && d=$((d + 1))
    o=$((o * 10 + d))
  done
  printf '%04d' "$o"
}
got=$(echo "$actual" | while read -r mode path; do echo "$(perm "$mode") $path"; done | sort -k2)
diff <(echo "$expected" | sort -k2) <(echo "$got") || fail "package files differ from bootstrap's"
[ "$(echo "$got" | wc -l)" -ge 20 ] || fail "too few files in the package"

if command -v lintian >/dev/null; then
  lintian --fail-on error "$deb"
else
  echo "ci-check: lintian not installed, skipped"
fi

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
chmod 0755 "$tree"
dpkg-deb -x "$deb" "$tree"
grep -qx "version=$version" "$tree/usr/lib/broker/PACKAGED" || fail "the marker's version"
grep -qx "digest=$(bash packaging/node/build.sh --digest)" "$tree/usr/lib/broker/PACKAGED" \
  || fail "the marker's digest"
"$tree/usr/libexec/broker/broker-grant-check" --version >/dev/null || fail "broker-grant-check"
# The extracted node program answers status about the extracted tree and names the package.
/usr/bin/python3 -I -S - "$tree" "$version" <<'PY' || fail "the extracted node program"
import json, sys, time
root, version = sys.argv[1], sys.argv[2]
sys.path.insert(0, root + "/usr/libexec/broker")
from broker_node.contract import Paths
from broker_node.status import node_status
status = node_status(Paths(root=root), int(time.time()))
assert status["installed_by"] == "package", status
assert status["package_version"] == version, status
assert status["module"]["loads"], status["module"]
print("ci-check: extracted node program:", json.dumps({k: status[k] for k in ("installed_by", "package_version", "hook_version")}))
PY
echo "ci-check: $deb ok"

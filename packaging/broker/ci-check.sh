#!/usr/bin/env bash
# CI check of the broker host package, as root on a Debian 12 machine (deploy/test.sh runs it):
# build it, install it the way README says (apt-get install ./dist/...deb), check what it
# installed works, purge it, and check the purge left nothing behind. The machine is left as
# it was: the broker user and the state directories, which the package deliberately keeps on
# purge, are removed here only when this script's install created them (and only if empty).
set -euo pipefail
cd "$(dirname "$0")/../.."
PKG=hpc-access-broker
fail() { echo "ci-check: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "ci-check: run as root (it installs and purges $PKG)" >&2; exit 2; }
if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q "ok installed"; then
  echo "ci-check: $PKG is already installed here; refusing to replace and purge it" >&2
  exit 3
fi

STATE_DIRS=(/etc/broker /etc/broker/sessions /var/lib/broker /var/lib/broker/audit
  /var/lib/broker/keys /var/lib/broker/sessions /var/lib/broker/sessions/iolog)
declare -A before=()
for d in "${STATE_DIRS[@]}"; do
  [ -d "$d" ] && before[$d]=$(stat -c '%u:%g %a' "$d")
done
had_user=$(getent passwd broker >/dev/null && echo yes || echo no)
had_group=$(getent group broker >/dev/null && echo yes || echo no)

restore() {  # put back what the install changed outside the package's own files
  dpkg-query -W "$PKG" >/dev/null 2>&1 && apt-get purge -y -qq "$PKG" >/dev/null 2>&1
  for ((i = ${#STATE_DIRS[@]} - 1; i >= 0; i--)); do
    d=${STATE_DIRS[$i]}
    if [ -n "${before[$d]:-}" ]; then
      chown "${before[$d]% *}" "$d" && chmod "${before[$d]#* }" "$d"
    elif [ -d "$d" ]; then
      rmdir "$d" 2>/dev/null || echo "ci-check: left $d (not empty)" >&2
    fi
  done
  [ "$had_user" = yes ] || ! getent passwd broker >/dev/null || userdel broker
  [ "$had_group" = yes ] || ! getent group broker >/dev/null || groupdel broker
}
aptlog=$(mktemp /tmp/ci-check-apt.XXXXXX)
trap 'restore; rm -f "$aptlog"' EXIT

echo "ci-check: build"
bash packaging/broker/build.sh
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' broker/__init__.py)
deb=./dist/${PKG}_${version}_$(dpkg --print-architecture).deb
[ -f "$deb" ] || fail "build.sh did not produce $deb"

echo "ci-check: apt-get install -y $deb"
export DEBIAN_FRONTEND=noninteractive
unset PYTHONPATH  # the installed broker, never this checkout
apt-get install -y -qq "$deb" >"$aptlog" 2>&1 || { cat "$aptlog" >&2; fail "apt-get install"; }

echo "ci-check: /usr/bin/broker --version"
got=$(/usr/bin/broker --version)
[ "$got" = "broker $version" ] || fail "/usr/bin/broker --version said '$got', want 'broker $version'"
getent passwd broker >/dev/null || fail "postinst did not create the broker user (systemd-sysusers)"
[ "$(stat -c '%U %a' /var/lib/broker)" = "broker 700" ] || fail "/var/lib/broker is not broker's, 0700"
/usr/bin/broker --help >/dev/null || fail "broker --help"

echo "ci-check: broker config check on the installed example"
example=/usr/share/doc/$PKG/examples/broker.toml
/usr/bin/broker config check "$example" >/dev/null || fail "broker config check $example"
# The wheel's node files and the built module where bootstrap looks for them.
/opt/$PKG/bin/python -I -c 'from broker.provision.bundle import load_bundle; load_bundle()' \
  || fail "the installed package cannot assemble the node bundle for bootstrap"
/opt/$PKG/bin/python -I -c 'from broker.sudoers.render import TEMPLATES_DIR as d, TEMPLATE as t; assert (d / t).is_file(), d' \
  || fail "the installed package has no sudoers template"
grep -q _broker_completion /usr/share/bash-completion/completions/broker || fail "bash completion"
man -w broker-elevate >/dev/null 2>&1 || [ -f /usr/share/man/man1/broker-elevate.1.gz ] || fail "man pages"

units=(/usr/lib/systemd/system/broker*.service /usr/lib/systemd/system/broker*.timer
  /usr/lib/systemd/system/broker*.path)
if ! command -v systemd-analyze >/dev/null; then
  echo "ci-check: SKIPPED systemd-analyze verify: systemd-analyze is not installed"
elif ! systemd-analyze --version >/dev/null 2>&1; then
  echo "ci-check: SKIPPED systemd-analyze verify: systemd-analyze cannot run here"
else
  echo "ci-check: systemd-analyze verify ${#units[@]} units"
  systemd-analyze verify --man=no "${units[@]}" || fail "systemd-analyze verify"
fi

if command -v lintian >/dev/null; then
  echo "ci-check: lintian (warnings only)"
  lintian --no-tag-display-limit "$deb" || true
else
  echo "ci-check: lintian not installed: not run"
fi

echo "ci-check: apt-get install --reinstall (the upgrade path of the maintainer scripts)"
apt-get install -y -qq --reinstall "$deb" >"$aptlog" 2>&1 || { cat "$aptlog" >&2; fail "reinstall"; }
[ "$(/usr/bin/broker --version)" = "broker $version" ] || fail "broker --version after reinstall"
[ "$(stat -c '%U %a' /var/lib/broker)" = "broker 700" ] || fail "reinstall changed /var/lib/broker"

echo "ci-check: apt-get purge -y $PKG"
apt-get purge -y -qq "$PKG" >"$aptlog" 2>&1 || { cat "$aptlog" >&2; fail "apt-get purge"; }
for left in /opt/$PKG /usr/bin/broker /usr/lib/systemd/system/broker.service \
  /usr/share/man/man1/broker.1.gz /usr/share/bash-completion/completions/broker; do
  [ ! -e "$left" ] && [ ! -L "$left" ] || fail "$left is still there after purge"
done
[ -d /var/lib/broker ] || fail "purge removed /var/lib/broker: the state must stay"
echo "ci-check: ok ($deb built, installed, checked, purged)"

#!/usr/bin/env bash
# Build the broker host's Debian package from this repository, with Debian's own tooling
# (python3 -m venv, dpkg-shlibdeps, dpkg-deb):
#
#   bash packaging/broker/build.sh      ->  dist/hpc-access-broker_<version>_<arch>.deb
#
# The package carries a private venv under /opt/hpc-access-broker (Debian's python3, the
# project's wheel and its runtime dependencies: from requirements.lock with hashes when the
# repository has one, else the pyproject floors), /usr/bin/broker, the systemd units,
# sysusers/tmpfiles, man pages, bash completion, the docs and example configuration, and the
# node files `broker node bootstrap` pushes (with the PAM module built here).
# What it installs and why: docs/operations.md, "Install and upgrade".
# Build needs (Debian 12): dpkg-dev, python3-venv, python3-dev, libkrb5-dev, gcc, make,
# libpam0g-dev, libsodium-dev, git; PyPI reachable through pip.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
here=packaging/broker
PKG=hpc-access-broker
PREFIX=/opt/$PKG
PY=/usr/bin/python3

die() { echo "build.sh: $*" >&2; exit 1; }

need=()
for tool in dpkg-deb dpkg-shlibdeps git make cc gzip; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
[ -x "$PY" ] || need+=("$PY")
[ "${#need[@]}" -eq 0 ] || { echo "build.sh: missing ${need[*]}: apt-get install dpkg-dev git make gcc python3-venv" >&2; exit 2; }

version=$(sed -n 's/^__version__ = "\([0-9][0-9A-Za-z.+~-]*\)"$/\1/p' broker/__init__.py)
[ -n "$version" ] || die "no __version__ = \"X.Y.Z\" in broker/__init__.py"
arch=$(dpkg --print-architecture)
pyver=$($PY -c 'import sys; print("%d.%d" % sys.version_info[:2])')
work=$(mktemp -d /tmp/hpc-access-broker-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
venv=$root$PREFIX
log=$work/log

quiet() {  # run a noisy step; show its tail only when it fails
  if ! "$@" >>"$log" 2>&1; then tail -n 40 "$log" >&2; die "failed: $*"; fi
}

echo "build.sh: $PKG $version ($arch, python $pyver)"
# The sources as the working tree has them (tracked and new, not ignored), built outside it
# so the checkout gets no build/ or egg-info.
mkdir -p "$work/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work/src"

echo "build.sh: the node side (make -C pam)"
quiet make -s -C "$work/src/pam" all

echo "build.sh: the venv under $PREFIX (wheel, then the runtime dependencies)"
# The versioned interpreter (package python$pyver, a Depends) rather than the python3 symlink.
quiet "/usr/bin/python$pyver" -m venv "$venv"
quiet "$venv/bin/python" -m pip wheel --no-deps -w "$work/wheel" "$work/src"
wheel=$(ls "$work"/wheel/hpc_access_broker-*.whl)
if [ -f requirements.lock ]; then
  quiet "$venv/bin/python" -m pip install --no-compile --require-hashes -r requirements.lock
  quiet "$venv/bin/python" -m pip install --no-compile --no-deps "$wheel"
else
  quiet "$venv/bin/python" -m pip install --no-compile "$wheel"
fi
# A lock file that lacks a dependency (the wheel goes in with --no-deps) fails here, not at run time.
quiet "$venv/bin/python" -m pip check
quiet "$venv/bin/python" -m pip uninstall -y pip setuptools  # nothing installs into it later
rm -f "$venv"/bin/activate* "$venv"/bin/pip* "$venv"/bin/Activate.ps1
find "$venv" -name direct_url.json -path '*.dist-info/*' -delete  # names the build's wheel path
# Console scripts and pyvenv.cfg's `command` line name the venv by the build path: name the
# installed one.
grep -rlI --null "$venv" "$venv/bin" "$venv/pyvenv.cfg" | xargs -0 -r sed -i "s#$venv#$PREFIX#g"
if grep -rlI "$work" "$venv" >"$work/leaks"; then
  cat "$work/leaks" >&2; die "files in the venv still name the build directory"
fi
# Byte-compiled here (checked hashes, installed paths), so dpkg owns every .pyc.
quiet "$venv/bin/python" -m compileall -q -j0 --invalidation-mode checked-hash \
  -s "$root" -p / "$venv/lib"

echo "build.sh: the built PAM module for bootstrap to push"
share=$venv/share/$PKG
install -d -m 0755 "$share/pam/build"
for f in pam_broker.so broker-grant-check pam_broker.compat; do
  install -m 0644 "$work/src/pam/build/$f" "$share/pam/build/$f"
done
chmod 0755 "$share/pam/build/broker-grant-check"

echo "build.sh: units, sysusers, tmpfiles, docs, man pages, completion"
install -d -m 0755 "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/usr/lib/sysusers.d" \
  "$root/usr/lib/tmpfiles.d" "$root/usr/share/man/man1" "$root/usr/share/doc/$PKG/examples" \
  "$root/usr/share/bash-completion/completions"
ln -s "$PREFIX/bin/broker" "$root/usr/bin/broker"
install -m 0644 deploy/systemd/*.service deploy/systemd/*.timer deploy/systemd/*.path \
  "$root/usr/lib/systemd/system/"
install -m 0644 deploy/systemd/broker.sysusers.conf "$root/usr/lib/sysusers.d/broker.conf"
install -m 0644 deploy/systemd/broker.tmpfiles.conf "$root/usr/lib/tmpfiles.d/broker.conf"
install -m 0644 README.md docs/*.md docs/openapi.json "$root/usr/share/doc/$PKG/"
install -m 0644 deploy/examples/broker.toml deploy/examples/policy.toml "$root/usr/share/doc/$PKG/examples/"
install -m 0644 "$here/copyright" "$root/usr/share/doc/$PKG/copyright"
gzip -9n -c "$here/changelog" >"$root/usr/share/doc/$PKG/changelog.Debian.gz"
for page in man/*.1; do
  gzip -9n -c "$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done
# `broker --show-completion bash`, through the venv's python: the scripts already name /opt.
"$venv/bin/python" -c 'import sys; from broker.cli.main import run; sys.argv = ["broker", "--show-completion", "bash"]; run()' \
  >"$root/usr/share/bash-completion/completions/broker" 2>>"$log" </dev/null
grep -q 'complete .*-F _broker_completion broker' "$root/usr/share/bash-completion/completions/broker" \
  || die "broker --show-completion bash gave no bash completion"
chmod 0644 "$root/usr/share/bash-completion/completions/broker"

echo "build.sh: control file (runtime libraries from dpkg-shlibdeps)"
install -d -m 0755 "$root/DEBIAN"
for script in postinst prerm postrm; do
  install -m 0755 "$here/debian/$script" "$root/DEBIAN/$script"
done
shlibs=$(bash "$here/shlibs.sh" "$work" "$venv")
# libpq5: psycopg loads it with ctypes (store.url = postgresql://), which dpkg-shlibdeps cannot see.
depends="$shlibs, python$pyver, libpq5, sudo, stunnel4, systemd"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
  -e "s/@SIZE@/$size/" "$here/debian/control.in" >"$root/DEBIAN/control"

mkdir -p dist
out=dist/${PKG}_${version}_${arch}.deb
quiet dpkg-deb --root-owner-group -Zxz --build "$root" "$out"
echo "build.sh: $repo/$out"

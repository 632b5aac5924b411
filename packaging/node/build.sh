#!/usr/bin/env bash
# Build the node package: dist/hpc-access-broker-node_<version>_<arch>.deb (docs: pam/README.md,
# "Installing nodes with the package"). Needs make, gcc, libpam0g-dev, libsodium-dev and
# dpkg-deb >= 1.19 (--root-owner-group: no fakeroot). Build on the nodes' distribution and
# architecture: the module is linked against that C library (Depends: libc6 >= the build's).
#   bash packaging/node/build.sh            build the .deb, print its path
#   bash packaging/node/build.sh --digest   print the digest of the node files (the marker's)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=packaging/node
pkg=hpc-access-broker-node

# The same files and order as broker/provision/packaged.py (DIGEST_GLOBS, node_digest):
# sha256sum's lines sorted bytewise by name, hashed again.
digest() {
  (
    cd pam
    shopt -s nullglob
    files=(Makefile broker-keytab broker-node broker-relay-flush broker_keytab.py broker_keytab_gss.py broker_node/*.py
           pam-configs/broker src/*.c src/*.h systemd/*.service)
    printf '%s\n' "${files[@]}" | LC_ALL=C sort -u | tr '\n' '\0' | xargs -0 sha256sum
  ) | sha256sum | cut -d' ' -f1
}
if [ "${1:-}" = --digest ]; then
  digest
  exit 0
fi
if [ $# -gt 0 ]; then
  echo "usage: bash $here/build.sh [--digest]" >&2
  exit 2
fi

version=$(sed -n 's/^__version__ = "\([0-9][0-9A-Za-z.+~-]*\)"$/\1/p' broker/__init__.py)
arch=$(dpkg --print-architecture)
if [ -z "$version" ]; then
  echo "build.sh: no __version__ in broker/__init__.py" >&2
  exit 1
fi
make -s -C pam
glibc=$(sed -n 's/^glibc=//p' pam/build/pam_broker.compat)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
umask 022
# The paths `broker node bootstrap` installs (broker/provision/bundle.py), except the watcher
# unit, which a package puts in the vendor unit directory rather than /etc/systemd/system.
make -s -C pam install DESTDIR="$root"   # pam_broker.so 0644, broker-grant-check 0755
install -d -m 0755 "$root/usr/libexec/broker/broker_node" "$root/lib/systemd/system" \
  "$root/usr/share/pam-configs" "$root/usr/share/doc/$pkg" "$root/DEBIAN"
install -m 0644 pam/broker_node/*.py "$root/usr/libexec/broker/broker_node/"
install -m 0755 pam/broker-node pam/broker-keytab pam/broker-relay-flush "$root/usr/libexec/broker/"
install -m 0644 pam/broker_keytab.py pam/broker_keytab_gss.py "$root/usr/libexec/broker/"
install -m 0644 pam/systemd/broker-node-watch.service "$root/lib/systemd/system/"
install -m 0644 pam/pam-configs/broker "$root/usr/share/pam-configs/broker"
install -m 0644 pam/README.md "$root/usr/share/doc/$pkg/README.md"
printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: hpc-access-broker\n\nFiles: *\nLicense: Apache-2.0\n On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n' \
  > "$root/usr/share/doc/$pkg/copyright"
# The marker bootstrap and `broker-node status` read (broker/provision/packaged.py).
printf '# Installed by the %s package; read by `broker node bootstrap`.\npackage=%s\nversion=%s\ndigest=%s\n' \
  "$pkg" "$pkg" "$version" "$(digest)" > "$root/usr/lib/broker/PACKAGED"
chmod 0644 "$root/usr/lib/broker/PACKAGED"

sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@GLIBC@/$glibc/" \
  -e "s/@SIZE@/$(du -sk --exclude=DEBIAN "$root" | cut -f1)/" "$here/control.in" > "$root/DEBIAN/control"
for script in postinst prerm postrm; do
  install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
(cd "$root" && find usr lib -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

mkdir -p dist
out="dist/${pkg}_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "$out"

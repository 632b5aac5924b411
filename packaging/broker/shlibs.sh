#!/usr/bin/env bash
# Print the Debian packages the venv's compiled extensions need (dpkg-shlibdeps), as one
# Depends list. Libraries a manylinux wheel bundles (in its *.libs directory) are searched
# there; the PAM module and its checker are for nodes, not this host, and are left out.
#   shlibs.sh WORKDIR VENV
set -euo pipefail
work=$1 venv=$2
mkdir -p "$work/shlibs/debian"
printf 'Source: hpc-access-broker\n\nPackage: hpc-access-broker\nArchitecture: any\n' \
  >"$work/shlibs/debian/control"
mapfile -d '' objects < <(find "$venv/lib" -type f -name '*.so*' -not -path '*.libs/*' -print0)
libdirs=()
while IFS= read -r -d '' dir; do libdirs+=(-l"$dir"); done \
  < <(find "$venv/lib" -type d -name '*.libs' -print0)
cd "$work/shlibs"
dpkg-shlibdeps -O --ignore-missing-info "${libdirs[@]}" "${objects[@]}" 2>"$work/shlibs.err" \
  | sed -n 's/^shlibs:Depends=//p'

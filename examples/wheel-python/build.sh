#!/usr/bin/env bash
# Packs the wheel-python example into a bundle for the `python` runtime:
#
#   examples/wheel-python/build.sh OUT.tar.gz
#
# The bundle holds main.py, requirements.txt and wheels/newt_greeting-0.1.0-py3-none-any.whl,
# built here from pkg/ (no binary is committed). Because it has a wheels/ folder, newt
# installs the requirements with the runtime's `dependencies_offline` command
# (pip3 install --target .deps --no-index --no-build-isolation --find-links wheels -r
# requirements.txt, as the function's user): no network needed.
# Needs python3 >= 3.11 and GNU tar. The same source gives a byte-identical bundle.
set -euo pipefail

[[ $# -eq 1 && -n "$1" ]] || { echo "usage: build.sh OUT.tar.gz" >&2; exit 1; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT

cp "$here/main.py" "$here/requirements.txt" "$staging/"
python3 "$here/make_wheel.py" "$here/pkg" "$staging/wheels" >/dev/null
chmod -R u=rwX,go=rX "$staging"
# Fixed order, owner and dates, and gzip without a time stamp: reproducible bytes.
tar -C "$staging" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -cf - main.py requirements.txt wheels | gzip -n > "$out"
echo "$out"

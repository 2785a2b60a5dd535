#!/usr/bin/env bash
# Builds the root filesystem of newt's Python base image without a container registry.
#
#   rootfs.sh TARGET-DIR
#
# Debian bookworm (python3 3.11 and pip) from Debian's own packages with debootstrap,
# slimmed, plus newt's agent at /opt/newt/agent.py and the user `newt` (uid 10001).
# newt then tars TARGET-DIR and imports it as an image (Docker's image create with
# fromSrc=-) with USER 10001, WORKDIR /app and PYTHONDONTWRITEBYTECODE=1,
# PYTHONUNBUFFERED=1. `Dockerfile` beside this script is the same image for machines
# that can pull python:3.12-slim.
#
# Needs root (debootstrap chroots and makes device nodes) and debootstrap
# (`apt-get install debootstrap`). Takes about a minute, mostly downloading.
# Optional: NEWT_ROOTFS_CACHE=/abs/dir keeps the downloaded .deb files there
# (debootstrap --cache-dir) so a second build downloads nothing; the result is the same.
set -euo pipefail

readonly SUITE=bookworm
readonly PACKAGES=python3,python3-pip
readonly NEWT_UID=10001
readonly HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Progress on stdout; debootstrap's chatter and errors on stderr.
say() { echo "rootfs: $*"; }
die() { echo "rootfs: error: $*" >&2; exit 1; }

[[ $# -eq 1 && -n "$1" ]] || die "usage: rootfs.sh TARGET-DIR"
target="$1"
[[ "$(id -u)" -eq 0 ]] || die "must run as root (debootstrap chroots and creates device nodes)"
debootstrap="$(command -v debootstrap || true)"
[[ -n "$debootstrap" ]] || debootstrap=/usr/sbin/debootstrap
[[ -x "$debootstrap" ]] || die "debootstrap not found: install it with 'apt-get install -y debootstrap'"
[[ -f "$HERE/agent.py" ]] || die "agent.py not found beside this script in $HERE"
if [[ -e "$target" && -n "$(ls -A "$target")" ]]; then
    die "$target exists and is not empty"
fi
mkdir -p "$target"
target="$(cd "$target" && pwd)"
started=$SECONDS

cache_args=()
if [[ -n "${NEWT_ROOTFS_CACHE:-}" ]]; then
    [[ "$NEWT_ROOTFS_CACHE" == /* ]] || die "NEWT_ROOTFS_CACHE must be an absolute path"
    mkdir -p "$NEWT_ROOTFS_CACHE"
    cache_args=(--cache-dir="$NEWT_ROOTFS_CACHE")
fi

# No mirror argument: debootstrap's default Debian mirror.
say "debootstrap --variant=minbase --include=$PACKAGES $SUITE $target"
"$debootstrap" --variant=minbase --include="$PACKAGES" "${cache_args[@]}" "$SUITE" "$target" >&2
say "debootstrap done in $((SECONDS - started)) s"

# debootstrap unmounts what it mounted; a leftover mount would end up in the image tar.
if grep -q " $target/" /proc/mounts; then
    die "something is still mounted under $target"
fi

say "slimming"
cd "$target"
# Package indexes, downloaded packages and logs: nothing in the image runs apt.
rm -rf var/lib/apt/lists/* var/cache/apt/* var/cache/debconf/*-old var/lib/dpkg/*-old
find var/log -type f -delete
# Documentation, except each package's copyright file (its licence).
find usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf usr/share/man/* usr/share/info/* usr/share/lintian usr/share/linda
# Message translations: the image runs in the C locale (C.UTF-8 lives in usr/lib/locale).
find usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
# Byte-code caches: dropped everywhere (pip, setuptools and the rest only run at build
# time), then made again for the standard library alone. The image's root is read-only
# and sets PYTHONDONTWRITEBYTECODE, so a missing cache would be recompiled in every
# process: measured here, the agent starts in ~40 ms with the stdlib cache and ~130 ms
# without, for +12 MB. Cold starts pay that, so the cache stays.
find . -xdev -type d -name __pycache__ -prune -exec rm -rf {} +
# A clean environment: the caller's PYTHON* variables must not reach the chroot.
in_root() { chroot . /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
stdlib="$(in_root python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
say "compiling the byte code of $stdlib"
in_root python3 -m compileall -q "$stdlib" >/dev/null
# Debian's sitecustomize only installs apport's exception hook, and apport is not in the
# image: its failed import searched every sys.path entry at each interpreter start
# (~6 ms of the agent's boot, measured here). The file and its link in the stdlib go.
rm -f etc/python3*/sitecustomize.py usr/lib/python3*/sitecustomize.py
# PEP 668's marker would make `pip3 install` refuse to touch the system Python; this
# image is a dedicated environment, so function requirements go into
# /usr/local/lib/python3.11/dist-packages (site-packages in python:3.12-slim).
rm -f usr/lib/python3*/EXTERNALLY-MANAGED

say "installing the agent at /opt/newt/agent.py"
install -d -m 0755 -o root -g root opt/newt
install -m 0644 -o root -g root "$HERE/agent.py" opt/newt/agent.py

say "adding user newt ($NEWT_UID)"
grep -q "^newt:" etc/group || echo "newt:x:$NEWT_UID:" >> etc/group
grep -q "^newt:" etc/passwd || echo "newt:x:$NEWT_UID:$NEWT_UID:newt function:/tmp:/usr/sbin/nologin" >> etc/passwd
if [[ -f etc/shadow ]] && ! grep -q "^newt:" etc/shadow; then
    echo "newt:*:19000:0:99999:7:::" >> etc/shadow
fi

# Function code is copied here at build time (owned by the function's user, who also
# installs its requirements into .deps); at run time the function only reads it.
install -d -m 0755 -o root -g root app

say "done in $((SECONDS - started)) s: $(du -sh --apparent-size . | cut -f1) in $target"

#!/usr/bin/env bash
# Gets a machine ready for newt's build and tests; `make run`, `make test` (through
# `make guests`) and `.ci/run` start with it, so the README's two commands work on a
# fresh machine:
#
#   scripts/setup.sh              add the wasm32-wasip1 and wasm32-wasip2 targets if
#                                 missing; say at once what else is missing and what
#                                 that disables
#   scripts/setup.sh --install    the same, and install debootstrap with apt-get (CI)
#
# Without the wasm32-wasip1 target nothing builds, so its absence is an error. Without
# debootstrap or a Docker engine newt still runs wasm functions: those are warnings,
# printed here, before the build, not deep in a server log. Without --install this
# installs no system package.
set -euo pipefail
cd "$(dirname "$0")/.."

install=false
case "${1:-}" in
    "") ;;
    --install) install=true ;;
    *) echo "usage: scripts/setup.sh [--install]" >&2; exit 2 ;;
esac

say() { echo "setup: $*" >&2; }

command -v rustc >/dev/null 2>&1 || {
    say "rustc not found: install Rust 1.95 with rustup, then run this again"
    exit 1
}

wasm_target_installed() {
    local libdir
    libdir="$(rustc --print sysroot)/lib/rustlib/wasm32-wasip1/lib"
    [ -d "$libdir" ] && [ -n "$(ls -A "$libdir" 2>/dev/null)" ]
}

# Every Rust function (and the examples `make run` deploys) is built for wasm32-wasip1.
if ! wasm_target_installed; then
    say "the wasm32-wasip1 target is missing: adding it (rustup target add wasm32-wasip1)"
    if ! rustup target add wasm32-wasip1; then
        echo "rustup could not add wasm32-wasip1; unpacking ../shared/toolchain" >&2
        tar -xJf ../shared/toolchain/rust-std-wasm32-wasip1.tar.xz \
            -C "$(rustc --print sysroot)/lib/rustlib"
    fi
    wasm_target_installed || { echo "wasm32-wasip1 target still missing" >&2; exit 1; }
fi

# wasi:http components (`newt bench`'s http-hello, the component tests) are built for
# wasm32-wasip2. Without it only those are skipped, so its absence is a warning.
wasip2_installed() {
    local libdir
    libdir="$(rustc --print sysroot)/lib/rustlib/wasm32-wasip2/lib"
    [ -d "$libdir" ] && [ -n "$(ls -A "$libdir" 2>/dev/null)" ]
}
if ! wasip2_installed; then
    say "the wasm32-wasip2 target is missing: adding it (rustup target add wasm32-wasip2)"
    if ! rustup target add wasm32-wasip2 || ! wasip2_installed; then
        say "WARNING: could not add wasm32-wasip2: wasi:http component tests and the"
        say "  bench's wasmtime-serve row are skipped here (in CI the component tests fail)."
    fi
fi

# The python runtime's base image is built from Debian's packages with debootstrap
# (runtimes/python/rootfs.sh, which also looks in /usr/sbin: not on every user's PATH).
if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
    if $install; then
        say "debootstrap is missing: installing it (apt-get install debootstrap)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
    else
        say "WARNING: debootstrap is missing: python functions will answer 503; wasm works."
        say "  (it builds the python runtime's base image; install it: apt-get install debootstrap)"
    fi
fi

# Container functions run on the Docker engine (DOCKER_HOST, or its default socket).
docker_answers() {
    command -v docker >/dev/null 2>&1 || return 1
    if command -v timeout >/dev/null 2>&1; then
        timeout 20 docker info >/dev/null 2>&1
    else
        docker info >/dev/null 2>&1
    fi
}
if ! docker_answers; then
    if command -v docker >/dev/null 2>&1; then
        why="the Docker engine does not answer (docker info fails)"
    else
        why="there is no Docker (the docker command is not installed)"
    fi
    say "WARNING: $why: python functions will answer 503; wasm works."
    say "  (container functions run on the engine at DOCKER_HOST, or its default socket)"
fi

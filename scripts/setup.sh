#!/usr/bin/env bash
# Everything a fresh Debian machine needs, done idempotently and quickly when already done:
# apt packages, Java for TorchServe's frontend, and a venv with the pinned CPU torch.
# Usage: source scripts/setup.sh   (exports VENV and puts its bin first on PATH)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TSCPU_VENV:-$REPO_DIR/.venv}"
APT_PACKAGES=(apache2-utils libjemalloc2 libgoogle-perftools4 numactl)
# An unpinned torch makes pip fetch the multi-GB CUDA build: always an exact CPU wheel.
# TSCPU_TORCH_SPEC: the torch requirement (default torch==2.13.0, the tested version).
# TSCPU_TORCH_INDEX_URL: where pip takes torch from; unset = pip's own configuration (here it
# resolves torch==2.13.0 to the CPU wheel); elsewhere use https://download.pytorch.org/whl/cpu.
TORCH_SPEC="${TSCPU_TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX_URL="${TSCPU_TORCH_INDEX_URL:-}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    local missing=()
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "setup: installing ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

java_major() {
    # `java -version` prints e.g.: openjdk version "17.0.15" 2025-04-15 (on stderr)
    java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1
}

ensure_java() {
    local major
    major="$(command -v java >/dev/null && java_major || echo 0)"
    if [ "${major:-0}" -lt 11 ]; then
        echo "setup: TorchServe needs Java >= 11 (found: ${major:-none}); installing OpenJDK 17"
        apt_install openjdk-17-jre-headless
        major="$(java_major)"
    fi
    echo "setup: java $major"
}

ensure_venv() {
    local stamp="$VENV/.tscpu-setup-stamp"
    local want
    want="$({ cat "$REPO_DIR/pyproject.toml" "$REPO_DIR/scripts/setup.sh"; echo "$TORCH_SPEC $TORCH_INDEX_URL"; } | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
        return
    fi
    echo "setup: building venv $VENV"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    local log="$VENV/setup-pip.log" constraints="$VENV/torch-constraint.txt"
    local index=()
    [ -n "$TORCH_INDEX_URL" ] && index=(--index-url "$TORCH_INDEX_URL")
    # The constraint keeps every later resolution (the demo's packages ask for torch) on it.
    echo "$TORCH_SPEC" >"$constraints"
    if ! { "$VENV/bin/pip" install -q "${index[@]}" "$TORCH_SPEC" &&
           "$VENV/bin/pip" install -q -c "$constraints" -e "$REPO_DIR[demo,test,bench]"; } \
           >"$log" 2>&1; then
        tail -30 "$log"
        echo "setup: pip install failed (full log: $log)" >&2
        return 1
    fi
    # Only the CPU build: the CUDA build is gigabytes and its CPU kernels are the same.
    if ! "$VENV/bin/python" -c "import torch, sys; sys.exit('+cpu' not in torch.__version__)"; then
        echo "setup: pip resolved $TORCH_SPEC to $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'), not the CPU build." >&2
        echo "setup: set TSCPU_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (and, for" >&2
        echo "setup: another version, TSCPU_TORCH_SPEC=torch==X.Y.Z), remove $VENV and run again." >&2
        return 1
    fi
    echo "$want" > "$stamp"
}

apt_install "${APT_PACKAGES[@]}"
ensure_java
ensure_venv
# What activating the venv sets; TorchServe's run_cpu wrapper (plain `torchserve --start`
# with cpu_launcher_enable=true) looks for lib{tc,je}malloc.so in $VIRTUAL_ENV/lib.
export VIRTUAL_ENV="$VENV"
"$VENV/bin/torchserve-cpu" link-allocators >/dev/null
export VENV
# TorchServe's frontend starts workers (and its launcher probe) with a bare `python`.
export PATH="$VENV/bin:$PATH"

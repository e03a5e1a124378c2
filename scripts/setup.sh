#!/usr/bin/env bash
# Everything a fresh Debian machine needs, done idempotently and quickly when already done:
# apt packages, Java for TorchServe's frontend, and a venv with the pinned CPU torch.
# Usage: source scripts/setup.sh   (exports VENV and puts its bin first on PATH)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TSCPU_VENV:-$REPO_DIR/.venv}"
APT_PACKAGES=(apache2-utils libjemalloc2 libgoogle-perftools4 numactl)
# An unpinned torch makes pip fetch the multi-GB CUDA build: always this exact CPU wheel.
TORCH_PIN="torch==2.13.0"

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
    want="$(cat "$REPO_DIR/pyproject.toml" "$REPO_DIR/scripts/setup.sh" | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
        return
    fi
    echo "setup: building venv $VENV"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    local log="$VENV/setup-pip.log"
    if ! { "$VENV/bin/pip" install -q "$TORCH_PIN" &&
           "$VENV/bin/pip" install -q -e "$REPO_DIR[test,bench]"; } >"$log" 2>&1; then
        tail -30 "$log"
        echo "setup: pip install failed (full log: $log)" >&2
        return 1
    fi
    # Guard against anything above having replaced the CPU torch.
    "$VENV/bin/python" -c "import torch, sys; v = torch.__version__; \
sys.exit(0 if v.startswith('2.13.0') and '+cpu' in v else f'unexpected torch {v}')"
    echo "$want" > "$stamp"
}

apt_install "${APT_PACKAGES[@]}"
ensure_java
ensure_venv
# What activating the venv sets; TorchServe's run_cpu wrapper (plain `torchserve --start`
# with cpu_launcher_enable=true) looks for lib{tc,je}malloc.so in $VIRTUAL_ENV/lib.
export VIRTUAL_ENV="$VENV"
"$VENV/bin/python" -m launcher link-allocators >/dev/null
export VENV
# TorchServe's frontend starts workers (and its launcher probe) with a bare `python`.
export PATH="$VENV/bin:$PATH"

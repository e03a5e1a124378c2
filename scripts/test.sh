#!/usr/bin/env bash
# README command 2: set up (idempotent), then run the whole test suite (unit, integration, e2e).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
apt_install shellcheck
# tests/e2e/test_container.py: a container engine (podman, runc, debootstrap on Debian);
# without one that test skips, naming why
bash scripts/container.sh setup || echo "test: no container engine installed (see above)"

# checkov (the manifests' security rules) pins packaging<24 and an old networkx, which
# would break the main venv: it gets a venv of its own, cached outside the repo.
CHECKOV_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/torchserve-cpu/checkov"
if [ ! -x "$CHECKOV_VENV/bin/checkov" ]; then
    echo "test: installing checkov into $CHECKOV_VENV"
    python3 -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/pip" install -q "checkov>=3.2,<4" >"$CHECKOV_VENV.log" 2>&1 || {
        tail -20 "$CHECKOV_VENV.log"
        echo "test: checkov install failed (log: $CHECKOV_VENV.log)" >&2
        exit 1
    }
fi
export TSCPU_CHECKOV="$CHECKOV_VENV/bin/checkov"

"$VENV/bin/ruff" check handlers launcher model_store benchmarks tests scripts
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"

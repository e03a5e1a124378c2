#!/usr/bin/env bash
# README command 2: set up (idempotent), then run the whole test suite (unit, integration, e2e).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
"$VENV/bin/ruff" check handlers launcher model_store benchmarks tests scripts
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"

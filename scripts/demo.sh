#!/usr/bin/env bash
# README command 1: set up (idempotent), then serve ResNet-50 on pinned workers and drive it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec "$VENV/bin/python" scripts/demo.py "$@"

#!/usr/bin/env bash
# Mutation testing of the core modules against the unit tests (README, tests section):
#   bash scripts/mutation.sh                  # the launcher part
#   bash scripts/mutation.sh handlers         # another part named in [tool.mutmut]
# Options: --max-children N (default 1), --keep DIR, --out FILE, --fail-under PCT.
# mutmut runs in a temporary staging folder (scripts/mutation.py says why), deleted
# afterwards: nothing is left in the checkout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec "$VENV/bin/python" scripts/mutation.py "$@"

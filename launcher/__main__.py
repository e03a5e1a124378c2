"""`torchserve-cpu ...`: see launcher.cli."""

from __future__ import annotations

import sys

from torchserve_cpu.launcher.cli import main

if __name__ == "__main__":
    sys.exit(main())

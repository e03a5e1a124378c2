"""`SysRoot`: the folder that stands for "/" when reading host facts.

procfs and sysfs read every file through it, so tests point them at a saved /proc and
/sys tree (psutil's habit) instead of mocking calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SysRoot:
    """A filesystem root holding `sys/` and `proc/` (normally "/")."""

    root: Path = Path("/")

    def read(self, relative: str) -> str | None:
        """Stripped file text, or None when the file does not exist or is unreadable."""
        try:
            return (self.root / relative.lstrip("/")).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None

    def read_bytes(self, relative: str) -> bytes | None:
        """File bytes (e.g. NUL-separated /proc/<pid>/environ), or None like `read`."""
        try:
            return (self.root / relative.lstrip("/")).read_bytes()
        except OSError:
            return None

    def readlink(self, relative: str) -> Path | None:
        try:
            return (self.root / relative.lstrip("/")).readlink()
        except OSError:
            return None

    def listdir(self, relative: str) -> list[str]:
        try:
            return sorted(p.name for p in (self.root / relative.lstrip("/")).iterdir())
        except OSError:
            return []

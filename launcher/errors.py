"""The one exception type the launcher raises for a user's mistake."""

from __future__ import annotations


class LauncherError(ValueError):
    """A bad setting (config key, launcher flag, topology) with a message naming it.

    A ValueError so callers that already treat bad values as user errors keep working;
    only `launcher.cli` (the `torchserve-cpu` command) turns it into an exit code.
    """

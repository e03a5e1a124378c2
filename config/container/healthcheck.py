"""The image's HEALTHCHECK: GET TorchServe's /ping; exit 0 when it answers 200.

Usage: python healthcheck.py [URL]   (default http://127.0.0.1:8080/ping)

With token authorization on (TorchServe's default) /ping needs the inference key, which
TorchServe writes to key_file.json in its working directory at start-up and lets expire
after token_expiration_min minutes. This check sends that key; when it has expired it asks
the management API for a new one with the API key (which does not expire), as TorchServe
documents for clients, so the check does not fail an hour after start-up. Clients read the
new key from the same file. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

PING_URL = "http://127.0.0.1:8080/ping"
MANAGEMENT_URL = os.environ.get("TSCPU_MANAGEMENT_URL", "http://127.0.0.1:8081")
KEY_FILE = Path(os.environ.get("TSCPU_KEY_FILE", "key_file.json"))
TIMEOUT_S = 5.0


def get(url: str, key: str | None) -> int:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def expired(entry: dict) -> bool:
    text = entry.get("expiration time", "")  # Java's Instant: nanoseconds, "Z"
    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return False
    return when <= datetime.now(timezone.utc)


def inference_key() -> str | None:
    """The inference key from key_file.json, renewed first when it has expired;
    None when token authorization is off (no key file)."""
    try:
        keys = json.loads(KEY_FILE.read_text())
    except (OSError, ValueError):
        return None
    entry = keys.get("inference", {})
    if expired(entry):
        get(f"{MANAGEMENT_URL}/token?type=inference", keys.get("API", {}).get("key"))
        try:
            entry = json.loads(KEY_FILE.read_text()).get("inference", {})
        except (OSError, ValueError):
            return None
    return entry.get("key")


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else PING_URL
    try:
        status = get(url, inference_key())
    except OSError as error:  # refused, timed out: the frontend is not (yet) listening
        print(f"{url}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"{url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

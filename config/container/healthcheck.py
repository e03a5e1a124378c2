"""The image's health checks, as the container engine and the kubelet run them.

Usage:
  python healthcheck.py [URL]             liveness (the image's HEALTHCHECK): exit 0 when
                                          TorchServe's /ping answers 200
  python healthcheck.py --ready [URL]     readiness: /ping answers 200, every model has
                                          its minimum of workers with the model loaded,
                                          and no stop has begun (no drain file)
  python healthcheck.py --drain SECONDS   the pod's preStop hook: write the drain file, so
                                          readiness fails, then wait SECONDS while requests
                                          still arriving are served; SIGTERM comes after

(URL default http://127.0.0.1:8080/ping.) /ping alone does not say the models are loaded:
TorchServe 0.12 opens its APIs while workers are still loading, and counts a worker that
is still loading as healthy. Readiness therefore also asks the management API for every
model's minWorkers and workers, and the metrics API for TorchServe's WorkerLoadTime, which
the frontend records for a worker once its model is loaded (metrics_mode=prometheus, as
in the image's and the pods' configs; $TSCPU_MANAGEMENT_URL, $TSCPU_METRICS_URL when they
listen elsewhere). The drain file is `draining` in the working directory
($TSCPU_DRAIN_FILE), next to key_file.json: a new container starts without it.

With token authorization on (TorchServe's default) /ping needs the inference key and the
management API the management key, which TorchServe writes to key_file.json in its
working directory at start-up and lets expire after token_expiration_min minutes. This
check sends them; when one has expired it asks the management API for a new one with the
API key (which does not expire), as TorchServe documents for clients, so the check does
not fail an hour after start-up. Clients read the new keys from the same file. Standard
library only.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

PING_URL = "http://127.0.0.1:8080/ping"
MANAGEMENT_URL = os.environ.get("TSCPU_MANAGEMENT_URL", "http://127.0.0.1:8081")
METRICS_URL = os.environ.get("TSCPU_METRICS_URL", "http://127.0.0.1:8082")
KEY_FILE = Path(os.environ.get("TSCPU_KEY_FILE", "key_file.json"))
DRAIN_FILE = Path(os.environ.get("TSCPU_DRAIN_FILE", "draining"))
TIMEOUT_S = 5.0
LOADED_METRIC = re.compile(r'^WorkerLoadTime\{.*WorkerName="([^"]+)"', re.MULTILINE)


def fetch(url: str, key: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def get(url: str, key: str | None) -> int:
    return fetch(url, key)[0]


def expired(entry: dict) -> bool:
    text = entry.get("expiration time", "")  # Java's Instant: nanoseconds, "Z"
    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return False
    return when <= datetime.now(timezone.utc)


def api_key(kind: str) -> str | None:
    """The `kind` key ("inference" or "management") from key_file.json, renewed first when
    it has expired; None when token authorization is off (no key file)."""
    try:
        keys = json.loads(KEY_FILE.read_text())
    except (OSError, ValueError):
        return None
    entry = keys.get(kind, {})
    if expired(entry):
        get(f"{MANAGEMENT_URL}/token?type={kind}", keys.get("API", {}).get("key"))
        try:
            entry = json.loads(KEY_FILE.read_text()).get(kind, {})
        except (OSError, ValueError):
            return None
    return entry.get("key")


def inference_key() -> str | None:
    return api_key("inference")


def management_json(path: str, key: str | None) -> object:
    status, body = fetch(f"{MANAGEMENT_URL}{path}", key)
    if status != 200:
        raise OSError(f"{MANAGEMENT_URL}{path}: HTTP {status}")
    return json.loads(body)


def models_not_loaded() -> str | None:
    """Why some model has fewer loaded workers than its minWorkers; None when none has.
    A worker counts when the management API lists it READY (connected) and the frontend
    has recorded its WorkerLoadTime (its model is loaded)."""
    key = api_key("management")
    status, body = fetch(f"{METRICS_URL}/metrics", None)
    if status != 200:
        return f"{METRICS_URL}/metrics: HTTP {status}"
    loaded = set(LOADED_METRIC.findall(body.decode(errors="replace")))
    listing = management_json("/models?limit=1000", key)
    for entry in listing.get("models", []):
        name = entry["modelName"]
        for model in management_json(f"/models/{urllib.parse.quote(name)}", key):
            version = model.get("modelVersion", "")
            ready = [worker for worker in model.get("workers", [])
                     if worker.get("status") == "READY"
                     and f"W-{worker['id']}-{name}_{version}" in loaded]
            if len(ready) < model.get("minWorkers", 0):
                return (f"model {name}: {len(ready)} of {model['minWorkers']} workers have "
                        "their model loaded")
    return None


def drain(seconds: float) -> int:
    """preStop: readiness fails from now on; TorchServe keeps serving for `seconds`."""
    DRAIN_FILE.write_text(f"stopping since {datetime.now(timezone.utc).isoformat()}\n")
    time.sleep(seconds)
    return 0


def main(argv: list[str]) -> int:
    args = argv[1:]
    if args[:1] == ["--drain"]:
        return drain(float(args[1]) if len(args) > 1 else 0.0)
    ready = args[:1] == ["--ready"]
    if ready:
        args = args[1:]
        if DRAIN_FILE.exists():
            print(f"not ready: stopping ({DRAIN_FILE} exists)", file=sys.stderr)
            return 1
    url = args[0] if args else PING_URL
    try:
        status = get(url, inference_key())
        if status != 200:
            print(f"{url}: HTTP {status}", file=sys.stderr)
            return 1
        missing = models_not_loaded() if ready else None
    except (OSError, ValueError, KeyError) as error:  # refused, timed out, not JSON
        print(f"{url}: {error}", file=sys.stderr)
        return 1
    if missing:
        print(f"not ready: {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env bash
# The torchserve-cpu image's entrypoint: TorchServe in the foreground, workers pinned.
#
#   docker run IMAGE                          serve $TS_CONFIG_FILE, models from $TSCPU_MODEL_STORE
#   docker run IMAGE --models resnet50.mar    options go to `torchserve-cpu serve` (and torchserve)
#   docker run IMAGE torchserve-cpu doctor    anything else runs as a command
#
# `exec` replaces this shell, so the container's SIGTERM reaches `torchserve-cpu serve`
# itself: it stops TorchServe and exits with the frontend's status (143 after SIGTERM).
set -euo pipefail

export TS_CONFIG_FILE="${TS_CONFIG_FILE:-/home/model-server/config.properties}"
model_store="${TSCPU_MODEL_STORE:-/models}"

if [[ $# -gt 0 && $1 != -* ]]; then
    exec "$@"
fi
exec torchserve-cpu serve --ts-config "$TS_CONFIG_FILE" --model-store "$model_store" "$@"

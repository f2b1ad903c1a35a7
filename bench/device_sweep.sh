#!/usr/bin/env bash
# Run a tunelab sweep with real pretrained weights on the GPU machine (see bench/device_assets.py).
#
# Steps, each a `run` call on the device machine (calls must follow each other while it is warm):
#   1. once per part:  carry .device-carry/stage/part-NNN, then
#        mkdir -p /tmp/stage && cp .device-carry/stage/part-* /tmp/stage/
#   2. bash bench/device_sweep.sh SWEEP.yaml [sweep options ...]
# It unpacks the parts into /tmp/tunelab-home (once), installs the carried wheels (pydantic is
# not on that machine), runs the sweep into /tmp/sweep (resumable: call again to continue) and
# copies the sweep folder, without model weights, to $OUT/sweep.tar.gz.
set -euo pipefail
export TUNELAB_HOME=/tmp/tunelab-home
if [ ! -d "$TUNELAB_HOME/models" ]; then
    cat /tmp/stage/part-* | tar -xz -C /tmp
fi
if [ ! -d /tmp/site/pydantic ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$TUNELAB_HOME"/whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
sweep="$1"; shift
status=0
python3 -m tunelab.cli sweep "$sweep" --output-dir /tmp/sweep "$@" || status=$?
tar -C /tmp -czf "$OUT/sweep.tar.gz" sweep
exit $status

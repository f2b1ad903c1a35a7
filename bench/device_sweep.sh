#!/usr/bin/env bash
# Run a tunelab sweep with real pretrained weights on the GPU machine.
#
# The device machine has no weights and takes 64 MiB per call, so the assets travel in parts:
#   .venv/bin/python bench/device_assets.py --out /tmp/stage --models mpnet-base \
#       --datasets sms-spam tweet-sentiment bbc-news --wheels .whl --part-mib 1000
#   a bundle folder holding home.tar.gz (that one part), optionally a model's .gguf and its
#   ASSET.json as NAME.ASSET.json, is tarred and split: tar -cf - . | split -b 60M -d -a 2 - PARTS/part-
# Steps, each a `run` call on the device machine (calls must follow each other while it is warm):
#   1. once per part: carry .device-carry/bundle/part-NN, then
#        mkdir -p /tmp/bundle && cp .device-carry/bundle/part-* /tmp/bundle/
#   2. bash bench/device_sweep.sh SWEEP.yaml [sweep options ...]
# It unpacks the parts (once): home.tar.gz into /tmp/tunelab-home, and each carried GGUF is
# converted by tunelab into the asset folder its ASSET.json names (the dequantised weights are
# the ones `tunelab assets install` builds), installs the carried wheels (pydantic is not on that
# machine), runs the sweep into /tmp/sweeps/NAME (resumable: call again to continue) and copies
# its results (json, csv, md, logs; no weights, checkpoints or exported models) to
# $OUT/NAME.tar.gz. SWEEP_SECONDS=N stops the sweep (SIGINT) after N seconds, so that the results
# made so far still come back inside the call's limit.
set -euo pipefail
export TUNELAB_HOME=/tmp/tunelab-home
if [ ! -d "$TUNELAB_HOME/models" ]; then
    mkdir -p /tmp/bundle-x
    cat /tmp/bundle/part-* | tar -x -C /tmp/bundle-x
    tar -xzf /tmp/bundle-x/home.tar.gz -C /tmp
fi
if [ ! -d /tmp/site/pydantic ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$TUNELAB_HOME"/whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1
for manifest in /tmp/bundle-x/*.ASSET.json; do
    [ -e "$manifest" ] || continue
    name=$(basename "$manifest" .ASSET.json)
    if [ ! -d "$TUNELAB_HOME/models/$name" ]; then
        gguf=$(ls /tmp/bundle-x/*.gguf | head -1)
        folder=$(python3 -c "import sys; from pathlib import Path; from tunelab.assets.store import install_gguf_file; print(install_gguf_file(Path(sys.argv[1])))" "$gguf" | tail -1)
        mv "$folder" "$TUNELAB_HOME/models/$name"
        cp "$manifest" "$TUNELAB_HOME/models/$name/ASSET.json"
    fi
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
sweep="$1"; shift
name=$(basename "$sweep" .yaml)
status=0
timeout -s INT "${SWEEP_SECONDS:-86400}" python3 -m tunelab.cli sweep "$sweep" --output-dir "/tmp/sweeps/$name" "$@" || status=$?
(cd /tmp/sweeps && find "$name" -type f \( -name "*.json" -o -name "*.jsonl" -o -name "*.md" -o -name "*.csv" -o -name "*.log" -o -name "*.yaml" \) ! -path "*/model/*" ! -path "*/adapter/*" ! -path "*/checkpoint*" ! -name "tokenizer*.json" | tar -czf "$OUT/$name.tar.gz" -T -)
ls -la "$OUT"
exit $status

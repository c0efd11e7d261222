#!/usr/bin/env bash
# Issue 15: training on an image folder streamed from disk against the same images held in memory.
# Writes Fashion-MNIST's 60,000 training images (and its 10,000 test images, under test/) as PNG files in
# class folders once, then times gradloop's CNN on them both ways and prints the table: samples/s each way,
# the paired ratio streamed / in memory, each way's peak RSS (each in a process of its own), the decoded
# images' size, the model's footprint and the baseline RSS of a process with TensorFlow and the model only.
# Usage: bash benchmarks/streaming.sh [extra gradloop bench flags, e.g. --batch-size 32,128 --json]
#        FASHION_PNG=DIR chooses the folder (default /tmp/fashion-png); the IDX files come from
#        apt-get install dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
folder="${FASHION_PNG:-/tmp/fashion-png}"
if [[ ! -e "$folder/.complete" ]]; then  # written last: a folder left half-made by an interrupted run is made again
    .venv/bin/python benchmarks/make_image_folders.py "$folder"
    touch "$folder/.complete"
fi
echo "uptime before the bench: $(uptime)" >&2
set -x
exec .venv/bin/gradloop bench --data "$folder" --model cnn --batch-size 128 --seconds 10 --rounds 5 "$@"

#!/usr/bin/env bash
# Training throughput of the reference MLP at batch 32 and 256: the table for issue 3.
# Usage: bash benchmarks/throughput.sh [extra gradloop bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/gradloop bench --batch-size 32,256 --seconds 2 --rounds 7 --variants "eager,tf.function,keras spe=1,keras spe=32,gradloop,gradloop --jit" "$@"

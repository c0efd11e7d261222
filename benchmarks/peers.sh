#!/usr/bin/env bash
# gradloop against its peers (issue 19): Keras fit on TensorFlow and on JAX, a jax.jit step, the same step run 32 at
# a time by jax.lax.scan, and a PyTorch loop, on Fashion-MNIST's 50,000 training images (all ten classes): the
# reference MLP at batch 32 and 256, bench's CNN at batch 128. The peers need their packages: pip install -e '.[peers]'.
# The CNN's rounds are longer (10 s): its rate swings most from round to round on this machine. 9 rounds
# (about 30 minutes): where two loops are within a few per cent, 5 left the median ratio to the noise.
# Usage: bash benchmarks/peers.sh [extra gradloop bench flags, e.g. --json]
set -euo pipefail
cd "$(dirname "$0")/.."
common=(--dataset fashion_mnist --classes all --variants "keras spe=1,keras spe=32,gradloop" --peers --rounds 9)
.venv/bin/gradloop bench "${common[@]}" --seconds 3 --batch-size 32,256 "$@"
.venv/bin/gradloop bench "${common[@]}" --seconds 10 --model cnn --batch-size 128 "$@"

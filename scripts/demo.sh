#!/usr/bin/env bash
# The main job on a fresh machine: train a small CNN on Fashion-MNIST, quantize it to int8,
# generate the C firmware sources, and prove them bit-exact in the host emulator over the
# whole 10,000-image test set. Outputs go to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=out/demo
mkdir -p "$OUT"
edgejpq train    --model zoo:cnn --data fashion-mnist --epochs 3 -o "$OUT/float.pt"
edgejpq export   --model "$OUT/float.pt" --plan uniform:8 --data fashion-mnist -o "$OUT/cnn.ejq"
edgejpq generate "$OUT/cnn.ejq" -o "$OUT/firmware"
make -s -C "$OUT/firmware" test
edgejpq emulate  "$OUT/cnn.ejq" --data fashion-mnist

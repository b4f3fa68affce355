#!/usr/bin/env bash
# The main job on a fresh machine: on Fashion-MNIST, pre-train a small CNN, search which channels
# to prune and which of 2, 4 or 8 bits each keeps to fit a 24 KiB flash budget (weights, constants
# and the kernels' code, as linked: the search also decides which kernel widths to link) on
# the default Cortex-M4 target, generate the C firmware sources, run their golden self-test, prove
# them bit-exact in the host emulator over the whole 10,000-image test set, then cross-compile them
# for the Cortex-M4 and run 200 images in QEMU (bit-exact, and the linked flash against the budget).
# Outputs go to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=out/demo
mkdir -p "$OUT"
edgejpq search   --target cortex-m4 --model zoo:cnn --data fashion-mnist --flash 24KiB \
                 --pretrain-epochs 2 --epochs 2 --finetune-epochs 1 -o "$OUT/run"
edgejpq generate "$OUT/run/model.ejq" -o "$OUT/firmware"
make -s -C "$OUT/firmware" test
edgejpq emulate  "$OUT/run/model.ejq" --data fashion-mnist
edgejpq emulate  "$OUT/run/model.ejq" --data fashion-mnist --qemu --target cortex-m4 --limit 200

#!/usr/bin/env bash
# The main job on a fresh machine: on Fashion-MNIST, pre-train a small CNN, search which channels
# to prune to fit a 24 KiB flash budget (weights, constants and the kernels' code, as linked) on
# the default Cortex-M4 target, generate the C firmware sources, run their golden self-test, prove
# them bit-exact in the host emulator over the whole 10,000-image test set, then cross-compile them
# for the Cortex-M4 and run 200 images in QEMU (bit-exact, and the linked flash against the budget).
# Outputs go to out/demo/. One bit-width (--bits 4): each width a plan uses links 8-10 KB of DSP
# kernels on this target, more than this model's weights (README: Search).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=out/demo
mkdir -p "$OUT"
edgejpq search   --target cortex-m4 --model zoo:cnn --data fashion-mnist --flash 24KiB --bits 4 \
                 --pretrain-epochs 2 --epochs 2 --finetune-epochs 1 -o "$OUT/run"
edgejpq generate "$OUT/run/model.ejq" -o "$OUT/firmware"
make -s -C "$OUT/firmware" test
edgejpq emulate  "$OUT/run/model.ejq" --data fashion-mnist
edgejpq emulate  "$OUT/run/model.ejq" --data fashion-mnist --qemu --target cortex-m4 --limit 200

#!/usr/bin/env bash
# Install everything edgejpq needs on a fresh Debian 12 machine; safe to run again (idempotent).
#   apt: host C compiler and make, Debian's Fashion-MNIST data set
#   pip: a virtual environment in .venv with torch pinned to the CPU build 2.13.0 and edgejpq
#        installed non-editable (so the installed package, not the checkout, is what runs), with
#        its dev and tflite extras
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_PACKAGES="gcc libc6-dev make dataset-fashion-mnist gcc-arm-none-eabi libnewlib-arm-none-eabi binutils-arm-none-eabi qemu-system-arm"
if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then APT_PACKAGES="$APT_PACKAGES python3-venv"; fi
missing=""
for pkg in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "setup: installing apt packages:$missing"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" >/dev/null 2>&1; then
  echo "setup: installing torch==2.13.0 (CPU)"
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
echo "setup: installing edgejpq"
.venv/bin/python -m pip install -q --force-reinstall --no-deps . >/dev/null
# dev tools and the tflite extra (tensorflow-cpu, ai-edge-litert: TFLite import and the interpreter
# reference, ~1.4 GB, ~30 s); torch stays at the pinned CPU build (2.13.0 satisfies ==2.13.0)
.venv/bin/python -m pip install -q ".[dev,tflite]" "torch==2.13.0"

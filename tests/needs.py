"""Programs a test tier needs: missing ones skip the tier on a developer machine and fail it in CI."""

from __future__ import annotations

import os
import shutil

import pytest

ARM_AND_QEMU = ("arm-none-eabi-gcc", "arm-none-eabi-nm", "arm-none-eabi-size", "arm-none-eabi-objcopy",
                "qemu-system-arm", "cc", "make")
HINT = ("install gcc-arm-none-eabi, libnewlib-arm-none-eabi, binutils-arm-none-eabi, qemu-system-arm, gcc and make "
        "(scripts/setup.sh does)")


def need_programs(programs: tuple[str, ...] = ARM_AND_QEMU) -> None:
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        message = f"{', '.join(missing)} not on PATH: {HINT}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must have them: {message}")
        pytest.skip(message)

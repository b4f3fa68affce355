"""Board support around a generated model: the QEMU test harness and projects for real boards.

Everything C lives in firmware_templates/boards/: `cortex-m/` (start-up and linker script shared by
every board), `qemu/` (the semihosting harness and the QEMU machines' memory) and one folder per
real board (see `generate_board_project`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from edgejpq.artifact import QuantizedModel
from edgejpq.errors import EdgejpqError
from edgejpq.resources import templates_dir

from codegen.env import render
from codegen.lower import ModelContext, lower_model

QEMU_STACK_BYTES = 64 * 1024
QEMU_OUT_BUFFER_BYTES = 4096
STARTUP_SOURCE = "startup.c"
QEMU_FILES = ("harness.c", "ejq_semihost.h", STARTUP_SOURCE, "link.ld")


@dataclass(frozen=True)
class Region:
    """One memory region of a linker script."""

    name: str
    base: int
    size: int


@lru_cache(maxsize=None)
def _qemu_machines() -> dict[str, Any]:
    path = templates_dir() / "boards" / "qemu" / "machines.yaml"
    return yaml.safe_load(path.read_text())


def qemu_memory(machine: str, flash_base: int, ram_base: int) -> tuple[Region, Region]:
    """The flash-like and RAM regions the harness links into on a QEMU machine."""
    machines = _qemu_machines()
    if machine not in machines:
        raise EdgejpqError(f"QEMU machine {machine!r} has no memory description in "
                           f"firmware_templates/boards/qemu/machines.yaml (known: {', '.join(sorted(machines))})")
    sizes = machines[machine]
    return (Region("code RAM", flash_base, int(sizes["flash_bytes"])),
            Region("RAM", ram_base, int(sizes["ram_bytes"])))


def _copy_startup(out_dir: Path) -> None:
    shutil.copyfile(templates_dir() / "boards" / "cortex-m" / STARTUP_SOURCE, out_dir / STARTUP_SOURCE)


def write_qemu_harness(model: QuantizedModel, name: str, kernels: str, machine: str, flash_base: int,
                       ram_base: int, out_dir: Path) -> ModelContext:
    """Write the QEMU harness (main, semihosting, start-up, linker script) for model `name` into out_dir."""
    ctx = lower_model(model, name, kernels)
    flash, ram = qemu_memory(machine, flash_base, ram_base)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "harness.c").write_text(render("boards/qemu/harness.c.j2", m=ctx,
                                              out_buffer_bytes=max(QEMU_OUT_BUFFER_BYTES, ctx.output.size)))
    shutil.copyfile(templates_dir() / "boards" / "qemu" / "ejq_semihost.h", out_dir / "ejq_semihost.h")
    _copy_startup(out_dir)
    (out_dir / "link.ld").write_text(render("boards/cortex-m/link.ld.j2", what=f"QEMU {machine}", flash=flash,
                                            ram=ram, stack_bytes=QEMU_STACK_BYTES))
    return ctx

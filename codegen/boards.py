"""Board support around a generated model: the QEMU test harness and projects for real boards.

Everything C lives in firmware_templates/boards/: `cortex-m/` (start-up and linker script shared by
every board), `qemu/` (the semihosting harness and the QEMU machines' memory) and one folder per
real board (see `generate_board_project`): its `board.yaml` (chip, core, memory map, reset
clock, console UART, OpenOCD target) and its `ejq_board.c.j2` (clock and UART bring-up). A board
belongs to the shipped target whose `boards:` list names it; that target gives the compiler flags and
kernel set.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from edgejpq.artifact import QuantizedModel, atomic_write_bytes
from edgejpq.cost.target import CORE_EXTENSIONS, Address, FlashInfo, PositiveInt, TargetSpec, Text, list_targets
from edgejpq.emulate.qemu import LINK_FLAGS, WARNING_FLAGS, cross_prefix
from edgejpq.errors import EdgejpqError
from edgejpq.resources import templates_dir

from codegen.env import render
from codegen.generate import MARKER, generate_sources, write_output_folder
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


# --------------------------------------------------------------------------- serial harness

SERIAL_BAUD = 115200
SERIAL_UNITS = ("harness.c", STARTUP_SOURCE, "ejq_board.c", "ejq_cycles.c")
SERIAL_SHARED_FILES = ("ejq_board.h", "ejq_cycles.h", "ejq_cycles.c")  # from boards/cortex-m/, as board projects


def qemu_uart(machine: str) -> dict[str, int]:
    """The CMSDK UART (base address, receive interrupt, clock) QEMU connects its first -serial to."""
    qemu_memory(machine, 0, 0)  # names the machines that exist if this one does not
    uart = _qemu_machines()[machine].get("uart")
    if not uart:
        raise EdgejpqError(f"QEMU machine {machine!r} has no uart in firmware_templates/boards/qemu/machines.yaml: "
                           f"the serial harness cannot run on it")
    return {key: int(uart[key]) for key in ("base", "rx_irq", "clock_hz")}


def _render_serial_harness(model: QuantizedModel, ctx: ModelContext, target: str, board: str, clock_hz: int) -> str:
    """The serial harness's C: protocol constants and the HELLO payload from edgejpq.serial.protocol."""
    from edgejpq.serial.protocol import encode_hello, model_hello, template_constants

    hello = model_hello(model, target=target, board=board, clock_hz=clock_hz)
    return render("boards/serial/harness.c.j2", m=ctx, p=template_constants(), board=board,
                  max_payload=hello.max_payload, hello_payload=encode_hello(hello))


def write_serial_harness(model: QuantizedModel, name: str, kernels: str, machine: str, flash_base: int,
                         ram_base: int, out_dir: Path, *, target: str, clock_hz: int,
                         baud: int = SERIAL_BAUD) -> ModelContext:
    """Write the serial-protocol harness (edgejpq.serial) with the CMSDK UART of QEMU `machine` as its board.

    The harness needs only ejq_board.h (UART bytes) and ejq_cycles.h, so the same file runs on a
    board project's ejq_board.c; the HELLO it sends names
    `target`, the board (`qemu:<machine>`) and `clock_hz`.
    """
    ctx = lower_model(model, name, kernels)
    flash, ram = qemu_memory(machine, flash_base, ram_base)
    uart = qemu_uart(machine)
    board = f"qemu:{machine}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "harness.c").write_text(_render_serial_harness(model, ctx, target, board, clock_hz))
    (out_dir / "ejq_board.c").write_text(render("boards/qemu/ejq_board_cmsdk.c.j2", m=ctx, board=board, uart=uart,
                                                baud=baud))
    for file_name in SERIAL_SHARED_FILES:
        shutil.copyfile(templates_dir() / "boards" / "cortex-m" / file_name, out_dir / file_name)
    _copy_startup(out_dir)
    (out_dir / "link.ld").write_text(render("boards/cortex-m/link.ld.j2", what=f"QEMU {machine} (serial harness)",
                                            flash=flash, ram=ram, stack_bytes=QEMU_STACK_BYTES))
    return ctx


# --------------------------------------------------------------------------- real boards

BOARD_FILE = "board.yaml"
BOARD_SOURCE_TEMPLATE = "ejq_board.c.j2"
MODEL_FOLDER = "model"
SHARED_BOARD_FILES = ("ejq_board.h", "ejq_cycles.h", "ejq_cycles.c", STARTUP_SOURCE)
BOARD_SOURCES = ("main.c", "ejq_board.c", "ejq_cycles.c", STARTUP_SOURCE)
# How each core counts cycles (firmware_templates/boards/cortex-m/ejq_cycles.c); others have the DWT.
_SYSTICK_CORES = {"cortex-m0plus": "a Cortex-M0+ has no DWT cycle counter"}
_DWT = "the DWT cycle counter (DWT->CYCCNT at 0xE0001004, started with DEMCR.TRCENA and DWT->CTRL.CYCCNTENA)"

_STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class MemorySpan:
    __pydantic_config__ = _STRICT
    base: Address
    bytes: PositiveInt


@dataclass(frozen=True)
class BoardMemory:
    __pydantic_config__ = _STRICT
    flash: MemorySpan
    ram: MemorySpan


@dataclass(frozen=True)
class BoardClock:
    __pydantic_config__ = _STRICT
    source: Text  # the oscillator the core runs from (the reset clock: no PLL)
    hz: PositiveInt


@dataclass(frozen=True)
class BoardConsole:
    __pydantic_config__ = _STRICT
    uart: Text
    tx: Text
    rx: Text
    baud: PositiveInt
    note: Text  # what the UART is wired to, e.g. the debug probe's virtual COM port


@dataclass(frozen=True)
class BoardSpec:
    """A real board: `firmware_templates/boards/<name>/board.yaml`. Read it with `load_board`."""

    __pydantic_config__ = _STRICT
    schema_version: Literal[1]
    name: Text
    vendor_board: Text
    chip: Text
    core: Text
    memory: BoardMemory
    stack_bytes: PositiveInt
    clock: BoardClock
    console: BoardConsole
    openocd_target: Text
    includes: tuple[Text, ...] = ()  # extra files under firmware_templates/boards/ the board's C includes
    bring_up: str = ""  # template of ejq_board.c under firmware_templates/boards/ (default <name>/ejq_board.c.j2)
    mfpu: str = ""  # the chip's FPU when it differs from the target's -mfpu (e.g. single precision only)

    @property
    def bring_up_template(self) -> str:
        return self.bring_up or f"{self.name}/{BOARD_SOURCE_TEMPLATE}"

    def cflags(self, target: TargetSpec) -> tuple[str, ...]:
        """The target's compiler flags, with this chip's -mfpu where the board names one."""
        if not self.mfpu:
            return target.compiler.cflags
        return tuple(f"-mfpu={self.mfpu}" if flag.startswith("-mfpu=") else flag for flag in target.compiler.cflags)

    @property
    def flash(self) -> Region:
        return Region("flash", self.memory.flash.base, self.memory.flash.bytes)

    @property
    def ram(self) -> Region:
        return Region("RAM", self.memory.ram.base, self.memory.ram.bytes)

    @property
    def clock_text(self) -> str:
        return f"{self.clock.hz / 1e6:g} MHz {self.clock.source}"

    @property
    def cycle_counter(self) -> str:
        why = _SYSTICK_CORES.get(self.core)
        if why is None:
            return _DWT
        return f"SysTick (core clock, 24 bits, extended to 32 by counting its wrap interrupts): {why}"


_BOARD_ADAPTER = TypeAdapter(BoardSpec)


@dataclass(frozen=True)
class BoardProject:
    """What generate_board_project wrote: file names are relative to out_dir."""

    board: str
    target: str
    name: str
    out_dir: Path
    files: tuple[str, ...]
    kernels: str

    @property
    def elf(self) -> Path:
        """The image `make -C out_dir` builds."""
        return self.out_dir / "build" / f"{self.name}.elf"


def _boards_root() -> Path:
    return templates_dir() / "boards"


def board_names() -> tuple[str, ...]:
    """The boards edgejpq can write a firmware project for (folders holding a board.yaml)."""
    return tuple(sorted(p.parent.name for p in _boards_root().glob(f"*/{BOARD_FILE}")))


@lru_cache(maxsize=None)
def load_board(name: str) -> BoardSpec:
    """A board by name, validated; an unknown name is refused listing the known boards."""
    known = board_names()
    if name not in known:
        raise EdgejpqError(f"unknown board {name!r}: known boards are {', '.join(known)}")
    path = _boards_root() / name / BOARD_FILE
    try:
        data = yaml.safe_load(path.read_text())
        spec = _BOARD_ADAPTER.validate_python(data)
    except yaml.YAMLError as exc:
        raise EdgejpqError(f"{path}: YAML syntax error: {exc}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        raise EdgejpqError(f"{path}: key {key}: {error['msg']}; reinstall edgejpq if you did not edit it") from None
    if spec.name != name:
        raise EdgejpqError(f"{path}: key name: {spec.name!r} differs from the folder name {name!r}")
    if spec.core not in CORE_EXTENSIONS:
        raise EdgejpqError(f"{path}: key core: unknown core {spec.core!r} (known: {', '.join(CORE_EXTENSIONS)})")
    return spec


def board_target(board: BoardSpec) -> TargetSpec:
    """The shipped target whose `boards:` list names the board (its flags, kernels, flash notes)."""
    for target in list_targets():
        if any(entry.name == board.name for entry in target.boards):
            if target.core != board.core:
                raise EdgejpqError(f"{target.where}: key boards: lists board {board.name} ({board.chip}, a "
                                   f"{board.core}) but the target is a {target.core}")
            return target
    raise EdgejpqError(f"board {board.name} is listed under `boards:` of no shipped target: add it to the target "
                       f"file of its core ({board.core})")


def _resolve_target(board: BoardSpec, target: TargetSpec | None) -> tuple[TargetSpec, FlashInfo]:
    """The target to build with (default: the board's own) and the board's flash notes."""
    own = board_target(board)
    if target is None:
        target = own
    elif target.core != board.core:
        raise EdgejpqError(f"board {board.name} ({board.chip}) has a {board.core} core but target {target.name} "
                           f"({target.where}) is for a {target.core}: use --target {own.name} or leave --target out")
    entry = next((b for b in (*target.boards, *own.boards) if b.name == board.name))
    return target, entry.flash


def _check_fit(ctx: ModelContext, board: BoardSpec) -> None:
    """Refuse early, with the figures, a model that cannot fit the chip (the link is the exact check)."""
    ram = ctx.arena_bytes + ctx.scratch_bytes + ctx.output.size + board.stack_bytes
    if ram > board.ram.size:
        raise EdgejpqError(f"model {ctx.model_name} needs at least {ram} bytes of RAM on the {board.vendor_board} "
                           f"(arena {ctx.arena_bytes}, kernel scratch {ctx.scratch_bytes}, output {ctx.output.size}, "
                           f"stack {board.stack_bytes}) but the {board.chip} has {board.ram.size}: search or export a "
                           f"smaller plan (e.g. `edgejpq search --ram ...`)")
    if ctx.constant_bytes > board.flash.size:
        raise EdgejpqError(f"model {ctx.model_name} needs at least {ctx.constant_bytes} bytes of flash for its "
                           f"weights and constants but the {board.chip} of the {board.vendor_board} has "
                           f"{board.flash.size}: search or export a smaller plan (e.g. `edgejpq search --flash ...`)")


def generate_board_project(model: QuantizedModel, board: str, out_dir: Path, *, target: TargetSpec | None = None,
                           name: str | None = None, golden_inputs: np.ndarray | None = None) -> BoardProject:
    """Write a firmware project for a real board into `out_dir` (replacing a previous edgejpq output).

    The project is the model's sources (`generate_sources`, in model/) with the target's kernel set,
    plus start-up, linker script, clock and UART bring-up, a main that runs the golden inputs and
    prints PASS/FAIL and cycles per inference over the UART, a Makefile for arm-none-eabi-gcc with
    the target's flags (build/<name>.elf, .bin, .hex) and a README telling how to build and flash.
    `target` defaults to the shipped target listing the board; its core must be the board's.
    """
    spec = load_board(board)
    target, flash_info = _resolve_target(spec, target)
    out_dir = Path(out_dir).absolute()
    root = _boards_root()
    for key, paths in (("includes", spec.includes), ("bring_up", (spec.bring_up_template,))):
        missing = [f for f in paths if not (root / f).is_file()]
        if missing:
            raise EdgejpqError(f"{root / spec.name / BOARD_FILE}: key {key}: no file {missing[0]} under {root}; "
                               f"reinstall edgejpq if you did not edit it")
    written: list[BoardProject] = []

    def fill(folder: Path) -> None:
        sources = generate_sources(model, folder / MODEL_FOLDER, name=name, kernels=target.kernels,
                                   golden_inputs=golden_inputs)
        ctx = lower_model(model, sources.name, sources.kernels)
        _check_fit(ctx, spec)
        model_sources = (*sources.library_sources, sources.golden_source)
        headers = [f"{MODEL_FOLDER}/{f}" for f in sources.files if f.endswith(".h")]
        headers += [h for h in (*SHARED_BOARD_FILES, *(Path(f).name for f in spec.includes)) if h.endswith(".h")]
        context: dict[str, Any] = dict(
            m=ctx, board=spec, target=target, cflags=spec.cflags(target),
            cross_prefix=cross_prefix(target.compiler.cc), warning_flags=WARNING_FLAGS,
            link_flags=(*LINK_FLAGS, "-Wl,--print-memory-usage"),
            model_sources=model_sources, board_sources=BOARD_SOURCES, headers=sorted(headers),
            flash_notes=" ".join(flash_info.notes.split()), cycle_counter=spec.cycle_counter,
            target_clock_text=f"{target.clock_hz / 1e6:g} MHz",
            board_includes=[Path(f).name for f in spec.includes],
            golden_count=sources.golden_count)
        files = {
            "main.c": render("boards/cortex-m/board_main.c.j2", **context),
            "ejq_board.c": render(f"boards/{spec.bring_up_template}", **context),
            "link.ld": render("boards/cortex-m/link.ld.j2", what=f"the {spec.vendor_board} ({spec.chip})",
                              flash=spec.flash, ram=spec.ram, stack_bytes=spec.stack_bytes),
            "Makefile": render("boards/cortex-m/board.mk.j2", **context),
            "README.md": render("boards/cortex-m/board_readme.md.j2", **context),
        }
        for file_name, text in files.items():
            (folder / file_name).write_text(text)
        for shared in (*(root / "cortex-m" / f for f in SHARED_BOARD_FILES), *(root / f for f in spec.includes)):
            shutil.copyfile(shared, folder / shared.name)
        listing = sorted([*files, *(Path(f).name for f in (*SHARED_BOARD_FILES, *spec.includes)), MARKER,
                          *(f"{MODEL_FOLDER}/{f}" for f in sources.files)])
        (folder / MARKER).write_text(render("marker.txt.j2", m=ctx, files=listing))
        written.append(BoardProject(board=spec.name, target=target.name, name=sources.name, out_dir=out_dir,
                                    files=tuple(listing), kernels=sources.kernels))

    write_output_folder(out_dir, fill, f"the {spec.vendor_board} project")
    return written[0]


# --------------------------------------------------------------------------- serial harness on a real board


def generate_serial_board_project(model: QuantizedModel, board: str, out_dir: Path, *,
                                  target: TargetSpec | None = None, name: str | None = None) -> "BoardProject":
    """A board project (`generate_board_project`) whose main.c is the serial harness instead of the golden test.

    The harness needs only the project's ejq_board.h (the console USART's bytes) and ejq_cycles.h
    (DWT CYCCNT, or SysTick on ARMv6-M), so every board project takes it unchanged; its HELLO names
    the board and the board's core clock, which turns the RUN replies' cycles into time. Then
    `make flash` and `edgejpq validate MODEL.ejq --port <the board's virtual COM port>`.
    """
    project = generate_board_project(model, board, out_dir, target=target, name=name)
    spec = load_board(board)
    ctx = lower_model(model, project.name, project.kernels)
    main = _render_serial_harness(model, ctx, project.target, spec.name, spec.clock.hz)
    atomic_write_bytes(project.out_dir / "main.c", main.encode())
    return project

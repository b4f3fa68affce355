"""TargetSpec: one microcontroller target, read from `targets/<name>.yaml` or a user's YAML file.

A target file holds every hardware number the project uses (house rule: none live in Python):
core and ISA features, clock, flash and RAM with what the runtime reserves, compiler flags, the
QEMU machine that emulates it, boards and how to flash them, the latency look-up table and the
code-size table. `targets/README.md` describes the keys; `load_target` validates a file and
refuses a bad one naming the file, the dotted key and the reason.

How the latency table is meant to be read (the kernels call one function per weight run, that is
per group of output channels sharing a bit-width, and requantize every output value):

    cycles(weighted layer) = per_layer_overhead_cycles                      per kernel call
                           + per_output_pixel_overhead_cycles × pixels      per kernel call
                           + per_output_channel_overhead_cycles × pixels × kept channels
                           + per_input_element_cycles[op kind] × input elements
                           + per_channel_cycles[op kind] × kept channels
                           + Σ_bits MACs(bits) × cycles_per_mac(op kind, bits)
                           + ungrouped_cycles_per_mac[op kind] × MACs of ungrouped channels
                           + sub_byte_output_value_cycles[w<bits>a8] × pixels × channels at those bits
                           + per_window_row_cycles × pixels × kernel rows          per kernel call
                           + per_gathered_input_element_cycles × input elements    (see below)
                           + Σ kernel_cycles[kind][quantity] × count               (KERNEL_QUANTITIES)
    cycles(add / pool / concat / copy) = per_layer_overhead_cycles
                           + elementwise_cycles_per_element[kind] × elements
                           (+ kernel_cycles.pool.output × outputs + .window_row × outputs × kernel rows)

`per_output_channel_overhead_cycles` is paid once per output *value* (each kept channel at each
output pixel: bias, requantization, clamp, store); for a fully connected layer pixels = 1. The input
elements are what a kernel call converts before its multiply-accumulates (per weight run): the
im2col window values, pixels × K, of a convolution (K = kernel area × input channels; pointwise
too), the K inputs of a fully connected layer, and the input plane (input H × W × the run's
channels) of a depthwise convolution. `per_channel_cycles` is paid once per kept output channel
whatever the pixels (the kernel's per-channel set-up: requantization table, depthwise taps; for a
fully connected layer, one pixel, it is what its epilogue costs beyond the shared per-output-value
overhead). `ungrouped_cycles_per_mac` is the extra cost
per MAC of a channel that does not fill a group of its run (the DSP kernels process 2 four-bit
or 4 two-bit channels per weight byte; a run's last count % group channels take a slower path;
edgejpq.cost.model.ungrouped_channels; conv2d, pointwise, fully connected). `sub_byte_output_value_cycles` is the extra
epilogue of a 4- or 2-bit output value (taking a group's products apart), not depthwise.
`per_window_row_cycles` is a convolution's (conv2d, pointwise) im2col set-up per output pixel and
kernel row; `per_gathered_input_element_cycles` the extra per input element when the input
channels are not a multiple of 4 (the window is gathered byte by byte: first layers).
`kernel_cycles` prices the DSP kernels' loop structure per kind: depthwise passes of 8 channels,
the rows they fill, per-channel rows and taps, the generic (not 3x3 stride 1) loop, im2col pixel
pairs per call, odd 8-bit channels, values off the fast requantization path, pooling outputs (the
quantities and what they count: edgejpq.cost.model.kernel_counts and targets/README.md).
These keys are optional (0 when absent). For pool
the elements are the window taps visited (output elements × kernel area); for add, concat and
copy the output elements.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError

from edgejpq.errors import EdgejpqError
from edgejpq.resources import targets_dir

SCHEMA_VERSION = 1
OP_KINDS = ("conv2d", "depthwise_conv2d", "pointwise_conv2d", "fully_connected")
ELEMENTWISE_KINDS = ("add", "pool", "concat", "copy")
CHANNEL_KINDS = OP_KINDS  # latency.per_channel_cycles keys
GROUPED_KINDS = ("conv2d", "pointwise_conv2d", "fully_connected")  # latency.ungrouped_cycles_per_mac keys
# latency.kernel_cycles: per kernel kind, the quantities of the kernels' own loop structure that cost cycles
# (edgejpq.cost.model.kernel_counts counts them; firmware_templates/kernels/dsp/ for what they are)
KERNEL_QUANTITIES: dict[str, tuple[str, ...]] = {
    "conv2d": ("value", "pixel_pair", "sub_byte_column", "odd_w8_mac", "slow_value"),
    "pointwise_conv2d": ("value", "pixel_pair", "sub_byte_column", "odd_w8_mac", "slow_value"),
    "depthwise_conv2d": ("value", "pass", "pass_plane", "pass_row", "input_row", "single_input", "channel_row",
                         "channel_tap", "generic_tap", "generic_window_row", "odd_row", "slow_value"),
    "fully_connected": ("single_w8_mac", "slow_value"),
    "pool": ("output", "window_row"),
}
REQUIRED_PRECISIONS = ("w8a8", "w4a8", "w2a8")
# Which optional ISA extensions each core can have at all (architecture, not numbers).
CORE_EXTENSIONS = {
    "cortex-m0plus": frozenset(),
    "cortex-m3": frozenset(),
    "cortex-m4": frozenset({"dsp", "fpu"}),
    "cortex-m7": frozenset({"dsp", "fpu"}),
    "cortex-m33": frozenset({"dsp", "fpu"}),
    "cortex-m55": frozenset({"dsp", "fpu", "mve"}),
}

_STRICT = ConfigDict(extra="forbid")
_PRECISION_KEY = re.compile(r"^w(2|4|8)a(4|8)$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Strict scalars: a YAML string "180000000" or `yes` is not silently taken for a number.
Text = Annotated[str, Strict(), Field(min_length=1)]
Flag = Annotated[bool, Strict()]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
Bytes = Annotated[int, Strict(), Field(ge=0)]
Address = Annotated[int, Strict(), Field(ge=0, lt=1 << 32)]
Cycles = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveCycles = Annotated[float, Field(gt=0, allow_inf_nan=False)]


@dataclass(frozen=True)
class Isa:
    __pydantic_config__ = _STRICT
    dsp: Flag  # SIMD/DSP extension (SXTB16, SMLAD)
    fpu: Flag
    mve: Flag  # Helium


@dataclass(frozen=True)
class Memory:
    __pydantic_config__ = _STRICT
    flash_bytes: PositiveInt
    ram_bytes: PositiveInt
    flash_reserved_bytes: Bytes  # startup, runtime and serial protocol code: not the model's
    ram_reserved_bytes: Bytes  # stack, runtime globals, serial buffers


@dataclass(frozen=True)
class Compiler:
    __pydantic_config__ = _STRICT
    cc: Text
    cflags: tuple[Text, ...]


@dataclass(frozen=True)
class Qemu:
    __pydantic_config__ = _STRICT
    machine: Text
    cpu: Optional[Text]  # null: the machine's own CPU
    flash_base: Address  # where the linker script puts code and constants
    ram_base: Address


FlashMethod = Literal["openocd", "pyocd", "stm32-uart-bootloader", "picotool", "mass-storage"]


@dataclass(frozen=True)
class FlashInfo:
    __pydantic_config__ = _STRICT
    method: FlashMethod
    notes: str


@dataclass(frozen=True)
class Board:
    __pydantic_config__ = _STRICT
    name: Annotated[str, Strict(), Field(pattern=_NAME.pattern)]
    vendor_board: Text
    flash: FlashInfo


@dataclass(frozen=True)
class CyclesPerMac:
    """Per op kind, cycles per multiply-accumulate keyed `w<weight bits>a<activation bits>`."""

    __pydantic_config__ = _STRICT
    conv2d: dict[str, PositiveCycles]
    depthwise_conv2d: dict[str, PositiveCycles]
    pointwise_conv2d: dict[str, PositiveCycles]
    fully_connected: dict[str, PositiveCycles]


@dataclass(frozen=True)
class InstructionCycles:
    """Cycles per instruction class, turning the QEMU plugin's counts into a cycle estimate.

    Classes are exclusive (edgejpq/emulate/plugin/ejq_count.c): a multi-word load or store costs
    `load_multiple` (or `store_multiple`) once plus `load_word` (`store_word`) per word; a taken
    branch (any change of flow, loads into the PC included) adds `taken_branch`; everything not
    listed (ALU, SIMD, extend, IT) costs `alu`.
    """

    __pydantic_config__ = _STRICT
    source: Text
    alu: Cycles
    load: Cycles
    store: Cycles
    load_multiple: Cycles
    load_word: Cycles
    store_multiple: Cycles
    store_word: Cycles
    multiply: Cycles  # 32-bit results: MUL, MLA, SMLAD, SMLABB, ...
    long_multiply: Cycles  # 64-bit results: SMULL, UMLAL, SMLALD, ...
    divide: Cycles
    branch: Cycles
    taken_branch: Cycles  # extra, when the flow changes


@dataclass(frozen=True)
class Calibration:
    """Provenance of a calibrated latency table (written by `edgejpq calibrate`)."""

    __pydantic_config__ = _STRICT
    date: Text  # ISO 8601, UTC
    tool: Text  # edgejpq version
    emulator: Text  # QEMU version and machine
    compiler: Text
    kernels: Literal["portable", "dsp"]
    measurements: PositiveInt  # kernel runs the fit used
    max_relative_error: Cycles  # of the fitted table over those runs
    cycles_per_instruction: Optional[PositiveCycles] = None  # mean over those runs (cycles / instructions)
    grid: Optional[Literal["full", "quick"]] = None  # the shape grid measured


@dataclass(frozen=True)
class Latency:
    __pydantic_config__ = _STRICT
    calibrated: Flag
    source: Text  # where the numbers come from ("initial estimate: ..." until calibrated)
    instructions_to_cycles: Text  # how instruction counts convert to cycles on this core
    cycles_per_mac: CyclesPerMac
    per_layer_overhead_cycles: Cycles
    per_output_channel_overhead_cycles: Cycles  # per output value: each kept channel at each pixel
    per_output_pixel_overhead_cycles: Cycles
    elementwise_cycles_per_element: dict[str, Cycles]  # add, pool (per window tap), concat, copy
    instruction_cycles: Optional[InstructionCycles] = None  # QEMU instruction classes → cycles
    # op kind → cycles per input element a kernel call converts (im2col values, FC inputs, depthwise plane)
    per_input_element_cycles: dict[str, Cycles] = field(default_factory=dict)
    per_channel_cycles: dict[str, Cycles] = field(default_factory=dict)  # op kind → per kept channel per layer
    ungrouped_cycles_per_mac: dict[str, Cycles] = field(default_factory=dict)  # op kind → extra per ungrouped MAC
    sub_byte_output_value_cycles: dict[str, Cycles] = field(default_factory=dict)  # w4a8 / w2a8 → extra per value
    per_window_row_cycles: Cycles = 0.0  # conv2d / pointwise: per output pixel and kernel row, per call
    per_gathered_input_element_cycles: Cycles = 0.0  # conv2d / pointwise with input channels % 4 != 0
    # kernel kind -> quantity (KERNEL_QUANTITIES) -> cycles per unit: the kernels' loop structure
    kernel_cycles: dict[str, dict[str, Cycles]] = field(default_factory=dict)
    calibration: Optional[Calibration] = None  # set by `edgejpq calibrate`


@dataclass(frozen=True)
class CodeSize:
    """Flash taken by code and per-layer descriptors (estimates until measured on the target)."""

    __pydantic_config__ = _STRICT
    measured: Flag
    source: Text
    base_bytes: Bytes  # the model's entry function and runtime helpers it pulls in
    per_layer_bytes: Bytes  # one layer's parameter struct and call site
    per_weight_run_bytes: Bytes  # one weight run's descriptor and kernel call
    per_kernel_bytes: dict[str, Bytes]  # kernel family (conv2d_w8, max_pool, add, ...) → its own object's bytes
    default_kernel_bytes: Bytes  # for a kernel this file does not list yet
    # support objects several kernels call (the DSP set's depthwise machinery, ...): linked once however many
    # kernels use them; name → bytes, and kernel family → the support objects it links
    shared_bytes: dict[str, Bytes] = field(default_factory=dict)
    kernel_shares: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetSpec:
    """A validated target. Construct it with `load_target`, not by hand."""

    __pydantic_config__ = _STRICT
    schema_version: Literal[1]
    name: Annotated[str, Strict(), Field(pattern=_NAME.pattern)]
    description: Text
    core: Literal["cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"]
    isa: Isa
    clock_hz: PositiveInt
    memory: Memory
    compiler: Compiler
    kernels: Literal["portable", "dsp"]
    qemu: Optional[Qemu]
    boards: tuple[Board, ...]
    latency: Latency
    code_size: CodeSize
    path: str = field(default="", compare=False)  # the file it was read from (not a YAML key)

    @property
    def where(self) -> str:
        return self.path or f"target {self.name}"

    @property
    def model_flash_budget(self) -> int:
        """Flash bytes left for the model (weights, constants, kernels) after the reserved runtime."""
        return self.memory.flash_bytes - self.memory.flash_reserved_bytes

    @property
    def model_ram_budget(self) -> int:
        """RAM bytes left for the model (arena plus the caller's input/output buffers) after reserves."""
        return self.memory.ram_bytes - self.memory.ram_reserved_bytes

    def cycles_per_mac(self, op_kind: str, weight_bits: int, activation_bits: int = 8) -> float:
        """Table entry for one MAC of `op_kind` at these bit-widths; 0 bits (a pruned channel) costs 0."""
        if op_kind not in OP_KINDS:
            raise EdgejpqError(f"{self.where}: key latency.cycles_per_mac.{op_kind}: no such op kind "
                               f"(known: {', '.join(OP_KINDS)})")
        if weight_bits == 0:
            return 0.0
        table: Mapping[str, float] = getattr(self.latency.cycles_per_mac, op_kind)
        key = f"w{weight_bits}a{activation_bits}"
        if key not in table:
            raise EdgejpqError(f"{self.where}: key latency.cycles_per_mac.{op_kind}.{key}: no entry for "
                               f"{weight_bits}-bit weights and {activation_bits}-bit activations "
                               f"(the table has {', '.join(table)}): add it to the target file")
        return table[key]

    def input_element_cycles(self, op_kind: str) -> float:
        """Cycles per input element a kernel call of `op_kind` converts (0 when the table has no entry)."""
        return self.latency.per_input_element_cycles.get(op_kind, 0.0)

    def channel_cycles(self, op_kind: str) -> float:
        """Cycles per kept output channel of a layer of `op_kind` (0 when the table has no entry)."""
        return self.latency.per_channel_cycles.get(op_kind, 0.0)

    def ungrouped_cycles(self, op_kind: str) -> float:
        """Extra cycles per MAC of an ungrouped sub-byte channel of `op_kind` (0 when the table has no entry)."""
        return self.latency.ungrouped_cycles_per_mac.get(op_kind, 0.0)

    def kernel_quantity_cycles(self, kind: str, quantity: str) -> float:
        """Cycles per unit of a kernel quantity of `kind` (latency.kernel_cycles; 0 when the table has no entry)."""
        return self.latency.kernel_cycles.get(kind, {}).get(quantity, 0.0)

    def sub_byte_value_cycles(self, weight_bits: int, activation_bits: int = 8) -> float:
        """Extra epilogue cycles of one output value of a `weight_bits` channel (0 when not listed)."""
        return self.latency.sub_byte_output_value_cycles.get(f"w{weight_bits}a{activation_bits}", 0.0)

    def elementwise_cycles(self, kind: str) -> float:
        table = self.latency.elementwise_cycles_per_element
        if kind not in table:
            raise EdgejpqError(f"{self.where}: key latency.elementwise_cycles_per_element.{kind}: no entry "
                               f"(the table has {', '.join(table)})")
        return table[kind]

    def kernel_bytes(self, kernel: str) -> int:
        """Flash of one kernel family's own object (`conv2d_w8`, `max_pool`, ...), default if unlisted."""
        return self.code_size.per_kernel_bytes.get(kernel, self.code_size.default_kernel_bytes)

    def kernel_shares(self, kernel: str) -> tuple[str, ...]:
        """The support objects (code_size.shared_bytes) kernel family `kernel` links besides its own."""
        return tuple(self.code_size.kernel_shares.get(kernel, ()))

    def kernels_code_bytes(self, kernels: Any) -> int:
        """Flash of the kernel families `kernels` linked together: each one's own object, and every support
        object any of them calls, once."""
        kernels = set(kernels)
        shared = {name for kernel in kernels for name in self.kernel_shares(kernel)}
        return (sum(self.kernel_bytes(kernel) for kernel in kernels)
                + sum(self.code_size.shared_bytes[name] for name in shared))

    def seconds(self, cycles: Any) -> Any:
        """Cycles → seconds at this target's clock (numbers or torch tensors)."""
        return cycles / self.clock_hz

    def summary(self) -> dict[str, Any]:
        """Raw figures for a listing (JSON)."""
        return {
            "name": self.name, "core": self.core, "clock_hz": self.clock_hz,
            "flash_bytes": self.memory.flash_bytes, "ram_bytes": self.memory.ram_bytes,
            "model_flash_budget": self.model_flash_budget, "model_ram_budget": self.model_ram_budget,
            "kernels": self.kernels, "qemu": self.qemu.machine if self.qemu else None,
            "boards": [board.vendor_board for board in self.boards],
            "latency_calibrated": self.latency.calibrated, "path": self.path,
        }

    def summary_row(self) -> dict[str, str]:
        """One row of the `edgejpq targets` table: column title → cell text."""
        return {
            "target": self.name,
            "core": self.core,
            "clock": f"{self.clock_hz / 1e6:g} MHz",
            "flash": _kib(self.memory.flash_bytes),
            "RAM": _kib(self.memory.ram_bytes),
            "model flash": _kib(self.model_flash_budget),
            "model RAM": _kib(self.model_ram_budget),
            "kernels": self.kernels,
            "QEMU": self.qemu.machine if self.qemu else "-",
            "boards": ", ".join(board.vendor_board for board in self.boards) or "-",
            "latency": "calibrated" if self.latency.calibrated else "estimate",
        }


def _kib(n: int) -> str:
    return f"{n / 1024:g} KiB" if n % 1024 == 0 or n >= 10 * 1024 else f"{n} B"


_ADAPTER = TypeAdapter(TargetSpec)


# --------------------------------------------------------------------------- YAML reading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _key_lines(node: yaml.Node | None, prefix: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Dotted key path → 1-based line, from the composed YAML tree (for error messages)."""
    lines: dict[tuple[Any, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, key_node.value)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = (*prefix, index)
            lines[path] = item.start_mark.line + 1
            lines.update(_key_lines(item, path))
    return lines


def _read_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgejpqError(f"{path}: cannot read the target file ({exc})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        lines = _key_lines(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise EdgejpqError(f"{where}: YAML syntax error: {problem}") from None
    return data, lines


# --------------------------------------------------------------------------- validation


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unwrap(annotation: Any) -> Any:
    """The dataclass or container behind Annotated / Optional."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Union:
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return _unwrap(inner[0]) if len(inner) == 1 else annotation
    return annotation


def _type_at(loc: tuple[Any, ...]) -> Any:
    """The declared type at a key path of TargetSpec (to list the keys a mapping allows)."""
    current: Any = TargetSpec
    for part in loc:
        current = _unwrap(current)
        if is_dataclass(current):
            current = get_type_hints(current, include_extras=True).get(part)
            if current is None:
                return None
        elif get_origin(current) in (tuple, dict):
            current = get_args(current)[-1] if get_origin(current) is dict else get_args(current)[0]
        else:
            return None
    return _unwrap(current)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    owner = _type_at(loc)
    if owner is TargetSpec:
        return [f.name for f in fields(TargetSpec) if f.name != "path"]
    return [f.name for f in fields(owner)] if is_dataclass(owner) else []


def _pydantic_message(error: Mapping[str, Any]) -> tuple[tuple[Any, ...], str]:
    loc = tuple(part for part in error["loc"] if part != "[key]")
    kind = error["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        allowed = _allowed_keys(loc[:-1])
        return loc, "unknown key" + (f" (allowed here: {', '.join(allowed)})" if allowed else "")
    if kind == "missing":
        return loc, "required key is missing"
    got = error.get("input")
    return loc, f"{error['msg']} (got {got!r:.60})"


def _fail(where: str, loc: tuple[Any, ...], reason: str, lines: Mapping[tuple[Any, ...], int],
          more: int = 0) -> EdgejpqError:
    """`<file>: key a.b.c: <reason> (line N)`; the line is the key's, or its nearest parent's."""
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    at = f" (line {line})" if line else ""
    rest = f"; and {more} more problem{'s' if more > 1 else ''}" if more else ""
    return EdgejpqError(f"{where}: key {_dotted(loc)}: {reason}{at}{rest}")


def _check_consistency(spec: TargetSpec) -> tuple[tuple[Any, ...], str] | None:
    """Rules across keys that a type cannot express; the first broken one as (key path, reason)."""
    allowed = CORE_EXTENSIONS[spec.core]
    for extension in ("dsp", "fpu", "mve"):
        if getattr(spec.isa, extension) and extension not in allowed:
            return ("isa", extension), f"a {spec.core} has no {extension.upper()} extension"
    if spec.kernels == "dsp" and not spec.isa.dsp:
        return ("kernels",), "the dsp kernel set needs isa.dsp: true (use portable)"
    mcpu = [flag for flag in spec.compiler.cflags if flag.startswith("-mcpu=")]
    if [flag.split("=", 1)[1].split("+", 1)[0] for flag in mcpu] != [spec.core]:
        return ("compiler", "cflags"), f"must hold exactly one -mcpu={spec.core} (matching core), got {mcpu}"
    if "-mfloat-abi=hard" in spec.compiler.cflags and not spec.isa.fpu:
        return ("compiler", "cflags"), "-mfloat-abi=hard needs isa.fpu: true"
    memory = spec.memory
    if memory.flash_reserved_bytes >= memory.flash_bytes:
        return ("memory", "flash_reserved_bytes"), f"must be less than flash_bytes ({memory.flash_bytes})"
    if memory.ram_reserved_bytes >= memory.ram_bytes:
        return ("memory", "ram_reserved_bytes"), f"must be less than ram_bytes ({memory.ram_bytes})"
    for kind in OP_KINDS:
        table = getattr(spec.latency.cycles_per_mac, kind)
        for key in table:
            if not _PRECISION_KEY.match(key):
                return (("latency", "cycles_per_mac", kind, key),
                        "not a precision key: expected w<2|4|8>a<4|8>, e.g. w4a8")
        for key in REQUIRED_PRECISIONS:
            if key not in table:
                return (("latency", "cycles_per_mac", kind, key),
                        f"required entry is missing (every op kind needs {', '.join(REQUIRED_PRECISIONS)})")
    for table_name, allowed_kinds in (("per_input_element_cycles", OP_KINDS), ("per_channel_cycles", CHANNEL_KINDS),
                                      ("ungrouped_cycles_per_mac", GROUPED_KINDS)):
        for key in getattr(spec.latency, table_name):
            if key not in allowed_kinds:
                return ("latency", table_name, key), f"unknown op kind (allowed: {', '.join(allowed_kinds)})"
    for kind, table in spec.latency.kernel_cycles.items():
        if kind not in KERNEL_QUANTITIES:
            return ("latency", "kernel_cycles", kind), f"unknown kernel kind (allowed: {', '.join(KERNEL_QUANTITIES)})"
        for key in table:
            if key not in KERNEL_QUANTITIES[kind]:
                return (("latency", "kernel_cycles", kind, key),
                        f"unknown quantity for {kind} (allowed: {', '.join(KERNEL_QUANTITIES[kind])})")
    for key in spec.latency.sub_byte_output_value_cycles:
        if key not in ("w4a8", "w2a8"):
            return ("latency", "sub_byte_output_value_cycles", key), "allowed keys: w4a8, w2a8"
    elementwise = spec.latency.elementwise_cycles_per_element
    for key in elementwise:
        if key not in ELEMENTWISE_KINDS:
            return ("latency", "elementwise_cycles_per_element", key), \
                f"unknown kind (allowed: {', '.join(ELEMENTWISE_KINDS)})"
    for key in ELEMENTWISE_KINDS:
        if key not in elementwise:
            return ("latency", "elementwise_cycles_per_element", key), "required entry is missing"
    code = spec.code_size
    for table in ("per_kernel_bytes", "shared_bytes", "kernel_shares"):
        for key in getattr(code, table):
            if not _C_IDENTIFIER.match(key):
                return ("code_size", table, key), "kernel and object names are identifiers (e.g. conv2d_w8)"
    for kernel, shares in code.kernel_shares.items():
        if kernel not in code.per_kernel_bytes:
            return ("code_size", "kernel_shares", kernel), "not a kernel of code_size.per_kernel_bytes"
        for name in shares:
            if name not in code.shared_bytes:
                return ("code_size", "kernel_shares", kernel), \
                    f"{name!r} is not an object of code_size.shared_bytes ({', '.join(code.shared_bytes) or 'none'})"
    names = [board.name for board in spec.boards]
    for index, board_name in enumerate(names):
        if board_name in names[:index]:
            return ("boards", index, "name"), f"board {board_name!r} is listed twice"
    return None


def validate_target(data: Any, where: str, lines: Mapping[tuple[Any, ...], int] | None = None) -> TargetSpec:
    """Validate a parsed YAML document; raises EdgejpqError naming `where`, the key and the reason."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise EdgejpqError(f"{where}: a target file must be a YAML mapping of keys (schema_version, name, ...)")
    if "path" in data:
        raise _fail(where, ("path",), "unknown key (the file's own location is not a setting)", lines)
    version = data.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        reason = ("required key is missing" if "schema_version" not in data
                  else f"this edgejpq reads version {SCHEMA_VERSION}, the file says {version!r}")
        raise _fail(where, ("schema_version",), reason, lines)
    try:
        spec = _ADAPTER.validate_python(data)
    except ValidationError as exc:
        errors = exc.errors()
        loc, reason = _pydantic_message(errors[0])
        raise _fail(where, loc, reason, lines, more=len(errors) - 1) from None
    broken = _check_consistency(spec)
    if broken is not None:
        raise _fail(where, broken[0], broken[1], lines)
    return replace(spec, path=where)


def load_target_file(path: str | os.PathLike[str]) -> TargetSpec:
    """Read and validate one target YAML file."""
    p = Path(path)
    if not p.is_file():
        raise EdgejpqError(f"{p}: no such target file")
    data, lines = _read_yaml(p)
    spec = validate_target(data, str(p), lines)
    if p.resolve().parent == targets_dir().resolve() and spec.name != p.stem:
        raise _fail(str(p), ("name",), f"a shipped target's name must equal its file name ({p.stem!r}), "
                                       f"got {spec.name!r}", lines)
    return spec


def _natural(path: Path) -> list[Any]:
    """Sort key putting cortex-m4 before cortex-m33."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem)]


def _shipped_files() -> list[Path]:
    return sorted(targets_dir().glob("*.yaml"), key=_natural)


def target_names() -> list[str]:
    """Names of the shipped targets (file stems), in natural order."""
    return [p.stem for p in _shipped_files()]


def _is_path(spec: str) -> bool:
    return "/" in spec or os.sep in spec or spec.endswith((".yaml", ".yml"))


def load_target(spec: str) -> TargetSpec:
    """A shipped target by name (`cortex-m4`) or a user's file by path (`boards/my.yaml`)."""
    if _is_path(spec):
        return load_target_file(spec)
    path = targets_dir() / f"{spec}.yaml"
    if not path.is_file():
        raise EdgejpqError(f"unknown target {spec!r}: available {', '.join(target_names()) or '(none)'} "
                           f"(or give the path of your own .yaml file)")
    return load_target_file(path)


def list_targets() -> list[TargetSpec]:
    """Every shipped target, validated, in natural name order."""
    return [load_target_file(path) for path in _shipped_files()]


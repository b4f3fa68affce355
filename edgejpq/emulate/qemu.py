"""QEMU emulation: cross-compile the generated C for a Cortex-M target and run it in qemu-system-arm.

The firmware is the generated model plus the harness of firmware_templates/boards/qemu: it reads
whole inputs from `ejq_in.bin` and writes whole outputs to `ejq_out.bin` through semihosting, many
samples per QEMU start, and reports the deepest stack use below its own frame (stack painting) in
`ejq_stats.bin`. Large batches are split over one QEMU process per core.

Instruction counts come from edgejpq's TCG plugin (edgejpq/emulate/plugin, built from its sources
into a cache folder): it counts, by instruction class, the instructions executed between the
harness's marker functions, per op (the model calls `<name>_profile` after every op) and per
inference. The counts are exact and repeat from run to run. `estimate_cycles` weights the classes
by the target's `latency.instruction_cycles` (loads/stores multi-word by their word count, taken
branches, multiplies, divides).

Flash and RAM are read from the linked ELF: its link map attributes every input section to the
object it came from, so the model's figures (weights, the model's code and parameter structs,
kernels, runtime library routines) exclude the harness and its start-up code.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np

from edgejpq import __version__
from edgejpq.artifact import QuantizedModel
from edgejpq.emulate.common import (Mismatch, ProgressCallback, as_samples, compare_outputs, first_errors,
                                    parse_trace)
from edgejpq.errors import EdgejpqError

if TYPE_CHECKING:  # codegen imports edgejpq; import it lazily at run time
    from codegen.generate import GeneratedSources
    from edgejpq.cost.target import InstructionCycles, TargetSpec

WARNING_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror")
LINK_FLAGS = ("-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections")
APT_HINT = ("install the Arm toolchain and QEMU (Debian/Ubuntu: `apt-get install gcc-arm-none-eabi "
            "libnewlib-arm-none-eabi binutils-arm-none-eabi qemu-system-arm`, or run scripts/setup.sh)")
PLUGIN_DIR = Path(__file__).resolve().parent / "plugin"
PLUGIN_SOURCES = ("ejq_count.c", "qemu_plugin_api.h")
DEFAULT_TIMEOUT_SECONDS = 600.0
COUNTER_NAMES = ("insns", "load", "store", "load_multiple", "load_words", "store_multiple", "store_words",
                 "multiply", "long_multiply", "divide", "branch", "taken_branch")
HARNESS_EXIT = {2: "it could not open its input file", 3: "its input file ends inside a sample",
                4: "it could not write its outputs", 5: "the model's invoke returned an error",
                6: "it could not create its output files", 99: "the firmware faulted (HardFault or similar)"}
STATS_MAGIC = 0x53514A45


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class CrossTools:
    cc: str
    nm: str
    size: str
    qemu: str


def cross_prefix(cc: str) -> str:
    """The binutils prefix that goes with a cross compiler (`arm-none-eabi-gcc` → `arm-none-eabi-`)."""
    return cc[: -len("gcc")] if cc.endswith("gcc") else "arm-none-eabi-"


def find_cross_tools(cc: str = "arm-none-eabi-gcc") -> CrossTools:
    """Absolute paths of the cross compiler, its binutils and qemu-system-arm, or an EdgejpqError."""
    found = {}
    prefix = cross_prefix(cc)
    for key, program in (("cc", cc), ("nm", f"{prefix}nm"), ("size", f"{prefix}size"), ("qemu", "qemu-system-arm")):
        path = shutil.which(program)
        if path is None:
            raise EdgejpqError(f"{program} is not on PATH: {APT_HINT}")
        found[key] = path
    return CrossTools(**found)


def cache_dir() -> Path:
    """edgejpq's cache folder ($EDGEJPQ_CACHE_DIR, else $XDG_CACHE_HOME/edgejpq, else ~/.cache/edgejpq)."""
    if os.environ.get("EDGEJPQ_CACHE_DIR"):
        return Path(os.environ["EDGEJPQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgejpq"


_PLUGIN_LOCK = threading.Lock()


def plugin_path(compiler: str = "cc") -> Path:
    """The instruction-count plugin, built from edgejpq's own sources with the host compiler (cached)."""
    from edgejpq.emulate.host import find_compiler

    cc = find_compiler(compiler)
    digest = hashlib.sha256()
    for name in PLUGIN_SOURCES:
        digest.update(name.encode() + b"\0" + (PLUGIN_DIR / name).read_bytes())
    digest.update(subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.encode())
    folder = cache_dir() / "qemu-plugin" / digest.hexdigest()[:16]
    library = folder / "libejq_count.so"
    with _PLUGIN_LOCK:
        if library.is_file():
            return library
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgejpqError(f"{folder}: cannot create the plugin cache folder ({exc.strerror}); "
                               f"set EDGEJPQ_CACHE_DIR to a writable folder") from None
        fd, tmp = tempfile.mkstemp(prefix=".libejq_count.", suffix=".so", dir=folder)
        os.close(fd)
        command = [cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", f"-I{PLUGIN_DIR}",
                   "-o", tmp, str(PLUGIN_DIR / "ejq_count.c")]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            Path(tmp).unlink(missing_ok=True)
            raise EdgejpqError(f"building the QEMU instruction-count plugin failed; this is a bug in edgejpq:\n"
                               f"{first_errors(result.stderr)}")
        os.replace(tmp, library)
    return library


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class FirmwareSizes:
    """Flash and static RAM of the model inside the firmware (harness and start-up excluded)."""

    weight_bytes: int  # the packed weight arrays
    constant_bytes: int  # every constant array of <name>_weights.c (weights, bias, multipliers, shifts)
    model_code_bytes: int  # <name>_model.c: invoke and its parameter structs
    kernel_code_bytes: int  # the kernel objects (code and their constants)
    runtime_bytes: int  # library routines linked in (libgcc / libc helpers the C calls)
    static_ram_bytes: int  # the model's .data and .bss (activation arena, kernel scratch)
    firmware_flash_bytes: int  # the whole firmware image (harness included), for reference
    kernels: dict[str, int] = field(default_factory=dict)  # kernel object → bytes

    @property
    def flash_bytes(self) -> int:
        """The model's flash: constants, model code, kernels and the runtime routines they pull in."""
        return self.constant_bytes + self.model_code_bytes + self.kernel_code_bytes + self.runtime_bytes


_MAP_INPUT = re.compile(r"^ (\S+)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+(\S.*)$")
_MAP_NAME_ONLY = re.compile(r"^ (\S+)$")
_MAP_REST = re.compile(r"^\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+(\S.*)$")
_MAP_OUTPUT = re.compile(r"^(\.\S+)")


def map_sections(map_text: str) -> list[tuple[str, str, int, str]]:
    """(output section, input section, size, object) for every input section the link kept."""
    lines = map_text.splitlines()
    try:
        start = lines.index("Linker script and memory map")
    except ValueError:
        raise EdgejpqError("the linker map has no 'Linker script and memory map' part") from None
    out: list[tuple[str, str, int, str]] = []
    output_section = ""
    i = start + 1
    while i < len(lines):
        line = lines[i]
        i += 1
        head = _MAP_OUTPUT.match(line)
        if head:
            output_section = head.group(1)
            continue
        name_only = _MAP_NAME_ONLY.match(line)
        if name_only and i < len(lines) and _MAP_REST.match(lines[i]):
            rest = _MAP_REST.match(lines[i])
            i += 1
            out.append((output_section, name_only.group(1), int(rest.group(2), 16), rest.group(3).strip()))
            continue
        full = _MAP_INPUT.match(line)
        if full and not full.group(1).startswith("*"):
            out.append((output_section, full.group(1), int(full.group(3), 16), full.group(4).strip()))
    return out


def _nm_sizes(nm: str, elf: Path) -> dict[str, int]:
    result = subprocess.run([nm, "-S", str(elf)], capture_output=True, text=True)
    sizes: dict[str, int] = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4:
            sizes[parts[3]] = int(parts[1], 16)
    return sizes


def _nm_addresses(nm: str, elf: Path) -> dict[str, int]:
    result = subprocess.run([nm, str(elf)], capture_output=True, text=True)
    return {parts[2]: int(parts[0], 16) for parts in (line.split() for line in result.stdout.splitlines())
            if len(parts) == 3}


FLASH_SECTIONS = (".text", ".ARM.exidx", ".data")
RAM_SECTIONS = (".data", ".bss")


def firmware_sizes(map_text: str, symbol_sizes: Mapping[str, int], sources: "GeneratedSources",
                   weight_symbols: Sequence[str]) -> FirmwareSizes:
    """Attribute the linked sections of a firmware to the model's objects, the runtime and the harness."""
    model_c = f"{sources.name}_model.o"
    weights_c = f"{sources.name}_weights.o"
    kernel_objs = {Path(s).with_suffix(".o").name for s in sources.library_sources} - {model_c, weights_c}
    totals = {"constants": 0, "model": 0, "kernels": 0, "runtime": 0, "ram": 0, "flash": 0}
    per_kernel: dict[str, int] = {}
    for output, _section, size, obj in map_sections(map_text):
        if output not in FLASH_SECTIONS and output not in RAM_SECTIONS:
            continue
        base = Path(obj.split("(")[0]).name
        is_library = ".a(" in obj or base.endswith(".a")
        mine = base in kernel_objs or base in (model_c, weights_c) or is_library
        if output in FLASH_SECTIONS:
            totals["flash"] += size
            if base == weights_c:
                totals["constants"] += size
            elif base == model_c:
                totals["model"] += size
            elif base in kernel_objs:
                totals["kernels"] += size
                per_kernel[base] = per_kernel.get(base, 0) + size
            elif is_library:
                totals["runtime"] += size
        if output in RAM_SECTIONS and mine:
            totals["ram"] += size
    weights = sum(symbol_sizes.get(symbol, 0) for symbol in weight_symbols)
    return FirmwareSizes(weight_bytes=weights, constant_bytes=totals["constants"], model_code_bytes=totals["model"],
                         kernel_code_bytes=totals["kernels"], runtime_bytes=totals["runtime"],
                         static_ram_bytes=totals["ram"], firmware_flash_bytes=totals["flash"],
                         kernels=dict(sorted(per_kernel.items())))


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class QemuFirmware:
    """A linked harness for one model and target, and what running it needs to know."""

    elf: Path
    target: "TargetSpec"
    name: str
    kernels: str
    model_hash: str
    input_size: int
    output_size: int
    op_names: tuple[str, ...]
    tensor_names: tuple[str, ...]  # trace index -> tensor name
    tensor_shapes: tuple[tuple[int, int, int], ...]
    markers: dict[str, int]  # begin / op / end marker addresses
    sizes: FirmwareSizes
    traced: bool
    build_seconds: float


def _compile(command: list[str], where: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise EdgejpqError(f"cross-compiling {where} failed; this is a bug in edgejpq, please report it with the "
                           f"model file:\n{first_errors(result.stderr)}")


def build_qemu(model: QuantizedModel, sources: "GeneratedSources", workdir: Path, target: "TargetSpec", *,
               trace: bool = False, serial: bool = False) -> QemuFirmware:
    """Cross-compile the generated sources with the target's flags and link them with the QEMU harness.

    `serial` links the serial-protocol harness (edgejpq.serial) instead of the semihosting one: it
    talks through the machine's UART, which `edgejpq.serial.qemu` puts on a loopback socket.
    """
    from codegen.boards import QEMU_FILES, SERIAL_UNITS, write_qemu_harness, write_serial_harness
    from codegen.lower import tensor_order

    if target.qemu is None:
        raise EdgejpqError(f"{target.where}: target {target.name} has no QEMU machine (key qemu is null): "
                           f"choose a target QEMU can emulate")
    tools = find_cross_tools(target.compiler.cc)
    workdir = Path(workdir)
    board = workdir / "board"
    objects = workdir / "obj"
    try:
        objects.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgejpqError(f"{workdir}: cannot create the build folder ({exc.strerror})") from None
    if serial and trace:
        raise EdgejpqError("the serial harness has no trace output: build it with trace=False")
    harness_args = (model, sources.name, sources.kernels, target.qemu.machine, target.qemu.flash_base,
                    target.qemu.ram_base, board)
    if serial:
        ctx = write_serial_harness(*harness_args, target=target.name, clock_hz=target.clock_hz)
        harness_units = SERIAL_UNITS
    else:
        ctx = write_qemu_harness(*harness_args)
        harness_units = tuple(f for f in QEMU_FILES if f.endswith(".c"))
    defines = ["-DEJQ_PROFILE_ENABLED", *(["-DEJQ_TRACE_ENABLED"] if trace else [])]
    flags = [*target.compiler.cflags, *WARNING_FLAGS, *defines, f"-I{sources.out_dir}", f"-I{board}"]
    units = [sources.out_dir / f for f in sources.library_sources] + [board / f for f in harness_units]
    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        jobs = [pool.submit(_compile, [tools.cc, *flags, "-c", str(unit), "-o", str(objects / f"{unit.stem}.o")],
                            unit.name) for unit in units]
        for job in jobs:
            job.result()
    elf = workdir / f"{sources.name}{'_trace' if trace else ''}{'_serial' if serial else ''}.elf"
    link_map = elf.with_suffix(".map")
    _compile([tools.cc, *target.compiler.cflags, *LINK_FLAGS, f"-T{board / 'link.ld'}", f"-Wl,-Map={link_map}",
              "-o", str(elf), *(str(objects / f"{unit.stem}.o") for unit in units)], f"and linking {elf.name}")
    seconds = time.perf_counter() - start
    addresses = _nm_addresses(tools.nm, elf)
    markers = {"begin": addresses.get("ejq_measure_begin"), "op": addresses.get(f"{sources.name}_profile"),
               "end": addresses.get("ejq_measure_end")}
    if None in markers.values():
        raise EdgejpqError(f"{elf}: the harness's marker functions are missing ({markers}); this is a bug in edgejpq")
    weight_symbols = [a.symbol for a in ctx.arrays if a.symbol.endswith("_weights")]
    sizes = firmware_sizes(link_map.read_text(), _nm_sizes(tools.nm, elf), sources, weight_symbols)
    names = tensor_order(model)
    return QemuFirmware(elf=elf, target=target, name=sources.name, kernels=sources.kernels, model_hash=model.short_hash,
                        input_size=model.input_info.size, output_size=model.output_info.size,
                        op_names=tuple(op.name for op in model.ops), tensor_names=names,
                        tensor_shapes=tuple(model.tensors[n].shape for n in names),
                        markers={k: int(v) for k, v in markers.items()}, sizes=sizes, traced=trace,
                        build_seconds=seconds)


# --------------------------------------------------------------------------- run


@dataclass(frozen=True)
class InstructionCounts:
    """The plugin's counts: per region (op i, then the invoke epilogue) summed over inferences, and per inference."""

    per_region: np.ndarray  # (ops + 1, counters) uint64
    per_inference: np.ndarray  # (inferences, counters) uint64

    def column(self, name: str) -> np.ndarray:
        return self.per_inference[:, COUNTER_NAMES.index(name)]

    @property
    def instructions(self) -> np.ndarray:
        """Instructions of each inference."""
        return self.column("insns")


@dataclass(frozen=True)
class QemuRun:
    outputs: np.ndarray  # (N, output size) int8
    counts: Optional[InstructionCounts]
    stack_bytes: int  # deepest stack use of an inference, below the harness's frame
    seconds: float


def parse_counts(text: str, where: str) -> InstructionCounts:
    """Read the plugin's report (see edgejpq/emulate/plugin/ejq_count.c)."""
    regions: dict[int, list[int]] = {}
    inferences: dict[int, list[int]] = {}
    lines = text.splitlines()
    if not lines or lines[0] != "ejqcount 1":
        raise EdgejpqError(f"{where}: not an instruction-count report")
    for line in lines[1:]:
        kind, _, rest = line.partition(" ")
        if kind == "counters":
            if tuple(rest.split()) != COUNTER_NAMES:
                raise EdgejpqError(f"{where}: unexpected counters {rest!r}")
        elif kind in ("region", "inference"):
            values = [int(v) for v in rest.split()]
            (regions if kind == "region" else inferences)[values[0]] = values[1:]
        elif kind == "error":
            raise EdgejpqError(f"{where}: the instruction counter reports: {rest}")
    def table(rows: dict[int, list[int]]) -> np.ndarray:
        out = np.zeros((len(rows), len(COUNTER_NAMES)), dtype=np.uint64)
        for index, values in rows.items():
            out[index] = values
        return out

    return InstructionCounts(per_region=table(regions), per_inference=table(inferences))


def _merge_counts(parts: Sequence[InstructionCounts], regions: int) -> InstructionCounts:
    per_region = np.zeros((regions, len(COUNTER_NAMES)), dtype=np.uint64)
    for part in parts:
        per_region[: len(part.per_region)] += part.per_region
    return InstructionCounts(per_region=per_region, per_inference=np.concatenate([p.per_inference for p in parts]))


def qemu_machine_args(fw: QemuFirmware, tools: CrossTools) -> list[str]:
    """qemu-system-arm, the target's machine and CPU, no monitor, the firmware as kernel."""
    qemu = fw.target.qemu
    assert qemu is not None
    return [tools.qemu, "-M", qemu.machine, *(["-cpu", qemu.cpu] if qemu.cpu else []), "-monitor", "none",
            "-kernel", str(fw.elf)]


def plugin_args(fw: QemuFirmware, counts_file: Path, blocks_file: Optional[Path] = None) -> list[str]:
    """The -plugin option counting instructions between the firmware's markers into counts_file."""
    args = ",".join(f"{key}={hex(fw.markers[key])}" for key in ("begin", "op", "end"))
    extra = f",blocks={blocks_file}" if blocks_file is not None else ""
    return ["-plugin", f"{plugin_path()},{args},out={counts_file}{extra}"]


def _qemu_command(fw: QemuFirmware, tools: CrossTools, counts_file: Optional[Path],
                  blocks_file: Optional[Path] = None) -> list[str]:
    command = [*qemu_machine_args(fw, tools), "-nographic", "-semihosting-config", "enable=on,target=native"]
    if counts_file is not None:
        command += plugin_args(fw, counts_file, blocks_file)
    return command


def _run_shard(fw: QemuFirmware, tools: CrossTools, x: np.ndarray, folder: Path, profile: bool, timeout: float,
               received: Optional[list[int]] = None, slot: int = 0, blocks: bool = False
               ) -> tuple[bytes, Optional[InstructionCounts], int]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ejq_in.bin").write_bytes(x.tobytes())
    out_file = folder / "ejq_out.bin"
    out_file.unlink(missing_ok=True)
    counts_file = folder / "ejq_counts.txt" if profile else None
    command = _qemu_command(fw, tools, counts_file, folder / "ejq_blocks.txt" if profile and blocks else None)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, cwd=folder, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:  # never wait past the deadline (a run shorter than one poll must still time out)
                code = proc.wait(timeout=max(0.0, min(0.05, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if received is not None and out_file.exists():
                    received[slot] = out_file.stat().st_size
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise EdgejpqError(f"QEMU ({fw.target.qemu.machine}) running {fw.elf.name} did not finish within "
                                       f"{timeout:g} s on {len(x)} samples (hung firmware?); raise the timeout if the "
                                       f"model is just slow") from None
        log.seek(0)
        console = log.read().decode(errors="replace").strip()
    expected = len(x) * fw.output_size
    data = out_file.read_bytes() if out_file.exists() else b""
    stats = (folder / "ejq_stats.bin").read_bytes() if (folder / "ejq_stats.bin").exists() else b""
    if code != 0 or len(data) != expected or len(stats) < 20:
        reason = HARNESS_EXIT.get(code, f"exit status {code}")
        raise EdgejpqError(f"the QEMU harness {fw.elf} failed on {fw.target.qemu.machine}: {reason} "
                           f"({len(data)} of {expected} output bytes written)"
                           + (f"; console: {console[-800:]}" if console else ""))
    magic, version, samples, stack_bytes, _reserve = struct.unpack_from("<5I", stats)
    if magic != STATS_MAGIC or version != 1 or samples != len(x):
        raise EdgejpqError(f"the QEMU harness {fw.elf} wrote a bad statistics record")
    counts = None
    if counts_file is not None:
        if not counts_file.is_file():
            raise EdgejpqError(f"the QEMU instruction-count plugin wrote no report for {fw.elf}")
        counts = parse_counts(counts_file.read_text(), str(counts_file))
        if len(counts.per_inference) != len(x):
            raise EdgejpqError(f"{counts_file}: {len(counts.per_inference)} inferences counted, {len(x)} run")
    if received is not None:
        received[slot] = len(data)
    return data, counts, stack_bytes


def run_qemu(fw: QemuFirmware, inputs: np.ndarray, workdir: Path, *, profile: bool = True,
             timeout: float = DEFAULT_TIMEOUT_SECONDS, workers: Optional[int] = None, min_shard: int = 64,
             on_progress: Optional[ProgressCallback] = None, blocks: bool = False) -> QemuRun:
    """Run the firmware on int8 inputs (N, ...) in QEMU: one process per shard of at least `min_shard` samples.

    With `profile`, the instruction-count plugin runs too and `counts` holds its figures. `timeout`
    bounds each QEMU process. `blocks` (kernel development) also writes each shard's executed blocks
    for `function_profile`.
    """
    tools = find_cross_tools(fw.target.compiler.cc)
    x = as_samples(inputs, fw.input_size)
    n = len(x)
    if n == 0:
        return QemuRun(np.zeros((0, fw.output_size), np.int8), None, 0, 0.0)
    shards = max(1, min(workers or os.cpu_count() or 1, n // max(1, min_shard)))
    bounds = np.linspace(0, n, shards + 1).astype(int)
    received = [0] * shards
    start = time.perf_counter()
    with ThreadPoolExecutor(shards) as pool:
        futures = [pool.submit(_run_shard, fw, tools, x[bounds[i]: bounds[i + 1]], Path(workdir) / f"shard{i}",
                               profile, timeout, received, i, blocks) for i in range(shards)]
        reported = -1
        while not all(f.done() for f in futures):
            current = sum(received) // fw.output_size
            if on_progress is not None and current != reported:
                on_progress(current)
                reported = current
            time.sleep(0.05)
        results = [f.result() for f in futures]
    if on_progress is not None:
        on_progress(n)
    seconds = time.perf_counter() - start
    outputs = np.frombuffer(b"".join(r[0] for r in results), dtype=np.int8).reshape(n, fw.output_size).copy()
    counts = _merge_counts([r[1] for r in results], len(fw.op_names) + 1) if profile else None
    return QemuRun(outputs=outputs, counts=counts, stack_bytes=max(r[2] for r in results), seconds=seconds)


def trace_qemu(fw: QemuFirmware, x: np.ndarray, workdir: Path, timeout: float = DEFAULT_TIMEOUT_SECONDS
               ) -> dict[str, np.ndarray]:
    """Run one input on a firmware built with `trace=True`; every tensor an op produced, by name."""
    if not fw.traced:
        raise EdgejpqError(f"{fw.elf} was not built with trace=True")
    tools = find_cross_tools(fw.target.compiler.cc)
    folder = Path(workdir) / "trace"
    _run_shard(fw, tools, as_samples(np.asarray(x).reshape(1, -1), fw.input_size), folder, False, timeout)
    return parse_trace((folder / "ejq_trace.bin").read_bytes(), fw.tensor_names, fw.tensor_shapes,
                       f"QEMU harness {fw.elf}")


def function_profile(fw: QemuFirmware, workdir: Path) -> dict[str, int]:
    """Instructions executed while counting, by function (from a run with `blocks=True`), largest first."""
    tools = find_cross_tools(fw.target.compiler.cc)
    result = subprocess.run([tools.nm, "-S", "--defined-only", str(fw.elf)], capture_output=True, text=True)
    functions = sorted((int(p[0], 16) & ~1, int(p[1], 16), p[3]) for p in (line.split() for line in
                       result.stdout.splitlines()) if len(p) == 4 and p[2] in "tT")
    starts = [f[0] for f in functions]
    totals: dict[str, int] = {}
    import bisect

    for path in Path(workdir).glob("shard*/ejq_blocks.txt"):
        for line in path.read_text().splitlines():
            address, insns, runs = line.split()
            vaddr = int(address, 16)
            i = bisect.bisect_right(starts, vaddr) - 1
            name = functions[i][2] if i >= 0 and vaddr < functions[i][0] + functions[i][1] else hex(vaddr)
            totals[name] = totals.get(name, 0) + int(insns) * int(runs)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


# --------------------------------------------------------------------------- cycles


def estimate_cycles(counts: np.ndarray, weights: "InstructionCycles") -> np.ndarray:
    """Cycles estimated from instruction-class counts (rows of COUNTER_NAMES columns)."""
    c = {name: np.asarray(counts, dtype=np.float64)[..., i] for i, name in enumerate(COUNTER_NAMES)}
    # the classes are exclusive (a load into the PC is a load); what is left is plain one-cycle work
    alu = c["insns"] - (c["load"] + c["store"] + c["load_multiple"] + c["store_multiple"] + c["multiply"]
                        + c["long_multiply"] + c["divide"] + c["branch"])
    return (alu * weights.alu + c["load"] * weights.load + c["store"] * weights.store
            + c["load_multiple"] * weights.load_multiple + c["load_words"] * weights.load_word
            + c["store_multiple"] * weights.store_multiple + c["store_words"] * weights.store_word
            + c["multiply"] * weights.multiply + c["long_multiply"] * weights.long_multiply
            + c["divide"] * weights.divide + c["branch"] * weights.branch + c["taken_branch"] * weights.taken_branch)


# --------------------------------------------------------------------------- emulate


@dataclass(frozen=True)
class OpCounts:
    """One op's share of an inference (averaged over the profiled inferences)."""

    index: int
    name: str
    instructions: float
    cycles_estimate: Optional[float]


@dataclass(frozen=True)
class QemuEmulation:
    outputs: np.ndarray
    bit_exact: bool
    mismatch: Optional[Mismatch]
    firmware: QemuFirmware
    run: QemuRun
    instructions_per_inference: Optional[float]  # mean over profiled inferences
    instructions_min_max: Optional[tuple[int, int]]
    cycles_estimate_per_inference: Optional[float]
    ops: tuple[OpCounts, ...]
    overhead_instructions: float  # the invoke epilogue after the last op

    @property
    def sizes(self) -> FirmwareSizes:
        return self.firmware.sizes

    @property
    def ram_bytes(self) -> int:
        """The model's RAM: static data (arena, scratch) plus the deepest stack of an inference."""
        return self.sizes.static_ram_bytes + self.run.stack_bytes


def summarize_counts(fw: QemuFirmware, counts: InstructionCounts) -> tuple[tuple[OpCounts, ...], float, float,
                                                                             Optional[float]]:
    """Per-op averages, the epilogue's, instructions and estimated cycles per inference."""
    n = max(1, len(counts.per_inference))
    weights = fw.target.latency.instruction_cycles
    cycles = estimate_cycles(counts.per_region, weights) / n if weights is not None else None
    insns = counts.per_region[:, 0].astype(np.float64) / n
    ops = tuple(OpCounts(i, name, float(insns[i]) if i < len(insns) else 0.0,
                         float(cycles[i]) if cycles is not None and i < len(cycles) else None)
                for i, name in enumerate(fw.op_names))
    overhead = float(insns[len(fw.op_names)]) if len(insns) > len(fw.op_names) else 0.0
    per_inference = float(counts.instructions.astype(np.float64).mean())
    cycles_total = (float(estimate_cycles(counts.per_inference, weights).mean()) if weights is not None else None)
    return ops, overhead, per_inference, cycles_total


def emulate_qemu(model: QuantizedModel, inputs: np.ndarray, workdir: Path, target: "TargetSpec", *,
                 profile: bool = True, timeout: float = DEFAULT_TIMEOUT_SECONDS, kernels: Optional[str] = None,
                 on_progress: Optional[ProgressCallback] = None) -> QemuEmulation:
    """Generate, cross-compile and run `model` in QEMU for `target`; compare every output byte with the reference.

    A mismatch is traced (a second build with EJQ_TRACE_ENABLED runs the first differing sample)
    to name the first differing tensor and its op, as the host emulator does.
    """
    from codegen.generate import generate_sources

    workdir = Path(workdir)
    sources = generate_sources(model, workdir / "src", kernels=kernels or target.kernels)
    fw = build_qemu(model, sources, workdir / "build", target)
    run = run_qemu(fw, inputs, workdir / "run", profile=profile, timeout=timeout, on_progress=on_progress)

    def trace(x: np.ndarray) -> dict[str, np.ndarray]:
        traced_fw = build_qemu(model, sources, workdir / "build_trace", target, trace=True)
        return trace_qemu(traced_fw, x, workdir / "run_trace", timeout=timeout)

    mismatch = compare_outputs(model, inputs, run.outputs, trace=trace)
    ops: tuple[OpCounts, ...] = ()
    overhead = 0.0
    per_inference = cycles = None
    spread = None
    if run.counts is not None and len(run.counts.per_inference):
        ops, overhead, per_inference, cycles = summarize_counts(fw, run.counts)
        spread = (int(run.counts.instructions.min()), int(run.counts.instructions.max()))
    return QemuEmulation(outputs=run.outputs, bit_exact=mismatch is None, mismatch=mismatch, firmware=fw, run=run,
                         instructions_per_inference=per_inference, instructions_min_max=spread,
                         cycles_estimate_per_inference=cycles, ops=ops, overhead_instructions=overhead)


def qemu_version() -> str:
    """`qemu-system-arm --version`'s first line (for provenance)."""
    tools_qemu = shutil.which("qemu-system-arm")
    if tools_qemu is None:
        return "qemu-system-arm (not installed)"
    return subprocess.run([tools_qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


__all__ = ["COUNTER_NAMES", "CrossTools", "FirmwareSizes", "InstructionCounts", "OpCounts", "QemuEmulation",
           "QemuFirmware", "QemuRun", "build_qemu", "cache_dir", "emulate_qemu", "estimate_cycles",
           "find_cross_tools", "firmware_sizes", "map_sections", "parse_counts", "plugin_args", "plugin_path",
           "qemu_machine_args", "run_qemu",
           "summarize_counts", "trace_qemu", "__version__"]

"""Calibrate a target's latency table from kernels measured in QEMU (`edgejpq calibrate`).

Every kernel (convolution, pointwise, depthwise, fully connected at 8/4/2-bit weights; add,
pooling, concatenation, copy) runs alone, as a one-layer model, over a grid of shapes in
qemu-system-arm with the target's compiler flags and kernel set, checked bit-exact against the
numpy reference. The instruction-count plugin gives the layer's exact instructions per class,
`estimate_cycles` turns them into cycles with the target's `latency.instruction_cycles`, and a
bounded least-squares fit (in relative error) gives the table the cost model reads, with the
formulas of edgejpq/cost/model.py (see edgejpq/cost/target.py):

    cycles(weighted layer) = per_layer_overhead x calls
                           + per_input_element_cycles[kind] x input elements
                           + per_channel_cycles[kind] x channels
                           + cycles_per_mac[kind][w<bits>a8] x MACs
                           + ... (the sub-byte, im2col-row and gathered-input terms)
                           + kernel_cycles[kind][quantity] x count (edgejpq.cost.model.kernel_counts)
    cycles(elementwise)    = per_layer_overhead + elementwise_cycles_per_element[kind] x elements

The per-output-value and per-pixel costs are fitted per kind (kernel_cycles.<kind>.value, .pixel_pair):
the shared per_output_channel_overhead_cycles and per_output_pixel_overhead_cycles are written as 0.
The grid holds shapes that separate every quantity (depthwise passes, odd rows, the generic loop, first
layers, odd 8-bit channel counts, channels forced off the fast requantization path, many runs, global
pools); `holdout_cases` are shapes in none of it, to check the fit generalises.

The code size is measured the same way without running anything: every kernel × bit-width linked
as a one-layer model (`measure_code_size`), each kernel costing its object's linked bytes, and the
generated model code fitted per layer and per weight run.

`calibrate_target` writes the target's file with those `code_size:` and `latency:` blocks and their
provenance (`calibrated: true`, source, date, tool, emulator, compiler, measurements, fit error) to a
new path, validated, replaced atomically, and re-read with load_target.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import subprocess
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from edgejpq import __version__
from edgejpq.artifact import (Add, Concat, ConcatInput, Conv2D, FullyConnected, MemoryLayout, Placement, Pool,
                              QuantizedModel, Reshape, TensorInfo, WeightRun, atomic_write_bytes, conv_output_hw, validate_model)
from edgejpq.cost.target import CHANNEL_KINDS, GROUPED_KINDS, KERNEL_QUANTITIES
from edgejpq.errors import EdgejpqError
from edgejpq.quant.fixedpoint import quantize_multiplier
from edgejpq.quant.packing import pack_rows, value_range

if TYPE_CHECKING:
    from edgejpq.cost.model import Geometry
    from edgejpq.emulate.qemu import FirmwareSizes
    from edgejpq.cost.target import InstructionCycles, TargetSpec

WEIGHTED_KINDS = ("conv2d", "pointwise_conv2d", "depthwise_conv2d", "fully_connected")
ELEMENTWISE = ("add", "pool", "concat", "copy")
BITS = (8, 4, 2)


# --------------------------------------------------------------------------- one-layer models


@dataclass(frozen=True)
class KernelCase:
    """One kernel call to measure: a one-layer model of this shape."""

    kind: str  # a WEIGHTED_KINDS entry, or "add", "maxpool", "avgpool", "concat", "copy"
    in_shape: tuple[int, int, int]  # H, W, C (fully connected: 1, 1, K)
    out_channels: int = 0  # weighted kinds except depthwise
    bits: int = 8
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    mix: tuple[tuple[int, int], ...] = ()  # several weight runs, (bits, channels) in channel order; () = one run
    kernels: str = ""  # the kernel set measured (set by measure_case; the cost model's kind depends on it)
    slow: int = 0  # the first `slow` channels get a multiplier off the DSP kernels' fast requantization path

    @property
    def cost_kind(self) -> str:
        """The kind the cost model prices this call as (edgejpq.cost.model.cost_kind)."""
        from edgejpq.cost.model import cost_kind

        return cost_kind(self.kind, self.in_shape[2], self.kernels)

    @property
    def weighted(self) -> bool:
        return self.kind in WEIGHTED_KINDS

    @property
    def runs(self) -> tuple[tuple[int, int], ...]:
        """The layer's weight runs as (bits, channels): one kernel call each."""
        return self.mix or ((self.bits, self.out_shape[2]),)

    @property
    def channels_by_bits(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for bits, count in self.runs:
            out[bits] = out.get(bits, 0) + count
        return out

    @property
    def out_shape(self) -> tuple[int, int, int]:
        h, w, c = self.in_shape
        if self.kind == "fully_connected":
            return 1, 1, self.out_channels
        if self.kind in ("conv2d", "pointwise_conv2d", "depthwise_conv2d", "maxpool", "avgpool"):
            oh, ow = conv_output_hw((h, w), self.kernel, self.stride, self.padding)
            return oh, ow, c if self.kind in ("depthwise_conv2d", "maxpool", "avgpool") else self.out_channels
        if self.kind == "concat":
            return h, w, 2 * c
        return h, w, c

    @property
    def pixels(self) -> int:
        oh, ow, _ = self.out_shape
        return oh * ow

    @property
    def macs(self) -> int:
        oh, ow, oc = self.out_shape
        if self.kind == "fully_connected":
            return self.in_shape[0] * self.in_shape[1] * self.in_shape[2] * oc
        if self.kind == "depthwise_conv2d":
            return oh * ow * oc * self.kernel[0] * self.kernel[1]
        if self.weighted:
            return oh * ow * oc * self.kernel[0] * self.kernel[1] * self.in_shape[2]
        return 0

    @property
    def k(self) -> int:
        """Weights per output channel (the cost model's K)."""
        if self.kind == "fully_connected":
            return self.in_shape[0] * self.in_shape[1] * self.in_shape[2]
        taps = self.kernel[0] * self.kernel[1]
        return taps if self.kind == "depthwise_conv2d" else taps * self.in_shape[2]

    @property
    def input_elements(self) -> int:
        """What the kernel call converts before multiplying (edgejpq.cost.model.input_elements)."""
        from edgejpq.cost.model import input_elements

        return int(input_elements(self.cost_kind, self.pixels, self.k, self.out_shape[2], len(self.runs),
                                  self.in_shape[0] * self.in_shape[1]))

    @property
    def ungrouped(self) -> int:
        """Output channels outside a sub-byte group (edgejpq.cost.model.ungrouped_channels)."""
        from edgejpq.cost.model import ungrouped_channels

        return sum(ungrouped_channels(self.cost_kind, bits, count) for bits, count in self.runs) if self.weighted else 0

    @property
    def geometry(self) -> "Geometry":
        from edgejpq.cost.model import Geometry

        if self.kind == "fully_connected":
            return Geometry()
        (h, w, _), (oh, ow, _) = self.in_shape, self.out_shape
        return Geometry(h, w, oh, ow, self.kernel[0], self.kernel[1], self.stride[0], self.stride[1],
                        self.padding[0], self.padding[2])

    @property
    def kernel_counts(self) -> dict[str, float]:
        """The kernels' loop quantities of this call (edgejpq.cost.model.kernel_counts)."""
        from edgejpq.cost.model import kernel_counts

        if not self.weighted:
            oh, ow, oc = self.out_shape
            return {"output": oh * ow * oc, "window_row": oh * ow * oc * self.kernel[0]} if self.table_kind == "pool" \
                else {}
        kind = self.cost_kind
        conv1 = kind == "depthwise_conv2d" and self.kind != "depthwise_conv2d"
        return {q: float(v) for q, v in kernel_counts(kind, self.geometry, self.runs, self.out_shape[2], self.k, conv1,
                                                       self.slow, self.kernels == "portable").items()}

    @property
    def elements(self) -> int:
        """What an elementwise kernel's cost scales with (pool: window taps; others: output elements)."""
        oh, ow, oc = self.out_shape
        taps = self.kernel[0] * self.kernel[1] if self.kind in ("maxpool", "avgpool") else 1
        return oh * ow * oc * taps

    @property
    def table_kind(self) -> str:
        """The latency table's key for this case."""
        return "pool" if self.kind in ("maxpool", "avgpool") else self.kind

    @property
    def label(self) -> str:
        h, w, c = self.in_shape
        oh, ow, oc = self.out_shape
        bits = "+".join(f"w{b}x{n}" for b, n in self.mix) if self.mix else f"w{self.bits}"
        if self.slow:
            bits += f" slow{self.slow}"
        if self.kind == "fully_connected":
            return f"fully_connected {h * w * c}->{oc} {bits}"
        shape = f"{h}x{w}x{c}->{oh}x{ow}x{oc}"
        if self.weighted:
            k = f" {self.kernel[0]}x{self.kernel[1]}" + (f" s{self.stride[0]}x{self.stride[1]}" if self.stride != (1, 1)
                                                         else "")
            return f"{self.kind} {shape}{k} {bits}"
        if self.kind in ("maxpool", "avgpool"):
            return f"{self.kind} {shape} {self.kernel[0]}x{self.kernel[1]} s{self.stride[0]}"
        return f"{self.kind} {shape}"


def _same_padding(kernel: tuple[int, int]) -> tuple[int, int, int, int]:
    return (kernel[0] - 1) // 2, kernel[0] // 2, (kernel[1] - 1) // 2, kernel[1] // 2


def conv_case(kind: str, in_shape: tuple[int, int, int], out_channels: int, bits: int, kernel: int = 3,
              stride: int = 1, slow: int = 0) -> KernelCase:
    """A 'same'-padded convolution case (pointwise: 1x1, no padding)."""
    k = (1, 1) if kind == "pointwise_conv2d" else (kernel, kernel)
    return KernelCase(kind, in_shape, out_channels if kind != "depthwise_conv2d" else in_shape[2], bits, k,
                      (stride, stride), _same_padding(k), slow=slow)


def conv1d_case(length: int, in_c: int, out_c: int, bits: int, kernel: int = 3, stride: int = 1) -> KernelCase:
    """A 'same'-padded 1-D convolution (a 1 x kernel conv2d over a 1 x length input, as Conv1d lowers)."""
    k = (1, kernel)
    return KernelCase("conv2d", (1, length, in_c), out_c, bits, k, (1, stride), _same_padding(k))


def mixed_case(kind: str, in_shape: tuple[int, int, int], mix: tuple[tuple[int, int], ...]) -> KernelCase:
    """A layer of several weight runs, (bits, channels) in channel order: 3x3 'same' conv or depthwise, 1x1, or FC."""
    channels = sum(count for _, count in mix)
    if kind == "fully_connected":
        return KernelCase(kind, in_shape, channels, mix[0][0], mix=mix)
    case = conv_case(kind, in_shape, channels, mix[0][0])
    return replace(case, mix=mix)


def fc_case(inputs: int, outputs: int, bits: int, slow: int = 0) -> KernelCase:
    return KernelCase("fully_connected", (1, 1, inputs), outputs, bits, slow=slow)


def pool_case(mode: str, in_shape: tuple[int, int, int], kernel: int, stride: int, padding: int = 0) -> KernelCase:
    """A pooling case; kernel = the input's side makes a global pool."""
    return KernelCase(f"{mode}pool", in_shape, kernel=(kernel, kernel), stride=(stride, stride),
                      padding=(padding,) * 4)


def kernel_model(case: KernelCase, seed: int = 0) -> QuantizedModel:
    """A valid one-layer model for `case`, with random weights and realistic requantization."""
    from edgejpq.cost.memory import plan_model_memory

    rng = np.random.default_rng(seed)
    tensors = {"x": TensorInfo("x", case.in_shape, 0.02, int(rng.integers(-20, 21)))}
    out_shape = case.out_shape
    arrays: dict[str, np.ndarray] = {}
    name = "layer"
    if case.weighted:
        tensors["y"] = TensorInfo("y", out_shape, 0.05, int(rng.integers(-20, 21)))
        depthwise = case.kind == "depthwise_conv2d"
        if case.kind == "fully_connected":
            k = int(np.prod(case.in_shape))
        else:
            k = case.kernel[0] * case.kernel[1] * (1 if depthwise else case.in_shape[2])
        if sum(count for _, count in case.runs) != out_shape[2]:
            raise EdgejpqError(f"{case.label}: the runs hold {sum(c for _, c in case.runs)} channels, the layer "
                               f"{out_shape[2]}")
        packed, run_list, start, offset = [], [], 0, 0
        for bits, count in case.runs:
            lo, hi = value_range(bits)
            rows = pack_rows(rng.integers(lo, hi + 1, size=(count, k)), bits).ravel()
            packed.append(rows)
            run_list.append(WeightRun(start, count, bits, offset))
            start += count
            offset += rows.size
        arrays[f"{name}.weights"] = np.concatenate(packed)
        arrays[f"{name}.bias"] = rng.integers(-2000, 2001, size=out_shape[2]).astype(np.int32)
        scale = 0.02 * 0.01 / 0.05  # input scale x weight scale / output scale
        mult, shift = zip(*(quantize_multiplier(scale * float(rng.uniform(0.5, 2.0))) for _ in range(out_shape[2])))
        if case.slow:  # scales of 0.5 and more: a shift >= 0, off the DSP kernels' fast requantization path
            mult, shift = list(mult), list(shift)
            for c in range(case.slow):
                mult[c], shift[c] = quantize_multiplier(0.5 + 0.5 * (c % 3))
        arrays[f"{name}.multiplier"] = np.array(mult, dtype=np.int32)
        arrays[f"{name}.shift"] = np.array(shift, dtype=np.int32)
        runs = tuple(run_list)
        if case.kind == "fully_connected":
            op = FullyConnected("fully_connected", name, "x", "y", runs, -128, 127)
        else:
            op = Conv2D("conv2d", name, "x", "y", case.kernel, case.stride, case.padding, depthwise, runs, -128, 127)
        ops: tuple = (op,)
    elif case.kind == "add":
        # the second input must come from an op: a 1x1 max pool copies the model input
        tensors["a"] = TensorInfo("a", case.in_shape, tensors["x"].scale, tensors["x"].zero_point)
        tensors["y"] = TensorInfo("y", out_shape, 0.06, -5)
        m_in, s_in = quantize_multiplier(0.02 / (2 * 0.02))
        m_out, s_out = quantize_multiplier(2 * 0.02 / ((1 << 20) * 0.06))
        ops = (Pool("pool", "source", "x", "a", "max", (1, 1), (1, 1), (0, 0, 0, 0), -128, 127),
               Add("add", name, ("x", "a"), "y", 20, (m_in, m_in), (s_in, s_in), m_out, s_out, -128, 127))
    elif case.kind in ("maxpool", "avgpool"):
        tensors["y"] = TensorInfo("y", out_shape, tensors["x"].scale, tensors["x"].zero_point)
        ops = (Pool("pool", name, "x", "y", case.kind[:3], case.kernel, case.stride, case.padding, -128, 127),)
    elif case.kind == "concat":
        tensors["a"] = TensorInfo("a", case.in_shape, tensors["x"].scale, tensors["x"].zero_point)
        tensors["y"] = TensorInfo("y", out_shape, 0.03, 1)
        m, s = quantize_multiplier(0.02 / 0.03)
        ops = (Pool("pool", "source", "x", "a", "max", (1, 1), (1, 1), (0, 0, 0, 0), -128, 127),
               Concat("concat", name, ("x", "a"), "y", (ConcatInput(False, m, s), ConcatInput(False, m, s))))
    elif case.kind == "copy":
        # the planner makes every reshape an alias (no code); the copy kernel runs when a reshape's
        # input and output are placed apart, so this layout puts them apart by hand
        tensors["a"] = TensorInfo("a", case.in_shape, tensors["x"].scale, tensors["x"].zero_point)
        tensors["y"] = TensorInfo("y", (1, 1, int(np.prod(case.in_shape))), tensors["x"].scale, tensors["x"].zero_point)
        ops = (Pool("pool", "source", "x", "a", "max", (1, 1), (1, 1), (0, 0, 0, 0), -128, 127),
               Reshape("reshape", name, "a", "y"))
    else:
        raise EdgejpqError(f"unknown kernel kind {case.kind!r}")
    if case.kind == "copy":
        size = (tensors["a"].size + 3) // 4 * 4
        layout = MemoryLayout(size, size, "calibration: reshape copied",
                              {"x": Placement("input", 0), "a": Placement("arena", 0), "y": Placement("output", 0)})
    else:
        layout = plan_model_memory(tensors, ops, "x", "y")
    model = QuantizedModel(f"k_{case.kind}", "x", "y", tensors, tuple(ops), layout, arrays,
                           provenance={"builder": "edgejpq.calibrate", "case": case.label})
    validate_model(model, where=case.label)
    return model


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class KernelMeasurement:
    case: KernelCase
    instructions: float  # of the measured layer, per inference
    cycles: float  # estimated from the instruction classes
    counts: tuple[float, ...]  # per instruction class (edgejpq.emulate.qemu.COUNTER_NAMES)

    @property
    def macs_per_instruction(self) -> float:
        return self.case.macs / self.instructions if self.instructions else 0.0

    @property
    def macs_per_cycle(self) -> float:
        return self.case.macs / self.cycles if self.cycles else 0.0


def measure_case(case: KernelCase, target: "TargetSpec", workdir: Path, samples: int = 2) -> KernelMeasurement:
    """Build and run the one-layer model of `case` in QEMU; the layer's instructions and cycles per inference."""
    from codegen.generate import generate_sources
    from edgejpq.emulate.qemu import build_qemu, estimate_cycles, run_qemu

    model = kernel_model(case)
    workdir = Path(workdir)
    sources = generate_sources(model, workdir / "src", kernels=target.kernels)
    fw = build_qemu(model, sources, workdir / "build", target)
    x = np.random.default_rng(1).integers(-128, 128, size=(samples, *model.input_info.shape), dtype=np.int8)
    run = run_qemu(fw, x, workdir / "run", workers=1)
    from edgejpq.quant.reference import predict

    if not np.array_equal(run.outputs, predict(model, x).reshape(samples, -1)):
        raise EdgejpqError(f"{case.label}: the {target.kernels} kernels are not bit-exact on {target.name}; "
                           f"this is a bug in edgejpq")
    index = len(model.ops) - 1  # the measured layer is the last op
    row = run.counts.per_region[index].astype(np.float64) / samples
    weights = check_calibratable(target)
    case = replace(case, kernels=target.kernels)
    return KernelMeasurement(case, float(row[0]), float(estimate_cycles(row, weights)), tuple(float(v) for v in row))


def measure_cases(cases: Sequence[KernelCase], target: "TargetSpec", workdir: Path, workers: Optional[int] = None,
                  on_done: Optional[Callable[[KernelMeasurement], None]] = None) -> list[KernelMeasurement]:
    """Measure many cases, one QEMU build each, in parallel (results in the order of `cases`)."""
    check_calibratable(target)
    workdir = Path(workdir)

    def one(item: tuple[int, KernelCase]) -> KernelMeasurement:
        i, case = item
        result = measure_case(case, target, workdir / f"case{i:03d}")
        if on_done is not None:
            on_done(result)
        return result

    with ThreadPoolExecutor(max(1, workers or min(2, os.cpu_count() or 1))) as pool:
        return list(pool.map(one, enumerate(cases)))


def check_calibratable(target: "TargetSpec") -> "InstructionCycles":
    """The target's instruction-class timings, or an EdgejpqError when it cannot be calibrated in QEMU."""
    if target.qemu is None:
        raise EdgejpqError(f"{target.where}: key qemu: target {target.name} has no QEMU machine, so its kernels "
                           f"cannot be measured in QEMU (set qemu.machine to a board that runs its code)")
    if target.latency.instruction_cycles is None:
        raise EdgejpqError(f"{target.where}: key latency.instruction_cycles is missing: calibration needs the "
                           f"cycles of each instruction class")
    return target.latency.instruction_cycles


# --------------------------------------------------------------------------- the grid

# (in shape, out channels) of the full grid's 3x3 convolutions: small and large K, few pixels and many channels,
# a 1-channel first layer (the DSP set runs it on the depthwise kernel)
_CONV = (((8, 8, 8), 8), ((12, 12, 16), 16), ((8, 8, 32), 24), ((6, 6, 64), 32), ((16, 16, 4), 8), ((20, 20, 1), 8),
         ((4, 4, 32), 64))
_POINTWISE = (((8, 8, 16), 16), ((8, 8, 64), 32), ((12, 12, 32), 64), ((4, 4, 128), 128), ((2, 2, 128), 128),
              ((12, 12, 8), 16))
_DEPTHWISE = ((8, 8, 8), (12, 12, 32), (6, 6, 64), (16, 16, 16), (2, 2, 128), (4, 4, 64), (8, 8, 6), (6, 6, 13))
_FC = ((64, 16), (256, 10), (512, 64), (128, 128), (48, 64), (32, 96))
# layers of several weight runs (a mixed-precision plan: by bit-width, or alternating where the channel order is fixed)
_MIXED = (mixed_case("conv2d", (8, 8, 16), ((8, 5), (4, 6), (2, 5))),
          mixed_case("conv2d", (6, 6, 8), ((4, 3), (8, 2), (2, 6), (4, 1))),
          mixed_case("pointwise_conv2d", (8, 8, 32), ((8, 6), (4, 5), (2, 5))),
          mixed_case("pointwise_conv2d", (6, 6, 16), ((8, 2), (4, 3), (8, 2), (2, 5))),
          mixed_case("depthwise_conv2d", (8, 8, 16), ((8, 5), (2, 3), (4, 8))),
          mixed_case("depthwise_conv2d", (6, 6, 12), ((4, 2), (8, 3), (2, 1), (8, 6))),
          mixed_case("fully_connected", (1, 1, 64), ((8, 3), (4, 3), (2, 4))),
          mixed_case("fully_connected", (1, 1, 128), ((2, 6), (8, 9), (4, 9))),
          # large planes: most pixel pairs are inside the input (the fused column build of every run)
          mixed_case("conv2d", (16, 16, 12), ((8, 5), (4, 3), (2, 4))),
          mixed_case("conv2d", (14, 14, 16), ((2, 6), (8, 3), (4, 7))))


def _depthwise_1d(length: int, channels: int, bits: int, kernel: int, stride: int = 1) -> KernelCase:
    return replace(conv1d_case(length, channels, channels, bits, kernel, stride), kind="depthwise_conv2d")


# shapes that separate the kernels' loop quantities (edgejpq.cost.model.kernel_counts): depthwise passes of
# 8 channels, odd output rows of the 3x3 path, the generic path (5x5, stride 2), first layers (one input
# channel) on the depthwise machinery, odd 8-bit channel counts, the slow requantization path, many runs
_STRUCTURE = tuple(
    [conv_case("depthwise_conv2d", (7, 7, 16), 0, 8), conv_case("depthwise_conv2d", (9, 9, 40), 0, 8),
     conv_case("depthwise_conv2d", (10, 10, 16), 0, 8, kernel=5), conv_case("depthwise_conv2d", (12, 12, 24), 0, 8, stride=2),
     conv_case("depthwise_conv2d", (9, 9, 20), 0, 4, stride=2), conv_case("depthwise_conv2d", (14, 14, 8), 0, 2),
     conv_case("depthwise_conv2d", (4, 4, 96), 0, 8, stride=2), conv_case("depthwise_conv2d", (8, 8, 16), 0, 8, slow=6),
     conv_case("depthwise_conv2d", (6, 6, 32), 0, 2, slow=32), conv_case("depthwise_conv2d", (10, 10, 8), 0, 8, stride=2, slow=3),
     conv_case("depthwise_conv2d", (10, 10, 8), 0, 8, kernel=7), _depthwise_1d(40, 16, 8, 5), _depthwise_1d(30, 24, 4, 3, 2),
     conv_case("conv2d", (28, 28, 1), 16, 8, stride=2), conv_case("conv2d", (28, 28, 1), 32, 2, stride=2),
     conv_case("conv2d", (13, 13, 1), 8, 4), conv_case("conv2d", (16, 16, 1), 12, 8, kernel=5),
     conv1d_case(40, 1, 32, 8, 5), conv1d_case(40, 1, 32, 4, 5), conv1d_case(24, 1, 16, 2, 3, stride=2),
     conv_case("conv2d", (8, 8, 16), 7, 8), conv_case("pointwise_conv2d", (8, 8, 32), 9, 8),
     conv_case("pointwise_conv2d", (5, 5, 32), 17, 8), fc_case(64, 7, 8), fc_case(96, 13, 8),
     conv_case("conv2d", (8, 8, 16), 16, 8, slow=8), conv_case("pointwise_conv2d", (8, 8, 32), 24, 8, slow=10),
     conv_case("pointwise_conv2d", (6, 6, 32), 16, 2, slow=16), conv_case("conv2d", (6, 6, 16), 8, 4, slow=8),
     fc_case(128, 32, 8, slow=12), fc_case(64, 16, 2, slow=16),
     mixed_case("pointwise_conv2d", (6, 6, 16), ((8, 3), (4, 3), (2, 3), (8, 1), (4, 5), (2, 2), (8, 5))),
     mixed_case("conv2d", (6, 6, 8), ((2, 3), (8, 3), (4, 1), (8, 1), (2, 6))),
     mixed_case("depthwise_conv2d", (6, 6, 24), ((8, 3), (4, 9), (2, 1), (8, 10), (4, 1))),
     mixed_case("depthwise_conv2d", (8, 8, 16), ((2, 2), (8, 2), (4, 2), (8, 2), (2, 8)))])
_POOLS = (pool_case("avg", (8, 8, 16), 8, 8), pool_case("avg", (14, 14, 32), 14, 14), pool_case("avg", (4, 4, 64), 4, 4),
          pool_case("max", (12, 12, 16), 3, 2, 1), pool_case("avg", (2, 2, 128), 2, 2))


def _elementwise_cases(shapes: Sequence[tuple[int, int, int]]) -> list[KernelCase]:
    cases: list[KernelCase] = []
    for shape in shapes:
        cases += [KernelCase("add", shape), KernelCase("concat", shape), KernelCase("copy", shape),
                  KernelCase("maxpool", shape, kernel=(2, 2), stride=(2, 2)),
                  KernelCase("avgpool", shape, kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1))]
    return cases


def calibration_grid() -> list[KernelCase]:
    """Shapes for the fit: every weighted kind x bit-width over sizes (strides 1 and 2; sub-byte runs whose
    channels do not fill the last group), and the elementwise kernels."""
    cases: list[KernelCase] = []
    for bits in BITS:
        cases += [conv_case("conv2d", shape, out_c, bits) for shape, out_c in _CONV]
        cases.append(conv_case("conv2d", (16, 16, 16), 16, bits, stride=2))
        cases += [conv_case("conv2d", (12, 12, 3), 16, bits), conv1d_case(40, 16, 16, bits, 5),
                  conv1d_case(20, 32, 32, bits, 3, stride=2)]
        cases += [conv_case("pointwise_conv2d", shape, out_c, bits) for shape, out_c in _POINTWISE]
        cases += [conv_case("depthwise_conv2d", shape, 0, bits) for shape in _DEPTHWISE]
        cases.append(conv_case("depthwise_conv2d", (16, 16, 16), 0, bits, stride=2))
        cases += [fc_case(inputs, outputs, bits) for inputs, outputs in _FC]
        if bits != 8:  # 7 channels: 3 pairs + 1 (4-bit), 1 quad + 3 (2-bit)
            cases += [conv_case("conv2d", (8, 8, 16), 7, bits), conv_case("pointwise_conv2d", (8, 8, 32), 7, bits),
                      fc_case(96, 7, bits)]
    cases += [*_MIXED, *_STRUCTURE]
    return cases + _elementwise_cases(((8, 8, 16), (16, 16, 32))) + list(_POOLS)


def quick_grid() -> list[KernelCase]:
    """A small grid that still determines every table entry (`--quick`: tests, a first look).

    Three to six shapes per kind at 8 bits (they separate the overheads, the per-channel set-up, the
    input conversion and the MACs) and two or three per kind at 4 and 2 bits (their cycles per MAC and the
    ungrouped channels' extra, given the rest)."""
    cases = [conv_case("conv2d", (8, 8, 8), 8, 8), conv_case("conv2d", (6, 6, 32), 16, 8),
             conv_case("conv2d", (10, 10, 4), 16, 8), conv_case("conv2d", (4, 4, 32), 48, 8),
             conv_case("conv2d", (12, 12, 1), 8, 8), conv_case("conv2d", (10, 10, 3), 8, 8),
             conv1d_case(24, 16, 16, 8, 3),
             conv_case("pointwise_conv2d", (8, 8, 16), 16, 8), conv_case("pointwise_conv2d", (4, 4, 64), 32, 8),
             conv_case("pointwise_conv2d", (6, 6, 32), 64, 8), conv_case("pointwise_conv2d", (2, 2, 96), 96, 8),
             conv_case("depthwise_conv2d", (8, 8, 8), 0, 8), conv_case("depthwise_conv2d", (6, 6, 32), 0, 8),
             conv_case("depthwise_conv2d", (12, 12, 16), 0, 8, stride=2), conv_case("depthwise_conv2d", (2, 2, 96), 0, 8),
             conv_case("depthwise_conv2d", (8, 8, 6), 0, 8),
             fc_case(64, 16, 8), fc_case(256, 32, 8), fc_case(128, 64, 8)]
    for bits in BITS[1:]:
        cases += [conv_case("conv2d", (6, 6, 32), 16, bits), conv_case("conv2d", (6, 6, 16), 7, bits),
                  conv_case("conv2d", (8, 8, 8), 8, bits),
                  conv_case("pointwise_conv2d", (4, 4, 64), 32, bits),
                  conv_case("pointwise_conv2d", (4, 4, 32), 7, bits),
                  conv_case("depthwise_conv2d", (8, 8, 8), 0, bits), fc_case(256, 32, bits), fc_case(64, 7, bits),
                  fc_case(96, 5, bits)]
    cases += [_MIXED[0], _MIXED[2], _MIXED[4], _MIXED[6]]
    cases += [conv_case("depthwise_conv2d", (7, 7, 16), 0, 8), conv_case("depthwise_conv2d", (10, 10, 16), 0, 8, kernel=5),
              conv_case("depthwise_conv2d", (10, 10, 8), 0, 8, kernel=7), _depthwise_1d(40, 16, 8, 5),
              conv_case("depthwise_conv2d", (6, 6, 13), 0, 4), conv_case("depthwise_conv2d", (9, 9, 20), 0, 4, stride=2),
              _depthwise_1d(30, 24, 4, 3, 2), conv_case("depthwise_conv2d", (14, 14, 8), 0, 2),
              conv_case("depthwise_conv2d", (4, 4, 96), 0, 8, stride=2), conv_case("conv2d", (28, 28, 1), 16, 8, stride=2),
              conv1d_case(40, 1, 32, 8, 5), conv_case("pointwise_conv2d", (8, 8, 32), 9, 8), fc_case(64, 7, 8),
              conv_case("depthwise_conv2d", (8, 8, 16), 0, 8, slow=6), conv_case("pointwise_conv2d", (8, 8, 32), 24, 8, slow=10),
              conv_case("conv2d", (6, 6, 16), 8, 4, slow=8), fc_case(128, 32, 8, slow=12),
              pool_case("avg", (8, 8, 16), 8, 8), pool_case("avg", (4, 4, 64), 4, 4)]
    return cases + _elementwise_cases(((8, 8, 16),))


def holdout_cases() -> list[KernelCase]:
    """Shapes in neither grid, to check a fitted table's predictions."""
    return [conv_case("conv2d", (10, 10, 12), 12, 8), conv_case("conv2d", (10, 10, 12), 11, 4),
            conv_case("conv2d", (14, 14, 1), 12, 2), conv1d_case(30, 8, 24, 8, 5),
            conv_case("pointwise_conv2d", (6, 6, 48), 24, 8), conv_case("pointwise_conv2d", (6, 6, 48), 24, 2),
            conv_case("depthwise_conv2d", (10, 10, 24), 0, 8), fc_case(192, 24, 8), fc_case(192, 10, 2),
            KernelCase("add", (6, 6, 24)),
            conv_case("depthwise_conv2d", (11, 11, 12), 0, 4, stride=2), conv_case("depthwise_conv2d", (5, 5, 56), 0, 8),
            conv_case("conv2d", (24, 24, 1), 12, 8, stride=2), conv1d_case(32, 1, 24, 2, 5),
            conv_case("pointwise_conv2d", (7, 7, 24), 20, 4, slow=7),
            mixed_case("pointwise_conv2d", (5, 5, 24), ((4, 5), (8, 3), (2, 7), (8, 4), (4, 1))),
            mixed_case("depthwise_conv2d", (10, 10, 20), ((8, 7), (2, 4), (4, 9))),
            pool_case("avg", (6, 6, 24), 6, 6)]


# --------------------------------------------------------------------------- the fit

_MAC_FLOOR = 1e-3  # the schema wants every cycles_per_mac entry > 0


@dataclass(frozen=True)
class LatencyFit:
    """A fitted latency table; it answers the cost model's questions as a TargetSpec does (same formulas)."""

    cycles_per_mac_table: dict[str, dict[str, float]]  # kind -> w<bits>a8 -> cycles
    per_layer_overhead_cycles: float
    per_output_pixel_overhead_cycles: float
    per_output_channel_overhead_cycles: float
    per_input_element_cycles: dict[str, float]  # kind -> cycles
    per_channel_cycles: dict[str, float]  # CHANNEL_KINDS kind -> cycles per kept channel
    ungrouped_cycles_per_mac: dict[str, float]  # GROUPED_KINDS kind -> extra cycles per ungrouped MAC
    sub_byte_output_value_cycles: dict[str, float]  # w4a8 / w2a8 -> extra cycles per output value
    per_window_row_cycles: float
    per_gathered_input_element_cycles: float
    elementwise_cycles_per_element: dict[str, float]
    kernel_cycles: dict[str, dict[str, float]]  # kind -> quantity -> cycles (KERNEL_QUANTITIES)
    relative_errors: tuple[float, ...] = ()  # predicted / measured - 1, per measurement

    @property
    def latency(self) -> "LatencyFit":  # edgejpq.cost.model reads target.latency.<overhead>
        return self

    def cycles_per_mac(self, kind: str, bits: int, activation_bits: int = 8) -> float:
        return 0.0 if bits == 0 else self.cycles_per_mac_table[kind][f"w{bits}a{activation_bits}"]

    def input_element_cycles(self, kind: str) -> float:
        return self.per_input_element_cycles.get(kind, 0.0)

    def channel_cycles(self, kind: str) -> float:
        return self.per_channel_cycles.get(kind, 0.0)

    def ungrouped_cycles(self, kind: str) -> float:
        return self.ungrouped_cycles_per_mac.get(kind, 0.0)

    def sub_byte_value_cycles(self, bits: int, activation_bits: int = 8) -> float:
        return self.sub_byte_output_value_cycles.get(f"w{bits}a{activation_bits}", 0.0)

    def kernel_quantity_cycles(self, kind: str, quantity: str) -> float:
        return self.kernel_cycles.get(kind, {}).get(quantity, 0.0)

    def elementwise_cycles(self, kind: str) -> float:
        return self.elementwise_cycles_per_element[kind]

    @property
    def max_relative_error(self) -> float:
        return max((abs(e) for e in self.relative_errors), default=0.0)

    def predict(self, case: KernelCase) -> float:
        """Cycles of one kernel call of `case`, by edgejpq.cost.model's formulas."""
        from edgejpq.cost.model import elementwise_cycles, pool_cycles, weighted_cycles

        if case.weighted:
            oc = case.out_shape[2]
            return float(weighted_cycles(self, case.cost_kind, case.pixels, case.k, case.channels_by_bits, oc,
                                         len(case.runs),
                                         case.in_shape[0] * case.in_shape[1], case.ungrouped, case.kernel[0],
                                         case.in_shape[2], case.kernel_counts))
        if case.table_kind == "pool":
            oh, ow, oc = case.out_shape
            return float(pool_cycles(self, oh * ow * oc, case.kernel))
        return float(elementwise_cycles(self, case.table_kind, case.elements))


_MAC_KEYS = [(kind, bits) for kind in WEIGHTED_KINDS for bits in BITS]
_COLUMNS = ["layer", "pixel", "value", *(f"input/{k}" for k in WEIGHTED_KINDS),
            *(f"channel/{k}" for k in CHANNEL_KINDS), *(f"ungrouped/{k}" for k in GROUPED_KINDS),
            "value/w4a8", "value/w2a8", "window_row", "gathered_input",
            *(f"{k}/{b}" for k, b in _MAC_KEYS), *ELEMENTWISE,
            *(f"kernel/{k}/{q}" for k, quantities in KERNEL_QUANTITIES.items() for q in quantities)]


# columns the design leaves at 0: the shared per-output-value overhead (per kind in kernel_cycles since the
# kernels' epilogues differ) and the per-pixel overhead (the im2col kernel's is per pixel pair)
_UNFITTED = ("value", "pixel")


def design_row(case: KernelCase) -> np.ndarray:
    """The case's row of the fit: what multiplies each table entry in the cost model's formula."""
    row = np.zeros(len(_COLUMNS))
    row[0] = 1.0
    if case.weighted:
        kind = case.cost_kind
        calls = len(case.runs)
        row[0] = calls
        # the output values' cost is per kind (latency.kernel_cycles.<kind>.value; a fully connected layer's is
        # its per-channel cost): the shared per_output_channel_overhead_cycles is not fitted (0)
        row[_COLUMNS.index(f"input/{kind}")] = case.input_elements
        if kind in CHANNEL_KINDS:
            row[_COLUMNS.index(f"channel/{kind}")] = case.out_shape[2]
        if kind in GROUPED_KINDS:
            row[_COLUMNS.index(f"ungrouped/{kind}")] = case.ungrouped * case.pixels * case.k
        for bits, count in case.channels_by_bits.items():
            if bits in (4, 2) and kind != "depthwise_conv2d":
                row[_COLUMNS.index(f"value/w{bits}a8")] = case.pixels * count
            row[_COLUMNS.index(f"{kind}/{bits}")] = case.kernel_counts.get("window_mac", case.pixels * case.k) * count
        if kind in ("conv2d", "pointwise_conv2d"):
            row[_COLUMNS.index("window_row")] = calls * case.pixels * case.kernel[0]
            if case.in_shape[2] % 4:
                row[_COLUMNS.index("gathered_input")] = case.input_elements
        counts = case.kernel_counts
        if kind == "depthwise_conv2d":
            row[_COLUMNS.index(f"input/{kind}")] = counts["quad_input"]
    else:
        row[_COLUMNS.index(case.table_kind)] = case.elements
        counts = case.kernel_counts
        kind = case.table_kind
    for quantity, count in counts.items():
        if quantity in KERNEL_QUANTITIES.get(kind, ()):
            row[_COLUMNS.index(f"kernel/{kind}/{quantity}")] = count
    return row


def fit_latency(measurements: Sequence[KernelMeasurement]) -> LatencyFit:
    """Bounded least squares in relative error over all measurements (one shared set of overheads).

    Every entry is >= 0 (cycles per MAC >= 0.001, as the target schema wants them positive); the
    error of a measurement is predicted / measured - 1, so small kernels weigh as much as big ones."""
    from scipy.optimize import lsq_linear

    if not measurements:
        raise EdgejpqError("calibration has no measurements to fit")
    a = np.array([design_row(m.case) for m in measurements])
    cycles = np.array([m.cycles for m in measurements])
    if (cycles <= 0).any():
        raise EdgejpqError("a calibration measurement has no cycles; this is a bug in edgejpq")
    missing = [_COLUMNS[i] for i in np.flatnonzero(~a.any(axis=0)) if not _COLUMNS[i].startswith("kernel/")
               and _COLUMNS[i] not in _UNFITTED]
    if missing:
        raise EdgejpqError(f"calibration has no measurement for {', '.join(missing)}")
    lower = np.array([_MAC_FLOOR if c.split("/")[0] in WEIGHTED_KINDS else 0.0 for c in _COLUMNS])
    scale = a.max(axis=0)  # column scaling keeps the solver well conditioned
    scale[scale == 0] = 1.0  # a kernel quantity no measurement has (its entry stays at its floor, 0)
    result = lsq_linear(a / cycles[:, None] / scale, np.ones(len(cycles)), bounds=(lower * scale, np.inf),
                        method="bvls", tol=1e-14)
    x = result.x / scale
    x = np.where(x - lower < 1e-9, lower, x)  # at the bound up to rounding (not 2e-13 in the file)
    x[~a.any(axis=0)] = 0.0
    value = dict(zip(_COLUMNS, (float(v) for v in x)))
    fit = LatencyFit(
        cycles_per_mac_table={k: {f"w{b}a8": value[f"{k}/{b}"] for b in BITS} for k in WEIGHTED_KINDS},
        per_layer_overhead_cycles=value["layer"], per_output_pixel_overhead_cycles=value["pixel"],
        per_output_channel_overhead_cycles=value["value"],
        per_input_element_cycles={k: value[f"input/{k}"] for k in WEIGHTED_KINDS},
        per_channel_cycles={k: value[f"channel/{k}"] for k in CHANNEL_KINDS},
        ungrouped_cycles_per_mac={k: value[f"ungrouped/{k}"] for k in GROUPED_KINDS},
        sub_byte_output_value_cycles={k: value[f"value/{k}"] for k in ("w4a8", "w2a8")},
        per_window_row_cycles=value["window_row"], per_gathered_input_element_cycles=value["gathered_input"],
        elementwise_cycles_per_element={k: value[k] for k in ELEMENTWISE},
        kernel_cycles={k: {q: value[f"kernel/{k}/{q}"] for q in quantities} for k, quantities in KERNEL_QUANTITIES.items()})
    errors = tuple(fit.predict(m.case) / m.cycles - 1.0 for m in measurements)
    return replace(fit, relative_errors=errors)


def fit_summary(fit: LatencyFit, measurements: Sequence[KernelMeasurement]) -> list[dict[str, object]]:
    """Per kind and bit-width: the fitted cycles per MAC (or per element) and the largest relative error."""
    rows: list[dict[str, object]] = []
    for kind, bits in [*_MAC_KEYS, *((k, 0) for k in ELEMENTWISE)]:
        errors = [e for m, e in zip(measurements, fit.relative_errors)
                  if (m.case.weighted and m.case.kind == kind and bits in m.case.channels_by_bits)
                  or (bits == 0 and m.case.table_kind == kind)]
        per = fit.cycles_per_mac(kind, bits) if bits else fit.elementwise_cycles(kind)
        rows.append({"kind": kind, "bits": bits or None, "cycles_per_mac" if bits else "cycles_per_element": per,
                     "measurements": len(errors), "max_relative_error": max((abs(e) for e in errors), default=0.0)})
    return rows


# --------------------------------------------------------------------------- writing the YAML


def _fmt(value: float) -> str:
    """A short decimal that keeps 4 significant digits."""
    if value == 0:
        return "0"
    digits = max(0, 3 - int(math.floor(math.log10(abs(value)))))
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _folded(key: str, text: str, indent: int) -> list[str]:
    pad = " " * indent
    lines = textwrap.wrap(" ".join(text.split()), width=100 - indent - 2)
    return [f"{pad}{key}: >-", *(f"{pad}  {line}" for line in lines)]


def _yaml_scalar(value: str) -> str:
    import json

    return json.dumps(value)


def compiler_version(cc: str) -> str:
    """`cc --version`'s first line (for provenance)."""
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        return cc
    return out[0] if out else cc


def cycles_per_instruction(measurements: Sequence[KernelMeasurement]) -> float:
    total = sum(m.instructions for m in measurements)
    return sum(m.cycles for m in measurements) / total if total else 1.0


def latency_block(fit: LatencyFit, target: "TargetSpec", measurements: Sequence[KernelMeasurement], grid: str,
                  emulator: str, compiler: str, date: str, instruction_cycles_text: Sequence[str]) -> list[str]:
    """The `latency:` section of a target file holding `fit` (YAML lines)."""
    worst = fit.max_relative_error
    cpi = cycles_per_instruction(measurements)
    count = len(measurements)
    source = (f"calibrated by `edgejpq calibrate --target {target.name}{' --quick' if grid == 'quick' else ''}` "
              f"on {date} (edgejpq {__version__}): {count} one-layer models (every kernel x 8/4/2-bit weights "
              f"over the {grid} grid of shapes, edgejpq/calibrate.py) built with this file's compiler flags "
              f"({compiler}) and the {target.kernels} kernels, run in {emulator}; each layer's "
              f"instructions counted exactly by edgejpq's QEMU plugin, turned into cycles with "
              f"latency.instruction_cycles, and fitted by bounded least squares in relative error "
              f"(largest error {100 * worst:.1f}%). Not measured on a board.")
    conversion = (f"estimated, not measured: QEMU has no cycle counter, so the plugin counts every executed "
                  f"instruction by class (edgejpq/emulate/plugin) and each class costs the cycles of "
                  f"latency.instruction_cycles ({target.core}; loads and stores of several words by their word "
                  f"count, taken branches, multiplies and divides apart); over the calibration runs that is "
                  f"{_fmt(cpi)} cycles per instruction on average (calibration.cycles_per_instruction). Memory "
                  f"wait states and caches are not modelled.")
    lines = ["latency:", "  calibrated: true", *_folded("source", source, 2),
             *_folded("instructions_to_cycles", conversion, 2), "  cycles_per_mac:"]
    width = max(len(k) for k in WEIGHTED_KINDS) + 1
    for kind in WEIGHTED_KINDS:
        entries = dict(getattr(target.latency.cycles_per_mac, kind))
        entries.update(fit.cycles_per_mac_table[kind])
        body = ", ".join(f"{key}: {_fmt(value)}" for key, value in entries.items())
        lines.append(f"    {(kind + ':').ljust(width)} {{{body}}}")
    lines += [f"  per_layer_overhead_cycles: {_fmt(fit.per_layer_overhead_cycles)}",
              f"  per_output_channel_overhead_cycles: {_fmt(fit.per_output_channel_overhead_cycles)}"
              "   # per output value (each kept channel at each pixel)",
              f"  per_output_pixel_overhead_cycles: {_fmt(fit.per_output_pixel_overhead_cycles)}",
              "  per_input_element_cycles: {"
              + ", ".join(f"{k}: {_fmt(v)}" for k, v in fit.per_input_element_cycles.items()) + "}",
              "  per_channel_cycles: {" + ", ".join(f"{k}: {_fmt(v)}" for k, v in fit.per_channel_cycles.items()) + "}",
              "  ungrouped_cycles_per_mac: {"
              + ", ".join(f"{k}: {_fmt(v)}" for k, v in fit.ungrouped_cycles_per_mac.items()) + "}",
              "  sub_byte_output_value_cycles: {"
              + ", ".join(f"{k}: {_fmt(v)}" for k, v in fit.sub_byte_output_value_cycles.items()) + "}",
              f"  per_window_row_cycles: {_fmt(fit.per_window_row_cycles)}",
              f"  per_gathered_input_element_cycles: {_fmt(fit.per_gathered_input_element_cycles)}",
              "  elementwise_cycles_per_element: {"
              + ", ".join(f"{k}: {_fmt(v)}" for k, v in fit.elementwise_cycles_per_element.items()) + "}",
              "  kernel_cycles:   # per kernel kind and loop quantity (edgejpq.cost.model.kernel_counts)",
              *(f"    {(k + ':').ljust(width)} {{" + ", ".join(f"{q}: {_fmt(v)}" for q, v in table.items()) + "}"
                for k, table in fit.kernel_cycles.items()),
              *instruction_cycles_text,
              "  calibration:",
              f"    date: {_yaml_scalar(date)}",
              f"    tool: {_yaml_scalar(f'edgejpq {__version__}')}",
              f"    emulator: {_yaml_scalar(emulator)}",
              f"    compiler: {_yaml_scalar(compiler)}",
              f"    kernels: {target.kernels}",
              f"    grid: {grid}",
              f"    measurements: {count}",
              f"    max_relative_error: {worst:.4f}",
              f"    cycles_per_instruction: {cpi:.4f}"]
    return lines


def _section(lines: list[str], key: str, where: str) -> tuple[int, int]:
    """[start, end) line range of a top-level key's block."""
    start = next((i for i, line in enumerate(lines) if line.startswith(f"{key}:")), None)
    if start is None:
        raise EdgejpqError(f"{where}: key {key}: not found as a top-level block; calibrate rewrites that block")
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith((" ", "#"))):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return start, end


def _sub_block(lines: list[str], key: str) -> list[str]:
    """Lines of a two-space-indented key inside a block (the key line and its deeper lines)."""
    for i, line in enumerate(lines):
        if line.startswith(f"  {key}:"):
            end = i + 1
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            return lines[i:end]
    return []


def calibrated_text(source_text: str, target: "TargetSpec", fit: LatencyFit,
                    measurements: Sequence[KernelMeasurement], grid: str, emulator: str, compiler: str,
                    date: Optional[str] = None) -> str:
    """The target file's text with its `latency:` block replaced by `fit` and its provenance."""
    lines = source_text.splitlines()
    start, end = _section(lines, "latency", target.where)
    instruction_cycles = _sub_block(lines[start:end], "instruction_cycles")
    date = date or _now()
    block = latency_block(fit, target, measurements, grid, emulator, compiler, date, instruction_cycles)
    return "\n".join([*lines[:start], *block, *lines[end:]]) + "\n"


def write_calibration(output: Path, text: str) -> "TargetSpec":
    """Validate `text` as a target file, write it atomically to `output`, and re-read it as any user would."""
    import yaml

    from edgejpq.cost.target import load_target_file, validate_target

    output = Path(output)
    validate_target(yaml.safe_load(text), str(output))  # before touching the file
    atomic_write_bytes(output, text.encode("utf-8"))
    return load_target_file(output)


# --------------------------------------------------------------------------- code size


def kernel_function(case: KernelCase) -> str:
    """The C kernel function the measured layer of `case` calls (codegen.lower.KERNEL_SOURCES)."""
    if case.kind == "fully_connected":
        return f"ejq_fc_s8_w{case.bits}"
    if case.weighted:
        return f"ejq_{'dwconv2d' if case.kind == 'depthwise_conv2d' else 'conv2d'}_s8_w{case.bits}"
    return {"maxpool": "ejq_maxpool_s8", "avgpool": "ejq_avgpool_s8", "add": "ejq_add_s8",
            "concat": "ejq_concat_requant_s8", "copy": "ejq_copy_s8"}[case.kind]


def case_kernel(case: KernelCase) -> str:
    """The key of `case`'s kernel in code_size.per_kernel_bytes (edgejpq.cost.model.kernel_key)."""
    from edgejpq.cost.model import kernel_key

    if case.weighted:
        return kernel_key(case.kind, case.bits)
    return kernel_key({"maxpool": "max", "avgpool": "avg"}.get(case.kind, case.kind))


def code_size_cases() -> list[KernelCase]:
    """One one-layer model per kernel family x bit-width (its object's linked bytes), and layers of several
    weight runs (the per-run bytes of the model code)."""
    cases: list[KernelCase] = []
    for bits in BITS:
        cases += [conv_case("conv2d", (8, 8, 16), 16, bits), conv_case("depthwise_conv2d", (8, 8, 16), 0, bits),
                  fc_case(64, 16, bits)]
    cases += [*_MIXED[:8], *(case for case in _STRUCTURE if len(case.mix) > 4)]
    return cases + _elementwise_cases(((8, 8, 16),))


@dataclass(frozen=True)
class CodeSizeFit:
    """Measured flash of the generated code: what targets/*.yaml code_size holds."""

    base_bytes: int  # the fit's intercept plus the largest runtime-library share seen
    per_layer_bytes: int
    per_weight_run_bytes: int
    per_kernel_bytes: dict[str, int]  # family -> its kernel object's linked bytes
    shared_bytes: dict[str, int]  # support object (codegen.generate.SUPPORT_SOURCES) -> its linked bytes
    kernel_shares: dict[str, list[str]]  # family -> the support objects its builds linked
    builds: int
    max_model_code_error: int  # bytes: the model-code fit's largest miss over the builds

    @property
    def default_kernel_bytes(self) -> int:
        return max(self.per_kernel_bytes.values())


def measure_code_size(target: "TargetSpec", workdir: Path, workers: int = 2,
                      on_done: Optional[Callable[[KernelCase], None]] = None) -> CodeSizeFit:
    """Link `code_size_cases` with the target's flags and kernel set and read the linker map.

    Each kernel's bytes are its object's sections kept by the link (--gc-sections drops what the
    layer does not call), and the support objects it links (shared by several kernels) are listed
    apart with their bytes, so a model pays for them once; the model code (`<name>_model.c`:
    invoke, parameter structs, run tables) is fitted as base + per layer + per weight run by least
    squares; the runtime library routines the kernels pull in go into the base."""
    from codegen.generate import generate_sources
    from codegen.lower import KERNEL_SOURCES
    from edgejpq.emulate.qemu import build_qemu

    check_calibratable(target)
    cases = code_size_cases()
    workdir = Path(workdir)

    def one(item: tuple[int, KernelCase]) -> tuple[KernelCase, QuantizedModel, "FirmwareSizes"]:
        i, case = item
        model = kernel_model(case)
        folder = workdir / f"code{i:03d}"
        sources = generate_sources(model, folder / "src", kernels=target.kernels)
        sizes = build_qemu(model, sources, folder / "build", target).sizes
        if on_done is not None:
            on_done(case)
        return case, model, sizes

    with ThreadPoolExecutor(max(1, workers)) as pool:
        builds = list(pool.map(one, enumerate(cases)))
    entries = {Path(source).with_suffix(".o").name for source in KERNEL_SOURCES.values()}
    kernels: dict[str, int] = {}
    shared: dict[str, int] = {}
    shares: dict[str, set[str]] = {}
    rows, model_code, runtime = [], [], 0
    for case, model, sizes in builds:
        obj = Path(KERNEL_SOURCES[kernel_function(case)]).with_suffix(".o").name
        if obj not in sizes.kernels:
            raise EdgejpqError(f"{case.label}: the firmware links no {obj} (linked: {', '.join(sizes.kernels)}); "
                               f"this is a bug in edgejpq")
        family = case_kernel(case)
        kernels[family] = max(kernels.get(family, 0), sizes.kernels[obj])
        for support, size in sizes.kernels.items():
            if support not in entries:
                name = support_name(support)
                shared[name] = max(shared.get(name, 0), size)
                shares.setdefault(family, set()).add(name)
        runtime = max(runtime, sizes.runtime_bytes)
        if case.kind != "copy":  # the copy case's reshape is a layer the cost model does not count
            layers = sum(1 for op in model.ops if not isinstance(op, Reshape))
            runs = sum(len(op.runs) for op in model.ops if isinstance(op, (Conv2D, FullyConnected)))
            rows.append((1.0, float(layers), float(runs)))
            model_code.append(float(sizes.model_code_bytes))
    design, y = np.array(rows), np.array(model_code)
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    per_layer, per_run = (max(0, math.ceil(c)) for c in coef[1:])
    intercept = max(0, math.ceil(float(np.max(y - design[:, 1] * per_layer - design[:, 2] * per_run))))
    miss = int(np.max(np.abs(intercept + design[:, 1] * per_layer + design[:, 2] * per_run - y)))
    return CodeSizeFit(intercept + runtime, per_layer, per_run, dict(sorted(kernels.items())),
                       dict(sorted(shared.items())), {k: sorted(v) for k, v in sorted(shares.items())}, len(builds),
                       miss)


def support_name(obj: str) -> str:
    """The code_size.shared_bytes key of a support object file: ejq_dsp_dw.o -> dsp_dw."""
    return Path(obj).stem.removeprefix("ejq_")


def code_size_block(fit: CodeSizeFit, target: "TargetSpec", compiler: str, date: str) -> list[str]:
    """The `code_size:` section of a target file holding `fit` (YAML lines)."""
    source = (f"measured by `edgejpq calibrate --target {target.name}` on {date} (edgejpq {__version__}): "
              f"{fit.builds} one-layer models linked with this file's compiler flags ({compiler}), the "
              f"{target.kernels} kernels and -Wl,--gc-sections. A kernel's bytes are its object's sections the "
              f"link keeps (code and its constants), the support objects it calls are listed apart (linked once "
              f"however many kernels call them); layer and run bytes are a least-squares fit of the "
              f"generated model code (invoke, parameter structs, run tables; largest miss {fit.max_model_code_error} "
              f"bytes), rounded up; base_bytes adds the runtime library routines the kernels call.")
    width = max(len(k) for k in fit.per_kernel_bytes) + 1
    lines = ["code_size:", "  measured: true", *_folded("source", source, 2),
             f"  base_bytes: {fit.base_bytes}",
             f"  per_layer_bytes: {fit.per_layer_bytes}",
             f"  per_weight_run_bytes: {fit.per_weight_run_bytes}",
             "  per_kernel_bytes:",
             *(f"    {(k + ':').ljust(width)} {v}" for k, v in fit.per_kernel_bytes.items()),
             f"  default_kernel_bytes: {fit.default_kernel_bytes}"]
    if fit.shared_bytes:
        lines += ["  shared_bytes:", *(f"    {k}: {v}" for k, v in fit.shared_bytes.items()),
                  "  kernel_shares:", *(f"    {(k + ':').ljust(width)} [{', '.join(v)}]"
                                       for k, v in fit.kernel_shares.items())]
    return lines


def code_size_text(source_text: str, target: "TargetSpec", fit: CodeSizeFit, compiler: str,
                   date: Optional[str] = None) -> str:
    """The target file's text with its `code_size:` block replaced by `fit` and its provenance."""
    lines = source_text.splitlines()
    start, end = _section(lines, "code_size", target.where)
    date = date or _now()
    return "\n".join([*lines[:start], *code_size_block(fit, target, compiler, date), *lines[end:]]) + "\n"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- the whole job


@dataclass(frozen=True)
class CalibrationRun:
    """What `calibrate_target` did: the measurements, the fits, the file written and the target it now holds."""

    target: "TargetSpec"  # as re-read from `output`
    output: Path
    grid: str  # "full", "quick", or "none" (code size only)
    fit: Optional[LatencyFit]  # None when only the code size was measured
    code: CodeSizeFit
    measurements: tuple[KernelMeasurement, ...]
    emulator: str
    compiler: str
    seconds: float


def calibrate_target(target: "TargetSpec", output: Path, *, quick: bool = False, latency: bool = True,
                     workers: int = 2, workdir: Optional[Path] = None, on_start: Optional[Callable[[int], None]] = None,
                     on_done: Optional[Callable[[str], None]] = None) -> CalibrationRun:
    """Measure `target`'s code size and (unless `latency` is False) its latency grid in QEMU, and write the
    target file to `output`: `target`'s own file with its `code_size:` (and `latency:`) block replaced.

    `on_start` gets the number of builds, `on_done` the label of each finished one."""
    import tempfile
    import time

    from edgejpq.emulate.qemu import find_cross_tools, qemu_version

    check_calibratable(target)
    tools = find_cross_tools(target.compiler.cc)
    output = Path(output)
    folder = output.resolve().parent
    if not folder.is_dir():
        raise EdgejpqError(f"{output}: output folder {folder} does not exist")
    try:
        source_text = Path(target.path).read_text(encoding="utf-8")
    except OSError as exc:
        raise EdgejpqError(f"{target.where}: cannot read the target file ({exc.strerror})") from None
    cases = (quick_grid() if quick else calibration_grid()) if latency else []
    if on_start is not None:
        on_start(len(cases) + len(code_size_cases()))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgejpq-calibrate-") as tmp:
        root = Path(workdir or tmp)
        code = measure_code_size(target, root / "code", workers,
                                 on_done=None if on_done is None else lambda case: on_done(f"linked {case.label}"))
        measured = measure_cases(cases, target, root, workers=workers,
                                 on_done=None if on_done is None else lambda m: on_done(f"measured {m.case.label}"))
    compiler = compiler_version(tools.cc)
    emulator = f"{qemu_version()}, machine {target.qemu.machine}"  # type: ignore[union-attr]
    text = code_size_text(source_text, target, code, compiler)
    fit = fit_latency(measured) if latency else None
    grid = ("quick" if quick else "full") if latency else "none"
    if fit is not None:
        text = calibrated_text(text, target, fit, measured, grid, emulator, compiler)
    written = write_calibration(output, text)
    return CalibrationRun(written, output, grid, fit, code, tuple(measured), emulator, compiler,
                          time.perf_counter() - start)

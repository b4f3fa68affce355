"""The cost model: flash bytes, peak RAM (arena) and latency of a model on a target.

Two faces of the same formulas:
  - exact, for a discrete plan: from the QuantizedModel that export produces (packed weight
    bytes, per-channel constants, planned arena), so the figures are what the generated C holds;
  - expected, during the search: the same formulas fed with keep probabilities and bit-width
    probabilities (torch tensors), differentiable.
Latency is cycles from the target's look-up table (cycles per MAC by op kind × weight bits, plus
per-layer, per-output-channel and per-output-pixel overheads, and per-element costs of pooling,
add and concat); ms at the target clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from edgejpq.artifact import Add, Concat, Conv2D, FullyConnected, Op, Pool, QuantizedModel, Reshape, weight_k

CONSTANT_BYTES_PER_CHANNEL = 12  # int32 bias, multiplier and shift per output channel
SUB_BYTE_GROUP = {8: 1, 4: 2, 2: 4}  # channels sharing a weight byte in the DSP kernels (codegen/dsp_layout.py)
DW_PASS = 8  # channels a DSP depthwise pass handles (EJQ_DW_CHANNELS in ejq_dsp_dw.h)
DW_QUAD = 4  # of those, the channels its input conversion takes a word at a time
FAST_MAX_EXPONENT = 23  # the fast requantization path's largest right shift (ejq_dsp.h)


def op_kind(op: Op) -> str:
    """The latency table's name for an op (and the code-size table's kernel family)."""
    if isinstance(op, Conv2D):
        if op.depthwise:
            return "depthwise_conv2d"
        return "pointwise_conv2d" if op.kernel == (1, 1) else "conv2d"
    if isinstance(op, FullyConnected):
        return "fully_connected"
    if isinstance(op, Pool):
        return "pool"
    if isinstance(op, Add):
        return "add"
    if isinstance(op, Concat):
        return "concat"
    return "reshape"


def cost_kind(kind: str, in_channels: int, kernels: Any) -> str:
    """The kernel that runs a layer of `kind`: the DSP set runs a convolution of one input channel (a
    first layer) on its depthwise machinery (firmware_templates/kernels/dsp/ejq_dsp_conv.h), so the
    cost model prices it as a depthwise layer of as many channels."""
    return "depthwise_conv2d" if kernels == "dsp" and kind == "conv2d" and in_channels == 1 else kind


def input_elements(kind: str, pixels: Any, k: Any, kept_channels: Any, runs: int, input_pixels: Any) -> Any:
    """Input elements the kernel calls of one layer convert before multiplying (see edgejpq.cost.target):
    per call the im2col windows (pixels × K) of a convolution or the K inputs of a fully connected
    layer; a depthwise convolution converts the input plane of its own channels only (the exact count,
    the rows its passes visit, is kernel_counts' `quad_input`)."""
    if kind == "depthwise_conv2d":
        return input_pixels * kept_channels
    return runs * pixels * k


def ungrouped_channels(kind: str, bits: int, count: int) -> int:
    """Channels of a weight run that do not fill a sub-byte group (the DSP kernels' slower path) of a
    convolution or fully connected layer. Depthwise has none: its channels' costs are kernel_counts'.
    A fully connected 2-bit run packs two of the channels left over from its quads as a pair, which runs
    at about the quads' rate (codegen/dsp_layout.py), so only a third left-over channel is ungrouped."""
    if kind == "depthwise_conv2d" or bits not in (2, 4):
        return 0
    left = count % SUB_BYTE_GROUP[bits]
    if kind == "fully_connected" and bits == 2 and left >= 2:
        return left - 2
    return left


@dataclass(frozen=True)
class Geometry:
    """A conv layer's window geometry (a fully connected layer: all ones)."""

    in_h: int = 1
    in_w: int = 1
    out_h: int = 1
    out_w: int = 1
    kernel_h: int = 1
    kernel_w: int = 1
    stride_h: int = 1
    stride_w: int = 1
    pad_top: int = 0
    pad_left: int = 0

    @property
    def fast_3x3(self) -> bool:
        """The depthwise kernel's assembly path (ejq_dsp_dw.h: 3x3, stride 1 along the row)."""
        return self.kernel_h == 3 and self.kernel_w == 3 and self.stride_w == 1

    @property
    def plane_w(self) -> int:
        """Width of a depthwise plane row (ejq_dsp_dw_run)."""
        padded = max(self.in_w + self.pad_left, (self.out_w - 1) * self.stride_w + self.kernel_w)
        return (padded + 2) & ~1

    @property
    def rows_visited(self) -> int:
        """Input rows (padding included) a depthwise pass fills: each once (the ring of kernel_h rows)."""
        return len({oy * self.stride_h - self.pad_top + ky for oy in range(self.out_h) for ky in range(self.kernel_h)})

    @property
    def rows_in(self) -> int:
        """Of those, the rows inside the input (converted; the others are zeroed)."""
        return len({iy for oy in range(self.out_h) for ky in range(self.kernel_h)
                    if 0 <= (iy := oy * self.stride_h - self.pad_top + ky) < self.in_h})


    @property
    def window_taps(self) -> int:
        """Kernel taps inside the input summed over the output pixels (the portable kernels skip padding)."""
        rows = sum(sum(1 for ky in range(self.kernel_h) if 0 <= oy * self.stride_h - self.pad_top + ky < self.in_h)
                   for oy in range(self.out_h))
        cols = sum(sum(1 for kx in range(self.kernel_w) if 0 <= ox * self.stride_w - self.pad_left + kx < self.in_w)
                   for ox in range(self.out_w))
        return rows * cols


def op_geometry(op: Any, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Geometry:
    if not isinstance(op, Conv2D):
        return Geometry()
    return Geometry(in_shape[0], in_shape[1], out_shape[0], out_shape[1], op.kernel[0], op.kernel[1],
                    op.stride[0], op.stride[1], op.padding[0], op.padding[2])


def kernel_counts(kind: str, g: Geometry, runs: Sequence[tuple[int, int]], kept: Any, k: Any = 0,
                  conv1: bool = False, slow: Any = 0, skips_padding: bool = False) -> dict[str, Any]:
    """How often the kernels of one layer run each costed part of their loops (target KERNEL_QUANTITIES
    of `kind`, plus `quad_input` for depthwise, priced by per_input_element_cycles).

    `runs` are the layer's weight runs (bits, channels), one kernel call each; `kept` their channels
    in all (a number, or a tensor during the search: the counts linear in it keep their gradient);
    `k` the weights per channel; `conv1` a convolution of one input channel on the depthwise
    machinery; `slow` the channels whose requantization is off the fast path (ejq_requant_table).

    im2col convolution (ejq_dsp_conv.h), per call: pairs of output pixels (two im2col windows and the
    loop), the column sums of sub-byte runs (K4 per pair), an odd 8-bit run's last channel computed
    as a pair (its MACs again). Depthwise (ejq_dsp_dw.h), per call and per pass of up to 8 channels:
    the pass (taps, zeroed planes of kernel_h × plane_w, its output rows), the input rows it fills
    (word-wise 4 channels at a time: `quad_input`; the rest, and a conv1's one plane, byte by byte:
    `single_input`), per channel and output row (assembly set-up, requantization loop, the odd last
    output of a 3x3 row), per channel the tap expansion, and for shapes other than 3x3 stride 1 the
    generic loop (tap pairs, kernel rows per output). Fully connected (ejq_dsp_fc.h): 8-bit channels
    outside a group of 4. Every kind: output values off the fast requantization path.

    With `skips_padding` (the portable kernels, which visit only a window's in-bounds taps) a
    convolution's MACs per channel are its in-bounds taps × input channels (`window_mac`, used by
    weighted_cycles for cycles_per_mac in place of pixels × K)."""
    pixels = g.out_h * g.out_w
    counts: dict[str, Any] = {"slow_value": slow * pixels, "value": kept * pixels}
    if skips_padding and kind in ("conv2d", "pointwise_conv2d", "depthwise_conv2d"):
        counts["window_mac"] = g.window_taps * (k / (g.kernel_h * g.kernel_w))
    if kind in ("conv2d", "pointwise_conv2d"):
        pairs = (pixels + 1) // 2
        k4 = k + (((-k) % 4).detach() if hasattr(k, "detach") else (-k) % 4)  # K rounded up to 4
        counts["pixel_pair"] = len(runs) * pairs
        counts["sub_byte_column"] = sum(pairs * k4 for bits, _ in runs if bits != 8)
        counts["odd_w8_mac"] = sum((count % 2) * pixels * k for bits, count in runs if bits == 8)
    elif kind == "depthwise_conv2d":
        passes = sum(-(-count // DW_PASS) for _, count in runs)
        kw2 = (g.kernel_w + 1) & ~1
        rows_in = g.rows_in
        counts["pass"] = passes
        counts["pass_plane"] = passes * g.kernel_h * g.plane_w
        counts["pass_row"] = passes * g.out_h
        counts["input_row"] = passes * g.rows_visited
        if conv1:
            counts["single_input"] = passes * rows_in * g.in_w
            counts["quad_input"] = 0
        else:
            single = sum(count % DW_QUAD for _, count in runs) * rows_in * g.in_w
            counts["single_input"] = single
            counts["quad_input"] = kept * rows_in * g.in_w - single
        counts["channel_row"] = kept * g.out_h
        counts["channel_tap"] = kept * g.kernel_h * kw2
        fast = g.fast_3x3
        counts["generic_tap"] = 0 if fast else kept * pixels * g.kernel_h * kw2
        counts["generic_window_row"] = 0 if fast else kept * pixels * g.kernel_h
        counts["odd_row"] = kept * g.out_h if fast and g.out_w % 2 else 0
    elif kind == "fully_connected":
        counts["single_w8_mac"] = sum((count % 4) * k for bits, count in runs if bits == 8)
    return counts


def slow_requantization(multiplier: Any, shift: Any) -> Any:
    """Per channel: True where the DSP kernels requantize off the fast path (ejq_requant_table in
    firmware_templates/kernels/dsp/ejq_dsp.h: the shift must be in [-23, -1] and the multiplier > 2^30)."""
    import numpy as np

    m = np.asarray(multiplier, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    return ~((s <= -1) & (s >= -FAST_MAX_EXPONENT) & (m > (1 << 30)))


def weighted_cycles(target: Any, kind: str, pixels: Any, k: Any, channels_by_bits: Mapping[int, Any],
                    kept_channels: Any, runs: int, input_pixels: Any = 0, ungrouped: Any = 0,
                    kernel_rows: int = 1, in_channels: int = 0, counts: Optional[Mapping[str, Any]] = None) -> Any:
    """Cycles of one conv/linear layer: MACs at each bit-width's rate plus overheads.

    The per-layer and per-pixel overheads are paid once per kernel call, i.e. per weight run;
    the per-output-value overhead once per output value; the per-channel one once per kept
    channel; the input conversion per input element (`input_elements`; `input_pixels` is the
    input's H × W, used by depthwise); `ungrouped` channels (`ungrouped_channels`, summed over the
    runs) pay extra per MAC, and so does the epilogue of sub-byte output values; a convolution's
    im2col costs per pixel and `kernel_rows`, more when `in_channels` is not a multiple of 4; `counts`
    (kernel_counts) are the kernels' loop quantities priced by latency.kernel_cycles. Works on
    numbers (exact) and on torch tensors (expected values during the search)."""
    table = target.latency
    counts = counts or {}
    cycles = runs * (table.per_layer_overhead_cycles + table.per_output_pixel_overhead_cycles * pixels)
    cycles = cycles + table.per_output_channel_overhead_cycles * kept_channels * pixels
    per_input = target.input_element_cycles(kind)
    if per_input:
        elements = (counts["quad_input"] if kind == "depthwise_conv2d" and "quad_input" in counts
                    else input_elements(kind, pixels, k, kept_channels, runs, input_pixels))
        cycles = cycles + per_input * elements
    per_channel = target.channel_cycles(kind)
    if per_channel:
        cycles = cycles + per_channel * kept_channels
    per_ungrouped = target.ungrouped_cycles(kind)
    if per_ungrouped:
        cycles = cycles + per_ungrouped * ungrouped * pixels * k
    if kind != "depthwise_conv2d":
        for bits, count in channels_by_bits.items():
            extra = target.sub_byte_value_cycles(bits) if bits in (2, 4) else 0.0
            if extra:
                cycles = cycles + extra * count * pixels
    if kind in ("conv2d", "pointwise_conv2d"):
        cycles = cycles + table.per_window_row_cycles * runs * pixels * kernel_rows
        if in_channels % 4:
            elements = input_elements(kind, pixels, k, kept_channels, runs, input_pixels)
            cycles = cycles + table.per_gathered_input_element_cycles * elements
    for quantity, count in counts.items():
        per = target.kernel_quantity_cycles(kind, quantity) if quantity not in ("quad_input", "window_mac") else 0.0
        if per:
            cycles = cycles + per * count
    macs_per_channel = counts.get("window_mac", pixels * k)
    for bits, count in channels_by_bits.items():
        cycles = cycles + count * macs_per_channel * target.cycles_per_mac(kind, bits)
    return cycles


def pool_cycles(target: Any, outputs: Any, kernel: tuple[int, int]) -> Any:
    """Cycles of a pooling layer: per window tap (elementwise pool), per output value and per window row."""
    return (elementwise_cycles(target, "pool", outputs * kernel[0] * kernel[1])
            + outputs * (target.kernel_quantity_cycles("pool", "output")
                         + kernel[0] * target.kernel_quantity_cycles("pool", "window_row")))


def elementwise_cycles(target: Any, kind: str, elements: Any) -> Any:
    return target.latency.per_layer_overhead_cycles + elements * target.elementwise_cycles(kind)


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    channels: int
    bits: str  # e.g. "w8×12 w4×3"
    macs: int
    weight_bytes: int
    constant_bytes: int
    cycles: float


@dataclass(frozen=True)
class CostReport:
    weight_bytes: int
    constant_bytes: int
    code_bytes: int  # kernels as linked, model code as fitted (targets/*.yaml code_size, `edgejpq calibrate`)
    arena_bytes: int
    io_bytes: int  # the caller's input and output buffers (not in the arena)
    cycles: float
    clock_hz: int
    layers: tuple[LayerCost, ...]

    @property
    def flash_bytes(self) -> int:
        return self.weight_bytes + self.constant_bytes + self.code_bytes

    @property
    def ram_bytes(self) -> int:
        return self.arena_bytes

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.cycles / self.clock_hz

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def as_dict(self) -> dict[str, Any]:
        return {"flash_bytes": self.flash_bytes, "weight_bytes": self.weight_bytes,
                "constant_bytes": self.constant_bytes, "code_bytes": self.code_bytes,
                "ram_bytes": self.ram_bytes, "arena_bytes": self.arena_bytes, "io_bytes": self.io_bytes,
                "cycles": round(self.cycles), "latency_ms": round(self.latency_ms, 4), "macs": self.macs}


def kernel_family(kind: str) -> str:
    """The kernel family of a weighted op of latency kind `kind` (one conv kernel serves pointwise layers)."""
    return "conv2d" if kind == "pointwise_conv2d" else kind


def kernel_key(kind: str, bits: int | None = None) -> str:
    """The code_size key of the kernel an op of kind `kind` calls: <family>_w<bits> for a weighted op at
    `bits`, <mode>_pool for pooling (kind max / avg), the kind itself otherwise."""
    if bits is not None:
        return f"{kernel_family(kind)}_w{bits}"
    return f"{kind}_pool" if kind in ("max", "avg") else kind


def kernel_names(model: QuantizedModel) -> set[str]:
    """Kernel families × bit-widths the generated C will contain (for the code-size estimate)."""
    names = set()
    for op in model.ops:
        if isinstance(op, (Conv2D, FullyConnected)):
            names.update(kernel_key(op_kind(op), run.bits) for run in op.runs)
        elif isinstance(op, Pool):
            names.add(kernel_key(op.mode))
        elif not isinstance(op, Reshape):
            names.add(kernel_key(op_kind(op)))
    return names


def code_bytes(model: QuantizedModel, target: Any) -> int:
    """Estimated flash for code: entry function, one call site per layer and run, the kernels used."""
    sizes = target.code_size
    layers = sum(1 for op in model.ops if not isinstance(op, Reshape))
    runs = sum(len(op.runs) for op in model.ops if isinstance(op, (Conv2D, FullyConnected)))
    kernels = target.kernels_code_bytes(kernel_names(model))
    return int(sizes.base_bytes + sizes.per_layer_bytes * layers + sizes.per_weight_run_bytes * runs + kernels)


def model_cost(model: QuantizedModel, target: Any) -> CostReport:
    """Exact flash / arena and table-based latency of an exported model on `target`."""
    layers = []
    total_cycles = 0.0
    for op in model.ops:
        out = model.tensors[op.output].shape
        pixels = out[0] * out[1]
        kind = op_kind(op)
        if isinstance(op, (Conv2D, FullyConnected)):
            k = weight_k(op, model.tensors)
            by_bits: dict[int, int] = {}
            for run in op.runs:
                by_bits[run.bits] = by_bits.get(run.bits, 0) + run.count
            in_shape = model.tensors[op.input].shape
            in_pixels = in_shape[0] * in_shape[1]
            kind = cost_kind(kind, in_shape[2], getattr(target, "kernels", None))
            ungrouped = sum(ungrouped_channels(kind, run.bits, run.count) for run in op.runs)
            kernel_rows = op.kernel[0] if isinstance(op, Conv2D) else 1
            slow = int(slow_requantization(model.arrays[f"{op.name}.multiplier"], model.arrays[f"{op.name}.shift"]).sum())
            conv1 = kind == "depthwise_conv2d" and not (isinstance(op, Conv2D) and op.depthwise)
            counts = kernel_counts(kind, op_geometry(op, in_shape, out), [(r.bits, r.count) for r in op.runs], out[2],
                                   k, conv1, slow, getattr(target, "kernels", None) == "portable")
            cycles = weighted_cycles(target, kind, pixels, k, by_bits, out[2], len(op.runs), in_pixels, ungrouped,
                                     kernel_rows, in_shape[2], counts)
            wbytes = int(model.arrays[f"{op.name}.weights"].size)
            cbytes = sum(int(model.arrays[f"{op.name}.{a}"].nbytes) for a in ("bias", "multiplier", "shift"))
            bits = " ".join(f"w{b}×{c}" for b, c in sorted(by_bits.items(), reverse=True))
            layers.append(LayerCost(op.source or op.name, kind, out[2], bits, pixels * k * out[2], wbytes, cbytes,
                                    float(cycles)))
        elif isinstance(op, Reshape):
            continue
        else:
            elements = out[0] * out[1] * out[2]
            if isinstance(op, Pool):
                cycles = pool_cycles(target, elements, op.kernel)
            else:
                cycles = elementwise_cycles(target, kind, elements)
            layers.append(LayerCost(op.name, kind, out[2], "", 0, 0, 0, float(cycles)))
        total_cycles += cycles
    io = model.input_info.size + model.output_info.size
    return CostReport(
        weight_bytes=model.weight_bytes,
        constant_bytes=sum(l.constant_bytes for l in layers),
        code_bytes=code_bytes(model, target), arena_bytes=model.layout.arena_bytes, io_bytes=io,
        cycles=float(total_cycles), clock_hz=int(target.clock_hz), layers=tuple(layers))

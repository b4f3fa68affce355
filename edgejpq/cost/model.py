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
from typing import Any, Mapping

from edgejpq.artifact import Add, Concat, Conv2D, FullyConnected, Op, Pool, QuantizedModel, Reshape, weight_k

CONSTANT_BYTES_PER_CHANNEL = 12  # int32 bias, multiplier and shift per output channel
SUB_BYTE_GROUP = {8: 1, 4: 2, 2: 4}  # channels sharing a weight byte in the DSP kernels (codegen/dsp_layout.py)
DEPTHWISE_GROUP = 4  # channels a DSP depthwise pass converts at once (codegen/dsp_layout.DW_CHANNELS)


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
    layer; a depthwise convolution converts the input plane of its own channels only."""
    if kind == "depthwise_conv2d":
        return input_pixels * kept_channels
    return runs * pixels * k


def ungrouped_channels(kind: str, bits: int, count: int) -> int:
    """Channels of a weight run that do not fill a group (the DSP kernels' slower path): a sub-byte group
    of a convolution or fully connected layer, or a depthwise pass of DEPTHWISE_GROUP channels."""
    if kind == "depthwise_conv2d":
        return count % DEPTHWISE_GROUP
    if bits not in (2, 4):
        return 0
    return count % SUB_BYTE_GROUP[bits]


def weighted_cycles(target: Any, kind: str, pixels: Any, k: Any, channels_by_bits: Mapping[int, Any],
                    kept_channels: Any, runs: int, input_pixels: Any = 0, ungrouped: Any = 0,
                    kernel_rows: int = 1, in_channels: int = 0) -> Any:
    """Cycles of one conv/linear layer: MACs at each bit-width's rate plus overheads.

    The per-layer and per-pixel overheads are paid once per kernel call, i.e. per weight run;
    the per-output-value overhead once per output value; the per-channel one once per kept
    channel; the input conversion per input element (`input_elements`; `input_pixels` is the
    input's H × W, used by depthwise); `ungrouped` channels (`ungrouped_channels`, summed over the
    runs) pay extra per MAC, and so does the epilogue of sub-byte output values; a convolution's
    im2col costs per pixel and `kernel_rows`, more when `in_channels` is not a multiple of 4. Works
    on numbers (exact) and on torch tensors (expected values during the search)."""
    table = target.latency
    cycles = runs * (table.per_layer_overhead_cycles + table.per_output_pixel_overhead_cycles * pixels)
    cycles = cycles + table.per_output_channel_overhead_cycles * kept_channels * pixels
    per_input = target.input_element_cycles(kind)
    if per_input:
        cycles = cycles + per_input * input_elements(kind, pixels, k, kept_channels, runs, input_pixels)
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
    for bits, count in channels_by_bits.items():
        cycles = cycles + count * pixels * k * target.cycles_per_mac(kind, bits)
    return cycles


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
    code_bytes: int  # an estimate until measured on the target (see targets/*.yaml code_size)
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


def kernel_names(model: QuantizedModel) -> set[str]:
    """Kernel families × bit-widths the generated C will contain (for the code-size estimate)."""
    names = set()
    for op in model.ops:
        kind = op_kind(op)
        if isinstance(op, (Conv2D, FullyConnected)):
            family = "conv2d" if kind == "pointwise_conv2d" else kind  # one conv kernel serves both
            names.update(f"{family}_w{run.bits}" for run in op.runs)
        elif isinstance(op, Pool):
            names.add(f"{op.mode}_pool")
        elif not isinstance(op, Reshape):
            names.add(kind)
    return names


def code_bytes(model: QuantizedModel, target: Any) -> int:
    """Estimated flash for code: entry function, one call site per layer and run, the kernels used."""
    sizes = target.code_size
    layers = sum(1 for op in model.ops if not isinstance(op, Reshape))
    runs = sum(len(op.runs) for op in model.ops if isinstance(op, (Conv2D, FullyConnected)))
    kernels = sum(target.kernel_bytes(name) for name in kernel_names(model))
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
            cycles = weighted_cycles(target, kind, pixels, k, by_bits, out[2], len(op.runs), in_pixels, ungrouped,
                                     kernel_rows, in_shape[2])
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
                elements *= op.kernel[0] * op.kernel[1]
            cycles = elementwise_cycles(target, kind, elements)
            layers.append(LayerCost(op.name, kind, out[2], "", 0, 0, 0, float(cycles)))
        total_cycles += cycles
    io = model.input_info.size + model.output_info.size
    return CostReport(
        weight_bytes=model.weight_bytes,
        constant_bytes=sum(l.constant_bytes for l in layers),
        code_bytes=code_bytes(model, target), arena_bytes=model.layout.arena_bytes, io_bytes=io,
        cycles=float(total_cycles), clock_hz=int(target.clock_hz), layers=tuple(layers))

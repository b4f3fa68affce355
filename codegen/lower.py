"""Lower a QuantizedModel into the typed context the firmware templates render.

The context says, for every op in execution order, which kernel functions to call with which
arguments, which `static const` parameter structs those calls point to, where every tensor lives
(C pointer expressions from the memory layout) and which constant arrays go to flash. The
templates turn it into C; nothing here writes C beyond identifiers and literals.

Parameter dataclasses mirror the C structs of firmware_templates/kernels/ejq_kernels.h field by
field (same names, same order): a template renders them as designated initializers, so a field
renamed on one side only fails to compile in every host test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from edgejpq import __version__
from edgejpq.artifact import (Add, Concat, Conv2D, FullyConnected, Pool, QuantizedModel, Reshape, TensorInfo,
                              weight_k)
from edgejpq.errors import EdgejpqError
from edgejpq.quant.packing import row_bytes
from edgejpq.quant.reference import unpacked_weights

from codegen import dsp_layout
from codegen.literals import c_identifier

DSP_KERNEL_SET = "dsp"

# Kernel function -> the source file (in every kernel set) that defines it.
KERNEL_SOURCES: dict[str, str] = {
    **{f"ejq_conv2d_s8_w{b}": f"ejq_conv2d_w{b}.c" for b in (8, 4, 2)},
    **{f"ejq_dwconv2d_s8_w{b}": f"ejq_dwconv2d_w{b}.c" for b in (8, 4, 2)},
    **{f"ejq_fc_s8_w{b}": f"ejq_fc_w{b}.c" for b in (8, 4, 2)},
    "ejq_maxpool_s8": "ejq_pool.c",
    "ejq_avgpool_s8": "ejq_pool.c",
    "ejq_add_s8": "ejq_add.c",
    "ejq_concat_copy_s8": "ejq_concat.c",
    "ejq_concat_requant_s8": "ejq_concat.c",
    "ejq_copy_s8": "ejq_copy.c",
}

CValue = Union[int, str]  # an int literal, or a C expression (pointer, NULL)


# --------------------------------------------------------------------------- C parameter structs


@dataclass(frozen=True)
class WeightRunStruct:
    """ejq_weight_run."""

    start: int
    count: int
    row_bytes: int
    weights: str
    bias: str
    multiplier: str
    shift: str
    kernel_sum: str


@dataclass(frozen=True)
class WindowGeometry:
    """ejq_window_geometry."""

    in_h: int
    in_w: int
    out_h: int
    out_w: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int


@dataclass(frozen=True)
class ConvStruct:
    """ejq_conv_params."""

    geometry: WindowGeometry
    in_c: int
    out_c: int
    input_offset: int
    output_offset: int
    act_min: int
    act_max: int
    scratch: str
    scratch_bytes: int


@dataclass(frozen=True)
class FcStruct:
    """ejq_fc_params."""

    in_size: int
    out_size: int
    input_offset: int
    output_offset: int
    act_min: int
    act_max: int
    scratch: str
    scratch_bytes: int
    single_rounding: int


@dataclass(frozen=True)
class PoolStruct:
    """ejq_pool_params."""

    geometry: WindowGeometry
    channels: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class AddStruct:
    """ejq_add_params."""

    size: int
    input1_offset: int
    input2_offset: int
    left_shift: int
    input1_multiplier: int
    input1_shift: int
    input2_multiplier: int
    input2_shift: int
    output_multiplier: int
    output_shift: int
    output_offset: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class ConcatStruct:
    """ejq_concat_params."""

    pixels: int
    in_c: int
    out_c: int
    channel_offset: int
    input_offset: int
    output_offset: int
    multiplier: int
    shift: int


StructValue = Union[WeightRunStruct, WindowGeometry, ConvStruct, FcStruct, PoolStruct, AddStruct, ConcatStruct]


# --------------------------------------------------------------------------- context types


@dataclass(frozen=True)
class TensorRef:
    index: int  # position in the model's tensor table (the trace record's tensor index)
    name: str
    shape: tuple[int, int, int]
    size: int
    pointer: str  # C expression of its first byte inside <name>_invoke


@dataclass(frozen=True)
class ConstArray:
    """One constant array of weights.c (flash)."""

    symbol: str
    ctype: str  # "uint8_t" or "int32_t"
    values: tuple[int, ...]
    comment: str

    @property
    def length(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class ParamBlock:
    """A `static const` parameter struct (or array of them) in model.c."""

    ctype: str
    symbol: str
    items: tuple[StructValue, ...]
    is_array: bool


@dataclass(frozen=True)
class KernelCall:
    function: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    """One op: the parameter structs it needs, its kernel calls, and the tensor it produces."""

    index: int
    op_name: str
    kind: str
    summary: str
    params: tuple[ParamBlock, ...]
    calls: tuple[KernelCall, ...]
    output: TensorRef


@dataclass(frozen=True)
class ModelContext:
    name: str  # C identifier prefixing every symbol and file
    macro: str  # upper-case prefix of the header's macros
    model_name: str
    version: str
    short_hash: str
    content_hash: str
    kernels: str
    input: TensorRef
    output: TensorRef
    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int
    arena_bytes: int
    weight_bytes: int
    scratch_bytes: int  # the kernels' scratch buffer (DSP set), 0 if none
    tensors: tuple[TensorRef, ...]
    arrays: tuple[ConstArray, ...]
    steps: tuple[Step, ...]

    @property
    def uses_arena(self) -> bool:
        return any(t.pointer.startswith(f"{self.name}_arena.") for t in self.tensors)

    @property
    def constant_bytes(self) -> int:
        """Bytes of every constant array in weights.c (what the model adds to flash besides code)."""
        return sum(a.length * (1 if a.ctype == "uint8_t" else 4) for a in self.arrays)

    @property
    def kernel_sources(self) -> tuple[str, ...]:
        """The kernel .c files the steps call, sorted, without repeats."""
        return tuple(sorted({KERNEL_SOURCES[call.function] for step in self.steps for call in step.calls}))


# --------------------------------------------------------------------------- lowering


def tensor_order(model: QuantizedModel) -> tuple[str, ...]:
    """Tensor names by trace index (the order of model.tensors)."""
    return tuple(model.tensors)


def _check_range(value: int, bits: int, what: str) -> int:
    if not 0 <= value < (1 << bits):
        raise EdgejpqError(f"{what} is {value}, more than the generated C supports ({(1 << bits) - 1}): "
                           f"split the layer or shrink the model")
    return value


class _Lowering:
    def __init__(self, model: QuantizedModel, name: str, kernels: str) -> None:
        self.model = model
        self.name = name
        self.kernels = kernels
        self.scratch_bytes = 0
        self.arrays: list[ConstArray] = []
        order = tensor_order(model)
        self.refs = {t: self._tensor_ref(i, model.tensors[t]) for i, t in enumerate(order)}

    def _tensor_ref(self, index: int, info: TensorInfo) -> TensorRef:
        placement = self.model.layout.placements[info.name]
        region_size = {"arena": self.model.layout.arena_bytes, "input": self.model.input_info.size,
                       "output": self.model.output_info.size}[placement.region]
        if placement.offset < 0 or placement.offset + info.size > region_size:
            raise EdgejpqError(f"tensor {info.name}: placed at {placement.region} offset {placement.offset}, but its "
                               f"{info.size} bytes do not fit the {region_size}-byte {placement.region} buffer")
        base = {"arena": f"{self.name}_arena.bytes", "input": "in", "output": "out"}[placement.region]
        return TensorRef(index=index, name=info.name, shape=info.shape, size=info.size,
                         pointer=f"{base} + {placement.offset}")

    def written(self, op_name: str, tensor: str) -> TensorRef:
        ref = self.refs[tensor]
        if self.model.layout.placements[tensor].region == "input":
            raise EdgejpqError(f"layer {op_name}: its output {tensor} is placed in the caller's read-only input "
                               f"buffer: re-plan the model's memory layout")
        return ref

    def u16(self, value: int, op_name: str, what: str) -> int:
        return _check_range(int(value), 16, f"layer {op_name}: {what}")

    def geometry(self, op: Conv2D | Pool) -> WindowGeometry:
        (in_h, in_w, _), (out_h, out_w, _) = self.model.tensors[op.input].shape, self.model.tensors[op.output].shape
        values = {"in_h": in_h, "in_w": in_w, "out_h": out_h, "out_w": out_w, "kernel_h": op.kernel[0],
                  "kernel_w": op.kernel[1], "stride_h": op.stride[0], "stride_w": op.stride[1],
                  "pad_top": op.padding[0], "pad_left": op.padding[2]}
        return WindowGeometry(**{key: self.u16(value, op.name, key.replace("_", " ")) for key, value in values.items()})

    # ----------------------------------------------------------------- weighted ops

    def _const(self, symbol: str, ctype: str, values: np.ndarray, comment: str) -> str:
        self.arrays.append(ConstArray(symbol=symbol, ctype=ctype, values=tuple(int(v) for v in values.ravel()),
                                      comment=comment))
        return symbol

    def weighted(self, index: int, op: Conv2D | FullyConnected) -> Step:
        model = self.model
        prefix = f"{self.name}_l{index}_{c_identifier(op.name)}"
        k = weight_k(op, model.tensors)
        label = f"layer {op.name} (op {index})"
        packed = model.arrays[f"{op.name}.weights"]
        layout = "packed weight rows"
        scratch, scratch_bytes = "NULL", 0
        if self.kernels == DSP_KERNEL_SET:
            scratch_bytes = dsp_layout.scratch_bytes(op, model.tensors)
            self.scratch_bytes = max(self.scratch_bytes, scratch_bytes)
            scratch = f"{self.name}_scratch.bytes"
            if not (isinstance(op, Conv2D) and op.depthwise):
                rows = unpacked_weights(op, model)
                packed = np.concatenate([dsp_layout.dsp_pack_run(rows[r.start: r.start + r.count], r.bits,
                                                                   pair2=isinstance(op, FullyConnected))
                                         for r in op.runs])
                layout = "weight rows in the DSP set's channel groups"
        weights = self._const(f"{prefix}_weights", "uint8_t", packed, f"{label}: {layout}, {k} weights a row")
        bias = self._const(f"{prefix}_bias", "int32_t", model.arrays[f"{op.name}.bias"], f"{label}: bias")
        mult = self._const(f"{prefix}_multiplier", "int32_t", model.arrays[f"{op.name}.multiplier"],
                           f"{label}: Q31 requantization multipliers")
        shift = self._const(f"{prefix}_shift", "int32_t", model.arrays[f"{op.name}.shift"],
                            f"{label}: requantization shifts")
        kernel_sum = None
        if isinstance(op, FullyConnected):
            sums = unpacked_weights(op, model).astype(np.int64).sum(axis=1)
            kernel_sum = self._const(f"{prefix}_kernel_sum", "int32_t", sums, f"{label}: sum of each row's weights")
        runs = tuple(WeightRunStruct(
            start=self.u16(run.start, op.name, "output channel"),
            count=self.u16(run.count, op.name, "run length"),
            row_bytes=row_bytes(k, run.bits),
            weights=f"{weights} + {run.offset}",
            bias=f"{bias} + {run.start}",
            multiplier=f"{mult} + {run.start}",
            shift=f"{shift} + {run.start}",
            kernel_sum=f"{kernel_sum} + {run.start}" if kernel_sum else "NULL",
        ) for run in op.runs)
        runs_block = ParamBlock("ejq_weight_run", f"{prefix}_runs", runs, is_array=True)
        inp = model.tensors[op.input]
        out = self.written(op.name, op.output)
        in_ptr = self.refs[op.input].pointer
        if isinstance(op, Conv2D):
            params = ConvStruct(
                geometry=self.geometry(op),
                in_c=self.u16(inp.shape[2], op.name, "input channels"),
                out_c=self.u16(out.shape[2], op.name, "output channels"),
                input_offset=-inp.zero_point, output_offset=model.tensors[op.output].zero_point,
                act_min=op.act_min, act_max=op.act_max, scratch=scratch, scratch_bytes=scratch_bytes)
            block = ParamBlock("ejq_conv_params", f"{prefix}_params", (params,), is_array=False)
            kind = "dwconv2d" if op.depthwise else "conv2d"
            summary = (f"{'depthwise ' if op.depthwise else ''}conv {op.kernel[0]}x{op.kernel[1]} "
                       f"stride {op.stride[0]}x{op.stride[1]} pad {op.padding}: {op.input} {inp.shape} -> "
                       f"{op.output} {out.shape}")
        else:
            params = FcStruct(in_size=_check_range(inp.size, 32, f"layer {op.name}: input size"),
                              out_size=self.u16(out.shape[2], op.name, "output size"),
                              input_offset=-inp.zero_point, output_offset=model.tensors[op.output].zero_point,
                              act_min=op.act_min, act_max=op.act_max, scratch=scratch,
                              scratch_bytes=scratch_bytes, single_rounding=int(op.rounding == "single"))
            block = ParamBlock("ejq_fc_params", f"{prefix}_params", (params,), is_array=False)
            kind = "fc"
            summary = f"fully connected: {op.input} {inp.shape} -> {op.output} {out.shape}"
        calls = tuple(KernelCall(f"ejq_{kind}_s8_w{run.bits}",
                                 (f"&{block.symbol}", f"&{runs_block.symbol}[{i}]", in_ptr, out.pointer))
                      for i, run in enumerate(op.runs))
        runs_text = ", ".join(f"{r.count}@{r.bits}b" for r in op.runs)
        return Step(index, op.name, kind, f"{summary}; runs {runs_text}", (block, runs_block), calls, out)

    # ----------------------------------------------------------------- other ops

    def pool(self, index: int, op: Pool) -> Step:
        inp = self.model.tensors[op.input]
        out = self.written(op.name, op.output)
        params = PoolStruct(geometry=self.geometry(op), channels=self.u16(inp.shape[2], op.name, "channels"),
                            act_min=op.act_min, act_max=op.act_max)
        block = ParamBlock("ejq_pool_params", f"{self.name}_l{index}_{c_identifier(op.name)}_params", (params,), False)
        call = KernelCall(f"ejq_{op.mode}pool_s8", (f"&{block.symbol}", self.refs[op.input].pointer, out.pointer))
        summary = (f"{op.mode} pool {op.kernel[0]}x{op.kernel[1]} stride {op.stride[0]}x{op.stride[1]} "
                   f"pad {op.padding}: {op.input} {inp.shape} -> {op.output} {out.shape}")
        return Step(index, op.name, f"{op.mode}pool", summary, (block,), (call,), out)

    def add(self, index: int, op: Add) -> Step:
        tensors = self.model.tensors
        out = self.written(op.name, op.output)
        a, b = op.inputs
        params = AddStruct(
            size=_check_range(out.size, 32, f"layer {op.name}: size"),
            input1_offset=-tensors[a].zero_point, input2_offset=-tensors[b].zero_point, left_shift=op.left_shift,
            input1_multiplier=op.input_multipliers[0], input1_shift=op.input_shifts[0],
            input2_multiplier=op.input_multipliers[1], input2_shift=op.input_shifts[1],
            output_multiplier=op.output_multiplier, output_shift=op.output_shift,
            output_offset=tensors[op.output].zero_point, act_min=op.act_min, act_max=op.act_max)
        block = ParamBlock("ejq_add_params", f"{self.name}_l{index}_{c_identifier(op.name)}_params", (params,), False)
        call = KernelCall("ejq_add_s8", (f"&{block.symbol}", self.refs[a].pointer, self.refs[b].pointer, out.pointer))
        in_place = " (in place)" if out.pointer in (self.refs[a].pointer, self.refs[b].pointer) else ""
        return Step(index, op.name, "add", f"add {a} + {b} -> {op.output} {out.shape}{in_place}", (block,), (call,), out)

    def concat(self, index: int, op: Concat) -> Step:
        tensors = self.model.tensors
        out = self.written(op.name, op.output)
        items = []
        calls = []
        symbol = f"{self.name}_l{index}_{c_identifier(op.name)}_params"
        channel = 0
        for i, (name, rq) in enumerate(zip(op.inputs, op.requant)):
            info = tensors[name]
            items.append(ConcatStruct(
                pixels=_check_range(out.shape[0] * out.shape[1], 32, f"layer {op.name}: pixels"),
                in_c=self.u16(info.shape[2], op.name, "input channels"),
                out_c=self.u16(out.shape[2], op.name, "output channels"),
                channel_offset=self.u16(channel, op.name, "channel offset"),
                input_offset=-info.zero_point, output_offset=tensors[op.output].zero_point,
                multiplier=rq.multiplier, shift=rq.shift))
            function = "ejq_concat_copy_s8" if rq.copy else "ejq_concat_requant_s8"
            calls.append(KernelCall(function, (f"&{symbol}[{i}]", self.refs[name].pointer, out.pointer)))
            channel += info.shape[2]
        block = ParamBlock("ejq_concat_params", symbol, tuple(items), is_array=True)
        summary = f"concat {', '.join(op.inputs)} -> {op.output} {out.shape}"
        return Step(index, op.name, "concat", summary, (block,), tuple(calls), out)

    def reshape(self, index: int, op: Reshape) -> Step:
        src = self.refs[op.input]
        dst = self.refs[op.output]
        summary = f"reshape {op.input} {src.shape} -> {op.output} {dst.shape}"
        if src.pointer == dst.pointer:
            return Step(index, op.name, "reshape", summary + " (same bytes)", (), (), dst)
        dst = self.written(op.name, op.output)
        call = KernelCall("ejq_copy_s8", (src.pointer, dst.pointer, f"{dst.size}u"))
        return Step(index, op.name, "reshape", summary + " (copied)", (), (call,), dst)


def lower_model(model: QuantizedModel, name: str, kernels: str = "portable") -> ModelContext:
    """Build the template context for `model`; `name` must already be a valid C identifier."""
    lowering = _Lowering(model, name, kernels)
    steps = []
    for index, op in enumerate(model.ops):
        if isinstance(op, (Conv2D, FullyConnected)):
            steps.append(lowering.weighted(index, op))
        elif isinstance(op, Pool):
            steps.append(lowering.pool(index, op))
        elif isinstance(op, Add):
            steps.append(lowering.add(index, op))
        elif isinstance(op, Concat):
            steps.append(lowering.concat(index, op))
        elif isinstance(op, Reshape):
            steps.append(lowering.reshape(index, op))
        else:  # pragma: no cover - the artifact's Op union is closed
            raise EdgejpqError(f"layer {op.name}: op kind {type(op).__name__} has no C kernel")
    inp, out = model.input_info, model.output_info
    return ModelContext(
        name=name, macro=name.upper(), model_name=model.name, version=__version__,
        short_hash=model.short_hash, content_hash=model.content_hash, kernels=kernels,
        input=lowering.refs[model.input], output=lowering.refs[model.output],
        input_scale=inp.scale, input_zero_point=inp.zero_point,
        output_scale=out.scale, output_zero_point=out.zero_point,
        arena_bytes=model.layout.arena_bytes, weight_bytes=model.weight_bytes,
        scratch_bytes=(lowering.scratch_bytes + 3) // 4 * 4, tensors=tuple(lowering.refs.values()), arrays=tuple(lowering.arrays), steps=tuple(steps))

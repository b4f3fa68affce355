"""Import a fully-int8 TensorFlow Lite flatbuffer into a QuantizedModel, and run the TFLite interpreter.

The flatbuffer is read with the schema classes that `ai-edge-litert` ships
(`ai_edge_litert.schema_py_generated`; TensorFlow's `tensorflow.lite.python.schema_py_generated`
as a fallback): no TensorFlow import is needed to import a model. Install the optional extra:
`pip install 'edgejpq[tflite]'`.

Which TFLite kernels we match: the **reference** kernels (`OpResolverType.BUILTIN_REF`). They are
TFLite's specification of the int8 ops, the kernels TFLite Micro runs on Cortex-M, and they share
edgejpq's arithmetic (MultiplyByQuantizedMultiplier with TFLite's double rounding). TFLite's default
x86 interpreter differs on purpose: the XNNPACK delegate requantizes in fp32, and the optimized
builtin convolution / fully connected kernels go through ruy, which rounds once
(`(x * m + 2^(s-1)) >> s`); both differ from the reference by one code on ties.

Op by op (TFLite reference semantics → edgejpq op):
  CONV_2D / DEPTHWISE_CONV_2D   → Conv2D, per-channel multipliers from float32 scales in double as
                                  TFLite's PopulateConvolutionQuantizationParams; SAME padding split
                                  as TFLite (the extra row/column after); fused RELU/RELU6/RELU_N1_TO_1
                                  clamps as CalculateActivationRangeQuantized; a depthwise conv with
                                  depth multiplier M on a 1-channel input is the conv it equals
  FULLY_CONNECTED               → FullyConnected with rounding="single": TFLite's int8 FULLY_CONNECTED
                                  kernels (reference and optimized alike) requantize with one rounding,
                                  (acc * m + 2^(30 - s)) >> (31 - s), not the double rounding of its
                                  convolutions (measured: with double rounding 41 of 30,000 bytes differ
                                  by one); per-tensor or per-channel weights
  ADD                           → Add (TFLite's int8 preparation, left shift 20); same shapes only
  AVERAGE_POOL_2D / MAX_POOL_2D → Pool (TFLite's in-bounds count and rounding)
  MEAN over H and W             → a depthwise Conv2D with the whole plane as kernel and unit weights:
                                  TFLite's reference QuantizedMeanOrSum is exactly
                                  MBQM(sum(x - zp_in), m·2^k / n, s - k) + zp_out, which is what that
                                  conv computes with the same (multiplier, shift); the unit weights
                                  are packed at 2 bits (H·W·C/4 bytes of flash). Measured: the same
                                  holds when the output keeps the input's scale and zero point
  QUANTIZE int8 → int8          → a 1×1 depthwise Conv2D with unit weights (TFLite's Requantize)
  QUANTIZE float → int8 (first) / DEQUANTIZE (last): stripped; the model's input/output scale and
                                  zero point carry the float conversion
  RESHAPE                       → Reshape;  CONCATENATION on the last axis → Concat (copies)
  PAD (constant, value = zero point) → folded into the padding of the convolutions it feeds
  SOFTMAX (last op)             → dropped by default (the model then outputs the int8 logits; the
                                  interpreter's comparison uses the softmax's input tensor)
Anything else (and any float tensor on the int8 path) is refused naming the op and its index.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Sequence

import numpy as np

from edgejpq.artifact import (Add, Concat, ConcatInput, Conv2D, FullyConnected, Op, Pool, QuantizedModel, Reshape,
                              TensorInfo, WeightRun, conv_output_hw, validate_model)
from edgejpq.errors import EdgejpqError
from edgejpq.quant.fixedpoint import quantize_multiplier
from edgejpq.quant.packing import pack_rows

INSTALL_HINT = "install the TFLite extra: `pip install 'edgejpq[tflite]'` (ai-edge-litert)"
ADD_LEFT_SHIFT = 20  # TFLite's int8 ADD
SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN",
                 "RESHAPE", "CONCATENATION", "PAD", "SOFTMAX", "QUANTIZE", "DEQUANTIZE")


def load_schema() -> ModuleType:
    """The TFLite flatbuffer schema classes (from ai-edge-litert, else TensorFlow)."""
    try:
        from ai_edge_litert import schema_py_generated as schema  # type: ignore[import-not-found]
        return schema
    except ImportError:
        pass
    try:
        from tensorflow.lite.python import schema_py_generated as schema  # type: ignore[import-not-found]
        return schema
    except ImportError:
        raise EdgejpqError(f"reading .tflite files needs the TFLite flatbuffer schema: {INSTALL_HINT}") from None


def _enum_names(enum_class: type) -> dict[int, str]:
    return {int(v): k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True)
class TfliteImport:
    """An imported model and what the import did to get it."""

    model: QuantizedModel
    source_sha256: str
    reference_tensor: int  # the TFLite tensor whose int8 values equal our model output
    input_tensor: int  # the TFLite tensor our model input corresponds to
    float_input: bool  # the .tflite takes float input (a QUANTIZE was stripped)
    notes: tuple[str, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------- flatbuffer reading


@dataclass(frozen=True)
class _Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    type_name: str
    scales: Optional[np.ndarray]
    zero_points: Optional[np.ndarray]
    quantized_dimension: int
    data: Optional[np.ndarray]  # raw bytes of a constant tensor


class _Reader:
    def __init__(self, content: bytes, where: str) -> None:
        self.schema = load_schema()
        self.where = where
        try:
            model = self.schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
        except Exception as exc:  # flatbuffers raises assorted errors on garbage
            raise EdgejpqError(f"{where}: not a readable TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
        if not model.subgraphs:
            raise EdgejpqError(f"{where}: the TFLite model has no subgraph")
        if len(model.subgraphs) != 1:
            raise EdgejpqError(f"{where}: the TFLite model has {len(model.subgraphs)} subgraphs (control flow or "
                               "signatures with several graphs); edgejpq imports single-graph models only")
        self.model = model
        self.graph = model.subgraphs[0]
        self.op_names = _enum_names(self.schema.BuiltinOperator)
        self.type_names = _enum_names(self.schema.TensorType)
        self.padding_names = _enum_names(self.schema.Padding)
        self.act_names = _enum_names(self.schema.ActivationFunctionType)
        self.tensors = [self._tensor(i, t) for i, t in enumerate(self.graph.tensors or [])]

    def _tensor(self, index: int, t: Any) -> _Tensor:
        q = t.quantization
        scales = zps = None
        qdim = 0
        if q is not None and q.scale is not None and len(q.scale) > 0:
            scales = np.asarray(q.scale, dtype=np.float32)
            zps = np.asarray(q.zeroPoint if q.zeroPoint is not None else np.zeros(len(scales)), dtype=np.int64)
            qdim = int(q.quantizedDimension)
        data = None
        buffers = self.model.buffers or []
        if t.buffer is not None and 0 < t.buffer < len(buffers):
            buf = buffers[t.buffer]
            if buf.data is not None and len(buf.data) > 0:
                data = np.asarray(buf.data, dtype=np.uint8)
            elif getattr(buf, "offset", 0) and buf.offset > 1:
                raise EdgejpqError(f"{self.where}: tensor {index} stores its data outside the flatbuffer (a model over "
                                   "2 GB): not supported")
        name = t.name.decode(errors="replace") if isinstance(t.name, bytes) else str(t.name or "")
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        return _Tensor(index, name, shape, self.type_names.get(int(t.type), str(t.type)), scales, zps, qdim, data)

    def op_name(self, op: Any) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        if builtin == int(self.schema.BuiltinOperator.CUSTOM):
            custom = code.customCode.decode(errors="replace") if isinstance(code.customCode, bytes) else code.customCode
            return f"CUSTOM({custom})"
        return self.op_names.get(builtin, f"builtin {builtin}")

    def constant(self, index: int, dtype: str) -> np.ndarray:
        t = self.tensors[index]
        if t.data is None:
            raise EdgejpqError(f"{self.where}: tensor {index} ({t.name}) must be a constant")
        if dtype == "int4":
            packed = t.data
            low = (packed & 0x0F).astype(np.int16)
            high = (packed >> 4).astype(np.int16)
            values = np.stack([low, high], axis=1).reshape(-1)
            values = ((values ^ 8) - 8).astype(np.int8)
            count = int(np.prod(t.shape)) if t.shape else 1
            return values[:count].reshape(t.shape)
        values = np.frombuffer(t.data.tobytes(), dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
        return values.reshape(t.shape) if t.shape else values


# --------------------------------------------------------------------------- the importer


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _activation_range(act: str, scale: float, zero_point: int, label: str) -> tuple[int, int]:
    """TFLite's CalculateActivationRangeQuantized for int8 (float32 division, round half away from zero)."""

    def q(value: float) -> int:
        return zero_point + int(_round_half_away(np.float32(value) / np.float32(scale)))

    if act == "NONE":
        return -128, 127
    if act == "RELU":
        return max(-128, q(0.0)), 127
    if act == "RELU6":
        return max(-128, q(0.0)), min(127, q(6.0))
    if act == "RELU_N1_TO_1":
        return max(-128, q(-1.0)), min(127, q(1.0))
    raise EdgejpqError(f"{label}: fused activation {act} is not supported (NONE, RELU, RELU6, RELU_N1_TO_1 are)")


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TFLite's SAME padding: output ceil(size / stride); the odd padding row/column goes after."""
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Importer:
    def __init__(self, reader: _Reader, name: str, drop_softmax: bool) -> None:
        self.r = reader
        self.where = reader.where
        self.model_name = name
        self.drop_softmax = drop_softmax
        self.tensors: dict[str, TensorInfo] = {}
        self.ops: list[Op] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.alias: dict[int, int] = {}  # TFLite tensor → TFLite tensor it stands for (stripped / folded ops)
        self.pads: dict[int, tuple[int, int, int, int, int]] = {}  # PAD output → (source, top, bottom, left, right)
        self.notes: list[str] = []
        self.consumers: dict[int, list[int]] = {}
        for i, op in enumerate(reader.graph.operators or []):
            for t in op.inputs if op.inputs is not None else ():
                self.consumers.setdefault(int(t), []).append(i)

    # ----------------------------------------------------------------- helpers

    def label(self, index: int, kind: str) -> str:
        return f"{self.where}: op {index} ({kind})"

    def refuse(self, index: int, kind: str, message: str) -> EdgejpqError:
        return EdgejpqError(f"{self.label(index, kind)}: {message}")

    def resolve(self, t: int) -> int:
        while t in self.alias:
            t = self.alias[t]
        return t

    def tname(self, t: int) -> str:
        return f"t{self.resolve(t)}"

    def hwc(self, t: _Tensor, index: int, kind: str) -> tuple[int, int, int]:
        shape = t.shape
        if not shape or (len(shape) > 1 and shape[0] != 1):
            raise self.refuse(index, kind, f"tensor {t.index} ({t.name}) has shape {list(shape)}: edgejpq needs batch 1 "
                                           "(convert with a fixed batch size of 1)")
        dims = shape[1:] if len(shape) > 1 else shape
        if len(dims) == 3:
            return int(dims[0]), int(dims[1]), int(dims[2])
        if len(dims) == 2:
            return 1, int(dims[0]), int(dims[1])
        if len(dims) == 1:
            return 1, 1, int(dims[0])
        raise self.refuse(index, kind, f"tensor {t.index} ({t.name}) has rank {len(shape)}: edgejpq handles rank <= 4")

    def activation_tensor(self, t_index: int, index: int, kind: str, role: str) -> TensorInfo:
        """Register (once) the int8 per-tensor-quantized activation tensor `t_index`."""
        t_index = self.resolve(t_index)
        name = f"t{t_index}"
        if name in self.tensors:
            return self.tensors[name]
        t = self.r.tensors[t_index]
        if t.type_name != "INT8":
            what = "a float tensor" if t.type_name.startswith("FLOAT") else f"a {t.type_name} tensor"
            raise self.refuse(index, kind, f"its {role} tensor {t_index} ({t.name}) is {what}: edgejpq imports fully "
                                           "int8 models; convert with TFLiteConverter, optimizations=[DEFAULT], a "
                                           "representative_dataset and supported_ops=[TFLITE_BUILTINS_INT8]")
        if t.scales is None or len(t.scales) != 1:
            raise self.refuse(index, kind, f"its {role} tensor {t_index} ({t.name}) is not per-tensor quantized")
        info = TensorInfo(name, self.hwc(t, index, kind), float(t.scales[0]), int(t.zero_points[0]))
        self.tensors[name] = info
        return info

    def output_tensor(self, op: Any, index: int, kind: str) -> TensorInfo:
        outputs = list(op.outputs if op.outputs is not None else [])
        if len(outputs) != 1:
            raise self.refuse(index, kind, f"has {len(outputs)} outputs; edgejpq supports one")
        return self.activation_tensor(int(outputs[0]), index, kind, "output")

    def scale_of(self, t_index: int) -> np.float32:
        t = self.r.tensors[self.resolve(t_index)]
        return np.float32(t.scales[0])

    def weighted(self, index: int, kind: str, name: str, rows: np.ndarray, bits: int,
                 bias: np.ndarray, multipliers: Sequence[tuple[int, int]]) -> tuple[WeightRun, ...]:
        c_out, k = rows.shape
        self.arrays[f"{name}.weights"] = pack_rows(rows.astype(np.int64), bits).reshape(-1)
        self.arrays[f"{name}.bias"] = bias.astype(np.int32)
        self.arrays[f"{name}.multiplier"] = np.array([m for m, _ in multipliers], dtype=np.int32)
        self.arrays[f"{name}.shift"] = np.array([s for _, s in multipliers], dtype=np.int32)
        return (WeightRun(0, c_out, bits, 0),)

    def filter_values(self, t_index: int, index: int, kind: str, channel_axis: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(int weights, per-output-channel float32 scales, bits) of a symmetric int8/int4 filter."""
        t = self.r.tensors[t_index]
        if t.type_name not in ("INT8", "INT4"):
            raise self.refuse(index, kind, f"its weights (tensor {t_index}, {t.name}) are {t.type_name}: edgejpq imports "
                                           "int8 (or int4) weights; quantize the model fully to int8")
        if t.scales is None:
            raise self.refuse(index, kind, f"its weights (tensor {t_index}) carry no quantization parameters")
        if np.any(t.zero_points != 0):
            raise self.refuse(index, kind, f"its weights (tensor {t_index}) are asymmetric (non-zero zero point)")
        values = self.r.constant(t_index, "int4" if t.type_name == "INT4" else "int8")
        c_out = values.shape[channel_axis]
        if len(t.scales) == 1:
            scales = np.full(c_out, t.scales[0], dtype=np.float32)
        elif len(t.scales) == c_out and t.quantized_dimension == channel_axis:
            scales = t.scales
        else:
            raise self.refuse(index, kind, f"its weights (tensor {t_index}) are quantized along dimension "
                                           f"{t.quantized_dimension} with {len(t.scales)} scales; expected per-tensor or "
                                           f"per output channel (dimension {channel_axis})")
        return values, scales, 4 if t.type_name == "INT4" else 8

    def bias_values(self, op: Any, c_out: int, index: int, kind: str) -> np.ndarray:
        inputs = list(op.inputs)
        if len(inputs) < 3 or int(inputs[2]) < 0:
            return np.zeros(c_out, dtype=np.int64)
        t = self.r.tensors[int(inputs[2])]
        if t.type_name != "INT32":
            raise self.refuse(index, kind, f"its bias (tensor {t.index}) is {t.type_name}; int8 models have int32 biases")
        bias = self.r.constant(t.index, "int32").reshape(-1).astype(np.int64)
        if bias.size != c_out:
            raise self.refuse(index, kind, f"its bias has {bias.size} values for {c_out} output channels")
        return bias

    @staticmethod
    def conv_multipliers(in_scale: np.float32, filter_scales: np.ndarray, out_scale: np.float32) -> list[tuple[int, int]]:
        """TFLite: effective scale = double(in) * double(filter) / double(out), then QuantizeMultiplier."""
        return [quantize_multiplier(float(in_scale) * float(fs) / float(out_scale)) for fs in filter_scales]

    # ----------------------------------------------------------------- op handlers

    def conv(self, index: int, kind: str, op: Any, depthwise: bool) -> None:
        opts = op.builtinOptions
        inputs = [int(t) for t in op.inputs]
        src = self.resolve(inputs[0])
        pad = self.pads.get(src)
        if pad is not None:
            src = pad[0]
        x = self.activation_tensor(src, index, kind, "input")
        out = self.output_tensor(op, index, kind)
        if int(opts.dilationHFactor) != 1 or int(opts.dilationWFactor) != 1:
            raise self.refuse(index, kind, f"dilation {opts.dilationHFactor}x{opts.dilationWFactor} is not supported; "
                                           "use dilation 1")
        values, scales, bits = self.filter_values(inputs[1], index, kind, 3 if depthwise else 0)
        stride = (int(opts.strideH), int(opts.strideW))
        h, w, c = x.shape
        if depthwise:
            _, kh, kw, c_total = values.shape
            mult = int(getattr(opts, "depthMultiplier", 1) or 1)
            if c_total != c:
                if c == 1:  # depth multiplier M on one channel = a convolution with M output channels
                    depthwise = False
                    rows = values.reshape(kh * kw, c_total).T
                else:
                    raise self.refuse(index, kind, f"depth multiplier {mult} ({c} → {c_total} channels) is supported "
                                                   "only on a 1-channel input; use depth multiplier 1")
            else:
                rows = values.reshape(kh * kw, c).T
        else:
            c_out, kh, kw, c_in = values.shape
            if c_in != c:
                raise self.refuse(index, kind, f"filter expects {c_in} input channels, input has {c}")
            rows = values.reshape(c_out, kh * kw * c_in)
        padding_name = self.r.padding_names.get(int(opts.padding), str(opts.padding))
        ph, pw = (h, w) if pad is None else (h + pad[1] + pad[2], w + pad[3] + pad[4])
        if padding_name == "SAME":
            top, bottom = _same_padding(ph, kh, stride[0])
            left, right = _same_padding(pw, kw, stride[1])
        elif padding_name == "VALID":
            top = bottom = left = right = 0
        else:
            raise self.refuse(index, kind, f"padding {padding_name} is not supported")
        if pad is not None:
            top, bottom, left, right = top + pad[1], bottom + pad[2], left + pad[3], right + pad[4]
        padding = (top, bottom, left, right)
        if conv_output_hw((h, w), (kh, kw), stride, padding) != out.shape[:2]:
            raise self.refuse(index, kind, f"output shape {out.shape} does not follow from input {x.shape}, kernel "
                                           f"{(kh, kw)}, stride {stride}, padding {padding}")
        c_out = rows.shape[0]
        bias = self.bias_values(op, c_out, index, kind)
        act = self.r.act_names.get(int(opts.fusedActivationFunction), "?")
        act_min, act_max = _activation_range(act, out.scale, out.zero_point, self.label(index, kind))
        name = f"{'dw' if depthwise else 'conv'}{index}"
        mults = self.conv_multipliers(self.scale_of(src), scales, self.scale_of(int(op.outputs[0])))
        runs = self.weighted(index, kind, name, rows, bits, bias, mults)
        self.ops.append(Conv2D("conv2d", name, x.name, out.name, (kh, kw), stride, padding, depthwise, runs,
                               act_min, act_max, source=f"tflite op {index} {kind}"))

    def fully_connected(self, index: int, kind: str, op: Any) -> None:
        opts = op.builtinOptions
        inputs = [int(t) for t in op.inputs]
        x = self.activation_tensor(inputs[0], index, kind, "input")
        out = self.output_tensor(op, index, kind)
        if opts is not None and int(getattr(opts, "weightsFormat", 0)) != 0:
            raise self.refuse(index, kind, "shuffled weights format is not supported")
        values, scales, bits = self.filter_values(inputs[1], index, kind, 0)
        c_out, k = values.shape
        if k != x.size or out.size != c_out:
            raise self.refuse(index, kind, f"weights {values.shape} do not map input {x.shape} to output {out.shape}")
        if out.shape != (1, 1, c_out):
            out = self._retag(out, (1, 1, c_out))
        bias = self.bias_values(op, c_out, index, kind)
        act = self.r.act_names.get(int(opts.fusedActivationFunction), "?") if opts is not None else "NONE"
        act_min, act_max = _activation_range(act, out.scale, out.zero_point, self.label(index, kind))
        name = f"fc{index}"
        mults = self.conv_multipliers(self.scale_of(inputs[0]), scales, self.scale_of(int(op.outputs[0])))
        runs = self.weighted(index, kind, name, values, bits, bias, mults)
        self.ops.append(FullyConnected("fully_connected", name, x.name, out.name, runs, act_min, act_max,
                                       source=f"tflite op {index} {kind}", rounding="single"))

    def _retag(self, info: TensorInfo, shape: tuple[int, int, int]) -> TensorInfo:
        new = TensorInfo(info.name, shape, info.scale, info.zero_point)
        self.tensors[info.name] = new
        return new

    def add(self, index: int, kind: str, op: Any) -> None:
        inputs = [int(t) for t in op.inputs]
        a = self.activation_tensor(inputs[0], index, kind, "first input")
        b = self.activation_tensor(inputs[1], index, kind, "second input")
        out = self.output_tensor(op, index, kind)
        if not a.shape == b.shape == out.shape:
            raise self.refuse(index, kind, f"broadcasting add ({a.shape} + {b.shape} → {out.shape}) is not supported; "
                                           "both inputs must have the output's shape")
        sa, sb, so = (float(self.scale_of(t)) for t in (inputs[0], inputs[1], int(op.outputs[0])))
        twice_max = 2.0 * max(sa, sb)
        ma, sha = quantize_multiplier(sa / twice_max)
        mb, shb = quantize_multiplier(sb / twice_max)
        mo, sho = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * so))
        opts = op.builtinOptions
        act = self.r.act_names.get(int(opts.fusedActivationFunction), "?") if opts is not None else "NONE"
        act_min, act_max = _activation_range(act, out.scale, out.zero_point, self.label(index, kind))
        self.ops.append(Add("add", f"add{index}", (a.name, b.name), out.name, ADD_LEFT_SHIFT, (ma, mb), (sha, shb), mo,
                            sho, act_min, act_max, source=f"tflite op {index} {kind}"))

    def pool(self, index: int, kind: str, op: Any) -> None:
        opts = op.builtinOptions
        x = self.activation_tensor(int(op.inputs[0]), index, kind, "input")
        out = self.output_tensor(op, index, kind)
        if (x.scale, x.zero_point) != (out.scale, out.zero_point):
            raise self.refuse(index, kind, "input and output scale/zero point differ; TFLite's int8 pooling keeps them")
        kernel = (int(opts.filterHeight), int(opts.filterWidth))
        stride = (int(opts.strideH), int(opts.strideW))
        padding_name = self.r.padding_names.get(int(opts.padding), str(opts.padding))
        if padding_name == "SAME":
            padding = (*_same_padding(x.shape[0], kernel[0], stride[0]), *_same_padding(x.shape[1], kernel[1], stride[1]))
        else:
            padding = (0, 0, 0, 0)
        if conv_output_hw(x.shape[:2], kernel, stride, padding) != out.shape[:2]:
            raise self.refuse(index, kind, f"output shape {out.shape} does not follow from input {x.shape}")
        act = self.r.act_names.get(int(opts.fusedActivationFunction), "?")
        act_min, act_max = _activation_range(act, out.scale, out.zero_point, self.label(index, kind))
        mode = "max" if kind == "MAX_POOL_2D" else "avg"
        self.ops.append(Pool("pool", f"{mode}pool{index}", x.name, out.name, mode, kernel, stride, padding, act_min,
                             act_max, source=f"tflite op {index} {kind}"))

    def unit_depthwise(self, index: int, kind: str, name: str, x: TensorInfo, out: TensorInfo,
                       kernel: tuple[int, int], multiplier: tuple[int, int]) -> None:
        """A depthwise conv with unit weights: out = MBQM(sum(x - zp_in), m, s) + zp_out, clamped to int8."""
        c = x.shape[2]
        rows = np.ones((c, kernel[0] * kernel[1]), dtype=np.int64)
        runs = self.weighted(index, kind, name, rows, 2, np.zeros(c, dtype=np.int64), [multiplier] * c)
        self.ops.append(Conv2D("conv2d", name, x.name, out.name, kernel, (1, 1), (0, 0, 0, 0), True, runs, -128, 127,
                               source=f"tflite op {index} {kind}"))

    def mean(self, index: int, kind: str, op: Any) -> None:
        inputs = [int(t) for t in op.inputs]
        x = self.activation_tensor(inputs[0], index, kind, "input")
        t_in = self.r.tensors[self.resolve(inputs[0])]
        axes = sorted(int(a) % len(t_in.shape) for a in self.r.constant(inputs[1], "int32").reshape(-1))
        if len(t_in.shape) != 4 or axes != [1, 2]:
            raise self.refuse(index, kind, f"MEAN over axes {axes} of a rank-{len(t_in.shape)} tensor: only the mean "
                                           "over height and width (axes 1, 2) of an NHWC tensor is supported")
        out = self.output_tensor(op, index, kind)
        if out.size != x.shape[2]:
            raise self.refuse(index, kind, f"output {out.shape} does not hold one value per channel of {x.shape}")
        out = self._retag(out, (1, 1, x.shape[2]))
        s_in, s_out = self.scale_of(inputs[0]), self.scale_of(int(op.outputs[0]))
        n = x.shape[0] * x.shape[1]
        m, s = quantize_multiplier(float(s_in) / float(s_out))
        k = min(n.bit_length() - 1, 32, 31 + s)  # TFLite's QuantizedMeanOrSum folds 1/n into the multiplier
        m2, s2 = int((m << k) // n), s - k
        if not (0 <= m2 < (1 << 31) and -31 <= s2 <= 30):
            raise self.refuse(index, kind, f"the folded mean multiplier ({m2}, shift {s2}) is out of range")
        self.unit_depthwise(index, kind, f"mean{index}", x, out, x.shape[:2], (m2, s2))

    def requantize(self, index: int, kind: str, op: Any) -> None:
        x = self.activation_tensor(int(op.inputs[0]), index, kind, "input")
        out = self.output_tensor(op, index, kind)
        m, s = quantize_multiplier(float(self.scale_of(int(op.inputs[0]))) / float(self.scale_of(int(op.outputs[0]))))
        self.unit_depthwise(index, kind, f"requant{index}", x, out, (1, 1), (m, s))

    def reshape(self, index: int, kind: str, op: Any) -> None:
        x = self.activation_tensor(int(op.inputs[0]), index, kind, "input")
        out = self.output_tensor(op, index, kind)
        if (x.scale, x.zero_point) != (out.scale, out.zero_point) or x.size != out.size:
            raise self.refuse(index, kind, "reshape changes the element count or the quantization")
        self.ops.append(Reshape("reshape", f"reshape{index}", x.name, out.name, source=f"tflite op {index} {kind}"))

    def concat(self, index: int, kind: str, op: Any) -> None:
        opts = op.builtinOptions
        inputs = [int(t) for t in op.inputs]
        out_t = self.r.tensors[int(op.outputs[0])]
        rank = len(out_t.shape)
        if int(opts.axis) % rank != rank - 1:
            raise self.refuse(index, kind, f"concatenation on axis {opts.axis} of rank {rank}: only the last (channel) "
                                           "axis is supported")
        if self.r.act_names.get(int(opts.fusedActivationFunction), "?") != "NONE":
            raise self.refuse(index, kind, "a fused activation on CONCATENATION is not supported")
        xs = [self.activation_tensor(t, index, kind, f"input {i}") for i, t in enumerate(inputs)]
        out = self.output_tensor(op, index, kind)
        requant = []
        for i, x in enumerate(xs):
            if (x.scale, x.zero_point) != (out.scale, out.zero_point):
                raise self.refuse(index, kind, f"input {i} has scale/zero point ({x.scale}, {x.zero_point}) but the output "
                                               f"({out.scale}, {out.zero_point}): TFLite's int8 concatenation needs "
                                               "equal quantization")
            requant.append(ConcatInput(copy=True, multiplier=0, shift=0))
        if len(xs) == 1:
            self.ops.append(Reshape("reshape", f"concat{index}", xs[0].name, out.name, source=f"tflite op {index} {kind}"))
            return
        self.ops.append(Concat("concat", f"concat{index}", tuple(x.name for x in xs), out.name, tuple(requant),
                               source=f"tflite op {index} {kind}"))

    def pad(self, index: int, kind: str, op: Any) -> None:
        inputs = [int(t) for t in op.inputs]
        src = self.resolve(inputs[0])
        x = self.activation_tensor(src, index, kind, "input")
        out_index = int(op.outputs[0])
        t_out = self.r.tensors[out_index]
        if t_out.type_name != "INT8" or t_out.scales is None or (float(t_out.scales[0]), int(t_out.zero_points[0])) != (
                x.scale, x.zero_point):
            raise self.refuse(index, kind, "the padded tensor must keep the input's int8 scale and zero point")
        if kind == "PADV2" and len(inputs) > 2:
            value = int(self.r.constant(inputs[2], "int8").reshape(-1)[0])
            if value != x.zero_point:
                raise self.refuse(index, kind, f"pads with {value}, not the zero point {x.zero_point}: only zero padding "
                                               "folds into a convolution")
        t_pad = self.r.tensors[inputs[1]]
        pads = self.r.constant(inputs[1], "int64" if t_pad.type_name == "INT64" else "int32").reshape(-1, 2)
        if pads.shape[0] != 4 or pads[0].any() or pads[3].any() or (pads < 0).any():
            raise self.refuse(index, kind, f"paddings {pads.tolist()}: only non-negative height/width padding of an NHWC "
                                           "tensor is supported")
        users = self.consumers.get(out_index, [])
        for user in users:
            user_kind = self.r.op_name(self.r.graph.operators[user])
            if user_kind not in ("CONV_2D", "DEPTHWISE_CONV_2D") or int(self.r.graph.operators[user].inputs[0]) != out_index:
                raise self.refuse(index, kind, f"feeds op {user} ({user_kind}): a PAD is folded only into the "
                                               "convolutions it feeds; pad inside the convolution (padding='same') instead")
        if not users or out_index in self.graph_outputs():
            raise self.refuse(index, kind, "its result is a model output: nothing to fold it into")
        self.pads[out_index] = (src, int(pads[1][0]), int(pads[1][1]), int(pads[2][0]), int(pads[2][1]))
        self.notes.append(f"op {index} PAD {pads[1].tolist()}x{pads[2].tolist()} folded into the padding of op(s) "
                          f"{', '.join(map(str, users))}")

    def graph_outputs(self) -> list[int]:
        return [int(t) for t in self.r.graph.outputs]

    # ----------------------------------------------------------------- driver

    def run(self) -> TfliteImport:
        graph = self.r.graph
        ins, outs = [int(t) for t in graph.inputs], self.graph_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise EdgejpqError(f"{self.where}: the model has {len(ins)} inputs and {len(outs)} outputs; edgejpq imports "
                               "models with one input and one output")
        operators = list(graph.operators or [])
        kinds = [self.r.op_name(op) for op in operators]
        first_input = ins[0]
        model_output = outs[0]
        float_input = False
        notes = self.notes
        start, stop = 0, len(operators)
        # strip QUANTIZE (float → int8) at the input and DEQUANTIZE at the output
        if kinds and kinds[0] == "QUANTIZE" and self.r.tensors[first_input].type_name == "FLOAT32" \
                and int(operators[0].inputs[0]) == first_input:
            first_input = int(operators[0].outputs[0])
            float_input = True
            start = 1
            notes.append("op 0 QUANTIZE (float input → int8) stripped: the model takes int8 input with its scale")
        if stop > start and kinds[stop - 1] == "DEQUANTIZE" and int(operators[stop - 1].outputs[0]) == model_output:
            model_output = int(operators[stop - 1].inputs[0])
            stop -= 1
            notes.append(f"op {stop} DEQUANTIZE (int8 → float output) stripped: the model outputs int8 with its scale")
        if stop > start and kinds[stop - 1] == "SOFTMAX" and int(operators[stop - 1].outputs[0]) == model_output:
            if not self.drop_softmax:
                raise self.refuse(stop - 1, "SOFTMAX", "int8 SOFTMAX is not implemented in edgejpq's kernels; import "
                                                       "with the softmax dropped (the default) to output the logits")
            model_output = int(operators[stop - 1].inputs[0])
            stop -= 1
            notes.append(f"op {stop} SOFTMAX (last) dropped: the model outputs its int8 input logits (same argmax "
                         "up to ties); the interpreter comparison uses that tensor")
        self.activation_tensor(first_input, start, kinds[start] if start < len(kinds) else "input", "model input")
        handlers = {
            "CONV_2D": lambda i, k, op: self.conv(i, k, op, depthwise=False),
            "DEPTHWISE_CONV_2D": lambda i, k, op: self.conv(i, k, op, depthwise=True),
            "FULLY_CONNECTED": self.fully_connected, "ADD": self.add, "AVERAGE_POOL_2D": self.pool,
            "MAX_POOL_2D": self.pool, "MEAN": self.mean, "RESHAPE": self.reshape, "CONCATENATION": self.concat,
            "PAD": self.pad, "PADV2": self.pad,
        }
        for index in range(start, stop):
            op, kind = operators[index], kinds[index]
            if kind == "QUANTIZE":
                src = self.r.tensors[int(op.inputs[0])]
                if src.type_name != "INT8":
                    where = ("the model input" if int(op.inputs[0]) == int(graph.inputs[0])
                             else "a tensor inside the graph")
                    raise self.refuse(index, kind, f"quantizes {where} of type {src.type_name}: edgejpq imports fully "
                                                   "int8 models; convert with inference_input_type=tf.int8 and "
                                                   "inference_output_type=tf.int8 (or float32 at the edges)")
                self.requantize(index, kind, op)
                continue
            handler = handlers.get(kind)
            if handler is None:
                hint = ("int8 SOFTMAX is supported only as the last op (dropped)" if kind == "SOFTMAX" else
                        "a float op in an int8 model: convert with supported_ops=[TFLITE_BUILTINS_INT8], "
                        "inference_input_type/inference_output_type=tf.int8 and a fixed batch size of 1"
                        if kind in ("DEQUANTIZE", "SHAPE", "STRIDED_SLICE", "PACK") else
                        f"edgejpq imports {', '.join(SUPPORTED_OPS)}: replace it in the model or fuse it into a "
                        "supported op")
                raise self.refuse(index, kind, f"unsupported op: {hint}")
            handler(index, kind, op)
        if not self.ops:
            raise EdgejpqError(f"{self.where}: no op left to import")
        from edgejpq.cost.memory import plan_model_memory

        model_in, model_out = f"t{self.resolve(first_input)}", f"t{self.resolve(model_output)}"
        if model_out not in self.tensors:
            raise EdgejpqError(f"{self.where}: the model output tensor {model_output} is not produced by an imported op")
        used = {model_in} | {op.output for op in self.ops} | {t for op in self.ops for t in
                                                               (op.inputs if isinstance(op, (Add, Concat)) else (op.input,))}
        tensors = {k: v for k, v in self.tensors.items() if k in used}
        layout = plan_model_memory(tensors, self.ops, model_in, model_out)
        model = QuantizedModel(self.model_name, model_in, model_out, tensors, tuple(self.ops), layout, dict(self.arrays),
                               provenance={})
        return TfliteImport(model=model, source_sha256="", reference_tensor=self.resolve(model_output),
                            input_tensor=self.resolve(first_input), float_input=float_input, notes=tuple(notes))


def _c_name(stem: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in stem) or "model"
    return cleaned if not cleaned[0].isdigit() else f"m_{cleaned}"


def import_tflite(source: str | os.PathLike[str] | bytes, *, name: Optional[str] = None,
                  drop_softmax: bool = True) -> TfliteImport:
    """Read a fully-int8 .tflite (path or bytes) into a validated QuantizedModel."""
    if isinstance(source, (bytes, bytearray)):
        content, where, stem = bytes(source), "tflite model", "tflite_model"
    else:
        path = Path(source)
        if not path.is_file():
            raise EdgejpqError(f"{path}: no such .tflite file")
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise EdgejpqError(f"{path}: cannot read ({exc.strerror})") from None
        where, stem = str(path), path.stem
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise EdgejpqError(f"{where}: not a TFLite flatbuffer (no TFL3 identifier)")
    result = _Importer(_Reader(content, where), name or _c_name(stem), drop_softmax).run()
    digest = hashlib.sha256(content).hexdigest()
    provenance = {"importer": "edgejpq.tflite_import", "source": where, "source_sha256": digest,
                  "tflite_input_tensor": result.input_tensor, "tflite_reference_tensor": result.reference_tensor,
                  "float_input": result.float_input, "notes": list(result.notes),
                  "matches": "TFLite reference kernels (OpResolverType.BUILTIN_REF)"}
    model = QuantizedModel(result.model.name, result.model.input, result.model.output, result.model.tensors,
                           result.model.ops, result.model.layout, result.model.arrays, provenance=provenance)
    validate_model(model, where=where)
    return TfliteImport(model=model, source_sha256=digest, reference_tensor=result.reference_tensor,
                        input_tensor=result.input_tensor, float_input=result.float_input, notes=result.notes)


# --------------------------------------------------------------------------- the interpreter


RESOLVERS = ("reference", "optimized", "default")


def run_interpreter(source: str | os.PathLike[str] | bytes, inputs: np.ndarray, *,
                    tensor: Optional[int] = None, resolver: str = "reference") -> np.ndarray:
    """Run the TFLite interpreter (ai-edge-litert) on int8 inputs (N, H, W, C); return (N, size) int8.

    `tensor`: the TFLite tensor to read (default: the model output); a tensor other than the output is
    read with `experimental_preserve_all_tensors`. A float-input model gets each int8 input dequantized
    (exact: its QUANTIZE maps it back to the same code). `resolver`: "reference" (BUILTIN_REF, what
    edgejpq matches), "optimized" (builtin optimized kernels, no XNNPACK) or "default" (XNNPACK).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType  # type: ignore[import-not-found]
    except ImportError:
        raise EdgejpqError(f"running the TFLite interpreter needs ai-edge-litert: {INSTALL_HINT}") from None
    if resolver not in RESOLVERS:
        raise EdgejpqError(f"resolver {resolver!r}: choose one of {', '.join(RESOLVERS)}")
    kind = {"reference": OpResolverType.BUILTIN_REF, "optimized": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            "default": OpResolverType.AUTO}[resolver]
    content = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    interpreter = Interpreter(model_content=content, experimental_op_resolver_type=kind, num_threads=1,
                              experimental_preserve_all_tensors=tensor is not None)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    index = int(detail["index"])
    out_index = int(interpreter.get_output_details()[0]["index"]) if tensor is None else int(tensor)
    x = np.asarray(inputs)
    shape = tuple(int(d) for d in detail["shape"])
    float_input = detail["dtype"] == np.float32
    scale, zero_point = detail["quantization"]
    if float_input:
        in_scale, in_zp = _quantize_params_of_first_quantize(content)
        feed = ((x.astype(np.float32) - np.float32(in_zp)) * np.float32(in_scale)).astype(np.float32)
    else:
        feed = x.astype(np.int8)
    results = []
    for sample in feed:
        interpreter.set_tensor(index, sample.reshape(shape))
        interpreter.invoke()
        results.append(np.array(interpreter.get_tensor(out_index)).reshape(-1))
    if not results:
        return np.zeros((0, 0), dtype=np.int8)
    out = np.stack(results)
    if out.dtype != np.int8:
        raise EdgejpqError(f"TFLite tensor {out_index} is {out.dtype}, not int8: nothing to compare byte for byte")
    return out


def _quantize_params_of_first_quantize(content: bytes) -> tuple[float, int]:
    reader = _Reader(content, "tflite model")
    op = reader.graph.operators[0]
    t = reader.tensors[int(op.outputs[0])]
    return float(t.scales[0]), int(t.zero_points[0])


__all__ = ["RESOLVERS", "TfliteImport", "import_tflite", "load_schema", "run_interpreter"]

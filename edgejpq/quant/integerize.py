"""From a float graph and a precision plan to an integer-only QuantizedModel.

Steps (shared with the search, which supplies learned ranges instead of calibrated ones):
  1. ranges: min/max of every tensor over calibration data (pruned channels gated to zero);
  2. QuantState: per-tensor int8 scale/zero point (asymmetric), per-channel symmetric weight
     scales at the plan's bit-widths (the least-error clipping of max|w|: `weight_steps`, or the steps
     fine-tuning trained; grids `weight_limits`);
  3. integerize: quantize weights and biases, requantization multipliers, fused activation
     clamps, channel bookkeeping (below), memory layout, validation (incl. the overflow proof).

Channel bookkeeping: every tensor of the integer model holds only kept channels, in a memory
order chosen by its producer. A conv/linear whose output only flows (through pools/flatten) into
other conv/linear layers orders its output channels by bit-width (8, then 4, then 2), so the C
runs one kernel per bit-width group; the consumers absorb the permutation by reordering their
input channels. Other tensors (feeding adds, concats, depthwise convs, or the model output) keep
ascending channel order, and their producer runs one kernel call per run of equal bits.
A pruned channel is a channel whose value is zero: its consumers simply drop it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from edgejpq import __version__
from edgejpq.artifact import (Add, Concat, ConcatInput, Conv2D, FullyConnected, Op, Pool, QuantizedModel,
                              Reshape, TensorInfo, WeightRun, validate_model)
from edgejpq.cost.memory import plan_model_memory
from edgejpq.errors import EdgejpqError
from edgejpq.graph import (AddLayer, ConcatLayer, FlattenLayer, FloatGraph, Layer, PoolLayer, WeightedLayer,
                           layer_inputs)
from edgejpq.plan import PrecisionPlan, check_plan_matches
from edgejpq.quant.fixedpoint import INT32_MAX, INT32_MIN, quantize_multiplier
from edgejpq.quant.packing import pack_rows, value_range

ADD_LEFT_SHIFT = 20  # TFLite's int8 ADD


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int


@dataclass(frozen=True)
class QuantState:
    """Everything fake-quant and integer export agree on."""

    tensors: Mapping[str, QParams]
    weight_scales: Mapping[str, np.ndarray]  # per layer, per output channel (float64; 0 for pruned)
    plan: PrecisionPlan


def qparams_from_range(lo: float, hi: float) -> QParams:
    """Asymmetric int8 parameters covering [lo, hi] and zero (TFLite's convention)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / 255.0
    zero_point = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return QParams(scale, zero_point)


# the clippings of max|w| tried for a channel's weight grid: 0.20, 0.25, ..., 1.00
CLIP_RATIOS = tuple(round(0.2 + 0.05 * k, 2) for k in range(17))


def weight_limits(bits: int) -> tuple[int, int]:
    """The integers a channel's weights round into at `bits` bits (its step times these is its grid):
    the symmetric {-(2^(bits-1) - 1) .. 2^(bits-1) - 1}, as TFLite's int8 weights. (The packing and the
    kernels also take -2^(bits-1); the four-level 2-bit grid {-2..1} scored lower: ResNet-8 on
    Fashion-MNIST, one epoch of uniform 2-bit QAT, 85.52% against 86.06%.)"""
    hi = value_range(bits)[1]
    return -hi, hi


def round_weights(w: torch.Tensor, steps: torch.Tensor, bits: int) -> torch.Tensor:
    """`w` (output channel first) rounded to its `bits`-bit grid of per-channel `steps`: integers in
    weight_limits(bits), as floats (multiply by the steps for the quantized weights)."""
    lo, hi = weight_limits(bits)
    return torch.clamp(torch.round(w / steps.reshape((-1,) + (1,) * (w.dim() - 1))), lo, hi)


def weight_steps(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel step of the `bits`-bit grid weight_limits(bits)·step.

    The step clips max|w| by the ratio in CLIP_RATIOS (max|w| times the ratio maps to the grid's top
    level) whose grid rounds the channel's weights with the least squared error (the first on ties);
    an all-zero channel gets step 1. Max-abs scaling (ratio 1) leaves a symmetric 2-bit channel one
    non-zero level at max|w|, so most weights round to zero; the least-error clipping keeps them.
    ResNet-8 on Fashion-MNIST, one epoch of uniform QAT from the same float model, symmetric grids:
    2 bits 79.90% → 86.06%, 4 bits 90.04% → 90.91% (integer accuracy), for 4% more time per batch.
    One function for the search's fake quantization and for export, in the weight's own dtype, so
    both choose the same step."""
    hi = weight_limits(bits)[1]
    flat = weight.detach().reshape(weight.shape[0], -1)
    top = flat.abs().amax(dim=1)
    ratios = torch.tensor(CLIP_RATIOS, dtype=flat.dtype, device=flat.device)
    steps = (ratios[:, None] * top[None, :] / hi).clamp_min(torch.finfo(flat.dtype).tiny)  # (ratio, channel)
    tried = steps.reshape(-1)  # every (ratio, channel) pair as one row of a grid
    rounded = (round_weights(flat.repeat(len(ratios), 1), tried, bits) * tried[:, None]).reshape(*steps.shape, -1)
    best = ((rounded - flat[None]) ** 2).sum(dim=2).argmin(dim=0)
    step = steps.gather(0, best[None]).squeeze(0)
    return torch.where(top > 0, step, torch.ones_like(step))


def weight_scales(weight: torch.Tensor, bits: tuple[int, ...]) -> np.ndarray:
    """Per-output-channel scales at the plan's bit-widths (`weight_steps`; 0 for a pruned channel)."""
    scales = np.zeros(len(bits))
    for b in sorted(set(bits) - {0}):
        steps = weight_steps(weight, b).double().numpy()
        for c, channel_bits in enumerate(bits):
            if channel_bits == b:
                scales[c] = steps[c]
    return scales


def round_weight_rows(w: torch.Tensor, steps: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """round_weights with a bit-width per output channel (0: pruned, rounded to 0)."""
    q = torch.zeros_like(w)
    for b in set(bits.tolist()) - {0}:
        rows = bits == b
        q[rows] = round_weights(w[rows], steps[rows], b)
    return q


def quantize_weight_rows(w: np.ndarray, scales: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Integer weights (rows × K) for per-row scales and bit-widths (round_weight_rows)."""
    return round_weight_rows(torch.from_numpy(w), torch.from_numpy(scales), torch.from_numpy(bits)).numpy().astype(
        np.int64)


# --------------------------------------------------------------------------- float / fake-quant execution


def channel_masks(graph: FloatGraph, plan: PrecisionPlan | None) -> dict[str, torch.Tensor]:
    if plan is None:
        return {}
    return {layer.name: torch.tensor([1.0 if b else 0.0 for b in plan.layers[layer.name].bits])
            for layer in graph.weighted if not all(plan.layers[layer.name].bits)}


def _fake_quant(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    q = torch.clamp(torch.round(x / qp.scale) + qp.zero_point, -128, 127)
    return (q - qp.zero_point) * qp.scale


def _fake_weight(layer: WeightedLayer, state: QuantState) -> torch.Tensor:
    scales = torch.from_numpy(state.weight_scales[layer.name]).float()
    bits = torch.tensor(state.plan.layers[layer.name].bits)
    return round_weight_rows(layer.weight, scales, bits) * scales.reshape((-1,) + (1,) * (layer.weight.dim() - 1))


def _spatial(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(2) if x.dim() == 3 else x  # (N, C, L) runs as (N, C, 1, L)


def activate(y: torch.Tensor, activation: str) -> torch.Tensor:
    """A fused activation of the float graph: "relu", "relu6" or "none"."""
    return F.relu(y) if activation == "relu" else F.relu6(y) if activation == "relu6" else y


def run_layer(layer: Layer, values: Mapping[str, torch.Tensor], graph: FloatGraph,
              weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """One layer of the float graph (PyTorch layout); weight/bias override the layer's own."""
    if isinstance(layer, WeightedLayer):
        w = layer.weight if weight is None else weight
        b = layer.bias if bias is None else bias
        x = values[layer.input]
        if layer.kind == "linear":
            y = F.linear(x, w.reshape(w.shape[0], -1), b)
        else:
            top, bottom, left, right = layer.padding
            x4 = _spatial(x)
            if top == bottom and left == right:  # the convolution pads: no padded copy to build and back-propagate
                padding: tuple[int, int] = (top, left)
            else:
                x4, padding = F.pad(x4, (left, right, top, bottom)), (0, 0)
            y = F.conv2d(x4, w, b, stride=layer.stride, padding=padding, groups=x4.shape[1] if layer.depthwise else 1)
            y = y.reshape(y.shape[0], *graph.shapes[layer.output])
        return activate(y, layer.activation)
    if isinstance(layer, PoolLayer):
        x = _spatial(values[layer.input])
        top, bottom, left, right = layer.padding
        if layer.global_pool:
            y = x.mean(dim=(2, 3), keepdim=True)
        elif layer.mode == "max":
            y = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), layer.kernel, layer.stride)
        else:
            y = F.avg_pool2d(x, layer.kernel, layer.stride, padding=(top, left), count_include_pad=False)
        return y.reshape(y.shape[0], *graph.shapes[layer.output])
    if isinstance(layer, AddLayer):
        y = values[layer.inputs[0]] + values[layer.inputs[1]]
        return activate(y, layer.activation)
    if isinstance(layer, ConcatLayer):
        return torch.cat([values[name] for name in layer.inputs], dim=1)
    if isinstance(layer, FlattenLayer):
        x = values[layer.input]
        return x.reshape(x.shape[0], -1)
    raise TypeError(layer)


def forward(graph: FloatGraph, x: torch.Tensor, *, plan: PrecisionPlan | None = None,
            state: QuantState | None = None,
            observe: Callable[[str, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run the float graph; with `state`, fake-quantize weights and every tensor as the integer model does."""
    masks = channel_masks(graph, plan if state is None else state.plan)
    values: dict[str, torch.Tensor] = {graph.input: x}
    if state is not None:
        values[graph.input] = _fake_quant(x, state.tensors[graph.input])
    if observe:
        observe(graph.input, values[graph.input])
    for layer in graph.layers:
        weight = _fake_weight(layer, state) if state is not None and isinstance(layer, WeightedLayer) else None
        y = run_layer(layer, values, graph, weight=weight)
        if isinstance(layer, WeightedLayer) and layer.name in masks:
            y = y * masks[layer.name].reshape((-1,) + (1,) * (y.dim() - 2))
        if state is not None:
            y = _fake_quant(y, state.tensors[layer.output])
        values[layer.output] = y
        if observe:
            observe(layer.output, y)
    return values[graph.output]


@torch.no_grad()
def predict_float(graph: FloatGraph, x: np.ndarray, *, plan: PrecisionPlan | None = None,
                  state: QuantState | None = None, batch_size: int = 512) -> np.ndarray:
    outs = [forward(graph, torch.from_numpy(x[i: i + batch_size]), plan=plan, state=state).numpy()
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


@torch.no_grad()
def calibrate(graph: FloatGraph, x: np.ndarray, plan: PrecisionPlan | None = None,
              batch_size: int = 256) -> dict[str, tuple[float, float]]:
    """min/max of every tensor over the calibration samples (float model, pruned channels gated)."""
    ranges: dict[str, tuple[float, float]] = {}

    def observe(name: str, t: torch.Tensor) -> None:
        lo, hi = float(t.min()), float(t.max())
        old = ranges.get(name)
        ranges[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    for i in range(0, len(x), batch_size):
        forward(graph, torch.from_numpy(x[i: i + batch_size]), plan=plan, observe=observe)
    return ranges


def derive_quant_state(graph: FloatGraph, plan: PrecisionPlan, ranges: Mapping[str, tuple[float, float]],
                       steps: Mapping[str, np.ndarray] | None = None) -> QuantState:
    """Tensor qparams from ranges (pools and flattens keep their input's) and weight scales from the plan:
    the least-error steps of the weights (`weight_scales`), or `steps` where given (trained ones)."""
    check_plan_matches(plan, graph)
    tensors: dict[str, QParams] = {graph.input: qparams_from_range(*ranges[graph.input])}
    for layer in graph.layers:
        if isinstance(layer, (PoolLayer, FlattenLayer)):
            tensors[layer.output] = tensors[layer.input]
        else:
            tensors[layer.output] = qparams_from_range(*ranges[layer.output])
    scales = {layer.name: np.asarray(steps[layer.name], dtype=np.float64) if steps is not None
              else weight_scales(layer.weight, plan.layers[layer.name].bits) for layer in graph.weighted}
    return QuantState(tensors=tensors, weight_scales=scales, plan=plan)


# --------------------------------------------------------------------------- integer export


def absorbs_permutation(graph: FloatGraph, tensor: str) -> bool:
    """True if every consumer can take this tensor's channels in any order."""
    if tensor == graph.output:
        return False
    for consumer in graph.consumers[tensor]:
        if isinstance(consumer, WeightedLayer) and not consumer.depthwise:
            continue
        if isinstance(consumer, (PoolLayer, FlattenLayer)) and absorbs_permutation(graph, consumer.output):
            continue
        return False
    return True


def _int_shape(shape: tuple[int, ...], channels: int) -> tuple[int, int, int]:
    if len(shape) == 3:
        return (shape[1], shape[2], channels)
    if len(shape) == 2:
        return (1, shape[1], channels)
    return (1, 1, channels)


def _activation_range(activation: str, qp: QParams) -> tuple[int, int]:
    if activation == "none":
        return -128, 127
    lo = max(-128, qp.zero_point)
    hi = 127 if activation == "relu" else min(127, qp.zero_point + int(round(6.0 / qp.scale)))
    return lo, hi


def _runs(bits: list[int], k: int) -> tuple[WeightRun, ...]:
    from edgejpq.quant.packing import row_bytes

    runs: list[WeightRun] = []
    offset = 0
    for c, b in enumerate(bits):
        if runs and runs[-1].bits == b:
            last = runs[-1]
            runs[-1] = WeightRun(last.start, last.count + 1, b, last.offset)
        else:
            runs.append(WeightRun(c, 1, b, offset))
        offset += row_bytes(k, b)
    return tuple(runs)


def integerize(graph: FloatGraph, state: QuantState, *, name: str = "model",
               provenance: Mapping[str, object] | None = None) -> QuantizedModel:
    """Build the integer-only model (validated, with its memory layout) from the graph and QuantState."""
    plan = state.plan
    channels: dict[str, np.ndarray] = {graph.input: np.arange(graph.shapes[graph.input][0])}
    tensors: dict[str, TensorInfo] = {}
    ops: list[Op] = []
    arrays: dict[str, np.ndarray] = {}

    def add_tensor(tname: str) -> None:
        qp = state.tensors[tname]
        shape = _int_shape(graph.shapes[tname], len(channels[tname]))
        tensors[tname] = TensorInfo(tname, shape, float(qp.scale), int(qp.zero_point))

    add_tensor(graph.input)
    for layer in graph.layers:
        if isinstance(layer, WeightedLayer):
            ops.append(_integerize_weighted(graph, layer, state, channels, arrays))
        elif isinstance(layer, PoolLayer):
            channels[layer.output] = channels[layer.input]
            in_shape = _int_shape(graph.shapes[layer.input], 1)
            kernel = (in_shape[0], in_shape[1]) if layer.global_pool else layer.kernel
            ops.append(Pool("pool", layer.name, layer.input, layer.output, layer.mode, kernel,
                            kernel if layer.global_pool else layer.stride, layer.padding, -128, 127))
        elif isinstance(layer, FlattenLayer):
            shape = graph.shapes[layer.input]
            h, w = (shape[1], shape[2]) if len(shape) == 3 else (1, shape[1]) if len(shape) == 2 else (1, 1)
            kept = channels[layer.input]
            # memory order (h, w, c) of the channels-last tensor → PyTorch's flat (c, h, w) index
            hh, ww, cc = np.meshgrid(np.arange(h), np.arange(w), kept, indexing="ij")
            channels[layer.output] = (cc * h * w + hh * w + ww).reshape(-1)
            ops.append(Reshape("reshape", layer.name, layer.input, layer.output))
        elif isinstance(layer, AddLayer):
            a, b = layer.inputs
            if not np.array_equal(channels[a], channels[b]):
                missing = sorted(set(channels[a].tolist()) ^ set(channels[b].tolist()))
                raise EdgejpqError(f"residual add {layer.name}: its inputs {a} and {b} keep different channels "
                                   f"(e.g. channel {missing[0] if missing else '?'}); channels joined by an add must "
                                   "be pruned together")
            channels[layer.output] = channels[a]
            ops.append(_integerize_add(layer, state))
        elif isinstance(layer, ConcatLayer):
            parts, offset = [], 0
            for src in layer.inputs:
                parts.append(channels[src] + offset)
                offset += graph.shapes[src][0]
            channels[layer.output] = np.concatenate(parts)
            out_qp = state.tensors[layer.output]
            requant = []
            for src in layer.inputs:
                qp = state.tensors[src]
                if (qp.scale, qp.zero_point) == (out_qp.scale, out_qp.zero_point):
                    requant.append(ConcatInput(True, 0, 0))
                else:
                    m, s = quantize_multiplier(qp.scale / out_qp.scale)
                    requant.append(ConcatInput(False, m, s))
            ops.append(Concat("concat", layer.name, tuple(layer.inputs), layer.output, tuple(requant)))
        add_tensor(layer.output)
    layout = plan_model_memory(tensors, ops, graph.input, graph.output)
    model = QuantizedModel(name=name, input=graph.input, output=graph.output, tensors=tensors, ops=tuple(ops),
                           layout=layout, arrays=arrays,
                           provenance={"tool": f"edgejpq {__version__}", "plan": plan.summary(), **(provenance or {})})
    validate_model(model, where=f"exported model {name}")
    return model


def _integerize_weighted(graph: FloatGraph, layer: WeightedLayer, state: QuantState,
                         channels: dict[str, np.ndarray], arrays: dict[str, np.ndarray]) -> Op:
    bits = np.array(state.plan.layers[layer.name].bits)
    in_list = channels[layer.input]
    if layer.depthwise:
        kept_in = set(in_list.tolist())
        bad = [c for c in range(len(bits)) if bool(bits[c]) != (c in kept_in)]
        if bad:
            state_word = "keeps" if bits[bad[0]] else "prunes"
            raise EdgejpqError(f"depthwise layer {layer.name}: {state_word} channel {bad[0]} but its input "
                               f"{layer.input} does the opposite; a depthwise layer's channels are pruned exactly "
                               "together with its input's (one channel group)")
        out_list = in_list
    else:
        kept = np.flatnonzero(bits)
        if absorbs_permutation(graph, layer.output):
            kept = kept[np.argsort(-bits[kept], kind="stable")]  # 8-bit rows first, then 4, then 2
        out_list = kept
    channels[layer.output] = out_list
    w = layer.weight.detach().double().numpy()[out_list]
    if layer.depthwise:
        rows = w[:, 0].reshape(len(out_list), -1)  # [kh][kw]
    elif layer.kind == "linear":
        rows = w.reshape(w.shape[0], -1)[:, in_list]
    else:
        rows = w[:, in_list].transpose(0, 2, 3, 1).reshape(len(out_list), -1)  # [kh][kw][cin]
    row_bits = bits[out_list]
    s_w = state.weight_scales[layer.name][out_list]
    q = quantize_weight_rows(rows, s_w, row_bits)
    s_in = state.tensors[layer.input].scale
    out_qp = state.tensors[layer.output]
    bias = np.round(layer.bias.detach().double().numpy()[out_list] / (s_in * s_w))
    if np.any(bias < INT32_MIN) or np.any(bias > INT32_MAX):
        worst = int(np.argmax(np.abs(bias)))
        raise EdgejpqError(f"layer {layer.name}: the bias of output channel {int(out_list[worst])} does not fit int32 "
                           "after quantization (its weights are near zero while its bias is large)")
    mult_shift = [quantize_multiplier(s_in * s / out_qp.scale) for s in s_w]
    runs = _runs(row_bits.tolist(), rows.shape[1])
    packed = [pack_rows(q[r.start: r.start + r.count], r.bits).reshape(-1) for r in runs]
    op_name = layer.output
    arrays[f"{op_name}.weights"] = np.concatenate(packed).astype(np.uint8)
    arrays[f"{op_name}.bias"] = bias.astype(np.int32)
    arrays[f"{op_name}.multiplier"] = np.array([m for m, _ in mult_shift], dtype=np.int32)
    arrays[f"{op_name}.shift"] = np.array([s for _, s in mult_shift], dtype=np.int32)
    act_min, act_max = _activation_range(layer.activation, out_qp)
    if layer.kind == "linear":
        return FullyConnected("fully_connected", op_name, layer.input, layer.output, runs, act_min, act_max,
                              source=layer.name)
    return Conv2D("conv2d", op_name, layer.input, layer.output, layer.kernel, layer.stride, layer.padding,
                  layer.depthwise, runs, act_min, act_max, source=layer.name)


def _integerize_add(layer: AddLayer, state: QuantState) -> Add:
    qa, qb = (state.tensors[name] for name in layer.inputs)
    out = state.tensors[layer.output]
    twice_max = 2 * max(qa.scale, qb.scale)
    ma, sa = quantize_multiplier(qa.scale / twice_max)
    mb, sb = quantize_multiplier(qb.scale / twice_max)
    mo, so = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * out.scale))
    act_min, act_max = _activation_range(layer.activation, out)
    return Add("add", layer.name, (layer.inputs[0], layer.inputs[1]), layer.output, ADD_LEFT_SHIFT, (ma, mb),
               (sa, sb), mo, so, act_min, act_max)


def quantize_input(model: QuantizedModel, x: np.ndarray) -> np.ndarray:
    """Float inputs in PyTorch layout (N, C, H, W) / (N, C, L) / (N, F) → int8 channels-last (N, H, W, C)."""
    info = model.input_info
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    elif x.ndim == 3:
        x = x.transpose(0, 2, 1)[:, None]
    else:
        x = x.reshape(x.shape[0], 1, 1, -1)
    if tuple(x.shape[1:]) != info.shape:
        raise EdgejpqError(f"data has samples of shape {x.shape[1:]} (channels-last) but model {model.name} takes "
                           f"{info.shape}")
    q = np.round(x.astype(np.float64) / info.scale) + info.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def export_model(graph: FloatGraph, plan: PrecisionPlan, calibration: np.ndarray, *, name: str = "model",
                 provenance: Mapping[str, object] | None = None) -> tuple[QuantizedModel, QuantState]:
    """Post-training quantization: calibrate ranges, derive scales, integerize."""
    ranges = calibrate(graph, calibration, plan)
    state = derive_quant_state(graph, plan, ranges)
    info = {"calibration_samples": int(len(calibration)), **(provenance or {})}
    return integerize(graph, state, name=name, provenance=info), state


def integer_logits(model: QuantizedModel, x_float: np.ndarray) -> np.ndarray:
    """Reference int8 outputs (N, classes) for float inputs."""
    from edgejpq.quant.reference import predict

    return predict(model, quantize_input(model, x_float)).reshape(len(x_float), -1)


_ = layer_inputs  # re-exported for callers walking both graphs

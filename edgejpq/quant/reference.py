"""The numpy integer reference executor: the specification every C build must match bit for bit.

It runs a QuantizedModel on a batch of int8 inputs (N, H, W, C) and returns every tensor, so a
mismatch can be traced to the first op that differs. Integer sums are formed in float64 through
BLAS: exact, because every product is below 2**15 and every sum below 2**53 (the artifact's
accumulator proof bounds them far lower), and much faster than int64 matmul.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from edgejpq.artifact import (Add, Concat, Conv2D, FullyConnected, Op, Pool, QuantizedModel, Reshape,
                              conv_output_hw, weight_k)
from edgejpq.quant.fixedpoint import (multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_single,
                                     rounded_average)
from edgejpq.quant.packing import row_bytes, unpack_rows


def unpacked_weights(op: Conv2D | FullyConnected, model: QuantizedModel) -> np.ndarray:
    """All output channels' weight rows as a (C_out, K) int8 array (runs unpacked in order)."""
    k = weight_k(op, model.tensors)
    packed = model.arrays[f"{op.name}.weights"]
    rows = []
    for run in op.runs:
        nbytes = row_bytes(k, run.bits)
        chunk = packed[run.offset: run.offset + run.count * nbytes].reshape(run.count, nbytes)
        rows.append(unpack_rows(chunk, run.bits, k))
    return np.concatenate(rows, axis=0)


def _patches(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int, int, int], fill: float) -> np.ndarray:
    """(N, H, W, C) → (N, OH, OW, KH, KW, C) windows of the padded input (a view where possible)."""
    top, bottom, left, right = padding
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    oh, ow = conv_output_hw(x.shape[1:3], kernel, stride, padding)
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=(1, 2))  # N, H', W', C, KH, KW
    windows = windows[:, : (oh - 1) * stride[0] + 1: stride[0], : (ow - 1) * stride[1] + 1: stride[1]]
    return windows.transpose(0, 1, 2, 4, 5, 3)


def _requantize(acc: np.ndarray, op: Conv2D | FullyConnected, model: QuantizedModel) -> np.ndarray:
    bias = model.arrays[f"{op.name}.bias"].astype(np.int64)
    mult = model.arrays[f"{op.name}.multiplier"].astype(np.int64)
    shift = model.arrays[f"{op.name}.shift"].astype(np.int64)
    out_zp = model.tensors[op.output].zero_point
    single = isinstance(op, FullyConnected) and op.rounding == "single"
    requant = multiply_by_quantized_multiplier_single if single else multiply_by_quantized_multiplier
    scaled = requant(acc + bias, mult, shift) + out_zp
    return np.clip(scaled, op.act_min, op.act_max).astype(np.int8)


def _conv(op: Conv2D, x: np.ndarray, model: QuantizedModel) -> np.ndarray:
    zp_in = model.tensors[op.input].zero_point
    centered = x.astype(np.float64) - zp_in  # padding contributes (x - zp) = 0, as TFLite skips it
    patches = _patches(centered, op.kernel, op.stride, op.padding, fill=0.0)
    w = unpacked_weights(op, model).astype(np.float64)
    n, oh, ow, kh, kw, c = patches.shape
    if op.depthwise:
        acc = np.einsum("nhwijc,cij->nhwc", patches, w.reshape(c, kh, kw), optimize=True)
    else:
        acc = patches.reshape(n * oh * ow, kh * kw * c) @ w.T
        acc = acc.reshape(n, oh, ow, -1)
    return _requantize(np.rint(acc).astype(np.int64), op, model)


def _fully_connected(op: FullyConnected, x: np.ndarray, model: QuantizedModel) -> np.ndarray:
    zp_in = model.tensors[op.input].zero_point
    flat = x.reshape(x.shape[0], -1).astype(np.float64) - zp_in
    acc = np.rint(flat @ unpacked_weights(op, model).astype(np.float64).T).astype(np.int64)
    return _requantize(acc, op, model).reshape(x.shape[0], 1, 1, -1)


def _pool(op: Pool, x: np.ndarray) -> np.ndarray:
    if op.mode == "max":
        windows = _patches(x.astype(np.int16), op.kernel, op.stride, op.padding, fill=-32768)
        result = windows.max(axis=(3, 4)).astype(np.int64)
    else:
        windows = _patches(x.astype(np.float64), op.kernel, op.stride, op.padding, fill=0.0)
        valid = _patches(np.ones((1, *x.shape[1:3], 1)), op.kernel, op.stride, op.padding, fill=0.0)
        total = np.rint(windows.sum(axis=(3, 4))).astype(np.int64)
        count = np.rint(valid.sum(axis=(3, 4))).astype(np.int64)
        result = rounded_average(total, count)
    return np.clip(result, op.act_min, op.act_max).astype(np.int8)


def _add(op: Add, a: np.ndarray, b: np.ndarray, model: QuantizedModel) -> np.ndarray:
    scaled = []
    for x, name, mult, shift in zip((a, b), op.inputs, op.input_multipliers, op.input_shifts):
        shifted = (x.astype(np.int64) - model.tensors[name].zero_point) << op.left_shift
        scaled.append(multiply_by_quantized_multiplier(shifted, mult, shift))
    out = multiply_by_quantized_multiplier(scaled[0] + scaled[1], op.output_multiplier, op.output_shift)
    out = out + model.tensors[op.output].zero_point
    return np.clip(out, op.act_min, op.act_max).astype(np.int8)


def _concat(op: Concat, inputs: list[np.ndarray], model: QuantizedModel) -> np.ndarray:
    out_zp = model.tensors[op.output].zero_point
    parts = []
    for x, name, rq in zip(inputs, op.inputs, op.requant):
        if rq.copy:
            parts.append(x)
        else:
            centered = x.astype(np.int64) - model.tensors[name].zero_point
            value = multiply_by_quantized_multiplier(centered, rq.multiplier, rq.shift) + out_zp
            parts.append(np.clip(value, -128, 127).astype(np.int8))
    return np.concatenate(parts, axis=3)


def run_op(op: Op, values: Mapping[str, np.ndarray], model: QuantizedModel) -> np.ndarray:
    """Execute one op on a batch, given the tensors computed so far."""
    if isinstance(op, Conv2D):
        return _conv(op, values[op.input], model)
    if isinstance(op, FullyConnected):
        return _fully_connected(op, values[op.input], model)
    if isinstance(op, Pool):
        return _pool(op, values[op.input])
    if isinstance(op, Add):
        return _add(op, values[op.inputs[0]], values[op.inputs[1]], model)
    if isinstance(op, Concat):
        return _concat(op, [values[name] for name in op.inputs], model)
    if isinstance(op, Reshape):
        x = values[op.input]
        return x.reshape(x.shape[0], *model.tensors[op.output].shape)
    raise TypeError(f"unknown op {op!r}")


def run_reference(model: QuantizedModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run the model on int8 input (N, H, W, C) or (H, W, C); return every tensor, batched."""
    x = np.asarray(x)
    expected = model.input_info.shape
    if x.ndim == 3:
        x = x[None]
    if x.dtype != np.int8 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"input must be int8 of shape (N, {', '.join(map(str, expected))}), got {x.dtype}{x.shape}")
    values: dict[str, np.ndarray] = {model.input: x}
    for op in model.ops:
        values[op.output] = run_op(op, values, model)
    return values


def predict(model: QuantizedModel, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """int8 outputs (N, H, W, C) of the model for int8 inputs, in batches."""
    outs = [run_reference(model, x[i: i + batch_size])[model.output] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0)

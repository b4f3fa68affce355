"""Seeded builders of random, valid QuantizedModels for the code generator and emulator tests.

`random_model(seed)` chains and branches random ops: convolutions with any kernel size, stride
and asymmetric padding (kernels larger than the input included), depthwise convolutions, fully
connected layers (after a reshape or straight on a 3-D tensor), max / average / global-average
pooling, residual adds (the planner puts many in place), concatenations (copied and requantized
inputs) and reshapes; weighted layers get runs of 8, 4 and 2-bit channels in random order.
Requantization parameters come from TFLite's formulas on random scales, with some channels forced
to extremes (positive shifts that saturate, shift -31, multiplier 0). `coverage_model()` holds
every op kind at every bit-width in one model. Every model is validated by the artifact's own
validate_model, layout included (planned by plan_model_memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgejpq.artifact import (Add, Concat, ConcatInput, Conv2D, FullyConnected, Pool, QuantizedModel, Reshape,
                              TensorInfo, WeightRun, conv_output_hw, validate_model)
from edgejpq.cost.memory import plan_model_memory
from edgejpq.quant.fixedpoint import quantize_multiplier
from edgejpq.quant.packing import pack_rows, row_bytes, value_range

BITS = (8, 4, 2)


@dataclass
class ModelBuilder:
    """Accumulates tensors, ops and arrays; `build()` plans memory and validates."""

    rng: np.random.Generator
    name: str
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    ops: list = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    clamps: bool = True  # False: every activation clamp is the full int8 range

    # ----------------------------------------------------------------- tensors

    def tensor(self, shape: tuple[int, int, int], scale: float | None = None, zero_point: int | None = None) -> str:
        name = f"t{len(self.tensors)}"
        if scale is None:
            scale = float(2.0 ** self.rng.uniform(-8, -2))
        if zero_point is None:
            zero_point = int(self.rng.integers(-128, 128)) if self.rng.random() < 0.7 else int(self.rng.integers(-10, 11))
        self.tensors[name] = TensorInfo(name, tuple(int(d) for d in shape), scale, zero_point)
        return name

    def shape(self, tensor: str) -> tuple[int, int, int]:
        return self.tensors[tensor].shape

    def _op_name(self, kind: str) -> str:
        return f"{kind}{len(self.ops)}"

    def _act(self, out: str) -> tuple[int, int]:
        zp = self.tensors[out].zero_point
        roll = self.rng.random()
        if roll < 0.6 or not self.clamps:
            return -128, 127
        if roll < 0.8:
            return zp, 127  # ReLU
        lo = int(self.rng.integers(-128, 100))
        return lo, int(self.rng.integers(lo, 128))

    # ----------------------------------------------------------------- weighted layers

    def _run_spec(self, c_out: int, bits: tuple[int, ...] | None) -> list[tuple[int, int]]:
        """(bits, count) runs covering c_out channels, in random order (repeats allowed)."""
        if bits is not None:
            counts = np.full(len(bits), c_out // len(bits))
            counts[: c_out % len(bits)] += 1
            return [(b, int(n)) for b, n in zip(bits, counts) if n > 0]
        cuts = sorted(self.rng.choice(np.arange(1, c_out), size=min(c_out - 1, int(self.rng.integers(0, 3))),
                                      replace=False).tolist()) if c_out > 1 else []
        edges = [0, *cuts, c_out]
        return [(int(self.rng.choice(BITS)), edges[i + 1] - edges[i]) for i in range(len(edges) - 1)]

    def _requant(self, acc_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (multiplier, shift) mapping an accumulator spread to ~40 output codes, plus extremes."""
        mults, shifts = [], []
        for std in acc_std:
            roll = self.rng.random()
            if roll < 0.08:
                m, s = int(self.rng.integers(1 << 30, 1 << 31)), int(self.rng.integers(1, 9))  # saturates
            elif roll < 0.12:
                m, s = int(self.rng.integers(1 << 30, 1 << 31)), -31
            elif roll < 0.14:
                m, s = 0, 0
            else:
                m, s = quantize_multiplier(40.0 / max(float(std), 1.0) * float(2.0 ** self.rng.uniform(-1.5, 1.5)))
            mults.append(m)
            shifts.append(s)
        return np.array(mults, dtype=np.int32), np.array(shifts, dtype=np.int32)

    def _weights(self, op_name: str, k: int, c_out: int, in_zp: int, bits: tuple[int, ...] | None
                 ) -> tuple[WeightRun, ...]:
        runs, packed, std = [], [], []
        start = offset = 0
        for b, count in self._run_spec(c_out, bits):
            lo, hi = value_range(b)
            w = self.rng.integers(lo, hi + 1, size=(count, k))
            if self.rng.random() < 0.1:
                w[:, :] = lo if self.rng.random() < 0.5 else hi  # extreme rows
            packed.append(pack_rows(w, b).ravel())
            runs.append(WeightRun(start, count, b, offset))
            x_rms = math.sqrt(74.0 ** 2 + in_zp ** 2)
            std.extend(math.sqrt(k) * float(np.sqrt((w.astype(float) ** 2).mean(axis=1)[i]) + 0.5) * x_rms
                       for i in range(count))
            start += count
            offset += count * row_bytes(k, b)
        std_arr = np.array(std)
        self.arrays[f"{op_name}.weights"] = np.concatenate(packed).astype(np.uint8)
        bias = self.rng.normal(0, std_arr * 0.5).round()
        if self.rng.random() < 0.1:
            bias = self.rng.integers(-(1 << 20), 1 << 20, size=c_out).astype(float)
        self.arrays[f"{op_name}.bias"] = bias.astype(np.int32)
        mult, shift = self._requant(std_arr)
        self.arrays[f"{op_name}.multiplier"] = mult
        self.arrays[f"{op_name}.shift"] = shift
        return tuple(runs)

    def conv(self, x: str, c_out: int, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1),
             padding: tuple[int, int, int, int] = (0, 0, 0, 0), *, depthwise: bool = False,
             bits: tuple[int, ...] | None = None, out: str | None = None) -> str:
        h, w, c = self.shape(x)
        c_out = c if depthwise else c_out
        oh, ow = conv_output_hw((h, w), kernel, stride, padding)
        out = out or self.tensor((oh, ow, c_out))
        name = self._op_name("dw" if depthwise else "conv")
        k = kernel[0] * kernel[1] * (1 if depthwise else c)
        runs = self._weights(name, k, c_out, self.tensors[x].zero_point, bits)
        self.ops.append(Conv2D("conv2d", name, x, out, kernel, stride, padding, depthwise, runs, *self._act(out)))
        return out

    def fc(self, x: str, c_out: int, *, bits: tuple[int, ...] | None = None, rounding: str | None = None) -> str:
        out = self.tensor((1, 1, c_out))
        name = self._op_name("fc")
        runs = self._weights(name, self.tensors[x].size, c_out, self.tensors[x].zero_point, bits)
        if rounding is None:  # every third layer rounds once, as TFLite's FULLY_CONNECTED (no rng draw)
            rounding = "single" if len(self.ops) % 3 == 1 else "double"
        self.ops.append(FullyConnected("fully_connected", name, x, out, runs, *self._act(out), rounding=rounding))
        return out

    # ----------------------------------------------------------------- other ops

    def pool(self, x: str, mode: str, kernel: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int, int, int] = (0, 0, 0, 0)) -> str:
        info = self.tensors[x]
        oh, ow = conv_output_hw(info.shape[:2], kernel, stride, padding)
        out = self.tensor((oh, ow, info.shape[2]), info.scale, info.zero_point)
        act = (-128, 127) if self.rng.random() < 0.7 else (info.zero_point, 127)
        self.ops.append(Pool("pool", self._op_name(f"{mode}pool"), x, out, mode, kernel, stride, padding, *act))
        return out

    def add(self, a: str, b: str, *, extreme: bool = False) -> str:
        sa, sb = self.tensors[a].scale, self.tensors[b].scale
        out = self.tensor(self.shape(a), scale=max(sa, sb) * float(self.rng.uniform(1.0, 2.0)))
        so = self.tensors[out].scale
        if extreme:
            left_shift = int(self.rng.integers(21, 25))
            (ma, sha), (mb, shb) = [(int(self.rng.integers(1 << 30, 1 << 31)), int(self.rng.integers(-2, 3)))
                                    for _ in range(2)]
            mo, sho = int(self.rng.integers(1 << 30, 1 << 31)), int(self.rng.integers(-31, -15))
        else:  # TFLite's int8 ADD preparation
            left_shift = 20
            twice_max = 2 * max(sa, sb)
            ma, sha = quantize_multiplier(sa / twice_max)
            mb, shb = quantize_multiplier(sb / twice_max)
            mo, sho = quantize_multiplier(twice_max / ((1 << left_shift) * so))
        self.ops.append(Add("add", self._op_name("add"), (a, b), out, left_shift, (ma, mb), (sha, shb), mo, sho,
                            *self._act(out)))
        return out

    def concat(self, inputs: list[str], copy_first: bool = True) -> str:
        h, w, _ = self.shape(inputs[0])
        first = self.tensors[inputs[0]]
        widest = max(self.tensors[t].scale for t in inputs)
        scale, zp = ((first.scale, first.zero_point) if copy_first
                     else (widest * float(self.rng.uniform(0.8, 1.5)), None))
        out = self.tensor((h, w, sum(self.shape(t)[2] for t in inputs)), scale, zp)
        so, zo = self.tensors[out].scale, self.tensors[out].zero_point
        requant = []
        for t in inputs:
            info = self.tensors[t]
            same = (info.scale, info.zero_point) == (so, zo)
            m, s = quantize_multiplier(info.scale / so)
            requant.append(ConcatInput(copy=same and self.rng.random() < 0.8, multiplier=m, shift=s))
        self.ops.append(Concat("concat", self._op_name("concat"), tuple(inputs), out, tuple(requant)))
        return out

    def reshape(self, x: str, shape: tuple[int, int, int]) -> str:
        info = self.tensors[x]
        out = self.tensor(shape, info.scale, info.zero_point)
        self.ops.append(Reshape("reshape", self._op_name("reshape"), x, out))
        return out

    def build(self, model_input: str, model_output: str) -> QuantizedModel:
        layout = plan_model_memory(self.tensors, self.ops, model_input, model_output)
        model = QuantizedModel(self.name, model_input, model_output, dict(self.tensors), tuple(self.ops), layout,
                               dict(self.arrays), provenance={"builder": "tests/random_models.py"})
        validate_model(model, where=self.name)
        return model


# --------------------------------------------------------------------------- random graphs


def _random_padding(rng: np.random.Generator, size: tuple[int, int], kernel: tuple[int, int],
                    stride: tuple[int, int], allow_past_kernel: bool) -> tuple[int, int, int, int]:
    pads = []
    for axis in range(2):
        k = kernel[axis]
        top_max = k if allow_past_kernel and rng.random() < 0.1 else k - 1
        lo, hi = int(rng.integers(0, top_max + 1)), int(rng.integers(0, top_max + 1))
        while size[axis] + lo + hi < k:
            hi += 1
        pads.append((lo, hi))
    return pads[0][0], pads[0][1], pads[1][0], pads[1][1]


def _same(kernel: int) -> tuple[int, int]:
    return (kernel - 1) // 2, kernel // 2


def _branch_conv(b: ModelBuilder, x: str, c_out: int) -> str:
    """A shape-preserving (stride 1, 'same' padding) conv or depthwise conv on x."""
    rng = b.rng
    kh, kw = int(rng.choice([1, 3, 5])), int(rng.choice([1, 2, 3]))
    (t, bo), (left, right) = _same(kh), _same(kw)
    depthwise = c_out == b.shape(x)[2] and rng.random() < 0.4
    return b.conv(x, c_out, (kh, kw), (1, 1), (t, bo, left, right), depthwise=depthwise)


def random_model(seed: int, max_ops: int = 8) -> QuantizedModel:
    """A random valid model; the same seed always gives the same model."""
    rng = np.random.default_rng(seed)
    b = ModelBuilder(rng, f"random_{seed}")
    shape = (int(rng.integers(1, 10)), int(rng.integers(1, 10)), int(rng.integers(1, 7)))
    model_input = b.tensor(shape)
    current = model_input
    produced = [model_input]
    n_ops = int(rng.integers(2, max_ops + 1))
    kinds = ["conv", "conv", "dw", "fc", "pool", "add", "concat", "reshape"]
    while len(b.ops) < n_ops:
        if rng.random() < 0.2 and len(produced) > 1:
            current = produced[int(rng.integers(0, len(produced)))]  # branch off an earlier tensor
        h, w, c = b.shape(current)
        kind = kinds[int(rng.integers(0, len(kinds)))]
        if kind in ("conv", "dw"):
            kernel = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
            stride = (int(rng.choice([1, 1, 2, 3])), int(rng.choice([1, 1, 2])))
            padding = _random_padding(rng, (h, w), kernel, stride, allow_past_kernel=True)
            c_out = int(rng.integers(1, 10))
            current = b.conv(current, c_out, kernel, stride, padding, depthwise=kind == "dw")
        elif kind == "fc":
            if h * w > 1 and rng.random() < 0.6:
                current = b.reshape(current, (1, 1, h * w * c))
            current = b.fc(current, int(rng.integers(1, 13)))
        elif kind == "pool":
            mode = "max" if rng.random() < 0.5 else "avg"
            if rng.random() < 0.25:
                current = b.pool(current, "avg", (h, w), (1, 1))  # global average pool
            else:
                kernel = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
                stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
                current = b.pool(current, mode, kernel, stride,
                                 _random_padding(rng, (h, w), kernel, stride, allow_past_kernel=False))
        elif kind == "add":
            other = current if rng.random() < 0.1 else _branch_conv(b, current, c)
            pair = (current, other) if rng.random() < 0.5 else (other, current)
            current = b.add(*pair, extreme=rng.random() < 0.2)
        elif kind == "concat":
            parts = [current, _branch_conv(b, current, int(rng.integers(1, 6)))]
            if rng.random() < 0.3:
                parts.append(_branch_conv(b, current, int(rng.integers(1, 4))))
            rng.shuffle(parts)
            current = b.concat(parts, copy_first=rng.random() < 0.7)
        elif kind == "reshape" and current != model_input:
            options = [(h * w, 1, c), (1, 1, h * w * c), (h, w * c, 1), (w, h, c)]
            current = b.reshape(current, options[int(rng.integers(0, len(options)))])
        produced.append(current)
    if isinstance(b.ops[-1], Reshape) or current == model_input:
        h, w, _ = b.shape(current)
        current = b.pool(current, "max", (1, 1), (1, 1))
    return b.build(model_input, current)


def coverage_model(seed: int = 1234) -> QuantizedModel:
    """One model holding every op kind at every weight bit-width (each weighted layer mixes 8/4/2)."""
    rng = np.random.default_rng(seed)
    b = ModelBuilder(rng, "coverage", clamps=False)
    x = b.tensor((7, 6, 3))
    c1 = b.conv(x, 7, (3, 3), (2, 1), (1, 1, 0, 2), bits=(2, 8, 4))            # 4x6x7
    d1 = b.conv(c1, 7, (3, 2), (1, 1), (1, 1, 1, 0), depthwise=True, bits=(4, 2, 8))
    a1 = b.add(c1, d1)                                                           # in place over c1
    p1 = b.pool(a1, "max", (2, 3), (2, 2), (1, 0, 1, 1))
    p2 = b.pool(a1, "avg", (3, 3), (1, 2), (1, 1, 2, 0))
    y = b.conv(p2, 5, (1, 1), bits=(8,))
    cat = b.concat([p2, y], copy_first=True)                                     # copy + requantized input
    big = b.conv(cat, 6, (9, 9), (2, 2), (4, 4, 4, 4), bits=(4, 2, 8))           # kernel larger than the input
    gap = b.pool(big, "avg", b.shape(big)[:2], (1, 1))
    flat = b.reshape(gap, (1, 1, b.shape(gap)[2]))
    f1 = b.fc(flat, 9, bits=(8, 2, 4), rounding="double")
    mp = b.reshape(p1, (1, 1, b.shape(p1)[0] * b.shape(p1)[1] * b.shape(p1)[2]))
    f2 = b.fc(mp, 9, bits=(2, 4), rounding="single")
    out = b.add(f1, f2)
    return b.build(x, out)


def op_coverage(model: QuantizedModel) -> set[str]:
    """Labels of what a model exercises: 'conv2d/w4', 'dwconv2d/w8', 'fc/w2', 'maxpool', 'concat/copy', ..."""
    labels: set[str] = set()
    for op in model.ops:
        if isinstance(op, Conv2D):
            labels.update(f"{'dwconv2d' if op.depthwise else 'conv2d'}/w{r.bits}" for r in op.runs)
        elif isinstance(op, FullyConnected):
            labels.update(f"fc/w{r.bits}" for r in op.runs)
            labels.add(f"fc/{op.rounding}_rounding")
        elif isinstance(op, Pool):
            labels.add(f"{op.mode}pool")
        elif isinstance(op, Add):
            labels.add("add")
        elif isinstance(op, Concat):
            labels.update("concat/copy" if rq.copy else "concat/requant" for rq in op.requant)
        elif isinstance(op, Reshape):
            labels.add("reshape")
    return labels


ALL_LABELS = frozenset({*(f"{k}/w{b}" for k in ("conv2d", "dwconv2d", "fc") for b in BITS), "maxpool", "avgpool",
                        "fc/double_rounding", "fc/single_rounding",
                        "add", "concat/copy", "concat/requant", "reshape"})

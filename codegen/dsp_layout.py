"""What the DSP kernel set (firmware_templates/kernels/dsp) needs from the generator.

Sub-byte weight runs of convolutions and fully connected layers are stored in channel groups that
share one byte per input, so one SXTB16 and a mask split a word into the products of 2 (4-bit) or
4 (2-bit) output channels at once:

    4-bit pair (A, B):        byte k = A[k] << 4 | (B[k] + 8)
    2-bit quad (A, B, C, D):  byte k = A[k] << 6 | (B[k] + 2) << 4 | (C[k] + 2) << 2 | (D[k] + 2)

A group takes exactly the bytes its channels take in the plain packing (G rows of ceil(K * b / 8)
bytes: the bytes past K are 0), and the channels of a run that do not fill a last group keep the
plain packing, so the weights' flash is byte for byte the `.ejq` file's. 8-bit runs and depthwise
layers keep the plain packing.

`scratch_bytes` mirrors the kernels' scratch layout (ejq_dsp_conv.h, ejq_dsp_fc.h, ejq_dsp_dw.h):
int16 activations, for convolutions also the requantization table of a run and, for depthwise layers
and convolutions of one input channel (which run on the depthwise machinery), channel planes.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from edgejpq.artifact import Conv2D, FullyConnected, TensorInfo, conv_output_hw, weight_k
from edgejpq.quant.packing import pack_rows, row_bytes

GROUP = {8: 1, 4: 2, 2: 4}
RQ_ENTRY_BYTES = 16  # sizeof(ejq_rq)
DW_CHANNELS = 8  # channels a depthwise pass converts at once (EJQ_DW_CHANNELS)


def group_size(bits: int) -> int:
    return GROUP[bits]


def dsp_pack_run(values: np.ndarray, bits: int) -> np.ndarray:
    """A run's weight rows (count, K) in the DSP set's layout (uint8, as many bytes as pack_rows makes)."""
    values = np.asarray(values, dtype=np.int64)
    count, k = values.shape
    g = GROUP[bits]
    groups = count // g
    nbytes = row_bytes(k, bits)
    out = np.zeros(count * nbytes, dtype=np.uint8)
    if g > 1 and groups:
        head = values[: groups * g].reshape(groups, g, k)
        if bits == 4:
            packed = ((head[:, 0] & 0xF) << 4) | (head[:, 1] + 8)
        else:
            packed = ((head[:, 0] & 0x3) << 6) | ((head[:, 1] + 2) << 4) | ((head[:, 2] + 2) << 2) | (head[:, 3] + 2)
        block = np.zeros((groups, g * nbytes), dtype=np.uint8)
        block[:, :k] = packed.astype(np.uint8)
        out[: groups * g * nbytes] = block.ravel()
    rest = values[groups * g:] if g > 1 else values
    if len(rest):
        out[(count - len(rest)) * nbytes:] = pack_rows(rest, bits).ravel()
    return out


def _k4(k: int) -> int:
    return (k + 3) // 4 * 4


def scratch_bytes(op: Conv2D | FullyConnected, tensors: Mapping[str, TensorInfo]) -> int:
    """Scratch bytes the DSP kernels of `op` use (each weight run's call; the largest run counts)."""
    k = weight_k(op, tensors)
    if isinstance(op, FullyConnected):  # the column only: each channel is requantized once, without a table
        return 2 * _k4(k)
    table = RQ_ENTRY_BYTES * max(run.count for run in op.runs)
    in_c = tensors[op.input].shape[2]
    if not op.depthwise and in_c != 1:  # a convolution of one input channel runs as the depthwise kernel does
        gather = 2 * _k4(k) if in_c % 4 else 0
        return table + 4 * _k4(k) + 8 + gather
    in_h, in_w, _ = tensors[op.input].shape
    _, out_w = conv_output_hw((in_h, in_w), op.kernel, op.stride, op.padding)
    kh, kw = op.kernel
    kw2 = (kw + 1) // 2 * 2
    padded = max(in_w + op.padding[2], (out_w - 1) * op.stride[1] + kw) + 1
    plane_w = (padded + 1) // 2 * 2
    return table + DW_CHANNELS * kh * kw2 * 2 + DW_CHANNELS * kh * plane_w * 2 + DW_CHANNELS * 4 * out_w + 4 * kh

"""What the DSP kernel set (firmware_templates/kernels/dsp) needs from the generator.

Sub-byte weight runs of convolutions and fully connected layers are stored in channel groups that
share one byte per input, so one SXTB16 and a mask split a word into the products of 2 (4-bit) or
4 (2-bit) output channels at once:

    4-bit pair (A, B):        byte k = A[k] << 4 | (B[k] + 8)
    2-bit quad (A, B, C, D):  byte k = A[k] << 6 | (B[k] + 2) << 4 | (C[k] + 2) << 2 | (D[k] + 2)

A group takes exactly the bytes its channels take in the plain packing (G rows of ceil(K * b / 8)
bytes: the bytes past K are 0), and the channels of a run that do not fill a last group keep the
plain packing (but for the 2-bit pair below), so the weights' flash is byte for byte the `.ejq` file's. 8-bit runs and depthwise
layers keep the plain packing.

Fully connected layers only: 2 or 3 channels of a 2-bit run left over from its quads store their
first two (A, B) as a 2-bit pair, one nibble n = (A + 2) << 2 | (B + 2) an input, in 2 bytes a
block of 4 inputs (the plain packing's 2 rows of ceil(K / 4) bytes: equal for every K). Blocks go
two to a word, so that one mask (and a shift) leaves an int16 pair for SMLAD with the column's
(x0, x2) or (x1, x3) word of one block:

    blocks b, b + 1 (b even):  byte 0 = n(b, 0) | n(b, 1) << 4,   byte 1 = n(b+1, 0) | n(b+1, 1) << 4,
                               byte 2 = n(b, 2) | n(b, 3) << 4,   byte 3 = n(b+1, 2) | n(b+1, 3) << 4
    a last, odd block b:       byte 0 = n(b, 0) | n(b, 1) << 4,   byte 1 = n(b, 2) | n(b, 3) << 4

(b even and b + 1 < ceil(K / 4); n(b, j): input 4b + j, 0 past K, where the column is 0). The kernel sums F = sum n x and
L = sum (n & 3) x; then B . x = L - 2 sum x and A . x = (F - L) / 4 - 2 sum x. A third left-over
channel keeps the plain packing.

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


def pack_pair2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two 2-bit rows (K values in [-2, 1] each) as a 2-bit pair: 2 * ceil(K / 4) bytes (module docstring)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    k = len(a)
    blocks = (k + 3) // 4
    n = np.zeros(4 * blocks, dtype=np.int64)
    n[:k] = ((a + 2) << 2) | (b + 2)
    n = n.reshape(blocks, 4)
    lo = (n[:, 0] | (n[:, 1] << 4)).astype(np.uint8)  # inputs 0, 1 of each block
    hi = (n[:, 2] | (n[:, 3] << 4)).astype(np.uint8)  # inputs 2, 3
    out = np.zeros(2 * blocks, dtype=np.uint8)
    even = blocks // 2 * 2
    words = out[: 2 * even].reshape(-1, 4)
    words[:, 0] = lo[0:even:2]
    words[:, 1] = lo[1:even:2]
    words[:, 2] = hi[0:even:2]
    words[:, 3] = hi[1:even:2]
    if blocks % 2:
        out[2 * even] = lo[-1]
        out[2 * even + 1] = hi[-1]
    return out


def dsp_pack_run(values: np.ndarray, bits: int, pair2: bool = False) -> np.ndarray:
    """A run's weight rows (count, K) in the DSP set's layout (uint8, as many bytes as pack_rows makes);
    `pair2` (fully connected layers): 2 or 3 channels of a 2-bit run left over from the quads start with a 2-bit pair."""
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
    if pair2 and bits == 2 and len(rest) >= 2:
        start = (count - len(rest)) * nbytes
        out[start: start + 2 * nbytes] = pack_pair2(rest[0], rest[1])
        rest = rest[2:]
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

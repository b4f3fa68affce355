"""What the host and QEMU emulators share: the trace format, input checks, the comparison with
the numpy reference that names the first differing tensor, and error-message helpers.

Trace format (little-endian), written by a runner or harness built with EJQ_TRACE_ENABLED:
b"EJQT", then one record per op (uint32 tensor index, uint32 n, the tensor's n bytes), closed by
the record (0xFFFFFFFF, 0). Tensor indices are positions in model.tensors.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from edgejpq.artifact import QuantizedModel
from edgejpq.errors import EdgejpqError
from edgejpq.quant.reference import predict, run_reference

TRACE_MAGIC = b"EJQT"
TRACE_END = 0xFFFFFFFF

ProgressCallback = Callable[[int], None]
TraceFunction = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Mismatch:
    """The first place the C build and the reference disagree."""

    sample: int
    tensor: str
    op_index: int  # the op that wrote `tensor`
    op_name: str
    index: int  # flat index inside the tensor
    expected: int
    got: int
    traced: bool  # False: only the final outputs were compared

    def __str__(self) -> str:
        where = "first differing tensor" if self.traced else "output tensor"
        return (f"sample {self.sample}: {where} {self.tensor} (written by op {self.op_index} {self.op_name}) "
                f"differs at flat index {self.index}: reference {self.expected}, C {self.got}")


def first_errors(stderr: str, lines: int = 12) -> str:
    """The first compiler error and the lines after it (for one readable error message)."""
    text = stderr.strip().splitlines()
    first = next((i for i, line in enumerate(text) if "error" in line), 0)
    return "\n".join(text[first: first + lines])


def as_samples(inputs: np.ndarray, input_size: int) -> np.ndarray:
    """int8 inputs (N, ...) as a contiguous (N, input_size) array, or an EdgejpqError."""
    x = np.asarray(inputs)
    if x.dtype != np.int8 or x.ndim < 1 or (x.size and x[0].size != input_size):
        raise EdgejpqError(f"inputs must be int8 with {input_size} values per sample, got {x.dtype}{x.shape}")
    return np.ascontiguousarray(x.reshape(len(x), input_size))


def parse_trace(data: bytes, tensor_names: Sequence[str], tensor_shapes: Sequence[tuple[int, int, int]],
                where: str) -> dict[str, np.ndarray]:
    """Tensors (by name, shaped) from one trace; `where` names the program in errors."""
    if data[:4] != TRACE_MAGIC:
        raise EdgejpqError(f"{where}: trace output does not start with {TRACE_MAGIC!r}")
    tensors: dict[str, np.ndarray] = {}
    pos = 4
    while True:
        if pos + 8 > len(data):
            raise EdgejpqError(f"{where}: trace output truncated at byte {pos}")
        index, size = struct.unpack_from("<II", data, pos)
        pos += 8
        if index == TRACE_END:
            break
        if index >= len(tensor_names) or pos + size > len(data):
            raise EdgejpqError(f"{where}: bad trace record at byte {pos - 8} (tensor {index}, {size} bytes)")
        shape = tensor_shapes[index]
        tensors[tensor_names[index]] = np.frombuffer(data, np.int8, size, pos).reshape(shape).copy()
        pos += size
    return tensors


def compare_outputs(model: QuantizedModel, inputs: np.ndarray, c_outputs: np.ndarray, *,
                    trace: Optional[TraceFunction] = None,
                    reference_outputs: Optional[np.ndarray] = None) -> Optional[Mismatch]:
    """None if the C outputs equal the reference byte for byte; else the first mismatch.

    With `trace` (one input → every tensor the C build produced), the first mismatching sample is
    traced and the mismatch names the first tensor (in op order) whose bytes differ and its op.
    """
    x = np.asarray(inputs)
    n = len(x)
    expected = predict(model, x) if reference_outputs is None else np.asarray(reference_outputs)
    expected = expected.reshape(n, -1)
    got = np.asarray(c_outputs).reshape(n, -1)
    if expected.shape != got.shape:
        raise EdgejpqError(f"C outputs have shape {got.shape}, the reference {expected.shape}")
    rows = np.flatnonzero((expected != got).any(axis=1))
    if rows.size == 0:
        return None
    sample = int(rows[0])
    producer = {op.output: (i, op.name) for i, op in enumerate(model.ops)}
    if trace is not None:
        traced = trace(x[sample])
        reference = run_reference(model, x[sample: sample + 1])
        for op_index, op in enumerate(model.ops):
            want = reference[op.output][0].ravel()
            have = traced.get(op.output)
            if have is None:
                continue
            diff = np.flatnonzero(want != have.ravel())
            if diff.size:
                i = int(diff[0])
                return Mismatch(sample, op.output, op_index, op.name, i, int(want[i]), int(have.ravel()[i]), True)
    i = int(np.flatnonzero(expected[sample] != got[sample])[0])
    op_index, op_name = producer[model.output]
    return Mismatch(sample, model.output, op_index, op_name, i, int(expected[sample, i]), int(got[sample, i]), False)

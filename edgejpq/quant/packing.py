"""Bit-packing of weight rows at 8, 4 or 2 bits.

Layout (the contract with the C kernels): every output channel's weights form one row of K
two's-complement values; a row is packed little end first within a byte (element 2i of a 4-bit
row in the low nibble, as CMSIS-NN packs int4; for 2 bits element 4i in bits 0-1) and padded
with zero bits to a whole byte, so every row starts on a byte boundary. Rows of one bit-width
run are contiguous.
"""

from __future__ import annotations

import numpy as np

SUPPORTED_BITS = (2, 4, 8)


def value_range(bits: int) -> tuple[int, int]:
    """Two's-complement range of a `bits`-wide weight."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def row_bytes(k: int, bits: int) -> int:
    """Bytes one packed row of k weights occupies."""
    return (k * bits + 7) // 8


def pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack a (rows, K) integer array into (rows, row_bytes(K, bits)) uint8."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"expected a (rows, K) array, got shape {values.shape}")
    lo, hi = value_range(bits)
    if values.size and (values.min() < lo or values.max() > hi):
        raise ValueError(f"weights out of the {bits}-bit range [{lo}, {hi}]")
    rows, k = values.shape
    per_byte = 8 // bits
    if rows == 0:
        return np.zeros((0, row_bytes(k, bits)), dtype=np.uint8)
    padded_k = row_bytes(k, bits) * per_byte
    fields = np.zeros((rows, padded_k), dtype=np.uint8)
    fields[:, :k] = values.astype(np.int64) & ((1 << bits) - 1)
    fields = fields.reshape(rows, -1, per_byte).astype(np.uint16)
    shifts = (np.arange(per_byte, dtype=np.uint16) * bits)[None, None, :]
    return (fields << shifts).sum(axis=2).astype(np.uint8)


def unpack_rows(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Inverse of pack_rows: (rows, row_bytes) uint8 → (rows, k) int8 (sign-extended)."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    packed = np.asarray(packed, dtype=np.uint8)
    rows = packed.shape[0]
    per_byte = 8 // bits
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits)[None, None, :]
    fields = (packed[:, :, None] >> shifts) & ((1 << bits) - 1)
    fields = fields.reshape(rows, -1)[:, :k].astype(np.int16)
    sign = 1 << (bits - 1)
    return ((fields ^ sign) - sign).astype(np.int8)

"""Fixed-point requantization exactly as TensorFlow Lite's reference kernels do it.

These functions are the specification the C kernels must match bit for bit
(firmware_templates/kernels/ejq_fixedpoint.h). They operate on int64 numpy arrays holding
int32 values, so the int32 arithmetic of the C code is reproduced without overflow in Python.

Rounding follows TFLite's reference (non single-rounding) path:
  MultiplyByQuantizedMultiplier(x, m, s) =
      RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x << max(s, 0), m), max(-s, 0))
One deliberate definition: TFLite leaves `x << left_shift` overflowing int32 undefined; we
saturate it to int32 (in C and here), which only matters where TFLite has undefined behaviour.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Return (q31 multiplier, shift) with real ≈ multiplier * 2**(shift - 31), as TFLite's QuantizeMultiplier."""
    if real < 0 or not math.isfinite(real):
        raise ValueError(f"requantization scale must be finite and >= 0, got {real}")
    if real == 0.0:
        return 0, 0
    mantissa, shift = math.frexp(real)  # real = mantissa * 2**shift, mantissa in [0.5, 1)
    q = math.floor(mantissa * (1 << 31) + 0.5)  # std::round: half away from zero (positive here)
    if q == (1 << 31):
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return INT32_MAX, 30
    return int(q), int(shift)


def _trunc_div_pow2(x: np.ndarray, bits: int) -> np.ndarray:
    """C-style (toward zero) division of int64 x by 2**bits."""
    return np.where(x >= 0, x >> bits, -((-x) >> bits))


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    result = _trunc_div_pow2(ab + nudge, 31)
    return np.where(overflow, np.int64(INT32_MAX), result)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def saturate_int32(x: np.ndarray) -> np.ndarray:
    return np.clip(x, INT32_MIN, INT32_MAX)


def multiply_by_quantized_multiplier(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier on int32 values held in int64 arrays (broadcasting)."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    shifted = saturate_int32(x << left)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right)


def multiply_by_quantized_multiplier_single(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite's single-rounding MultiplyByQuantizedMultiplier (its int8 FULLY_CONNECTED kernels):
    floor((x * m + 2^(30 - s)) / 2^(31 - s)), saturated to int32. x is int32, s in [-31, 30]."""
    x = np.asarray(x, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    total = 31 - np.asarray(shift, dtype=np.int64)  # in [1, 62]
    # |x * m| < 2^62 and the rounding term <= 2^61: the sum fits int64
    value = (x * multiplier + (np.int64(1) << (total - 1))) >> total
    return saturate_int32(value)


def rounded_average(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """TFLite's int8 average pool: (sum ± count/2) / count with C truncating division."""
    total = np.asarray(total, dtype=np.int64)
    count = np.asarray(count, dtype=np.int64)
    numerator = np.where(total > 0, total + count // 2, total - count // 2)
    quotient = np.abs(numerator) // count
    return np.where(numerator >= 0, quotient, -quotient)

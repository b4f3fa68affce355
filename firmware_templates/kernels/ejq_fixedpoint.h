/*
 * Fixed-point requantization helpers, bit-exact with edgejpq/quant/fixedpoint.py (TFLite's
 * reference rounding, gemmlowp's SaturatingRoundingDoublingHighMul and RoundingDivideByPOT).
 *
 * Every helper is integer-only and well defined on any C99 core: no right shift of a negative
 * value (floor division by a power of two is written with unsigned arithmetic), no left shift of
 * a negative value (scaling by 2^n is a multiplication in int64), no signed overflow.
 */
#ifndef EJQ_FIXEDPOINT_H
#define EJQ_FIXEDPOINT_H

#include <stdint.h>

#define EJQ_INT32_MIN_64 ((int64_t)(-2147483647 - 1))
#define EJQ_INT32_MAX_64 ((int64_t)2147483647)

/* floor(x / 2^exponent) for 0 <= exponent <= 31, without shifting a negative value. */
static inline int32_t ejq_floor_shift(int32_t x, int32_t exponent)
{
    if (x >= 0) {
        return (int32_t)((uint32_t)x >> exponent);
    }
    /* -1 - x is in [0, INT32_MAX] for negative x; floor(x / 2^e) = -1 - floor((-1 - x) / 2^e). */
    return -1 - (int32_t)((uint32_t)(-1 - x) >> exponent);
}

/* gemmlowp's SaturatingRoundingDoublingHighMul: round(a * b / 2^31), saturating INT32_MIN^2. */
static inline int32_t ejq_srdhm(int32_t a, int32_t b)
{
    int64_t ab;
    int64_t nudge;
    if (a == b && (int64_t)a == EJQ_INT32_MIN_64) {
        return (int32_t)EJQ_INT32_MAX_64;
    }
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    /* C99 division truncates toward zero, as gemmlowp's does. */
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

/* gemmlowp's RoundingDivideByPOT: x / 2^exponent rounded half away from zero, 0 <= exponent <= 31. */
static inline int32_t ejq_rounding_divide_by_pot(int32_t x, int32_t exponent)
{
    const uint32_t mask = (uint32_t)(((uint64_t)1 << exponent) - 1u);
    const uint32_t remainder = (uint32_t)x & mask;  /* two's complement bits of x, as gemmlowp */
    const uint32_t threshold = (mask >> 1) + (x < 0 ? 1u : 0u);
    return ejq_floor_shift(x, exponent) + (remainder > threshold ? 1 : 0);
}

/* Saturate an int64 to int32. */
static inline int32_t ejq_saturate_int32(int64_t x)
{
    if (x < EJQ_INT32_MIN_64) {
        return (int32_t)EJQ_INT32_MIN_64;
    }
    if (x > EJQ_INT32_MAX_64) {
        return (int32_t)EJQ_INT32_MAX_64;
    }
    return (int32_t)x;
}

/*
 * TFLite's MultiplyByQuantizedMultiplier for a value that may exceed int32 (|x| < 2^33): the left
 * shift max(shift, 0) is applied in int64 and saturated to int32 (edgejpq's definition of what
 * TFLite leaves undefined), then the high multiply and the rounding right shift max(-shift, 0).
 * shift must lie in [-31, 30].
 */
static inline int32_t ejq_mbqm64(int64_t x, int32_t multiplier, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    const int32_t shifted = ejq_saturate_int32(x * ((int64_t)1 << left));
    return ejq_rounding_divide_by_pot(ejq_srdhm(shifted, multiplier), right);
}

/* MultiplyByQuantizedMultiplier of an int32 value. */
static inline int32_t ejq_mbqm(int32_t x, int32_t multiplier, int32_t shift)
{
    return ejq_mbqm64((int64_t)x, multiplier, shift);
}

/* clamp(value + offset, lo, hi) for an int32 value, without overflowing the addition. */
static inline int8_t ejq_offset_clamp_s8(int32_t value, int32_t offset, int32_t lo, int32_t hi)
{
    /* clamp(v + o, lo, hi) == clamp(v, lo - o, hi - o) + o; lo, hi, o are int8-sized. */
    if (value < lo - offset) {
        return (int8_t)lo;
    }
    if (value > hi - offset) {
        return (int8_t)hi;
    }
    return (int8_t)(value + offset);
}

/* Requantize an int32 accumulator to int8: MBQM, add the output zero point, clamp. */
static inline int8_t ejq_requantize_s8(int32_t acc, int32_t multiplier, int32_t shift, int32_t output_offset,
                                      int32_t act_min, int32_t act_max)
{
    return ejq_offset_clamp_s8(ejq_mbqm(acc, multiplier, shift), output_offset, act_min, act_max);
}

/*
 * TFLite's single-rounding MultiplyByQuantizedMultiplier (its int8 FULLY_CONNECTED kernels):
 * floor((x * m + 2^(30 - shift)) / 2^(31 - shift)), saturated to int32; shift in [-31, 30].
 * |x * m| < 2^62 and the rounding term is at most 2^61, so the int64 sum cannot overflow; the floor
 * shift of a negative value is written without shifting a negative number.
 */
static inline int32_t ejq_mbqm_single(int32_t x, int32_t multiplier, int32_t shift)
{
    const int32_t total = 31 - shift;
    const int64_t v = (int64_t)x * (int64_t)multiplier + ((int64_t)1 << (total - 1));
    const int64_t floored = v >= 0 ? (int64_t)((uint64_t)v >> total) : -1 - (int64_t)((uint64_t)(-1 - v) >> total);
    return ejq_saturate_int32(floored);
}

/* Requantize with single rounding: MBQM (single), add the output zero point, clamp. */
static inline int8_t ejq_requantize_single_s8(int32_t acc, int32_t multiplier, int32_t shift, int32_t output_offset,
                                             int32_t act_min, int32_t act_max)
{
    return ejq_offset_clamp_s8(ejq_mbqm_single(acc, multiplier, shift), output_offset, act_min, act_max);
}

#endif /* EJQ_FIXEDPOINT_H */

/*
 * Helpers of the DSP kernel set for cores with the Armv7E-M / Armv8-M DSP extension (Cortex-M4,
 * M7, M33): SIMD sign extension (SXTB16, SXTAB16) and dual 16-bit multiply-accumulate (SMLAD).
 * The set overrides the portable convolution, depthwise and fully connected kernels; everything
 * else comes from the portable set. Results are bit-identical to the portable kernels.
 *
 * Activations are converted once into int16 (value - zero point, in [-255, 255]) in the layer's
 * scratch buffer, in the order SMLAD wants them: for each block of 4 inputs x0..x3 the pairs
 * (x0, x2) and (x1, x3), which is what SXTB16 and SXTB16-with-ror-8 make of 4 packed int8 weights.
 * With two columns (two output pixels) a block is 4 words:
 *     [col0 (x0,x2)] [col1 (x0,x2)] [col0 (x1,x3)] [col1 (x1,x3)]
 * and LDRD loads one pair of both columns. Inputs past K are 0, so a weight row may be read
 * in whole words past its end: those products are 0.
 *
 * Sub-byte weights are stored by the generator (codegen/dsp_layout.py) in groups of output
 * channels that share one byte per input: 4-bit pairs (A, B) as byte = A << 4 | (B + 8),
 * 2-bit quads (A, B, C, D) as A << 6 | (B + 2) << 4 | (C + 2) << 2 | (D + 2). SXTB16 of the byte
 * gives 16 A + (B + 8) (or 64 A + ...); masking the low bits gives the offset-binary parts; the
 * channel sums follow from these and the column sums of the inputs (see ejq_dsp_conv.h). A run's
 * channels that do not fill a last group keep the plain packing of the portable set.
 *
 * The requantization fast path (most channels: shift <= -1, multiplier > 2^30, exponent <= 23)
 * computes TFLite's MultiplyByQuantizedMultiplier plus the output zero point with SMMLAR, an add,
 * a QADD and an arithmetic shift; see ejq_requant_table for why it equals the reference bit for bit. Every other
 * channel uses ejq_requantize_s8 of ejq_fixedpoint.h.
 *
 * Right shifts of negative values are arithmetic here (GCC's documented behaviour; this set is
 * compiled with arm-none-eabi-gcc only).
 */
#ifndef EJQ_DSP_H
#define EJQ_DSP_H

#include <arm_acle.h>
#include <stdint.h>

#include "ejq_fixedpoint.h"
#include "ejq_kernels.h"

#if !defined(__ARM_FEATURE_DSP)
#error "the dsp kernel set needs a core with the DSP extension (-mcpu=cortex-m4, cortex-m7 or cortex-m33)"
#endif

#define EJQ_INLINE static inline __attribute__((always_inline))

/* Fast-path limit on the right shift: ca = (1 + 2 zp) 2^(e - 1) must fit int32 (255 2^22 < 2^30). */
#define EJQ_FAST_MAX_EXPONENT 23

/* One output channel's requantization, prepared once per kernel call. */
typedef struct {
    int32_t m2;       /* fast path: 2 m - 2^32 (m2 in (-2^31, 0)); general path: the channel's shift */
    int32_t ca;       /* fast path: (1 + 2 zp) 2^(e - 1) */
    int32_t multiplier;
    int32_t shift;    /* fast path: e (>= 1); general path: -1 */
} ejq_rq;

/* Bytes of a kernel's requantization table for `count` channels. */
#define EJQ_RQ_BYTES(count) ((uint32_t)(count) * (uint32_t)sizeof(ejq_rq))

EJQ_INLINE uint32_t ejq_ror8(uint32_t v)
{
    return (v >> 8) | (v << 24);
}

/* A word from any address (unaligned loads are allowed on these cores); asm, so the compiler
   makes no assumption about reading past the end of an object (the products there are 0). */
EJQ_INLINE uint32_t ejq_load_u32(const void *p)
{
    uint32_t v;
    __asm__("ldr %0, %1" : "=r"(v) : "m"(*(const uint32_t *)p));
    return v;
}

/* A word from p + offset bytes, any alignment. */
EJQ_INLINE uint32_t ejq_load_u32_at(const void *p, uint32_t offset)
{
    uint32_t v;
    __asm__("ldr %0, [%1, %2]" : "=r"(v) : "r"(p), "r"(offset), "m"(*(const uint8_t *)p));
    return v;
}

/* Store a word at p + offset bytes, any alignment (STR allows it on these cores; STRD and STM do not). */
EJQ_INLINE void ejq_store_u32_at(void *p, uint32_t offset, uint32_t v)
{
    __asm__ volatile("str %0, [%1, %2]" : : "r"(v), "r"(p), "r"(offset) : "memory");
}

/* The same, post-incrementing the pointer by 4. */
EJQ_INLINE uint32_t ejq_load_u32_inc(const uint8_t **p)
{
    uint32_t v;
    __asm__("ldr %0, [%1], #4" : "=r"(v), "+r"(*p));
    return v;
}

/* Store a and b at *p (STRD, which needs a word-aligned address: callers say why it is) and move
   the pointer by 8 bytes. */
EJQ_INLINE void ejq_strd_inc(uint32_t **p, uint32_t a, uint32_t b)
{
    __asm__ volatile("strd %1, %2, [%0], #8" : "+r"(*p) : "r"(a), "r"(b) : "memory");
}

EJQ_INLINE int32_t ejq_smlad(uint32_t a, uint32_t b, int32_t acc)
{
    return __smlad((int16x2_t)a, (int16x2_t)b, acc);
}

EJQ_INLINE uint32_t ejq_sxtb16(uint32_t v)
{
    return (uint32_t)__sxtb16((int8x4_t)v);
}

/* SXTB16 of the word rotated right by 8 (bytes 1 and 3), in one instruction (GCC 12 does not fold
   a rotation into SXTB16 by itself). */
EJQ_INLINE uint32_t ejq_sxtb16_ror8(uint32_t v)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

/* The low halves of lo and hi as one word, lo's low (PKHBT). */
EJQ_INLINE uint32_t ejq_pkhbt(uint32_t lo, uint32_t hi)
{
    uint32_t r;
    __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(lo), "r"(hi));
    return r;
}

/* The high halves of lo and hi as one word, lo's high in the low half (PKHTB). */
EJQ_INLINE uint32_t ejq_pkhtb(uint32_t hi, uint32_t lo)
{
    uint32_t r;
    __asm__("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(hi), "r"(lo));
    return r;
}

/* Bytes 0 and 2 of v, sign-extended, plus the two halves of `offset` (SXTAB16). */
EJQ_INLINE uint32_t ejq_sxtab16(uint32_t offset, uint32_t v)
{
    return (uint32_t)__sxtab16((int16x2_t)offset, (int8x4_t)v);
}

/* The same for bytes 1 and 3. */
EJQ_INLINE uint32_t ejq_sxtab16_ror8(uint32_t offset, uint32_t v)
{
    uint32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(offset), "r"(v));
    return r;
}

/* High word of a x 2^32 + x y + 2^31 (SMMLAR with the accumulator x itself). */
EJQ_INLINE int32_t ejq_smmlar(int32_t x, int32_t y, int32_t a)
{
    int32_t r;
    __asm__("smmlar %0, %1, %2, %3" : "=r"(r) : "r"(x), "r"(y), "r"(a));
    return r;
}

/*
 * Requantization table of a run (once per kernel call). The fast path: with x the int32
 * accumulator (bias included), m the multiplier in (2^30, 2^31) and e = -shift in [1, 23],
 *   srdhm(x, m) = floor((x m + 2^30) / 2^31)            (gemmlowp's nudge makes it round half up)
 *   rdbpot(y, e) = floor((y + 2^(e-1) - [y < 0]) / 2^e)  (round half away from zero)
 * and since floor(floor(a) / n) = floor(a / n), and y < 0 exactly when x < 0 (as m > 2^30),
 *   rdbpot(srdhm(x, m), e) + zp = floor((x m + 2^30 + (1 + 2 zp) 2^(30+e) - [x < 0] 2^31) / 2^(31+e))
 *                               = floor((H - [x < 0] + ca) / 2^e),  H = floor((2 x m + 2^31) / 2^32),
 * ca = (1 + 2 zp) 2^(e-1). With m2 = 2 m - 2^32 (an int32), 2 x m = x 2^32 + x m2, so H is one
 * SMMLAR(x, m2, x) (64-bit inside; H is in [-2^31 + 1, 2^31 - 1] as m < 2^31). H - [x < 0] cannot
 * overflow; adding ca saturates (QADD) only where the exact sum is past int32, and then both the
 * exact and the saturated quotient are beyond [-128, 127] (|quotient| >= 2^(31-e) - 1 >= 255), so
 * the clamp gives the same int8.
 */
EJQ_INLINE void ejq_requant_table(const ejq_weight_run *run, int32_t output_offset, ejq_rq *table)
{
    uint32_t c;
    for (c = 0; c < run->count; ++c) {
        const int32_t m = run->multiplier[c];
        const int32_t shift = run->shift[c];
        ejq_rq *q = &table[c];
        q->multiplier = m;
        if (shift <= -1 && shift >= -EJQ_FAST_MAX_EXPONENT && m > (int32_t)(1u << 30)) {
            q->m2 = (int32_t)((uint32_t)m * 2u);  /* 2 m - 2^32, as two's complement */
            q->ca = (1 + 2 * output_offset) * (int32_t)(1u << (-shift - 1));
            q->shift = -shift;
        } else {
            q->m2 = shift;
            q->ca = 0;
            q->shift = -1;
        }
    }
}

/* Fast path of one accumulator, before the clamp. */
EJQ_INLINE int32_t ejq_rq_fast(int32_t x, int32_t m2, int32_t ca, int32_t e)
{
    const int32_t h = ejq_smmlar(x, m2, x) + (x >> 31);
    return __qadd(h, ca) >> e;
}

EJQ_INLINE int32_t ejq_clamp(int32_t z, int32_t act_min, int32_t act_max)
{
    z = z < act_min ? act_min : z;
    return z > act_max ? act_max : z;
}

/* The general path, out of line in ejq_dsp_rq.c (rare: it keeps the fast path's registers free where the
   fast path is inlined; one copy however many kernels call it). */
int8_t ejq_rq_general(int32_t x, const ejq_rq *q, int32_t output_offset, int32_t act_min, int32_t act_max);

/* Requantize accumulator x (bias included) of one channel: int8 in [act_min, act_max]. */
EJQ_INLINE int8_t ejq_rq_apply(int32_t x, const ejq_rq *q, int32_t output_offset, int32_t act_min, int32_t act_max)
{
    if (__builtin_expect(q->shift >= 0, 1)) {
        return (int8_t)ejq_clamp(ejq_rq_fast(x, q->m2, q->ca, q->shift), act_min, act_max);
    }
    return ejq_rq_general(x, q, output_offset, act_min, act_max);
}

#endif /* EJQ_DSP_H */

/*
 * The DSP depthwise machinery (see ejq_dsp_dw.h), one object shared by the depthwise kernels of every
 * bit-width and by the convolutions with one input channel, so a model links it once.
 */
#include "ejq_dsp_dw.h"
#include "ejq_portable.h"

EJQ_INLINE int32_t ejq_floor_mod(int32_t a, int32_t n)
{
    const int32_t r = a % n;
    return r < 0 ? r + n : r;
}

/* Convert input row iy of channels [c, c + n) into ring slot `slot` of their planes (interior columns). */
static void ejq_dw_fill_row(const ejq_conv_params *p, const int8_t *in, int32_t iy, uint32_t c, uint32_t n,
                            int16_t *planes, uint32_t plane_stride, uint32_t slot, uint32_t plane_w)
{
    const ejq_window_geometry *g = &p->geometry;
    const uint32_t channels = p->in_c;
    const uint32_t in_w = g->in_w;
    int16_t *row0 = planes + slot * plane_w + g->pad_left;
    uint32_t x, ch;
    if (iy < 0 || iy >= (int32_t)g->in_h) {
        for (ch = 0; ch < n; ++ch) {
            int16_t *row = row0 + ch * plane_stride;
            for (x = 0; x < in_w; ++x) {
                row[x] = 0;
            }
        }
        return;
    }
    {
        const int8_t *src0 = in + (uint32_t)iy * in_w * channels + c;
        uint32_t b = 0;
        for (; b + 4u <= n; b += 4u) {  /* 4 channels a word: SXTAB16 into (c, c + 2), (c + 1, c + 3) */
            const uint32_t offset2 = ((uint32_t)p->input_offset & 0xFFFFu) * 0x00010001u;
            const int8_t *src = src0 + b;
            int16_t *r0 = row0 + b * plane_stride, *r1 = r0 + plane_stride, *r2 = r0 + 2u * plane_stride;
            int16_t *r3 = r0 + 3u * plane_stride;
            {  /* two pixels at a time: a word per plane (j: byte offset in the rows) */
                const uint32_t end = 2u * (in_w & ~1u);
                uint32_t j;
                for (j = 0; j != end; j += 4u, src += 2u * channels) {
                    const uint32_t v0 = ejq_load_u32(src), v1 = ejq_load_u32_at(src, channels);
                    const uint32_t e0 = ejq_sxtab16(offset2, v0), e1 = ejq_sxtab16(offset2, v1);
                    const uint32_t o0 = ejq_sxtab16_ror8(offset2, v0), o1 = ejq_sxtab16_ror8(offset2, v1);
                    ejq_store_u32_at(r0, j, ejq_pkhbt(e0, e1));
                    ejq_store_u32_at(r2, j, ejq_pkhtb(e1, e0));
                    ejq_store_u32_at(r1, j, ejq_pkhbt(o0, o1));
                    ejq_store_u32_at(r3, j, ejq_pkhtb(o1, o0));
                }
                x = in_w & ~1u;
            }
            for (; x < in_w; ++x, src += channels) {
                const uint32_t v = ejq_load_u32(src);
                const uint32_t even = ejq_sxtab16(offset2, v);
                const uint32_t odd = ejq_sxtab16_ror8(offset2, v);
                r0[x] = (int16_t)even;
                r2[x] = (int16_t)(even >> 16);
                r1[x] = (int16_t)odd;
                r3[x] = (int16_t)(odd >> 16);
            }
        }
        for (ch = b; ch < n; ++ch) {
            int16_t *row = row0 + ch * plane_stride;
            for (x = 0; x < in_w; ++x) {
                row[x] = (int16_t)(src0[x * channels + ch] + p->input_offset);
            }
        }
    }
}

/* Where input row `iy` of one channel's planes sits in the ring. */
EJQ_INLINE const int16_t *ejq_dw_ring_row(const int16_t *plane, int32_t iy, uint32_t kh, uint32_t plane_w)
{
    return plane + (uint32_t)ejq_floor_mod(iy, (int32_t)kh) * plane_w;
}

/* Outputs [ox0, ox1) of one output row of one channel, any kernel shape: sums of tap pairs. */
static void ejq_dw_row_generic(const int16_t *plane, int32_t top, const int16_t *taps, uint32_t kh, uint32_t kw2,
                               uint32_t plane_w, uint32_t stride, uint32_t ox0, uint32_t ox1, int32_t *acc)
{
    uint32_t ox, ky, kx;
    for (ox = ox0; ox < ox1; ++ox) {
        int32_t a = 0;
        for (ky = 0; ky < kh; ++ky) {
            const int16_t *x = ejq_dw_ring_row(plane, top + (int32_t)ky, kh, plane_w) + ox * stride;
            const uint32_t *w = (const uint32_t *)(taps + ky * kw2);
            for (kx = 0; kx < kw2; kx += 2u) {
                a = ejq_smlad(w[kx / 2u], ejq_load_u32(x + kx), a);
            }
        }
        acc[ox] = a;
    }
}

/*
 * Two outputs of one channel's 3x3 row, in assembly: the kernel rows at r0, r0 + r1 + `off` and
 * r0 + r2 + `off` (`off` is "" or ", #-4", as the caller's r1 and r2 are set), the tap words in
 * r4-r9; stores the pair at r3 and steps r0 by 2 inputs and r3 by 2 accumulators.
 */
#define EJQ_DW3_PAIR(off)                    \
    "ldrd r10, r11, [r0], #4\n\t"        \
    "smuad r12, r4, r10\n\t"             \
    "smuad lr, r5, r11\n\t"              \
    "smlabt lr, r4, r10, lr\n\t"         \
    "smlatb r12, r5, r11, r12\n\t"       \
    "add r10, r0, r1\n\t"                \
    "ldrd r10, r11, [r10" off "]\n\t"    \
    "smlad r12, r6, r10, r12\n\t"        \
    "smlad lr, r7, r11, lr\n\t"          \
    "smlabt lr, r6, r10, lr\n\t"         \
    "smlatb r12, r7, r11, r12\n\t"       \
    "add r10, r0, r2\n\t"                \
    "ldrd r10, r11, [r10" off "]\n\t"    \
    "smlad r12, r8, r10, r12\n\t"        \
    "smlad lr, r9, r11, lr\n\t"          \
    "smlabt lr, r8, r10, lr\n\t"         \
    "smlatb r12, r9, r11, r12\n\t"       \
    "strd r12, lr, [r3], #8\n\t"

/*
 * One output row of one channel, 3x3 stride 1, out_w even: two outputs per step, the weights in
 * registers. Per kernel row one LDRD of (x0, x1), (x2, x3) and SMUAD/SMLAD (w0, w1).(x0, x1),
 * (w1, w2).(x2, x3) plus SMLABT w0 x1 and SMLATB w2 x2: 6 MACs in 4 instructions; 21 instructions
 * for 18 MACs with the loop. Assembly: all 14 registers are live (the end of the row is on the stack).
 */
static void ejq_dw_row_3x3_asm(const int16_t *r0, int32_t d1, int32_t d2, const uint32_t w[6], int32_t *acc,
                               uint32_t pairs)
{
    const int32_t *end = acc + 2u * pairs;
    uint32_t frame[2];
    frame[0] = (uint32_t)end;
    frame[1] = (uint32_t)w;
    __asm__ volatile(
        "push {r4-r11}\n\t"
        "mov r0, %[x]\n\t"
        "mov r1, %[d1]\n\t"
        "mov r2, %[d2]\n\t"
        "mov r3, %[acc]\n\t"
        "mov r12, %[frame]\n\t"
        "ldr r4, [r12, #4]\n\t"
        "ldm r4, {r4-r9}\n\t"
        "ldr r12, [r12]\n\t"
        "push {r12, lr}\n\t"
        "1:\n\t"
        EJQ_DW3_PAIR("")
        "ldr r10, [sp]\n\t"
        "cmp r3, r10\n\t"
        "bne 1b\n\t"
        "pop {r12, lr}\n\t"
        "pop {r4-r11}\n\t"
        :
        : [x] "r"(r0), [d1] "r"(d1 - 4), [d2] "r"(d2 - 4), [acc] "r"(acc), [frame] "r"(frame)
        : "r0", "r1", "r2", "r3", "r12", "lr", "cc", "memory");
}

/*
 * The same for n channels (out_w even): channel ch reads rows r0 + ch pstride (+ d1, + d2 bytes) with
 * the tap words w + 6 ch, and its accumulators follow the previous channel's (acc + ch out_w). The
 * loop makes 4 outputs an iteration (entered half-way for an odd number of pairs).
 */
static void ejq_dw_rows_3x3_asm(const int16_t *r0, int32_t d1, int32_t d2, const uint32_t *w, int32_t *acc,
                                uint32_t pairs, uint32_t pstride, uint32_t n)
{
    uint32_t frame[4];
    frame[0] = (uint32_t)w;                 /* the next channel's taps */
    frame[1] = (uint32_t)r0;                /* the next channel's first row */
    frame[2] = 2u * pstride;                /* bytes between channels' rows */
    frame[3] = n;                           /* channels left */
    __asm__ volatile(
        "push {r4-r11}\n\t"
        "mov r1, %[d1]\n\t"
        "mov r2, %[d2]\n\t"
        "mov r3, %[acc]\n\t"
        "mov r12, %[pairs]\n\t"
        "mov r0, %[frame]\n\t"
        "push {r0, r12, lr}\n\t"
        "sub sp, sp, #4\n\t"                /* [sp] end of the channel's accumulators, [sp, #4] frame, [sp, #8] pairs */
        "2:\n\t"
        "ldr r12, [sp, #4]\n\t"
        "ldr r11, [r12]\n\t"
        "ldm r11!, {r4-r9}\n\t"
        "str r11, [r12]\n\t"
        "ldrd r0, r10, [r12, #4]\n\t"       /* this channel's row, the channel stride */
        "add r10, r0, r10\n\t"
        "str r10, [r12, #4]\n\t"
        "ldr r10, [sp, #8]\n\t"
        "tst r10, #1\n\t"
        "add.w r10, r3, r10, lsl #3\n\t"   /* (keeps the flags) */
        "str r10, [sp]\n\t"
        "bne 4f\n\t"                      /* an odd number of pairs: start with the second half */
        "1:\n\t"
        EJQ_DW3_PAIR(", #-4")
        "4:\n\t"
        EJQ_DW3_PAIR(", #-4")
        "ldr r10, [sp]\n\t"
        "cmp r3, r10\n\t"
        "bne 1b\n\t"
        "ldr r12, [sp, #4]\n\t"
        "ldr r10, [r12, #12]\n\t"
        "subs r10, r10, #1\n\t"
        "str r10, [r12, #12]\n\t"
        "bne 2b\n\t"
        "add sp, sp, #4\n\t"
        "pop {r0, r12, lr}\n\t"
        "pop {r4-r11}\n\t"
        :
        : [d1] "r"(d1), [d2] "r"(d2), [acc] "r"(acc), [pairs] "r"(pairs), [frame] "r"(frame)
        : "r0", "r1", "r2", "r3", "r12", "lr", "cc", "memory");
}

/*
 * One output row of one channel, 3x3 stride 1, from kernel rows r0, r0 + d1, r0 + d2 (bytes) and the
 * channel's tap words w = {(w0, w1), (w1, w2)} per kernel row; the accumulators without the bias.
 */
static void ejq_dw_row_3x3(const int16_t *r0, int32_t d1, int32_t d2, const uint32_t *w, uint32_t out_w,
                           int32_t *acc)
{
    if (out_w >= 2u) {
        ejq_dw_row_3x3_asm(r0, d1, d2, w, acc, out_w / 2u);
    }
    if (out_w & 1u) {  /* the last output: (w0, w1).(x0, x1) + w2 x2 per kernel row */
        const uint32_t ox = out_w - 1u;
        const uint8_t *x = (const uint8_t *)(r0 + ox);
        int32_t a = 0;
        uint32_t ky;
        for (ky = 0; ky < 3u; ++ky) {
            const uint8_t *row = x + (ky == 0u ? 0 : (ky == 1u ? d1 : d2));
            const uint32_t lo = ejq_load_u32(row), hi = ejq_load_u32(row + 4);
            a = __smlatb((int32_t)w[2u * ky + 1u], (int32_t)hi, ejq_smlad(w[2u * ky], lo, a));
        }
        acc[ox] = a;
    }
}

/* Clamp two values to [lo, hi] (lo2, hi2: the bounds in both halfwords): int16 pair (SSAT, PKHBT, SSUB16, SEL). */
EJQ_INLINE uint32_t ejq_clamp_pair(int32_t z0, int32_t z1, uint32_t lo2, uint32_t hi2)
{
    uint32_t v, t;
    __asm__("ssat %0, #16, %2\n\t"
            "ssat %1, #16, %3\n\t"
            "pkhbt %0, %0, %1, lsl #16\n\t"
            "ssub16 %1, %0, %4\n\t"
            "sel %0, %0, %4\n\t"
            "ssub16 %1, %0, %5\n\t"
            "sel %0, %5, %0"
            : "=&r"(v), "=&r"(t)
            : "r"(z0), "r"(z1), "r"(lo2), "r"(hi2)
            : "cc");
    return v;
}

/* Requantize one output row of one channel, any clamp and either requantization path (dst: its first output). */
__attribute__((noinline)) static void ejq_dw_store_row(const int32_t *acc, uint32_t out_w, int32_t bias,
                                                       const ejq_rq *q, const ejq_conv_params *p, uint8_t *dst,
                                                       uint32_t channels)
{
    uint32_t ox = 0;
    if (q->shift < 0) {
        for (; ox < out_w; ++ox, dst += channels) {
            *dst = (uint8_t)ejq_requantize_s8(acc[ox] + bias, q->multiplier, q->m2, p->output_offset, p->act_min,
                                              p->act_max);
        }
    } else {
        const int32_t m2 = q->m2, ca = q->ca, e = q->shift;
        const uint32_t lo2 = ((uint32_t)p->act_min & 0xFFFFu) * 0x00010001u;
        const uint32_t hi2 = ((uint32_t)p->act_max & 0xFFFFu) * 0x00010001u;
        for (; ox + 1u < out_w; ox += 2u, dst += 2u * channels) {
            const uint32_t v = ejq_clamp_pair(ejq_rq_fast(acc[ox] + bias, m2, ca, e),
                                              ejq_rq_fast(acc[ox + 1u] + bias, m2, ca, e), lo2, hi2);
            dst[0] = (uint8_t)v;
            dst[channels] = (uint8_t)(v >> 16);
        }
        if (ox < out_w) {
            *dst = (uint8_t)ejq_clamp(ejq_rq_fast(acc[ox] + bias, m2, ca, e), p->act_min, p->act_max);
        }
    }
}

/*
 * Requantize one output row of channels [c0, c0 + n) (acc: out_w accumulators a channel, bias not yet
 * added) into out (channel stride `channels`). The common case (fast path, no clamp but int8's own:
 * SSAT) is here, 4 outputs an iteration; the others in ejq_dw_store_row.
 */
__attribute__((noipa)) static void ejq_dw_store_rows(const int32_t *acc, uint32_t out_w, uint32_t n, uint32_t c0,
                                                     const ejq_weight_run *run, const ejq_rq *table,
                                                     const ejq_conv_params *p, int8_t *out, uint32_t channels)
{
    const int full = p->act_min == -128 && p->act_max == 127;
    const ejq_rq *q = table + c0, *q_end = table + c0 + n;
    const int32_t *bias = run->bias + c0;
    uint8_t *dst0 = (uint8_t *)out;
    for (; q != q_end; ++q, ++bias, ++dst0, acc += out_w) {
        if (!full || q->shift < 0) {
            ejq_dw_store_row(acc, out_w, *bias, q, p, dst0, channels);
        } else {
            const int32_t m2 = q->m2, ca = q->ca, e = q->shift, b = *bias;
            const uint32_t c2 = 2u * channels, c3 = 3u * channels;
            const int32_t *a = acc, *end = acc + (out_w & ~3u), *last = acc + out_w;
            uint8_t *dst = dst0;
            for (; a != end; a += 4, dst += 4u * channels) {
                dst[0] = (uint8_t)__ssat(ejq_rq_fast(a[0] + b, m2, ca, e), 8);
                dst[channels] = (uint8_t)__ssat(ejq_rq_fast(a[1] + b, m2, ca, e), 8);
                dst[c2] = (uint8_t)__ssat(ejq_rq_fast(a[2] + b, m2, ca, e), 8);
                dst[c3] = (uint8_t)__ssat(ejq_rq_fast(a[3] + b, m2, ca, e), 8);
            }
            for (; a != last; ++a, dst += channels) {
                *dst = (uint8_t)__ssat(ejq_rq_fast(*a + b, m2, ca, e), 8);
            }
        }
    }
}

/*
 * One channel's taps as int16 pairs, kernel row by kernel row: (w0, w1), (w2, 0), ... (zero past
 * kernel_w); with `fast` (3x3) the second pair is (w1, w2) instead. Weight j is the `bits`-bit field
 * at bit j * step + field of `row` (plain packing: step = bits, field 0; a channel of a sub-byte group,
 * ejq_dsp.h: step 8, field its position in the byte), XOR flip (offset binary -> two's complement).
 * The bit-width is a run-time argument and the function is never specialized (noipa), so every bit-width
 * takes the same instructions here.
 */
__attribute__((noipa)) static void ejq_dw_taps(const uint8_t *row, uint32_t bits, uint32_t step,
                                                           uint32_t field, uint32_t flip, uint32_t kh, uint32_t kw,
                                                           uint32_t kw2, int fast, int16_t *t)
{
    const uint32_t up = 32u - bits;
    uint32_t ky, kx, j = 0;
    for (ky = 0; ky < kh; ++ky, t += kw2) {
        for (kx = 0; kx < kw2; ++kx) {
            int32_t v = 0;
            if (kx < kw) {
                const uint32_t pos = j * step + field;
                const uint32_t byte = (uint32_t)row[pos >> 3] ^ flip;
                v = (int32_t)((byte >> (pos & 7u)) << up) >> up;
                ++j;
            }
            t[kx] = (int16_t)v;
        }
        if (fast) {  /* (w0, w1), (w2, 0) -> (w0, w1), (w1, w2) */
            t[3] = t[2];
            t[2] = t[1];
        }
    }
}

/*
 * Taps of channel c of a run (ejq_dw_taps): a depthwise run is plain-packed; a convolution's (conv1)
 * channels sit in the groups of codegen/dsp_layout.py (8-bit: groups of one), those past the last
 * group plain. Branch-free on the channel's place in its group, and not specialized by the bit-width.
 */
__attribute__((noipa)) static void ejq_channel_taps(const ejq_weight_run *run, uint32_t c, uint32_t bits,
                                                    uint32_t conv1, uint32_t kh, uint32_t kw, uint32_t kw2, int fast,
                                                    int16_t *t)
{
    const uint32_t group = 8u / bits;
    if (conv1 && c < run->count / group * group) {
        const uint32_t i = c % group;
        const uint32_t field = 8u - bits * (i + 1u);
        const uint32_t flip = ((1u << (bits - 1u)) << field) & (uint32_t)((int32_t)(0u - i) >> 31);
        ejq_dw_taps(run->weights + (c - i) * run->row_bytes, bits, 8u, field, flip, kh, kw, kw2, fast, t);
    } else {
        ejq_dw_taps(run->weights + c * run->row_bytes, bits, bits, 0u, 0u, kh, kw, kw2, fast, t);
    }
}

/*
 * All output rows of the channels [c0, c0 + n) of a run, their taps ready. Not specialized by the
 * bit-width (nor inlined), so every bit-width runs the same instructions here.
 */
__attribute__((noipa)) static void ejq_dw_group(const ejq_conv_params *p, const ejq_weight_run *run,
                                                            const int8_t *in, int8_t *out, const ejq_rq *table,
                                                            const int16_t *taps, int16_t *planes, int32_t *acc,
                                                            int32_t *tags, uint32_t plane_w, uint32_t c0, uint32_t n,
                                                            uint32_t conv1)
{
    const ejq_window_geometry *g = &p->geometry;
    const uint32_t kh = g->kernel_h, kw = g->kernel_w;
    const uint32_t kw2 = (kw + 1u) & ~1u;
    const uint32_t out_w = g->out_w, channels = p->out_c;
    const uint32_t sw = g->stride_w;
    const uint32_t plane_stride = kh * plane_w;
    const uint32_t pstride = conv1 ? 0u : plane_stride;
    const int fast = kh == 3u && kw == 3u && sw == 1u;
    uint32_t i, ch, oy;
    for (i = 0; i < EJQ_DW_CHANNELS * plane_stride; ++i) {
        planes[i] = 0;
    }
    for (i = 0; i < kh; ++i) {
        tags[i] = -0x7FFFFFFF;
    }
    for (oy = 0; oy < g->out_h; ++oy) {
        const int32_t top = (int32_t)(oy * g->stride_h) - (int32_t)g->pad_top;
        int8_t *dst = out + oy * out_w * channels + run->start + c0;
        uint32_t ky;
        for (ky = 0; ky < kh; ++ky) {
            const int32_t iy = top + (int32_t)ky;
            const uint32_t slot = (uint32_t)ejq_floor_mod(iy, (int32_t)kh);
            if (tags[slot] != iy) {
                if (conv1) {
                    ejq_dw_fill_row(p, in, iy, 0u, 1u, planes, plane_stride, slot, plane_w);
                } else {
                    ejq_dw_fill_row(p, in, iy, run->start + c0, n, planes, plane_stride, slot, plane_w);
                }
                tags[slot] = iy;
            }
        }
        if (fast) {
            const uint32_t o0 = (uint32_t)ejq_floor_mod(top, 3) * plane_w;
            const int32_t d1 = 2 * ((int32_t)((uint32_t)ejq_floor_mod(top + 1, 3) * plane_w) - (int32_t)o0);
            const int32_t d2 = 2 * ((int32_t)((uint32_t)ejq_floor_mod(top + 2, 3) * plane_w) - (int32_t)o0);
            if ((out_w & 1u) == 0u) {
                ejq_dw_rows_3x3_asm(planes + o0, d1, d2, (const uint32_t *)taps, acc, out_w / 2u, pstride, n);
            } else {
                for (ch = 0; ch < n; ++ch) {
                    ejq_dw_row_3x3(planes + o0 + ch * pstride, d1, d2, (const uint32_t *)(taps + ch * 12u), out_w,
                                   acc + ch * out_w);
                }
            }
        } else {
            for (ch = 0; ch < n; ++ch) {
                ejq_dw_row_generic(planes + ch * pstride, top, taps + ch * kh * kw2, kh, kw2, plane_w, sw, 0u, out_w,
                                   acc + ch * out_w);
            }
        }
        ejq_dw_store_rows(acc, out_w, n, c0, run, table, p, dst, channels);
    }
}

/* Declared in ejq_dsp_dw.h. */
void ejq_dsp_dw_run(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out,
                    uint32_t bits, uint32_t conv1)
{
    const ejq_window_geometry *g = &p->geometry;
    const uint32_t kh = g->kernel_h, kw = g->kernel_w;
    const uint32_t kw2 = (kw + 1u) & ~1u;
    const uint32_t out_w = g->out_w;
    const uint32_t sw = g->stride_w;
    const uint32_t count = run->count;
    const int fast = kh == 3u && kw == 3u && sw == 1u;  /* ejq_dw_row_3x3 */
    uint32_t padded = g->in_w + g->pad_left;
    uint32_t plane_w, plane_stride, c0;
    uint8_t *scratch = (uint8_t *)p->scratch;
    ejq_rq *table = (ejq_rq *)scratch;
    int16_t *taps;
    int16_t *planes;
    int32_t *acc;
    int32_t *tags;
    if ((out_w - 1u) * sw + kw > padded) {
        padded = (out_w - 1u) * sw + kw;
    }
    plane_w = (padded + 2u) & ~1u;  /* + 1 for the zero tap of an odd kernel width, even for word loads */
    plane_stride = kh * plane_w;
    taps = (int16_t *)(scratch + EJQ_RQ_BYTES(count));
    planes = taps + EJQ_DW_CHANNELS * kh * kw2;
    acc = (int32_t *)(planes + EJQ_DW_CHANNELS * plane_stride);
    tags = acc + EJQ_DW_CHANNELS * out_w;
    if ((uint32_t)((uint8_t *)(tags + kh) - scratch) > p->scratch_bytes) {
        __builtin_trap();
    }
    ejq_requant_table(run, p->output_offset, table);
    for (c0 = 0; c0 < count; c0 += EJQ_DW_CHANNELS) {
        const uint32_t n = count - c0 < EJQ_DW_CHANNELS ? count - c0 : EJQ_DW_CHANNELS;
        uint32_t ch;
        for (ch = 0; ch < n; ++ch) {  /* tap pairs */
            ejq_channel_taps(run, c0 + ch, bits, conv1, kh, kw, kw2, fast, taps + ch * kh * kw2);
        }
        ejq_dw_group(p, run, in, out, table, taps, planes, acc, tags, plane_w, c0, n, conv1);
    }
}

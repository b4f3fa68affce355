/*
 * DSP depthwise convolution (depth multiplier 1) over one weight run, four channels at a time.
 *
 * Depthwise has no reduction over channels, so SMLAD pairs neighbouring taps of one channel
 * instead: the four channels' input rows are converted into int16 planes (x - zero point, with
 * zero padding around them) kept in a ring of kernel_h rows, each input row converted once per
 * four channels. Weights are expanded once per four channels into int16 tap pairs. A 3x3 stride-1
 * kernel then makes two outputs per kernel row with one LDRD and four multiply-accumulates (the
 * weights stay in registers); other shapes take tap pairs with one load each. Accumulators of an
 * output row go through a small buffer and are requantized with the channel's table entry.
 *
 * Scratch of one call (codegen/dsp_layout.py): requantization table (count entries), tap weights
 * (4 x kernel_h x kw2 int16, kw2 = kernel_w rounded up to even), planes (4 x kernel_h x plane_w
 * int16), the accumulators of one output row (out_w words), the input row held by each ring slot
 * (kernel_h words).
 */
#ifndef EJQ_DSP_DW_H
#define EJQ_DSP_DW_H

#include "ejq_dsp.h"
#include "ejq_portable.h"

#define EJQ_DW_CHANNELS 4u

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
        const int8_t *src = in + (uint32_t)iy * in_w * channels + c;
        if (n == EJQ_DW_CHANNELS) {
            const uint32_t offset2 = ((uint32_t)p->input_offset & 0xFFFFu) * 0x00010001u;
            int16_t *r0 = row0, *r1 = row0 + plane_stride, *r2 = row0 + 2u * plane_stride;
            int16_t *r3 = row0 + 3u * plane_stride;
            for (x = 0; x < in_w; ++x, src += channels) {
                const uint32_t v = ejq_load_u32(src);
                const uint32_t even = ejq_sxtab16(offset2, v);
                const uint32_t odd = ejq_sxtab16_ror8(offset2, v);
                r0[x] = (int16_t)even;
                r2[x] = (int16_t)(even >> 16);
                r1[x] = (int16_t)odd;
                r3[x] = (int16_t)(odd >> 16);
            }
        } else {
            for (ch = 0; ch < n; ++ch) {
                int16_t *row = row0 + ch * plane_stride;
                for (x = 0; x < in_w; ++x) {
                    row[x] = (int16_t)(src[x * channels + ch] + p->input_offset);
                }
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

/* One output row of one channel, 3x3 stride 1: two outputs per step, the weights in registers. */
static void ejq_dw_row_3x3(const int16_t *plane, int32_t top, const int16_t *taps, uint32_t plane_w, uint32_t out_w,
                           int32_t *acc)
{
    /* taps of a kernel row: (w0, w1), (w2, 0); the second output needs (w1, w2) too */
    const uint32_t *t = (const uint32_t *)taps;
    const uint32_t a01 = t[0], b01 = t[2], c01 = t[4];
    const uint32_t a12 = (a01 >> 16) | (t[1] << 16), b12 = (b01 >> 16) | (t[3] << 16);
    const uint32_t c12 = (c01 >> 16) | (t[5] << 16);
    const int16_t *r0 = ejq_dw_ring_row(plane, top, 3u, plane_w);
    const int16_t *r1 = ejq_dw_ring_row(plane, top + 1, 3u, plane_w);
    const int16_t *r2 = ejq_dw_ring_row(plane, top + 2, 3u, plane_w);
    uint32_t ox;
    for (ox = 0; ox + 1u < out_w; ox += 2u) {
        const uint32_t *x0 = (const uint32_t *)(r0 + ox);
        const uint32_t *x1 = (const uint32_t *)(r1 + ox);
        const uint32_t *x2 = (const uint32_t *)(r2 + ox);
        uint32_t lo = x0[0], hi = x0[1];
        int32_t s0 = ejq_smlad(a01, lo, 0);
        int32_t s1 = __smlabt((int32_t)a01, (int32_t)lo, ejq_smlad(a12, hi, 0));
        s0 = __smlatb((int32_t)a12, (int32_t)hi, s0);
        lo = x1[0];
        hi = x1[1];
        s0 = ejq_smlad(b01, lo, s0);
        s1 = __smlabt((int32_t)b01, (int32_t)lo, ejq_smlad(b12, hi, s1));
        s0 = __smlatb((int32_t)b12, (int32_t)hi, s0);
        lo = x2[0];
        hi = x2[1];
        s0 = ejq_smlad(c01, lo, s0);
        s1 = __smlabt((int32_t)c01, (int32_t)lo, ejq_smlad(c12, hi, s1));
        s0 = __smlatb((int32_t)c12, (int32_t)hi, s0);
        acc[ox] = s0;
        acc[ox + 1u] = s1;
    }
    if (ox < out_w) {
        ejq_dw_row_generic(plane, top, taps, 3u, 4u, plane_w, 1u, ox, out_w, acc);
    }
}

/* Requantize one output row of one channel into out (channel stride `channels`). */
static void ejq_dw_store_row(const int32_t *acc, uint32_t out_w, int32_t bias, const ejq_rq *q,
                             const ejq_conv_params *p, int8_t *dst, uint32_t channels)
{
    uint32_t ox;
    if (q->shift >= 0) {
        for (ox = 0; ox < out_w; ++ox, dst += channels) {
            *dst = ejq_rq_apply(acc[ox] + bias, q, p->output_offset, p->act_min, p->act_max);
        }
    } else {
        for (ox = 0; ox < out_w; ++ox, dst += channels) {
            *dst = ejq_requantize_s8(acc[ox] + bias, q->multiplier, q->k_lo, p->output_offset, p->act_min,
                                     p->act_max);
        }
    }
}

EJQ_INLINE void ejq_dsp_dw_run(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out,
                               uint32_t bits)
{
    const ejq_window_geometry *g = &p->geometry;
    const uint32_t kh = g->kernel_h, kw = g->kernel_w;
    const uint32_t kw2 = (kw + 1u) & ~1u;
    const uint32_t out_w = g->out_w, channels = p->in_c;
    const uint32_t sw = g->stride_w;
    const uint32_t count = run->count;
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
    tags = acc + out_w;
    if ((uint32_t)((uint8_t *)(tags + kh) - scratch) > p->scratch_bytes) {
        __builtin_trap();
    }
    ejq_requant_table(run, p->output_offset, table);
    for (c0 = 0; c0 < count; c0 += EJQ_DW_CHANNELS) {
        const uint32_t n = count - c0 < EJQ_DW_CHANNELS ? count - c0 : EJQ_DW_CHANNELS;
        uint32_t i, ch, oy;
        for (ch = 0; ch < n; ++ch) {  /* tap pairs, zero past kernel_w */
            const uint8_t *row = run->weights + (c0 + ch) * run->row_bytes;
            int16_t *t = taps + ch * kh * kw2;
            uint32_t ky, kx;
            for (ky = 0; ky < kh; ++ky) {
                for (kx = 0; kx < kw2; ++kx) {
                    t[ky * kw2 + kx] = (int16_t)(kx < kw ? ejq_weight_at(row, ky * kw + kx, bits) : 0);
                }
            }
        }
        for (i = 0; i < EJQ_DW_CHANNELS * plane_stride; ++i) {
            planes[i] = 0;
        }
        for (i = 0; i < kh; ++i) {
            tags[i] = -0x7FFFFFFF;
        }
        for (oy = 0; oy < g->out_h; ++oy) {
            const int32_t top = (int32_t)(oy * g->stride_h) - (int32_t)g->pad_top;
            uint32_t ky;
            for (ky = 0; ky < kh; ++ky) {
                const int32_t iy = top + (int32_t)ky;
                const uint32_t slot = (uint32_t)ejq_floor_mod(iy, (int32_t)kh);
                if (tags[slot] != iy) {
                    ejq_dw_fill_row(p, in, iy, run->start + c0, n, planes, plane_stride, slot, plane_w);
                    tags[slot] = iy;
                }
            }
            for (ch = 0; ch < n; ++ch) {
                const uint32_t c = c0 + ch;
                const int16_t *plane = planes + ch * plane_stride;
                const int16_t *t = taps + ch * kh * kw2;
                if (kh == 3u && kw == 3u && sw == 1u) {
                    ejq_dw_row_3x3(plane, top, t, plane_w, out_w, acc);
                } else {
                    ejq_dw_row_generic(plane, top, t, kh, kw2, plane_w, sw, 0u, out_w, acc);
                }
                ejq_dw_store_row(acc, out_w, run->bias[c], &table[c], p,
                                 out + oy * out_w * channels + run->start + c, channels);
            }
        }
    }
}

#endif /* EJQ_DSP_DW_H */

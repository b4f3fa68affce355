/*
 * DSP convolution (not depthwise; 1x1 included) over one weight run, two output pixels at a time.
 * A convolution with one input channel (a first layer) runs on the depthwise machinery instead
 * (ejq_dsp_dw.h: every output channel slides its kernel over the one input plane), with that
 * kernel's scratch layout.
 *
 * For each pair of output pixels the two input windows are converted into int16 columns (the
 * interleaved layout of ejq_dsp.h); then every group of output channels runs an inner product over
 * both columns at once: two 8-bit channels (16 MACs per 16 instructions: 2 LDR, 2 LDRD, 4 SXTB16,
 * 8 SMLAD), a 4-bit pair (15 instructions) or a 2-bit quad (32 MACs per 28 instructions, hand
 * scheduled in ejq_conv2d_w2.c because it needs 14 registers).
 *
 * Scratch of one call (p->scratch, p->scratch_bytes; codegen/dsp_layout.py computes the size):
 *   requantization table  count entries
 *   columns               K4 / 4 blocks of 4 words (K4 = K rounded up to 4)
 *   column sums           2 words (sum of each column's int16 values, for sub-byte groups)
 *   gather                2 x K4 bytes, only when in_c is not a multiple of 4
 */
#ifndef EJQ_DSP_CONV_H
#define EJQ_DSP_CONV_H

#include "ejq_dsp.h"
#include "ejq_dsp_dw.h"
#include "ejq_portable.h"

EJQ_INLINE uint32_t ejq_k4(uint32_t k)
{
    return (k + 3u) & ~3u;
}

/* Convert 4 int8 inputs (one word) into column `col` of block `block`, adding the offset. */
EJQ_INLINE void ejq_put_block(uint32_t *block, uint32_t col, uint32_t word, uint32_t offset2)
{
    block[col] = ejq_sxtab16(offset2, word);
    block[2u + col] = ejq_sxtab16_ror8(offset2, word);
}

/*
 * Write column `col` (0 or 1) of the columns buffer from the window of output pixel (oy, ox):
 * K values (x - zero point) in the weight rows' order [ky][kx][cin], 0 for padding and past K.
 */
static void ejq_im2col(const ejq_conv_params *p, const int8_t *in, int32_t oy, int32_t ox, uint32_t col,
                       uint32_t *columns, int8_t *gather)
{
    const ejq_window_geometry *g = &p->geometry;
    const ejq_window w = ejq_window_at(g, oy, ox);
    const uint32_t in_c = p->in_c;
    const uint32_t row_k = (uint32_t)g->kernel_w * in_c;
    const uint32_t k = (uint32_t)g->kernel_h * row_k;
    const uint32_t k4 = ejq_k4(k);
    const uint32_t offset2 = ((uint32_t)p->input_offset & 0xFFFFu) * 0x00010001u;
    int32_t ky;
    if (in_c % 4u == 0u) {
        /* every kernel row, and its in-bounds span, is a whole number of 4-input blocks */
        uint32_t *block = columns;
        for (ky = 0; ky < (int32_t)g->kernel_h; ++ky) {
            const uint32_t lo = (uint32_t)w.kx_lo * in_c / 4u;
            uint32_t hi = (uint32_t)w.kx_hi * in_c / 4u;
            const uint32_t end = row_k / 4u;
            uint32_t b = 0;
            if (ky < w.ky_lo || ky >= w.ky_hi) {
                hi = 0u;
            }
            for (; b < lo && b < end; ++b, block += 4) {
                block[col] = 0u;
                block[2u + col] = 0u;
            }
            if (b < hi) {
                const int8_t *src = in + (((w.y0 + ky) * (int32_t)g->in_w + w.x0 + w.kx_lo) * (int32_t)in_c);
                for (; b < hi; ++b, block += 4, src += 4) {
                    ejq_put_block(block, col, ejq_load_u32(src), offset2);
                }
            }
            for (; b < end; ++b, block += 4) {
                block[col] = 0u;
                block[2u + col] = 0u;
            }
        }
    } else {
        /* gather the window as int8 (padding = the zero point), then convert whole blocks */
        int8_t *dst = gather + col * k4;
        const int8_t zero_point = (int8_t)(-p->input_offset);
        uint32_t i;
        for (i = 0; i < k4; ++i) {
            dst[i] = zero_point;
        }
        for (ky = w.ky_lo; ky < w.ky_hi; ++ky) {
            const int8_t *src = in + (((w.y0 + ky) * (int32_t)g->in_w + w.x0 + w.kx_lo) * (int32_t)in_c);
            int8_t *row = dst + (uint32_t)ky * row_k + (uint32_t)w.kx_lo * in_c;
            const uint32_t span = (uint32_t)(w.kx_hi - w.kx_lo) * in_c;
            for (i = 0; i < span; ++i) {
                row[i] = src[i];
            }
        }
        for (i = 0; i < k4 / 4u; ++i) {
            ejq_put_block(columns + 4u * i, col, ejq_load_u32(dst + 4u * i), offset2);
        }
    }
}

/* Sum of each column's int16 values (for the offset-binary parts of sub-byte groups). */
EJQ_INLINE void ejq_column_sums(const uint32_t *columns, uint32_t blocks, int32_t sums[2])
{
    const uint32_t ones = 0x00010001u;
    int32_t s0 = 0, s1 = 0;
    uint32_t b;
    for (b = 0; b < blocks; ++b, columns += 4) {
        s0 = ejq_smlad(columns[0], ones, ejq_smlad(columns[2], ones, s0));
        s1 = ejq_smlad(columns[1], ones, ejq_smlad(columns[3], ones, s1));
    }
    sums[0] = s0;
    sums[1] = s1;
}

/* Two 8-bit rows (a, b) against both columns: acc = {a col0, a col1, b col0, b col1}. */
EJQ_INLINE void ejq_mm_w8(const uint8_t *a, const uint8_t *b, const uint32_t *x, uint32_t blocks, int32_t acc[4])
{
    int32_t a0 = acc[0], a1 = acc[1], b0 = acc[2], b1 = acc[3];
    const uint32_t *end = x + 4u * blocks;
    do {
        const uint32_t wa = ejq_load_u32_inc(&a);
        const uint32_t wb = ejq_load_u32_inc(&b);
        uint32_t x0 = x[0], x1 = x[1];
        uint32_t ea = ejq_sxtb16(wa), eb = ejq_sxtb16(wb);
        a0 = ejq_smlad(ea, x0, a0);
        a1 = ejq_smlad(ea, x1, a1);
        b0 = ejq_smlad(eb, x0, b0);
        b1 = ejq_smlad(eb, x1, b1);
        x0 = x[2];
        x1 = x[3];
        ea = ejq_sxtb16_ror8(wa);
        eb = ejq_sxtb16_ror8(wb);
        a0 = ejq_smlad(ea, x0, a0);
        a1 = ejq_smlad(ea, x1, a1);
        b0 = ejq_smlad(eb, x0, b0);
        b1 = ejq_smlad(eb, x1, b1);
        x += 4;
    } while (x != end);
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = b0;
    acc[3] = b1;
}

/* A 4-bit pair group against both columns: acc = {S col0, S col1, U col0, U col1}. */
EJQ_INLINE void ejq_mm_w4(const uint8_t *w, const uint32_t *x, uint32_t blocks, int32_t acc[4])
{
    int32_t s0 = 0, s1 = 0, u0 = 0, u1 = 0;
    const uint32_t *end = x + 4u * blocks;
    uint32_t mask = 0x000F000Fu;
    __asm__("" : "+r"(mask));  /* keep the mask in a register: AND with a shifted operand needs it */
    do {
        const uint32_t word = ejq_load_u32_inc(&w);
        uint32_t x0 = x[0], x1 = x[1];
        uint32_t e = ejq_sxtb16(word);
        s0 = ejq_smlad(e, x0, s0);
        s1 = ejq_smlad(e, x1, s1);
        e = word & mask;
        u0 = ejq_smlad(e, x0, u0);
        u1 = ejq_smlad(e, x1, u1);
        x0 = x[2];
        x1 = x[3];
        e = ejq_sxtb16_ror8(word);
        s0 = ejq_smlad(e, x0, s0);
        s1 = ejq_smlad(e, x1, s1);
        e = (word >> 8) & mask;
        u0 = ejq_smlad(e, x0, u0);
        u1 = ejq_smlad(e, x1, u1);
        x += 4;
    } while (x != end);
    acc[0] = s0;
    acc[1] = s1;
    acc[2] = u0;
    acc[3] = u1;
}

/* A 2-bit quad group against both columns (ejq_conv2d_w2.c): acc = {S, T2, T4, T6} x {col0, col1}. */
void ejq_mm_w2_quad(const uint8_t *w, const uint32_t *x, uint32_t blocks, int32_t acc[8]);

/* The int16 pair (lo, hi) in one word (PKHBT). */
EJQ_INLINE uint32_t ejq_pack16(int32_t lo, int32_t hi)
{
    return ((uint32_t)lo & 0xFFFFu) | ((uint32_t)hi << 16);
}

/*
 * A plain-packed 4- or 2-bit row (channels left over from the groups) against column `col` of
 * `cols`. Each block of 4 whole weights (2 bytes at 4 bits, 1 byte at 2 bits, little end first)
 * is sign-extended by field (SBFX) into the pairs (w0, w2) and (w1, w3) that match the columns'
 * (x0, x2) and (x1, x3) words: two SMLADs per block; a last partial block goes weight by weight.
 */
EJQ_INLINE int32_t ejq_dot_plain(const uint8_t *row, uint32_t bits, uint32_t k, const uint32_t *columns,
                                 uint32_t cols, uint32_t col)
{
    const uint32_t full = k / 4u;
    const uint32_t *x = columns + col;
    const int16_t *x16 = (const int16_t *)columns;
    int32_t acc = 0;
    uint32_t b, i;
    for (b = 0; b < full; ++b, x += 2u * cols) {
        int32_t w0, w1, w2, w3;
        if (bits == 4u) {
            const uint32_t v = (uint32_t)row[2u * b] | ((uint32_t)row[2u * b + 1u] << 8);
            w0 = (int32_t)(v << 28) >> 28;
            w1 = (int32_t)(v << 24) >> 28;
            w2 = (int32_t)(v << 20) >> 28;
            w3 = (int32_t)(v << 16) >> 28;
        } else {
            const uint32_t v = row[b];
            w0 = (int32_t)(v << 30) >> 30;
            w1 = (int32_t)(v << 28) >> 30;
            w2 = (int32_t)(v << 26) >> 30;
            w3 = (int32_t)(v << 24) >> 30;
        }
        acc = ejq_smlad(ejq_pack16(w0, w2), x[0], acc);
        acc = ejq_smlad(ejq_pack16(w1, w3), x[cols], acc);
    }
    for (i = 4u * full; i < k; ++i) {
        const uint32_t j = i & 3u;
        const uint32_t word = (i >> 2) * 2u * cols + (j & 1u) * cols + col;
        acc += ejq_weight_at(row, i, bits) * (int32_t)x16[2u * word + (j >> 1)];
    }
    return acc;
}

EJQ_INLINE void ejq_store2(int8_t *dst0, int8_t *dst1, uint32_t c, const int32_t acc[2], const ejq_rq *q,
                           const ejq_conv_params *p)
{
    dst0[c] = ejq_rq_apply(acc[0], q, p->output_offset, p->act_min, p->act_max);
    dst1[c] = ejq_rq_apply(acc[1], q, p->output_offset, p->act_min, p->act_max);
}

EJQ_INLINE void ejq_dsp_conv_im2col_run(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in,
                                        int8_t *out, uint32_t bits)
{
    const ejq_window_geometry *g = &p->geometry;
    const uint32_t k = (uint32_t)g->kernel_h * g->kernel_w * p->in_c;
    const uint32_t k4 = ejq_k4(k);
    const uint32_t blocks = k4 / 4u;
    const uint32_t count = run->count;
    const uint32_t group = bits == 2u ? 4u : (bits == 4u ? 2u : 1u);
    const uint32_t grouped = count / group * group;
    const uint32_t pixels = (uint32_t)g->out_h * g->out_w;
    uint8_t *scratch = (uint8_t *)p->scratch;
    ejq_rq *table = (ejq_rq *)scratch;
    uint32_t *columns = (uint32_t *)(scratch + EJQ_RQ_BYTES(count));
    int32_t *sums = (int32_t *)(columns + k4);
    int8_t *gather = (int8_t *)(sums + 2);
    uint32_t pixel;
    if (EJQ_RQ_BYTES(count) + 4u * k4 + 8u + (p->in_c % 4u ? 2u * k4 : 0u) > p->scratch_bytes) {
        __builtin_trap();  /* the generator sized the scratch buffer for another layout */
    }
    ejq_requant_table(run, p->output_offset, table);
    for (pixel = 0; pixel < pixels; pixel += 2u) {
        const uint32_t pixel1 = pixel + 1u < pixels ? pixel + 1u : pixel;
        int8_t *dst0 = out + pixel * p->out_c + run->start;
        int8_t *dst1 = out + pixel1 * p->out_c + run->start;
        uint32_t c;
        ejq_im2col(p, in, (int32_t)(pixel / g->out_w), (int32_t)(pixel % g->out_w), 0u, columns, gather);
        ejq_im2col(p, in, (int32_t)(pixel1 / g->out_w), (int32_t)(pixel1 % g->out_w), 1u, columns, gather);
        if (bits == 8u) {
            for (c = 0; c < count; c += 2u) {
                const uint32_t c1 = c + 1u < count ? c + 1u : c;
                const uint8_t *row = run->weights + c * run->row_bytes;
                int32_t acc[4];
                acc[0] = acc[1] = run->bias[c];
                acc[2] = acc[3] = run->bias[c1];
                ejq_mm_w8(row, row + (c1 - c) * run->row_bytes, columns, blocks, acc);
                ejq_store2(dst0, dst1, c, acc, &table[c], p);
                ejq_store2(dst0, dst1, c1, acc + 2, &table[c1], p);
            }
            continue;
        }
        ejq_column_sums(columns, blocks, sums);
        for (c = 0; c < grouped; c += group) {
            const uint8_t *w = run->weights + c * run->row_bytes;
            int32_t acc[8];
            int32_t ch[8];
            uint32_t i;
            if (bits == 4u) {
                ejq_mm_w4(w, columns, blocks, acc);
                for (i = 0; i < 2u; ++i) {
                    ch[i] = (acc[i] - acc[2u + i]) >> 4;                 /* A */
                    ch[2u + i] = acc[2u + i] - 8 * sums[i];              /* B */
                }
            } else {
                for (i = 0; i < 8u; ++i) {
                    acc[i] = 0;
                }
                ejq_mm_w2_quad(w, columns, blocks, acc);
                for (i = 0; i < 2u; ++i) {
                    const int32_t s = acc[i], t2 = acc[2u + i], t4 = acc[4u + i], t6 = acc[6u + i];
                    ch[i] = (s - t6) >> 6;                                /* A */
                    ch[2u + i] = ((t6 - t4) >> 4) - 2 * sums[i];          /* B */
                    ch[4u + i] = ((t4 - t2) >> 2) - 2 * sums[i];          /* C */
                    ch[6u + i] = t2 - 2 * sums[i];                        /* D */
                }
            }
            for (i = 0; i < group; ++i) {
                int32_t pair[2];
                pair[0] = ch[2u * i] + run->bias[c + i];
                pair[1] = ch[2u * i + 1u] + run->bias[c + i];
                ejq_store2(dst0, dst1, c + i, pair, &table[c + i], p);
            }
        }
        for (c = grouped; c < count; ++c) {
            const uint8_t *row = run->weights + c * run->row_bytes;
            int32_t pair[2];
            pair[0] = run->bias[c] + ejq_dot_plain(row, bits, k, columns, 2u, 0u);
            pair[1] = run->bias[c] + ejq_dot_plain(row, bits, k, columns, 2u, 1u);
            ejq_store2(dst0, dst1, c, pair, &table[c], p);
        }
    }
}

/* One input channel: the depthwise machinery (ejq_dsp_dw.h), every output channel on the one plane. */
EJQ_INLINE void ejq_dsp_conv_run(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out,
                                 uint32_t bits)
{
    if (p->in_c == 1u) {
        ejq_dsp_dw_run(p, run, in, out, bits, 1u);
    } else {
        ejq_dsp_conv_im2col_run(p, run, in, out, bits);
    }
}

#endif /* EJQ_DSP_CONV_H */

/*
 * DSP convolution (not depthwise; 1x1 included) over one weight run, two output pixels at a time.
 * A convolution with one input channel (a first layer) runs on the depthwise machinery instead
 * (ejq_dsp_dw.h: every output channel slides its kernel over the one input plane), with that
 * kernel's scratch layout.
 *
 * For each pair of output pixels the two input windows are converted into int16 columns (the
 * interleaved layout of ejq_dsp.h): when in_c is a multiple of 4 and neither window touches the
 * padding, both in one pass (ejq_im2col_pair, which also sums the columns for sub-byte runs), else
 * one by one. Then every group of output channels runs an inner product over both columns at once:
 * two 8-bit channels (16 MACs per 16 instructions: 2 LDR, 2 LDRD, 4 SXTB16, 8 SMLAD; four blocks of
 * 4 inputs an iteration), a 4-bit pair (15 instructions; eight blocks an iteration) or a 2-bit quad
 * (32 MACs per 28 instructions, hand scheduled in ejq_conv2d_w2.c because it needs 14 registers).
 * Each channel's two accumulators are requantized together (ejq_rq_store_pair); calls whose clamp is
 * int8's own run a copy of the channel loop that clamps with one SSAT.
 *
 * Cost (instructions, Cortex-M4, GCC 12 -O2): per output pixel pair and channel pair (8-bit) about
 * 17 per block of 4 inputs plus ~80 (loop entry, spills, 4 requantizations); per pixel pair the
 * column build, ~7 per block (14 per 2 pixels, 19 with the sums of sub-byte runs) plus ~60 for the
 * window geometry, ~2x that at the padding (column by column).
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
 * Defined in ejq_dsp_im2col.c, one copy for the convolutions of every bit-width.
 */
void ejq_im2col(const ejq_conv_params *p, const int8_t *in, int32_t oy, int32_t ox, uint32_t col, uint32_t *columns,
                int8_t *gather);

/*
 * Both columns of the pixel pair (oy0, ox0), (oy1, ox1). When in_c is a multiple of 4 and neither
 * window touches the padding (most pixels), every kernel row of both windows is a contiguous span of
 * whole 4-input blocks at a fixed distance from each other: one pass converts both, a whole block
 * (4 words, stored by the compiler with STRD/STM at word-aligned addresses: the columns buffer is
 * word-aligned and blocks are 16 bytes) per iteration, and with `sums` (not NULL) also sums each
 * column into sums[0], sums[1]; returns 1. Otherwise each column is built alone and 0 returned
 * (sums not written).
 */
static int ejq_im2col_pair(const ejq_conv_params *p, const int8_t *in, int32_t oy0, int32_t ox0, int32_t oy1,
                           int32_t ox1, uint32_t *columns, int8_t *gather, int32_t *sums)
{
    const ejq_window_geometry *g = &p->geometry;
    const uint32_t in_c = p->in_c;
    if (in_c % 4u == 0u) {
        const ejq_window w0 = ejq_window_at(g, oy0, ox0);
        const ejq_window w1 = ejq_window_at(g, oy1, ox1);
        const int32_t kh = (int32_t)g->kernel_h, kw = (int32_t)g->kernel_w;
        if (w0.ky_lo == 0 && w0.kx_lo == 0 && w0.ky_hi == kh && w0.kx_hi == kw && w1.ky_lo == 0 && w1.kx_lo == 0 &&
            w1.ky_hi == kh && w1.kx_hi == kw) {
            const uint32_t offset2 = ((uint32_t)p->input_offset & 0xFFFFu) * 0x00010001u;
            const uint32_t row_blocks = (uint32_t)kw * in_c / 4u;
            const uint32_t line = (uint32_t)g->in_w * in_c;
            const int8_t *src = in + ((uint32_t)w0.y0 * g->in_w + (uint32_t)w0.x0) * in_c;
            const uint32_t distance = ((uint32_t)(w1.y0 - w0.y0) * g->in_w + (uint32_t)(w1.x0 - w0.x0)) * in_c;
            uint32_t *block = columns;
            int32_t ky;
            if (sums == 0) {
                for (ky = 0; ky < kh; ++ky, src += line) {
                    const int8_t *s = src;
                    uint32_t *const end = block + 4u * row_blocks;
                    for (; block != end; block += 4, s += 4) {
                        const uint32_t v0 = ejq_load_u32(s), v1 = ejq_load_u32_at(s, distance);
                        block[0] = ejq_sxtab16(offset2, v0);
                        block[1] = ejq_sxtab16(offset2, v1);
                        block[2] = ejq_sxtab16_ror8(offset2, v0);
                        block[3] = ejq_sxtab16_ror8(offset2, v1);
                    }
                }
            } else {  /* and each column's sum (for sub-byte groups), 4 SMLADs a block */
                const uint32_t ones = 0x00010001u;
                int32_t s0 = 0, s1 = 0;
                for (ky = 0; ky < kh; ++ky, src += line) {
                    const int8_t *s = src;
                    uint32_t *const end = block + 4u * row_blocks;
                    for (; block != end; block += 4, s += 4) {
                        const uint32_t v0 = ejq_load_u32(s), v1 = ejq_load_u32_at(s, distance);
                        const uint32_t e0 = ejq_sxtab16(offset2, v0), e1 = ejq_sxtab16(offset2, v1);
                        const uint32_t o0 = ejq_sxtab16_ror8(offset2, v0), o1 = ejq_sxtab16_ror8(offset2, v1);
                        block[0] = e0;
                        block[1] = e1;
                        block[2] = o0;
                        block[3] = o1;
                        s0 = ejq_smlad(e0, ones, ejq_smlad(o0, ones, s0));
                        s1 = ejq_smlad(e1, ones, ejq_smlad(o1, ones, s1));
                    }
                }
                sums[0] = s0;
                sums[1] = s1;
            }
            return 1;
        }
    }
    ejq_im2col(p, in, oy0, ox0, 0u, columns, gather);
    ejq_im2col(p, in, oy1, ox1, 1u, columns, gather);
    return 0;
}

/* Sum of each column's int16 values (for the offset-binary parts of sub-byte groups); two blocks an
   iteration, LDRDs word-aligned as in ejq_mm_w8. */
EJQ_INLINE void ejq_column_sums(const uint32_t *columns, uint32_t blocks, int32_t sums[2])
{
    const uint32_t ones = 0x00010001u;
    const uint32_t *end = columns + 4u * (blocks & ~1u);
    int32_t s0 = 0, s1 = 0;
    while (columns != end) {
        s0 = ejq_smlad(columns[0], ones, ejq_smlad(columns[2], ones, s0));
        s1 = ejq_smlad(columns[1], ones, ejq_smlad(columns[3], ones, s1));
        s0 = ejq_smlad(columns[4], ones, ejq_smlad(columns[6], ones, s0));
        s1 = ejq_smlad(columns[5], ones, ejq_smlad(columns[7], ones, s1));
        columns += 8;
    }
    if (blocks & 1u) {
        s0 = ejq_smlad(columns[0], ones, ejq_smlad(columns[2], ones, s0));
        s1 = ejq_smlad(columns[1], ones, ejq_smlad(columns[3], ones, s1));
    }
    sums[0] = s0;
    sums[1] = s1;
}

/* One block (4 inputs) of two 8-bit rows against both columns: 2 LDR, 2 LDRD, 4 SXTB16, 8 SMLAD. */
#define EJQ_MM_W8_BLOCK(x, off)                                         \
    do {                                                                \
        const uint32_t wa_ = ejq_load_u32_inc(&a);                      \
        const uint32_t wb_ = ejq_load_u32_inc(&b);                      \
        uint32_t x0_ = (x)[(off)], x1_ = (x)[(off) + 1];                 \
        uint32_t ea_ = ejq_sxtb16(wa_), eb_ = ejq_sxtb16(wb_);          \
        a0 = ejq_smlad(ea_, x0_, a0);                                   \
        a1 = ejq_smlad(ea_, x1_, a1);                                   \
        b0 = ejq_smlad(eb_, x0_, b0);                                   \
        b1 = ejq_smlad(eb_, x1_, b1);                                   \
        x0_ = (x)[(off) + 2];                                           \
        x1_ = (x)[(off) + 3];                                           \
        ea_ = ejq_sxtb16_ror8(wa_);                                     \
        eb_ = ejq_sxtb16_ror8(wb_);                                     \
        a0 = ejq_smlad(ea_, x0_, a0);                                   \
        a1 = ejq_smlad(ea_, x1_, a1);                                   \
        b0 = ejq_smlad(eb_, x0_, b0);                                   \
        b1 = ejq_smlad(eb_, x1_, b1);                                   \
    } while (0)

/*
 * Two 8-bit rows (a, b) against both columns: acc = {a col0, a col1, b col0, b col1}. Four blocks
 * an iteration (64 MACs in 64 instructions plus 3 for the loop), then 2 and 1 left-over blocks.
 * The columns' words are read in pairs (LDRD): the columns buffer is word-aligned (the scratch is,
 * and the requantization table before it is a whole number of 16-byte entries) and every pair sits
 * at an even word index of it, so each LDRD is on a word-aligned address. The weight rows are read
 * a word at a time with LDR, which allows any alignment.
 */
EJQ_INLINE void ejq_mm_w8(const uint8_t *a, const uint8_t *b, const uint32_t *x, uint32_t blocks, int32_t acc[4])
{
    int32_t a0 = acc[0], a1 = acc[1], b0 = acc[2], b1 = acc[3];
    const uint32_t *end = x + 4u * (blocks & ~3u);
    while (x != end) {
        EJQ_MM_W8_BLOCK(x, 0);
        EJQ_MM_W8_BLOCK(x, 4);
        EJQ_MM_W8_BLOCK(x, 8);
        EJQ_MM_W8_BLOCK(x, 12);
        x += 16;
    }
    if (blocks & 2u) {
        EJQ_MM_W8_BLOCK(x, 0);
        EJQ_MM_W8_BLOCK(x, 4);
        x += 8;
    }
    if (blocks & 1u) {
        EJQ_MM_W8_BLOCK(x, 0);
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = b0;
    acc[3] = b1;
}

/* One block of a 4-bit pair group against both columns: 1 LDR, 2 LDRD, 2 SXTB16, 2 AND, 8 SMLAD. */
#define EJQ_MM_W4_BLOCK(x, off)                                         \
    do {                                                                \
        const uint32_t word_ = ejq_load_u32_inc(&w);                    \
        uint32_t x0_ = (x)[(off)], x1_ = (x)[(off) + 1];                 \
        uint32_t e_ = ejq_sxtb16(word_);                                \
        s0 = ejq_smlad(e_, x0_, s0);                                    \
        s1 = ejq_smlad(e_, x1_, s1);                                    \
        e_ = word_ & mask;                                              \
        u0 = ejq_smlad(e_, x0_, u0);                                    \
        u1 = ejq_smlad(e_, x1_, u1);                                    \
        x0_ = (x)[(off) + 2];                                           \
        x1_ = (x)[(off) + 3];                                           \
        e_ = ejq_sxtb16_ror8(word_);                                    \
        s0 = ejq_smlad(e_, x0_, s0);                                    \
        s1 = ejq_smlad(e_, x1_, s1);                                    \
        e_ = (word_ >> 8) & mask;                                       \
        u0 = ejq_smlad(e_, x0_, u0);                                    \
        u1 = ejq_smlad(e_, x1_, u1);                                    \
    } while (0)

/*
 * A 4-bit pair group against both columns: acc = {S col0, S col1, U col0, U col1}. Eight blocks an
 * iteration (the 4-bit kernels must not cost more per MAC than the 8-bit ones, which save the
 * column sums), then 4, 2 and 1 left-over blocks; LDRDs word-aligned as in ejq_mm_w8.
 */
EJQ_INLINE void ejq_mm_w4(const uint8_t *w, const uint32_t *x, uint32_t blocks, int32_t acc[4])
{
    int32_t s0 = 0, s1 = 0, u0 = 0, u1 = 0;
    const uint32_t *end = x + 4u * (blocks & ~7u);
    uint32_t mask = 0x000F000Fu;
    __asm__("" : "+r"(mask));  /* keep the mask in a register: AND with a shifted operand needs it */
    while (x != end) {
        EJQ_MM_W4_BLOCK(x, 0);
        EJQ_MM_W4_BLOCK(x, 4);
        EJQ_MM_W4_BLOCK(x, 8);
        EJQ_MM_W4_BLOCK(x, 12);
        EJQ_MM_W4_BLOCK(x, 16);
        EJQ_MM_W4_BLOCK(x, 20);
        EJQ_MM_W4_BLOCK(x, 24);
        EJQ_MM_W4_BLOCK(x, 28);
        x += 32;
    }
    if (blocks & 4u) {
        EJQ_MM_W4_BLOCK(x, 0);
        EJQ_MM_W4_BLOCK(x, 4);
        EJQ_MM_W4_BLOCK(x, 8);
        EJQ_MM_W4_BLOCK(x, 12);
        x += 16;
    }
    if (blocks & 2u) {
        EJQ_MM_W4_BLOCK(x, 0);
        EJQ_MM_W4_BLOCK(x, 4);
        x += 8;
    }
    if (blocks & 1u) {
        EJQ_MM_W4_BLOCK(x, 0);
    }
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

/* The output side of a call, held in locals: the int8 stores may alias *p, so reading p->... after a
   store would reload it every time. */
typedef struct {
    int32_t offset, act_min, act_max;
} ejq_out_q;

/*
 * One channel's accumulators x0, x1 (bias included) of the two pixels, requantized into *d0, *d1:
 * the table entry read once for both; with `full` (the clamp is int8's own, [-128, 127]) the clamp
 * is one SSAT.
 */
EJQ_INLINE void ejq_rq_store_pair(int8_t *d0, int8_t *d1, int32_t x0, int32_t x1, const ejq_rq *q, ejq_out_q o,
                                  int full)
{
    const int32_t e = q->shift;
    if (__builtin_expect(e >= 0, 1)) {
        const int32_t m2 = q->m2, ca = q->ca;
        const int32_t z0 = ejq_rq_fast(x0, m2, ca, e), z1 = ejq_rq_fast(x1, m2, ca, e);
        if (full) {
            *d0 = (int8_t)__ssat(z0, 8);
            *d1 = (int8_t)__ssat(z1, 8);
        } else {
            *d0 = (int8_t)ejq_clamp(z0, o.act_min, o.act_max);
            *d1 = (int8_t)ejq_clamp(z1, o.act_min, o.act_max);
        }
        return;
    }
    *d0 = ejq_rq_general(x0, q, o.offset, o.act_min, o.act_max);
    *d1 = ejq_rq_general(x1, q, o.offset, o.act_min, o.act_max);
}

/*
 * The 8-bit channels of a run against the two columns of a pixel pair: two channels a pass (an odd
 * last channel pairs with itself), `full` a constant so that the two clamps compile apart.
 */
EJQ_INLINE void ejq_conv_w8_pixel_pair(const ejq_weight_run *run, const ejq_rq *table, const uint32_t *columns,
                                       uint32_t blocks, int8_t *dst0, int8_t *dst1, ejq_out_q o, int full)
{
    const uint8_t *row = run->weights;
    const int32_t *bias = run->bias;
    const uint32_t row_bytes = run->row_bytes;
    const uint32_t count = run->count;
    uint32_t c;
    for (c = 0; c + 1u < count; c += 2u, row += 2u * row_bytes) {
        int32_t acc[4];
        acc[0] = acc[1] = bias[c];
        acc[2] = acc[3] = bias[c + 1u];
        ejq_mm_w8(row, row + row_bytes, columns, blocks, acc);
        ejq_rq_store_pair(dst0 + c, dst1 + c, acc[0], acc[1], &table[c], o, full);
        ejq_rq_store_pair(dst0 + c + 1u, dst1 + c + 1u, acc[2], acc[3], &table[c + 1u], o, full);
    }
    if (c < count) {
        int32_t acc[4];
        acc[0] = acc[1] = acc[2] = acc[3] = bias[c];
        ejq_mm_w8(row, row, columns, blocks, acc);
        ejq_rq_store_pair(dst0 + c, dst1 + c, acc[0], acc[1], &table[c], o, full);
    }
}

static __attribute__((noinline, unused)) void ejq_conv_w8_pixel_pair_full(const ejq_weight_run *run, const ejq_rq *table,
                                                                  const uint32_t *columns, uint32_t blocks,
                                                                  int8_t *dst0, int8_t *dst1, ejq_out_q o)
{
    ejq_conv_w8_pixel_pair(run, table, columns, blocks, dst0, dst1, o, 1);
}

static __attribute__((noinline, unused)) void ejq_conv_w8_pixel_pair_clamp(const ejq_weight_run *run, const ejq_rq *table,
                                                                   const uint32_t *columns, uint32_t blocks,
                                                                   int8_t *dst0, int8_t *dst1, ejq_out_q o)
{
    ejq_conv_w8_pixel_pair(run, table, columns, blocks, dst0, dst1, o, 0);
}

/*
 * The sub-byte channels of a run against the two columns of a pixel pair (`sums`: the columns'
 * sums): 4-bit pairs or 2-bit quads, then the channels left over from the groups (plain packing).
 */
EJQ_INLINE void ejq_conv_sub_pixel_pair(const ejq_weight_run *run, const ejq_rq *table, const uint32_t *columns,
                                        uint32_t blocks, uint32_t k, const int32_t sums[2], int8_t *dst0,
                                        int8_t *dst1, ejq_out_q o, uint32_t bits, int full)
{
    const uint32_t count = run->count;
    const uint32_t group = bits == 2u ? 4u : 2u;
    const uint32_t row_bytes = run->row_bytes;
    const int32_t *bias = run->bias;
    const uint8_t *w = run->weights;
    const int32_t sum0 = sums[0], sum1 = sums[1];
    const ejq_rq *q = table;
    int8_t *const grouped_end = dst0 + count / group * group;
    int8_t *const end = dst0 + count;
    for (; dst0 != grouped_end; dst0 += group, dst1 += group, bias += group, q += group, w += group * row_bytes) {
        if (bits == 4u) {
            int32_t acc[4];
            int32_t b;
            ejq_mm_w4(w, columns, blocks, acc);
            b = bias[0];
            ejq_rq_store_pair(dst0, dst1, ((acc[0] - acc[2]) >> 4) + b, ((acc[1] - acc[3]) >> 4) + b, q, o,
                              full);                                                                /* A */
            b = bias[1];
            ejq_rq_store_pair(dst0 + 1, dst1 + 1, acc[2] - 8 * sum0 + b, acc[3] - 8 * sum1 + b, q + 1, o,
                              full);                                                                /* B */
        } else {
            int32_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int32_t b;
            ejq_mm_w2_quad(w, columns, blocks, acc);
            b = bias[0];
            ejq_rq_store_pair(dst0, dst1, ((acc[0] - acc[6]) >> 6) + b, ((acc[1] - acc[7]) >> 6) + b, q, o,
                              full);                                                                /* A */
            b = bias[1];
            ejq_rq_store_pair(dst0 + 1, dst1 + 1, ((acc[6] - acc[4]) >> 4) - 2 * sum0 + b,
                              ((acc[7] - acc[5]) >> 4) - 2 * sum1 + b, q + 1, o, full);              /* B */
            b = bias[2];
            ejq_rq_store_pair(dst0 + 2, dst1 + 2, ((acc[4] - acc[2]) >> 2) - 2 * sum0 + b,
                              ((acc[5] - acc[3]) >> 2) - 2 * sum1 + b, q + 2, o, full);              /* C */
            b = bias[3];
            ejq_rq_store_pair(dst0 + 3, dst1 + 3, acc[2] - 2 * sum0 + b, acc[3] - 2 * sum1 + b, q + 3, o,
                              full);                                                                /* D */
        }
    }
    for (; dst0 != end; ++dst0, ++dst1, ++bias, ++q, w += row_bytes) {  /* plain packing */
        ejq_rq_store_pair(dst0, dst1, bias[0] + ejq_dot_plain(w, bits, k, columns, 2u, 0u),
                          bias[0] + ejq_dot_plain(w, bits, k, columns, 2u, 1u), q, o, full);
    }
}

#define EJQ_CONV_SUB_VARIANT(name, bits, full)                                                                 \
    static __attribute__((noinline, unused)) void name(const ejq_weight_run *run, const ejq_rq *table,           \
                                                       const uint32_t *columns, uint32_t blocks, uint32_t k,     \
                                                       const int32_t sums[2], int8_t *dst0, int8_t *dst1,        \
                                                       ejq_out_q o)                                              \
    {                                                                                                          \
        ejq_conv_sub_pixel_pair(run, table, columns, blocks, k, sums, dst0, dst1, o, bits, full);               \
    }

EJQ_CONV_SUB_VARIANT(ejq_conv_w4_pixel_pair_full, 4u, 1)
EJQ_CONV_SUB_VARIANT(ejq_conv_w4_pixel_pair_clamp, 4u, 0)
EJQ_CONV_SUB_VARIANT(ejq_conv_w2_pixel_pair_full, 2u, 1)
EJQ_CONV_SUB_VARIANT(ejq_conv_w2_pixel_pair_clamp, 2u, 0)

EJQ_INLINE void ejq_dsp_conv_im2col_run(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in,
                                        int8_t *out, uint32_t bits)
{
    const ejq_window_geometry *g = &p->geometry;
    const uint32_t k = (uint32_t)g->kernel_h * g->kernel_w * p->in_c;
    const uint32_t k4 = ejq_k4(k);
    const uint32_t blocks = k4 / 4u;
    const uint32_t count = run->count;
    const uint32_t pixels = (uint32_t)g->out_h * g->out_w;
    uint8_t *scratch = (uint8_t *)p->scratch;
    ejq_rq *table = (ejq_rq *)scratch;
    uint32_t *columns = (uint32_t *)(scratch + EJQ_RQ_BYTES(count));
    int32_t *sums = (int32_t *)(columns + k4);
    int8_t *gather = (int8_t *)(sums + 2);
    uint32_t pixel;
    ejq_out_q o;
    int full;
    o.offset = p->output_offset;
    o.act_min = p->act_min;
    o.act_max = p->act_max;
    full = o.act_min == -128 && o.act_max == 127;
    if (EJQ_RQ_BYTES(count) + 4u * k4 + 8u + (p->in_c % 4u ? 2u * k4 : 0u) > p->scratch_bytes) {
        __builtin_trap();  /* the generator sized the scratch buffer for another layout */
    }
    ejq_requant_table(run, p->output_offset, table);
    for (pixel = 0; pixel < pixels; pixel += 2u) {
        const uint32_t pixel1 = pixel + 1u < pixels ? pixel + 1u : pixel;
        int8_t *dst0 = out + pixel * p->out_c + run->start;
        int8_t *dst1 = out + pixel1 * p->out_c + run->start;
        const int summed = ejq_im2col_pair(p, in, (int32_t)(pixel / g->out_w), (int32_t)(pixel % g->out_w),
                                           (int32_t)(pixel1 / g->out_w), (int32_t)(pixel1 % g->out_w), columns,
                                           gather, bits == 8u ? 0 : sums);
        if (bits == 8u) {
            if (full) {
                ejq_conv_w8_pixel_pair_full(run, table, columns, blocks, dst0, dst1, o);
            } else {
                ejq_conv_w8_pixel_pair_clamp(run, table, columns, blocks, dst0, dst1, o);
            }
            continue;
        }
        if (!summed) {
            ejq_column_sums(columns, blocks, sums);
        }
        if (bits == 4u) {
            if (full) {
                ejq_conv_w4_pixel_pair_full(run, table, columns, blocks, k, sums, dst0, dst1, o);
            } else {
                ejq_conv_w4_pixel_pair_clamp(run, table, columns, blocks, k, sums, dst0, dst1, o);
            }
        } else if (full) {
            ejq_conv_w2_pixel_pair_full(run, table, columns, blocks, k, sums, dst0, dst1, o);
        } else {
            ejq_conv_w2_pixel_pair_clamp(run, table, columns, blocks, k, sums, dst0, dst1, o);
        }
    }
}

/* The im2col path out of line, so that the depthwise path of ejq_dsp_conv_run compiles to the same
   instructions at every bit-width (its register use does not depend on the im2col code). */
static __attribute__((noinline, unused)) void ejq_dsp_conv_im2col_w8(const ejq_conv_params *p,
                                                                     const ejq_weight_run *run, const int8_t *in,
                                                                     int8_t *out)
{
    ejq_dsp_conv_im2col_run(p, run, in, out, 8u);
}

static __attribute__((noinline, unused)) void ejq_dsp_conv_im2col_w4(const ejq_conv_params *p,
                                                                     const ejq_weight_run *run, const int8_t *in,
                                                                     int8_t *out)
{
    ejq_dsp_conv_im2col_run(p, run, in, out, 4u);
}

static __attribute__((noinline, unused)) void ejq_dsp_conv_im2col_w2(const ejq_conv_params *p,
                                                                     const ejq_weight_run *run, const int8_t *in,
                                                                     int8_t *out)
{
    ejq_dsp_conv_im2col_run(p, run, in, out, 2u);
}

/* One input channel: the depthwise machinery (ejq_dsp_dw.h), every output channel on the one plane. */
EJQ_INLINE void ejq_dsp_conv_run(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out,
                                 uint32_t bits)
{
    if (p->in_c == 1u) {
        ejq_dsp_dw_run(p, run, in, out, bits, 1u);
    } else if (bits == 8u) {
        ejq_dsp_conv_im2col_w8(p, run, in, out);
    } else if (bits == 4u) {
        ejq_dsp_conv_im2col_w4(p, run, in, out);
    } else {
        ejq_dsp_conv_im2col_w2(p, run, in, out);
    }
}

#endif /* EJQ_DSP_CONV_H */

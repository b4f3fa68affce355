/*
 * DSP fully connected layer over one weight run. The input is converted once into one int16 column
 * (blocks of (x0, x2), (x1, x3), see ejq_dsp.h; for sub-byte weights also summed); then passes over
 * the column share each load of it among several rows: five or four 8-bit rows (assembly,
 * ejq_fc_w8.c; then two or one in C for the rest), three or two 4-bit pair groups (assembly,
 * ejq_fc_w4.c; a last group alone in C), two 2-bit quad groups (assembly, ejq_fc_w2.c; a last quad
 * alone in C), then the 2-bit pair of the next two channels (assembly, ejq_fc_w2.c) and single
 * left-over rows (ejq_dot_plain). Each channel is requantized once, so there is no requantization
 * table: the fast path's constants are made on the spot.
 *
 * The 2-bit pair (codegen/dsp_layout.py): 2 or 3 channels A, B (, C) left over from a run's quads
 * store A and B as one nibble n = (A + 2) << 2 | (B + 2) an input, in 2 bytes a block of 4 inputs,
 * which are exactly the 2 plain rows' ceil(K / 4) bytes each for every K (C keeps the plain packing).
 * Blocks b, b + 1 share a word: byte 0 = n(b, 0) | n(b, 1) << 4, byte 1 the same for block b + 1,
 * byte 2 = n(b, 2) | n(b, 3) << 4, byte 3 the same for b + 1 (a last, odd block: its bytes 0 and 2 as
 * bytes 0 and 1), so (w >> 4j) & 0x000F000F is an int16 pair for SMLAD with one column word and
 * (w >> 4j) & 0x00030003 its B + 2 part. The sums F = n . x and L = (n & 3) . x give, with the
 * column's sum, B . x = L - 2 sum and A . x = (F - L) / 4 - 2 sum (F - L is 4 (A + 2) . x: the shift
 * is exact). |F| <= 15 * 255 * K: no overflow for K < 2^19.
 *
 * Cost (instructions, Cortex-M4, GCC 12 -O2), per block of 4 inputs: 8-bit 26 per 5 rows (~21 per
 * 4) plus 0.5 (loop, four blocks an iteration); 4-bit 28 per 3 groups (6 channels) or 19 per 2
 * groups plus ~0.75-1.5; 2-bit 38 per 2 quads (8 channels) plus 1.5, the 2-bit pair 9.5 (2
 * channels), single plain rows ~12. Per call: the conversion, ~4.5 per block (7 with the sum), and
 * ~60 fixed; per pass ~25; per channel ~20 (requantization and store).
 *
 * Scratch of one call: the column (K4 / 4 blocks of 2 words, K4 = K rounded up to 4).
 */
#ifndef EJQ_DSP_FC_H
#define EJQ_DSP_FC_H

#include "ejq_dsp.h"
#include "ejq_dsp_conv.h"

/*
 * Rows of 8-bit weights against the column, for the assembly kernels of ejq_fc_w8.c: acc[i] +=
 * row i . x for rows w, w + stride, ... The column is word-aligned (the scratch is) and holds two
 * words a block, so its LDRDs are word-aligned; weights are read with LDR (any alignment).
 */
typedef struct {
    const uint8_t *w;      /* row 0 */
    uint32_t stride;       /* bytes from a row to the next */
    const uint32_t *x;     /* the column */
    const uint32_t *x_end; /* x + 2 blocks (blocks >= 1) */
    int32_t acc[8];        /* in and out */
} ejq_fc_rows;

void ejq_fc_w8x5(ejq_fc_rows *r);  /* rows 0-4 (ejq_fc_w8.c) */
void ejq_fc_w8x4(ejq_fc_rows *r);  /* rows 0-3 (ejq_fc_w8.c) */
void ejq_fc_w4x3(ejq_fc_rows *r);  /* three 4-bit pair groups, `stride` apart: acc = {S, U} x 3 (ejq_fc_w4.c) */
void ejq_fc_w4x2(ejq_fc_rows *r);  /* two 4-bit pair groups: acc = {S, U} x 2 (ejq_fc_w4.c) */
void ejq_fc_w2x2(ejq_fc_rows *r);  /* two 2-bit quad groups: acc = {S, T2, T4, T6} x 2 (ejq_fc_w2.c) */
void ejq_fc_w2p(ejq_fc_rows *r);   /* the 2-bit pair, whole words (2 blocks): acc = {F, L} (ejq_fc_w2.c) */

/* One 8-bit block (4 inputs) of row `w` into accumulator `a`. */
#define EJQ_FC_W8_BLOCK(w, a, x02, x13)                          \
    do {                                                         \
        const uint32_t v_ = ejq_load_u32_inc(&(w));              \
        (a) = ejq_smlad(ejq_sxtb16(v_), (x02), (a));             \
        (a) = ejq_smlad(ejq_sxtb16_ror8(v_), (x13), (a));        \
    } while (0)

/* Two 8-bit rows, `stride` bytes apart, against the column (two blocks an iteration). */
EJQ_INLINE void ejq_fc_mm_w8x2(const uint8_t *w, uint32_t stride, const uint32_t *x, uint32_t blocks, int32_t acc[2])
{
    const uint8_t *w0 = w, *w1 = w + stride;
    int32_t a0 = acc[0], a1 = acc[1];
    const uint32_t *end = x + 2u * (blocks & ~1u);
    while (x != end) {
        EJQ_FC_W8_BLOCK(w0, a0, x[0], x[1]);
        EJQ_FC_W8_BLOCK(w1, a1, x[0], x[1]);
        EJQ_FC_W8_BLOCK(w0, a0, x[2], x[3]);
        EJQ_FC_W8_BLOCK(w1, a1, x[2], x[3]);
        x += 4;
    }
    if (blocks & 1u) {
        EJQ_FC_W8_BLOCK(w0, a0, x[0], x[1]);
        EJQ_FC_W8_BLOCK(w1, a1, x[0], x[1]);
    }
    acc[0] = a0;
    acc[1] = a1;
}

/* One 8-bit row against the column (two blocks an iteration). */
EJQ_INLINE int32_t ejq_fc_mm_w8x1(const uint8_t *w, const uint32_t *x, uint32_t blocks, int32_t acc)
{
    const uint32_t *end = x + 2u * (blocks & ~1u);
    while (x != end) {
        EJQ_FC_W8_BLOCK(w, acc, x[0], x[1]);
        EJQ_FC_W8_BLOCK(w, acc, x[2], x[3]);
        x += 4;
    }
    if (blocks & 1u) {
        EJQ_FC_W8_BLOCK(w, acc, x[0], x[1]);
    }
    return acc;
}

/* One block of a lone 4-bit pair group (acc s, u) or 2-bit quad (s, t2, t4, t6) against the column. */
#define EJQ_FC_W4X1_BLOCK(x02, x13)                              \
    do {                                                         \
        const uint32_t v_ = ejq_load_u32_inc(&w);                \
        s = ejq_smlad(ejq_sxtb16(v_), (x02), s);                 \
        u = ejq_smlad(v_ & 0x000F000Fu, (x02), u);               \
        s = ejq_smlad(ejq_sxtb16_ror8(v_), (x13), s);            \
        u = ejq_smlad((v_ >> 8) & 0x000F000Fu, (x13), u);        \
    } while (0)

#define EJQ_FC_W2X1_BLOCK(x02, x13)                              \
    do {                                                         \
        const uint32_t v_ = ejq_load_u32_inc(&w);                \
        const uint32_t h_ = v_ >> 8;                             \
        s = ejq_smlad(ejq_sxtb16(v_), (x02), s);                 \
        t2 = ejq_smlad(v_ & 0x00030003u, (x02), t2);             \
        t4 = ejq_smlad(v_ & 0x000F000Fu, (x02), t4);             \
        t6 = ejq_smlad(v_ & 0x003F003Fu, (x02), t6);             \
        s = ejq_smlad(ejq_sxtb16(h_), (x13), s);                 \
        t2 = ejq_smlad(h_ & 0x00030003u, (x13), t2);             \
        t4 = ejq_smlad(h_ & 0x000F000Fu, (x13), t4);             \
        t6 = ejq_smlad(h_ & 0x003F003Fu, (x13), t6);             \
    } while (0)

/* A lone 4-bit pair group (the last of a run): acc = {S, U}; two blocks an iteration. */
EJQ_INLINE void ejq_fc_mm_w4x1(const uint8_t *w, const uint32_t *x, uint32_t blocks, int32_t acc[2])
{
    int32_t s = 0, u = 0;
    const uint32_t *end = x + 2u * (blocks & ~1u);
    while (x != end) {
        EJQ_FC_W4X1_BLOCK(x[0], x[1]);
        EJQ_FC_W4X1_BLOCK(x[2], x[3]);
        x += 4;
    }
    if (blocks & 1u) {
        EJQ_FC_W4X1_BLOCK(x[0], x[1]);
    }
    acc[0] = s;
    acc[1] = u;
}

/* A lone 2-bit quad group (the last of a run): acc = {S, T2, T4, T6}; two blocks an iteration. */
EJQ_INLINE void ejq_fc_mm_w2x1(const uint8_t *w, const uint32_t *x, uint32_t blocks, int32_t acc[4])
{
    int32_t s = 0, t2 = 0, t4 = 0, t6 = 0;
    const uint32_t *end = x + 2u * (blocks & ~1u);
    while (x != end) {
        EJQ_FC_W2X1_BLOCK(x[0], x[1]);
        EJQ_FC_W2X1_BLOCK(x[2], x[3]);
        x += 4;
    }
    if (blocks & 1u) {
        EJQ_FC_W2X1_BLOCK(x[0], x[1]);
    }
    acc[0] = s;
    acc[1] = t2;
    acc[2] = t4;
    acc[3] = t6;
}

/* What requantizing a channel needs, read once per call into locals (the int8 stores may alias *p
   and *run, so reading those after a store would reload them every time). */
typedef struct {
    const int32_t *bias, *multiplier, *shift;
    int8_t *out;             /* out + run->start */
    int32_t offset, act_min, act_max;
    int32_t ca1;             /* 1 + 2 output zero point: the fast path's ca is ca1 2^(e - 1) */
    int32_t full;            /* the clamp is int8's own */
    int32_t single_rounding;
} ejq_fc_out;

static __attribute__((noinline)) int8_t ejq_fc_general(int32_t x, int32_t multiplier, int32_t shift,
                                                       int32_t offset, int32_t act_min, int32_t act_max,
                                                       int32_t single_rounding)
{
    if (single_rounding) {
        return ejq_requantize_single_s8(x, multiplier, shift, offset, act_min, act_max);
    }
    return ejq_requantize_s8(x, multiplier, shift, offset, act_min, act_max);
}

/* The fast path of ejq_requant_table with its constants made on the spot; `full` a constant. */
EJQ_INLINE int8_t ejq_fc_fast(ejq_fc_out o, int32_t x, int32_t m, int32_t sh, int full)
{
    const int32_t e = -sh;
    const int32_t z = ejq_rq_fast(x, (int32_t)((uint32_t)m * 2u), o.ca1 * (int32_t)(1u << (e - 1)), e);
    return (int8_t)(full ? __ssat(z, 8) : ejq_clamp(z, o.act_min, o.act_max));
}

/* Channels [c, c + n) from their products (bias not included); `full` a constant. */
EJQ_INLINE void ejq_fc_store_loop(ejq_fc_out o, uint32_t c, const int32_t *products, uint32_t n, int full)
{
    const int32_t *bias = o.bias + c, *multiplier = o.multiplier + c, *shift = o.shift + c;
    int8_t *out = o.out + c;
    uint32_t i;
    for (i = 0; i < n; ++i) {
        const int32_t x = products[i] + bias[i];
        const int32_t m = multiplier[i];
        const int32_t sh = shift[i];
        if (__builtin_expect((uint32_t)(sh + EJQ_FAST_MAX_EXPONENT) < (uint32_t)EJQ_FAST_MAX_EXPONENT &&
                             m > (int32_t)(1u << 30), 1)) {
            out[i] = ejq_fc_fast(o, x, m, sh, full);
        } else {
            out[i] = ejq_fc_general(x, m, sh, o.offset, o.act_min, o.act_max, 0);
        }
    }
}

/*
 * Channels [c, c + n) from their products (bias not included): the fast path where it applies (not
 * with single rounding), every other channel through ejq_fc_general.
 */
EJQ_INLINE void ejq_fc_store_n(ejq_fc_out o, uint32_t c, const int32_t *products, uint32_t n)
{
    uint32_t i;
    if (o.single_rounding) {
        for (i = 0; i < n; ++i) {
            o.out[c + i] = ejq_fc_general(products[i] + o.bias[c + i], o.multiplier[c + i], o.shift[c + i],
                                          o.offset, o.act_min, o.act_max, 1);
        }
    } else if (o.full) {
        ejq_fc_store_loop(o, c, products, n, 1);
    } else {
        ejq_fc_store_loop(o, c, products, n, 0);
    }
}

EJQ_INLINE void ejq_fc_store(ejq_fc_out o, uint32_t c, int32_t products)
{
    ejq_fc_store_n(o, c, &products, 1u);
}

/* Convert `whole` blocks of the input into the column, two at a time; with `sum`, return the sum of
   the converted values (else 0). */
EJQ_INLINE int32_t ejq_fc_convert(const int8_t *in, uint32_t *column, uint32_t whole, uint32_t offset2, int sum)
{
    const uint8_t *src = (const uint8_t *)in;
    uint32_t *dst = column;
    uint32_t *const end = column + 2u * (whole & ~1u);
    const uint32_t ones = 0x00010001u;
    int32_t s = 0;
    while (dst != end) {
        const uint32_t v0 = ejq_load_u32_inc(&src);
        const uint32_t v1 = ejq_load_u32_inc(&src);
        const uint32_t e0 = ejq_sxtab16(offset2, v0), o0 = ejq_sxtab16_ror8(offset2, v0);
        const uint32_t e1 = ejq_sxtab16(offset2, v1), o1 = ejq_sxtab16_ror8(offset2, v1);
        ejq_strd_inc(&dst, e0, o0);
        ejq_strd_inc(&dst, e1, o1);
        if (sum) {
            s = ejq_smlad(e0, ones, ejq_smlad(o0, ones, s));
            s = ejq_smlad(e1, ones, ejq_smlad(o1, ones, s));
        }
    }
    if (whole & 1u) {
        const uint32_t v = ejq_load_u32(src);
        const uint32_t e = ejq_sxtab16(offset2, v), o = ejq_sxtab16_ror8(offset2, v);
        dst[0] = e;
        dst[1] = o;
        if (sum) {
            s = ejq_smlad(e, ones, ejq_smlad(o, ones, s));
        }
    }
    return s;
}

/* One pass of an assembly kernel with `sums` sums over the column from weights w (rows or groups
   `stride` bytes apart): r->acc holds the sums after. */
EJQ_INLINE void ejq_fc_pass(void (*kernel)(ejq_fc_rows *), const uint8_t *w, uint32_t stride, const uint32_t *column,
                            uint32_t blocks, uint32_t sums, ejq_fc_rows *r)
{
    uint32_t i;
    r->w = w;
    r->stride = stride;
    r->x = column;
    r->x_end = column + 2u * blocks;
    for (i = 0; i < sums; ++i) {
        r->acc[i] = 0;
    }
    kernel(r);
}

/*
 * The 2-bit pair (the first two channels left over from the quads, codegen/dsp_layout.py) against
 * the column, whose sum is `sum`: acc = {A . x, B . x}. F = sum n x and L = sum (n & 3) x: a word
 * holds blocks b, b + 1, bits 0-3 of its lanes (bytes 0 and 2) block b's inputs (0, 2), bits 4-7 its
 * (1, 3), bits 8-15 the same for block b + 1, so one AND (of the word shifted) makes each int16 pair:
 * whole words in assembly (ejq_fc_w2p), a last, odd block's 2 bytes (to bytes 0 and 2 of a word)
 * here. Not inlined: in ejq_dsp_fc_run it costs the runs without a pair a few spills.
 */
static __attribute__((noinline, unused)) void ejq_fc_mm_w2_pair(const uint8_t *w, const uint32_t *column,
                                                                uint32_t blocks, int32_t sum, int32_t acc[2])
{
    const uint32_t words = blocks / 2u;
    int32_t f = 0, l = 0;
    if (words > 0u) {
        ejq_fc_rows r;
        ejq_fc_pass(ejq_fc_w2p, w, 0u, column, 2u * words, 2u, &r);
        f = r.acc[0];
        l = r.acc[1];
    }
    if (blocks & 1u) {
        const uint8_t *t = w + 4u * words;
        const uint32_t *x = column + 4u * words;
        const uint32_t v = (uint32_t)t[0] | ((uint32_t)t[1] << 16);
        f = ejq_smlad(v & 0x000F000Fu, x[0], f);
        l = ejq_smlad(v & 0x00030003u, x[0], l);
        f = ejq_smlad((v >> 4) & 0x000F000Fu, x[1], f);
        l = ejq_smlad((v >> 4) & 0x00030003u, x[1], l);
    }
    acc[0] = ((f - l) >> 2) - 2 * sum;  /* A: F - L = 4 (A + 2) . x, so the shift is exact */
    acc[1] = l - 2 * sum;               /* B */
}

/* 8-bit rows [c, c + n) through the assembly kernel of n = 5 or 4 rows. */
EJQ_INLINE void ejq_fc_w8_rows(const ejq_weight_run *run, ejq_fc_out o, const uint32_t *column,
                               uint32_t blocks, uint32_t c, uint32_t n)
{
    ejq_fc_rows r;
    ejq_fc_pass(n == 5u ? ejq_fc_w8x5 : ejq_fc_w8x4, run->weights + c * run->row_bytes, run->row_bytes, column,
                blocks, n, &r);
    ejq_fc_store_n(o, c, r.acc, n);
}

EJQ_INLINE void ejq_dsp_fc_run(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out,
                               uint32_t bits)
{
    const uint32_t k = p->in_size;
    const uint32_t k4 = ejq_k4(k);
    const uint32_t blocks = k4 / 4u;
    const uint32_t count = run->count;
    const uint32_t stride = run->row_bytes;
    uint32_t *column = (uint32_t *)p->scratch;
    const uint32_t offset2 = ((uint32_t)p->input_offset & 0xFFFFu) * 0x00010001u;
    const uint32_t whole = k / 4u;
    int32_t sum = 0;
    uint32_t b, c = 0;
    ejq_fc_out o;
    if (2u * k4 > p->scratch_bytes) {
        __builtin_trap();  /* the generator sized the scratch buffer for another layout */
    }
    o.bias = run->bias;
    o.multiplier = run->multiplier;
    o.shift = run->shift;
    o.out = out + run->start;
    o.offset = p->output_offset;
    o.act_min = p->act_min;
    o.act_max = p->act_max;
    o.ca1 = 1 + 2 * p->output_offset;
    o.full = p->act_min == -128 && p->act_max == 127;
    o.single_rounding = p->single_rounding;
    /* whole blocks of the input, two at a time (STRD: the column is word-aligned, as the scratch is);
       for sub-byte weights also the column's sum (2 SMLADs a block) */
    if (bits == 8u) {
        ejq_fc_convert(in, column, whole, offset2, 0);
    } else {
        sum = ejq_fc_convert(in, column, whole, offset2, 1);
    }
    b = whole;
    if (b < blocks) {  /* the last, partial block: inputs past K are 0 (not x - zero point) */
        int16_t *half = (int16_t *)(column + 2u * b);
        uint32_t j;
        for (j = 0; j < 4u; ++j) {
            const uint32_t i = 4u * b + j;
            const int32_t v = i < k ? (int32_t)in[i] + p->input_offset : 0;
            half[2u * (j & 1u) + (j >> 1)] = (int16_t)v;
            sum += v;
        }
    }
    if (bits == 8u) {
        /* passes of 5 rows, then of 4; a remainder of 3 after 5s is better as 4 + 4 than 5 + 2 + 1 */
        uint32_t fives = count / 5u;
        uint32_t fours;
        if (count % 5u == 3u && fives > 0u) {
            --fives;
        }
        fours = (count - 5u * fives) / 4u;
        for (; fives > 0u; --fives, c += 5u) {
            ejq_fc_w8_rows(run, o, column, blocks, c, 5u);
        }
        for (; fours > 0u; --fours, c += 4u) {
            ejq_fc_w8_rows(run, o, column, blocks, c, 4u);
        }
        if (c + 2u <= count) {
            int32_t acc[2] = {0, 0};
            ejq_fc_mm_w8x2(run->weights + c * stride, stride, column, blocks, acc);
            ejq_fc_store(o, c, acc[0]);
            ejq_fc_store(o, c + 1u, acc[1]);
            c += 2u;
        }
        if (c < count) {
            ejq_fc_store(o, c, ejq_fc_mm_w8x1(run->weights + c * stride, column, blocks, 0));
        }
        return;
    }
    if (bits == 4u) {
        for (; c + 6u <= count; c += 6u) {
            ejq_fc_rows r;
            int32_t *acc = r.acc;
            uint32_t i;
            ejq_fc_pass(ejq_fc_w4x3, run->weights + c * stride, 2u * stride, column, blocks, 6u, &r);
            for (i = 0; i < 6u; i += 2u) {
                acc[i] = (acc[i] - acc[i + 1u]) >> 4;   /* A */
                acc[i + 1u] -= 8 * sum;                 /* B */
            }
            ejq_fc_store_n(o, c, acc, 6u);
        }
        for (; c + 4u <= count; c += 4u) {  /* passes of 2 groups */
            ejq_fc_rows r;
            int32_t *acc = r.acc;
            uint32_t i;
            ejq_fc_pass(ejq_fc_w4x2, run->weights + c * stride, 2u * stride, column, blocks, 4u, &r);
            for (i = 0; i < 4u; i += 2u) {
                acc[i] = (acc[i] - acc[i + 1u]) >> 4;
                acc[i + 1u] -= 8 * sum;
            }
            ejq_fc_store_n(o, c, acc, 4u);
        }
        if (c + 2u <= count) {  /* a last group alone */
            int32_t acc[2];
            ejq_fc_mm_w4x1(run->weights + c * stride, column, blocks, acc);
            acc[0] = (acc[0] - acc[1]) >> 4;
            acc[1] -= 8 * sum;
            ejq_fc_store_n(o, c, acc, 2u);
            c += 2u;
        }
    } else {
        for (; c + 8u <= count; c += 8u) {  /* passes of 2 quads */
            ejq_fc_rows r;
            int32_t *acc = r.acc;
            uint32_t i;
            ejq_fc_pass(ejq_fc_w2x2, run->weights + c * stride, 4u * stride, column, blocks, 8u, &r);
            for (i = 0; i < 8u; i += 4u) {
                const int32_t s = acc[i], t2 = acc[i + 1u], t4 = acc[i + 2u], t6 = acc[i + 3u];
                acc[i] = (s - t6) >> 6;                 /* A */
                acc[i + 1u] = ((t6 - t4) >> 4) - 2 * sum; /* B */
                acc[i + 2u] = ((t4 - t2) >> 2) - 2 * sum; /* C */
                acc[i + 3u] = t2 - 2 * sum;             /* D */
            }
            ejq_fc_store_n(o, c, acc, 8u);
        }
        if (c + 4u <= count) {  /* a last quad alone */
            int32_t acc[4];
            int32_t s, t2, t4, t6;
            ejq_fc_mm_w2x1(run->weights + c * stride, column, blocks, acc);
            s = acc[0];
            t2 = acc[1];
            t4 = acc[2];
            t6 = acc[3];
            acc[0] = (s - t6) >> 6;
            acc[1] = ((t6 - t4) >> 4) - 2 * sum;
            acc[2] = ((t4 - t2) >> 2) - 2 * sum;
            acc[3] = t2 - 2 * sum;
            ejq_fc_store_n(o, c, acc, 4u);
            c += 4u;
        }
        if (c + 2u <= count) {  /* the 2-bit pair */
            int32_t acc[2];
            ejq_fc_mm_w2_pair(run->weights + c * stride, column, blocks, sum, acc);
            ejq_fc_store_n(o, c, acc, 2u);
            c += 2u;
        }
    }
    for (; c < count; ++c) {  /* channels left over from the groups: plain packing */
        ejq_fc_store(o, c, ejq_dot_plain(run->weights + c * stride, bits, k, column, 1u, 0u));
    }
}

#endif /* EJQ_DSP_FC_H */

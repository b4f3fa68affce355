/*
 * DSP fully connected layer over one weight run. The input is converted once into one int16 column
 * (blocks of (x0, x2), (x1, x3), see ejq_dsp.h); then four 8-bit channels, two 4-bit pairs or one
 * 2-bit quad share each load of the inputs.
 *
 * Scratch of one call: requantization table (count entries), the column (K4 / 4 blocks of 2 words),
 * the column's sum (1 word).
 */
#ifndef EJQ_DSP_FC_H
#define EJQ_DSP_FC_H

#include "ejq_dsp.h"
#include "ejq_dsp_conv.h"

/* Four 8-bit rows, `stride` bytes apart, against the column: acc[i] += row i . x. */
EJQ_INLINE void ejq_fc_mm_w8x4(const uint8_t *w, uint32_t stride, const uint32_t *x, uint32_t blocks, int32_t acc[4])
{
    const uint8_t *w0 = w, *w1 = w + stride, *w2 = w + 2u * stride, *w3 = w + 3u * stride;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    const uint32_t *end = x + 2u * blocks;
    do {
        const uint32_t x02 = x[0], x13 = x[1];
        uint32_t v = ejq_load_u32_inc(&w0);
        a0 = ejq_smlad(ejq_sxtb16(v), x02, a0);
        a0 = ejq_smlad(ejq_sxtb16_ror8(v), x13, a0);
        v = ejq_load_u32_inc(&w1);
        a1 = ejq_smlad(ejq_sxtb16(v), x02, a1);
        a1 = ejq_smlad(ejq_sxtb16_ror8(v), x13, a1);
        v = ejq_load_u32_inc(&w2);
        a2 = ejq_smlad(ejq_sxtb16(v), x02, a2);
        a2 = ejq_smlad(ejq_sxtb16_ror8(v), x13, a2);
        v = ejq_load_u32_inc(&w3);
        a3 = ejq_smlad(ejq_sxtb16(v), x02, a3);
        a3 = ejq_smlad(ejq_sxtb16_ror8(v), x13, a3);
        x += 2;
    } while (x != end);
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* One 8-bit row against the column. */
EJQ_INLINE int32_t ejq_fc_mm_w8x1(const uint8_t *w, const uint32_t *x, uint32_t blocks, int32_t acc)
{
    const uint32_t *end = x + 2u * blocks;
    do {
        const uint32_t v = ejq_load_u32_inc(&w);
        acc = ejq_smlad(ejq_sxtb16(v), x[0], acc);
        acc = ejq_smlad(ejq_sxtb16_ror8(v), x[1], acc);
        x += 2;
    } while (x != end);
    return acc;
}

/* Two 4-bit pair groups, `stride` bytes apart: acc = {S, U} of the first, {S, U} of the second. */
EJQ_INLINE void ejq_fc_mm_w4x2(const uint8_t *w, uint32_t stride, const uint32_t *x, uint32_t blocks, int32_t acc[4])
{
    const uint8_t *g0 = w, *g1 = w + stride;
    int32_t s0 = 0, u0 = 0, s1 = 0, u1 = 0;
    const uint32_t *end = x + 2u * blocks;
    uint32_t mask = 0x000F000Fu;
    __asm__("" : "+r"(mask));
    do {
        const uint32_t x02 = x[0], x13 = x[1];
        uint32_t v = ejq_load_u32_inc(&g0);
        s0 = ejq_smlad(ejq_sxtb16(v), x02, s0);
        u0 = ejq_smlad(v & mask, x02, u0);
        s0 = ejq_smlad(ejq_sxtb16_ror8(v), x13, s0);
        u0 = ejq_smlad((v >> 8) & mask, x13, u0);
        v = ejq_load_u32_inc(&g1);
        s1 = ejq_smlad(ejq_sxtb16(v), x02, s1);
        u1 = ejq_smlad(v & mask, x02, u1);
        s1 = ejq_smlad(ejq_sxtb16_ror8(v), x13, s1);
        u1 = ejq_smlad((v >> 8) & mask, x13, u1);
        x += 2;
    } while (x != end);
    acc[0] = s0;
    acc[1] = u0;
    acc[2] = s1;
    acc[3] = u1;
}

/* One 2-bit quad group: acc = {S, T2, T4, T6}. */
EJQ_INLINE void ejq_fc_mm_w2x1(const uint8_t *w, const uint32_t *x, uint32_t blocks, int32_t acc[4])
{
    int32_t s = 0, t2 = 0, t4 = 0, t6 = 0;
    const uint32_t *end = x + 2u * blocks;
    do {
        const uint32_t x02 = x[0], x13 = x[1];
        const uint32_t v = ejq_load_u32_inc(&w);
        const uint32_t h = v >> 8;
        s = ejq_smlad(ejq_sxtb16(v), x02, s);
        t2 = ejq_smlad(v & 0x00030003u, x02, t2);
        t4 = ejq_smlad(v & 0x000F000Fu, x02, t4);
        t6 = ejq_smlad(v & 0x003F003Fu, x02, t6);
        s = ejq_smlad(ejq_sxtb16(h), x13, s);
        t2 = ejq_smlad(h & 0x00030003u, x13, t2);
        t4 = ejq_smlad(h & 0x000F000Fu, x13, t4);
        t6 = ejq_smlad(h & 0x003F003Fu, x13, t6);
        x += 2;
    } while (x != end);
    acc[0] = s;
    acc[1] = t2;
    acc[2] = t4;
    acc[3] = t6;
}

EJQ_INLINE void ejq_fc_store(const ejq_fc_params *p, const ejq_weight_run *run, const ejq_rq *table, int8_t *out,
                             uint32_t c, int32_t products)
{
    if (p->single_rounding) {
        out[run->start + c] = ejq_requantize_single_s8(products + run->bias[c], run->multiplier[c], run->shift[c],
                                                       p->output_offset, p->act_min, p->act_max);
        return;
    }
    out[run->start + c] = ejq_rq_apply(products + run->bias[c], &table[c], p->output_offset, p->act_min,
                                       p->act_max);
}

EJQ_INLINE void ejq_dsp_fc_run(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out,
                               uint32_t bits)
{
    const uint32_t k = p->in_size;
    const uint32_t k4 = ejq_k4(k);
    const uint32_t blocks = k4 / 4u;
    const uint32_t count = run->count;
    const uint32_t stride = run->row_bytes;
    uint8_t *scratch = (uint8_t *)p->scratch;
    ejq_rq *table = (ejq_rq *)scratch;
    uint32_t *column = (uint32_t *)(scratch + EJQ_RQ_BYTES(count));
    const uint32_t offset2 = ((uint32_t)p->input_offset & 0xFFFFu) * 0x00010001u;
    int32_t sum = 0;
    uint32_t b, c = 0;
    if (EJQ_RQ_BYTES(count) + 2u * k4 + 4u > p->scratch_bytes) {
        __builtin_trap();
    }
    ejq_requant_table(run, p->output_offset, table);
    for (b = 0; b + 1u < blocks || (b < blocks && k4 == k); ++b) {  /* whole blocks of the input */
        const uint32_t v = ejq_load_u32(in + 4u * b);
        column[2u * b] = ejq_sxtab16(offset2, v);
        column[2u * b + 1u] = ejq_sxtab16_ror8(offset2, v);
    }
    if (b < blocks) {  /* the last, partial block: inputs past K are 0 (not x - zero point) */
        int16_t *half = (int16_t *)(column + 2u * b);
        uint32_t j;
        for (j = 0; j < 4u; ++j) {
            const uint32_t i = 4u * b + j;
            half[2u * (j & 1u) + (j >> 1)] = (int16_t)(i < k ? (int32_t)in[i] + p->input_offset : 0);
        }
    }
    if (bits == 8u) {
        for (; c + 4u <= count; c += 4u) {
            int32_t acc[4] = {0, 0, 0, 0};
            uint32_t i;
            ejq_fc_mm_w8x4(run->weights + c * stride, stride, column, blocks, acc);
            for (i = 0; i < 4u; ++i) {
                ejq_fc_store(p, run, table, out, c + i, acc[i]);
            }
        }
        for (; c < count; ++c) {
            ejq_fc_store(p, run, table, out, c, ejq_fc_mm_w8x1(run->weights + c * stride, column, blocks, 0));
        }
        return;
    }
    for (b = 0; b < blocks; ++b) {
        sum = ejq_smlad(column[2u * b], 0x00010001u, ejq_smlad(column[2u * b + 1u], 0x00010001u, sum));
    }
    if (bits == 4u) {
        for (; c + 4u <= count; c += 4u) {
            int32_t acc[4];
            ejq_fc_mm_w4x2(run->weights + c * stride, 2u * stride, column, blocks, acc);
            ejq_fc_store(p, run, table, out, c, (acc[0] - acc[1]) >> 4);
            ejq_fc_store(p, run, table, out, c + 1u, acc[1] - 8 * sum);
            ejq_fc_store(p, run, table, out, c + 2u, (acc[2] - acc[3]) >> 4);
            ejq_fc_store(p, run, table, out, c + 3u, acc[3] - 8 * sum);
        }
        if (c + 2u <= count) {
            int32_t acc[4];
            ejq_fc_mm_w4x2(run->weights + c * stride, 0u, column, blocks, acc);
            ejq_fc_store(p, run, table, out, c, (acc[0] - acc[1]) >> 4);
            ejq_fc_store(p, run, table, out, c + 1u, acc[1] - 8 * sum);
            c += 2u;
        }
    } else {
        for (; c + 4u <= count; c += 4u) {
            int32_t acc[4];
            ejq_fc_mm_w2x1(run->weights + c * stride, column, blocks, acc);
            ejq_fc_store(p, run, table, out, c, (acc[0] - acc[3]) >> 6);
            ejq_fc_store(p, run, table, out, c + 1u, ((acc[3] - acc[2]) >> 4) - 2 * sum);
            ejq_fc_store(p, run, table, out, c + 2u, ((acc[2] - acc[1]) >> 2) - 2 * sum);
            ejq_fc_store(p, run, table, out, c + 3u, acc[1] - 2 * sum);
        }
    }
    for (; c < count; ++c) {  /* channels left over from the groups: plain packing */
        ejq_fc_store(p, run, table, out, c, ejq_dot_plain(run->weights + c * stride, bits, k, column, 1u, 0u));
    }
}

#endif /* EJQ_DSP_FC_H */

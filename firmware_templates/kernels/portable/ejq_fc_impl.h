/* Portable fully connected layer over one weight run; instantiated per bit-width by ejq_fc_w*.c. */
#ifndef EJQ_FC_IMPL_H
#define EJQ_FC_IMPL_H

#include "ejq_fixedpoint.h"
#include "ejq_kernels.h"
#include "ejq_portable.h"

static inline void ejq_fc_run(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out,
                              uint32_t bits)
{
    const int32_t count = run->count;
    int32_t c;
    /* output channels in pairs: each input element is read once for two weight rows */
    for (c = 0; c < count; c += 2) {
        const int32_t c1 = c + 1 < count ? c + 1 : c;  /* an odd last channel pairs with itself */
        const uint8_t *row = run->weights + (uint32_t)c * run->row_bytes;
        int32_t acc[2];
        /* sum w * (x + offset) = sum w * x + offset * sum w: the second term is precomputed */
        acc[0] = run->bias[c] + p->input_offset * run->kernel_sum[c];
        acc[1] = run->bias[c1] + p->input_offset * run->kernel_sum[c1];
        ejq_dot2(row, row + (uint32_t)(c1 - c) * run->row_bytes, 0u, in, p->in_size, 0, bits, acc);
        if (p->single_rounding) {
            out[(int32_t)run->start + c] = ejq_requantize_single_s8(acc[0], run->multiplier[c], run->shift[c],
                                                                    p->output_offset, p->act_min, p->act_max);
            out[(int32_t)run->start + c1] = ejq_requantize_single_s8(acc[1], run->multiplier[c1], run->shift[c1],
                                                                     p->output_offset, p->act_min, p->act_max);
            continue;
        }
        out[(int32_t)run->start + c] = ejq_requantize_s8(acc[0], run->multiplier[c], run->shift[c],
                                                         p->output_offset, p->act_min, p->act_max);
        out[(int32_t)run->start + c1] = ejq_requantize_s8(acc[1], run->multiplier[c1], run->shift[c1],
                                                          p->output_offset, p->act_min, p->act_max);
    }
}

#endif /* EJQ_FC_IMPL_H */

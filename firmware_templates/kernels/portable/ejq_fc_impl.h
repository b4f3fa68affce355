/* Portable fully connected layer over one weight run; instantiated per bit-width by ejq_fc_w*.c. */
#ifndef EJQ_FC_IMPL_H
#define EJQ_FC_IMPL_H

#include "ejq_fixedpoint.h"
#include "ejq_kernels.h"
#include "ejq_portable.h"

static inline void ejq_fc_run(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out,
                              uint32_t bits)
{
    const uint8_t *row = run->weights;
    int32_t c;
    for (c = 0; c < (int32_t)run->count; ++c, row += run->row_bytes) {
        /* sum w * (x + offset) = sum w * x + offset * sum w: the second term is precomputed */
        const int32_t acc = run->bias[c] + p->input_offset * run->kernel_sum[c] + ejq_dot(row, 0u, in, p->in_size, 0, bits);
        out[(int32_t)run->start + c] = ejq_requantize_s8(acc, run->multiplier[c], run->shift[c], p->output_offset,
                                                         p->act_min, p->act_max);
    }
}

#endif /* EJQ_FC_IMPL_H */

/* Portable elementwise add, as TFLite's int8 ADD; safe in place (out == input1 or input2). */
#include "ejq_fixedpoint.h"
#include "ejq_kernels.h"

void ejq_add_s8(const ejq_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *out)
{
    const int64_t scale = (int64_t)1 << p->left_shift;
    uint32_t i;
    for (i = 0; i < p->size; ++i) {
        /* (x - zp) << left_shift can exceed int32 for left_shift > 23: keep it in int64 */
        const int64_t a = ((int64_t)input1[i] + p->input1_offset) * scale;
        const int64_t b = ((int64_t)input2[i] + p->input2_offset) * scale;
        const int64_t sum = (int64_t)ejq_mbqm64(a, p->input1_multiplier, p->input1_shift)
                            + (int64_t)ejq_mbqm64(b, p->input2_multiplier, p->input2_shift);
        out[i] = ejq_offset_clamp_s8(ejq_mbqm64(sum, p->output_multiplier, p->output_shift), p->output_offset,
                                     p->act_min, p->act_max);
    }
}

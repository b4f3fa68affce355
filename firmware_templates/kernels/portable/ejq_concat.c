/* Portable channel concatenation: one call per input, copying or requantizing its channels. */
#include "ejq_fixedpoint.h"
#include "ejq_kernels.h"

void ejq_concat_copy_s8(const ejq_concat_params *p, const int8_t *in, int8_t *out)
{
    uint32_t pixel;
    int8_t *dst = out + p->channel_offset;
    for (pixel = 0; pixel < p->pixels; ++pixel, in += p->in_c, dst += p->out_c) {
        uint32_t c;
        for (c = 0; c < p->in_c; ++c) {
            dst[c] = in[c];
        }
    }
}

void ejq_concat_requant_s8(const ejq_concat_params *p, const int8_t *in, int8_t *out)
{
    uint32_t pixel;
    int8_t *dst = out + p->channel_offset;
    for (pixel = 0; pixel < p->pixels; ++pixel, in += p->in_c, dst += p->out_c) {
        uint32_t c;
        for (c = 0; c < p->in_c; ++c) {
            const int32_t scaled = ejq_mbqm((int32_t)in[c] + p->input_offset, p->multiplier, p->shift);
            dst[c] = ejq_offset_clamp_s8(scaled, p->output_offset, -128, 127);
        }
    }
}

/* The general requantization path of the DSP kernels (ejq_dsp.h), one object shared by all of them. */
#include "ejq_dsp.h"

int8_t ejq_rq_general(int32_t x, const ejq_rq *q, int32_t output_offset, int32_t act_min, int32_t act_max)
{
    return ejq_requantize_s8(x, q->multiplier, q->m2, output_offset, act_min, act_max);
}

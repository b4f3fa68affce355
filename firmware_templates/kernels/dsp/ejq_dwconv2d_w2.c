/* DSP depthwise convolution (depth multiplier 1), 2-bit weights. */
#include "ejq_dsp_dw.h"

void ejq_dwconv2d_s8_w2(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out)
{
    ejq_dsp_dw_run(p, run, in, out, 2u, 0u);
}

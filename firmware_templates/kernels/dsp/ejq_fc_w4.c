/* DSP fully connected layer, 4-bit weights. */
#include "ejq_dsp_fc.h"

void ejq_fc_s8_w4(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out)
{
    ejq_dsp_fc_run(p, run, in, out, 4u);
}

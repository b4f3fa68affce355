/* DSP fully connected layer, 2-bit weights. */
#include "ejq_dsp_fc.h"

void ejq_fc_s8_w2(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out)
{
    ejq_dsp_fc_run(p, run, in, out, 2u);
}

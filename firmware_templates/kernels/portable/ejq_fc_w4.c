/* Portable fully connected layer, 4-bit weights. */
#include "ejq_fc_impl.h"

void ejq_fc_s8_w4(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out)
{
    ejq_fc_run(p, run, in, out, 4u);
}

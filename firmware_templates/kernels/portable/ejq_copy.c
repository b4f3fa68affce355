/* Portable byte copy between two tensors placed apart (a reshape that could not alias). */
#include "ejq_kernels.h"

void ejq_copy_s8(const int8_t *in, int8_t *out, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; ++i) {
        out[i] = in[i];
    }
}

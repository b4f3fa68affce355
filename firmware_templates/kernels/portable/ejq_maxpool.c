/* Portable max pooling: the largest in-bounds element of each window, clamped. */
#include "ejq_kernels.h"
#include "ejq_portable.h"

void ejq_maxpool_s8(const ejq_pool_params *p, const int8_t *in, int8_t *out)
{
    const int32_t in_w = p->in_w;
    const int32_t channels = p->channels;
    int32_t oy;
    for (oy = 0; oy < (int32_t)p->out_h; ++oy) {
        const int32_t y0 = oy * (int32_t)p->stride_h - (int32_t)p->pad_top;
        int32_t ky_lo, ky_hi, ox;
        ejq_tap_range(y0, p->in_h, p->kernel_h, &ky_lo, &ky_hi);
        for (ox = 0; ox < (int32_t)p->out_w; ++ox) {
            const int32_t x0 = ox * (int32_t)p->stride_w - (int32_t)p->pad_left;
            int8_t *dst = out + (oy * (int32_t)p->out_w + ox) * channels;
            int32_t kx_lo, kx_hi, c;
            ejq_tap_range(x0, in_w, p->kernel_w, &kx_lo, &kx_hi);
            for (c = 0; c < channels; ++c) {
                int32_t best = -128;  /* a window with no in-bounds element clamps to act_min */
                int32_t ky, kx;
                for (ky = ky_lo; ky < ky_hi; ++ky) {
                    for (kx = kx_lo; kx < kx_hi; ++kx) {
                        const int32_t v = in[((y0 + ky) * in_w + x0 + kx) * channels + c];
                        best = v > best ? v : best;
                    }
                }
                best = best < p->act_min ? p->act_min : best;
                best = best > p->act_max ? p->act_max : best;
                dst[c] = (int8_t)best;
            }
        }
    }
}

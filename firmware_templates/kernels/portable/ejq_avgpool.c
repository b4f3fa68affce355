/* Portable average pooling: TFLite's rounded mean over the in-bounds elements, clamped. */
#include "ejq_kernels.h"
#include "ejq_portable.h"

void ejq_avgpool_s8(const ejq_pool_params *p, const int8_t *in, int8_t *out)
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
            int32_t kx_lo, kx_hi, count, c;
            ejq_tap_range(x0, in_w, p->kernel_w, &kx_lo, &kx_hi);
            count = (ky_hi - ky_lo) * (kx_hi - kx_lo);
            for (c = 0; c < channels; ++c) {
                int32_t total = 0;
                int32_t mean = 0;  /* a window with no in-bounds element averages to 0 (as the reference) */
                int32_t ky, kx;
                for (ky = ky_lo; ky < ky_hi; ++ky) {
                    for (kx = kx_lo; kx < kx_hi; ++kx) {
                        total += in[((y0 + ky) * in_w + x0 + kx) * channels + c];
                    }
                }
                if (count > 0) {
                    /* round half away from zero; C99 division truncates toward zero */
                    mean = (total > 0 ? total + count / 2 : total - count / 2) / count;
                }
                mean = mean < p->act_min ? p->act_min : mean;
                mean = mean > p->act_max ? p->act_max : mean;
                dst[c] = (int8_t)mean;
            }
        }
    }
}

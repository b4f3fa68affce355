/* Portable convolution over one weight run; instantiated per bit-width by ejq_conv2d_w*.c. */
#ifndef EJQ_CONV2D_IMPL_H
#define EJQ_CONV2D_IMPL_H

#include "ejq_fixedpoint.h"
#include "ejq_kernels.h"
#include "ejq_portable.h"

static inline void ejq_conv2d_run(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in,
                                  int8_t *out, uint32_t bits)
{
    const int32_t in_w = p->in_w;
    const int32_t in_c = p->in_c;
    const int32_t kernel_w = p->kernel_w;
    int32_t oy;
    for (oy = 0; oy < (int32_t)p->out_h; ++oy) {
        const int32_t y0 = oy * (int32_t)p->stride_h - (int32_t)p->pad_top;
        int32_t ky_lo, ky_hi, ox;
        ejq_tap_range(y0, p->in_h, p->kernel_h, &ky_lo, &ky_hi);
        for (ox = 0; ox < (int32_t)p->out_w; ++ox) {
            const int32_t x0 = ox * (int32_t)p->stride_w - (int32_t)p->pad_left;
            int8_t *dst = out + ((oy * (int32_t)p->out_w + ox) * (int32_t)p->out_c + (int32_t)run->start);
            const uint8_t *row = run->weights;
            int32_t kx_lo, kx_hi, span, c;
            ejq_tap_range(x0, in_w, kernel_w, &kx_lo, &kx_hi);
            span = (kx_hi - kx_lo) * in_c;  /* one kernel row's in-bounds taps are contiguous in memory */
            for (c = 0; c < (int32_t)run->count; ++c, row += run->row_bytes) {
                int32_t acc = run->bias[c];
                int32_t ky;
                for (ky = ky_lo; ky < ky_hi && span > 0; ++ky) {
                    const int8_t *src = in + (((y0 + ky) * in_w + x0 + kx_lo) * in_c);
                    const uint32_t j = (uint32_t)((ky * kernel_w + kx_lo) * in_c);
                    acc += ejq_dot(row, j, src, (uint32_t)span, p->input_offset, bits);
                }
                dst[c] = ejq_requantize_s8(acc, run->multiplier[c], run->shift[c], p->output_offset, p->act_min,
                                           p->act_max);
            }
        }
    }
}

static inline void ejq_dwconv2d_run(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in,
                                    int8_t *out, uint32_t bits)
{
    const int32_t in_w = p->in_w;
    const int32_t channels = p->in_c;
    const int32_t kernel_w = p->kernel_w;
    int32_t oy;
    for (oy = 0; oy < (int32_t)p->out_h; ++oy) {
        const int32_t y0 = oy * (int32_t)p->stride_h - (int32_t)p->pad_top;
        int32_t ky_lo, ky_hi, ox;
        ejq_tap_range(y0, p->in_h, p->kernel_h, &ky_lo, &ky_hi);
        for (ox = 0; ox < (int32_t)p->out_w; ++ox) {
            const int32_t x0 = ox * (int32_t)p->stride_w - (int32_t)p->pad_left;
            int8_t *dst = out + ((oy * (int32_t)p->out_w + ox) * channels + (int32_t)run->start);
            const int8_t *base = in + (int32_t)run->start;
            const uint8_t *row = run->weights;
            int32_t kx_lo, kx_hi, c;
            ejq_tap_range(x0, in_w, kernel_w, &kx_lo, &kx_hi);
            for (c = 0; c < (int32_t)run->count; ++c, row += run->row_bytes) {
                int32_t acc = run->bias[c];
                int32_t ky, kx;
                for (ky = ky_lo; ky < ky_hi; ++ky) {
                    for (kx = kx_lo; kx < kx_hi; ++kx) {
                        const int32_t x = base[((y0 + ky) * in_w + x0 + kx) * channels + c];
                        acc += ejq_weight_at(row, (uint32_t)(ky * kernel_w + kx), bits) * (x + p->input_offset);
                    }
                }
                dst[c] = ejq_requantize_s8(acc, run->multiplier[c], run->shift[c], p->output_offset, p->act_min,
                                           p->act_max);
            }
        }
    }
}

#endif /* EJQ_CONV2D_IMPL_H */

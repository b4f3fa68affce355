/* Portable convolution over one weight run; instantiated per bit-width by ejq_conv2d_w*.c. */
#ifndef EJQ_CONV2D_IMPL_H
#define EJQ_CONV2D_IMPL_H

#include "ejq_fixedpoint.h"
#include "ejq_kernels.h"
#include "ejq_portable.h"

static inline void ejq_conv2d_run(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in,
                                  int8_t *out, uint32_t bits)
{
    const ejq_window_geometry *g = &p->geometry;
    const int32_t in_c = p->in_c;
    int32_t oy, ox;
    for (oy = 0; oy < (int32_t)g->out_h; ++oy) {
        for (ox = 0; ox < (int32_t)g->out_w; ++ox) {
            const ejq_window w = ejq_window_at(g, oy, ox);
            /* one kernel row's in-bounds taps are contiguous in memory and in the weight row */
            const int32_t span = (w.kx_hi - w.kx_lo) * in_c;
            int8_t *dst = out + ((oy * (int32_t)g->out_w + ox) * (int32_t)p->out_c + (int32_t)run->start);
            const int32_t count = run->count;
            int32_t c;
            /* output channels in pairs: each input element is read once for two weight rows */
            for (c = 0; c < count; c += 2) {
                const int32_t c1 = c + 1 < count ? c + 1 : c;  /* an odd last channel pairs with itself */
                const uint8_t *row = run->weights + (uint32_t)c * run->row_bytes;
                const uint8_t *row1 = row + (uint32_t)(c1 - c) * run->row_bytes;
                int32_t acc[2];
                int32_t ky;
                acc[0] = run->bias[c];
                acc[1] = run->bias[c1];
                for (ky = w.ky_lo; ky < w.ky_hi && span > 0; ++ky) {
                    const int8_t *src = in + (((w.y0 + ky) * (int32_t)g->in_w + w.x0 + w.kx_lo) * in_c);
                    const uint32_t j = (uint32_t)((ky * (int32_t)g->kernel_w + w.kx_lo) * in_c);
                    ejq_dot2(row, row1, j, src, (uint32_t)span, p->input_offset, bits, acc);
                }
                dst[c] = ejq_requantize_s8(acc[0], run->multiplier[c], run->shift[c], p->output_offset, p->act_min,
                                           p->act_max);
                dst[c1] = ejq_requantize_s8(acc[1], run->multiplier[c1], run->shift[c1], p->output_offset,
                                            p->act_min, p->act_max);
            }
        }
    }
}

static inline void ejq_dwconv2d_run(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in,
                                    int8_t *out, uint32_t bits)
{
    const ejq_window_geometry *g = &p->geometry;
    const int32_t channels = p->in_c;
    const int8_t *base = in + run->start;
    int32_t oy, ox;
    for (oy = 0; oy < (int32_t)g->out_h; ++oy) {
        for (ox = 0; ox < (int32_t)g->out_w; ++ox) {
            const ejq_window w = ejq_window_at(g, oy, ox);
            int8_t *dst = out + ((oy * (int32_t)g->out_w + ox) * channels + (int32_t)run->start);
            const uint8_t *row = run->weights;
            int32_t c;
            for (c = 0; c < (int32_t)run->count; ++c, row += run->row_bytes) {
                int32_t acc = run->bias[c];
                int32_t ky, kx;
                for (ky = w.ky_lo; ky < w.ky_hi; ++ky) {
                    for (kx = w.kx_lo; kx < w.kx_hi; ++kx) {
                        const int32_t x = base[((w.y0 + ky) * (int32_t)g->in_w + w.x0 + kx) * channels + c];
                        const uint32_t j = (uint32_t)(ky * (int32_t)g->kernel_w + kx);
                        acc += ejq_weight_at(row, j, bits) * (x + p->input_offset);
                    }
                }
                dst[c] = ejq_requantize_s8(acc, run->multiplier[c], run->shift[c], p->output_offset, p->act_min,
                                           p->act_max);
            }
        }
    }
}

#endif /* EJQ_CONV2D_IMPL_H */

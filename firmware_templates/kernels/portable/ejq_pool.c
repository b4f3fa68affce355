/*
 * Portable pooling. Max: the largest in-bounds element of each window. Average: TFLite's rounded
 * mean over the in-bounds elements. Both clamp to [act_min, act_max].
 */
#include "ejq_kernels.h"
#include "ejq_portable.h"

/* `average` is a constant at each call site below, so each function keeps only its own branch. */
static inline void ejq_pool_run(const ejq_pool_params *p, const int8_t *in, int8_t *out, int average)
{
    const ejq_window_geometry *g = &p->geometry;
    const int32_t channels = p->channels;
    int32_t oy, ox;
    for (oy = 0; oy < (int32_t)g->out_h; ++oy) {
        for (ox = 0; ox < (int32_t)g->out_w; ++ox) {
            const ejq_window w = ejq_window_at(g, oy, ox);
            const int32_t count = (w.ky_hi - w.ky_lo) * (w.kx_hi - w.kx_lo);
            int8_t *dst = out + (oy * (int32_t)g->out_w + ox) * channels;
            int32_t c;
            for (c = 0; c < channels; ++c) {
                int32_t best = -128;  /* an empty window (all padding) clamps to act_min */
                int32_t total = 0;
                int32_t value = 0;    /* ... and averages to 0, as the reference does */
                int32_t ky, kx;
                for (ky = w.ky_lo; ky < w.ky_hi; ++ky) {
                    for (kx = w.kx_lo; kx < w.kx_hi; ++kx) {
                        const int32_t v = in[((w.y0 + ky) * (int32_t)g->in_w + w.x0 + kx) * channels + c];
                        if (average) {
                            total += v;
                        } else {
                            best = v > best ? v : best;
                        }
                    }
                }
                if (!average) {
                    value = best;
                } else if (count > 0) {
                    /* round half away from zero; C99 division truncates toward zero */
                    value = (total > 0 ? total + count / 2 : total - count / 2) / count;
                }
                value = value < p->act_min ? p->act_min : value;
                value = value > p->act_max ? p->act_max : value;
                dst[c] = (int8_t)value;
            }
        }
    }
}

void ejq_maxpool_s8(const ejq_pool_params *p, const int8_t *in, int8_t *out)
{
    ejq_pool_run(p, in, out, 0);
}

void ejq_avgpool_s8(const ejq_pool_params *p, const int8_t *in, int8_t *out)
{
    ejq_pool_run(p, in, out, 1);
}

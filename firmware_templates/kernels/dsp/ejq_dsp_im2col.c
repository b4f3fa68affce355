/* One column of a convolution window (declared in ejq_dsp_conv.h), shared by the DSP convolutions of every
   bit-width. */
#include "ejq_dsp_conv.h"

void ejq_im2col(const ejq_conv_params *p, const int8_t *in, int32_t oy, int32_t ox, uint32_t col, uint32_t *columns,
                int8_t *gather)
{
    const ejq_window_geometry *g = &p->geometry;
    const ejq_window w = ejq_window_at(g, oy, ox);
    const uint32_t in_c = p->in_c;
    const uint32_t row_k = (uint32_t)g->kernel_w * in_c;
    const uint32_t k = (uint32_t)g->kernel_h * row_k;
    const uint32_t k4 = ejq_k4(k);
    const uint32_t offset2 = ((uint32_t)p->input_offset & 0xFFFFu) * 0x00010001u;
    int32_t ky;
    if (in_c % 4u == 0u) {
        /* every kernel row, and its in-bounds span, is a whole number of 4-input blocks */
        uint32_t *block = columns;
        for (ky = 0; ky < (int32_t)g->kernel_h; ++ky) {
            const uint32_t lo = (uint32_t)w.kx_lo * in_c / 4u;
            uint32_t hi = (uint32_t)w.kx_hi * in_c / 4u;
            const uint32_t end = row_k / 4u;
            uint32_t b = 0;
            if (ky < w.ky_lo || ky >= w.ky_hi) {
                hi = 0u;
            }
            for (; b < lo && b < end; ++b, block += 4) {
                block[col] = 0u;
                block[2u + col] = 0u;
            }
            if (b < hi) {
                const int8_t *src = in + (((w.y0 + ky) * (int32_t)g->in_w + w.x0 + w.kx_lo) * (int32_t)in_c);
                for (; b < hi; ++b, block += 4, src += 4) {
                    ejq_put_block(block, col, ejq_load_u32(src), offset2);
                }
            }
            for (; b < end; ++b, block += 4) {
                block[col] = 0u;
                block[2u + col] = 0u;
            }
        }
    } else {
        /* gather the window as int8 (padding = the zero point), then convert whole blocks */
        int8_t *dst = gather + col * k4;
        const int8_t zero_point = (int8_t)(-p->input_offset);
        uint32_t i;
        for (i = 0; i < k4; ++i) {
            dst[i] = zero_point;
        }
        for (ky = w.ky_lo; ky < w.ky_hi; ++ky) {
            const int8_t *src = in + (((w.y0 + ky) * (int32_t)g->in_w + w.x0 + w.kx_lo) * (int32_t)in_c);
            int8_t *row = dst + (uint32_t)ky * row_k + (uint32_t)w.kx_lo * in_c;
            const uint32_t span = (uint32_t)(w.kx_hi - w.kx_lo) * in_c;
            for (i = 0; i < span; ++i) {
                row[i] = src[i];
            }
        }
        for (i = 0; i < k4 / 4u; ++i) {
            ejq_put_block(columns + 4u * i, col, ejq_load_u32(dst + 4u * i), offset2);
        }
    }
}

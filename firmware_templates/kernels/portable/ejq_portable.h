/*
 * Helpers shared by the portable kernels: window bounds and inner products over packed rows.
 *
 * `bits` is a compile-time constant at every call site (each kernel file instantiates one
 * bit-width), so after inlining the compiler keeps only one branch: no per-element branching
 * on the bit-width, and sub-byte weights are unpacked on the fly, a whole byte at a time.
 */
#ifndef EJQ_PORTABLE_H
#define EJQ_PORTABLE_H

#include <stdint.h>

#include "ejq_kernels.h"

/* One output pixel's window: its origin on the input and the [lo, hi) kernel taps inside the input. */
typedef struct {
    int32_t y0, x0;
    int32_t ky_lo, ky_hi;
    int32_t kx_lo, kx_hi;
} ejq_window;

/* [lo, hi) of kernel taps along one axis that fall inside the input, for window origin `origin`. */
static inline void ejq_tap_range(int32_t origin, int32_t size, int32_t kernel, int32_t *lo, int32_t *hi)
{
    *lo = origin < 0 ? -origin : 0;
    *hi = size - origin < kernel ? size - origin : kernel;
    if (*hi < *lo) {
        *hi = *lo;
    }
}

static inline ejq_window ejq_window_at(const ejq_window_geometry *g, int32_t oy, int32_t ox)
{
    ejq_window w;
    w.y0 = oy * (int32_t)g->stride_h - (int32_t)g->pad_top;
    w.x0 = ox * (int32_t)g->stride_w - (int32_t)g->pad_left;
    ejq_tap_range(w.y0, g->in_h, g->kernel_h, &w.ky_lo, &w.ky_hi);
    ejq_tap_range(w.x0, g->in_w, g->kernel_w, &w.kx_lo, &w.kx_hi);
    return w;
}

/* Sign-extend the low `bits` bits of v (two's complement), without implementation-defined casts. */
static inline int32_t ejq_sign_extend(uint32_t v, uint32_t bits)
{
    const uint32_t sign = 1u << (bits - 1u);
    return (int32_t)(v ^ sign) - (int32_t)sign;
}

/* Weight j of a packed row. */
static inline int32_t ejq_weight_at(const uint8_t *row, uint32_t j, uint32_t bits)
{
    const uint32_t per_byte = 8u / bits;
    const uint32_t field = (uint32_t)row[j / per_byte] >> ((j % per_byte) * bits);
    return ejq_sign_extend(field & ((1u << bits) - 1u), bits);
}

/*
 * Inner products of two packed rows with the same inputs:
 *     acc[0] += sum over i < n of weight(row0, j + i) * (x[i] + x_offset), acc[1] likewise for row1.
 * Each input element is loaded and offset once for two output channels (for an odd last channel,
 * pass the same row twice). Partial sums stay within the bound the exporter proves
 * (edgejpq.artifact.accumulator_bound).
 */
static inline void ejq_dot2(const uint8_t *row0, const uint8_t *row1, uint32_t j, const int8_t *x, uint32_t n,
                            int32_t x_offset, uint32_t bits, int32_t acc[2])
{
    int32_t a0 = 0, a1 = 0;
    uint32_t i = 0;
    if (bits == 8u) {
        const uint8_t *w0 = row0 + j;
        const uint8_t *w1 = row1 + j;
        for (; i < n; ++i) {
            const int32_t v = (int32_t)x[i] + x_offset;
            a0 += ejq_sign_extend(w0[i], 8u) * v;
            a1 += ejq_sign_extend(w1[i], 8u) * v;
        }
    } else {
        const uint32_t per_byte = 8u / bits;
        const uint32_t mask = (1u << bits) - 1u;
        const uint8_t *w0;
        const uint8_t *w1;
        for (; i < n && (j + i) % per_byte != 0u; ++i) {
            const int32_t v = (int32_t)x[i] + x_offset;
            a0 += ejq_weight_at(row0, j + i, bits) * v;
            a1 += ejq_weight_at(row1, j + i, bits) * v;
        }
        w0 = row0 + (j + i) / per_byte;
        w1 = row1 + (j + i) / per_byte;
        for (; i + per_byte <= n; i += per_byte, ++w0, ++w1) {
            const uint32_t p0 = *w0;
            const uint32_t p1 = *w1;
            uint32_t k;
            for (k = 0; k < per_byte; ++k) {
                const int32_t v = (int32_t)x[i + k] + x_offset;
                a0 += ejq_sign_extend((p0 >> (k * bits)) & mask, bits) * v;
                a1 += ejq_sign_extend((p1 >> (k * bits)) & mask, bits) * v;
            }
        }
        for (; i < n; ++i) {
            const int32_t v = (int32_t)x[i] + x_offset;
            a0 += ejq_weight_at(row0, j + i, bits) * v;
            a1 += ejq_weight_at(row1, j + i, bits) * v;
        }
    }
    acc[0] += a0;
    acc[1] += a1;
}

#endif /* EJQ_PORTABLE_H */

/*
 * Test harness for firmware_templates/kernels/ejq_fixedpoint.h (tests/test_packing_fixedpoint.py).
 * Reads records from stdin until EOF, each (little-endian, packed):
 *     int32 a, int32 b, int32 exponent (0..31), int32 shift (-31..30), int64 wide (|wide| < 2^33),
 *     int32 offset, int32 lo, int32 hi
 * and writes for each the int32 results
 *     srdhm(a, b), rounding_divide_by_pot(a, exponent), mbqm(a, |b|, shift), mbqm64(wide, |b|, shift),
 *     floor_shift(a, exponent), offset_clamp_s8(a, offset, lo, hi), mbqm_single(a, |b|, shift)
 * in the host's byte order (the test runs on the same host).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ejq_fixedpoint.h"

typedef struct {
    int32_t a, b, exponent, shift;
    int64_t wide;
    int32_t offset, lo, hi;
} record;

static int32_t non_negative(int32_t b)
{
    if (b >= 0) {
        return b;
    }
    return b == INT32_MIN ? INT32_MAX : -b;
}

int main(void)
{
    unsigned char raw[36];
    while (fread(raw, 1, sizeof raw, stdin) == sizeof raw) {
        record r;
        int32_t out[7];
        memcpy(&r.a, raw + 0, 4);
        memcpy(&r.b, raw + 4, 4);
        memcpy(&r.exponent, raw + 8, 4);
        memcpy(&r.shift, raw + 12, 4);
        memcpy(&r.wide, raw + 16, 8);
        memcpy(&r.offset, raw + 24, 4);
        memcpy(&r.lo, raw + 28, 4);
        memcpy(&r.hi, raw + 32, 4);
        out[0] = ejq_srdhm(r.a, r.b);
        out[1] = ejq_rounding_divide_by_pot(r.a, r.exponent);
        out[2] = ejq_mbqm(r.a, non_negative(r.b), r.shift);
        out[3] = ejq_mbqm64(r.wide, non_negative(r.b), r.shift);
        out[4] = ejq_floor_shift(r.a, r.exponent);
        out[5] = ejq_offset_clamp_s8(r.a, r.offset, r.lo, r.hi);
        out[6] = ejq_mbqm_single(r.a, non_negative(r.b), r.shift);
        fwrite(out, sizeof out[0], 7, stdout);
    }
    return ferror(stdout) ? 1 : 0;
}

/* DSP convolution, 2-bit weights: quads of output channels share one byte per input. */
#include "ejq_dsp_conv.h"

/*
 * Inner product of a 2-bit quad group with both columns (see ejq_dsp_conv.h): per block of 4 inputs
 * one word of weights, two LDRD of inputs, per byte pair one SXTB16 (S) and three masks (T2, T4, T6),
 * each against both columns: 28 instructions for 32 MACs, plus 3 for the loop. All 14 registers
 * are live, hence assembly: r4-r11 the 8 sums, r2 the weights, r3 the extracted pairs, r12/lr the
 * inputs of column 0/1; the end of the inputs sits on the stack.
 */
#define EJQ_UNUSED __attribute__((unused))
__attribute__((naked)) void ejq_mm_w2_quad(EJQ_UNUSED const uint8_t *w, EJQ_UNUSED const uint32_t *x,
                                           EJQ_UNUSED uint32_t blocks, EJQ_UNUSED int32_t acc[8])
{
    __asm__ volatile(
        "push {r4-r11, lr}\n"
        "add r2, r1, r2, lsl #4\n"         /* end of the inputs */
        "push {r2, r3}\n"
        "ldm r3, {r4-r11}\n"
        "1:\n"
        "ldr r2, [r0], #4\n"
        "ldrd r12, lr, [r1], #8\n"         /* (x0, x2) of column 0 and 1 */
        "sxtb16 r3, r2\n"
        "smlad r4, r3, r12, r4\n"
        "smlad r5, r3, lr, r5\n"
        "and r3, r2, #0x00030003\n"
        "smlad r6, r3, r12, r6\n"
        "smlad r7, r3, lr, r7\n"
        "and r3, r2, #0x000F000F\n"
        "smlad r8, r3, r12, r8\n"
        "smlad r9, r3, lr, r9\n"
        "and r3, r2, #0x003F003F\n"
        "smlad r10, r3, r12, r10\n"
        "smlad r11, r3, lr, r11\n"
        "lsr r2, r2, #8\n"                 /* bytes 1 and 3 */
        "ldrd r12, lr, [r1], #8\n"         /* (x1, x3) of column 0 and 1 */
        "sxtb16 r3, r2\n"
        "smlad r4, r3, r12, r4\n"
        "smlad r5, r3, lr, r5\n"
        "and r3, r2, #0x00030003\n"
        "smlad r6, r3, r12, r6\n"
        "smlad r7, r3, lr, r7\n"
        "and r3, r2, #0x000F000F\n"
        "smlad r8, r3, r12, r8\n"
        "smlad r9, r3, lr, r9\n"
        "and r3, r2, #0x003F003F\n"
        "smlad r10, r3, r12, r10\n"
        "smlad r11, r3, lr, r11\n"
        "ldr r3, [sp]\n"
        "cmp r1, r3\n"
        "bne 1b\n"
        "pop {r2, r3}\n"
        "stm r3, {r4-r11}\n"
        "pop {r4-r11, pc}\n");
}

void ejq_conv2d_s8_w2(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out)
{
    ejq_dsp_conv_run(p, run, in, out, 2u);
}

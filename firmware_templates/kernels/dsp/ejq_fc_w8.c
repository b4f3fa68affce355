/* DSP fully connected layer, 8-bit weights. */
#include "ejq_dsp_fc.h"

/*
 * Row kernels (ejq_dsp_fc.h): per block of 4 inputs one LDRD of the column's pair of words, then per
 * row one LDR of 4 weights, two SXTB16 and two SMLAD; four blocks an iteration (after 1 and 2
 * blocks for the remainder of blocks / 4). Five rows need 14 registers, hence assembly: r4-r8 the sums, r0 row 0 and r2 row 3
 * (= row 0 + 3 stride) post-incremented, r1 the stride (rows 1, 2 and 4 are [r0, r1],
 * [r0, r1, lsl #1] and [r2, r1]), r3 the column, lr its end, r9/r10 the column's (x0, x2) and
 * (x1, x3) words, r11 the weights, r12 one extended pair. The column is word-aligned and r3 moves
 * by 8 bytes, so every LDRD is on a word-aligned address; the weight loads are LDR (any alignment).
 */
#define EJQ_UNUSED __attribute__((unused))

#define EJQ_FC_ROW(load, acc)              \
    load "\n"                              \
    "sxtb16 r12, r11\n"                    \
    "smlad " acc ", r12, r9, " acc "\n"    \
    "sxtb16 r12, r11, ror #8\n"            \
    "smlad " acc ", r12, r10, " acc "\n"

#define EJQ_FC_BLOCK4                                  \
    "ldrd r9, r10, [r3], #8\n"                         \
    EJQ_FC_ROW("ldr r11, [r0, r1]", "r5")              \
    EJQ_FC_ROW("ldr r11, [r0, r1, lsl #1]", "r6")      \
    EJQ_FC_ROW("ldr r11, [r2], #4", "r7")              \
    EJQ_FC_ROW("ldr r11, [r0], #4", "r4")

#define EJQ_FC_BLOCK5                                  \
    "ldrd r9, r10, [r3], #8\n"                         \
    EJQ_FC_ROW("ldr r11, [r0, r1]", "r5")              \
    EJQ_FC_ROW("ldr r11, [r0, r1, lsl #1]", "r6")      \
    EJQ_FC_ROW("ldr r11, [r2, r1]", "r8")              \
    EJQ_FC_ROW("ldr r11, [r2], #4", "r7")              \
    EJQ_FC_ROW("ldr r11, [r0], #4", "r4")

#define EJQ_FC_KERNEL(regs, block)                                                             \
    "push {r4-r11, lr}\n"                                                                      \
    "push {r0}\n"                                                                              \
    "add r12, r0, #16\n"                                                                       \
    "ldm r12, {" regs "}\n"        /* the sums (word-aligned struct member) */                 \
    "ldr r1, [r0, #4]\n"           /* stride */                                                \
    "ldr r3, [r0, #8]\n"           /* column */                                                \
    "ldr lr, [r0, #12]\n"          /* its end */                                               \
    "ldr r0, [r0]\n"               /* row 0 */                                                 \
    "add r2, r1, r1, lsl #1\n"                                                                 \
    "add r2, r0, r2\n"             /* row 3 */                                                 \
    "sub r12, lr, r3\n"           /* 8 bytes a block */                                        \
    "tst r12, #8\n"                /* an odd number of blocks: one first */                    \
    "beq 1f\n"                                                                                 \
    block                                                                                      \
    "sub r12, lr, r3\n"                                                                        \
    "1:\n"                                                                                     \
    "tst r12, #16\n"               /* then 2 if the rest is not a multiple of 4 */             \
    "beq 2f\n"                                                                                 \
    block                                                                                      \
    block                                                                                      \
    "2:\n"                                                                                     \
    "cmp r3, lr\n"                                                                             \
    "beq 3f\n"                                                                                 \
    "4:\n"                         /* then 4 an iteration */                                   \
    block                                                                                      \
    block                                                                                      \
    block                                                                                      \
    block                                                                                      \
    "cmp r3, lr\n"                                                                             \
    "bne 4b\n"                                                                                 \
    "3:\n"                                                                                     \
    "pop {r12}\n"                                                                              \
    "add r12, r12, #16\n"                                                                      \
    "stm r12, {" regs "}\n"                                                                    \
    "pop {r4-r11, pc}\n"

__attribute__((naked)) void ejq_fc_w8x5(EJQ_UNUSED ejq_fc_rows *r)
{
    __asm__ volatile(EJQ_FC_KERNEL("r4-r8", EJQ_FC_BLOCK5));
}

__attribute__((naked)) void ejq_fc_w8x4(EJQ_UNUSED ejq_fc_rows *r)
{
    __asm__ volatile(EJQ_FC_KERNEL("r4-r7", EJQ_FC_BLOCK4));
}

void ejq_fc_s8_w8(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out)
{
    ejq_dsp_fc_run(p, run, in, out, 8u);
}

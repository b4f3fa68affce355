/* DSP fully connected layer, 4-bit weights. */
#include "ejq_dsp_fc.h"

/*
 * Three (or two) 4-bit pair groups (six or four channels, ejq_dsp_fc.h) against the column: per block of 4 inputs
 * one LDRD of the column's (x0, x2), (x1, x3) words, then per group one LDR of its 4 bytes, two
 * SXTB16 (S), two masks (U) and four SMLAD; four blocks an iteration (after 1 and 2 blocks for
 * the remainder of blocks / 4).
 * All registers are in use, hence assembly: r4-r9 the sums (S, U of each group), r0 group 0
 * (post-incremented), r1 the group stride (groups 1 and 2 are [r0, r1] and [r0, r1, lsl #1]), r2
 * the mask 0x000F000F, r3 the column, r10/r11 its words, r12 the weights, lr one extracted pair;
 * the column's end on the stack. The column is word-aligned and r3 moves by 8 bytes, so every LDRD
 * is on a word-aligned address; the weight loads are LDR (any alignment).
 */
#define EJQ_UNUSED __attribute__((unused))

#define EJQ_FC_GROUP(load, s, u)           \
    load "\n"                              \
    "sxtb16 lr, r12\n"                     \
    "smlad " s ", lr, r10, " s "\n"        \
    "and lr, r12, r2\n"                    \
    "smlad " u ", lr, r10, " u "\n"        \
    "sxtb16 lr, r12, ror #8\n"             \
    "smlad " s ", lr, r11, " s "\n"        \
    "and lr, r2, r12, lsr #8\n"            \
    "smlad " u ", lr, r11, " u "\n"

#define EJQ_FC_W4_BLOCK                                    \
    "ldrd r10, r11, [r3], #8\n"                            \
    EJQ_FC_GROUP("ldr r12, [r0, r1]", "r6", "r7")          \
    EJQ_FC_GROUP("ldr r12, [r0, r1, lsl #1]", "r8", "r9")  \
    EJQ_FC_GROUP("ldr r12, [r0], #4", "r4", "r5")

#define EJQ_FC_W4X2_BLOCK                                  \
    "ldrd r10, r11, [r3], #8\n"                            \
    EJQ_FC_GROUP("ldr r12, [r0, r1]", "r6", "r7")          \
    EJQ_FC_GROUP("ldr r12, [r0], #4", "r4", "r5")

#define EJQ_FC_W4_KERNEL(regs, block)                                                          \
    "push {r4-r11, lr}\n"                                                                      \
    "ldr r12, [r0, #12]\n"       /* the column's end */                                        \
    "push {r0, r12}\n"           /* [sp]: r, [sp, #4]: the end */                              \
    "add r12, r0, #16\n"                                                                       \
    "ldm r12, {" regs "}\n"      /* the sums (word-aligned struct member) */                   \
    "ldr r1, [r0, #4]\n"         /* group stride */                                            \
    "ldr r3, [r0, #8]\n"         /* column */                                                  \
    "ldr r0, [r0]\n"             /* group 0 */                                                 \
    "mov r2, #0x000F000F\n"                                                                    \
    "ldr r12, [sp, #4]\n"                                                                      \
    "sub r12, r12, r3\n"         /* 8 bytes a block */                                         \
    "tst r12, #8\n"              /* an odd number of blocks: one first */                      \
    "beq 1f\n"                                                                                 \
    block                                                                                      \
    "ldr r12, [sp, #4]\n"                                                                      \
    "sub r12, r12, r3\n"                                                                       \
    "1:\n"                                                                                     \
    "tst r12, #16\n"             /* then 2 if the rest is not a multiple of 4 */               \
    "beq 2f\n"                                                                                 \
    block                                                                                      \
    block                                                                                      \
    "2:\n"                                                                                     \
    "ldr r12, [sp, #4]\n"                                                                      \
    "cmp r3, r12\n"                                                                            \
    "beq 3f\n"                                                                                 \
    "4:\n"                       /* then 4 an iteration */                                     \
    block                                                                                      \
    block                                                                                      \
    block                                                                                      \
    block                                                                                      \
    "ldr r12, [sp, #4]\n"                                                                      \
    "cmp r3, r12\n"                                                                            \
    "bne 4b\n"                                                                                 \
    "3:\n"                                                                                     \
    "pop {r0, r12}\n"                                                                          \
    "add r0, r0, #16\n"                                                                        \
    "stm r0, {" regs "}\n"                                                                     \
    "pop {r4-r11, pc}\n"

__attribute__((naked)) void ejq_fc_w4x3(EJQ_UNUSED ejq_fc_rows *r)
{
    __asm__ volatile(EJQ_FC_W4_KERNEL("r4-r9", EJQ_FC_W4_BLOCK));
}

__attribute__((naked)) void ejq_fc_w4x2(EJQ_UNUSED ejq_fc_rows *r)
{
    __asm__ volatile(EJQ_FC_W4_KERNEL("r4-r7", EJQ_FC_W4X2_BLOCK));
}

void ejq_fc_s8_w4(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out)
{
    ejq_dsp_fc_run(p, run, in, out, 4u);
}

/* DSP fully connected layer, 2-bit weights. */
#include "ejq_dsp_fc.h"

/*
 * Two 2-bit quad groups (eight channels, ejq_dsp_fc.h) against the column: per block of 4 inputs,
 * for each half (bytes 0 and 2 against the column's (x0, x2) word, bytes 1 and 3 against (x1, x3))
 * and each quad one SXTB16 (S) and three masks (T2, T4, T6), each with one SMLAD; two blocks an
 * iteration (an odd first block alone). The sums need eight registers, hence assembly: r4-r7 and
 * r8-r11 the sums of quad 0 and 1, r0 quad 0 (post-incremented), r1 the quad stride (quad 1 is
 * [r0, r1]), r3 the column, r2 one of its words, r12 the weights, lr one extracted pair; the
 * column's end on the stack. The column's words and the weights are read with LDR (any alignment;
 * the column is word-aligned anyway).
 */
#define EJQ_UNUSED __attribute__((unused))

#define EJQ_FC_QUAD(s, t2, t4, t6)         \
    "sxtb16 lr, r12\n"                     \
    "smlad " s ", lr, r2, " s "\n"         \
    "and lr, r12, #0x00030003\n"           \
    "smlad " t2 ", lr, r2, " t2 "\n"       \
    "and lr, r12, #0x000F000F\n"           \
    "smlad " t4 ", lr, r2, " t4 "\n"       \
    "and lr, r12, #0x003F003F\n"           \
    "smlad " t6 ", lr, r2, " t6 "\n"

#define EJQ_FC_W2_BLOCK                          \
    "ldr r2, [r3], #8\n"        /* (x0, x2) */   \
    "ldr r12, [r0, r1]\n"                        \
    EJQ_FC_QUAD("r8", "r9", "r10", "r11")        \
    "ldr r12, [r0]\n"                            \
    EJQ_FC_QUAD("r4", "r5", "r6", "r7")          \
    "ldr r2, [r3, #-4]\n"       /* (x1, x3) */   \
    "ldr r12, [r0, r1]\n"                        \
    "lsr r12, r12, #8\n"        /* bytes 1, 3 */ \
    EJQ_FC_QUAD("r8", "r9", "r10", "r11")        \
    "ldr r12, [r0], #4\n"                        \
    "lsr r12, r12, #8\n"                         \
    EJQ_FC_QUAD("r4", "r5", "r6", "r7")

__attribute__((naked)) void ejq_fc_w2x2(EJQ_UNUSED ejq_fc_rows *r)
{
    __asm__ volatile(
        "push {r4-r11, lr}\n"
        "ldr r12, [r0, #12]\n"       /* the column's end */
        "push {r0, r12}\n"           /* [sp]: r, [sp, #4]: the end */
        "add r12, r0, #16\n"
        "ldm r12, {r4-r11}\n"        /* the sums (word-aligned struct member) */
        "ldr r1, [r0, #4]\n"         /* quad stride */
        "ldr r3, [r0, #8]\n"         /* column */
        "ldr r0, [r0]\n"             /* quad 0 */
        "ldr r12, [sp, #4]\n"
        "sub r12, r12, r3\n"
        "tst r12, #8\n"              /* an odd number of blocks: one first */
        "beq 2f\n"
        EJQ_FC_W2_BLOCK
        "ldr r12, [sp, #4]\n"
        "cmp r3, r12\n"
        "beq 3f\n"
        "2:\n"
        EJQ_FC_W2_BLOCK
        EJQ_FC_W2_BLOCK
        "ldr r12, [sp, #4]\n"
        "cmp r3, r12\n"
        "bne 2b\n"
        "3:\n"
        "pop {r0, r12}\n"
        "add r0, r0, #16\n"
        "stm r0, {r4-r11}\n"
        "pop {r4-r11, pc}\n");
}

void ejq_fc_s8_w2(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out)
{
    ejq_dsp_fc_run(p, run, in, out, 2u);
}

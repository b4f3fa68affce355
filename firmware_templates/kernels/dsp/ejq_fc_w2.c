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
 * the column is word-aligned anyway): a block's bytes 1 and 3 are read as the word one byte on, whose
 * bytes 0 and 2 they are (no shift; its byte 3, the next block's or, at a run's end, up to one byte
 * past the weights, is never used).
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

#define EJQ_FC_W2_BLOCK                                                \
    "ldr r2, [r3], #8\n"        /* (x0, x2) */                          \
    "ldr r12, [r0, r1]\n"                                               \
    EJQ_FC_QUAD("r8", "r9", "r10", "r11")                               \
    "ldr r12, [r0], #1\n"       /* r0 = the block + 1 */                \
    EJQ_FC_QUAD("r4", "r5", "r6", "r7")                                 \
    "ldr r2, [r3, #-4]\n"       /* (x1, x3) */                          \
    "ldr r12, [r0, r1]\n"       /* bytes 1, 3 in bytes 0, 2 (unaligned) */ \
    EJQ_FC_QUAD("r8", "r9", "r10", "r11")                               \
    "ldr r12, [r0], #3\n"       /* r0 = the next block */               \
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

/*
 * The 2-bit pair (two channels left over from the quads, codegen/dsp_layout.py) against the column,
 * a word of weights (two blocks) at a time: acc = {F, L} += {n . x, (n & 3) . x}. Per word one LDM of
 * the two blocks' column words (word-aligned: the column is, as the scratch is), one LDR of the
 * weights (any alignment: rows start anywhere) and, for each of the 4 column words, two ANDs of the
 * word shifted by 0, 4, 8, 12 (the masks in r1, r2) and two SMLADs; two words an iteration (an odd
 * first word alone). `x_end` - `x` is a whole, nonzero number of words (4 column words each); a
 * last, odd block is the caller's. r0 the weights, r3 the column, r12 its end, r4/r5 F/L, r6-r9 the
 * column words, r10 the weight word, r11 one extracted pair.
 */
#define EJQ_FC_PAIR2_HALF(sh, xw)               \
    "and r11, r1, r10" sh "\n"                  \
    "smlad r4, r11, " xw ", r4\n"               \
    "and r11, r2, r10" sh "\n"                  \
    "smlad r5, r11, " xw ", r5\n"

#define EJQ_FC_PAIR2_WORD                        \
    "ldm r3!, {r6-r9}\n"                         \
    "ldr r10, [r0], #4\n"                        \
    EJQ_FC_PAIR2_HALF("", "r6")                  \
    EJQ_FC_PAIR2_HALF(", lsr #4", "r7")          \
    EJQ_FC_PAIR2_HALF(", lsr #8", "r8")          \
    EJQ_FC_PAIR2_HALF(", lsr #12", "r9")

__attribute__((naked)) void ejq_fc_w2p(EJQ_UNUSED ejq_fc_rows *r)
{
    __asm__ volatile(
        "push {r4-r11, lr}\n"
        "push {r0}\n"
        "ldr r12, [r0, #12]\n"       /* the column's end */
        "ldr r3, [r0, #8]\n"         /* column */
        "ldrd r4, r5, [r0, #16]\n"   /* the sums (word-aligned struct member) */
        "ldr r0, [r0]\n"             /* weights */
        "mov r1, #0x000F000F\n"
        "mov r2, #0x00030003\n"
        "sub lr, r12, r3\n"
        "tst lr, #16\n"              /* an odd number of words: one first */
        "beq 2f\n"
        EJQ_FC_PAIR2_WORD
        "cmp r3, r12\n"
        "beq 3f\n"
        "2:\n"
        EJQ_FC_PAIR2_WORD
        EJQ_FC_PAIR2_WORD
        "cmp r3, r12\n"
        "bne 2b\n"
        "3:\n"
        "pop {r0}\n"
        "strd r4, r5, [r0, #16]\n"
        "pop {r4-r11, pc}\n");
}

void ejq_fc_s8_w2(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out)
{
    ejq_dsp_fc_run(p, run, in, out, 2u);
}

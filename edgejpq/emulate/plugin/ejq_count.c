/*
 * edgejpq instruction counter: a QEMU TCG plugin (API version 1, QEMU 7.2) for Cortex-M (Thumb-2).
 *
 * It counts the guest instructions executed between two marker functions of the firmware, split
 * into regions by a third one, by instruction class, so that edgejpq can report exact instruction
 * counts per layer and per inference and weight them into a cycle estimate (the weights per class
 * live in the target's YAML file, not here).
 *
 *   begin=ADDR   entered right before an inference: a new inference starts in region 0
 *   op=ADDR      entered after each op of the model: the next region starts
 *   end=ADDR     entered right after an inference: counting stops
 *   out=PATH     the text report written when QEMU exits
 *   blocks=PATH  optional, for kernel development: every translation block executed while counting,
 *                as lines "address instructions executions" (edgejpq.emulate.qemu.block_profile)
 *
 * Counting is per translation block: when a block is translated its instructions are classified
 * once (Thumb-2 encodings), and a callback at the start of every executed block adds the block's
 * class counts to the current region. A taken branch is seen when a block does not start where the
 * previous one fell through. The marker functions' own instructions are not counted. The counts
 * depend only on the instructions executed, so they repeat exactly from run to run.
 *
 * Report (text, one record a line):
 *   ejqcount 1
 *   counters insns load store load_multiple load_words store_multiple store_words multiply
 *            long_multiply divide branch taken_branch        (one line)
 *   region R c0 c1 ...     sums over all inferences of the instructions in region R
 *   inference I c0 c1 ...  the totals of inference I
 *   error TEXT             something unexpected (a marker inside a block, nested begin, ...)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

enum counter {
    C_INSNS,
    C_LOAD,            /* single loads (LDR, LDRB, LDRH, LDRSB, LDRSH, LDREX, literal) */
    C_STORE,           /* single stores */
    C_LOAD_MULTIPLE,   /* LDM, POP, LDRD: instructions ... */
    C_LOAD_WORDS,      /* ... and the words they load */
    C_STORE_MULTIPLE,  /* STM, PUSH, STRD */
    C_STORE_WORDS,
    C_MULTIPLY,        /* 32-bit result multiplies and DSP multiply-accumulates (MUL, MLA, SMLAD, SMLABB...) */
    C_LONG_MULTIPLY,   /* 64-bit result (SMULL, UMULL, SMLAL, UMLAL, SMLALD...) */
    C_DIVIDE,          /* SDIV, UDIV */
    C_BRANCH,          /* branch instructions (B, BL, BX, BLX, CBZ, CBNZ, MOV/ADD pc); a load into the PC
                          (POP {pc}, LDR pc, TBB) counts as the load it is, and like any branch adds a
                          taken branch when it changes the flow */
    C_TAKEN,           /* branches that were taken (counted at run time) */
    N_COUNTERS
};

static const char *const counter_names[N_COUNTERS] = {
    "insns", "load", "store", "load_multiple", "load_words", "store_multiple", "store_words",
    "multiply", "long_multiply", "divide", "branch", "taken_branch",
};

enum marker { M_NONE, M_BEGIN, M_OP, M_END };

struct block {
    struct block *next;  /* every block, for the optional profile */
    uint64_t executions;
    uint64_t vaddr;
    uint64_t fallthrough;  /* address after the block's last instruction */
    int marker;
    uint32_t counts[N_COUNTERS];
};

struct series {
    uint64_t (*rows)[N_COUNTERS];
    size_t n, cap;
};

static uint64_t marker_addr[4];
static char out_path[4096];
static char blocks_path[4096];
static struct block *all_blocks;
static int active;
static size_t region;
static const struct block *previous;
static struct series regions, inferences;
static char error_text[512];

static void fail(const char *text)
{
    if (error_text[0] == '\0') {
        snprintf(error_text, sizeof error_text, "%s", text);
    }
}

static uint64_t *row(struct series *s, size_t index)
{
    if (index >= s->cap) {
        size_t cap = s->cap ? s->cap : 64;
        while (cap <= index) {
            cap *= 2;
        }
        s->rows = realloc(s->rows, cap * sizeof *s->rows);
        if (s->rows == NULL) {
            fprintf(stderr, "ejq_count: out of memory\n");
            exit(70);
        }
        memset(s->rows + s->cap, 0, (cap - s->cap) * sizeof *s->rows);
        s->cap = cap;
    }
    if (index >= s->n) {
        s->n = index + 1;
    }
    return s->rows[index];
}

/* ------------------------------------------------------------------ Thumb-2 classification */

static unsigned popcount16(uint32_t v)
{
    unsigned n = 0;
    for (v &= 0xFFFFu; v != 0; v &= v - 1u) {
        ++n;
    }
    return n;
}

static void classify16(uint32_t hw, uint32_t *c)
{
    if ((hw & 0xFF00u) == 0x4700u) {                     /* BX, BLX (register) */
        c[C_BRANCH]++;
    } else if ((hw & 0xFC87u) == 0x4487u && (hw & 0x0300u) != 0x0100u) {  /* ADD/MOV pc, Rm */
        c[C_BRANCH]++;
    } else if ((hw & 0xF800u) == 0x4800u) {              /* LDR literal */
        c[C_LOAD]++;
    } else if ((hw & 0xF000u) == 0x5000u) {              /* load/store register offset */
        c[((hw >> 9) & 7u) < 3u ? C_STORE : C_LOAD]++;
    } else if ((hw & 0xE000u) == 0x6000u || (hw & 0xF000u) == 0x8000u || (hw & 0xF000u) == 0x9000u) {
        c[(hw & 0x0800u) ? C_LOAD : C_STORE]++;         /* LDR/STR(B/H) immediate, SP-relative */
    } else if ((hw & 0xFE00u) == 0xB400u) {              /* PUSH */
        c[C_STORE_MULTIPLE]++;
        c[C_STORE_WORDS] += popcount16(hw & 0x1FFu);
    } else if ((hw & 0xFE00u) == 0xBC00u) {              /* POP */
        c[C_LOAD_MULTIPLE]++;
        c[C_LOAD_WORDS] += popcount16(hw & 0x1FFu);
    } else if ((hw & 0xF800u) == 0xC000u) {              /* STMIA */
        c[C_STORE_MULTIPLE]++;
        c[C_STORE_WORDS] += popcount16(hw & 0xFFu);
    } else if ((hw & 0xF800u) == 0xC800u) {              /* LDMIA */
        c[C_LOAD_MULTIPLE]++;
        c[C_LOAD_WORDS] += popcount16(hw & 0xFFu);
    } else if ((hw & 0xF000u) == 0xD000u && ((hw >> 8) & 0xFu) < 0xEu) {  /* B<cond> */
        c[C_BRANCH]++;
    } else if ((hw & 0xF800u) == 0xE000u) {              /* B */
        c[C_BRANCH]++;
    } else if ((hw & 0xF500u) == 0xB100u) {              /* CBZ, CBNZ */
        c[C_BRANCH]++;
    } else if ((hw & 0xFFC0u) == 0x4340u) {              /* MULS */
        c[C_MULTIPLY]++;
    }
}

static void classify32(uint32_t hw1, uint32_t hw2, uint32_t *c)
{
    const uint32_t op1 = (hw1 >> 11) & 3u;
    if (op1 == 1u) {
        if ((hw1 & 0xFE40u) == 0xE800u) {                /* LDM/STM (incl. PUSH.W/POP.W) */
            const int load = (hw1 & 0x0010u) != 0;
            c[load ? C_LOAD_MULTIPLE : C_STORE_MULTIPLE]++;
            c[load ? C_LOAD_WORDS : C_STORE_WORDS] += popcount16(hw2);
        } else if ((hw1 & 0xFE40u) == 0xE840u) {         /* dual, exclusive, table branch */
            const uint32_t p_u = (hw1 >> 7) & 3u;
            const uint32_t op2 = (hw1 >> 4) & 3u;
            const int load = (hw1 & 0x0010u) != 0;
            if (p_u == 0u && op2 < 2u) {                 /* STREX, LDREX */
                c[load ? C_LOAD : C_STORE]++;
            } else if (p_u == 1u && op2 < 2u) {
                c[load ? C_LOAD : C_STORE]++;            /* TBB, TBH, LDREXB/H, STREXB/H */
            } else {                                     /* LDRD, STRD */
                c[load ? C_LOAD_MULTIPLE : C_STORE_MULTIPLE]++;
                c[load ? C_LOAD_WORDS : C_STORE_WORDS] += 2u;
            }
        }
        /* otherwise data processing (shifted register) or coprocessor: plain */
    } else if (op1 == 2u) {
        if (hw2 & 0x8000u) {                             /* branches and miscellaneous control */
            if (hw2 & 0x1000u) {                         /* B.W, BL */
                c[C_BRANCH]++;
            } else if ((hw2 & 0x4000u) == 0u && (hw1 & 0x0380u) != 0x0380u) {  /* B<cond>.W */
                c[C_BRANCH]++;
            }
        }
    } else if (op1 == 3u) {
        if ((hw1 & 0xFE00u) == 0xF800u) {                /* load/store single (and PLD hints) */
            c[(hw1 & 0x0010u) ? C_LOAD : C_STORE]++;
        } else if ((hw1 & 0xFF80u) == 0xFB00u) {         /* multiply, multiply-accumulate, DSP */
            c[C_MULTIPLY]++;
        } else if ((hw1 & 0xFF80u) == 0xFB80u) {         /* long multiply, divide */
            const uint32_t op = (hw1 >> 4) & 7u;
            if ((op == 1u || op == 3u) && ((hw2 >> 4) & 0xFu) == 0xFu) {
                c[C_DIVIDE]++;
            } else {
                c[C_LONG_MULTIPLY]++;
            }
        }
        /* data processing (register, incl. SXTB16/SXTAB16/UXTB16, SIMD add), coprocessor: plain */
    }
}

static void classify(const uint8_t *bytes, size_t size, uint32_t *c)
{
    const uint32_t hw1 = (uint32_t)bytes[0] | ((uint32_t)bytes[1] << 8);
    c[C_INSNS]++;
    if (size >= 4u) {
        const uint32_t hw2 = (uint32_t)bytes[2] | ((uint32_t)bytes[3] << 8);
        classify32(hw1, hw2, c);
    } else {
        classify16(hw1, c);
    }
}

/* ------------------------------------------------------------------ execution */

static void add_block(const struct block *b)
{
    uint64_t *r = row(&regions, region);
    uint64_t *t = row(&inferences, inferences.n - 1);
    int i;
    for (i = 0; i < N_COUNTERS; ++i) {
        r[i] += b->counts[i];
        t[i] += b->counts[i];
    }
}

static void count_taken(uint64_t next_vaddr)
{
    if (previous != NULL && previous->fallthrough != next_vaddr) {
        row(&regions, region)[C_TAKEN]++;
        row(&inferences, inferences.n - 1)[C_TAKEN]++;
    }
}

static void block_exec(unsigned int vcpu_index, void *userdata)
{
    struct block *b = userdata;
    (void)vcpu_index;
    switch (b->marker) {
    case M_BEGIN:
        if (active) {
            fail("begin marker entered inside a measured inference");
        }
        active = 1;
        region = 0;
        row(&inferences, inferences.n);  /* a new, zeroed inference row */
        previous = NULL;
        return;
    case M_OP:
        if (active) {
            count_taken(b->vaddr);
            ++region;
            previous = NULL;
        }
        return;
    case M_END:
        if (active) {
            count_taken(b->vaddr);
        }
        active = 0;
        previous = NULL;
        return;
    default:
        break;
    }
    if (!active) {
        return;
    }
    count_taken(b->vaddr);
    add_block(b);
    b->executions++;
    previous = b;
}

static void block_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    struct block *b = calloc(1, sizeof *b);  /* lives as long as QEMU may run the block */
    const size_t n = qemu_plugin_tb_n_insns(tb);
    size_t i;
    int m;
    (void)id;
    if (b == NULL) {
        fprintf(stderr, "ejq_count: out of memory\n");
        exit(70);
    }
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->next = all_blocks;
    all_blocks = b;
    for (m = M_BEGIN; m <= M_END; ++m) {
        if (marker_addr[m] != 0 && marker_addr[m] == b->vaddr) {
            b->marker = m;
        }
    }
    for (i = 0; i < n; ++i) {
        const struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        const uint64_t vaddr = qemu_plugin_insn_vaddr(insn);
        const size_t size = qemu_plugin_insn_size(insn);
        if (i > 0) {
            for (m = M_BEGIN; m <= M_END; ++m) {
                if (marker_addr[m] != 0 && marker_addr[m] == vaddr) {
                    fail("a marker function's first instruction is inside a translation block");
                }
            }
        }
        classify(qemu_plugin_insn_data(insn), size, b->counts);
        b->fallthrough = vaddr + size;
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, block_exec, QEMU_PLUGIN_CB_NO_REGS, b);
}

/* ------------------------------------------------------------------ report */

static void write_row(FILE *f, const char *what, size_t index, const uint64_t *r)
{
    int i;
    fprintf(f, "%s %lu", what, (unsigned long)index);
    for (i = 0; i < N_COUNTERS; ++i) {
        fprintf(f, " %llu", (unsigned long long)r[i]);
    }
    fputc('\n', f);
}

static void at_exit(qemu_plugin_id_t id, void *userdata)
{
    FILE *f = fopen(out_path, "w");
    size_t i;
    int c;
    (void)id;
    (void)userdata;
    if (f == NULL) {
        fprintf(stderr, "ejq_count: cannot write %s\n", out_path);
        return;
    }
    fprintf(f, "ejqcount 1\ncounters");
    for (c = 0; c < N_COUNTERS; ++c) {
        fprintf(f, " %s", counter_names[c]);
    }
    fputc('\n', f);
    if (active) {
        fail("the program ended inside a measured inference");
    }
    for (i = 0; i < regions.n; ++i) {
        write_row(f, "region", i, regions.rows[i]);
    }
    for (i = 0; i < inferences.n; ++i) {
        write_row(f, "inference", i, inferences.rows[i]);
    }
    if (error_text[0] != '\0') {
        fprintf(f, "error %s\n", error_text);
    }
    fclose(f);
    if (blocks_path[0] != '\0') {
        const struct block *b;
        f = fopen(blocks_path, "w");
        if (f == NULL) {
            fprintf(stderr, "ejq_count: cannot write %s\n", blocks_path);
            return;
        }
        for (b = all_blocks; b != NULL; b = b->next) {
            if (b->executions) {
                fprintf(f, "%llx %u %llu\n", (unsigned long long)b->vaddr, (unsigned)b->counts[C_INSNS],
                        (unsigned long long)b->executions);
            }
        }
        fclose(f);
    }
}

static int parse_address(const char *text, uint64_t *value)
{
    char *end = NULL;
    const unsigned long long v = strtoull(text, &end, 0);
    if (end == text || *end != '\0') {
        return -1;
    }
    *value = (uint64_t)v & ~(uint64_t)1u;  /* a Thumb function's symbol has bit 0 set */
    return 0;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    int i;
    (void)info;
    for (i = 0; i < argc; ++i) {
        const char *arg = argv[i];
        int bad = 0;
        if (strncmp(arg, "begin=", 6) == 0) {
            bad = parse_address(arg + 6, &marker_addr[M_BEGIN]);
        } else if (strncmp(arg, "op=", 3) == 0) {
            bad = parse_address(arg + 3, &marker_addr[M_OP]);
        } else if (strncmp(arg, "end=", 4) == 0) {
            bad = parse_address(arg + 4, &marker_addr[M_END]);
        } else if (strncmp(arg, "out=", 4) == 0) {
            snprintf(out_path, sizeof out_path, "%s", arg + 4);
        } else if (strncmp(arg, "blocks=", 7) == 0) {
            snprintf(blocks_path, sizeof blocks_path, "%s", arg + 7);
        } else {
            bad = 1;
        }
        if (bad) {
            fprintf(stderr, "ejq_count: bad argument '%s' (expected begin=ADDR op=ADDR end=ADDR out=PATH)\n", arg);
            return -1;
        }
    }
    if (out_path[0] == '\0' || marker_addr[M_BEGIN] == 0 || marker_addr[M_END] == 0) {
        fprintf(stderr, "ejq_count: begin=, end= and out= are required\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, block_translate);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}

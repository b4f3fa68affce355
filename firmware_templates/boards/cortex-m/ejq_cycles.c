/*
 * Core clock cycle counter (see ejq_cycles.h). Register addresses are the architecture's (ARMv7-M
 * and ARMv6-M Architecture Reference Manuals, system control space), the same on every vendor's chip.
 */
#include "ejq_cycles.h"

#if defined(__ARM_ARCH_6M__) || defined(__ARM_ARCH_8M_BASE__)

/* SysTick: a 24-bit down-counter clocked by the core clock (CLKSOURCE = 1). */
#define EJQ_SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define EJQ_SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define EJQ_SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define EJQ_SYST_CSR_ENABLE_TICKINT_CORECLK 0x7u
#define EJQ_SYST_RELOAD 0x00FFFFFFu

static volatile uint32_t ejq_systick_wraps;

void SysTick_Handler(void);
void SysTick_Handler(void)
{
    ++ejq_systick_wraps;
}

int ejq_cycles_init(void)
{
    EJQ_SYST_CSR = 0u;
    EJQ_SYST_RVR = EJQ_SYST_RELOAD;
    EJQ_SYST_CVR = 0u;  /* any write clears it: the count starts at the reload value */
    ejq_systick_wraps = 0u;
    EJQ_SYST_CSR = EJQ_SYST_CSR_ENABLE_TICKINT_CORECLK;
    return 1;
}

uint32_t ejq_cycles_now(void)
{
    uint32_t wraps;
    uint32_t count;
    /* a wrap between the two reads runs the interrupt at once, which changes the wrap count */
    do {
        wraps = ejq_systick_wraps;
        count = EJQ_SYST_CVR;
    } while (wraps != ejq_systick_wraps);
    return (wraps << 24) + (EJQ_SYST_RELOAD - count);
}

const char *ejq_cycles_source(void)
{
    return "SysTick";
}

#else

#define EJQ_DEMCR (*(volatile uint32_t *)0xE000EDFCu)      /* CoreDebug->DEMCR */
#define EJQ_DEMCR_TRCENA (1u << 24)
#define EJQ_DWT_CTRL (*(volatile uint32_t *)0xE0001000u)
#define EJQ_DWT_CTRL_CYCCNTENA (1u << 0)
#define EJQ_DWT_CTRL_NOCYCCNT (1u << 25)
#define EJQ_DWT_CYCCNT (*(volatile uint32_t *)0xE0001004u)
#define EJQ_DWT_LAR (*(volatile uint32_t *)0xE0001FB0u)     /* lock access: the Cortex-M7 needs the key */
#define EJQ_DWT_LAR_KEY 0xC5ACCE55u
#define EJQ_SCB_CPUID (*(volatile uint32_t *)0xE000ED00u)
#define EJQ_CPUID_PARTNO(cpuid) (((cpuid) >> 4) & 0xFFFu)
#define EJQ_PARTNO_CORTEX_M7 0xC27u

static int ejq_cycles_present;

int ejq_cycles_init(void)
{
    uint32_t start;

    EJQ_DEMCR |= EJQ_DEMCR_TRCENA;
    if (EJQ_CPUID_PARTNO(EJQ_SCB_CPUID) == EJQ_PARTNO_CORTEX_M7) {
        EJQ_DWT_LAR = EJQ_DWT_LAR_KEY;  /* only there: other cores need not implement the register */
    }
    if ((EJQ_DWT_CTRL & EJQ_DWT_CTRL_NOCYCCNT) != 0u) {
        ejq_cycles_present = 0;
        return 0;
    }
    EJQ_DWT_CYCCNT = 0u;
    EJQ_DWT_CTRL |= EJQ_DWT_CTRL_CYCCNTENA;
    /* an emulator may accept the writes and still read 0 (QEMU does): a counter must advance */
    start = EJQ_DWT_CYCCNT;
    __asm__ volatile("nop\n nop\n nop\n nop" ::: "memory");
    ejq_cycles_present = EJQ_DWT_CYCCNT != start;
    return ejq_cycles_present;
}

uint32_t ejq_cycles_now(void)
{
    return ejq_cycles_present ? EJQ_DWT_CYCCNT : 0u;
}

const char *ejq_cycles_source(void)
{
    return ejq_cycles_present ? "DWT CYCCNT" : "not available";
}

#endif

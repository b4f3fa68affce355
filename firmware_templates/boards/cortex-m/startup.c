/*
 * Minimal Cortex-M start-up shared by edgejpq's QEMU harness and board projects: the core's
 * exception vectors (no device interrupts are used), .data copy and .bss clear from the linker
 * script's symbols, FPU enable when the build uses one, then main(). Faults and a return from
 * main end in ejq_board_exit(), which each harness defines (semihosting exit in QEMU, a halt loop
 * with the result kept in RAM on a board). SysTick_Handler is weak: a board project that counts
 * cycles with SysTick (ARMv6-M has no DWT cycle counter) defines it.
 */
#include <stdint.h>

extern uint32_t __data_load__[], __data_start__[], __data_end__[], __bss_start__[], __bss_end__[];
extern uint32_t __stack_top__[];

int main(void);
void ejq_board_exit(int status);
void ejq_board_fault(uint32_t pc);
void Reset_Handler(void);
void Fault_Handler(void);
void Default_Handler(void);
void SysTick_Handler(void) __attribute__((weak, alias("Default_Handler")));

/* SCB registers used here (ARMv6-M/ARMv7-M/ARMv8-M system control space). */
#define EJQ_SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)

__attribute__((naked, noreturn)) void Fault_Handler(void)
{
    /* the faulting PC is word 6 of the exception frame on the active stack */
    __asm__ volatile(
        "movs r0, #4\n"
        "mov r1, lr\n"
        "tst r0, r1\n"
        "beq 1f\n"
        "mrs r0, psp\n"
        "b 2f\n"
        "1: mrs r0, msp\n"
        "2: ldr r0, [r0, #24]\n"
        "bl ejq_board_fault\n");
}

void Default_Handler(void)
{
    ejq_board_fault(0u);
}

__attribute__((section(".isr_vector"), used)) void (*const ejq_vectors[16])(void) = {
    (void (*)(void))(uintptr_t)__stack_top__,
    Reset_Handler,
    Fault_Handler,  /* NMI */
    Fault_Handler,  /* HardFault */
    Fault_Handler,  /* MemManage */
    Fault_Handler,  /* BusFault */
    Fault_Handler,  /* UsageFault */
    Fault_Handler,  /* SecureFault (ARMv8-M) */
    0, 0, 0,
    Default_Handler,  /* SVCall */
    Default_Handler,  /* DebugMonitor */
    0,
    Default_Handler,  /* PendSV */
    SysTick_Handler,  /* SysTick */
};

__attribute__((noreturn)) void Reset_Handler(void)
{
    volatile uint32_t *dst;
    const volatile uint32_t *src;
#if defined(__ARM_FP)
    /* full access to CP10 and CP11 before any floating-point (or FP register) instruction */
    EJQ_SCB_CPACR |= (0xFu << 20);
    __asm__ volatile("dsb\n isb" ::: "memory");
#endif
    /* volatile pointers: the compiler must not turn these loops into memcpy/memset calls */
    for (src = __data_load__, dst = __data_start__; dst < __data_end__;) {
        *dst++ = *src++;
    }
    for (dst = __bss_start__; dst < __bss_end__;) {
        *dst++ = 0u;
    }
    ejq_board_exit(main());
    for (;;) {
    }
}

/* Empty hooks some toolchain objects reference when -nostartfiles is used. */
void _init(void);
void _fini(void);
void _init(void)
{
}
void _fini(void)
{
}

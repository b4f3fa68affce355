/*
 * Core clock cycle counter of edgejpq's board projects: the DWT cycle counter where the core has
 * one (Cortex-M3/M4/M7/M33), SysTick extended by its wrap interrupt on ARMv6-M (Cortex-M0/M0+),
 * which has no DWT cycle counter. Differences of ejq_cycles_now() are exact modulo 2^32. The SysTick
 * count needs interrupts enabled (PRIMASK clear) while it runs: masked, each wrap past the first
 * between two reads (2^24 cycles) is lost.
 */
#ifndef EJQ_CYCLES_H
#define EJQ_CYCLES_H

#include <stdint.h>

/* Starts the counter; returns 0 when the core has none (the counts then stay 0). */
int ejq_cycles_init(void);

uint32_t ejq_cycles_now(void);

/* "DWT CYCCNT" or "SysTick" (or "not available" after ejq_cycles_init returned 0). */
const char *ejq_cycles_source(void);

#endif /* EJQ_CYCLES_H */

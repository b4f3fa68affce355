/*
 * Byte I/O of an STM32 USART, polled (no interrupts, no vendor HAL). A board's ejq_board.c
 * includes it once, after defining the registers of its console USART:
 *   EJQ_USART_STATUS   SR (USART v1: F1/F2/F4) or ISR (v2: F0/F3/F7/G0/L4/...)
 *   EJQ_USART_TX       DR or TDR
 *   EJQ_USART_RX       DR or RDR
 *   EJQ_USART_CLEAR_OVERRUN()  what re-arms reception after an overrun
 * The status bits are the same in both generations: TXE 7, TC 6, RXNE 5, ORE 3.
 */
#ifndef EJQ_STM32_USART_H
#define EJQ_STM32_USART_H

#include <stdint.h>

#include "ejq_board.h"

#define EJQ_USART_TXE (1u << 7)
#define EJQ_USART_TC (1u << 6)
#define EJQ_USART_RXNE (1u << 5)
#define EJQ_USART_ORE (1u << 3)

void ejq_uart_putc(char c)
{
    while ((EJQ_USART_STATUS & EJQ_USART_TXE) == 0u) {
    }
    EJQ_USART_TX = (uint32_t)(uint8_t)c;
}

int ejq_uart_getc(void)
{
    for (;;) {
        const uint32_t status = EJQ_USART_STATUS;
        if ((status & EJQ_USART_RXNE) != 0u) {
            return (int)(EJQ_USART_RX & 0xFFu);
        }
        if ((status & EJQ_USART_ORE) != 0u) {
            EJQ_USART_CLEAR_OVERRUN();
        }
    }
}

void ejq_uart_flush(void)
{
    while ((EJQ_USART_STATUS & EJQ_USART_TC) == 0u) {
    }
}

#endif /* EJQ_STM32_USART_H */

/*
 * Board support of edgejpq's board projects: each board's ejq_board.c brings up its clocks (and
 * caches) and the UART of its debug probe's virtual COM port, with registers written directly (no
 * vendor HAL). Only byte I/O lives here, so a serial protocol can reuse it; ejq_uart_puts is the
 * one text helper.
 */
#ifndef EJQ_BOARD_H
#define EJQ_BOARD_H

#include <stdint.h>

/* Clocks, caches and the console UART (8N1 at the board's baud rate). Call once, first. */
void ejq_board_init(void);

/* Blocking transmit of one byte. */
void ejq_uart_putc(char c);

/* Blocking receive: the next byte (0..255). */
int ejq_uart_getc(void);

/* Returns once every byte written has left the transmitter (before a halt or reset). */
void ejq_uart_flush(void);

/* Text, with "\n" sent as "\r\n" for terminal programs. */
static inline void ejq_uart_puts(const char *text)
{
    while (*text != '\0') {
        if (*text == '\n') {
            ejq_uart_putc('\r');
        }
        ejq_uart_putc(*text++);
    }
}

#endif /* EJQ_BOARD_H */

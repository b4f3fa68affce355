/*
 * ARM semihosting calls (BKPT 0xAB in Thumb state) for edgejpq's QEMU harness: files on the host
 * through QEMU, console text and the exit status. Always inlined and stack-free, so the harness's
 * own calls never go deeper on the stack than the model's inference does.
 */
#ifndef EJQ_SEMIHOST_H
#define EJQ_SEMIHOST_H

#include <stdint.h>

#define EJQ_SYS_OPEN 0x01u
#define EJQ_SYS_CLOSE 0x02u
#define EJQ_SYS_WRITE0 0x04u
#define EJQ_SYS_WRITE 0x05u
#define EJQ_SYS_READ 0x06u
#define EJQ_SYS_FLEN 0x0Cu
#define EJQ_SYS_EXIT_EXTENDED 0x20u
#define EJQ_ADP_STOPPED_APPLICATION_EXIT 0x20026u

#define EJQ_MODE_READ_BINARY 1u   /* "rb" */
#define EJQ_MODE_WRITE_BINARY 5u  /* "wb" */

static inline __attribute__((always_inline)) int32_t ejq_semihost(uint32_t op, const void *args)
{
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = args;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return (int32_t)r0;
}

static inline __attribute__((always_inline)) uint32_t ejq_strlen(const char *s)
{
    uint32_t n = 0;
    while (s[n] != '\0') {
        ++n;
    }
    return n;
}

/* A host file handle (>= 0), or -1. */
static inline __attribute__((always_inline)) int32_t ejq_open(const char *name, uint32_t mode)
{
    const uint32_t args[3] = {(uint32_t)(uintptr_t)name, mode, ejq_strlen(name)};
    return ejq_semihost(EJQ_SYS_OPEN, args);
}

static inline __attribute__((always_inline)) int32_t ejq_close(int32_t handle)
{
    const uint32_t args[1] = {(uint32_t)handle};
    return ejq_semihost(EJQ_SYS_CLOSE, args);
}

/* Bytes NOT transferred (0 = all). */
static inline __attribute__((always_inline)) int32_t ejq_read(int32_t handle, void *buffer, uint32_t bytes)
{
    const uint32_t args[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buffer, bytes};
    return ejq_semihost(EJQ_SYS_READ, args);
}

static inline __attribute__((always_inline)) int32_t ejq_write(int32_t handle, const void *buffer, uint32_t bytes)
{
    const uint32_t args[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buffer, bytes};
    return ejq_semihost(EJQ_SYS_WRITE, args);
}

static inline __attribute__((always_inline)) int32_t ejq_file_length(int32_t handle)
{
    const uint32_t args[1] = {(uint32_t)handle};
    return ejq_semihost(EJQ_SYS_FLEN, args);
}

static inline __attribute__((always_inline)) void ejq_console(const char *text)
{
    ejq_semihost(EJQ_SYS_WRITE0, text);
}

/* Ends QEMU with `status` as its exit status. */
static inline __attribute__((always_inline, noreturn)) void ejq_exit(uint32_t status)
{
    const uint32_t args[2] = {EJQ_ADP_STOPPED_APPLICATION_EXIT, status};
    ejq_semihost(EJQ_SYS_EXIT_EXTENDED, args);
    for (;;) {
    }
}

#endif /* EJQ_SEMIHOST_H */

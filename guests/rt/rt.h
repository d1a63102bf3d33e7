/* The guest runtime: console, printf, strings, command line. See ../README.md. */
#ifndef RT_H
#define RT_H

#include <stdarg.h> /* a freestanding header: gcc's own, no libc */

#include "../include/ftvm.h"
#include "x86.h"

#define NULL ((void *)0)

/* The guest's entry point, called by crt0 with the boot information. Its result is the
 * exit status (0-255). */
int main(struct ftvm_boot_info *bi);

/* The boot information, also available to code that was not handed it. */
extern struct ftvm_boot_info *rt_boot_info;

/* Called by crt0 before main: checks the boot information's magic and version and the
 * command line against guest_args (exit status 2 on a mismatch). */
void rt_init(struct ftvm_boot_info *bi);

/* Flush the console and stop the VM with status & 0xff. */
__attribute__((noreturn)) void exit(int status);

/* Console output. Output is buffered and written with one VMM call per line (each call is
 * a VM exit); it is flushed at '\n', when the buffer fills, before a console read and at
 * exit. */
int putchar(int c);
int puts(const char *s); /* s and a newline */
void console_write(const void *buf, size_t len);
void console_flush(void);
__attribute__((format(printf, 1, 2))) int printf(const char *fmt, ...);
int vprintf(const char *fmt, va_list ap);

/* Console input: reads one line into buf (at most cap-1 bytes, NUL-terminated, without the
 * '\n' or a trailing '\r'; the rest of a longer line is dropped). Waits for input with
 * FTVM_WAIT_FOREVER. Returns the length, or -1 at end of input. */
long read_line(char *buf, size_t cap);

/* Command line. A guest lists the keys it takes in guest_args (ending with 0); before main
 * runs the runtime rejects, with a message and exit status 2, any word that is not
 * KEY=VALUE with a listed KEY. A guest that does not define guest_args takes no arguments. */
extern const char *const guest_args[];
/* The value of KEY (a decimal or 0x hex integer, optionally negative), or def if the
 * command line does not set it; exits 2 if the value is not a number. The last KEY=
 * word wins. */
long arg_long(struct ftvm_boot_info *bi, const char *key, long def);

/* Strings and memory. gcc may emit calls to memcpy, memmove, memset and memcmp itself. */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* Clocks, from the VMM (one exit each). */
static inline uint64_t clock_monotonic_ns(void) { return ftvm_clock(FTVM_CLOCK_MONOTONIC); }
static inline uint64_t clock_realtime_ns(void) { return ftvm_clock(FTVM_CLOCK_REALTIME); }

#endif

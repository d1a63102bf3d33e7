/* lwIP's architecture header for ftvm guests: freestanding x86-64, the guest runtime (rt/)
 * in place of libc. See lwipopts.h for the configuration and port.c for the glue. */
#ifndef FTVM_LWIP_ARCH_CC_H
#define FTVM_LWIP_ARCH_CC_H

#include "rt.h"

/* gcc's freestanding stddef.h, stdint.h and limits.h are used; inttypes.h and ctype.h are
 * not freestanding headers, so lwIP defines what it needs of them itself. */
#define LWIP_NO_INTTYPES_H 1
#define LWIP_NO_CTYPE_H 1
/* The runtime's printf has no 'h' modifier: 16-bit values print as promoted ints. */
#define X8_F "02x"
#define U16_F "u"
#define S16_F "d"
#define X16_F "x"
#define U32_F "u"
#define S32_F "d"
#define X32_F "x"
#define SZT_F "lu"

#define BYTE_ORDER LITTLE_ENDIAN
#define lwip_htons(x) ((u16_t)__builtin_bswap16((u16_t)(x)))
#define lwip_htonl(x) ((u32_t)__builtin_bswap32((u32_t)(x)))

#define LWIP_PLATFORM_DIAG(x) do { printf x; } while (0)
#define LWIP_PLATFORM_ASSERT(x) ftvm_lwip_assert(x, __FILE__, __LINE__)
__attribute__((noreturn)) void ftvm_lwip_assert(const char *msg, const char *file, int line);

/* Randomness for lwIP (the first local port, TCP initial sequence numbers): rdrand, which
 * the VMM rewrites into an exit and logs, so a replay gets the same values. */
uint32_t ftvm_lwip_rand(void);
#define LWIP_RAND() ftvm_lwip_rand()

#endif

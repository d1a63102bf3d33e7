/* <stdlib.h> for lwIP in a guest: only atoi, which netif_find uses. */
#ifndef FTVM_LWIP_LIBC_STDLIB_H
#define FTVM_LWIP_LIBC_STDLIB_H
#include "rt.h"
static inline int atoi(const char *s)
{
	int neg = 0, v = 0;
	while (*s == ' ' || *s == '\t')
		s++;
	if (*s == '-' || *s == '+')
		neg = *s++ == '-';
	while (*s >= '0' && *s <= '9')
		v = v * 10 + (*s++ - '0');
	return neg ? -v : v;
}
#endif

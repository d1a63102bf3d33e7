/* Memory and string helpers.
 *
 * gcc may emit calls to memcpy, memmove, memset and memcmp on its own (struct copies, loops
 * it recognises), even with -ffreestanding, so they must exist. For the same reason the
 * loops here must not be turned back into calls to themselves: the Makefile compiles this
 * file with -fno-tree-loop-distribute-patterns, and the copies use rep movsb/stosb, which
 * are fast on current CPUs. DF is 0 on entry (RFLAGS 0x3202) and the SysV ABI keeps it so. */
#include "rt.h"

void *memcpy(void *dst, const void *src, size_t n)
{
	void *d = dst;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
	return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
	if ((uint64_t)dst - (uint64_t)src >= n) /* dst before src, or no overlap */
		return memcpy(dst, src, n);
	/* dst overlaps the tail of src: copy backwards, from the last byte. */
	void *d = (char *)dst + n - 1;
	const void *s = (const char *)src + n - 1;
	__asm__ volatile("std\n\trep movsb\n\tcld" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return dst;
}

void *memset(void *dst, int c, size_t n)
{
	void *d = dst;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *p = a, *q = b;
	for (size_t i = 0; i < n; i++)
		if (p[i] != q[i])
			return p[i] - q[i];
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n > 0; n--, a++, b++) {
		if (*a != *b)
			return (unsigned char)*a - (unsigned char)*b;
		if (*a == 0)
			return 0;
	}
	return 0;
}

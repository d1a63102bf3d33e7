/* A small printf to the console.
 *
 * Conversions: %d %i %u %x %X %c %s %p %%, with the l (long; ll is the same on x86-64) and
 * z (size_t) modifiers, the flags '-' (left-justify), '0' (pad with zeros) and '#' (0x
 * before a non-zero %x) and a decimal width. No precision, no floating point. */
#include "rt.h"

/* Print s (n bytes) padded to width. Zero padding goes after the first pre bytes of s (a
 * '-' sign or a "0x" prefix). */
static int emit(const char *s, int n, int pre, int width, int left, int zero)
{
	int pad = width > n ? width - n : 0;
	int count = n + pad;

	if (zero && !left)
		for (; pre > 0; pre--, n--)
			putchar(*s++);
	if (!left)
		while (pad-- > 0)
			putchar(zero ? '0' : ' ');
	while (n-- > 0)
		putchar(*s++);
	if (left)
		while (pad-- > 0)
			putchar(' ');
	return count;
}

/* Format v in base (10 or 16) into the end of buf; returns the start. */
static char *format_u(char *end, uint64_t v, unsigned base, int upper)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char *p = end;
	do {
		*--p = digits[v % base];
		v /= base;
	} while (v != 0);
	return p;
}

int vprintf(const char *fmt, va_list ap)
{
	int count = 0;

	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			putchar(*fmt);
			count++;
			continue;
		}
		fmt++;
		int left = 0, zero = 0, alt = 0, width = 0, lng = 0;
		for (;; fmt++) {
			if (*fmt == '-')
				left = 1;
			else if (*fmt == '0')
				zero = 1;
			else if (*fmt == '#')
				alt = 1;
			else
				break;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l' || *fmt == 'z') {
			lng = 1;
			fmt++;
		}

		char buf[24]; /* 2^64 is 20 decimal digits; a sign and "0x" fit too */
		char *end = buf + sizeof buf, *s;
		switch (*fmt) {
		case 'd':
		case 'i': {
			int64_t v = lng ? va_arg(ap, long) : va_arg(ap, int);
			/* Negate as unsigned: -INT64_MIN overflows as a signed value. */
			s = format_u(end, v < 0 ? -(uint64_t)v : (uint64_t)v, 10, 0);
			if (v < 0)
				*--s = '-';
			count += emit(s, (int)(end - s), v < 0, width, left, zero);
			break;
		}
		case 'u':
		case 'x':
		case 'X': {
			uint64_t v = lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
			s = format_u(end, v, *fmt == 'u' ? 10 : 16, *fmt == 'X');
			int pre = 0;
			if (alt && *fmt != 'u' && v != 0) {
				*--s = *fmt; /* x or X */
				*--s = '0';
				pre = 2;
			}
			count += emit(s, (int)(end - s), pre, width, left, zero);
			break;
		}
		case 'p': {
			s = format_u(end, (uint64_t)va_arg(ap, void *), 16, 0);
			*--s = 'x';
			*--s = '0';
			count += emit(s, (int)(end - s), 2, width, left, zero);
			break;
		}
		case 'c':
			buf[0] = (char)va_arg(ap, int);
			count += emit(buf, 1, 0, width, left, 0);
			break;
		case 's':
			s = va_arg(ap, char *);
			if (s == NULL)
				s = "(null)";
			count += emit(s, (int)strlen(s), 0, width, left, 0);
			break;
		case '%':
			putchar('%');
			count++;
			break;
		case 0: /* a lone '%' at the end */
			return count;
		default: /* unknown: print it as written, so the mistake shows */
			putchar('%');
			putchar(*fmt);
			count += 2;
			break;
		}
	}
	return count;
}

int printf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vprintf(fmt, ap);
	va_end(ap);
	return n;
}

/* Console output and input, and exit. */
#include "rt.h"

/* Output is collected here and written with one console-write call per line: each call is
 * a VM exit (tens of microseconds), so writing byte by byte would be very slow. */
static char out_buf[2048];
static size_t out_len;

/* Write buf directly, looping in case the VMM takes only part of it. A failing call (an
 * error, or 0 bytes) drops the rest: there is nowhere to report it. */
static void write_all(const char *buf, size_t len)
{
	while (len > 0) {
		long n = ftvm_console_write(buf, len);
		if (n <= 0)
			return;
		buf += n;
		len -= (size_t)n < len ? (size_t)n : len;
	}
}

void console_flush(void)
{
	write_all(out_buf, out_len);
	out_len = 0;
}

int putchar(int c)
{
	out_buf[out_len++] = (char)c;
	if (c == '\n' || out_len == sizeof out_buf)
		console_flush();
	return (unsigned char)c;
}

void console_write(const void *buf, size_t len)
{
	const char *p = buf;
	for (size_t i = 0; i < len; i++)
		putchar(p[i]);
}

int puts(const char *s)
{
	console_write(s, strlen(s));
	putchar('\n');
	return 0;
}

void exit(int status)
{
	console_flush();
	ftvm_exit(status & 0xff);
}

/* Input arrives in chunks that need not be lines; in_buf keeps what has been read but not
 * yet returned, in_buf[in_pos:in_len]. */
static char in_buf[1024];
static size_t in_pos, in_len;
static int in_eof;

/* Refill in_buf, waiting for input. Returns 0 at end of input. */
static int fill(void)
{
	if (in_eof)
		return 0;
	for (;;) {
		long n = ftvm_console_read(in_buf, sizeof in_buf);
		if (n > 0) {
			in_pos = 0;
			in_len = (size_t)n;
			return 1;
		}
		if (n < 0) { /* -1: end of input; any other error ends input too */
			in_eof = 1;
			return 0;
		}
		/* Nothing pending: sleep in the VMM until something arrives. */
		ftvm_wait(FTVM_WAIT_FOREVER);
	}
}

long read_line(char *buf, size_t cap)
{
	size_t len = 0;
	int any = 0; /* read anything at all, even just "\n"? */

	console_flush(); /* a prompt without '\n' must be out before we wait */
	for (;;) {
		if (in_pos == in_len && !fill())
			break;
		any = 1;
		char c = in_buf[in_pos++];
		if (c == '\n')
			break;
		if (len + 1 < cap)
			buf[len++] = c;
	}
	if (!any)
		return -1;
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	if (cap > 0)
		buf[len] = 0;
	return (long)len;
}

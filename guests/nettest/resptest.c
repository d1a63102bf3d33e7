/* Host tests of the redis guest's RESP parser, executor and store (resp.c): commands and
 * their replies, pipelining, commands split at every byte, inline commands, malformed and
 * oversized input, output back-pressure and a full arena. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resp.h"
#include "check.h"
#include "resptest.h"

#define ARENA (64 << 20)
static void *arena;

static void fresh(size_t size)
{
	if (arena == NULL)
		arena = aligned_alloc(64, ARENA);
	memset(arena, 0xa5, size); /* the store must not read what it did not write */
	resp_init(arena, size);
}

/* Everything c has to send, taken (consumed) into a NUL-terminated string; keeps executing
 * while output drains. The result is valid until the next call. */
static char *drain(struct resp_conn *c)
{
	static char *buf;
	static size_t cap;
	size_t len = 0;
	for (;;) {
		resp_process(c);
		size_t n = resp_out_pending(c);
		if (n == 0)
			break;
		if (len + n + 1 > cap) {
			cap = (len + n + 1) * 2;
			buf = realloc(buf, cap);
		}
		memcpy(buf + len, c->out + c->out_off, n);
		len += n;
		resp_out_consume(c, n);
	}
	if (buf == NULL)
		buf = realloc(buf, cap = 16);
	buf[len] = 0;
	return buf;
}

static char *run(struct resp_conn *c, const char *in, size_t n)
{
	size_t took = resp_feed(c, in, n);
	CHECK(took == n, "fed %zu of %zu bytes", took, n);
	return drain(c);
}
#define RUN(c, s) run(c, s, strlen(s))

/* One command as a RESP array. */
static char *cmd(struct resp_conn *c, int argc, const char **argv)
{
	static char req[65536];
	size_t n = (size_t)sprintf(req, "*%d\r\n", argc);
	for (int i = 0; i < argc; i++)
		n += (size_t)sprintf(req + n, "$%zu\r\n%s\r\n", strlen(argv[i]), argv[i]);
	return run(c, req, n);
}
#define CMD(c, ...) cmd(c, sizeof((const char *[]){ __VA_ARGS__ }) / sizeof(const char *), \
			(const char *[]){ __VA_ARGS__ })
#define EXPECT(got, want) CHECK(strcmp(got, want) == 0, "got \"%s\", want \"%s\"", got, want)

void test_resp_commands(void)
{
	struct resp_conn c;
	fresh(ARENA);
	resp_conn_open(&c);
	EXPECT(CMD(&c, "PING"), "+PONG\r\n");
	EXPECT(CMD(&c, "ping", "hi"), "$2\r\nhi\r\n");
	EXPECT(CMD(&c, "ECHO", "x y"), "$3\r\nx y\r\n");
	EXPECT(CMD(&c, "GET", "k"), "$-1\r\n");
	EXPECT(CMD(&c, "SET", "k", "v1"), "+OK\r\n");
	EXPECT(CMD(&c, "get", "k"), "$2\r\nv1\r\n");
	EXPECT(CMD(&c, "SET", "k", ""), "+OK\r\n");
	EXPECT(CMD(&c, "GET", "k"), "$0\r\n\r\n");
	EXPECT(CMD(&c, "SET", "k", "a", "NX"), "$-1\r\n");
	EXPECT(CMD(&c, "SET", "new", "a", "XX"), "$-1\r\n");
	EXPECT(CMD(&c, "SET", "new", "a", "nx"), "+OK\r\n");
	EXPECT(CMD(&c, "SET", "new", "b", "GET"), "$1\r\na\r\n");
	EXPECT(CMD(&c, "SET", "new", "b", "EX", "10"), "-ERR this server does not expire keys\r\n");
	EXPECT(CMD(&c, "SET", "new", "b", "NX", "XX"), "-ERR syntax error\r\n");
	EXPECT(CMD(&c, "SET", "new"), "-ERR wrong number of arguments for 'SET' command\r\n");
	EXPECT(CMD(&c, "EXISTS", "k", "new", "nope", "k"), ":3\r\n");
	EXPECT(CMD(&c, "DEL", "k", "nope"), ":1\r\n");
	EXPECT(CMD(&c, "EXISTS", "k"), ":0\r\n");
	EXPECT(CMD(&c, "INCR", "n"), ":1\r\n");
	EXPECT(CMD(&c, "INCRBY", "n", "41"), ":42\r\n");
	EXPECT(CMD(&c, "DECR", "n"), ":41\r\n");
	EXPECT(CMD(&c, "DECRBY", "n", "50"), ":-9\r\n");
	EXPECT(CMD(&c, "GET", "n"), "$2\r\n-9\r\n");
	EXPECT(CMD(&c, "INCR", "new"), "-ERR value is not an integer or out of range\r\n");
	EXPECT(CMD(&c, "INCRBY", "n", "x"), "-ERR value is not an integer or out of range\r\n");
	EXPECT(CMD(&c, "SET", "big", "9223372036854775807"), "+OK\r\n");
	EXPECT(CMD(&c, "INCR", "big"), "-ERR increment or decrement would overflow\r\n");
	EXPECT(CMD(&c, "SET", "z", "007"), "+OK\r\n");
	EXPECT(CMD(&c, "INCR", "z"), "-ERR value is not an integer or out of range\r\n");
	EXPECT(CMD(&c, "APPEND", "s", "abc"), ":3\r\n");
	EXPECT(CMD(&c, "APPEND", "s", "defgh"), ":8\r\n");
	EXPECT(CMD(&c, "STRLEN", "s"), ":8\r\n");
	EXPECT(CMD(&c, "GET", "s"), "$8\r\nabcdefgh\r\n");
	EXPECT(CMD(&c, "MSET", "a", "1", "b", "2"), "+OK\r\n");
	EXPECT(CMD(&c, "MSET", "a", "1", "b"), "-ERR wrong number of arguments for 'MSET' command\r\n");
	EXPECT(CMD(&c, "MGET", "a", "nope", "b"), "*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n");
	EXPECT(CMD(&c, "DBSIZE"), ":7\r\n");
	EXPECT(CMD(&c, "SELECT", "0"), "+OK\r\n");
	EXPECT(CMD(&c, "SELECT", "1"), "-ERR DB index is out of range\r\n");
	EXPECT(CMD(&c, "CONFIG", "GET", "save"), "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
	EXPECT(CMD(&c, "CONFIG", "GET", "appendonly"), "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n");
	EXPECT(CMD(&c, "CONFIG", "GET", "maxmemory-policy"), "*0\r\n");
	EXPECT(CMD(&c, "COMMAND", "DOCS"), "*0\r\n");
	CHECK(strncmp(CMD(&c, "INFO"), "$", 1) == 0, "INFO is a bulk string");
	EXPECT(CMD(&c, "NOSUCH", "a\r\nb"), "-ERR unknown command 'NOSUCH'\r\n");
	EXPECT(CMD(&c, "FLUSHALL"), "+OK\r\n");
	EXPECT(CMD(&c, "DBSIZE"), ":0\r\n");
	EXPECT(CMD(&c, "QUIT"), "+OK\r\n");
	CHECK(c.closing, "QUIT closes");
	EXPECT(CMD(&c, "PING"), ""); /* nothing after QUIT runs */
	resp_conn_close(&c);
}

/* 1000 commands in one buffer: every reply, in order. */
static char pipe_in[1 << 20], pipe_want[1 << 20];
static size_t pipe_in_len;

static void make_pipeline(void)
{
	size_t n = 0, w = 0;
	for (int i = 0; i < 1000; i++) {
		char key[32], val[32];
		int kl = sprintf(key, "key:%d", (i / 4) % 37), vl = sprintf(val, "v%d", i);
		switch (i % 4) {
		case 0:
			n += (size_t)sprintf(pipe_in + n, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", kl, key, vl, val);
			w += (size_t)sprintf(pipe_want + w, "+OK\r\n");
			break;
		case 1:
			n += (size_t)sprintf(pipe_in + n, "*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", kl, key);
			sprintf(val, "v%d", i - 1);
			w += (size_t)sprintf(pipe_want + w, "$%zu\r\n%s\r\n", strlen(val), val);
			break;
		case 2:
			n += (size_t)sprintf(pipe_in + n, "PING\r\n"); /* inline, between arrays */
			w += (size_t)sprintf(pipe_want + w, "+PONG\r\n");
			break;
		case 3:
			n += (size_t)sprintf(pipe_in + n, "*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n");
			w += (size_t)sprintf(pipe_want + w, ":%d\r\n", i / 4 + 1);
			break;
		}
	}
	pipe_in_len = n;
}

void test_resp_pipelined(void)
{
	struct resp_conn c;
	fresh(ARENA);
	make_pipeline();
	resp_conn_open(&c);
	char *got = run(&c, pipe_in, pipe_in_len);
	CHECK(strcmp(got, pipe_want) == 0, "replies differ (%zu bytes, want %zu)", strlen(got),
	      strlen(pipe_want));
	CHECK(c.in_len == 0, "input left: %u", c.in_len);
	resp_conn_close(&c);
}

/* The same stream in pieces of every size from 1 byte: the same replies. */
void test_resp_split(void)
{
	static char got[1 << 20];
	make_pipeline();
	size_t sizes[] = { 1, 2, 3, 7, 13, 1460, 4096 };
	for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
		struct resp_conn c;
		fresh(ARENA);
		resp_conn_open(&c);
		size_t glen = 0;
		for (size_t off = 0; off < pipe_in_len; off += sizes[s]) {
			size_t n = pipe_in_len - off < sizes[s] ? pipe_in_len - off : sizes[s];
			char *r = run(&c, pipe_in + off, n);
			memcpy(got + glen, r, strlen(r));
			glen += strlen(r);
		}
		got[glen] = 0;
		CHECK(strcmp(got, pipe_want) == 0, "pieces of %zu: replies differ", sizes[s]);
		resp_conn_close(&c);
	}
	/* A command that is incomplete gets no reply yet. */
	struct resp_conn c;
	fresh(ARENA);
	resp_conn_open(&c);
	EXPECT(RUN(&c, "*2\r\n$4\r\nECHO\r\n$5\r\nhel"), "");
	EXPECT(RUN(&c, "lo\r"), "");
	EXPECT(RUN(&c, "\n"), "$5\r\nhello\r\n");
	resp_conn_close(&c);
}

void test_resp_inline(void)
{
	struct resp_conn c;
	fresh(ARENA);
	resp_conn_open(&c);
	EXPECT(RUN(&c, "PING\r\n"), "+PONG\r\n");
	EXPECT(RUN(&c, "set  a   b\n"), "+OK\r\n");
	EXPECT(RUN(&c, "\r\n\n   \r\nget a\r\n"), "$1\r\nb\r\n");
	EXPECT(RUN(&c, "\tEXISTS a x\t\r\n"), ":1\r\n");
	EXPECT(RUN(&c, "*0\r\n*-1\r\nPING\r\n"), "+PONG\r\n"); /* empty arrays are skipped */
	resp_conn_close(&c);
}

static void malformed(const char *in, const char *want_err)
{
	struct resp_conn c;
	resp_conn_open(&c);
	char *got = RUN(&c, in);
	char want[256];
	snprintf(want, sizeof want, "-ERR Protocol error: %s\r\n", want_err);
	EXPECT(got, want);
	CHECK(c.closing, "%s: a protocol error closes the connection", in);
	EXPECT(RUN(&c, "PING\r\n"), ""); /* and nothing more runs */
	resp_conn_close(&c);
}

void test_resp_malformed(void)
{
	fresh(ARENA);
	malformed("*abc\r\n", "invalid multibulk length");
	malformed("*1x\r\n$4\r\nPING\r\n", "invalid multibulk length");
	malformed("*1\rX", "invalid multibulk length");
	malformed("*1\r\n+PING\r\n", "expected '$', got '+'");
	malformed("*1\r\n$-1\r\n", "invalid bulk length");
	malformed("*1\r\n$x\r\n", "invalid bulk length");
	malformed("*1\r\n$2\r\nPINGPONG\r\n", "bulk string not followed by CRLF");
	malformed("*2\r\n$4\r\nPING\r\n\x01", "expected '$', got '?'");
	/* The replies before the bad command are kept. */
	struct resp_conn c;
	resp_conn_open(&c);
	EXPECT(RUN(&c, "PING\r\n*1\r\n$4\r\nPING\r\n*x\r\nPING\r\n"),
	       "+PONG\r\n+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n");
	resp_conn_close(&c);
	CHECK(resp_stats.protocol_errors == 9, "protocol errors counted: %lu",
	      (unsigned long)resp_stats.protocol_errors);
}

void test_resp_oversized(void)
{
	static char big[RESP_MAX_QUERY + 100];
	char hdr[64];
	fresh(ARENA);
	/* A bulk length past the limit fails at once, without waiting for the data. */
	sprintf(hdr, "*2\r\n$3\r\nGET\r\n$%d\r\n", RESP_MAX_BULK + 1);
	malformed(hdr, "invalid bulk length");
	malformed("*1\r\n$99999999999999999999999\r\n", "invalid bulk length");
	sprintf(hdr, "*%d\r\n", RESP_MAX_ARGS + 1);
	malformed(hdr, "invalid multibulk length");
	/* An inline command or a header line without its end. */
	memset(big, 'a', RESP_MAX_INLINE + 1);
	big[RESP_MAX_INLINE + 1] = 0;
	malformed(big, "too big inline request");
	big[0] = '*';
	malformed(big, "too big mbulk count string");
	/* Many arguments of the largest size: the whole command passes the query limit. */
	size_t n = (size_t)sprintf(big, "*3\r\n$3\r\nSET\r\n$%d\r\n", RESP_MAX_BULK);
	memset(big + n, 'k', RESP_MAX_BULK);
	n += RESP_MAX_BULK;
	n += (size_t)sprintf(big + n, "\r\n$%d\r\n", RESP_MAX_BULK);
	struct resp_conn c;
	resp_conn_open(&c);
	char *got = run(&c, big, n);
	EXPECT(got, "-ERR Protocol error: command larger than the query buffer limit\r\n");
	resp_conn_close(&c);
	/* The largest value that fits is stored and read back whole. */
	resp_conn_open(&c);
	n = (size_t)sprintf(big, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n", RESP_MAX_BULK);
	memset(big + n, 'v', RESP_MAX_BULK);
	n += RESP_MAX_BULK;
	n += (size_t)sprintf(big + n, "\r\n");
	EXPECT(run(&c, big, n), "+OK\r\n");
	size_t vlen = 0;
	CHECK(resp_lookup("k", 1, &vlen) && vlen == RESP_MAX_BULK, "stored %zu bytes", vlen);
	EXPECT(CMD(&c, "APPEND", "k", "x"), "-ERR string exceeds maximum allowed size\r\n");
	/* The input takes at most RESP_MAX_QUERY bytes; the caller keeps the rest. */
	memset(big, 'x', sizeof big);
	CHECK(resp_feed(&c, big, sizeof big) == RESP_MAX_QUERY, "the input is bounded");
	CHECK(resp_in_room(&c) == 0, "no room left");
	resp_conn_close(&c);
}

/* A client that sends without reading: execution stops at RESP_OUT_HIGH bytes of output and
 * goes on as the output drains. */
void test_resp_backpressure(void)
{
	static char val[8193];
	struct resp_conn c;
	fresh(ARENA);
	resp_conn_open(&c);
	memset(val, 'v', 8192);
	CMD(&c, "SET", "k", val);
	char req[] = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
	for (int i = 0; i < 100; i++)
		resp_feed(&c, req, strlen(req));
	int ran = resp_process(&c);
	CHECK(ran > 0 && ran < 100, "ran %d of 100", ran);
	CHECK(resp_out_pending(&c) >= RESP_OUT_HIGH && resp_out_pending(&c) < RESP_OUT_HIGH + 8300,
	      "output %zu", resp_out_pending(&c));
	CHECK(resp_process(&c) == 0, "nothing runs while the output is full");
	int total = ran;
	while (resp_out_pending(&c) > 0) {
		resp_out_consume(&c, resp_out_pending(&c) > 1000 ? 1000 : resp_out_pending(&c));
		total += resp_process(&c);
	}
	CHECK(total == 100, "all 100 ran: %d", total);
	CHECK(c.in_len == 0, "input left: %u", c.in_len);
	resp_conn_close(&c);
}

/* A small arena: writes get -OOM when it is full, reads still work, and deleting makes
 * room again. */
void test_resp_oom(void)
{
	static char val[2001];
	struct resp_conn c;
	fresh(256 * 1024);
	resp_conn_open(&c);
	memset(val, 'v', 2000);
	int ok = 0, oom = 0;
	char key[32];
	for (int i = 0; i < 1000 && !oom; i++) {
		sprintf(key, "k%d", i);
		char *r = CMD(&c, "SET", key, val);
		if (strcmp(r, "+OK\r\n") == 0)
			ok++;
		else if (strncmp(r, "-OOM", 4) == 0)
			oom++;
		else
			CHECK(0, "SET: %s", r);
	}
	CHECK(ok > 10 && oom == 1, "%d stored, then -OOM", ok);
	CHECK(resp_stats.arena_used <= 256 * 1024, "used %lu", (unsigned long)resp_stats.arena_used);
	EXPECT(CMD(&c, "PING"), "+PONG\r\n");
	CHECK(strncmp(CMD(&c, "GET", "k0"), "$2000\r\n", 7) == 0, "k0 is still there");
	EXPECT(CMD(&c, "DEL", "k0", "k1"), ":2\r\n");
	EXPECT(CMD(&c, "SET", "again", val), "+OK\r\n");
	/* A reply too large for what is left: an error instead, the connection goes on. */
	const char *argv[RESP_MAX_ARGS];
	argv[0] = "MGET";
	for (int i = 1; i < 200; i++)
		argv[i] = "again";
	char *r = cmd(&c, 200, argv);
	CHECK(strcmp(r, "-ERR reply too large or out of memory\r\n") == 0 || r[0] == '*',
	      "MGET: %.40s", r);
	EXPECT(CMD(&c, "PING"), "+PONG\r\n");
	resp_conn_close(&c);
}

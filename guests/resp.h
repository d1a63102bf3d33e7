/* The Redis-protocol (RESP) server behind the redis guest: the request parser, the command
 * executor and the store, separate from the TCP glue (redis.c) so that the host tests
 * (nettest/) can drive it. No lwIP here, and no malloc: everything, the store and each
 * connection's buffers, comes from one arena handed to resp_init (the guest's heap), with a
 * size-class allocator; when it is full a write gets -OOM and the server goes on.
 *
 * Requests are RESP arrays of bulk strings (what every client sends) or inline commands (a
 * line of words separated by spaces, as typed into telnet; no quoting). Commands: PING,
 * ECHO, GET, SET [NX|XX|GET], DEL, EXISTS, INCR, INCRBY, DECR, DECRBY, APPEND, STRLEN, MGET,
 * MSET, DBSIZE, FLUSHDB, FLUSHALL, SELECT 0, QUIT, and stubs of COMMAND, CONFIG GET/SET,
 * INFO and CLIENT so that redis-cli and redis-benchmark start. Keys never expire (SET's EX
 * and PX are refused).
 *
 * Bounds, each answered with a RESP error rather than a crash: RESP_MAX_ARGS arguments,
 * RESP_MAX_BULK bytes in one argument, RESP_MAX_INLINE bytes in an inline command or a
 * header line, RESP_MAX_QUERY bytes in a whole command (a protocol error closes the
 * connection, as in Redis), RESP_MAX_REPLY bytes in one reply, and the arena. */
#ifndef RESP_H
#define RESP_H

#ifdef NET_HOST_TEST
#include <stddef.h>
#include <string.h>
#include "../include/ftvm.h"
#else
#include "rt.h"
#endif

#define RESP_MAX_ARGS 1024
#define RESP_MAX_BULK (512 * 1024)
#define RESP_MAX_INLINE (64 * 1024)
#define RESP_MAX_QUERY (RESP_MAX_BULK + RESP_MAX_INLINE)
#define RESP_MAX_REPLY (4 * 1024 * 1024)
/* A connection stops executing commands while this much output waits to be sent. */
#define RESP_OUT_HIGH (64 * 1024)

#define INT64_MAX_ ((int64_t)0x7fffffffffffffffL)
#define INT64_MIN_ (-INT64_MAX_ - 1)

struct resp_conn {
	uint8_t *in;        /* received, not yet executed */
	uint32_t in_len, in_cap;
	uint8_t *out;       /* replies: out[out_off:out_len] still to send */
	uint32_t out_off, out_len, out_cap;
	uint8_t closing;    /* QUIT or a protocol error: close once the output is sent */
	uint8_t oom;        /* an allocation failed while building the current reply */
};

struct resp_stats {
	uint64_t commands, protocol_errors, connections;
	uint64_t arena_size, arena_used; /* bytes of the arena handed out (blocks in use) */
	uint64_t keys;
};
extern struct resp_stats resp_stats;

/* Start with an empty store over arena[0:size] (16-byte aligned). */
void resp_init(void *arena, size_t size);

/* A new connection's state (zeroed) / release its buffers. */
void resp_conn_open(struct resp_conn *c);
void resp_conn_close(struct resp_conn *c);

/* Room in c's input for another n bytes without passing RESP_MAX_QUERY: the bytes
 * resp_feed would take now. */
size_t resp_in_room(const struct resp_conn *c);

/* Append received bytes to c's input: returns how many it took (fewer than n when the
 * input is at RESP_MAX_QUERY or the arena is full; the caller keeps the rest). */
size_t resp_feed(struct resp_conn *c, const void *data, size_t n);

/* Execute the complete commands in c's input, appending their replies to c's output,
 * until the input holds no whole command, RESP_OUT_HIGH bytes of output wait, or the
 * connection is closing. Returns the commands executed. */
int resp_process(struct resp_conn *c);

/* n bytes of output were handed to the transport. */
void resp_out_consume(struct resp_conn *c, size_t n);
static inline size_t resp_out_pending(const struct resp_conn *c) { return c->out_len - c->out_off; }

/* For tests: the value of key, or NULL. */
const uint8_t *resp_lookup(const void *key, size_t klen, size_t *vlen);

#endif

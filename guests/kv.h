/* The key-value store behind the kvstore guest: request handling, separate from the server
 * loop so that the host tests (nettest/) can drive it. Wire format: ../README.md, "kvstore".
 * No malloc: the table and the client table are static arrays. */
#ifndef KV_H
#define KV_H

#include "net.h"

#define KV_KEY_MAX 64      /* bytes in a key */
#define KV_VAL_MAX 1024    /* bytes in a value */
#define KV_KEYS 4096       /* keys stored at most */
/* Clients remembered at most (least recently used evicted). Exactly-once holds for a client
 * while fewer than KV_CLIENTS other clients arrive between two of its requests; past that it
 * gets ERR nosession instead of a second execution (README.md, "kvstore"). */
#define KV_CLIENTS 1024
/* "<client-id> <request-id> OK <value>": two 20-digit numbers, separators, the value. */
#define KV_REPLY_MAX (20 + 1 + 20 + 1 + 3 + KV_VAL_MAX)

struct kv_stats {
	uint64_t requests;   /* datagrams handled */
	uint64_t executed;   /* requests executed (each at most once) */
	uint64_t duplicates; /* answered from the client table */
	uint64_t stale;      /* answered ERR stale */
	uint64_t nosession;  /* answered ERR nosession: an unknown client past request id 1 */
	uint64_t dropped;    /* no reply: no parsable client and request id */
	uint64_t evicted;    /* clients forgotten to make room */
};
extern struct kv_stats kv_stats;

/* Empty the store, the client table and the counters. */
void kv_init(void);

/* Handle one request datagram. Returns the reply (valid until the next call) and sets
 * *reply_len, or returns NULL when the datagram gets no reply. */
const char *kv_handle(const uint8_t *req, size_t len, size_t *reply_len);

/* Set by kv_handle: the request it ran changed state (anything but a GET, including a
 * session's first request); 0 for a GET, a duplicate, or no request run. A store that
 * persists logs exactly these requests and feeds them to kv_restore at boot. */
extern int kv_changed;
void kv_restore(const uint8_t *req, size_t len);

/* The UDP handler: kv_handle, and the reply (if any) back to the sender with udp_send. */
void kv_udp_handler(const struct udp_dgram *d, void *ctx);

/* For tests: the stored value of key, or NULL. */
const char *kv_lookup(const char *key, size_t klen, size_t *vlen);
/* Keys and clients stored. */
int kv_key_count(void);
int kv_client_count(void);

#endif

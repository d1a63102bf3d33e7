/* The key-value store behind kvstore: see kv.h and ../README.md, "kvstore".
 *
 * Keys live in a static arena of KV_KEYS entries indexed by an open-addressing (linear
 * probing) table of twice as many slots; deleting shifts the following run back, so there
 * are no tombstones. Clients live in KV_CLIENTS entries indexed the same way, on a doubly
 * linked list from the most to the least recently used: a new client when the table is
 * full replaces the least recently used one. Each client keeps the id and the reply of its
 * last request, which makes a retransmitted request return the same reply without running
 * again. */
#include "kv.h"

struct kv_stats kv_stats;

/* ---- the store ---- */

#define KV_SLOTS (2 * KV_KEYS) /* a power of two */

struct kv_entry {
	uint32_t hash;
	uint8_t klen;
	uint16_t vlen;
	char key[KV_KEY_MAX];
	char val[KV_VAL_MAX];
};
static struct kv_entry entries[KV_KEYS];
static uint16_t kv_slot[KV_SLOTS]; /* entry index + 1; 0 is empty */
static uint16_t kv_free[KV_KEYS];  /* free entry indices (a stack) */
static int kv_nfree;

/* ---- clients ---- */

#define CL_SLOTS (2 * KV_CLIENTS) /* a power of two */

struct kv_client {
	uint64_t id, last_rid;
	short prev, next; /* the LRU list: -1 ends it */
	uint16_t reply_len;
	char reply[KV_REPLY_MAX];
};
static struct kv_client clients[KV_CLIENTS];
static uint16_t cl_slot[CL_SLOTS]; /* client index + 1; 0 is empty */
static int cl_count;
static int lru_head = -1, lru_tail = -1; /* most and least recently used */

static char scratch[KV_REPLY_MAX]; /* replies that are not stored (ERR stale) */

static uint32_t key_hash(const uint8_t *k, size_t n)
{
	uint64_t h = 14695981039346656037UL; /* FNV-1a */
	for (size_t i = 0; i < n; i++) {
		h ^= k[i];
		h *= 1099511628211UL;
	}
	return (uint32_t)(h ^ h >> 32);
}

static uint32_t id_hash(uint64_t x)
{
	x ^= x >> 33; /* murmur3's finalizer */
	x *= 0xff51afd7ed558ccdUL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53UL;
	x ^= x >> 33;
	return (uint32_t)x;
}

static uint32_t kv_home(uint16_t v) { return entries[v - 1].hash & (KV_SLOTS - 1); }
static uint32_t cl_home(uint16_t v) { return id_hash(clients[v - 1].id) & (CL_SLOTS - 1); }

/* Empty slot i of a linear-probing table, moving back every later entry of the run whose
 * home slot is not cyclically in (i, j]: the table stays as if they had been inserted
 * without the deleted one. */
static void slot_delete(uint16_t *slots, uint32_t mask, uint32_t i, uint32_t (*home)(uint16_t))
{
	uint32_t j = i;
	for (;;) {
		j = (j + 1) & mask;
		if (slots[j] == 0)
			break;
		uint32_t k = home(slots[j]);
		int stays = i <= j ? (k > i && k <= j) : (k > i || k <= j);
		if (!stays) {
			slots[i] = slots[j];
			i = j;
		}
	}
	slots[i] = 0;
}

void kv_init(void)
{
	memset(entries, 0, sizeof entries);
	memset(kv_slot, 0, sizeof kv_slot);
	for (int i = 0; i < KV_KEYS; i++)
		kv_free[i] = (uint16_t)(KV_KEYS - 1 - i);
	kv_nfree = KV_KEYS;
	memset(clients, 0, sizeof clients);
	memset(cl_slot, 0, sizeof cl_slot);
	cl_count = 0;
	lru_head = lru_tail = -1;
	memset(&kv_stats, 0, sizeof kv_stats);
}

int kv_key_count(void) { return KV_KEYS - kv_nfree; }
int kv_client_count(void) { return cl_count; }

/* The slot holding key, or -1 - the empty slot where it would go. */
static int kv_find(const uint8_t *k, size_t n, uint32_t h)
{
	for (uint32_t i = h & (KV_SLOTS - 1);; i = (i + 1) & (KV_SLOTS - 1)) {
		uint16_t v = kv_slot[i];
		if (v == 0)
			return -1 - (int)i;
		struct kv_entry *e = &entries[v - 1];
		if (e->hash == h && e->klen == n && memcmp(e->key, k, n) == 0)
			return (int)i;
	}
}

const char *kv_lookup(const char *key, size_t klen, size_t *vlen)
{
	if (klen > KV_KEY_MAX)
		return NULL;
	int s = kv_find((const uint8_t *)key, klen, key_hash((const uint8_t *)key, klen));
	if (s < 0)
		return NULL;
	struct kv_entry *e = &entries[kv_slot[s] - 1];
	*vlen = e->vlen;
	return e->val;
}

/* ---- the client table ---- */

static void lru_unlink(int c)
{
	struct kv_client *p = &clients[c];
	if (p->prev >= 0)
		clients[p->prev].next = p->next;
	else
		lru_head = p->next;
	if (p->next >= 0)
		clients[p->next].prev = p->prev;
	else
		lru_tail = p->prev;
}

static void lru_push_front(int c)
{
	clients[c].prev = -1;
	clients[c].next = (short)lru_head;
	if (lru_head >= 0)
		clients[lru_head].prev = (short)c;
	lru_head = c;
	if (lru_tail < 0)
		lru_tail = c;
}

/* The slot holding client id, or -1 - the empty slot where it would go. */
static int cl_find(uint64_t id)
{
	for (uint32_t i = id_hash(id) & (CL_SLOTS - 1);; i = (i + 1) & (CL_SLOTS - 1)) {
		uint16_t v = cl_slot[i];
		if (v == 0)
			return -1 - (int)i;
		if (clients[v - 1].id == id)
			return (int)i;
	}
}

/* Client id, marked most recently used, or NULL if unknown. */
static struct kv_client *client_get(uint64_t id)
{
	int s = cl_find(id);
	if (s < 0)
		return NULL;
	int c = cl_slot[s] - 1;
	if (c != lru_head) {
		lru_unlink(c);
		lru_push_front(c);
	}
	return &clients[c];
}

/* A new client id (not in the table), replacing the least recently used one if full. */
static struct kv_client *client_new(uint64_t id)
{
	int c;
	if (cl_count == KV_CLIENTS) {
		c = lru_tail;
		lru_unlink(c);
		slot_delete(cl_slot, CL_SLOTS - 1, (uint32_t)cl_find(clients[c].id), cl_home);
		kv_stats.evicted++;
	} else {
		c = cl_count++;
	}
	clients[c].id = id;
	clients[c].reply_len = 0;
	int s = cl_find(id); /* after any deletion, which may have moved slots */
	cl_slot[-1 - s] = (uint16_t)(c + 1);
	lru_push_front(c);
	return &clients[c];
}

/* ---- requests ---- */

/* The reply being built: at most KV_REPLY_MAX bytes (the largest reply fits). */
struct reply {
	char *buf;
	size_t len;
};

static void put_bytes(struct reply *r, const void *p, size_t n)
{
	if (r->len + n > KV_REPLY_MAX)
		n = KV_REPLY_MAX - r->len; /* cannot happen: every reply fits */
	memcpy(r->buf + r->len, p, n);
	r->len += n;
}
static void put_str(struct reply *r, const char *s) { put_bytes(r, s, strlen(s)); }

/* "<client-id> <request-id> " */
static void put_header(struct reply *r, uint64_t cid, uint64_t rid)
{
	char num[20];
	put_bytes(r, num, net_fmt_u64(num, cid));
	put_bytes(r, " ", 1);
	put_bytes(r, num, net_fmt_u64(num, rid));
	put_bytes(r, " ", 1);
}

/* The length of the token at p[0:n]: up to the first space or the end. */
static size_t token(const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n && p[i] != ' ')
		i++;
	return i;
}

static int valid_key(const uint8_t *k, size_t n)
{
	if (n == 0 || n > KV_KEY_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (k[i] < 0x21 || k[i] > 0x7e)
			return 0;
	return 1;
}

enum { OP_PUT, OP_GET, OP_APPEND, OP_DEL, OP_HELLO, OP_BAD };

static int parse_op(const uint8_t *p, size_t n)
{
	static const char *const names[] = { "PUT", "GET", "APPEND", "DEL", "HELLO" };
	for (int i = 0; i < OP_BAD; i++)
		if (strlen(names[i]) == n && memcmp(names[i], p, n) == 0)
			return i;
	return OP_BAD;
}

/* Run the request p[0:n] (everything after "<client-id> <request-id> ") and append the rest
 * of the reply to r. */
static int last_op; /* the op execute ran last */

static void execute(const uint8_t *p, size_t n, struct reply *r)
{
	size_t oplen = token(p, n);
	int op = parse_op(p, oplen);
	last_op = op;
	if (op == OP_HELLO) { /* a client's first request, with no effect but its session */
		put_str(r, oplen == n ? "OK" : "ERR syntax");
		return;
	}
	if (oplen == n) { /* no key */
		put_str(r, op == OP_BAD ? "ERR badop" : "ERR syntax");
		return;
	}
	if (op == OP_BAD) {
		put_str(r, "ERR badop");
		return;
	}
	const uint8_t *key = p + oplen + 1;
	size_t rest = n - oplen - 1, klen = token(key, rest);
	const uint8_t *val = NULL;
	size_t vlen = 0;
	if (op == OP_PUT || op == OP_APPEND) {
		if (klen == rest) { /* "PUT key" without the space before the value */
			put_str(r, valid_key(key, klen) ? "ERR syntax" : "ERR badkey");
			return;
		}
		val = key + klen + 1;
		vlen = rest - klen - 1;
	} else if (klen != rest) { /* "GET key junk" */
		put_str(r, valid_key(key, klen) ? "ERR syntax" : "ERR badkey");
		return;
	}
	if (!valid_key(key, klen)) {
		put_str(r, "ERR badkey");
		return;
	}

	uint32_t h = key_hash(key, klen);
	int s = kv_find(key, klen, h);
	struct kv_entry *e = s >= 0 ? &entries[kv_slot[s] - 1] : NULL;
	switch (op) {
	case OP_GET:
		if (e == NULL) {
			put_str(r, "NOTFOUND");
		} else {
			put_str(r, "OK ");
			put_bytes(r, e->val, e->vlen);
		}
		return;
	case OP_DEL:
		if (e == NULL) {
			put_str(r, "NOTFOUND");
			return;
		}
		kv_free[kv_nfree++] = (uint16_t)(kv_slot[s] - 1);
		slot_delete(kv_slot, KV_SLOTS - 1, (uint32_t)s, kv_home);
		put_str(r, "OK");
		return;
	case OP_APPEND:
		if (e != NULL) {
			if (e->vlen + vlen > KV_VAL_MAX) {
				put_str(r, "ERR toolong");
				return;
			}
			memcpy(e->val + e->vlen, val, vlen);
			e->vlen = (uint16_t)(e->vlen + vlen);
			put_str(r, "OK");
			return;
		}
		/* APPEND to a missing key is PUT. */
		/* fall through */
	default: /* OP_PUT */
		if (vlen > KV_VAL_MAX) {
			put_str(r, "ERR toolong");
			return;
		}
		if (e == NULL) {
			if (kv_nfree == 0) {
				put_str(r, "ERR full");
				return;
			}
			e = &entries[kv_free[--kv_nfree]];
			e->hash = h;
			e->klen = (uint8_t)klen;
			memcpy(e->key, key, klen);
			kv_slot[-1 - s] = (uint16_t)(e - entries + 1);
		}
		memcpy(e->val, val, vlen);
		e->vlen = (uint16_t)vlen;
		put_str(r, "OK");
		return;
	}
}

int kv_changed;

/* kv_handle, or with restore, a request from the store's own log: run it whatever the
 * client table says (the table is rebuilt by these very requests). */
static const char *handle(const uint8_t *req, size_t len, size_t *reply_len, int restore)
{
	uint64_t cid, rid;
	kv_changed = 0;
	if (!restore)
		kv_stats.requests++;

	/* One trailing newline (or CRLF) is not part of the request: nc and friends add it. */
	if (len > 0 && req[len - 1] == '\n')
		len--;
	if (len > 0 && req[len - 1] == '\r')
		len--;

	/* Without a client id and a request id there is no one to answer. */
	size_t n1 = token(req, len);
	if (n1 == len || !net_parse_u64(req, n1, &cid)) {
		kv_stats.dropped++;
		return NULL;
	}
	const uint8_t *p = req + n1 + 1;
	size_t rest = len - n1 - 1, n2 = token(p, rest);
	if (!net_parse_u64(p, n2, &rid)) {
		kv_stats.dropped++;
		return NULL;
	}

	struct kv_client *c = client_get(cid);
	if (restore)
		goto run;
	if (c != NULL && rid == c->last_rid) {
		kv_stats.duplicates++;
		*reply_len = c->reply_len;
		return c->reply;
	}
	if (c != NULL && rid < c->last_rid) {
		struct reply r = { scratch, 0 };
		put_header(&r, cid, rid);
		put_str(&r, "ERR stale");
		kv_stats.stale++;
		*reply_len = r.len;
		return scratch;
	}

	if (c == NULL && rid != 1) {
		/* A client starts at request id 1. One the table does not hold with a higher id
		 * was forgotten (evicted): its last request may have run, and running a retry of
		 * it could run it twice. Say so instead; not stored. */
		struct reply r = { scratch, 0 };
		put_header(&r, cid, rid);
		put_str(&r, "ERR nosession");
		kv_stats.nosession++;
		*reply_len = r.len;
		return scratch;
	}
run:
	if (c == NULL)
		c = client_new(cid);
	c->last_rid = rid;
	struct reply r = { c->reply, 0 };
	put_header(&r, cid, rid);
	last_op = OP_BAD;
	if (n2 == rest) /* "<client-id> <request-id>" and nothing else */
		put_str(&r, "ERR syntax");
	else
		execute(p + n2 + 1, rest - n2 - 1, &r);
	c->reply_len = (uint16_t)r.len;
	/* Everything but a GET changes what a later request sees: the store, or the
	 * session a retry is answered from. */
	kv_changed = last_op != OP_GET;
	if (!restore)
		kv_stats.executed++;
	*reply_len = r.len;
	return c->reply;
}

const char *kv_handle(const uint8_t *req, size_t len, size_t *reply_len)
{
	return handle(req, len, reply_len, 0);
}

void kv_restore(const uint8_t *req, size_t len)
{
	size_t n;
	handle(req, len, &n, 1);
}

void kv_udp_handler(const struct udp_dgram *d, void *ctx)
{
	size_t n;
	(void)ctx;
	const char *r = kv_handle(d->data, d->len, &n);
	if (r != NULL && d->src_port != 0)
		udp_send(d->src_ip, d->src_port, d->dst_port, r, n);
}

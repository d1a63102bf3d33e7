/* The RESP server's parser, executor and store: see resp.h. */
#include "resp.h"

struct resp_stats resp_stats;

/* ---- the arena: power-of-two size classes, a free list each ---- */

#define CLASS_MIN 5  /* 32-byte blocks */
#define CLASS_MAX 24 /* 16 MiB blocks */

struct block {
	uint64_t cls; /* size class; the payload follows (16-byte aligned) */
	uint64_t pad;
};
struct free_block {
	struct free_block *next;
};

static uint8_t *arena_next, *arena_end;
static struct free_block *free_list[CLASS_MAX + 1];

static int size_class(size_t n)
{
	size_t need = n + sizeof(struct block);
	int c = CLASS_MIN;
	while (c <= CLASS_MAX && ((size_t)1 << c) < need)
		c++;
	return c;
}

/* A block of at least n bytes, or NULL (the arena is full). */
static void *mem_alloc(size_t n)
{
	int c = size_class(n);
	if (c > CLASS_MAX)
		return NULL;
	struct block *b;
	if (free_list[c]) {
		b = (struct block *)(void *)free_list[c];
		free_list[c] = free_list[c]->next;
	} else {
		size_t sz = (size_t)1 << c;
		if ((size_t)(arena_end - arena_next) < sz)
			return NULL;
		b = (struct block *)(void *)arena_next;
		arena_next += sz;
	}
	b->cls = (uint64_t)c;
	resp_stats.arena_used += (uint64_t)1 << c;
	return b + 1;
}

static void mem_free(void *p)
{
	if (p == NULL)
		return;
	struct block *b = (struct block *)p - 1;
	int c = (int)b->cls;
	resp_stats.arena_used -= (uint64_t)1 << c;
	struct free_block *f = (struct free_block *)(void *)b;
	f->next = free_list[c];
	free_list[c] = f;
}

/* Bytes usable in p's block. */
static size_t mem_cap(const void *p)
{
	const struct block *b = (const struct block *)p - 1;
	return ((size_t)1 << b->cls) - sizeof(struct block);
}

/* ---- the store: chained hash table, one block per entry (key, then value) ---- */

struct ent {
	struct ent *next;
	uint32_t hash, klen, vlen, pad;
	uint8_t data[]; /* key, then value */
};

static struct ent **table;
static uint32_t nbuckets; /* a power of two */
static uint64_t nkeys;

static uint32_t hash_bytes(const uint8_t *k, size_t n)
{
	uint64_t h = 14695981039346656037UL; /* FNV-1a */
	for (size_t i = 0; i < n; i++) {
		h ^= k[i];
		h *= 1099511628211UL;
	}
	return (uint32_t)(h ^ h >> 32);
}

static struct ent **find(const uint8_t *k, size_t n, uint32_t h)
{
	struct ent **pp = &table[h & (nbuckets - 1)];
	for (; *pp; pp = &(*pp)->next) {
		struct ent *e = *pp;
		if (e->hash == h && e->klen == n && memcmp(e->data, k, n) == 0)
			return pp;
	}
	return pp;
}

static void maybe_grow(void)
{
	if (nkeys < nbuckets || nbuckets >= (1u << 24))
		return;
	uint32_t nb = nbuckets * 2;
	struct ent **t = mem_alloc((size_t)nb * sizeof *t);
	if (t == NULL)
		return; /* longer chains, still correct */
	memset(t, 0, (size_t)nb * sizeof *t);
	for (uint32_t i = 0; i < nbuckets; i++) {
		struct ent *e = table[i];
		while (e) {
			struct ent *next = e->next;
			e->next = t[e->hash & (nb - 1)];
			t[e->hash & (nb - 1)] = e;
			e = next;
		}
	}
	mem_free(table);
	table = t;
	nbuckets = nb;
}

static struct ent *lookup(const uint8_t *k, size_t n)
{
	return *find(k, n, hash_bytes(k, n));
}

const uint8_t *resp_lookup(const void *key, size_t klen, size_t *vlen)
{
	struct ent *e = lookup(key, klen);
	if (e == NULL)
		return NULL;
	*vlen = e->vlen;
	return e->data + e->klen;
}

/* Set key to the concatenation of a[0:an] and b[0:bn] (an entry's value may be one of
 * them). Returns the entry, or NULL when the arena is full (the old value stays). */
static struct ent *store(const uint8_t *k, size_t kn, const uint8_t *a, size_t an,
			 const uint8_t *b, size_t bn)
{
	uint32_t h = hash_bytes(k, kn);
	struct ent **pp = find(k, kn, h), *old = *pp;
	size_t need = sizeof(struct ent) + kn + an + bn;
	if (old && mem_cap(old) >= need) {
		uint8_t *v = old->data + kn;
		if (an > 0 && a != v)
			memmove(v, a, an);
		if (bn > 0)
			memmove(v + an, b, bn);
		old->vlen = (uint32_t)(an + bn);
		return old;
	}
	struct ent *e = mem_alloc(need);
	if (e == NULL)
		return NULL;
	e->hash = h;
	e->klen = (uint32_t)kn;
	e->vlen = (uint32_t)(an + bn);
	e->pad = 0;
	memcpy(e->data, k, kn);
	if (an > 0)
		memcpy(e->data + kn, a, an);
	if (bn > 0)
		memcpy(e->data + kn + an, b, bn);
	if (old) {
		e->next = old->next;
		*pp = e;
		mem_free(old);
	} else {
		e->next = NULL;
		*pp = e;
		nkeys++;
		resp_stats.keys = nkeys;
		maybe_grow();
	}
	return e;
}

static int delete(const uint8_t *k, size_t n)
{
	struct ent **pp = find(k, n, hash_bytes(k, n)), *e = *pp;
	if (e == NULL)
		return 0;
	*pp = e->next;
	mem_free(e);
	nkeys--;
	resp_stats.keys = nkeys;
	return 1;
}

static void flush_all(void)
{
	for (uint32_t i = 0; i < nbuckets; i++) {
		while (table[i]) {
			struct ent *e = table[i];
			table[i] = e->next;
			mem_free(e);
		}
	}
	nkeys = 0;
	resp_stats.keys = 0;
}

void resp_init(void *arena, size_t size)
{
	memset(&resp_stats, 0, sizeof resp_stats);
	memset(free_list, 0, sizeof free_list);
	arena_next = arena;
	arena_end = (uint8_t *)arena + size;
	resp_stats.arena_size = size;
	nbuckets = 1024;
	nkeys = 0;
	table = mem_alloc(nbuckets * sizeof *table);
	if (table)
		memset(table, 0, nbuckets * sizeof *table);
	else
		nbuckets = 0; /* an arena too small for anything: every write gets -OOM */
}

/* ---- connections ---- */

void resp_conn_open(struct resp_conn *c)
{
	memset(c, 0, sizeof *c);
	resp_stats.connections++;
}

void resp_conn_close(struct resp_conn *c)
{
	mem_free(c->in);
	mem_free(c->out);
	memset(c, 0, sizeof *c);
}

/* Make room for n more bytes in a buffer (*buf, *len used, *cap): 0, or -1 when that would
 * pass max or the arena is full. */
static int reserve(uint8_t **buf, uint32_t len, uint32_t *cap, size_t n, size_t max)
{
	if ((size_t)len + n <= *cap)
		return 0;
	if ((size_t)len + n > max)
		return -1;
	size_t want = *cap ? (size_t)*cap * 2 : 4096 - sizeof(struct block);
	while (want < (size_t)len + n)
		want = want * 2 + sizeof(struct block);
	if (want > max)
		want = max;
	uint8_t *nb = mem_alloc(want);
	if (nb == NULL)
		return -1;
	if (len > 0)
		memcpy(nb, *buf, len);
	mem_free(*buf);
	*buf = nb;
	*cap = (uint32_t)mem_cap(nb);
	return 0;
}

size_t resp_in_room(const struct resp_conn *c) { return RESP_MAX_QUERY - c->in_len; }

size_t resp_feed(struct resp_conn *c, const void *data, size_t n)
{
	if (n > resp_in_room(c))
		n = resp_in_room(c);
	while (n > 0 && reserve(&c->in, c->in_len, &c->in_cap, n, RESP_MAX_QUERY) < 0)
		n /= 2; /* the arena is full: take what fits in the buffer we have */
	memcpy(c->in + c->in_len, data, n);
	c->in_len += (uint32_t)n;
	return n;
}

void resp_out_consume(struct resp_conn *c, size_t n)
{
	c->out_off += (uint32_t)n;
	if (c->out_off == c->out_len) {
		c->out_off = c->out_len = 0;
		if (c->out_cap > 64 * 1024) { /* after a large reply, give the memory back */
			mem_free(c->out);
			c->out = NULL;
			c->out_cap = 0;
		}
	}
}

/* ---- replies ---- */

static void out(struct resp_conn *c, const void *p, size_t n)
{
	if (c->oom)
		return;
	if (c->out_off > 0 && c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (reserve(&c->out, c->out_len, &c->out_cap, n, RESP_MAX_REPLY + RESP_OUT_HIGH) < 0) {
		c->oom = 1;
		return;
	}
	memcpy(c->out + c->out_len, p, n);
	c->out_len += (uint32_t)n;
}

static void out_str(struct resp_conn *c, const char *s) { out(c, s, strlen(s)); }

static size_t fmt_i64(char *buf, int64_t v)
{
	char tmp[24];
	size_t n = 0, i = 0;
	uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
	do {
		tmp[n++] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		buf[i++] = '-';
	while (n)
		buf[i++] = tmp[--n];
	return i;
}

/* A line "<type><number>\r\n". */
static void out_num(struct resp_conn *c, char type, int64_t v)
{
	char buf[32];
	buf[0] = type;
	size_t n = 1 + fmt_i64(buf + 1, v);
	buf[n++] = '\r';
	buf[n++] = '\n';
	out(c, buf, n);
}

static void out_bulk(struct resp_conn *c, const void *p, size_t n)
{
	out_num(c, '$', (int64_t)n);
	out(c, p, n);
	out(c, "\r\n", 2);
}

static void out_nil(struct resp_conn *c) { out_str(c, "$-1\r\n"); }
static void out_ok(struct resp_conn *c) { out_str(c, "+OK\r\n"); }

/* "-ERR <a><b><c>\r\n"; the caller's text has no CR or LF (b is sanitised). */
static void out_err3(struct resp_conn *c, const char *a, const uint8_t *b, size_t bn,
		     const char *d)
{
	out_str(c, a);
	for (size_t i = 0; i < bn && i < 128; i++) {
		char ch = (char)b[i];
		out(c, (ch == '\r' || ch == '\n') ? " " : &ch, 1);
	}
	out_str(c, d);
}

/* ---- the parser ---- */

struct cmd {
	int argc;
	const uint8_t *argv[RESP_MAX_ARGS];
	size_t argl[RESP_MAX_ARGS];
};
static struct cmd cmd;

enum { PARSE_MORE = 0, PARSE_ERROR = -1 };
static const char *parse_error;

/* s[0:n] as a signed decimal integer without spaces: 1 and *v, or 0. */
static int parse_i64(const uint8_t *s, size_t n, int64_t *v)
{
	size_t i = 0;
	int neg = 0;
	uint64_t u = 0, limit;
	if (n == 0 || n > 20)
		return 0;
	if (s[0] == '-') {
		neg = 1;
		i = 1;
		if (n == 1)
			return 0;
	}
	if (s[i] == '0' && n > i + 1)
		return 0; /* leading zeros: not the canonical form Redis stores */
	limit = neg ? (uint64_t)1 << 63 : ((uint64_t)1 << 63) - 1;
	for (; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return 0;
		unsigned d = (unsigned)(s[i] - '0');
		if (u > (limit - d) / 10)
			return 0;
		u = u * 10 + d;
	}
	if (neg && u == 0)
		return 0; /* "-0" */
	*v = neg ? (int64_t)(0 - u) : (int64_t)u;
	return 1;
}

static const uint8_t *find_byte(const uint8_t *p, size_t n, uint8_t b)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] == b)
			return p + i;
	return NULL;
}

/* The header line at buf[pos:len] ("*N" or "$N", ending in CRLF): its number in *v and the
 * position after it in *next. 1, PARSE_MORE, or PARSE_ERROR. */
static int header(const uint8_t *buf, size_t len, size_t pos, int64_t *v, size_t *next,
		  const char *too_big, const char *invalid)
{
	const uint8_t *cr = find_byte(buf + pos, len - pos, '\r');
	if (cr == NULL) {
		if (len - pos > RESP_MAX_INLINE) {
			parse_error = too_big;
			return PARSE_ERROR;
		}
		return PARSE_MORE;
	}
	size_t at = (size_t)(cr - buf);
	if (at + 1 >= len)
		return PARSE_MORE;
	if (buf[at + 1] != '\n' || !parse_i64(buf + pos + 1, at - pos - 1, v)) {
		parse_error = invalid;
		return PARSE_ERROR;
	}
	*next = at + 2;
	return 1;
}

/* Parse one command at buf[0:len] into cmd: the bytes it takes (cmd.argc may be 0: an
 * empty command, skipped), PARSE_MORE, or PARSE_ERROR with parse_error set. */
static long parse(const uint8_t *buf, size_t len)
{
	cmd.argc = 0;
	if (len == 0)
		return PARSE_MORE;
	if (buf[0] != '*') {
		/* Inline: words separated by spaces, up to LF. */
		const uint8_t *nl = find_byte(buf, len, '\n');
		if (nl == NULL) {
			if (len > RESP_MAX_INLINE) {
				parse_error = "Protocol error: too big inline request";
				return PARSE_ERROR;
			}
			return PARSE_MORE;
		}
		size_t end = (size_t)(nl - buf), i = 0;
		if (end > RESP_MAX_INLINE) {
			parse_error = "Protocol error: too big inline request";
			return PARSE_ERROR;
		}
		size_t stop = end > 0 && buf[end - 1] == '\r' ? end - 1 : end;
		while (i < stop) {
			while (i < stop && (buf[i] == ' ' || buf[i] == '\t'))
				i++;
			if (i == stop)
				break;
			size_t s = i;
			while (i < stop && buf[i] != ' ' && buf[i] != '\t')
				i++;
			if (cmd.argc == RESP_MAX_ARGS) {
				parse_error = "Protocol error: too many arguments";
				return PARSE_ERROR;
			}
			cmd.argv[cmd.argc] = buf + s;
			cmd.argl[cmd.argc] = i - s;
			cmd.argc++;
		}
		return (long)end + 1;
	}

	int64_t n;
	size_t pos;
	int r = header(buf, len, 0, &n, &pos, "Protocol error: too big mbulk count string",
		       "Protocol error: invalid multibulk length");
	if (r <= 0)
		return r;
	if (n > RESP_MAX_ARGS) {
		parse_error = "Protocol error: invalid multibulk length";
		return PARSE_ERROR;
	}
	for (int64_t i = 0; i < n; i++) {
		if (pos >= len)
			return PARSE_MORE;
		if (buf[pos] != '$') {
			static char msg[] = "Protocol error: expected '$', got ' '";
			msg[sizeof msg - 3] = (buf[pos] >= 32 && buf[pos] < 127) ? (char)buf[pos] : '?';
			parse_error = msg;
			return PARSE_ERROR;
		}
		int64_t bl;
		r = header(buf, len, pos, &bl, &pos, "Protocol error: too big bulk count string",
			   "Protocol error: invalid bulk length");
		if (r <= 0)
			return r;
		if (bl < 0 || bl > RESP_MAX_BULK) {
			parse_error = "Protocol error: invalid bulk length";
			return PARSE_ERROR;
		}
		if (pos + (size_t)bl + 2 > RESP_MAX_QUERY) {
			parse_error = "Protocol error: command larger than the query buffer limit";
			return PARSE_ERROR;
		}
		if (pos + (size_t)bl + 2 > len)
			return PARSE_MORE;
		if (buf[pos + bl] != '\r' || buf[pos + bl + 1] != '\n') {
			parse_error = "Protocol error: bulk string not followed by CRLF";
			return PARSE_ERROR;
		}
		cmd.argv[cmd.argc] = buf + pos;
		cmd.argl[cmd.argc] = (size_t)bl;
		cmd.argc++;
		pos += (size_t)bl + 2;
	}
	return (long)pos;
}

/* ---- the commands ---- */

static int arg_is(int i, const char *name)
{
	size_t n = strlen(name);
	if (cmd.argl[i] != n)
		return 0;
	for (size_t j = 0; j < n; j++) {
		uint8_t ch = cmd.argv[i][j];
		if (ch >= 'a' && ch <= 'z')
			ch = (uint8_t)(ch - 'a' + 'A');
		if (ch != (uint8_t)name[j])
			return 0;
	}
	return 1;
}

static void err_arity(struct resp_conn *c)
{
	out_err3(c, "-ERR wrong number of arguments for '", cmd.argv[0], cmd.argl[0],
		 "' command\r\n");
}

static void err_oom(struct resp_conn *c)
{
	out_str(c, "-OOM command not allowed when used memory > 'maxmemory'.\r\n");
}

static void cmd_incrby(struct resp_conn *c, int64_t by)
{
	const uint8_t *k = cmd.argv[1];
	size_t kn = cmd.argl[1];
	struct ent *e = lookup(k, kn);
	int64_t v = 0;
	if (e && !parse_i64(e->data + e->klen, e->vlen, &v)) {
		out_str(c, "-ERR value is not an integer or out of range\r\n");
		return;
	}
	if ((by > 0 && v > INT64_MAX_ - by) || (by < 0 && v < INT64_MIN_ - by)) {
		out_str(c, "-ERR increment or decrement would overflow\r\n");
		return;
	}
	v += by;
	char buf[24];
	size_t n = fmt_i64(buf, v);
	if (store(k, kn, (const uint8_t *)buf, n, NULL, 0) == NULL) {
		err_oom(c);
		return;
	}
	out_num(c, ':', v);
}

static void cmd_info(struct resp_conn *c)
{
	char buf[512];
	size_t n = 0;
#define ADD(s) do { size_t l_ = strlen(s); memcpy(buf + n, s, l_); n += l_; } while (0)
#define ADDNUM(v) do { n += fmt_i64(buf + n, (int64_t)(v)); } while (0)
	ADD("# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\n"
	    "ftvm_guest:redis\r\n\r\n# Memory\r\nused_memory:");
	ADDNUM(resp_stats.arena_used);
	ADD("\r\nmaxmemory:");
	ADDNUM(resp_stats.arena_size);
	ADD("\r\n\r\n# Stats\r\ntotal_connections_received:");
	ADDNUM(resp_stats.connections);
	ADD("\r\ntotal_commands_processed:");
	ADDNUM(resp_stats.commands);
	ADD("\r\n\r\n# Keyspace\r\ndb0:keys=");
	ADDNUM(resp_stats.keys);
	ADD(",expires=0,avg_ttl=0\r\n");
#undef ADD
#undef ADDNUM
	out_bulk(c, buf, n);
}

static void execute(struct resp_conn *c)
{
	int argc = cmd.argc;
	resp_stats.commands++;
#define ARITY(test) do { if (!(test)) { err_arity(c); return; } } while (0)
	if (arg_is(0, "GET")) {
		ARITY(argc == 2);
		struct ent *e = lookup(cmd.argv[1], cmd.argl[1]);
		if (e)
			out_bulk(c, e->data + e->klen, e->vlen);
		else
			out_nil(c);
	} else if (arg_is(0, "SET")) {
		ARITY(argc >= 3);
		int nx = 0, xx = 0, get = 0;
		for (int i = 3; i < argc; i++) {
			if (arg_is(i, "NX"))
				nx = 1;
			else if (arg_is(i, "XX"))
				xx = 1;
			else if (arg_is(i, "GET"))
				get = 1;
			else if (arg_is(i, "EX") || arg_is(i, "PX") || arg_is(i, "EXAT") ||
				 arg_is(i, "PXAT") || arg_is(i, "KEEPTTL")) {
				out_str(c, "-ERR this server does not expire keys\r\n");
				return;
			} else {
				out_str(c, "-ERR syntax error\r\n");
				return;
			}
		}
		if (nx && xx) {
			out_str(c, "-ERR syntax error\r\n");
			return;
		}
		struct ent *e = lookup(cmd.argv[1], cmd.argl[1]);
		if (get) { /* the old value first, then (maybe) the write */
			if (e)
				out_bulk(c, e->data + e->klen, e->vlen);
			else
				out_nil(c);
			if (c->oom)
				return;
		}
		if ((nx && e) || (xx && !e)) {
			if (!get)
				out_nil(c);
			return;
		}
		if (store(cmd.argv[1], cmd.argl[1], cmd.argv[2], cmd.argl[2], NULL, 0) == NULL) {
			if (get)
				c->oom = 1; /* replaces the reply with -OOM */
			else
				err_oom(c);
			return;
		}
		if (!get)
			out_ok(c);
	} else if (arg_is(0, "PING")) {
		ARITY(argc <= 2);
		if (argc == 2)
			out_bulk(c, cmd.argv[1], cmd.argl[1]);
		else
			out_str(c, "+PONG\r\n");
	} else if (arg_is(0, "ECHO")) {
		ARITY(argc == 2);
		out_bulk(c, cmd.argv[1], cmd.argl[1]);
	} else if (arg_is(0, "DEL") || arg_is(0, "UNLINK") || arg_is(0, "EXISTS")) {
		ARITY(argc >= 2);
		int exists = arg_is(0, "EXISTS");
		int64_t n = 0;
		for (int i = 1; i < argc; i++)
			n += exists ? lookup(cmd.argv[i], cmd.argl[i]) != NULL
				    : delete(cmd.argv[i], cmd.argl[i]);
		out_num(c, ':', n);
	} else if (arg_is(0, "INCR") || arg_is(0, "DECR")) {
		ARITY(argc == 2);
		cmd_incrby(c, arg_is(0, "INCR") ? 1 : -1);
	} else if (arg_is(0, "INCRBY") || arg_is(0, "DECRBY")) {
		ARITY(argc == 3);
		int64_t by;
		if (!parse_i64(cmd.argv[2], cmd.argl[2], &by) ||
		    (arg_is(0, "DECRBY") && by == INT64_MIN_)) {
			out_str(c, "-ERR value is not an integer or out of range\r\n");
			return;
		}
		cmd_incrby(c, arg_is(0, "INCRBY") ? by : -by);
	} else if (arg_is(0, "APPEND")) {
		ARITY(argc == 3);
		struct ent *e = lookup(cmd.argv[1], cmd.argl[1]);
		size_t have = e ? e->vlen : 0;
		if (have + cmd.argl[2] > RESP_MAX_BULK) {
			out_str(c, "-ERR string exceeds maximum allowed size\r\n");
			return;
		}
		e = store(cmd.argv[1], cmd.argl[1], e ? e->data + e->klen : NULL, have,
			  cmd.argv[2], cmd.argl[2]);
		if (e == NULL)
			err_oom(c);
		else
			out_num(c, ':', e->vlen);
	} else if (arg_is(0, "STRLEN")) {
		ARITY(argc == 2);
		struct ent *e = lookup(cmd.argv[1], cmd.argl[1]);
		out_num(c, ':', e ? e->vlen : 0);
	} else if (arg_is(0, "MGET")) {
		ARITY(argc >= 2);
		out_num(c, '*', argc - 1);
		for (int i = 1; i < argc; i++) {
			struct ent *e = lookup(cmd.argv[i], cmd.argl[i]);
			if (e)
				out_bulk(c, e->data + e->klen, e->vlen);
			else
				out_nil(c);
		}
	} else if (arg_is(0, "MSET")) {
		ARITY(argc >= 3 && argc % 2 == 1);
		for (int i = 1; i < argc; i += 2) {
			if (store(cmd.argv[i], cmd.argl[i], cmd.argv[i + 1], cmd.argl[i + 1], NULL,
				  0) == NULL) {
				err_oom(c); /* the pairs before this one are set, as far as they went */
				return;
			}
		}
		out_ok(c);
	} else if (arg_is(0, "DBSIZE")) {
		ARITY(argc == 1);
		out_num(c, ':', (int64_t)nkeys);
	} else if (arg_is(0, "FLUSHDB") || arg_is(0, "FLUSHALL")) {
		flush_all();
		out_ok(c);
	} else if (arg_is(0, "SELECT")) {
		ARITY(argc == 2);
		if (cmd.argl[1] == 1 && cmd.argv[1][0] == '0')
			out_ok(c);
		else
			out_str(c, "-ERR DB index is out of range\r\n");
	} else if (arg_is(0, "QUIT")) {
		out_ok(c);
		c->closing = 1;
	} else if (arg_is(0, "COMMAND")) {
		/* No command table: clients (redis-cli's hints) do without it. */
		if (argc >= 2 && arg_is(1, "COUNT"))
			out_str(c, ":0\r\n");
		else
			out_str(c, "*0\r\n");
	} else if (arg_is(0, "CONFIG")) {
		ARITY(argc >= 2);
		if (arg_is(1, "GET") && argc == 3) {
			/* What redis-benchmark asks at start; nothing persists here. */
			if (arg_is(2, "SAVE")) {
				out_str(c, "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
			} else if (arg_is(2, "APPENDONLY")) {
				out_str(c, "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n");
			} else if (arg_is(2, "DATABASES")) {
				out_str(c, "*2\r\n$9\r\ndatabases\r\n$1\r\n1\r\n");
			} else {
				out_str(c, "*0\r\n");
			}
		} else if (arg_is(1, "SET") || arg_is(1, "RESETSTAT")) {
			out_ok(c);
		} else {
			out_str(c, "-ERR unknown CONFIG subcommand or wrong number of arguments\r\n");
		}
	} else if (arg_is(0, "INFO")) {
		cmd_info(c);
	} else if (arg_is(0, "CLIENT")) {
		ARITY(argc >= 2);
		if (arg_is(1, "ID"))
			out_num(c, ':', (int64_t)resp_stats.connections);
		else
			out_ok(c);
	} else {
		out_err3(c, "-ERR unknown command '", cmd.argv[0], cmd.argl[0], "'\r\n");
	}
#undef ARITY
}

int resp_process(struct resp_conn *c)
{
	size_t pos = 0;
	int done = 0;
	while (!c->closing && resp_out_pending(c) < RESP_OUT_HIGH) {
		long r = parse(c->in + pos, c->in_len - pos);
		if (r == PARSE_MORE) {
			if (c->in_len - pos >= RESP_MAX_QUERY) {
				parse_error = "Protocol error: command larger than the query buffer limit";
				r = PARSE_ERROR;
			} else {
				break;
			}
		}
		if (r == PARSE_ERROR) {
			resp_stats.protocol_errors++;
			c->oom = 0;
			out_str(c, "-ERR ");
			out_str(c, parse_error);
			out_str(c, "\r\n");
			c->closing = 1;
			pos = c->in_len; /* the rest is not read */
			break;
		}
		pos += (size_t)r;
		if (cmd.argc == 0)
			continue;
		uint32_t mark = c->out_len;
		c->oom = 0;
		execute(c);
		done++;
		if (c->oom) { /* the reply did not fit: an error instead */
			c->out_len = mark;
			c->oom = 0;
			out_str(c, "-ERR reply too large or out of memory\r\n");
			if (c->oom) /* not even that fits: give up on the connection */
				c->closing = 1;
		}
	}
	if (pos > 0) {
		memmove(c->in, c->in + pos, c->in_len - pos);
		c->in_len -= (uint32_t)pos;
	}
	if (c->in_len == 0 && c->in_cap > 64 * 1024) {
		mem_free(c->in);
		c->in = NULL;
		c->in_cap = 0;
	}
	return done;
}

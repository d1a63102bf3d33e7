/* A small UDP/IPv4 stack over the ftvm NIC: see net.h and ../README.md.
 *
 * Frames are received into NET_RX_BATCH static buffers with one receive call and handled in
 * place. Frames to send are built in NET_TX_MAX static buffers and leave with one transmit
 * call in net_flush. A datagram whose next hop has no MAC yet is built in one of
 * NET_ARP_QUEUE waiting buffers and copied to the transmit queue when ARP answers. */
#include "net.h"

struct net_config net_cfg;
struct net_stats net_stats;

static int net_up;
static uint16_t binds[NET_MAX_BINDS];
static int nbinds;

#define ETH_HLEN 14
#define ETH_MIN_FRAME 60 /* without FCS: shorter frames are padded with zeros */
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define IP_HLEN 20
#define UDP_HLEN 8
#define IP_PROTO_UDP 17
#define ARP_LEN 28

static const uint8_t mac_broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

static uint8_t rx_buf[NET_RX_BATCH][NET_FRAME_BUF] __attribute__((aligned(64)));
static struct ftvm_pkt_desc rx_desc[NET_RX_BATCH];

static uint8_t tx_buf[NET_TX_MAX][NET_FRAME_BUF] __attribute__((aligned(64)));
static struct ftvm_pkt_desc tx_desc[NET_TX_MAX];
static int tx_count;

/* The ARP cache. An entry is PENDING while requests are outstanding, OK once the MAC is
 * known, FAILED after NET_ARP_TRIES unanswered requests (until net_resolve reports it or a
 * send starts over). Replacement is least recently used among entries not PENDING. */
enum { ARP_FREE, ARP_PENDING, ARP_OK, ARP_FAILED };
struct arp_entry {
	uint32_t ip;
	uint8_t mac[6];
	uint8_t state;
	uint8_t tries;    /* requests sent */
	uint64_t deadline; /* PENDING: next retransmission (0: set at the next timer run) */
	uint64_t used;     /* LRU tick */
};
static struct arp_entry arp_cache[NET_ARP_CACHE];
static uint64_t arp_tick;

/* Datagrams waiting for ARP: complete frames but for the destination MAC. wait_order holds
 * the slots in use, oldest first, so that each destination's datagrams leave in order. */
static uint8_t wait_buf[NET_ARP_QUEUE][NET_FRAME_BUF] __attribute__((aligned(64)));
static uint32_t wait_hop[NET_ARP_QUEUE];
static uint16_t wait_len[NET_ARP_QUEUE];
static uint8_t wait_order[NET_ARP_QUEUE];
static int wait_count;

static uint16_t ip_ident;

/* ---- helpers ---- */

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}
static inline void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}
static inline uint64_t addr_of(const void *p) { return (uint64_t)(unsigned long)p; }

uint32_t net_sum(const void *data, size_t len, uint32_t sum)
{
	const uint8_t *p = data;
	uint64_t s = sum;
	size_t i = 0;
	for (; i + 1 < len; i += 2)
		s += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (i < len)
		s += (uint32_t)p[i] << 8;
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint32_t)s;
}

uint16_t net_checksum(const void *data, size_t len, uint32_t sum)
{
	return (uint16_t)~net_sum(data, len, sum);
}

char *net_fmt_ip(char buf[16], uint32_t ip)
{
	char *p = buf;
	for (int i = 3; i >= 0; i--) {
		unsigned b = (ip >> (8 * i)) & 0xff;
		if (b >= 100)
			*p++ = (char)('0' + b / 100);
		if (b >= 10)
			*p++ = (char)('0' + b / 10 % 10);
		*p++ = (char)('0' + b % 10);
		if (i > 0)
			*p++ = '.';
	}
	*p = 0;
	return buf;
}

int net_parse_u64(const void *s, size_t len, uint64_t *out)
{
	const uint8_t *p = s;
	uint64_t v = 0;
	if (len == 0 || len > 20)
		return 0;
	for (size_t i = 0; i < len; i++) {
		if (p[i] < '0' || p[i] > '9')
			return 0;
		uint64_t d = (uint64_t)(p[i] - '0');
		if (v > (~0UL - d) / 10)
			return 0;
		v = v * 10 + d;
	}
	*out = v;
	return 1;
}

size_t net_fmt_u64(char *buf, uint64_t v)
{
	char tmp[20];
	size_t n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	for (size_t i = 0; i < n; i++)
		buf[i] = tmp[n - 1 - i];
	return n;
}

static int on_link(uint32_t ip) { return (ip & net_cfg.mask) == (net_cfg.ip & net_cfg.mask); }

/* Addresses that may not be the source of a datagram we answer: 0/8, 127/8, multicast,
 * class E, limited broadcast, our subnet's broadcast and ourselves. */
static int bad_source(uint32_t ip)
{
	uint32_t top = ip >> 24;
	if (top == 0 || top == 127 || top >= 224)
		return 1;
	if (net_cfg.mask != 0xffffffff && on_link(ip) && (ip | net_cfg.mask) == 0xffffffff)
		return 1;
	return ip == net_cfg.ip;
}

/* ---- transmit queue ---- */

int net_tx_room(void) { return NET_TX_MAX - tx_count; }

long net_flush(void)
{
	if (tx_count == 0)
		return 0;
	long n = net_sys_tx(tx_desc, (size_t)tx_count);
	net_stats.tx_calls++;
	if (n < 0) {
		net_stats.tx_dropped += (uint64_t)tx_count;
	} else {
		if (n > tx_count)
			n = tx_count;
		net_stats.tx_frames += (uint64_t)n;
		net_stats.tx_dropped += (uint64_t)(tx_count - n);
	}
	tx_count = 0;
	return n;
}

/* The next free transmit buffer, flushing the queue first when it is full. */
static uint8_t *tx_alloc(void)
{
	if (tx_count == NET_TX_MAX)
		net_flush();
	return tx_buf[tx_count];
}

/* Queue the frame built in tx_alloc's buffer, padded to the Ethernet minimum. */
static void tx_commit(uint32_t len)
{
	uint8_t *f = tx_buf[tx_count];
	if (len < ETH_MIN_FRAME) {
		memset(f + len, 0, ETH_MIN_FRAME - len);
		len = ETH_MIN_FRAME;
	}
	tx_desc[tx_count].addr = addr_of(f);
	tx_desc[tx_count].len = len;
	tx_desc[tx_count].flags = 0;
	tx_count++;
}

static void eth_header(uint8_t *f, const uint8_t dst[6], uint16_t type)
{
	memcpy(f, dst, 6);
	memcpy(f + 6, net_cfg.mac, 6);
	put16(f + 12, type);
}

/* ---- ARP ---- */

static void arp_send(uint16_t op, const uint8_t tha[6], uint32_t tpa)
{
	uint8_t *f = tx_alloc();
	uint8_t *a = f + ETH_HLEN;
	eth_header(f, op == 1 ? mac_broadcast : tha, ETH_P_ARP);
	put16(a, 1);          /* Ethernet */
	put16(a + 2, ETH_P_IP);
	a[4] = 6;
	a[5] = 4;
	put16(a + 6, op);
	memcpy(a + 8, net_cfg.mac, 6);
	put32(a + 14, net_cfg.ip);
	if (op == 1)
		memset(a + 18, 0, 6);
	else
		memcpy(a + 18, tha, 6);
	put32(a + 24, tpa);
	tx_commit(ETH_HLEN + ARP_LEN);
	if (op == 1)
		net_stats.arp_requests++;
	else
		net_stats.arp_replies++;
}

static struct arp_entry *arp_find(uint32_t ip)
{
	for (int i = 0; i < NET_ARP_CACHE; i++)
		if (arp_cache[i].state != ARP_FREE && arp_cache[i].ip == ip)
			return &arp_cache[i];
	return NULL;
}

/* A fresh entry for ip: a free one, else the least recently used one that is not PENDING
 * (a PENDING entry may have datagrams waiting). NULL when every entry is PENDING. */
static struct arp_entry *arp_new(uint32_t ip)
{
	struct arp_entry *victim = NULL;
	for (int i = 0; i < NET_ARP_CACHE; i++) {
		struct arp_entry *e = &arp_cache[i];
		if (e->state == ARP_FREE) {
			victim = e;
			break;
		}
		if (e->state != ARP_PENDING && (victim == NULL || e->used < victim->used))
			victim = e;
	}
	if (victim == NULL)
		return NULL;
	memset(victim, 0, sizeof *victim);
	victim->ip = ip;
	victim->used = ++arp_tick;
	return victim;
}

/* Start (or restart) resolving e: the first request goes out now; net_wait's timer run
 * schedules the next. */
static void arp_start(struct arp_entry *e)
{
	e->state = ARP_PENDING;
	e->tries = 1;
	e->deadline = 0;
	arp_send(1, mac_broadcast, e->ip);
}

/* Remove the waiting datagrams for hop: moved to the transmit queue with the destination
 * MAC filled in (mac != NULL) or dropped. Keeps the others in order. */
static void wait_release(uint32_t hop, const uint8_t *mac)
{
	int kept = 0;
	for (int i = 0; i < wait_count; i++) {
		int s = wait_order[i];
		if (wait_hop[s] != hop) {
			wait_order[kept++] = (uint8_t)s;
			continue;
		}
		if (mac != NULL) {
			uint8_t *f = tx_alloc();
			memcpy(f, wait_buf[s], wait_len[s]);
			memcpy(f, mac, 6);
			tx_commit(wait_len[s]);
		}
	}
	wait_count = kept;
}

/* The MAC of e's address is mac: record it, and release what waits for it. */
static void arp_set(struct arp_entry *e, const uint8_t mac[6])
{
	memcpy(e->mac, mac, 6);
	e->used = ++arp_tick;
	if (e->state != ARP_OK) {
		e->state = ARP_OK;
		e->tries = 0;
		wait_release(e->ip, mac);
	}
}

/* Learn ip -> mac (from an ARP packet for us or a datagram from an on-link host). */
static void arp_learn(uint32_t ip, const uint8_t mac[6])
{
	struct arp_entry *e = arp_find(ip);
	if (e == NULL) {
		e = arp_new(ip);
		if (e == NULL)
			return;
	} else if (e->state == ARP_OK && memcmp(e->mac, mac, 6) == 0) {
		return;
	}
	arp_set(e, mac);
}

static void arp_input(const uint8_t *f, uint32_t len)
{
	if (len < ETH_HLEN + ARP_LEN) {
		net_stats.drop_arp++;
		return;
	}
	const uint8_t *a = f + ETH_HLEN;
	uint16_t op = get16(a + 6);
	const uint8_t *sha = a + 8;
	uint32_t spa = get32(a + 14), tpa = get32(a + 24);
	if (get16(a) != 1 || get16(a + 2) != ETH_P_IP || a[4] != 6 || a[5] != 4 ||
	    (op != 1 && op != 2) || (sha[0] & 1) || spa == net_cfg.ip) {
		net_stats.drop_arp++;
		return;
	}
	/* RFC 826: update an existing entry for the sender; add one if we are the target. */
	struct arp_entry *e = spa != 0 ? arp_find(spa) : NULL;
	if (e != NULL)
		arp_set(e, sha);
	if (tpa != net_cfg.ip)
		return;
	if (e == NULL && spa != 0 && on_link(spa) && !bad_source(spa))
		arp_learn(spa, sha);
	if (op == 1)
		arp_send(2, sha, spa);
}

/* The next hop for dst: 0 and *hop set, or NET_EHOSTUNREACH / NET_EINVAL. *bcast is set
 * for the broadcast addresses. */
static int route(uint32_t dst, uint32_t *hop, int *bcast)
{
	*bcast = 0;
	if (dst == 0 || dst == net_cfg.ip || (dst >> 28) == 0xe)
		return NET_EINVAL; /* no multicast, no sending to ourselves */
	if (dst == 0xffffffff ||
	    (net_cfg.mask != 0xffffffff && on_link(dst) && (dst | net_cfg.mask) == 0xffffffff)) {
		*bcast = 1;
		*hop = dst;
		return 0;
	}
	if (on_link(dst)) {
		*hop = dst;
		return 0;
	}
	if (net_cfg.gateway == 0)
		return NET_EHOSTUNREACH;
	*hop = net_cfg.gateway;
	return 0;
}

int net_resolve(uint32_t ip)
{
	uint32_t hop;
	int bcast;
	if (!net_up)
		return NET_ENOTCONN;
	if (route(ip, &hop, &bcast) < 0)
		return NET_EHOSTUNREACH;
	if (bcast)
		return 1;
	struct arp_entry *e = arp_find(hop);
	if (e != NULL) {
		switch (e->state) {
		case ARP_OK:
			e->used = ++arp_tick;
			return 1;
		case ARP_PENDING:
			return 0;
		default: /* FAILED: report it once */
			e->state = ARP_FREE;
			return NET_EHOSTUNREACH;
		}
	}
	e = arp_new(hop);
	if (e == NULL)
		return NET_ENOBUFS;
	arp_start(e);
	return 0;
}

/* Retransmit due requests and give up on addresses that never answered. Returns the
 * earliest deadline still outstanding, or 0 when nothing is pending. */
static uint64_t arp_timers(uint64_t now)
{
	uint64_t next = 0;
	for (int i = 0; i < NET_ARP_CACHE; i++) {
		struct arp_entry *e = &arp_cache[i];
		if (e->state != ARP_PENDING)
			continue;
		if (e->deadline == 0) {
			e->deadline = now + NET_ARP_INTERVAL_NS;
		} else if (now >= e->deadline) {
			if (e->tries >= NET_ARP_TRIES) {
				e->state = ARP_FAILED;
				net_stats.arp_failed++;
				wait_release(e->ip, NULL);
				continue;
			}
			e->tries++;
			arp_send(1, mac_broadcast, e->ip);
			e->deadline = now + NET_ARP_INTERVAL_NS;
		}
		if (next == 0 || e->deadline < next)
			next = e->deadline;
	}
	return next;
}

static int arp_pending(void)
{
	for (int i = 0; i < NET_ARP_CACHE; i++)
		if (arp_cache[i].state == ARP_PENDING)
			return 1;
	return 0;
}

/* ---- IPv4 and UDP ---- */

static int bound(uint16_t port)
{
	for (int i = 0; i < nbinds; i++)
		if (binds[i] == port)
			return 1;
	return 0;
}

int udp_bind(uint16_t port)
{
	if (port == 0)
		return NET_EINVAL;
	if (bound(port))
		return 0;
	if (nbinds == NET_MAX_BINDS)
		return NET_ENOBUFS;
	binds[nbinds++] = port;
	return 0;
}

static uint32_t pseudo_sum(uint32_t src, uint32_t dst, uint16_t ulen)
{
	return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + IP_PROTO_UDP + ulen;
}

static void udp_input(uint32_t src, const uint8_t *u, uint32_t n, net_udp_handler h, void *ctx)
{
	if (n < UDP_HLEN) {
		net_stats.drop_udp++;
		return;
	}
	uint16_t ulen = get16(u + 4);
	if (ulen < UDP_HLEN || ulen > n) {
		net_stats.drop_udp++;
		return;
	}
	if (get16(u + 6) != 0 && net_sum(u, ulen, pseudo_sum(src, net_cfg.ip, ulen)) != 0xffff) {
		net_stats.drop_udpsum++;
		return;
	}
	struct udp_dgram d = {
		.src_ip = src,
		.src_port = get16(u),
		.dst_port = get16(u + 2),
		.data = u + UDP_HLEN,
		.len = (uint32_t)ulen - UDP_HLEN,
	};
	if (!bound(d.dst_port)) {
		net_stats.drop_port++;
		return;
	}
	net_stats.udp_in++;
	if (h != NULL)
		h(&d, ctx);
}

static void ip_input(const uint8_t *f, uint32_t len, net_udp_handler h, void *ctx)
{
	const uint8_t *ip = f + ETH_HLEN;
	uint32_t n = len - ETH_HLEN;
	if (n < IP_HLEN || ip[0] >> 4 != 4) {
		net_stats.drop_ip++;
		return;
	}
	uint32_t ihl = (uint32_t)(ip[0] & 15) * 4, tot = get16(ip + 2);
	if (ihl < IP_HLEN || ihl > n || tot < ihl || tot > n) {
		net_stats.drop_ip++;
		return;
	}
	if (net_sum(ip, ihl, 0) != 0xffff) {
		net_stats.drop_ipsum++;
		return;
	}
	if (get16(ip + 6) & 0x3fff) { /* MF or a fragment offset: we do not reassemble */
		net_stats.drop_frag++;
		return;
	}
	uint32_t src = get32(ip + 12), dst = get32(ip + 16);
	if (dst != net_cfg.ip) {
		net_stats.drop_notus++;
		return;
	}
	if (ip[9] != IP_PROTO_UDP || bad_source(src)) {
		net_stats.drop_ip++;
		return;
	}
	/* The sender is on-link: its frame tells us its MAC, which saves an ARP exchange
	 * before the reply. */
	if (on_link(src) && !(f[6] & 1))
		arp_learn(src, f + 6);
	udp_input(src, ip + ihl, tot - ihl, h, ctx);
}

static void eth_input(const uint8_t *f, uint32_t len, net_udp_handler h, void *ctx)
{
	if (len < ETH_HLEN || len > NET_FRAME_BUF ||
	    (memcmp(f, net_cfg.mac, 6) != 0 && memcmp(f, mac_broadcast, 6) != 0)) {
		net_stats.drop_eth++;
		return;
	}
	uint16_t type = get16(f + 12);
	if (type == ETH_P_ARP)
		arp_input(f, len);
	else if (type == ETH_P_IP)
		ip_input(f, len, h, ctx);
	else
		net_stats.drop_eth++;
}

long net_poll(net_udp_handler h, void *ctx)
{
	if (!net_up)
		return NET_ENOTCONN;
	for (int i = 0; i < NET_RX_BATCH; i++) {
		rx_desc[i].addr = addr_of(rx_buf[i]);
		rx_desc[i].len = NET_FRAME_BUF;
		rx_desc[i].flags = 0;
	}
	long n = net_sys_rx(rx_desc, NET_RX_BATCH);
	net_stats.rx_calls++;
	if (n <= 0)
		return n;
	if (n > NET_RX_BATCH)
		n = NET_RX_BATCH;
	net_stats.rx_frames += (uint64_t)n;
	for (long i = 0; i < n; i++)
		eth_input(rx_buf[i], rx_desc[i].len, h, ctx);
	return n;
}

/* Build an Ethernet + IPv4 + UDP frame in f (the destination MAC is left for the caller).
 * Returns its length. */
static uint32_t udp_build(uint8_t *f, uint32_t dst, uint16_t dport, uint16_t sport,
			  const void *payload, size_t len)
{
	uint8_t *ip = f + ETH_HLEN, *u = ip + IP_HLEN;
	uint16_t ulen = (uint16_t)(UDP_HLEN + len);

	memcpy(f + 6, net_cfg.mac, 6);
	put16(f + 12, ETH_P_IP);

	ip[0] = 0x45;
	ip[1] = 0;
	put16(ip + 2, (uint16_t)(IP_HLEN + ulen));
	put16(ip + 4, ip_ident++);
	put16(ip + 6, 0x4000); /* DF */
	ip[8] = 64;            /* TTL */
	ip[9] = IP_PROTO_UDP;
	put16(ip + 10, 0);
	put32(ip + 12, net_cfg.ip);
	put32(ip + 16, dst);
	put16(ip + 10, net_checksum(ip, IP_HLEN, 0));

	put16(u, sport);
	put16(u + 2, dport);
	put16(u + 4, ulen);
	put16(u + 6, 0);
	memcpy(u + UDP_HLEN, payload, len);
	uint16_t sum = net_checksum(u, ulen, pseudo_sum(net_cfg.ip, dst, ulen));
	put16(u + 6, sum == 0 ? 0xffff : sum); /* 0 means "no checksum" */
	return ETH_HLEN + IP_HLEN + ulen;
}

int udp_send(uint32_t dst, uint16_t dport, uint16_t sport, const void *payload, size_t len)
{
	uint32_t hop;
	int bcast;
	if (!net_up)
		return NET_ENOTCONN;
	if (len > NET_UDP_MAX || dport == 0 || (len > 0 && payload == NULL))
		return NET_EINVAL;
	int r = route(dst, &hop, &bcast);
	if (r < 0)
		return r;

	struct arp_entry *e = bcast ? NULL : arp_find(hop);
	if (bcast || (e != NULL && e->state == ARP_OK)) {
		uint8_t *f = tx_alloc();
		uint32_t flen = udp_build(f, dst, dport, sport, payload, len);
		memcpy(f, bcast ? mac_broadcast : e->mac, 6);
		if (e != NULL)
			e->used = ++arp_tick;
		tx_commit(flen);
		net_stats.udp_out++;
		return 0;
	}

	/* Wait for ARP. */
	if (wait_count == NET_ARP_QUEUE) {
		net_stats.arp_queue_full++;
		return NET_ENOBUFS;
	}
	if (e == NULL) {
		e = arp_new(hop);
		if (e == NULL) {
			net_stats.arp_queue_full++;
			return NET_ENOBUFS;
		}
		arp_start(e);
	} else if (e->state == ARP_FAILED) {
		arp_start(e);
	}
	/* The free slot: the one not listed in wait_order (the queue is short). */
	int s = 0;
	for (; s < NET_ARP_QUEUE; s++) {
		int used = 0;
		for (int i = 0; i < wait_count; i++)
			if (wait_order[i] == s)
				used = 1;
		if (!used)
			break;
	}
	wait_len[s] = (uint16_t)udp_build(wait_buf[s], dst, dport, sport, payload, len);
	wait_hop[s] = hop;
	wait_order[wait_count++] = (uint8_t)s;
	net_stats.udp_out++;
	return 1;
}

/* ---- set-up and the server loop ---- */

long net_init(struct ftvm_boot_info *bi)
{
	struct ftvm_nic_info info;
	uint8_t gw[4];

	(void)bi;
	net_up = 0;
	nbinds = 0;
	tx_count = 0;
	wait_count = 0;
	arp_tick = 0;
	ip_ident = 0;
	memset(arp_cache, 0, sizeof arp_cache);
	memset(&net_stats, 0, sizeof net_stats);
	memset(&net_cfg, 0, sizeof net_cfg);
	memset(&info, 0, sizeof info);
	memset(gw, 0, sizeof gw);

	long r = net_sys_info(&info, gw);
	if (r < 0)
		return r;
	if (info.prefix > 32)
		return FTVM_EINVAL;
	memcpy(net_cfg.mac, info.mac, 6);
	net_cfg.ip = get32(info.ip);
	net_cfg.prefix = info.prefix;
	net_cfg.mask = info.prefix == 0 ? 0 : 0xffffffffU << (32 - info.prefix);
	net_cfg.gateway = get32(gw);
	net_up = 1;
	return 0;
}

uint64_t net_wait(void)
{
	uint64_t timeout = FTVM_WAIT_FOREVER;
	if (net_up && arp_pending()) {
		uint64_t now = net_sys_clock();
		uint64_t next = arp_timers(now);
		if (next != 0)
			timeout = next > now ? next - now : 0;
	}
	net_flush(); /* retransmitted requests, and anything the caller left queued */
	return net_sys_wait(timeout);
}

long net_serve_once(net_udp_handler h, void *ctx)
{
	static char discard[256];
	long total = 0;
	if (net_wait() & FTVM_WAIT_CONSOLE)
		net_sys_console_read(discard, sizeof discard);
	for (;;) {
		long n = net_poll(h, ctx);
		if (n <= 0)
			break;
		total += n;
		if (n < NET_RX_BATCH)
			break;
		/* Probably more waiting: receive again before transmitting, as long as the
		 * transmit queue can take another batch of replies. */
		if (net_tx_room() < NET_RX_BATCH)
			net_flush();
	}
	net_flush();
	return total;
}

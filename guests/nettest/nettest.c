/* Host-side tests of the network stack (rt/net.c), the kvstore request handling (kv.c),
 * netsink and netsource, the redis guest's RESP parser and executor (resp.c, in resptest.c), against the fake NIC of fakenic.c. Built and run by
 * `make -C guests check`; prints one line per test and exits 1 on any failure.
 *
 * Frames are built and checked here with an independent checksum (ref_csum), and the
 * known-answer vectors were computed with a separate implementation (Python's struct-based
 * RFC 1071 sum). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fakenic.h"
#include "kv.h"
#include "check.h"
#include "resptest.h"

/* netsink.c and netsource.c, built with NET_HOST_TEST (no main). */
extern uint64_t netsink_packets, netsink_bytes;
void netsink_handler(const struct udp_dgram *d, void *ctx);
void netsource_setup(uint16_t port, int batch);
void netsource_handler(const struct udp_dgram *d, void *ctx);
void netsource_step(void);
int netsource_busy(void);

int failures, checks;
const char *current;

static const uint8_t OUR_MAC[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
static const uint8_t GW_MAC[6] = { 0x52, 0x55, 0x0a, 0x00, 0x02, 0x02 };
static const uint8_t PEER_MAC[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x77 };
static const uint8_t BCAST[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
static const uint8_t ZERO6[6] = { 0 };
#define OUR_IP NET_IP(10, 0, 2, 15)
#define GW_IP NET_IP(10, 0, 2, 2)
#define PEER_IP NET_IP(10, 0, 2, 77)

/* ---- frames ---- */

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8), p[1] = (uint8_t)v; }
static void wr32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* RFC 1071, the textbook way: 32-bit sum of 16-bit words, then fold. */
static uint16_t ref_csum(const uint8_t *p, size_t n)
{
	unsigned long s = 0;
	while (n > 1) {
		s += (unsigned long)p[0] << 8 | p[1];
		p += 2;
		n -= 2;
	}
	if (n)
		s += (unsigned long)p[0] << 8;
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

static uint16_t ref_udp_csum(uint32_t src, uint32_t dst, const uint8_t *u, size_t ulen)
{
	uint8_t buf[12 + 1600];
	wr32(buf, src);
	wr32(buf + 4, dst);
	buf[8] = 0;
	buf[9] = 17;
	wr16(buf + 10, (uint16_t)ulen);
	memcpy(buf + 12, u, ulen);
	return ref_csum(buf, 12 + ulen);
}

static size_t mk_arp(uint8_t *f, uint16_t op, const uint8_t *eth_dst, const uint8_t *sha,
		     uint32_t spa, const uint8_t *tha, uint32_t tpa)
{
	memset(f, 0, 60);
	memcpy(f, eth_dst, 6);
	memcpy(f + 6, sha, 6);
	wr16(f + 12, 0x0806);
	wr16(f + 14, 1);
	wr16(f + 16, 0x0800);
	f[18] = 6;
	f[19] = 4;
	wr16(f + 20, op);
	memcpy(f + 22, sha, 6);
	wr32(f + 28, spa);
	memcpy(f + 32, tha, 6);
	wr32(f + 38, tpa);
	return 60;
}

enum {
	NO_UDP_SUM = 1, BAD_UDP_SUM = 2, BAD_IP_SUM = 4, FRAG_MF = 8, FRAG_OFF = 16,
	IP_OPTIONS = 32, ETH_PAD = 64, TRUNCATED = 128, UDP_LEN_BAD = 256, PROTO_TCP = 512,
};

static size_t mk_udp(uint8_t *f, const uint8_t *dmac, const uint8_t *smac, uint32_t src,
		     uint32_t dst, uint16_t sport, uint16_t dport, const void *payload, size_t len,
		     int opts)
{
	size_t ihl = opts & IP_OPTIONS ? 24 : 20, ulen = 8 + len;
	uint8_t *ip = f + 14, *u = ip + ihl;
	memcpy(f, dmac, 6);
	memcpy(f + 6, smac, 6);
	wr16(f + 12, 0x0800);
	memset(ip, 0, ihl);
	ip[0] = (uint8_t)(0x40 | ihl / 4);
	wr16(ip + 2, (uint16_t)(ihl + ulen + (opts & TRUNCATED ? 10 : 0)));
	wr16(ip + 4, 0x4242);
	wr16(ip + 6, (uint16_t)((opts & FRAG_MF ? 0x2000 : 0) | (opts & FRAG_OFF ? 0x00b9 : 0)));
	ip[8] = 64;
	ip[9] = opts & PROTO_TCP ? 6 : 17;
	wr32(ip + 12, src);
	wr32(ip + 16, dst);
	if (opts & IP_OPTIONS)
		ip[20] = 1, ip[21] = 1, ip[22] = 1, ip[23] = 0; /* NOP NOP NOP EOL */
	wr16(ip + 10, ref_csum(ip, ihl));
	if (opts & BAD_IP_SUM)
		ip[10] ^= 0x01;
	wr16(u, sport);
	wr16(u + 2, dport);
	wr16(u + 4, (uint16_t)(ulen + (opts & UDP_LEN_BAD ? 100 : 0)));
	wr16(u + 6, 0);
	memcpy(u + 8, payload, len);
	if (!(opts & NO_UDP_SUM)) {
		uint16_t s = ref_udp_csum(src, dst, u, ulen);
		wr16(u + 6, s == 0 ? 0xffff : s);
		if (opts & BAD_UDP_SUM)
			u[6] ^= 0x10;
	}
	size_t n = 14 + ihl + ulen;
	if (opts & ETH_PAD) {
		memset(f + n, 0xee, 20);
		n += 20;
	}
	return n;
}

/* A transmitted frame, taken apart. */
struct parsed {
	const uint8_t *dmac, *smac;
	uint16_t type;
	uint32_t src, dst;
	uint16_t sport, dport, ident;
	const uint8_t *payload;
	size_t plen;
	int ip_ok, udp_ok; /* checksums (and lengths) right */
};

static int parse_udp(const uint8_t *f, size_t n, struct parsed *p)
{
	memset(p, 0, sizeof *p);
	p->dmac = f;
	p->smac = f + 6;
	p->type = rd16(f + 12);
	if (p->type != 0x0800 || n < 42)
		return 0;
	const uint8_t *ip = f + 14;
	size_t ihl = (size_t)(ip[0] & 15) * 4, tot = rd16(ip + 2);
	p->ip_ok = ip[0] == 0x45 && ref_csum(ip, ihl) == 0 && tot + 14 <= n && ip[9] == 17 &&
		   rd16(ip + 6) == 0x4000 && ip[8] == 64;
	p->ident = rd16(ip + 4);
	p->src = rd32(ip + 12);
	p->dst = rd32(ip + 16);
	const uint8_t *u = ip + ihl;
	size_t ulen = rd16(u + 4);
	p->sport = rd16(u);
	p->dport = rd16(u + 2);
	p->payload = u + 8;
	p->plen = ulen - 8;
	p->udp_ok = ulen == tot - ihl && rd16(u + 6) != 0 &&
		    ref_udp_csum(p->src, p->dst, u, ulen) == 0;
	return 1;
}

/* Datagrams handed to the guest. */
static struct {
	int n;
	struct udp_dgram d[512];
	uint8_t data[512][1500];
} got;

static void record(const struct udp_dgram *d, void *ctx)
{
	(void)ctx;
	if (got.n < 512) {
		got.d[got.n] = *d;
		memcpy(got.data[got.n], d->data, d->len);
		got.d[got.n].data = got.data[got.n];
		got.n++;
	}
}

static void setup(void)
{
	fake_reset();
	got.n = 0;
	long r = net_init(NULL);
	CHECK(r == 0, "net_init: %ld", r);
}

/* Let the stack know the gateway's MAC, then forget the frames that took. */
static void learn_gateway(void)
{
	uint8_t f[60];
	fake_inject(f, mk_arp(f, 2, OUR_MAC, GW_MAC, GW_IP, OUR_MAC, OUR_IP));
	net_poll(record, NULL);
	net_flush();
	fake_clear_tx();
}

/* ---- tests ---- */

static void test_no_nic(void)
{
	fake_reset();
	fake.has_nic = 0;
	CHECK(net_init(NULL) == FTVM_ENODEV, "want ENODEV");
	CHECK(net_poll(record, NULL) == NET_ENOTCONN, "poll without a NIC");
	CHECK(udp_send(GW_IP, 1, 1, "x", 1) == NET_ENOTCONN, "send without a NIC");
	CHECK(fake.rx_calls == 0 && fake.tx_calls == 0, "no NIC calls after a failed init");
}

static void test_init(void)
{
	setup();
	CHECK(memcmp(net_cfg.mac, OUR_MAC, 6) == 0, "mac");
	CHECK(net_cfg.ip == OUR_IP, "ip %08x", net_cfg.ip);
	CHECK(net_cfg.mask == 0xffffff00, "mask %08x", net_cfg.mask);
	CHECK(net_cfg.gateway == GW_IP, "gateway %08x", net_cfg.gateway);
	char buf[16];
	CHECK(strcmp(net_fmt_ip(buf, OUR_IP), "10.0.2.15") == 0, "%s", buf);
	CHECK(strcmp(net_fmt_ip(buf, 0xffffffff), "255.255.255.255") == 0, "%s", buf);
	CHECK(strcmp(net_fmt_ip(buf, 0), "0.0.0.0") == 0, "%s", buf);
	CHECK(fake.info_calls == 1, "one NIC info call");
	CHECK(udp_bind(0) == NET_EINVAL, "port 0");
	for (int i = 1; i <= NET_MAX_BINDS; i++)
		CHECK(udp_bind((uint16_t)i) == 0, "bind %d", i);
	CHECK(udp_bind(1) == 0, "binding twice");
	CHECK(udp_bind(999) == NET_ENOBUFS, "too many ports");
	/* Nothing pending: one receive call, no transmit call. */
	CHECK(net_poll(record, NULL) == 0, "empty poll");
	CHECK(net_flush() == 0 && fake.tx_calls == 0, "an empty flush makes no call");

	uint64_t v;
	CHECK(net_parse_u64("18446744073709551615", 20, &v) && v == ~0UL, "max u64");
	CHECK(!net_parse_u64("18446744073709551616", 20, &v), "u64 overflow");
	CHECK(!net_parse_u64("", 0, &v) && !net_parse_u64("1a", 2, &v) &&
		      !net_parse_u64("-1", 2, &v), "bad numbers");
	char num[20];
	CHECK(net_fmt_u64(num, 0) == 1 && num[0] == '0', "fmt 0");
	CHECK(net_fmt_u64(num, ~0UL) == 20 && memcmp(num, "18446744073709551615", 20) == 0,
	      "fmt max");
}

static void test_checksum_vectors(void)
{
	/* RFC 1071, section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2. */
	static const uint8_t rfc[] = { 0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7 };
	CHECK(net_sum(rfc, 8, 0) == 0xddf2, "sum %04x", net_sum(rfc, 8, 0));
	CHECK(net_checksum(rfc, 8, 0) == 0x220d, "checksum %04x", net_checksum(rfc, 8, 0));
	/* An odd length pads with a zero byte. */
	static const uint8_t odd[] = { 0x01, 0x02, 0x03 };
	CHECK(net_checksum(odd, 3, 0) == (uint16_t)~0x0402, "odd %04x", net_checksum(odd, 3, 0));
	/* The IPv4 header of Wikipedia's "IPv4 header checksum" example: checksum b861. */
	uint8_t hdr[] = { 0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
			  0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7 };
	CHECK(net_sum(hdr, 20, 0) == 0xffff, "a correct header sums to ffff");
	hdr[10] = hdr[11] = 0;
	CHECK(net_checksum(hdr, 20, 0) == 0xb861, "header checksum %04x",
	      net_checksum(hdr, 20, 0));
	/* Carries: many ffff words. */
	uint8_t ff[1500];
	memset(ff, 0xff, sizeof ff);
	CHECK(net_checksum(ff, sizeof ff, 0) == 0, "all ones");
	CHECK(net_checksum(ff, sizeof ff, 0) == ref_csum(ff, sizeof ff), "matches ref");
	for (int i = 0; i < 1500; i++)
		ff[i] = (uint8_t)(i * 37 + 11);
	for (size_t n = 0; n < 1500; n += 97)
		CHECK(net_checksum(ff, n, 0) == ref_csum(ff, n), "length %zu", n);
}

/* Known frames: computed with a separate implementation (see the top of this file). */
static const char RECV_VECTOR[] = /* 10.0.2.2:40000 -> 10.0.2.15:5000 "The quick brown fox" */
	"52540012345652550a00020208004500002f123400004011507a0a0002020a00020f"
	"9c401388001b19e354686520717569636b2062726f776e20666f78";
static const char SEND_VECTOR[] = /* 10.0.2.15:5555 -> 10.0.2.2:7000 "hello", IP id 0, DF */
	"52550a00020252540012345608004500002100004000401122bc0a00020f0a000202"
	"15b31b58000d72e668656c6c6f00000000000000000000000000";

static size_t unhex(uint8_t *out, const char *s)
{
	size_t n = 0;
	for (; s[0] && s[1]; s += 2) {
		unsigned v;
		sscanf(s, "%2x", &v);
		out[n++] = (uint8_t)v;
	}
	return n;
}

static void test_udp_checksum_vectors(void)
{
	uint8_t f[1514];
	size_t n = unhex(f, RECV_VECTOR);

	/* The UDP checksum of the received vector (19e3), from the stack's own sum over the
	 * pseudo-header and the datagram. */
	const uint8_t *u = f + 34;
	uint8_t pseudo[12] = { 10, 0, 2, 2, 10, 0, 2, 15, 0, 17, 0, 27 };
	uint8_t copy[27];
	memcpy(copy, u, 27);
	copy[6] = copy[7] = 0;
	uint16_t s = net_checksum(copy, 27, net_sum(pseudo, 12, 0));
	CHECK(s == 0x19e3, "udp checksum %04x, want 19e3", s);
	CHECK(rd16(f + 24) == 0x507a && net_sum(f + 14, 20, 0) == 0xffff, "ip checksum");

	/* Received: delivered with the right fields. */
	setup();
	udp_bind(5000);
	fake_inject(f, n);
	CHECK(net_poll(record, NULL) == 1, "one frame");
	CHECK(got.n == 1, "delivered %d", got.n);
	if (got.n == 1) {
		CHECK(got.d[0].src_ip == GW_IP && got.d[0].src_port == 40000 &&
			      got.d[0].dst_port == 5000, "addresses");
		CHECK(got.d[0].len == 19 && memcmp(got.data[0], "The quick brown fox", 19) == 0,
		      "payload");
	}
	/* The same with one payload bit flipped: the UDP checksum catches it. */
	f[n - 1] ^= 0x01;
	fake_inject(f, n);
	net_poll(record, NULL);
	CHECK(got.n == 1 && net_stats.drop_udpsum == 1, "a corrupted datagram is dropped");

	/* Sent: byte for byte the vector (the gateway's MAC is known, so no ARP). */
	setup();
	learn_gateway();
	CHECK(udp_send(GW_IP, 7000, 5555, "hello", 5) == 0, "send");
	CHECK(net_flush() == 1, "flush");
	uint8_t want[100];
	size_t wn = unhex(want, SEND_VECTOR);
	CHECK(fake.tx_count == 1 && fake.tx_len[0] == wn && memcmp(fake.tx[0], want, wn) == 0,
	      "sent frame differs from the vector (len %u)", fake.tx_len[0]);

	/* A datagram whose checksum computes to 0 is sent with ffff (0 means none). Two payload
	 * bytes equal to the checksum with them zero make the sum ffff. */
	uint8_t tmp[64], pay[2] = { 0, 0 };
	size_t tn = mk_udp(tmp, GW_MAC, OUR_MAC, OUR_IP, GW_IP, 1, 2, pay, 2, NO_UDP_SUM);
	uint16_t c = ref_udp_csum(OUR_IP, GW_IP, tmp + 34, 10);
	(void)tn;
	pay[0] = (uint8_t)(c >> 8);
	pay[1] = (uint8_t)c;
	fake_clear_tx();
	udp_send(GW_IP, 2, 1, pay, 2);
	net_flush();
	CHECK(fake.tx_count == 1 && rd16(fake.tx[0] + 40) == 0xffff, "zero checksum sent as %04x",
	      rd16(fake.tx[0] + 40));
}

static void test_arp_reply(void)
{
	uint8_t f[60];
	setup();

	/* Who has 10.0.2.15? Tell 10.0.2.77. */
	fake_inject(f, mk_arp(f, 1, BCAST, PEER_MAC, PEER_IP, ZERO6, OUR_IP));
	CHECK(net_poll(record, NULL) == 1, "one frame");
	CHECK(fake.tx_calls == 0, "the reply waits for net_flush");
	CHECK(net_flush() == 1, "one reply");
	CHECK(fake.tx_calls == 1 && fake.tx_count == 1, "one transmit call");
	const uint8_t *r = fake.tx[0];
	CHECK(fake.tx_len[0] == 60, "padded to 60, got %u", fake.tx_len[0]);
	CHECK(memcmp(r, PEER_MAC, 6) == 0 && memcmp(r + 6, OUR_MAC, 6) == 0, "eth addresses");
	CHECK(rd16(r + 12) == 0x0806, "ethertype");
	CHECK(rd16(r + 14) == 1 && rd16(r + 16) == 0x0800 && r[18] == 6 && r[19] == 4, "arp header");
	CHECK(rd16(r + 20) == 2, "op reply");
	CHECK(memcmp(r + 22, OUR_MAC, 6) == 0 && rd32(r + 28) == OUR_IP, "sender = us");
	CHECK(memcmp(r + 32, PEER_MAC, 6) == 0 && rd32(r + 38) == PEER_IP, "target = asker");

	/* The asker was learned: a datagram to it leaves at once, no ARP. */
	fake_clear_tx();
	CHECK(udp_send(PEER_IP, 9, 9, "x", 1) == 0, "peer resolved");
	net_flush();
	CHECK(fake.tx_count == 1 && memcmp(fake.tx[0], PEER_MAC, 6) == 0 &&
		      rd16(fake.tx[0] + 12) == 0x0800, "sent to the peer's MAC");

	/* Requests for someone else, and broken ARP, get nothing. */
	fake_clear_tx();
	fake_inject(f, mk_arp(f, 1, BCAST, PEER_MAC, PEER_IP, ZERO6, NET_IP(10, 0, 2, 99)));
	mk_arp(f, 1, BCAST, PEER_MAC, PEER_IP, ZERO6, OUR_IP);
	f[18] = 8; /* hardware length */
	fake_inject(f, 60);
	fake_inject(f, 30); /* short */
	mk_arp(f, 1, BCAST, BCAST, PEER_IP, ZERO6, OUR_IP); /* broadcast sender MAC */
	fake_inject(f, 60);
	mk_arp(f, 1, OUR_MAC, PEER_MAC, PEER_IP, ZERO6, OUR_IP);
	memcpy(f, PEER_MAC, 6); /* unicast to someone else */
	fake_inject(f, 60);
	CHECK(net_poll(record, NULL) == 5, "five frames");
	net_flush();
	CHECK(fake.tx_calls == 0, "no reply to those");
	CHECK(net_stats.drop_arp == 3 && net_stats.drop_eth == 1, "drops arp %lu eth %lu",
	      net_stats.drop_arp, net_stats.drop_eth);

	/* An ARP probe (sender 0.0.0.0) is answered, and teaches nothing. */
	fake_inject(f, mk_arp(f, 1, BCAST, GW_MAC, 0, ZERO6, OUR_IP));
	net_poll(record, NULL);
	net_flush();
	CHECK(fake.tx_count == 1 && memcmp(fake.tx[0], GW_MAC, 6) == 0, "probe answered");
	CHECK(net_resolve(0) < 0, "0.0.0.0 is not routable");
}

static void test_arp_gateway(void)
{
	uint8_t f[1514];
	struct parsed p;
	setup();

	/* Off-link: through the gateway, whose MAC is unknown. */
	CHECK(udp_send(NET_IP(8, 8, 8, 8), 53, 1234, "first", 5) == 1, "waits for ARP");
	CHECK(udp_send(NET_IP(8, 8, 4, 4), 53, 1234, "second", 6) == 1, "waits for ARP");
	CHECK(net_flush() == 1, "one frame: the ARP request");
	CHECK(fake.tx_count == 1, "tx %d", fake.tx_count);
	const uint8_t *r = fake.tx[0];
	CHECK(memcmp(r, BCAST, 6) == 0 && rd16(r + 12) == 0x0806 && rd16(r + 20) == 1,
	      "broadcast ARP request");
	CHECK(memcmp(r + 22, OUR_MAC, 6) == 0 && rd32(r + 28) == OUR_IP &&
		      memcmp(r + 32, ZERO6, 6) == 0 && rd32(r + 38) == GW_IP, "asks for the gateway");
	CHECK(net_resolve(NET_IP(1, 1, 1, 1)) == 0, "resolution under way");
	CHECK(fake.clock_calls == 0, "no clock read yet");

	/* No answer: net_wait sleeps until the retransmission, then retransmits. */
	fake_clear_tx();
	uint64_t t0 = fake.now;
	net_wait();
	CHECK(fake.last_timeout == NET_ARP_INTERVAL_NS, "timed wait %lu", fake.last_timeout);
	CHECK(fake.tx_count == 0, "nothing due yet");
	net_wait();
	CHECK(fake.tx_count == 1 && rd16(fake.tx[0] + 20) == 1 && rd32(fake.tx[0] + 38) == GW_IP,
	      "one retransmission");
	CHECK(fake.now - t0 == 2 * NET_ARP_INTERVAL_NS, "then sleeps until the next one");
	CHECK(fake.blocked_forever == 0, "never waits forever while ARP is outstanding");

	/* The gateway answers: both datagrams leave, in order, to its MAC. */
	fake_clear_tx();
	fake_inject(f, mk_arp(f, 2, OUR_MAC, GW_MAC, GW_IP, OUR_MAC, OUR_IP));
	CHECK(net_poll(record, NULL) == 1, "the reply");
	CHECK(net_flush() == 2, "two datagrams released");
	CHECK(fake.tx_calls == 1 && fake.tx_count == 2, "in one transmit call");
	for (int i = 0; i < fake.tx_count && i < 2; i++) {
		CHECK(parse_udp(fake.tx[i], fake.tx_len[i], &p), "udp");
		CHECK(memcmp(p.dmac, GW_MAC, 6) == 0 && memcmp(p.smac, OUR_MAC, 6) == 0, "macs");
		CHECK(p.ip_ok && p.udp_ok, "checksums of datagram %d", i);
		CHECK(p.src == OUR_IP && p.sport == 1234 && p.dport == 53, "addresses");
		if (i == 0)
			CHECK(p.dst == NET_IP(8, 8, 8, 8) && p.plen == 5 && !memcmp(p.payload, "first", 5),
			      "first");
		else
			CHECK(p.dst == NET_IP(8, 8, 4, 4) && p.plen == 6 && !memcmp(p.payload, "second", 6),
			      "second");
	}
	/* Nothing outstanding now: the next wait is forever, and reads no clock. */
	int clocks = fake.clock_calls;
	net_wait();
	CHECK(fake.last_timeout == FTVM_WAIT_FOREVER && fake.clock_calls == clocks, "idle wait");
	CHECK(net_resolve(NET_IP(8, 8, 8, 8)) == 1, "resolved");

	/* On-link: ARP for the destination itself. */
	fake_clear_tx();
	CHECK(udp_send(PEER_IP, 7, 7, "p", 1) == 1, "waits");
	net_flush();
	CHECK(fake.tx_count == 1 && rd32(fake.tx[0] + 38) == PEER_IP, "asks for the peer");
	/* A datagram from it teaches its MAC too (no ARP reply needed). */
	fake_clear_tx();
	udp_bind(7);
	fake_inject(f, mk_udp(f, OUR_MAC, PEER_MAC, PEER_IP, OUR_IP, 7, 7, "hi", 2, 0));
	net_poll(record, NULL);
	net_flush();
	CHECK(got.n == 1, "delivered");
	CHECK(fake.tx_count == 1 && memcmp(fake.tx[0], PEER_MAC, 6) == 0 &&
		      parse_udp(fake.tx[0], fake.tx_len[0], &p) && p.plen == 1, "released");

	/* Two unresolved on-link hosts: each answer releases only its own datagrams, in the
	 * order they were sent. */
	fake_clear_tx();
	uint32_t h1 = NET_IP(10, 0, 2, 31), h2 = NET_IP(10, 0, 2, 32);
	static const uint8_t M1[6] = { 2, 0, 0, 0, 0, 31 }, M2[6] = { 2, 0, 0, 0, 0, 32 };
	udp_send(h1, 100, 7, "a1", 2);
	udp_send(h2, 100, 7, "b1", 2);
	udp_send(h1, 100, 7, "a2", 2);
	udp_send(h2, 100, 7, "b2", 2);
	udp_send(h1, 100, 7, "a3", 2);
	net_flush();
	CHECK(fake.tx_count == 2, "two ARP requests, got %d", fake.tx_count);
	fake_clear_tx();
	fake_inject(f, mk_arp(f, 2, OUR_MAC, M2, h2, OUR_MAC, OUR_IP));
	net_poll(record, NULL);
	net_flush();
	CHECK(fake.tx_count == 2, "h2's two, got %d", fake.tx_count);
	for (int i = 0; i < fake.tx_count; i++)
		CHECK(parse_udp(fake.tx[i], fake.tx_len[i], &p) && !memcmp(p.dmac, M2, 6) &&
			      p.dst == h2 && p.payload[0] == 'b' && p.payload[1] == '1' + i,
		      "h2 datagram %d", i);
	fake_clear_tx();
	fake_inject(f, mk_arp(f, 2, OUR_MAC, M1, h1, OUR_MAC, OUR_IP));
	net_poll(record, NULL);
	net_flush();
	CHECK(fake.tx_count == 3, "h1's three, got %d", fake.tx_count);
	for (int i = 0; i < fake.tx_count; i++)
		CHECK(parse_udp(fake.tx[i], fake.tx_len[i], &p) && !memcmp(p.dmac, M1, 6) &&
			      p.dst == h1 && p.payload[0] == 'a' && p.payload[1] == '1' + i,
		      "h1 datagram %d", i);

	/* Broadcast needs no ARP. */
	fake_clear_tx();
	CHECK(udp_send(0xffffffff, 7, 7, "b", 1) == 0, "broadcast");
	CHECK(udp_send(NET_IP(10, 0, 2, 255), 7, 7, "b", 1) == 0, "subnet broadcast");
	net_flush();
	CHECK(fake.tx_count == 2 && !memcmp(fake.tx[0], BCAST, 6) && !memcmp(fake.tx[1], BCAST, 6),
	      "to ff:ff:ff:ff:ff:ff");

	/* Bad sends. */
	char big[NET_UDP_MAX + 1];
	memset(big, 'x', sizeof big);
	CHECK(udp_send(PEER_IP, 7, 7, big, NET_UDP_MAX + 1) == NET_EINVAL, "too long");
	CHECK(udp_send(PEER_IP, 0, 7, "x", 1) == NET_EINVAL, "port 0");
	CHECK(udp_send(OUR_IP, 7, 7, "x", 1) == NET_EINVAL, "ourselves");
	CHECK(udp_send(NET_IP(224, 0, 0, 1), 7, 7, "x", 1) == NET_EINVAL, "multicast");
	fake_clear_tx();
	CHECK(udp_send(PEER_IP, 7, 7, big, NET_UDP_MAX) == 0, "the largest datagram");
	net_flush();
	CHECK(fake.tx_count == 1 && fake.tx_len[0] == 1514, "a 1514-byte frame");

	/* Without a gateway, off-link is unreachable. */
	fake_reset();
	memset(fake.gateway, 0, 4);
	net_init(NULL);
	CHECK(udp_send(NET_IP(8, 8, 8, 8), 53, 1, "x", 1) == NET_EHOSTUNREACH, "no route");
	CHECK(net_resolve(NET_IP(8, 8, 8, 8)) == NET_EHOSTUNREACH, "no route");
}

static void test_arp_give_up(void)
{
	setup();
	CHECK(udp_send(NET_IP(10, 0, 2, 88), 7, 7, "lost", 4) == 1, "waits");
	int requests = 0, waits = 0;
	net_flush();
	requests += fake.tx_count;
	fake_clear_tx();
	while (fake.blocked_forever == 0 && waits < 20) {
		net_wait();
		waits++;
		requests += fake.tx_count;
		for (int i = 0; i < fake.tx_count; i++)
			CHECK(rd16(fake.tx[i] + 12) == 0x0806, "only ARP goes out");
		fake_clear_tx();
	}
	CHECK(requests == NET_ARP_TRIES, "%d requests, want %d", requests, NET_ARP_TRIES);
	CHECK(net_stats.arp_failed == 1, "failed once");
	CHECK(fake.blocked_forever == 1, "then idle");
	/* The failure is reported once; the next attempt starts over. */
	CHECK(net_resolve(NET_IP(10, 0, 2, 88)) == NET_EHOSTUNREACH, "failed");
	CHECK(net_resolve(NET_IP(10, 0, 2, 88)) == 0, "starts again");
	net_flush();
	CHECK(fake.tx_count == 1 && rd16(fake.tx[0] + 12) == 0x0806, "a new request");
	/* An answer now brings nothing old: the datagram was dropped. */
	uint8_t f[60];
	fake_clear_tx();
	fake_inject(f, mk_arp(f, 2, OUR_MAC, PEER_MAC, NET_IP(10, 0, 2, 88), OUR_MAC, OUR_IP));
	net_poll(record, NULL);
	net_flush();
	CHECK(fake.tx_count == 0, "nothing released");
	CHECK(net_resolve(NET_IP(10, 0, 2, 88)) == 1, "resolved now");

	/* The waiting queue is bounded. */
	setup();
	int r = 0, i;
	for (i = 0; i < NET_ARP_QUEUE; i++)
		r |= udp_send(NET_IP(10, 0, 2, 100 + i % 4), 7, 7, "q", 1) != 1;
	CHECK(r == 0, "queued %d", i);
	CHECK(udp_send(NET_IP(10, 0, 2, 100), 7, 7, "q", 1) == NET_ENOBUFS, "queue full");
	CHECK(net_stats.arp_queue_full == 1, "counted");
	net_flush();
	CHECK(fake.tx_count == 4, "one request per address, got %d", fake.tx_count);
}

static void test_ipv4_checks(void)
{
	uint8_t f[1600];
	setup();
	udp_bind(5000);

#define INJECT(opts, ...) \
	fake_inject(f, mk_udp(f, OUR_MAC, GW_MAC, GW_IP, OUR_IP, 40000, 5000, "data", 4, (opts)))
	INJECT(0);
	INJECT(BAD_IP_SUM);
	INJECT(FRAG_MF);
	INJECT(FRAG_OFF);
	INJECT(FRAG_MF | FRAG_OFF);
	INJECT(BAD_UDP_SUM);
	INJECT(NO_UDP_SUM);
	INJECT(IP_OPTIONS);
	INJECT(ETH_PAD);
	INJECT(TRUNCATED);
	INJECT(UDP_LEN_BAD);
	INJECT(PROTO_TCP);
	/* Not for us: another IP; another MAC; another port. */
	fake_inject(f, mk_udp(f, OUR_MAC, GW_MAC, GW_IP, NET_IP(10, 0, 2, 16), 1, 5000, "d", 1, 0));
	fake_inject(f, mk_udp(f, PEER_MAC, GW_MAC, GW_IP, OUR_IP, 1, 5000, "d", 1, 0));
	fake_inject(f, mk_udp(f, OUR_MAC, GW_MAC, GW_IP, OUR_IP, 1, 5001, "d", 1, 0));
	/* Bad sources: broadcast, ourselves, loopback. */
	fake_inject(f, mk_udp(f, OUR_MAC, GW_MAC, 0xffffffff, OUR_IP, 1, 5000, "d", 1, 0));
	fake_inject(f, mk_udp(f, OUR_MAC, GW_MAC, OUR_IP, OUR_IP, 1, 5000, "d", 1, 0));
	fake_inject(f, mk_udp(f, OUR_MAC, GW_MAC, NET_IP(127, 0, 0, 1), OUR_IP, 1, 5000, "d", 1, 0));
	/* Short frames and another ethertype. */
	fake_inject(f, 13);
	mk_udp(f, OUR_MAC, GW_MAC, GW_IP, OUR_IP, 1, 5000, "d", 1, 0);
	fake_inject(f, 30);
	wr16(f + 12, 0x86dd);
	fake_inject(f, 60);
	/* An IPv6 version nibble in an IPv4 frame. */
	mk_udp(f, OUR_MAC, GW_MAC, GW_IP, OUR_IP, 1, 5000, "d", 1, 0);
	f[14] = 0x65;
	fake_inject(f, 60);
	/* 22 frames: one receive call. */
	long n1 = net_poll(record, NULL);
	CHECK(n1 == 22, "frames %ld", n1);

	/* Delivered: the plain one, no UDP checksum, IP options, Ethernet padding. */
	CHECK(got.n == 4, "delivered %d, want 4", got.n);
	for (int i = 0; i < got.n; i++)
		CHECK(got.d[i].len == 4 && memcmp(got.data[i], "data", 4) == 0 &&
			      got.d[i].src_ip == GW_IP && got.d[i].src_port == 40000 &&
			      got.d[i].dst_port == 5000, "datagram %d", i);
	CHECK(net_stats.drop_ipsum == 1, "ipsum %lu", net_stats.drop_ipsum);
	CHECK(net_stats.drop_frag == 3, "frag %lu", net_stats.drop_frag);
	CHECK(net_stats.drop_udpsum == 1, "udpsum %lu", net_stats.drop_udpsum);
	CHECK(net_stats.drop_notus == 1, "notus %lu", net_stats.drop_notus);
	CHECK(net_stats.drop_port == 1, "port %lu", net_stats.drop_port);
	CHECK(net_stats.drop_udp == 1, "udp %lu", net_stats.drop_udp);
	CHECK(net_stats.drop_ip == 7, "ip %lu (truncated, tcp, 3 bad sources, short, v6)",
	      net_stats.drop_ip);
	CHECK(net_stats.drop_eth == 3, "eth %lu (other MAC, 13 bytes, ethertype)",
	      net_stats.drop_eth);
	CHECK(fake.tx_calls == 0 && net_tx_room() == NET_TX_MAX, "nothing answered");
}

/* Random frames never crash the stack (the sanitizers watch). */
static void test_junk_frames(void)
{
	uint8_t f[1514];
	unsigned long x = 12345;
	setup();
	udp_bind(5000);
	for (int round = 0; round < 2000; round++) {
		size_t n = 14 + (size_t)(x % 1500);
		mk_udp(f, OUR_MAC, GW_MAC, GW_IP, OUR_IP, 1, 5000, "abcdefgh", 8, 0);
		for (size_t i = 0; i < n; i++) {
			x = x * 6364136223846793005UL + 1442695040888963407UL;
			if (i >= 42 || (x >> 60) == 0) /* keep the headers mostly plausible */
				f[i] = (uint8_t)(x >> 33);
		}
		if (round % 3 == 0)
			wr16(f + 12, 0x0806);
		fake_inject(f, n);
		if (fake.rx_count == 32)
			while (net_poll(record, NULL) > 0)
				;
		net_flush();
	}
	while (net_poll(record, NULL) > 0)
		;
	CHECK(fake.errors == 0, "only valid NIC calls");
}

/* ---- kvstore ---- */

static const char *kv(const char *req, size_t *n)
{
	static char buf[KV_REPLY_MAX + 1];
	const char *r = kv_handle((const uint8_t *)req, strlen(req), n);
	if (r == NULL)
		return NULL;
	memcpy(buf, r, *n);
	buf[*n] = 0;
	return buf;
}

#define KV_EXPECT(req, want)                                                         \
	do {                                                                         \
		size_t n_;                                                           \
		const char *r_ = kv(req, &n_);                                       \
		CHECK(r_ != NULL && strcmp(r_, want) == 0, "%s -> \"%s\", want \"%s\"", \
		      req, r_ ? r_ : "(no reply)", want);                            \
	} while (0)
#define KV_NOREPLY(req)                                                              \
	do {                                                                         \
		size_t n_;                                                           \
		const char *r_ = kv(req, &n_);                                       \
		CHECK(r_ == NULL, "%s -> \"%s\", want no reply", req, r_);           \
	} while (0)

static void test_kv_ops(void)
{
	kv_init();
	KV_EXPECT("1 1 PUT a hello", "1 1 OK");
	KV_EXPECT("1 2 GET a", "1 2 OK hello");
	KV_EXPECT("1 3 APPEND a  world", "1 3 OK");
	KV_EXPECT("1 4 GET a", "1 4 OK hello world");
	KV_EXPECT("1 5 GET b", "1 5 NOTFOUND");
	KV_EXPECT("1 6 APPEND b new", "1 6 OK"); /* APPEND creates */
	KV_EXPECT("1 7 GET b", "1 7 OK new");
	KV_EXPECT("1 8 PUT b replaced value with spaces", "1 8 OK");
	KV_EXPECT("1 9 GET b", "1 9 OK replaced value with spaces");
	KV_EXPECT("1 10 PUT e ", "1 10 OK"); /* empty value */
	KV_EXPECT("1 11 GET e", "1 11 OK ");
	KV_EXPECT("1 12 DEL e", "1 12 OK");
	KV_EXPECT("1 13 GET e", "1 13 NOTFOUND");
	KV_EXPECT("1 14 DEL e", "1 14 NOTFOUND");
	KV_EXPECT("1 15 GET a\n", "1 15 OK hello world");   /* a trailing newline */
	KV_EXPECT("1 16 GET a\r\n", "1 16 OK hello world"); /* or CRLF */
	KV_EXPECT("18446744073709551615 1 HELLO", "18446744073709551615 1 OK");
	KV_EXPECT("18446744073709551615 18446744073709551615 GET a",
		  "18446744073709551615 18446744073709551615 OK hello world");
	KV_EXPECT("007 001 GET a", "7 1 OK hello world"); /* numbers come back canonical */
	CHECK(kv_key_count() == 2, "keys %d", kv_key_count());

	/* Binary values go in and out unchanged. */
	uint8_t req[64] = "2 1 PUT bin ";
	size_t n = strlen((char *)req), rn;
	for (int i = 0; i < 8; i++)
		req[n++] = (uint8_t)(i * 40); /* includes 0 and high bytes */
	CHECK(kv_handle(req, n, &rn) != NULL, "binary put");
	const char *r = kv_handle((const uint8_t *)"2 2 GET bin", 11, &rn);
	CHECK(r != NULL && rn == 7 + 8 && memcmp(r, "2 2 OK ", 7) == 0 &&
		      memcmp(r + 7, req + 12, 8) == 0, "binary get");

	/* Sizes: a 64-byte key and a 1024-byte value are fine; one more is not. */
	char big[1200], key[80];
	memset(key, 'k', 65);
	key[64] = 0;
	snprintf(big, sizeof big, "3 1 PUT %s v", key);
	KV_EXPECT(big, "3 1 OK");
	key[64] = 'k', key[65] = 0;
	snprintf(big, sizeof big, "3 2 PUT %s v", key);
	KV_EXPECT(big, "3 2 ERR badkey");
	snprintf(big, sizeof big, "3 3 GET %s", key);
	KV_EXPECT(big, "3 3 ERR badkey");
	char val[1100];
	memset(val, 'v', 1024);
	val[1024] = 0;
	snprintf(big, sizeof big, "3 4 PUT big %s", val);
	KV_EXPECT(big, "3 4 OK");
	snprintf(big, sizeof big, "3 5 GET big");
	r = kv(big, &rn);
	CHECK(r && rn == 7 + 1024 && strncmp(r, "3 5 OK ", 7) == 0, "1024-byte value back");
	KV_EXPECT("3 6 APPEND big x", "3 6 ERR toolong");
	val[1024] = 'v', val[1025] = 0;
	snprintf(big, sizeof big, "3 7 PUT big2 %s", val);
	KV_EXPECT(big, "3 7 ERR toolong");
	KV_EXPECT("3 8 GET big2", "3 8 NOTFOUND");
	/* APPEND up to exactly 1024. */
	val[1000] = 0;
	snprintf(big, sizeof big, "3 9 PUT grow %s", val);
	KV_EXPECT(big, "3 9 OK");
	memset(val, 'w', 24);
	val[24] = 0;
	snprintf(big, sizeof big, "3 10 APPEND grow %s", val);
	KV_EXPECT(big, "3 10 OK");
	KV_EXPECT("3 11 APPEND grow z", "3 11 ERR toolong");
	size_t vl;
	CHECK(kv_lookup("grow", 4, &vl) && vl == 1024, "1024 after appends");
}

static void test_kv_exactly_once(void)
{
	kv_init();
	KV_EXPECT("5 1 PUT k a", "5 1 OK");
	uint64_t executed = kv_stats.executed;
	KV_EXPECT("5 2 APPEND k b", "5 2 OK");
	KV_EXPECT("5 2 APPEND k b", "5 2 OK"); /* a retransmission */
	KV_EXPECT("5 2 APPEND k b", "5 2 OK");
	CHECK(kv_stats.executed == executed + 1, "executed %lu times",
	      kv_stats.executed - executed);
	CHECK(kv_stats.duplicates == 2, "duplicates %lu", kv_stats.duplicates);
	size_t vl;
	const char *v = kv_lookup("k", 1, &vl);
	CHECK(v && vl == 2 && memcmp(v, "ab", 2) == 0, "appended once");

	/* The stored reply comes back even when the data changed since. */
	KV_EXPECT("5 3 GET k", "5 3 OK ab");
	KV_EXPECT("6 1 PUT k changed", "6 1 OK");
	KV_EXPECT("5 3 GET k", "5 3 OK ab");
	/* Whatever the retransmission says, the id decides. */
	KV_EXPECT("5 3 PUT k other", "5 3 OK ab");
	v = kv_lookup("k", 1, &vl);
	CHECK(v && vl == 7 && memcmp(v, "changed", 7) == 0, "not re-executed");

	/* Older ids are stale, and leave the stored reply alone. */
	KV_EXPECT("5 2 APPEND k b", "5 2 ERR stale");
	KV_EXPECT("5 1 GET k", "5 1 ERR stale");
	KV_EXPECT("5 3 GET k", "5 3 OK ab");
	CHECK(kv_stats.stale == 2, "stale %lu", kv_stats.stale);
	/* Ids need not be consecutive. */
	KV_EXPECT("5 100 GET k", "5 100 OK changed");
	KV_EXPECT("5 99 GET k", "5 99 ERR stale");
	/* An error is a reply like any other: stored, and repeated. */
	KV_EXPECT("5 101 FROB k", "5 101 ERR badop");
	KV_EXPECT("5 101 GET k", "5 101 ERR badop");
	/* Clients are independent. */
	KV_EXPECT("7 1 GET k", "7 1 OK changed");
	KV_EXPECT("7 1 GET k", "7 1 OK changed");

	/* A client the server does not know starts at request id 1: a higher id means it was
	 * forgotten, and its retry gets ERR nosession (not stored) instead of running again. */
	KV_EXPECT("8 2 APPEND k x", "8 2 ERR nosession");
	KV_EXPECT("8 2 APPEND k x", "8 2 ERR nosession");
	CHECK(kv_stats.nosession == 2 && kv_client_count() == 3, "nosession %lu clients %d",
	      kv_stats.nosession, kv_client_count());
	KV_EXPECT("8 1 HELLO", "8 1 OK");
	KV_EXPECT("8 1 HELLO", "8 1 OK");
	KV_EXPECT("8 2 APPEND k x", "8 2 OK");
	KV_EXPECT("8 3 HELLO junk", "8 3 ERR syntax");

	/* The client table keeps KV_CLIENTS clients, forgetting the least recently used. At
	 * that limit, a forgotten client's retry says nosession: nothing runs twice. */
	kv_init();
	char req[64];
	for (int c = 0; c < KV_CLIENTS; c++) {
		snprintf(req, sizeof req, "%d 1 HELLO", c);
		kv(req, &vl);
		snprintf(req, sizeof req, "%d 10 APPEND log x", c);
		kv(req, &vl);
	}
	CHECK(kv_client_count() == KV_CLIENTS, "clients %d", kv_client_count());
	CHECK(kv_stats.evicted == 0, "evicted %lu at the limit", kv_stats.evicted);
	KV_EXPECT("0 10 APPEND log x", "0 10 OK"); /* client 0 is now the most recent */
	KV_EXPECT("5000 1 GET nothing", "5000 1 NOTFOUND"); /* evicts client 1 */
	CHECK(kv_stats.evicted == 1 && kv_client_count() == KV_CLIENTS, "one eviction");
	KV_EXPECT("0 9 GET log", "0 9 ERR stale");     /* client 0 is still known */
	KV_EXPECT("2 9 GET log", "2 9 ERR stale");     /* and client 2 */
	v = kv_lookup("log", 3, &vl);
	CHECK(v && vl == KV_VAL_MAX, "log %zu", vl); /* 1024 appends fit, none ran twice */
	KV_EXPECT("1 10 APPEND log x", "1 10 ERR nosession"); /* client 1 forgotten: not rerun */
	v = kv_lookup("log", 3, &vl);
	CHECK(v && vl == KV_VAL_MAX, "log %zu after the forgotten retry", vl);
	/* Many evictions keep the table consistent. */
	for (int c = 0; c < 5 * KV_CLIENTS; c++) {
		snprintf(req, sizeof req, "%d 1 GET log", 100000 + c);
		kv(req, &vl);
	}
	for (int c = 4 * KV_CLIENTS; c < 5 * KV_CLIENTS; c++) {
		snprintf(req, sizeof req, "%d 0 GET log", 100000 + c);
		const char *r = kv(req, &vl);
		CHECK(r && strstr(r, "ERR stale"), "client %d remembered", c);
	}
	CHECK(kv_client_count() == KV_CLIENTS, "clients %d", kv_client_count());
}

static void test_kv_malformed(void)
{
	kv_init();
	/* No client id and request id: no one to answer. */
	KV_NOREPLY("");
	KV_NOREPLY("\n");
	KV_NOREPLY("hello");
	KV_NOREPLY("1");
	KV_NOREPLY("1 ");
	KV_NOREPLY("x 1 GET a");
	KV_NOREPLY("1 x GET a");
	KV_NOREPLY("-1 1 GET a");
	KV_NOREPLY("1 -1 GET a");
	KV_NOREPLY(" 1 1 GET a");
	KV_NOREPLY("1  1 GET a");
	KV_NOREPLY("18446744073709551616 1 GET a");
	KV_NOREPLY("1 18446744073709551616 GET a");
	CHECK(kv_stats.dropped == 13, "dropped %lu", kv_stats.dropped);
	/* Otherwise an error reply. */
	KV_EXPECT("1 1", "1 1 ERR syntax");
	KV_EXPECT("1 2 ", "1 2 ERR badop");
	KV_EXPECT("1 3 get a", "1 3 ERR badop");
	KV_EXPECT("1 4 GETX a", "1 4 ERR badop");
	KV_EXPECT("1 5 GET", "1 5 ERR syntax");
	KV_EXPECT("1 6 GET a b", "1 6 ERR syntax");
	KV_EXPECT("1 7 PUT a", "1 7 ERR syntax");
	KV_EXPECT("1 8 GET ", "1 8 ERR badkey");
	KV_EXPECT("1 9 PUT  v", "1 9 ERR badkey");
	KV_EXPECT("1 10 GET a\tb", "1 10 ERR badkey");
	KV_EXPECT("1 11 DEL", "1 11 ERR syntax");
	KV_EXPECT("1 12 APPEND k", "1 12 ERR syntax");
	KV_EXPECT("1 13 GET  a", "1 13 ERR badkey");
	KV_EXPECT("1 14 PUT", "1 14 ERR syntax");
	CHECK(kv_key_count() == 0, "nothing stored");

	/* Binary junk and mutated requests: never a crash, and any reply starts with the ids. */
	static const char *seeds[] = { "9 1 PUT key value", "9 2 GET key", "9 3 APPEND key v",
				       "9 4 DEL key" };
	uint8_t buf[1500];
	unsigned long x = 99;
	uint64_t rid = 10;
	for (int round = 0; round < 20000; round++) {
		x = x * 6364136223846793005UL + 1442695040888963407UL;
		size_t n;
		if (round % 2) {
			n = (size_t)(x >> 40) % sizeof buf;
			for (size_t i = 0; i < n; i++) {
				x = x * 6364136223846793005UL + 1442695040888963407UL;
				buf[i] = (uint8_t)(x >> 56);
			}
		} else {
			n = (size_t)snprintf((char *)buf, sizeof buf, "9 %lu %s", (unsigned long)rid++,
					     seeds[(x >> 20) % 4] + 4); /* past "9 N " */
			for (int k = 0; k < 3; k++) { /* mutate a few bytes */
				x = x * 6364136223846793005UL + 1442695040888963407UL;
				buf[(x >> 33) % n] = (uint8_t)(x >> 50);
			}
		}
		size_t rn;
		const char *r = kv_handle(buf, n, &rn);
		if (r != NULL) {
			CHECK(rn > 0 && rn <= KV_REPLY_MAX, "reply length %zu", rn);
			CHECK(r[0] >= '0' && r[0] <= '9', "reply starts with the client id");
		}
	}
	/* The largest UDP payload, all valid-looking, still gets an answer. */
	kv_init();
	memset(buf, 'v', NET_UDP_MAX);
	memcpy(buf, "8 1 PUT huge ", 13);
	size_t rn;
	const char *r = kv_handle(buf, NET_UDP_MAX, &rn);
	CHECK(r && rn == strlen("8 1 ERR toolong") && memcmp(r, "8 1 ERR toolong", rn) == 0,
	      "oversized value");
}

static void test_kv_table(void)
{
	kv_init();
	char req[128];
	size_t n;
	for (int i = 0; i < KV_KEYS; i++) {
		snprintf(req, sizeof req, "1 %d PUT key%d value%d", i + 1, i, i);
		const char *r = kv(req, &n);
		CHECK(r && strstr(r, " OK"), "put %d: %s", i, r);
	}
	CHECK(kv_key_count() == KV_KEYS, "full");
	snprintf(req, sizeof req, "1 %d PUT onemore x", KV_KEYS + 1);
	const char *r = kv(req, &n);
	CHECK(r && strstr(r, "ERR full"), "%s", r);
	snprintf(req, sizeof req, "1 %d PUT key7 overwrite", KV_KEYS + 2); /* existing: fine */
	r = kv(req, &n);
	CHECK(r && strstr(r, " OK"), "%s", r);
	/* Delete every third key, then check every key: deletion keeps probing intact. */
	int id = KV_KEYS + 10;
	for (int i = 0; i < KV_KEYS; i += 3) {
		snprintf(req, sizeof req, "1 %d DEL key%d", id++, i);
		r = kv(req, &n);
		CHECK(r && strstr(r, " OK"), "del %d", i);
	}
	for (int i = 0; i < KV_KEYS; i++) {
		char key[16], want[32];
		snprintf(key, sizeof key, "key%d", i);
		snprintf(want, sizeof want, i == 7 ? "overwrite" : "value%d", i);
		size_t vl;
		const char *v = kv_lookup(key, strlen(key), &vl);
		if (i % 3 == 0)
			CHECK(v == NULL, "%s deleted", key);
		else
			CHECK(v && vl == strlen(want) && memcmp(v, want, vl) == 0, "%s", key);
	}
	/* The freed entries are reused. */
	for (int i = 0; i < KV_KEYS; i += 3) {
		snprintf(req, sizeof req, "1 %d PUT new%d v", id++, i);
		r = kv(req, &n);
		CHECK(r && strstr(r, " OK"), "reuse %d: %s", i, r);
	}
	CHECK(kv_key_count() == KV_KEYS, "full again: %d", kv_key_count());
}

/* 100 requests arrive together; kvstore's loop answers all of them with one transmit call. */
static void test_kv_burst(void)
{
	uint8_t f[1514];
	char req[64];
	struct parsed p;

	setup();
	kv_init();
	udp_bind(7000);
	for (int i = 0; i < 100; i++) {
		int len = snprintf(req, sizeof req, "%d 1 PUT key%d value%d", 1000 + i, i, i);
		fake_inject(f, mk_udp(f, OUR_MAC, GW_MAC, GW_IP, OUR_IP, (uint16_t)(40000 + i), 7000,
				      req, (size_t)len, 0));
	}
	long frames = net_serve_once(kv_udp_handler, NULL);
	CHECK(frames == 100, "received %ld", frames);
	CHECK(fake.rx_calls == 4, "receive calls %d (32+32+32+4)", fake.rx_calls);
	CHECK(fake.tx_calls == 1, "transmit calls %d, want 1", fake.tx_calls);
	CHECK(fake.tx_count == 100 && fake.tx_call_frames[0] == 100, "replies %d",
	      fake.tx_count);
	CHECK(fake.wait_calls == 1 && fake.blocked_forever == 0, "one wait, which returned at once");
	CHECK(kv_stats.executed == 100, "executed %lu", kv_stats.executed);
	for (int i = 0; i < fake.tx_count; i++) {
		char want[64];
		int wl = snprintf(want, sizeof want, "%d 1 OK", 1000 + i);
		CHECK(parse_udp(fake.tx[i], fake.tx_len[i], &p) && p.ip_ok && p.udp_ok, "reply %d", i);
		CHECK(memcmp(p.dmac, GW_MAC, 6) == 0 && p.dst == GW_IP &&
			      p.dport == 40000 + i && p.sport == 7000, "reply %d addresses", i);
		CHECK(p.plen == (size_t)wl && memcmp(p.payload, want, (size_t)wl) == 0,
		      "reply %d: %.*s", i, (int)p.plen, p.payload);
	}

	/* The same burst again (all retransmissions): answered from the client table, again in
	 * one transmit call. */
	fake_clear_tx();
	fake.rx_calls = fake.wait_calls = 0;
	for (int i = 0; i < 100; i++) {
		int len = snprintf(req, sizeof req, "%d 1 PUT key%d other", 1000 + i, i);
		fake_inject(f, mk_udp(f, OUR_MAC, GW_MAC, GW_IP, OUR_IP, (uint16_t)(40000 + i), 7000,
				      req, (size_t)len, 0));
	}
	net_serve_once(kv_udp_handler, NULL);
	CHECK(fake.tx_calls == 1 && fake.tx_count == 100, "tx calls %d frames %d", fake.tx_calls,
	      fake.tx_count);
	CHECK(kv_stats.executed == 100 && kv_stats.duplicates == 100, "no re-execution");
	size_t vl;
	const char *v = kv_lookup("key5", 4, &vl);
	CHECK(v && vl == 6 && memcmp(v, "value5", 6) == 0, "unchanged");

	/* More than the transmit queue holds: still correct, with a flush when it fills. */
	fake_clear_tx();
	for (int i = 0; i < 300; i++) {
		int len = snprintf(req, sizeof req, "%d 2 GET key%d", 1000 + i % 100, i % 100);
		fake_inject(f, mk_udp(f, OUR_MAC, GW_MAC, GW_IP, OUR_IP, 40000, 7000, req,
				      (size_t)len, 0));
	}
	frames = 0;
	while (fake.rx_count > 0)
		frames += net_serve_once(kv_udp_handler, NULL);
	CHECK(frames == 300 && fake.tx_count == 300, "300 replies, got %d", fake.tx_count);
	CHECK(fake.tx_calls == 3, "tx calls %d (128-frame queue)", fake.tx_calls);
	for (int i = 0; i < fake.tx_calls; i++)
		CHECK(fake.tx_call_frames[i] <= NET_TX_MAX, "call %d: %d frames", i,
		      fake.tx_call_frames[i]);
	CHECK(fake.errors == 0, "valid NIC calls");
}

/* ---- netsink and netsource ---- */

static void test_netsink(void)
{
	uint8_t f[1514], data[500];
	struct parsed p;
	setup();
	udp_bind(7001);
	memset(data, 'd', sizeof data);
	netsink_packets = netsink_bytes = 0;
	for (int i = 0; i < 50; i++)
		fake_inject(f, mk_udp(f, OUR_MAC, PEER_MAC, PEER_IP, OUR_IP, 3000, 7001, data,
				      (size_t)(i * 10), 0));
	fake_inject(f, mk_udp(f, OUR_MAC, PEER_MAC, PEER_IP, OUR_IP, 3001, 7001, "REPORT", 6, 0));
	net_serve_once(netsink_handler, NULL);
	CHECK(netsink_packets == 50 && netsink_bytes == 12250, "%lu %lu", netsink_packets,
	      netsink_bytes);
	CHECK(fake.tx_calls == 1 && fake.tx_count == 1, "one reply");
	CHECK(parse_udp(fake.tx[0], fake.tx_len[0], &p) && p.udp_ok && p.dport == 3001 &&
		      p.sport == 7001 && p.dst == PEER_IP, "reply addresses");
	CHECK(p.plen == 8 && memcmp(p.payload, "50 12250", 8) == 0, "report \"%.*s\"", (int)p.plen,
	      p.payload);
}

static void test_netsource(void)
{
	uint8_t f[1514];
	struct parsed p;
	setup();
	netsource_setup(7002, 64);
	const char *cmd = "SEND 200 100 9000\n";
	fake_inject(f, mk_udp(f, OUR_MAC, PEER_MAC, PEER_IP, OUR_IP, 5555, 7002, cmd, strlen(cmd), 0));
	cmd = "SEND 5 5 9000"; /* in the same batch: the first transfer has begun */
	fake_inject(f, mk_udp(f, OUR_MAC, PEER_MAC, PEER_IP, OUR_IP, 5556, 7002, cmd, strlen(cmd), 0));
	netsource_step(); /* receives the requests */
	CHECK(netsource_busy(), "transfer started");
	CHECK(fake.tx_count == 1 && parse_udp(fake.tx[0], fake.tx_len[0], &p) && p.dport == 5556 &&
		      p.plen == 8 && memcmp(p.payload, "ERR busy", 8) == 0, "the second is refused");
	fake_clear_tx();
	for (int i = 0; i < 10 && netsource_busy(); i++)
		netsource_step();
	CHECK(!netsource_busy(), "transfer done");
	CHECK(fake.tx_count == 201, "frames %d", fake.tx_count);
	CHECK(fake.tx_calls == 4, "tx calls %d", fake.tx_calls);
	for (int i = 0; i < fake.tx_calls; i++)
		CHECK(fake.tx_call_frames[i] <= 64, "call %d: %d frames", i, fake.tx_call_frames[i]);
	for (int i = 0; i < fake.tx_count; i++) {
		CHECK(parse_udp(fake.tx[i], fake.tx_len[i], &p) && p.ip_ok && p.udp_ok, "frame %d", i);
		CHECK(p.dst == PEER_IP && p.dport == 9000 && p.sport == 7002 &&
			      !memcmp(p.dmac, PEER_MAC, 6), "frame %d addresses", i);
		if (i < 200) {
			char seq[16];
			snprintf(seq, sizeof seq, "%010d", i);
			CHECK(p.plen == 100 && memcmp(p.payload, seq, 10) == 0 && p.payload[10] == 'k' &&
				      p.payload[99] == 'v', "payload %d", i);
		} else {
			CHECK(p.plen == 8 && memcmp(p.payload, "DONE 200", 8) == 0, "done: %.*s",
			      (int)p.plen, p.payload);
		}
	}

	/* Bad requests are answered ERR syntax, to the requester's port. */
	static const char *bad[] = { "SEND", "SEND 1 2", "SEND 1 2 3 4", "SEND 1 1473 9",
				     "SEND 1 10 65536", "SEND x 1 1", "send 1 1 1",
				     "SEND  1 1 1" };
	fake_clear_tx();
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		fake_inject(f, mk_udp(f, OUR_MAC, PEER_MAC, PEER_IP, OUR_IP, 5555, 7002, bad[i],
				      strlen(bad[i]), 0));
	netsource_step();
	CHECK(!netsource_busy(), "no transfer");
	CHECK(fake.tx_count == (int)(sizeof bad / sizeof bad[0]), "replies %d", fake.tx_count);
	for (int i = 0; i < fake.tx_count; i++)
		CHECK(parse_udp(fake.tx[i], fake.tx_len[i], &p) && p.dport == 5555 && p.plen == 10 &&
			      memcmp(p.payload, "ERR syntax", 10) == 0, "reply %d", i);

	/* Port 0: the datagrams go to the port the request came from (all a client
	 * behind user networking's NAT can name). */
	fake_clear_tx();
	cmd = "SEND 2 10 0";
	fake_inject(f, mk_udp(f, OUR_MAC, PEER_MAC, PEER_IP, OUR_IP, 5555, 7002, cmd, strlen(cmd), 0));
	for (int i = 0; i < 5; i++)
		netsource_step();
	CHECK(!netsource_busy() && fake.tx_count == 3, "port 0: %d frames", fake.tx_count);
	for (int i = 0; i < fake.tx_count; i++)
		CHECK(parse_udp(fake.tx[i], fake.tx_len[i], &p) && p.dport == 5555, "port 0: frame %d to %d", i, p.dport);

	/* Zero datagrams: just DONE 0. An off-link requester: ARP for the gateway first. */
	fake_clear_tx();
	cmd = "SEND 0 0 9001";
	fake_inject(f, mk_udp(f, OUR_MAC, GW_MAC, NET_IP(192, 168, 1, 5), OUR_IP, 5555, 7002, cmd,
			      strlen(cmd), 0));
	netsource_step();
	CHECK(netsource_busy(), "started");
	netsource_step(); /* ARP under way: waits (here: one interval) */
	CHECK(fake.tx_count == 1 && rd16(fake.tx[0] + 12) == 0x0806 && rd32(fake.tx[0] + 38) == GW_IP,
	      "ARP for the gateway");
	fake_inject(f, mk_arp(f, 2, OUR_MAC, GW_MAC, GW_IP, OUR_MAC, OUR_IP));
	netsource_step(); /* the ARP reply */
	for (int i = 0; i < 5 && netsource_busy(); i++)
		netsource_step();
	CHECK(!netsource_busy(), "done");
	CHECK(parse_udp(fake.tx[fake.tx_count - 1], fake.tx_len[fake.tx_count - 1], &p) &&
		      p.plen == 6 && memcmp(p.payload, "DONE 0", 6) == 0 &&
		      p.dst == NET_IP(192, 168, 1, 5) && !memcmp(p.dmac, GW_MAC, 6),
	      "DONE 0 through the gateway");
	CHECK(fake.errors == 0, "valid NIC calls");
}

int main(void)
{
	static const struct {
		const char *name;
		void (*fn)(void);
	} tests[] = {
		{ "no_nic", test_no_nic },
		{ "init", test_init },
		{ "checksum_vectors", test_checksum_vectors },
		{ "udp_checksum_vectors", test_udp_checksum_vectors },
		{ "arp_reply", test_arp_reply },
		{ "arp_gateway", test_arp_gateway },
		{ "arp_give_up", test_arp_give_up },
		{ "ipv4_checks", test_ipv4_checks },
		{ "junk_frames", test_junk_frames },
		{ "kv_ops", test_kv_ops },
		{ "kv_exactly_once", test_kv_exactly_once },
		{ "kv_malformed", test_kv_malformed },
		{ "kv_table", test_kv_table },
		{ "kv_burst", test_kv_burst },
		{ "netsink", test_netsink },
		{ "netsource", test_netsource },
		RESP_TESTS
	};
	for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
		int before = failures;
		current = tests[i].name;
		tests[i].fn();
		printf("nettest: %-22s %s\n", tests[i].name, failures == before ? "ok" : "FAILED");
	}
	printf("nettest: %d checks, %d failed\n", checks, failures);
	return failures ? 1 : 0;
}

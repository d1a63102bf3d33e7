/* A small UDP/IPv4 stack over the ftvm NIC (ABI.md, "The NIC"): Ethernet II, ARP, IPv4
 * without fragments, UDP. See ../README.md, "The network stack".
 *
 * Everything is batched, because every call into the VMM is a VM exit (~50 us): net_poll
 * receives up to NET_RX_BATCH frames with one receive call, and udp_send only queues a frame;
 * net_flush transmits every queued frame with one transmit call. No malloc: all buffers are
 * static.
 *
 * IPv4 addresses in this API are uint32_t in host order: 10.0.2.15 is NET_IP(10, 0, 2, 15)
 * = 0x0a00020f. Ports are host order too.
 *
 * The same source compiles for a guest and, with -DNET_HOST_TEST, for a host test program
 * (guests/nettest/) that supplies a fake NIC: the fake_* functions below replace the VMM
 * calls, and libc replaces the runtime. */
#ifndef RT_NET_H
#define RT_NET_H

#ifdef NET_HOST_TEST
#include <stddef.h>
#include <string.h>
#include "../include/ftvm.h"
/* The fake NIC and clock of the host tests, with the semantics of the VMM calls. */
long fake_nic_info(struct ftvm_nic_info *info, uint8_t gateway[4]);
long fake_nic_tx(struct ftvm_pkt_desc *d, size_t n);
long fake_nic_rx(struct ftvm_pkt_desc *d, size_t n);
uint64_t fake_clock(void);
uint64_t fake_wait(uint64_t timeout_ns);
long fake_console_read(void *buf, size_t cap);
#define net_sys_info fake_nic_info
#define net_sys_tx fake_nic_tx
#define net_sys_rx fake_nic_rx
#define net_sys_clock fake_clock
#define net_sys_wait fake_wait
#define net_sys_console_read fake_console_read
#else
#include "rt.h"
#define net_sys_info ftvm_nic_info
#define net_sys_tx ftvm_nic_tx
#define net_sys_rx ftvm_nic_rx
#define net_sys_clock() ftvm_clock(FTVM_CLOCK_MONOTONIC)
#define net_sys_wait ftvm_wait
#define net_sys_console_read ftvm_console_read
#endif

#define NET_IP(a, b, c, d) \
	((uint32_t)(a) << 24 | (uint32_t)(b) << 16 | (uint32_t)(c) << 8 | (uint32_t)(d))

/* Sizes. */
#define NET_RX_BATCH 32      /* descriptors per receive call */
#define NET_TX_MAX 128       /* frames queued for one transmit call */
#define NET_ARP_CACHE 64     /* ARP cache entries (LRU replacement) */
#define NET_ARP_QUEUE 64     /* datagrams waiting for ARP, over all destinations */
#define NET_ARP_TRIES 3      /* ARP requests sent before giving up on an address */
#define NET_ARP_INTERVAL_NS 1000000000UL /* between them */
#define NET_MAX_BINDS 8      /* bound UDP ports */
#define NET_UDP_MAX 1472     /* largest UDP payload: MTU 1500 - 20 (IPv4) - 8 (UDP) */
#define NET_FRAME_BUF 1536   /* one frame buffer (>= FTVM_ETH_MAX_FRAME) */

/* Errors (negative results). FTVM_ENODEV etc. come from the VMM. */
#define NET_EINVAL (-22)      /* bad argument (payload too long, port 0, ...) */
#define NET_ENOBUFS (-105)    /* the ARP queue or the port table is full: dropped */
#define NET_EHOSTUNREACH (-113) /* no route, or ARP got no answer */
#define NET_ENOTCONN (-107)   /* net_init has not succeeded */

/* A received UDP datagram. data points into a receive buffer that is valid only during the
 * handler call. */
struct udp_dgram {
	uint32_t src_ip;
	uint16_t src_port;
	uint16_t dst_port;
	const uint8_t *data;
	uint32_t len;
};
typedef void (*net_udp_handler)(const struct udp_dgram *d, void *ctx);

/* Our configuration, from the NIC info call. */
struct net_config {
	uint8_t mac[6];
	uint32_t ip, mask, gateway; /* gateway 0: none */
	int prefix;
};
extern struct net_config net_cfg;

/* Counters, for tests and diagnostics. */
struct net_stats {
	uint64_t rx_calls, rx_frames, tx_calls, tx_frames, tx_dropped;
	uint64_t udp_in, udp_out;
	uint64_t drop_eth, drop_arp, drop_ip, drop_ipsum, drop_frag, drop_notus, drop_udp,
		drop_udpsum, drop_port;
	uint64_t arp_replies, arp_requests, arp_failed, arp_queue_full;
};
extern struct net_stats net_stats;

/* Reads the NIC's configuration (one call) and resets the stack. bi may be NULL. Returns 0,
 * or FTVM_ENODEV when the VM has no NIC (or another negative result of the call). */
long net_init(struct ftvm_boot_info *bi);

/* Deliver datagrams for this port to net_poll's handler. 0, or NET_EINVAL (port 0) or
 * NET_ENOBUFS (NET_MAX_BINDS ports already bound). Binding twice is fine. */
int udp_bind(uint16_t port);

/* One receive call for up to NET_RX_BATCH frames. Answers ARP, releases datagrams that were
 * waiting for an ARP answer into the transmit queue, and calls h for each valid UDP
 * datagram to a bound port, in arrival order. The handler may call udp_send. Returns the
 * number of frames received (NET_RX_BATCH: more may be pending), or a negative error. */
long net_poll(net_udp_handler h, void *ctx);

/* Queue a UDP datagram (len <= NET_UDP_MAX) for the next net_flush. The source address is
 * ours; the next hop is dst itself when on-link, else the gateway (255.255.255.255 goes to
 * the Ethernet broadcast address). When the next hop's MAC is unknown the datagram waits
 * (at most NET_ARP_QUEUE of them) until ARP answers, and is dropped if it never does.
 * Returns 0 (queued for transmission), 1 (waiting for ARP), or a negative error:
 * NET_EINVAL, NET_EHOSTUNREACH (no route), NET_ENOBUFS (ARP queue full), NET_ENOTCONN.
 * When the transmit queue is full it is flushed first (one transmit call). */
int udp_send(uint32_t dst_ip, uint16_t dst_port, uint16_t src_port, const void *payload,
	     size_t len);

/* Transmit every queued frame with one transmit call (none when nothing is queued). Returns
 * the number of frames the VMM accepted (the rest are dropped and counted), or a negative
 * error. */
long net_flush(void);

/* Frames that can still be queued before udp_send must flush. */
int net_tx_room(void);

/* Resolve ip's next hop: 1 its MAC is known (udp_send would transmit at once), 0 an ARP
 * request is outstanding (started now if need be), NET_EHOSTUNREACH no route or the last
 * resolution failed (reported once; the next call starts again). */
int net_resolve(uint32_t ip);

/* Run the ARP retransmission timers, flush, then wait in the VMM until a packet (or console
 * input) is pending: forever when no ARP request is outstanding, else until the next
 * retransmission is due. Reads the clock only while ARP requests are outstanding. Returns
 * the wait call's bits (FTVM_WAIT_*). */
uint64_t net_wait(void);

/* The server loop's body: net_wait (console input, which these servers do not take, is
 * read and discarded), then net_poll until a receive call returns fewer than
 * NET_RX_BATCH frames (flushing only when the transmit queue could not take another full
 * batch of replies), then one net_flush. A burst of requests is thus answered with as few
 * transmit calls as the queue allows: one, for up to NET_TX_MAX replies. Returns the frames
 * received. */
long net_serve_once(net_udp_handler h, void *ctx);

/* Helpers. */
uint16_t net_checksum(const void *data, size_t len, uint32_t sum); /* Internet checksum */
uint32_t net_sum(const void *data, size_t len, uint32_t sum);      /* ones' complement sum, unfolded */
char *net_fmt_ip(char buf[16], uint32_t ip); /* "a.b.c.d", NUL-terminated; returns buf */
/* For text protocols: s[0:len] as a decimal number (1-20 digits, no sign, at most 2^64-1):
 * 1 and *out set, or 0. */
int net_parse_u64(const void *s, size_t len, uint64_t *out);
/* v in decimal at buf (room for 20 digits; no NUL); returns the number of digits. */
size_t net_fmt_u64(char *buf, uint64_t v);

#endif

/* netsink: a receive-heavy UDP guest.
 *
 *   netsink [port=7001]
 *
 * Counts the datagrams arriving on the port and their payload bytes. A datagram whose
 * payload starts with "REPORT" is not counted: it is answered, to its sender, with
 * "<packets> <bytes>" (decimal, one space, no newline) and counting continues. */
#include "net.h"

#ifndef NET_HOST_TEST
const char *const guest_args[] = { "port", 0 };
#endif

uint64_t netsink_packets, netsink_bytes;

void netsink_handler(const struct udp_dgram *d, void *ctx)
{
	(void)ctx;
	if (d->len >= 6 && memcmp(d->data, "REPORT", 6) == 0) {
		char buf[48];
		size_t n = net_fmt_u64(buf, netsink_packets);
		buf[n++] = ' ';
		n += net_fmt_u64(buf + n, netsink_bytes);
		if (d->src_port != 0)
			udp_send(d->src_ip, d->src_port, d->dst_port, buf, n);
		return;
	}
	netsink_packets++;
	netsink_bytes += d->len;
}

#ifndef NET_HOST_TEST
int main(struct ftvm_boot_info *bi)
{
	long port = arg_long(bi, "port", 7001);
	char ip[16];

	if (port < 1 || port > 65535) {
		printf("netsink: port=%ld: want 1-65535\n", port);
		return 2;
	}
	long r = net_init(bi);
	if (r < 0) {
		printf("netsink: no NIC (error %ld)\n", r);
		return 1;
	}
	udp_bind((uint16_t)port);
	printf("netsink: listening on %s:%ld\n", net_fmt_ip(ip, net_cfg.ip), port);
	for (;;)
		net_serve_once(netsink_handler, NULL);
}
#endif

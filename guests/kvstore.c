/* kvstore: a UDP key-value server with exactly-once requests.
 *
 *   kvstore [port=7000] [requests=N] [fill=MIB]
 *
 * fill=MIB (default 0) writes a pattern over that many MiB of the heap at boot (at most
 * what the heap has): state that a live transfer to a new backup must copy, as a server
 * with a warm cache has.
 *
 * requests=N (default 0: never) makes the server exit 0 once it has executed N
 * requests (a retried duplicate is answered, not executed again) and sent its replies: a run with a definite end, for record/replay
 * and benchmarks.
 * One request per datagram, one reply per request, in text: see ../README.md, "kvstore",
 * and kv.c. Replies to a burst of requests leave with one transmit call (net_serve_once).
 * The server never exits on its own; an idle server sleeps in the VMM's wait call. */
#include "rt.h"
#include "net.h"
#include "kv.h"

const char *const guest_args[] = { "port", "requests", "fill", 0 };

int main(struct ftvm_boot_info *bi)
{
	long port = arg_long(bi, "port", 7000);
	long requests = arg_long(bi, "requests", 0);
	long fill = arg_long(bi, "fill", 0);
	char ip[16];

	if (fill > 0) {
		uint64_t bytes = (uint64_t)fill << 20, avail = bi->heap_end - bi->heap_start;
		if (bytes > avail)
			bytes = avail;
		uint64_t *heap = (uint64_t *)bi->heap_start;
		for (uint64_t i = 0; i < bytes / 8; i++)
			heap[i] = i * 0x9e3779b97f4a7c15UL | 1;
	}

	if (port < 1 || port > 65535) {
		printf("kvstore: port=%ld: want 1-65535\n", port);
		return 2;
	}
	long r = net_init(bi);
	if (r < 0) {
		printf("kvstore: no NIC (error %ld)\n", r);
		return 1;
	}
	kv_init();
	udp_bind((uint16_t)port);
	printf("kvstore: listening on %s:%ld\n", net_fmt_ip(ip, net_cfg.ip), port);
	while (requests <= 0 || kv_stats.executed < (uint64_t)requests)
		net_serve_once(kv_udp_handler, NULL);
	net_flush();
	printf("kvstore: handled %lu requests, executed %lu; exiting\n",
	       (unsigned long)kv_stats.requests, (unsigned long)kv_stats.executed);
	return 0;
}

/* kvstore: a UDP key-value server with exactly-once requests.
 *
 *   kvstore [port=7000] [requests=N] [fill=MIB] [disk=1]
 *
 * disk=1 keeps the data on the block device (kvdisk.c): at boot every request in its log
 * runs again, and a request that changes anything is answered only once its record is on
 * the disk and flushed. A batch of requests shares one flush.
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
#include "kvdisk.h"

const char *const guest_args[] = { "port", "requests", "fill", "disk", 0 };

static long diskfull; /* requests refused: the log is full */

/* The handler with the disk: a request that changed state is logged before its reply is
 * queued; replies leave only after kvdisk_commit (see main's loop). A request that would not
 * fit in the log is not run and gets no reply. */
static void kv_disk_handler(const struct udp_dgram *d, void *ctx)
{
	size_t n;
	(void)ctx;
	if (d->len > KVDISK_PAYLOAD_MAX || !kvdisk_room(d->len)) {
		if (diskfull++ == 0)
			printf("kvstore: the disk log is full (%lu bytes): refusing requests\n",
			       (unsigned long)kvdisk_used());
		return;
	}
	const char *r = kv_handle(d->data, d->len, &n);
	if (kv_changed)
		kvdisk_append(d->data, d->len);
	if (r != NULL && d->src_port != 0)
		udp_send(d->src_ip, d->src_port, d->dst_port, r, n);
}

int main(struct ftvm_boot_info *bi)
{
	long port = arg_long(bi, "port", 7000);
	long requests = arg_long(bi, "requests", 0);
	long fill = arg_long(bi, "fill", 0);
	long disk = arg_long(bi, "disk", 0);
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
	if (disk) {
		long n = kvdisk_init();
		if (n < 0) {
			printf("kvstore: disk=1 but %s (error %ld)\n", n == FTVM_ENODEV ? "no disk" : "the disk failed", n);
			return 1;
		}
		printf("kvstore: restored %ld requests (%lu bytes of log) from the disk: %d keys\n", n,
		       (unsigned long)kvdisk_used(), kv_key_count());
	}
	udp_bind((uint16_t)port);
	printf("kvstore: listening on %s:%ld\n", net_fmt_ip(ip, net_cfg.ip), port);
	while (!disk && (requests <= 0 || kv_stats.executed < (uint64_t)requests))
		net_serve_once(kv_udp_handler, NULL);
	/* With the disk: one receive batch at a time, its records committed before any of
	 * its replies leaves. */
	while (disk && (requests <= 0 || kv_stats.executed < (uint64_t)requests)) {
		if (net_wait() & FTVM_WAIT_CONSOLE) {
			static char discard[256];
			ftvm_console_read(discard, sizeof discard);
		}
		while (net_poll(kv_disk_handler, NULL) > 0) {
			long r = kvdisk_commit();
			if (r < 0) {
				printf("kvstore: writing the disk log failed (error %ld)\n", r);
				return 1;
			}
			net_flush();
		}
	}
	net_flush();
	printf("kvstore: handled %lu requests, executed %lu; exiting\n",
	       (unsigned long)kv_stats.requests, (unsigned long)kv_stats.executed);
	return 0;
}

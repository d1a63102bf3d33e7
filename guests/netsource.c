/* netsource: a transmit-heavy UDP guest.
 *
 *   netsource [port=7002] [batch=64]
 *
 * A datagram "SEND <count> <size> <port>" arriving on the port makes it send <count>
 * datagrams of <size> payload bytes (0-1472) to the requester's IP at <port> (0: the port
 * the request came from), at most
 * <batch> frames per transmit call, then one datagram "DONE <sent>" to the same place.
 * Each payload starts with its sequence number (0, 1, ...) as 10 zero-padded decimal
 * digits (cut short when <size> is smaller), followed by the letters a-z repeated. A bad
 * request is answered "ERR syntax", a request during a transfer "ERR busy", both to the
 * requester's port. While a transfer runs, arriving datagrams are looked at after every 16
 * transmit calls. */
#include "net.h"

#ifndef NET_HOST_TEST
const char *const guest_args[] = { "port", "batch", 0 };
#endif

#define SRC_MAX_COUNT 1000000000UL
#define SRC_CALLS_PER_STEP 16

static uint16_t src_port;
static int src_batch = 64;

static struct {
	int active;
	uint32_t ip;
	uint16_t port;
	uint32_t size;
	uint64_t count, next, sent;
} job;

static uint8_t payload[NET_UDP_MAX];

/* Set-up, for main and the host tests. */
void netsource_setup(uint16_t port, int batch)
{
	src_port = port;
	src_batch = batch;
	memset(&job, 0, sizeof job);
	udp_bind(port);
}

static void reply(const struct udp_dgram *d, const char *s)
{
	if (d->src_port != 0)
		udp_send(d->src_ip, d->src_port, d->dst_port, s, strlen(s));
}

/* "SEND <count> <size> <port>", one space between words, an optional trailing newline. */
void netsource_handler(const struct udp_dgram *d, void *ctx)
{
	const uint8_t *p = d->data;
	size_t n = d->len;
	uint64_t v[3];

	(void)ctx;
	if (n > 0 && p[n - 1] == '\n')
		n--;
	if (n > 0 && p[n - 1] == '\r')
		n--;
	if (n < 5 || memcmp(p, "SEND ", 5) != 0) {
		reply(d, "ERR syntax");
		return;
	}
	size_t i = 5;
	for (int k = 0; k < 3; k++) {
		size_t j = i;
		while (j < n && p[j] != ' ')
			j++;
		if (!net_parse_u64(p + i, j - i, &v[k]) || (k < 2 && j == n) || (k == 2 && j != n)) {
			reply(d, "ERR syntax");
			return;
		}
		i = j + 1;
	}
	if (v[0] > SRC_MAX_COUNT || v[1] > NET_UDP_MAX || v[2] > 65535) {
		reply(d, "ERR syntax");
		return;
	}
	if (job.active) {
		reply(d, "ERR busy");
		return;
	}
	job.active = 1;
	job.ip = d->src_ip;
	/* Port 0: the requester's own port, which is all a client behind user
	 * networking's NAT can name. */
	job.port = v[2] ? (uint16_t)v[2] : d->src_port;
	job.size = (uint32_t)v[1];
	job.count = v[0];
	job.next = job.sent = 0;
	for (uint32_t k = 0; k < job.size; k++)
		payload[k] = (uint8_t)('a' + k % 26);
}

static void send_one(void)
{
	char digits[20];
	size_t n = net_fmt_u64(digits, job.next);
	for (size_t k = 0; k < 10 && k < job.size; k++)
		payload[k] = (uint8_t)(k + n < 10 ? '0' : digits[k + n - 10]);
	if (udp_send(job.ip, job.port, src_port, payload, job.size) >= 0)
		job.sent++;
	job.next++;
}

/* One turn of the main loop: without a transfer, net_serve_once (which sleeps until
 * something arrives); with one, up to SRC_CALLS_PER_STEP transmit calls of src_batch
 * frames, then one receive call. */
void netsource_step(void)
{
	if (!job.active) {
		net_serve_once(netsource_handler, NULL);
		return;
	}
	int r = net_resolve(job.ip);
	if (r < 0) { /* the requester's MAC (or the gateway's) cannot be found: give up */
		job.active = 0;
		return;
	}
	if (r == 0) { /* ARP is under way: wait for its answer or its next retransmission */
		net_serve_once(netsource_handler, NULL);
		return;
	}
	for (int call = 0; call < SRC_CALLS_PER_STEP && job.active; call++) {
		int n = 0;
		while (n < src_batch && job.next < job.count) {
			send_one();
			n++;
		}
		if (job.next == job.count && n < src_batch) {
			char done[32] = "DONE ";
			size_t len = 5 + net_fmt_u64(done + 5, job.sent);
			udp_send(job.ip, job.port, src_port, done, len);
			job.active = 0;
		}
		net_flush();
	}
	net_poll(netsource_handler, NULL);
	net_flush();
}

int netsource_busy(void) { return job.active; }

#ifndef NET_HOST_TEST
int main(struct ftvm_boot_info *bi)
{
	long port = arg_long(bi, "port", 7002);
	long batch = arg_long(bi, "batch", 64);
	char ip[16];

	if (port < 1 || port > 65535) {
		printf("netsource: port=%ld: want 1-65535\n", port);
		return 2;
	}
	if (batch < 1 || batch > NET_TX_MAX) {
		printf("netsource: batch=%ld: want 1-%d\n", batch, NET_TX_MAX);
		return 2;
	}
	long r = net_init(bi);
	if (r < 0) {
		printf("netsource: no NIC (error %ld)\n", r);
		return 1;
	}
	netsource_setup((uint16_t)port, (int)batch);
	printf("netsource: listening on %s:%ld\n", net_fmt_ip(ip, net_cfg.ip), port);
	for (;;)
		netsource_step();
}
#endif

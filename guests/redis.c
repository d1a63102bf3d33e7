/* redis: a Redis-protocol (RESP) server over TCP, for unmodified clients (redis-cli,
 * redis-benchmark).
 *
 *   redis [port=6379] [conns=256] [commands=N]
 *
 * commands=N (default 0: never) makes the server exit 0 once it has executed N commands and
 * transmitted what they answered: a run with a definite end, for record/replay.
 *
 * TCP is lwIP's (lwip/, NO_SYS, the raw callback API) over the VMM's NIC (lwip/ftvmif.c);
 * the commands, the parser and the store are resp.c (see resp.h for what is supported and
 * the bounds). The store lives in the guest's heap. Everything the server does depends
 * only on what comes in through VMM exits (frames, the clock, rdrand for TCP's initial
 * sequence numbers), so a recorded run replays exactly and a backup holds the same TCP
 * state as its primary.
 *
 * Flow control: a connection's replies wait in its output buffer until TCP's send buffer
 * takes them (resp_process stops executing while RESP_OUT_HIGH bytes wait); received data
 * that its input buffer cannot take yet stays in lwIP's pbufs, unacknowledged to the
 * window (tcp_recved is called only for bytes taken), so a client that does not read its
 * replies is slowed down, not given unbounded memory. */
#include "rt.h"
#include "resp.h"
#include "lwip/init.h"
#include "lwip/tcp.h"
#include "lwip/ftvmif.h"

const char *const guest_args[] = { "port", "conns", "commands", 0 };

#define MAX_CONNS 256 /* MEMP_NUM_TCP_PCB */

struct conn {
	struct tcp_pcb *pcb; /* NULL: a free slot */
	struct pbuf *pending; /* received, not yet taken into rc.in */
	struct resp_conn rc;
	int peer_closed;
};
static struct conn conns[MAX_CONNS];
static long max_conns;
static uint64_t accepted, refused, resets;

static void conn_free(struct conn *c)
{
	if (c->pending)
		pbuf_free(c->pending);
	resp_conn_close(&c->rc);
	memset(c, 0, sizeof *c);
}

/* Close c's pcb gracefully (after what was written), or abort it. Returns ERR_ABRT when it
 * aborted the pcb: a callback must then return ERR_ABRT to lwIP. */
static err_t conn_close(struct conn *c)
{
	struct tcp_pcb *pcb = c->pcb;
	tcp_arg(pcb, NULL);
	tcp_recv(pcb, NULL);
	tcp_sent(pcb, NULL);
	tcp_err(pcb, NULL);
	tcp_poll(pcb, NULL, 0);
	conn_free(c);
	if (tcp_close(pcb) != ERR_OK) { /* no memory for the FIN */
		tcp_abort(pcb);
		return ERR_ABRT;
	}
	return ERR_OK;
}

/* Hand as much output to TCP as its send buffer takes. */
static void send_out(struct conn *c)
{
	size_t n = resp_out_pending(&c->rc);
	int wrote = 0;
	while (n > 0) {
		size_t room = tcp_sndbuf(c->pcb);
		if (room == 0 || tcp_sndqueuelen(c->pcb) >= TCP_SND_QUEUELEN - 4)
			break;
		if (n < room)
			room = n;
		if (room > 0xffff)
			room = 0xffff;
		err_t e = tcp_write(c->pcb, c->rc.out + c->rc.out_off, (u16_t)room,
				    TCP_WRITE_FLAG_COPY);
		if (e != ERR_OK)
			break; /* ERR_MEM: again when segments are acknowledged */
		resp_out_consume(&c->rc, room);
		n -= room;
		wrote = 1;
	}
	if (wrote)
		tcp_output(c->pcb);
}

/* Move pending input into the parser, execute, send; close c when it is done. Returns what
 * the calling lwIP callback must return: ERR_ABRT when c's pcb was aborted, else ERR_OK. */
static err_t pump(struct conn *c)
{
	for (;;) {
		while (c->pending && resp_in_room(&c->rc) > 0) {
			struct pbuf *p = c->pending;
			size_t took = resp_feed(&c->rc, p->payload, p->len);
			if (took == 0)
				break;
			tcp_recved(c->pcb, (u16_t)took);
			c->pending = pbuf_free_header(p, (u16_t)took);
		}
		int n = resp_process(&c->rc);
		send_out(c);
		/* Again while commands ran and input waits: the parser took a whole buffer
		 * and the output drained into TCP. */
		if (n == 0 || c->pending == NULL || resp_out_pending(&c->rc) >= RESP_OUT_HIGH)
			break;
	}
	if ((c->rc.closing || (c->peer_closed && c->pending == NULL)) &&
	    resp_out_pending(&c->rc) == 0)
		return conn_close(c);
	return ERR_OK;
}

static err_t on_recv(void *arg, struct tcp_pcb *pcb, struct pbuf *p, err_t err)
{
	struct conn *c = arg;
	(void)pcb;
	if (c == NULL) {
		if (p)
			pbuf_free(p);
		return ERR_OK;
	}
	if (p == NULL || err != ERR_OK) { /* the client closed its side */
		if (p)
			pbuf_free(p);
		c->peer_closed = 1;
	} else if (c->pending) {
		pbuf_cat(c->pending, p);
	} else {
		c->pending = p;
	}
	return pump(c);
}

static err_t on_sent(void *arg, struct tcp_pcb *pcb, u16_t len)
{
	(void)pcb;
	(void)len;
	return arg ? pump(arg) : ERR_OK;
}

/* Every 2 s while open: retry what an earlier allocation failure left waiting. */
static err_t on_poll(void *arg, struct tcp_pcb *pcb)
{
	(void)pcb;
	return arg ? pump(arg) : ERR_OK;
}

/* The pcb is gone already (reset by the peer, or aborted). */
static void on_err(void *arg, err_t err)
{
	struct conn *c = arg;
	(void)err;
	if (c) {
		resets++;
		c->pcb = NULL;
		conn_free(c);
	}
}

static err_t on_accept(void *arg, struct tcp_pcb *pcb, err_t err)
{
	(void)arg;
	if (err != ERR_OK || pcb == NULL)
		return ERR_VAL;
	struct conn *c = NULL;
	for (long i = 0; i < max_conns; i++) {
		if (conns[i].pcb == NULL) {
			c = &conns[i];
			break;
		}
	}
	if (c == NULL) {
		refused++;
		tcp_abort(pcb);
		return ERR_ABRT;
	}
	accepted++;
	memset(c, 0, sizeof *c);
	c->pcb = pcb;
	resp_conn_open(&c->rc);
	tcp_arg(pcb, c);
	tcp_recv(pcb, on_recv);
	tcp_sent(pcb, on_sent);
	tcp_err(pcb, on_err);
	tcp_poll(pcb, on_poll, 4);
	tcp_nagle_disable(pcb); /* replies leave at once, as Redis's TCP_NODELAY */
	return ERR_OK;
}

int main(struct ftvm_boot_info *bi)
{
	long port = arg_long(bi, "port", 6379);
	max_conns = arg_long(bi, "conns", MAX_CONNS);
	long commands = arg_long(bi, "commands", 0);
	char ip[16];

	if (port < 1 || port > 65535) {
		printf("redis: port=%ld: want 1-65535\n", port);
		return 2;
	}
	if (max_conns < 1 || max_conns > MAX_CONNS) {
		printf("redis: conns=%ld: want 1-%d\n", max_conns, MAX_CONNS);
		return 2;
	}
	resp_init((void *)bi->heap_start, bi->heap_end - bi->heap_start);
	long r = ftvmif_init();
	if (r < 0) {
		printf("redis: no NIC (error %ld)\n", r);
		return 1;
	}
	struct tcp_pcb *l = tcp_new();
	if (l == NULL || tcp_bind(l, IP_ANY_TYPE, (u16_t)port) != ERR_OK) {
		printf("redis: cannot bind port %ld\n", port);
		return 1;
	}
	l = tcp_listen_with_backlog(l, TCP_DEFAULT_LISTEN_BACKLOG);
	if (l == NULL) {
		printf("redis: cannot listen\n");
		return 1;
	}
	tcp_accept(l, on_accept);
	printf("redis: listening on %s:%ld (tcp, lwIP %s), %lu MiB for data\n",
	       ip4addr_ntoa_r(netif_ip4_addr(&ftvmif_netif), ip, sizeof ip), port,
	       LWIP_VERSION_STRING, (unsigned long)((bi->heap_end - bi->heap_start) >> 20));
	while (commands <= 0 || resp_stats.commands < (uint64_t)commands) {
		ftvmif_wait();
		ftvmif_poll();
	}
	ftvmif_flush();
	printf("redis: executed %lu commands on %lu connections (%lu reset, %lu refused); exiting\n",
	       (unsigned long)resp_stats.commands, (unsigned long)accepted, (unsigned long)resets,
	       (unsigned long)refused);
	return 0;
}

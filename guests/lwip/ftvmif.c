/* lwIP on the ftvm NIC (ABI.md, "The NIC"): see ftvmif.h.
 *
 * Receive: one call takes up to FTVMIF_RX_BATCH frames into static buffers; each is copied
 * into a pbuf from lwIP's pool and handed to ethernet_input. Transmit: linkoutput copies
 * the frame (a pbuf chain) into the next static buffer; ftvmif_flush sends them all with
 * one call. Every VMM call is an exit, so both directions are batched.
 *
 * Time: sys_now is the monotonic clock read once per loop (after the wait and before the
 * timers run), so lwIP's timers cost no exits of their own. */
#include "rt.h"
#include "lwip/init.h"
#include "lwip/pbuf.h"
#include "lwip/timeouts.h"
#include "lwip/etharp.h"
#include "netif/ethernet.h"
#include "ftvmif.h"

struct ftvmif_stats ftvmif_stats;
struct netif ftvmif_netif;

static uint8_t rx_buf[FTVMIF_RX_BATCH][1536] __attribute__((aligned(64)));
static struct ftvm_pkt_desc rx_desc[FTVMIF_RX_BATCH];
static uint8_t tx_buf[FTVMIF_TX_MAX][1536] __attribute__((aligned(64)));
static struct ftvm_pkt_desc tx_desc[FTVMIF_TX_MAX];
static int tx_count;
static u32_t now_ms;

static void clock_update(void) { now_ms = (u32_t)(ftvm_clock(FTVM_CLOCK_MONOTONIC) / 1000000); }

u32_t sys_now(void) { return now_ms; }

u32_t ftvm_lwip_rand(void)
{
	uint32_t v = 0;
	while (!rdrand32(&v)) /* the VMM's rdrand always sets CF */
		;
	return v;
}

void ftvm_lwip_assert(const char *msg, const char *file, int line)
{
	printf("lwip: assertion failed: %s (%s:%d)\n", msg, file, line);
	exit(3);
}

void ftvmif_flush(void)
{
	if (tx_count == 0)
		return;
	long r = ftvm_nic_tx(tx_desc, (size_t)tx_count);
	ftvmif_stats.tx_calls++;
	if (r < 0)
		r = 0;
	ftvmif_stats.tx_frames += (uint64_t)r;
	ftvmif_stats.tx_dropped += (uint64_t)(tx_count - r);
	tx_count = 0;
}

static err_t ftvmif_linkoutput(struct netif *netif, struct pbuf *p)
{
	(void)netif;
	if (p->tot_len < 14 || p->tot_len > FTVM_ETH_MAX_FRAME) {
		ftvmif_stats.tx_dropped++;
		return ERR_IF;
	}
	if (tx_count == FTVMIF_TX_MAX)
		ftvmif_flush();
	uint8_t *buf = tx_buf[tx_count];
	u16_t n = pbuf_copy_partial(p, buf, p->tot_len, 0);
	tx_desc[tx_count].addr = (uint64_t)buf;
	tx_desc[tx_count].len = n;
	tx_desc[tx_count].flags = 0;
	tx_count++;
	return ERR_OK;
}

static err_t ftvmif_netif_init(struct netif *netif)
{
	netif->name[0] = 'e';
	netif->name[1] = 'n';
	netif->mtu = 1500;
	netif->hwaddr_len = ETH_HWADDR_LEN;
	netif->flags = NETIF_FLAG_BROADCAST | NETIF_FLAG_ETHARP | NETIF_FLAG_ETHERNET |
		       NETIF_FLAG_LINK_UP;
	netif->output = etharp_output;
	netif->linkoutput = ftvmif_linkoutput;
	return ERR_OK;
}

long ftvmif_init(void)
{
	struct ftvm_nic_info info;
	uint8_t gw[4];
	memset(&info, 0, sizeof info);
	memset(gw, 0, sizeof gw);
	long r = ftvm_nic_info(&info, gw);
	if (r < 0)
		return r;
	if (info.prefix > 32)
		return FTVM_EINVAL;

	for (int i = 0; i < FTVMIF_RX_BATCH; i++) {
		rx_desc[i].addr = (uint64_t)rx_buf[i];
		rx_desc[i].len = sizeof rx_buf[i];
		rx_desc[i].flags = 0;
	}
	clock_update();
	lwip_init();

	ip4_addr_t ip, mask, gwa;
	IP4_ADDR(&ip, info.ip[0], info.ip[1], info.ip[2], info.ip[3]);
	ip4_addr_set_u32(&mask, info.prefix == 0 ? 0 : lwip_htonl(0xffffffffU << (32 - info.prefix)));
	IP4_ADDR(&gwa, gw[0], gw[1], gw[2], gw[3]);
	memcpy(ftvmif_netif.hwaddr, info.mac, 6);
	if (netif_add(&ftvmif_netif, &ip, &mask, &gwa, NULL, ftvmif_netif_init, ethernet_input) == NULL)
		return FTVM_EINVAL;
	netif_set_default(&ftvmif_netif);
	netif_set_up(&ftvmif_netif);
	return 0;
}

long ftvmif_poll(void)
{
	long total = 0;
	for (;;) {
		for (int i = 0; i < FTVMIF_RX_BATCH; i++)
			rx_desc[i].len = sizeof rx_buf[i];
		long n = ftvm_nic_rx(rx_desc, FTVMIF_RX_BATCH);
		ftvmif_stats.rx_calls++;
		if (n <= 0)
			break;
		for (long i = 0; i < n; i++) {
			u16_t len = (u16_t)rx_desc[i].len;
			struct pbuf *p = pbuf_alloc(PBUF_RAW, len, PBUF_POOL);
			if (p == NULL) {
				ftvmif_stats.rx_nomem++;
				continue;
			}
			pbuf_take(p, rx_buf[i], len);
			if (ftvmif_netif.input(p, &ftvmif_netif) != ERR_OK)
				pbuf_free(p);
		}
		ftvmif_stats.rx_frames += (uint64_t)n;
		total += n;
		if (n < FTVMIF_RX_BATCH)
			break;
		/* Keep room for another batch's replies in the transmit queue. */
		if (tx_count > FTVMIF_TX_MAX - FTVMIF_RX_BATCH)
			ftvmif_flush();
	}
	sys_check_timeouts();
	return total;
}

uint64_t ftvmif_wait(void)
{
	static char discard[256];
	ftvmif_flush();
	u32_t ms = sys_timeouts_sleeptime();
	uint64_t timeout = ms == SYS_TIMEOUTS_SLEEPTIME_INFINITE ? FTVM_WAIT_FOREVER
								 : (uint64_t)ms * 1000000;
	uint64_t bits = ftvm_wait(timeout);
	ftvmif_stats.waits++;
	if (bits & FTVM_WAIT_CONSOLE)
		ftvm_console_read(discard, sizeof discard);
	clock_update();
	return bits;
}

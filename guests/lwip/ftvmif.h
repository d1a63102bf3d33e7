/* lwIP on the ftvm NIC: the netif driver and the main loop's two halves (ftvmif.c).
 *
 * A guest built with lwIP calls ftvmif_init once, then loops:
 *
 *	for (;;) {
 *		ftvmif_wait();   // transmit what is queued, sleep in the VMM until a packet
 *		                 // arrives or lwIP's next timer is due
 *		ftvmif_poll();   // receive every pending frame into lwIP, run due timers
 *	}
 *
 * lwIP's callbacks (tcp_recv, tcp_sent, ...) run inside ftvmif_poll. Frames lwIP sends
 * are queued and leave in one transmit call per loop (or when the queue fills). */
#ifndef FTVM_LWIP_FTVMIF_H
#define FTVM_LWIP_FTVMIF_H

#include "lwip/netif.h"

#define FTVMIF_RX_BATCH 64  /* descriptors per receive call */
#define FTVMIF_TX_MAX 256   /* frames queued for one transmit call (the ABI's maximum) */

struct ftvmif_stats {
	uint64_t rx_calls, rx_frames, rx_nomem, tx_calls, tx_frames, tx_dropped, waits;
};
extern struct ftvmif_stats ftvmif_stats;
extern struct netif ftvmif_netif;

/* Reads the NIC's configuration (address, prefix, gateway, MAC), starts lwIP and brings the
 * netif up as the default. 0, or the NIC info call's error (FTVM_ENODEV: no NIC). */
long ftvmif_init(void);

/* Transmit the queued frames, then wait in the VMM until a packet (or console input, read
 * and dropped) is pending or lwIP's next timer is due. Returns the wait call's bits. */
uint64_t ftvmif_wait(void);

/* Receive every pending frame into lwIP, run lwIP's due timers. Returns frames received. */
long ftvmif_poll(void);

/* Transmit the queued frames now (one call). */
void ftvmif_flush(void);

/* lwIP's clock, in ms: the VMM's monotonic clock as read at the last ftvmif_wait or
 * ftvmif_poll (one exit per loop, not one per lwIP call). */
u32_t sys_now(void);

#endif

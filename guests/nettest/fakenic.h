/* A fake ftvm NIC, clock and wait for the host tests: the calls of net.h's NET_HOST_TEST
 * build, with the ABI's checks (descriptor counts, capacities, frame lengths). */
#ifndef FAKENIC_H
#define FAKENIC_H

#include "net.h"

#define FAKE_RXQ 512    /* frames waiting to be received */
#define FAKE_TXLOG 4096 /* frames transmitted, kept for inspection */
#define FAKE_CALLS 1024 /* transmit calls whose frame counts are kept */

struct fake_nic {
	/* Configuration, read by the NIC info call. */
	int has_nic;
	uint8_t mac[6], ip[4], prefix, gateway[4];

	/* Frames the next receive calls return, oldest first. */
	uint8_t rxq[FAKE_RXQ][FTVM_ETH_MAX_FRAME];
	uint32_t rxq_len[FAKE_RXQ];
	int rx_head, rx_count;

	/* Frames transmitted, in order, and the frame count of each transmit call. */
	uint8_t tx[FAKE_TXLOG][FTVM_ETH_MAX_FRAME];
	uint32_t tx_len[FAKE_TXLOG];
	int tx_count;
	int tx_call_frames[FAKE_CALLS];

	/* Calls made. */
	int info_calls, tx_calls, rx_calls, clock_calls, wait_calls;
	uint64_t last_timeout;
	int blocked_forever; /* waits forever with nothing pending: a real guest would hang */
	int errors;          /* calls the VMM would refuse (EINVAL) */

	uint64_t now; /* the monotonic clock, ns; a timed wait advances it */
};
extern struct fake_nic fake;

/* Reset everything to a NIC 52:54:00:12:34:56, 10.0.2.15/24, gateway 10.0.2.2. */
void fake_reset(void);
/* Queue a frame for the next receive call. */
void fake_inject(const void *frame, size_t len);
/* Forget transmitted frames and call counts. */
void fake_clear_tx(void);

#endif

/* nicabuse: hands the NIC bad descriptors and prints what each call returned,
 * one line per case, for the VMM's bad-input tests. Every case must fail with
 * -EFAULT or -EINVAL and change nothing; then a good transmit must still work.
 * Exits 0 when every case behaved, 1 otherwise. */
#include "rt.h"

static uint8_t frame[FTVM_ETH_MAX_FRAME + 64];
static const struct ftvm_pkt_desc rodesc[1] = {{0, FTVM_ETH_MAX_FRAME, 0}};
static uint8_t rxbuf[2][FTVM_ETH_MAX_FRAME];

static int check(const char *what, long got, long want)
{
	printf("nicabuse: %s: %ld%s\n", what, got, got == want ? "" : " (WRONG)");
	return got == want;
}

int main(struct ftvm_boot_info *bi)
{
	struct ftvm_pkt_desc d[2];
	struct ftvm_nic_info info;
	uint8_t gw[4];
	int ok = 1;

	if (ftvm_nic_info(&info, gw) != 0) {
		printf("nicabuse: no NIC\n");
		return 1;
	}
	ok &= check("info into unmapped memory", ftvm_nic_info((void *)0x40000000UL, gw), FTVM_EFAULT);
	/* A broadcast frame with a valid header. */
	memset(frame, 0xff, 6);
	memcpy(frame + 6, info.mac, 6);
	frame[12] = 0x08;
	frame[13] = 0x06;
	d[0] = (struct ftvm_pkt_desc){(uint64_t)frame, 60, 0};
	ok &= check("tx descriptors outside RAM", ftvm_nic_tx((void *)0x40000000UL, 1), FTVM_EFAULT);
	d[1] = (struct ftvm_pkt_desc){bi->mem_size - 8, 60, 0};
	ok &= check("tx frame crossing the end of RAM", ftvm_nic_tx(d, 2), FTVM_EFAULT);
	d[1] = (struct ftvm_pkt_desc){(uint64_t)frame, 13, 0};
	ok &= check("tx runt frame", ftvm_nic_tx(d, 2), FTVM_EINVAL);
	d[1] = (struct ftvm_pkt_desc){(uint64_t)frame, FTVM_ETH_MAX_FRAME + 1, 0};
	ok &= check("tx oversized frame", ftvm_nic_tx(d, 2), FTVM_EINVAL);
	ok &= check("tx batch over 256", ftvm_nic_tx(d, 257), FTVM_EINVAL);
	d[0] = (struct ftvm_pkt_desc){(uint64_t)rxbuf[0], 100, 0};
	ok &= check("rx buffer too small", ftvm_nic_rx(d, 1), FTVM_EINVAL);
	d[0] = (struct ftvm_pkt_desc){0x40000000UL, FTVM_ETH_MAX_FRAME, 0};
	ok &= check("rx buffer outside RAM", ftvm_nic_rx(d, 1), FTVM_EFAULT);
	/* W^X at run time: the VMM writes only where the guest could. */
	ok &= check("info into text", ftvm_nic_info((void *)main, gw), FTVM_EFAULT);
	ok &= check("rx descriptors in read-only data", ftvm_nic_rx((struct ftvm_pkt_desc *)rodesc, 1), FTVM_EFAULT);
	d[0] = (struct ftvm_pkt_desc){(uint64_t)main, FTVM_ETH_MAX_FRAME, 0};
	ok &= check("rx buffer in text", ftvm_nic_rx(d, 1), FTVM_EFAULT);
	d[0] = (struct ftvm_pkt_desc){(uint64_t)frame, 60, 0};
	ok &= check("good tx", ftvm_nic_tx(d, 1), 1);
	printf("nicabuse: %s\n", ok ? "all cases behaved" : "SOME CASES MISBEHAVED");
	return ok ? 0 : 1;
}

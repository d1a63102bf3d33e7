/* The fake NIC of the host tests: see fakenic.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fakenic.h"

struct fake_nic fake;

void fake_reset(void)
{
	static const uint8_t mac[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
	memset(&fake, 0, sizeof fake);
	fake.has_nic = 1;
	memcpy(fake.mac, mac, 6);
	fake.ip[0] = 10, fake.ip[1] = 0, fake.ip[2] = 2, fake.ip[3] = 15;
	fake.prefix = 24;
	fake.gateway[0] = 10, fake.gateway[1] = 0, fake.gateway[2] = 2, fake.gateway[3] = 2;
	fake.now = 1000000000UL;
}

void fake_clear_tx(void)
{
	fake.tx_count = 0;
	fake.tx_calls = 0;
	memset(fake.tx_call_frames, 0, sizeof fake.tx_call_frames);
}

void fake_inject(const void *frame, size_t len)
{
	if (fake.rx_count == FAKE_RXQ || len > FTVM_ETH_MAX_FRAME) {
		fprintf(stderr, "fake_inject: queue full or frame too long\n");
		exit(1);
	}
	int i = (fake.rx_head + fake.rx_count) % FAKE_RXQ;
	memcpy(fake.rxq[i], frame, len);
	fake.rxq_len[i] = (uint32_t)len;
	fake.rx_count++;
}

static void refuse(const char *why)
{
	fprintf(stderr, "fake NIC: the VMM would refuse this call: %s\n", why);
	fake.errors++;
}

long fake_nic_info(struct ftvm_nic_info *info, uint8_t gateway[4])
{
	fake.info_calls++;
	if (!fake.has_nic)
		return FTVM_ENODEV;
	memset(info, 0, sizeof *info);
	memcpy(info->mac, fake.mac, 6);
	memcpy(info->ip, fake.ip, 4);
	info->prefix = fake.prefix;
	memcpy(gateway, fake.gateway, 4);
	return 0;
}

long fake_nic_tx(struct ftvm_pkt_desc *d, size_t n)
{
	if (fake.tx_calls < FAKE_CALLS)
		fake.tx_call_frames[fake.tx_calls] = (int)n;
	fake.tx_calls++;
	if (n > FTVM_NIC_MAX_BATCH) {
		refuse("transmit: more than 256 descriptors");
		return FTVM_EINVAL;
	}
	for (size_t i = 0; i < n; i++)
		if (d[i].len < 14 || d[i].len > FTVM_ETH_MAX_FRAME || d[i].flags != 0) {
			refuse("transmit: a frame shorter than 14 or longer than 1514 bytes");
			return FTVM_EINVAL;
		}
	for (size_t i = 0; i < n; i++) {
		if (fake.tx_count == FAKE_TXLOG) {
			fprintf(stderr, "fake NIC: transmit log full\n");
			exit(1);
		}
		memcpy(fake.tx[fake.tx_count], (const void *)(unsigned long)d[i].addr, d[i].len);
		fake.tx_len[fake.tx_count] = d[i].len;
		fake.tx_count++;
	}
	return (long)n;
}

long fake_nic_rx(struct ftvm_pkt_desc *d, size_t n)
{
	fake.rx_calls++;
	if (n > FTVM_NIC_MAX_BATCH) {
		refuse("receive: more than 256 descriptors");
		return FTVM_EINVAL;
	}
	for (size_t i = 0; i < n; i++)
		if (d[i].len < FTVM_ETH_MAX_FRAME || d[i].flags != 0) {
			refuse("receive: a buffer smaller than 1514 bytes");
			return FTVM_EINVAL;
		}
	size_t got = 0;
	while (got < n && fake.rx_count > 0) {
		int i = fake.rx_head;
		memcpy((void *)(unsigned long)d[got].addr, fake.rxq[i], fake.rxq_len[i]);
		d[got].len = fake.rxq_len[i];
		fake.rx_head = (fake.rx_head + 1) % FAKE_RXQ;
		fake.rx_count--;
		got++;
	}
	return (long)got;
}

uint64_t fake_clock(void)
{
	fake.clock_calls++;
	return fake.now;
}

uint64_t fake_wait(uint64_t timeout_ns)
{
	fake.wait_calls++;
	fake.last_timeout = timeout_ns;
	if (fake.rx_count > 0)
		return FTVM_WAIT_NET;
	if (timeout_ns == FTVM_WAIT_FOREVER) {
		fake.blocked_forever++;
		return 0;
	}
	fake.now += timeout_ns;
	return FTVM_WAIT_TIMEOUT;
}

long fake_console_read(void *buf, size_t cap)
{
	(void)buf;
	(void)cap;
	return 0;
}

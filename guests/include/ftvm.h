/* The ftvm guest ABI, version 2: see ../ABI.md. Freestanding: no libc. */
#ifndef FTVM_H
#define FTVM_H

typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef long int64_t;
typedef unsigned long size_t;

#define FTVM_BOOT_MAGIC 0x544f4f424d565446UL /* "FTVMBOOT" */
#define FTVM_ABI_VERSION 2

struct ftvm_boot_info {
	uint64_t magic;      /* FTVM_BOOT_MAGIC */
	uint32_t version;    /* FTVM_ABI_VERSION */
	uint32_t flags;      /* 0 */
	uint64_t mem_size;   /* bytes of guest RAM */
	uint64_t heap_start; /* first free byte after the image, page aligned */
	uint64_t heap_end;   /* end of the free range (a guard page and the stack follow) */
	uint64_t stack_top;  /* initial RSP */
	uint64_t tsc_hz;     /* virtual TSC frequency */
	uint64_t cmdline;    /* address of the command line (NUL-terminated, in this page) */
	uint64_t cmdline_len;/* its length without the NUL */
};

#define FTVM_PORT_CONSOLE_WRITE 0x01
#define FTVM_PORT_CONSOLE_READ 0x02
#define FTVM_PORT_CLOCK 0x03
#define FTVM_PORT_WAIT 0x04
#define FTVM_PORT_EXIT 0x05

#define FTVM_PORT_NIC_INFO 0x20
#define FTVM_PORT_NIC_TX 0x21
#define FTVM_PORT_NIC_RX 0x22
#define FTVM_NIC_MAX_BATCH 256
#define FTVM_ETH_MAX_FRAME 1514

struct ftvm_pkt_desc {
	uint64_t addr;
	uint32_t len;
	uint32_t flags; /* 0 */
};

struct ftvm_nic_info {
	uint8_t mac[6];
	uint8_t zero[2];
	uint8_t ip[4];  /* network order */
	uint8_t prefix; /* e.g. 24 */
	uint8_t zero2[3];
};

#define FTVM_PORT_DISK_INFO 0x30
#define FTVM_PORT_DISK_SUBMIT 0x31
#define FTVM_DISK_BLOCK 4096
#define FTVM_DISK_MAX_BATCH 64
#define FTVM_DISK_MAX_CALL (1UL << 20) /* bytes moved by one call */
#define FTVM_DISK_READ 0
#define FTVM_DISK_WRITE 1
#define FTVM_DISK_FLUSH 2

struct ftvm_disk_desc {
	uint32_t op;     /* FTVM_DISK_READ, _WRITE or _FLUSH */
	uint32_t len;    /* bytes, a multiple of FTVM_DISK_BLOCK; 0 for a flush */
	uint64_t offset; /* bytes, a multiple of FTVM_DISK_BLOCK; 0 for a flush */
	uint64_t addr;   /* the buffer in guest memory; 0 for a flush */
};

struct ftvm_disk_info {
	uint64_t size;      /* bytes */
	uint32_t block;     /* FTVM_DISK_BLOCK */
	uint32_t max_batch; /* FTVM_DISK_MAX_BATCH */
};

#define FTVM_CLOCK_MONOTONIC 0
#define FTVM_CLOCK_REALTIME 1

#define FTVM_WAIT_CONSOLE 1
#define FTVM_WAIT_TIMEOUT 2
#define FTVM_WAIT_NET 4
#define FTVM_WAIT_FOREVER (~0UL)

#define FTVM_EFAULT (-14)
#define FTVM_ENODEV (-19)
#define FTVM_EINVAL (-22)

/* A call into the VMM: out %al, $port with arguments in rdi, rsi, rdx. */
#define FTVM_CALL3(port, a, b, c) ({                                         \
	long _r;                                                             \
	__asm__ volatile("out %%al, %1"                                      \
			 : "=a"(_r)                                          \
			 : "i"(port), "D"(a), "S"(b), "d"(c), "a"(0)         \
			 : "memory");                                        \
	_r; })

static inline long ftvm_console_write(const void *buf, size_t len)
{
	return FTVM_CALL3(FTVM_PORT_CONSOLE_WRITE, buf, len, 0);
}
static inline long ftvm_console_read(void *buf, size_t cap)
{
	return FTVM_CALL3(FTVM_PORT_CONSOLE_READ, buf, cap, 0);
}
static inline uint64_t ftvm_clock(int which)
{
	return (uint64_t)FTVM_CALL3(FTVM_PORT_CLOCK, (uint64_t)which, 0, 0);
}
static inline uint64_t ftvm_wait(uint64_t timeout_ns)
{
	return (uint64_t)FTVM_CALL3(FTVM_PORT_WAIT, timeout_ns, 0, 0);
}
static inline long ftvm_nic_info(struct ftvm_nic_info *info, uint8_t gateway[4])
{
	return FTVM_CALL3(FTVM_PORT_NIC_INFO, info, gateway, 0);
}
static inline long ftvm_nic_tx(struct ftvm_pkt_desc *d, size_t n)
{
	return FTVM_CALL3(FTVM_PORT_NIC_TX, d, n, 0);
}
static inline long ftvm_nic_rx(struct ftvm_pkt_desc *d, size_t n)
{
	return FTVM_CALL3(FTVM_PORT_NIC_RX, d, n, 0);
}
static inline long ftvm_disk_info(struct ftvm_disk_info *info)
{
	return FTVM_CALL3(FTVM_PORT_DISK_INFO, info, 0, 0);
}
static inline long ftvm_disk_submit(struct ftvm_disk_desc *d, size_t n)
{
	return FTVM_CALL3(FTVM_PORT_DISK_SUBMIT, d, n, 0);
}
static inline __attribute__((noreturn)) void ftvm_exit(int status)
{
	FTVM_CALL3(FTVM_PORT_EXIT, (uint64_t)status, 0, 0);
	for (;;)
		;
}

#endif

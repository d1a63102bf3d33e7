/* kvdisk: the kvstore's log on the block device (see kvdisk.h).
 *
 * The disk holds one append-only stream of records from offset 0:
 *
 *	record = magic "KVR1" (u32), payload length (u32), sequence number (u32, the first
 *	         record is 1), CRC-32C of the length, sequence number and payload (u32),
 *	         then the payload: a request exactly as it arrived
 *
 * Recovery reads records from the start while the magic, the sequence number and the CRC
 * hold, and stops at the first that does not: a record torn by a crash, or the zeros of a
 * fresh disk. Every record up to there is run again with kv_restore. New records go after
 * it. A record never straddles the end of the disk: when one does not fit, the request is
 * refused (kvdisk_room) and the server says so. */
#include "rt.h"
#include "kv.h"
#include "kvdisk.h"

#define BLK FTVM_DISK_BLOCK
#define REC_MAGIC 0x3152564bU /* "KVR1" little endian */
#define HDR 16
#define REC_MAX (HDR + KVDISK_PAYLOAD_MAX)
/* Records staged between two commits: a batch of requests never needs more. */
#define WBUF (512 * 1024)
#define RBUF (256 * 1024)

static uint64_t disk_size;
static uint64_t tail;  /* bytes of valid records on disk */
static uint32_t seq;   /* the last record's sequence number */
static uint8_t wbuf[WBUF + BLK] __attribute__((aligned(4096)));
static size_t wlen;    /* wbuf holds the disk from tail's block start: tail%BLK committed bytes, then new records */
static uint8_t rbuf[RBUF] __attribute__((aligned(4096)));
static uint32_t crc_table[256];
static struct ftvm_disk_desc desc[FTVM_DISK_MAX_BATCH];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82f63b78U : c >> 1;
		crc_table[i] = c;
	}
}

static uint32_t crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
	crc = ~crc;
	while (n--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

static uint32_t get32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t record_crc(const uint8_t *rec, uint32_t len)
{
	uint32_t c = crc32c(0, rec + 4, 8);
	return crc32c(c, rec + HDR, len);
}

/* Read len bytes (a multiple of BLK) at off into p, in calls of at most 1 MiB. */
static long disk_read(uint64_t off, uint8_t *p, size_t len)
{
	desc[0].op = FTVM_DISK_READ;
	desc[0].len = (uint32_t)len;
	desc[0].offset = off;
	desc[0].addr = (uint64_t)p;
	return ftvm_disk_submit(desc, 1);
}

long kvdisk_init(void)
{
	struct ftvm_disk_info info;
	long r = ftvm_disk_info(&info);
	if (r < 0)
		return r;
	disk_size = info.size;
	crc_init();
	uint64_t base = 0; /* disk offset of rbuf[0] */
	size_t have = 0, pos = 0;
	long restored = 0;
	for (;;) {
		/* Keep a whole record in the buffer: refill from pos's block. */
		if (have - pos < REC_MAX && base + have < disk_size) {
			size_t keep = pos - pos % BLK;
			base += keep;
			pos -= keep;
			size_t n = RBUF;
			if (base + n > disk_size)
				n = (size_t)(disk_size - base);
			r = disk_read(base, rbuf, n);
			if (r != 1)
				return r < 0 ? r : -1;
			have = n;
		}
		if (have - pos < HDR)
			break;
		const uint8_t *rec = rbuf + pos;
		uint32_t len = get32(rec + 4);
		if (get32(rec) != REC_MAGIC || len == 0 || len > KVDISK_PAYLOAD_MAX || have - pos < HDR + len ||
		    get32(rec + 8) != seq + 1 || get32(rec + 12) != record_crc(rec, len))
			break;
		kv_restore(rec + HDR, len);
		seq++;
		restored++;
		pos += HDR + len;
	}
	tail = base + pos;
	/* The committed part of the tail's block goes first in the write buffer. */
	wlen = tail % BLK;
	memcpy(wbuf, rbuf + (pos - wlen), wlen);
	return restored;
}

int kvdisk_room(size_t len)
{
	uint64_t pending = wlen - tail % BLK;
	return tail + pending + HDR + len <= disk_size && wlen + HDR + len <= WBUF;
}

void kvdisk_append(const uint8_t *req, size_t len)
{
	uint8_t *rec = wbuf + wlen;
	seq++;
	put32(rec, REC_MAGIC);
	put32(rec + 4, (uint32_t)len);
	put32(rec + 8, seq);
	memcpy(rec + HDR, req, len);
	put32(rec + 12, record_crc(rec, (uint32_t)len));
	wlen += HDR + len;
}

int kvdisk_pending(void) { return wlen > tail % BLK; }

long kvdisk_commit(void)
{
	if (!kvdisk_pending())
		return 0;
	uint64_t start = tail - tail % BLK; /* disk offset of wbuf[0] */
	size_t blocks = (wlen + BLK - 1) / BLK;
	memset(wbuf + wlen, 0, blocks * BLK - wlen);
	/* Writes of at most 1 MiB in all per call; the flush with the last of them. */
	for (size_t done = 0; done < blocks;) {
		size_t n = blocks - done, per = FTVM_DISK_MAX_CALL / BLK;
		if (n > per)
			n = per;
		desc[0].op = FTVM_DISK_WRITE;
		desc[0].len = (uint32_t)(n * BLK);
		desc[0].offset = start + done * BLK;
		desc[0].addr = (uint64_t)(wbuf + done * BLK);
		size_t count = 1;
		if (done + n == blocks) {
			desc[1].op = FTVM_DISK_FLUSH;
			desc[1].len = 0;
			desc[1].offset = 0;
			desc[1].addr = 0;
			count = 2;
		}
		long r = ftvm_disk_submit(desc, count);
		if (r != (long)count)
			return r < 0 ? r : -1;
		done += n;
	}
	tail = start + wlen;
	/* Keep the tail's partial block at the front. */
	size_t part = wlen % BLK;
	memmove(wbuf, wbuf + wlen - part, part);
	wlen = part;
	return 1;
}

uint64_t kvdisk_used(void) { return tail; }
uint32_t kvdisk_records(void) { return seq; }

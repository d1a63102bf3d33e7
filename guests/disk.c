/* disk: exercises the block device (ports 0x30-0x31).
 *
 *   disk [write=N] [verify=N] [read=N] [seed=S] [batch=B] [flush=1] [abuse=1]
 *
 * write=N writes blocks 0..N-1 with a pattern of the seed and the block number, B blocks
 * per call (default 16), each call's writes followed by a flush in the same call when
 * flush=1 (default), and prints "wrote N blocks". verify=N reads blocks 0..N-1 back, B per
 * call, and checks the pattern: "verified N blocks" and exit 0, or the first bad block and
 * exit 1. read=N reads them without a check (a benchmark of reads). Both may be given: write, then verify (reads see the guest's own writes at once,
 * also before they reach the file). abuse=1 sends requests the VMM must refuse, each with
 * the error the ABI names, and checks that nothing was written: "abuse ok" and exit 0.
 * Without a disk it prints "no disk" and exits 3. */
#include "rt.h"

const char *const guest_args[] = { "write", "verify", "read", "seed", "batch", "flush", "abuse", 0 };

#define MAXB 64
static uint8_t buf[MAXB * FTVM_DISK_BLOCK] __attribute__((aligned(4096)));
static struct ftvm_disk_desc d[MAXB + 1];
static const uint8_t rodata_block[FTVM_DISK_BLOCK] __attribute__((aligned(4096))) = { 1 };

static uint64_t word(uint64_t seed, uint64_t blk, uint64_t i)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15UL ^ (blk << 20) ^ i;
	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9UL;
	return x ^ (x >> 29);
}

static void fill(uint8_t *p, uint64_t seed, uint64_t blk)
{
	uint64_t *w = (uint64_t *)p;
	for (uint64_t i = 0; i < FTVM_DISK_BLOCK / 8; i++)
		w[i] = word(seed, blk, i);
}

static long check(const uint8_t *p, uint64_t seed, uint64_t blk)
{
	const uint64_t *w = (const uint64_t *)p;
	for (uint64_t i = 0; i < FTVM_DISK_BLOCK / 8; i++)
		if (w[i] != word(seed, blk, i))
			return (long)i;
	return -1;
}

static void desc(struct ftvm_disk_desc *x, uint32_t op, uint64_t off, void *addr, uint32_t len)
{
	x->op = op;
	x->len = len;
	x->offset = off;
	x->addr = (uint64_t)addr;
}

static int expect(const char *what, long got, long want)
{
	if (got != want) {
		printf("abuse: %s: got %ld, want %ld\n", what, got, want);
		return 1;
	}
	return 0;
}

static int abuse(const struct ftvm_disk_info *info)
{
	int bad = 0;
	uint64_t end = info->size;
	uint8_t *before = buf + 2 * FTVM_DISK_BLOCK;
	desc(&d[0], FTVM_DISK_READ, 0, before, FTVM_DISK_BLOCK);
	bad |= expect("read block 0 first", ftvm_disk_submit(d, 1), 1);
	desc(&d[0], FTVM_DISK_WRITE, 0, buf, FTVM_DISK_BLOCK);
	memset(buf, 0xab, FTVM_DISK_BLOCK);
	bad |= expect("zero requests", ftvm_disk_submit(d, 0), FTVM_EINVAL);
	bad |= expect("65 requests", ftvm_disk_submit(d, FTVM_DISK_MAX_BATCH + 1), FTVM_EINVAL);
	bad |= expect("table outside RAM", ftvm_disk_submit((void *)0x1000, 1), FTVM_EFAULT);
	desc(&d[0], FTVM_DISK_WRITE, 512, buf, FTVM_DISK_BLOCK);
	bad |= expect("misaligned offset", ftvm_disk_submit(d, 1), FTVM_EINVAL);
	desc(&d[0], FTVM_DISK_WRITE, 0, buf, 100);
	bad |= expect("partial block", ftvm_disk_submit(d, 1), FTVM_EINVAL);
	desc(&d[0], FTVM_DISK_WRITE, 0, buf, 0);
	bad |= expect("empty write", ftvm_disk_submit(d, 1), FTVM_EINVAL);
	desc(&d[0], FTVM_DISK_WRITE, end, buf, FTVM_DISK_BLOCK);
	bad |= expect("past the end", ftvm_disk_submit(d, 1), FTVM_EINVAL);
	desc(&d[0], FTVM_DISK_WRITE, end - FTVM_DISK_BLOCK, buf, 2 * FTVM_DISK_BLOCK);
	bad |= expect("across the end", ftvm_disk_submit(d, 1), FTVM_EINVAL);
	desc(&d[0], FTVM_DISK_WRITE, 0xfffffffffffff000UL, buf, FTVM_DISK_BLOCK);
	bad |= expect("offset overflow", ftvm_disk_submit(d, 1), FTVM_EINVAL);
	desc(&d[0], 7, 0, buf, FTVM_DISK_BLOCK);
	bad |= expect("unknown op", ftvm_disk_submit(d, 1), FTVM_EINVAL);
	desc(&d[0], FTVM_DISK_FLUSH, 0, buf, 0);
	bad |= expect("flush with a buffer", ftvm_disk_submit(d, 1), FTVM_EINVAL);
	desc(&d[0], FTVM_DISK_WRITE, 0, (void *)0x2000, FTVM_DISK_BLOCK);
	bad |= expect("buffer outside RAM", ftvm_disk_submit(d, 1), FTVM_EFAULT);
	desc(&d[0], FTVM_DISK_READ, 0, (void *)rodata_block, FTVM_DISK_BLOCK);
	bad |= expect("read into read-only data", ftvm_disk_submit(d, 1), FTVM_EFAULT);
	desc(&d[0], FTVM_DISK_READ, 0, buf, FTVM_DISK_BLOCK);
	desc(&d[1], FTVM_DISK_WRITE, 0, buf, FTVM_DISK_BLOCK);
	bad |= expect("reads and writes in one call", ftvm_disk_submit(d, 2), FTVM_EINVAL);
	for (int i = 0; i < 2; i++)
		desc(&d[i], FTVM_DISK_WRITE, 0, buf, 1 << 20);
	bad |= expect("2 MiB in one call", ftvm_disk_submit(d, 2), FTVM_EINVAL);
	/* A bad request after good ones: none of them happens. */
	desc(&d[0], FTVM_DISK_WRITE, 0, buf, FTVM_DISK_BLOCK);
	desc(&d[1], FTVM_DISK_WRITE, 3, buf, FTVM_DISK_BLOCK);
	bad |= expect("a good write then a bad one", ftvm_disk_submit(d, 2), FTVM_EINVAL);
	/* Nothing above wrote: block 0 still reads as it was. */
	memset(buf, 0, FTVM_DISK_BLOCK);
	desc(&d[0], FTVM_DISK_READ, 0, buf, FTVM_DISK_BLOCK);
	bad |= expect("read block 0", ftvm_disk_submit(d, 1), 1);
	if (memcmp(buf, before, FTVM_DISK_BLOCK) != 0) {
		printf("abuse: a refused write reached block 0\n");
		bad = 1;
	}
	if (!bad)
		printf("abuse ok\n");
	return bad;
}

int main(struct ftvm_boot_info *bi)
{
	long nwrite = arg_long(bi, "write", 0), nverify = arg_long(bi, "verify", 0);
	long nread = arg_long(bi, "read", 0);
	int check_data = nread == 0;
	if (nread > 0)
		nverify = nread;
	long seed = arg_long(bi, "seed", 1), batch = arg_long(bi, "batch", 16);
	long flush = arg_long(bi, "flush", 1);
	struct ftvm_disk_info info;
	if (ftvm_disk_info(&info) != 0) {
		printf("no disk\n");
		return 3;
	}
	uint64_t blocks = info.size / FTVM_DISK_BLOCK;
	if (batch < 1 || batch > MAXB - (flush != 0) || nwrite < 0 || nverify < 0 || (uint64_t)nwrite > blocks ||
	    (uint64_t)nverify > blocks) {
		printf("error: want 1 <= batch <= %d (%d with flush=1) and write, verify <= %lu blocks\n", MAXB, MAXB - 1, blocks);
		return 2;
	}
	printf("disk: %lu blocks of %u bytes\n", blocks, info.block);
	if (arg_long(bi, "abuse", 0))
		return abuse(&info);
	for (long b = 0; b < nwrite; b += batch) {
		long n = nwrite - b < batch ? nwrite - b : batch;
		for (long i = 0; i < n; i++) {
			fill(buf + i * FTVM_DISK_BLOCK, (uint64_t)seed, (uint64_t)(b + i));
			desc(&d[i], FTVM_DISK_WRITE, (uint64_t)(b + i) * FTVM_DISK_BLOCK,
			     buf + i * FTVM_DISK_BLOCK, FTVM_DISK_BLOCK);
		}
		if (flush)
			desc(&d[n++], FTVM_DISK_FLUSH, 0, 0, 0);
		long r = ftvm_disk_submit(d, (size_t)n);
		if (r != n) {
			printf("write at block %ld: error %ld\n", b, r);
			return 1;
		}
	}
	if (nwrite > 0)
		printf("wrote %ld blocks\n", nwrite);
	for (long b = 0; b < nverify; b += batch) {
		long n = nverify - b < batch ? nverify - b : batch;
		for (long i = 0; i < n; i++)
			desc(&d[i], FTVM_DISK_READ, (uint64_t)(b + i) * FTVM_DISK_BLOCK,
			     buf + i * FTVM_DISK_BLOCK, FTVM_DISK_BLOCK);
		long r = ftvm_disk_submit(d, (size_t)n);
		if (r != n) {
			printf("read at block %ld: error %ld\n", b, r);
			return 1;
		}
		for (long i = 0; check_data && i < n; i++) {
			long w = check(buf + i * FTVM_DISK_BLOCK, (uint64_t)seed, (uint64_t)(b + i));
			if (w >= 0) {
				printf("block %ld: word %ld differs\n", b + i, w);
				return 1;
			}
		}
	}
	if (nverify > 0)
		printf("%s %ld blocks\n", check_data ? "verified" : "read", nverify);
	return 0;
}

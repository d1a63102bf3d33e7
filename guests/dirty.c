/* dirty: writes a region of memory over and over, as a guest with a working set of that
 * size does, for live-transfer (pre-copy) tests and measurements.
 *
 *   dirty [pages=N] [every=K] [passes=P] [spin=S]
 *
 * Each pass writes one 8-byte word into every page of the first N pages of the heap (a
 * value that depends on the pass and the page); after every K pages it asks the console
 * for input (an exit) into a 16 KiB ring of its own that only the VMM writes, so console
 * input shows up in RAM through the VMM's own writes. S iterations of an empty loop after
 * each page slow the rate down, from the second pass on (the first fills the region at once). After P passes (P = 0: never), or once console input holds
 * a 'q', it prints a checksum of the region and exits 0.
 *
 * Defaults: pages=1024 (4 MiB) every=64 passes=0 spin=0.
 */
#include "rt.h"

const char *const guest_args[] = { "pages", "every", "passes", "spin", 0 };

/* Page-aligned and a whole number of pages, so the guest's own writes never share a page
 * with it. */
static char ring[16384] __attribute__((aligned(4096)));

int main(struct ftvm_boot_info *bi)
{
	long pages = arg_long(bi, "pages", 1024);
	long every = arg_long(bi, "every", 64);
	long passes = arg_long(bi, "passes", 0);
	long spin = arg_long(bi, "spin", 0);
	uint64_t avail = (bi->heap_end - bi->heap_start) / 4096;
	if (pages < 1 || (uint64_t)pages > avail || every < 1 || passes < 0 || spin < 0) {
		printf("error: want 1 <= pages <= %lu, every >= 1, passes >= 0, spin >= 0\n", avail);
		return 2;
	}
	volatile uint64_t *heap = (volatile uint64_t *)bi->heap_start;
	uint64_t at = 0, since = 0;
	int quit = 0;
	for (long pass = 1; !quit && (passes == 0 || pass <= passes); pass++) {
		for (long p = 0; p < pages; p++) {
			heap[p * 512 + (pass & 511)] = (uint64_t)pass * 0x9e3779b97f4a7c15UL ^ (uint64_t)p;
			/* The first pass runs at full speed, so that the whole region holds
			 * data at once; spin slows the rewrites after it. */
			for (volatile long s = 0; pass > 1 && s < spin; s++)
				;
			if (++since == (uint64_t)every) {
				since = 0;
				long n = ftvm_console_read(ring + at, 64);
				for (long i = 0; i < n; i++)
					quit |= ring[at + i] == 'q';
				if (n > 0)
					at = (at + (uint64_t)n) % (sizeof ring - 64);
			}
		}
	}
	uint64_t sum = 0;
	for (long p = 0; p < pages * 512; p++)
		sum = sum * 31 + heap[p];
	printf("dirty: pages=%ld passes=%ld checksum=0x%016lx\n", pages, passes, sum);
	return 0;
}

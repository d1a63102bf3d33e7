/* oob: reads guest physical 0x40000000 (1 GiB), far beyond the RAM of a 64 MiB guest: the
 * VM must stop with an error (a page fault, or an MMIO exit the VMM refuses). */
#include "rt.h"

#define OOB_ADDR 0x40000000UL

int main(struct ftvm_boot_info *bi)
{
	printf("oob: reading 8 bytes at %#lx (guest RAM is %lu MiB)\n", OOB_ADDR,
	       bi->mem_size >> 20);
	uint64_t v = *(volatile uint64_t *)OOB_ADDR;
	printf("oob: still running, read %#lx\n", v);
	return 1;
}

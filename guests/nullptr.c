/* nullptr: stores to address 0, which is unmapped: the VM must stop with a page fault. */
#include "rt.h"

int main(struct ftvm_boot_info *bi)
{
	(void)bi;
	/* Hide the value from gcc: a store through a pointer it knows is NULL is undefined
	 * behaviour, and gcc would replace it with ud2 instead of a real store. */
	uint64_t addr = 0;
	__asm__("" : "+r"(addr));

	printf("nullptr: storing to address 0\n");
	*(volatile int *)addr = 42;
	printf("nullptr: still running after the store\n");
	return 1;
}

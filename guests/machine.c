/* machine: prints what a guest can observe of the machine under it, which ABI v2 promises
 * is the same on every backend: RFLAGS at entry (IF, IOPL 0), the x87 control word and
 * MXCSR at entry, and the boot information's layout. Then it exits 0. */
#include "rt.h"

int main(struct ftvm_boot_info *bi)
{
	uint16_t fcw;
	uint32_t mxcsr;
	uint64_t rflags;
	__asm__ volatile("fnstcw %0" : "=m"(fcw));
	__asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
	__asm__ volatile("pushfq; popq %0" : "=r"(rflags));
	printf("machine: abi=%u rflags=%#lx iopl=%lu fcw=%#x mxcsr=%#x\n", bi->version, rflags,
	       (rflags >> 12) & 3, fcw, mxcsr);
	printf("machine: boot info at %p, heap %#lx-%#lx, stack top %#lx, memory %lu MiB\n", (void *)bi,
	       bi->heap_start, bi->heap_end, bi->stack_top, bi->mem_size >> 20);
	return 0;
}

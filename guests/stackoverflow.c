/* stackoverflow: recurses without end until the stack runs into the guard page below it:
 * the VM must stop with a page fault (the VMM's stubs run on their own stack, IST1). */
#include "rt.h"

/* Never reached: a limit gcc cannot see through, so that it does not reject the recursion
 * as infinite (-Winfinite-recursion) or reason about where it ends. */
static volatile uint64_t depth_limit = ~0UL;

/* Each frame keeps a volatile buffer live across the call and uses the call's result, so
 * gcc can neither turn the recursion into a loop nor drop the frame. noipa keeps gcc from
 * reasoning about the callee at all. */
__attribute__((noipa)) static uint64_t descend(uint64_t depth)
{
	volatile uint8_t frame[256];

	if (depth >= depth_limit)
		return depth;
	frame[0] = (uint8_t)depth;
	return descend(depth + 1) + frame[0];
}

int main(struct ftvm_boot_info *bi)
{
	printf("stackoverflow: recursing until the stack below %#lx overflows\n", bi->stack_top);
	uint64_t r = descend(0);
	printf("stackoverflow: still running, got %lu\n", r);
	return 1;
}

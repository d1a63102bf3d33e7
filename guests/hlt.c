/* hlt: executes hlt, which is privileged (#GP at CPL3): the VM must stop with an error. */
#include "rt.h"

int main(struct ftvm_boot_info *bi)
{
	(void)bi;
	printf("hlt: executing hlt\n");
	__asm__ volatile("hlt");
	printf("hlt: still running after hlt\n");
	return 1;
}

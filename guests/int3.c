/* int3: executes int3 (#BP): the VM must stop with an error naming vector 3. */
#include "rt.h"

int main(struct ftvm_boot_info *bi)
{
	(void)bi;
	printf("int3: executing int3\n");
	__asm__ volatile("int3");
	printf("int3: still running after int3\n");
	return 1;
}

/* badport: writes to port 0x77, which the ABI does not define: the VMM must stop the VM
 * with an error. */
#include "rt.h"

int main(struct ftvm_boot_info *bi)
{
	(void)bi;
	printf("badport: writing to port 0x77\n");
	__asm__ volatile("out %%al, $0x77" : : "a"(0) : "memory");
	printf("badport: still running after the write\n");
	return 1;
}

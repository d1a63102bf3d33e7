/* ud2: executes ud2 (#UD): the VM must stop with an error naming vector 6. */
#include "rt.h"

int main(struct ftvm_boot_info *bi)
{
	(void)bi;
	printf("ud2: executing ud2\n");
	__asm__ volatile("ud2");
	printf("ud2: still running after ud2\n");
	return 1;
}

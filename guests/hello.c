/* hello: the smallest guest. Prints one line and exits 0. */
#include "rt.h"

int main(struct ftvm_boot_info *bi)
{
	(void)bi;
	printf("Hello from an ftvm guest!\n");
	return 0;
}

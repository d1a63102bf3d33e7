/* exit3: exits with a non-zero status, for the VMM's exit-status tests. */
#include "rt.h"

int main(struct ftvm_boot_info *bi)
{
	(void)bi;
	printf("exiting with 3\n");
	return 3;
}

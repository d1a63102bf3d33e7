/* selfmodify: tries to write one byte of its own code. The text segment is mapped
 * read-only (W^X), so the store must fault: a guest can never create an instruction the
 * VMM has not seen and rewritten at load time. */
#include "rt.h"

int main(struct ftvm_boot_info *bi)
{
	(void)bi;
	/* The address of main's first byte, laundered so that gcc sees an ordinary pointer. */
	uint64_t addr = (uint64_t)&main;
	__asm__("" : "+r"(addr));
	volatile uint8_t *p = (volatile uint8_t *)addr;

	printf("selfmodify: writing a byte at %#lx in the text segment\n", addr);
	*p = 0xc3; /* ret */
	printf("selfmodify: still running after the write: text is writable\n");
	return 1;
}

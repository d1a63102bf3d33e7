/* memabuse: asks the VMM to write where the guest itself may not (its own text, read-only
 * data, the boot information) and to read where it cannot (below 64 KiB), and prints what
 * each call returned, one line per case. Every refused case must fail with -EFAULT and
 * change nothing; the allowed ones must work. Exits 0 when every case behaved, 1 otherwise.
 * Console input must be pending (any line), so that a read that wrongly succeeds shows. */
#include "rt.h"

static const char rodata[64] = "read-only data the VMM must not overwrite";

static int check(const char *what, long got, long want)
{
	printf("memabuse: %s: %ld%s\n", what, got, got == want ? "" : " (WRONG)");
	return got == want;
}

int main(struct ftvm_boot_info *bi)
{
	uint8_t text[16], before[16];
	char buf[64];
	int ok = 1;

	memcpy(before, (const void *)main, sizeof before);
	ok &= check("console read into text", ftvm_console_read((void *)main, 16), FTVM_EFAULT);
	ok &= check("console read into read-only data", ftvm_console_read((void *)rodata, 16), FTVM_EFAULT);
	ok &= check("console read into the boot information", ftvm_console_read(bi, 16), FTVM_EFAULT);
	ok &= check("console write from below 64 KiB", ftvm_console_write((const void *)0x8000UL, 4), FTVM_EFAULT);
	memcpy(text, (const void *)main, sizeof text);
	ok &= check("text unchanged", memcmp(text, before, sizeof text), 0);
	ok &= check("read-only data unchanged", memcmp(rodata, "read-only data", 14), 0);
	ok &= check("console write from text (readable)", ftvm_console_write((const void *)main, 0), 0);
	long got;
	while ((got = ftvm_console_read(buf, sizeof buf)) == 0)
		ftvm_wait(~0UL);
	ok &= check("console read into the stack works", got > 0, 1);
	printf("memabuse: %s\n", ok ? "all cases behaved" : "SOME CASES MISBEHAVED");
	return ok ? 0 : 1;
}

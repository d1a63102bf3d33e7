/* nondet: uses every source of non-determinism a guest has and prints what it saw, one
 * value per line with a stable label, then reads one console line. Run twice, the values
 * differ; recorded and replayed, they must be the same. */
#include "rt.h"

static const char *yes_no(int b) { return b ? "yes" : "no"; }

int main(struct ftvm_boot_info *bi)
{
	(void)bi;

	uint64_t t1 = rdtsc(), t2 = rdtsc(), t3 = rdtsc();
	printf("nondet: rdtsc 1: %lu\n", t1);
	printf("nondet: rdtsc 2: %lu\n", t2);
	printf("nondet: rdtsc 3: %lu\n", t3);
	printf("nondet: rdtsc increasing: %s\n", yes_no(t1 < t2 && t2 < t3));

	uint32_t aux;
	uint64_t tp = rdtscp(&aux);
	printf("nondet: rdtscp: %lu aux=%u\n", tp, aux);

	uint16_t r16;
	uint32_t r32;
	uint64_t r64, s64;
	int cf = rdrand16(&r16);
	printf("nondet: rdrand16: 0x%04x cf=%d\n", r16, cf);
	cf = rdrand32(&r32);
	printf("nondet: rdrand32: 0x%08x cf=%d\n", r32, cf);
	cf = rdrand64(&r64);
	printf("nondet: rdrand64: 0x%016lx cf=%d\n", r64, cf);
	cf = rdseed64(&s64);
	printf("nondet: rdseed64: 0x%016lx cf=%d\n", s64, cf);
	printf("nondet: rdpid: %lu\n", rdpid());

	/* cpuid comes from the VMM's fixed table: the same on every host. */
	struct cpuid_regs c0 = cpuid(0, 0);
	char vendor[13];
	memcpy(vendor, &c0.ebx, 4); /* the vendor string is EBX, EDX, ECX */
	memcpy(vendor + 4, &c0.edx, 4);
	memcpy(vendor + 8, &c0.ecx, 4);
	vendor[12] = 0;
	printf("nondet: cpuid 0: max_leaf=0x%x vendor=\"%s\"\n", c0.eax, vendor);
	struct cpuid_regs c1 = cpuid(1, 0);
	printf("nondet: cpuid 1: ecx=0x%08x edx=0x%08x rdrand=%s\n", c1.ecx, c1.edx,
	       yes_no(c1.ecx >> 30 & 1));
	if (c0.eax >= 7) {
		struct cpuid_regs c7 = cpuid(7, 0);
		printf("nondet: cpuid 7: ebx=0x%08x rdseed=%s\n", c7.ebx, yes_no(c7.ebx >> 18 & 1));
	} else {
		printf("nondet: cpuid 7: not available\n");
	}

	printf("nondet: clock monotonic: %lu ns\n", clock_monotonic_ns());
	printf("nondet: clock realtime: %lu ns\n", clock_realtime_ns());

	char line[256];
	printf("nondet: type a line\n");
	if (read_line(line, sizeof line) >= 0)
		printf("nondet: got \"%s\"\n", line);
	else
		printf("nondet: no input\n");
	return 0;
}

/* cpu: a compute loop that reads the TSC once per round.
 *
 *   cpu [rounds=N] [work=M]
 *
 * Each round runs M iterations of a fixed integer mixing step on the state, then reads the
 * TSC and XORs it into the state. The state is the checksum. The mixing step is a
 * bijection on 64-bit values (three xorshifts and a multiply by an odd constant), so
 * changing any one TSC value changes the final checksum: two runs differ unless every TSC
 * value is replayed.
 *
 * Defaults: rounds=10000 work=32000, 320 M iterations. The step is a chain of dependent
 * operations, about 9 cycles per iteration (three shift-xor pairs, 2 cycles each, and a
 * 3-cycle multiply), so about 1 s on a 3 GHz core (measured natively on the project's
 * machines: 1.0 s), with 10,001 rdtsc reads (each one a VM exit of some 20-40 us under the
 * VMM, so 0.2-0.4 s more in all).
 *
 * INSNS_PER_ITER is the number of instructions in one iteration of the loop in mix(),
 * counted in the -O2 disassembly (objdump -d build/cpu.elf; `make check` recounts it):
 *	mov %rax,%rdx ; shr $0xc,%rdx  ; xor %rdx,%rax	  x ^= x >> 12
 *	mov %rax,%rdx ; shl $0x19,%rdx ; xor %rax,%rdx	  x ^= x << 25
 *	mov %rdx,%rax ; shr $0x1b,%rax ; xor %rdx,%rax	  x ^= x >> 27
 *	imul %rsi,%rax					  x *= C (C in %rsi)
 *	sub $0x1,%rcx ; jae <loop>			  n-- > 0
 */
#include "rt.h"

const char *const guest_args[] = { "rounds", "work", 0 };

#define INSNS_PER_ITER 12

/* n iterations of the xorshift64* step (Marsaglia's xorshift with Vigna's multiplier).
 * noinline keeps the loop in one place in the disassembly, where its instructions can be
 * counted. */
__attribute__((noinline)) static uint64_t mix(uint64_t x, uint64_t n)
{
	while (n-- > 0) {
		x ^= x >> 12;
		x ^= x << 25;
		x ^= x >> 27;
		x *= 0x2545f4914f6cdd1dUL;
	}
	return x;
}

int main(struct ftvm_boot_info *bi)
{
	long rounds = arg_long(bi, "rounds", 10000);
	long work = arg_long(bi, "work", 32000);
	if (rounds < 0 || work < 0) {
		printf("error: rounds and work must not be negative\n");
		return 2;
	}

	uint64_t start = rdtsc(), tsc = start;
	uint64_t x = 0x9e3779b97f4a7c15UL ^ start;
	uint64_t reads = 1;
	for (long r = 0; r < rounds; r++) {
		x = mix(x, (uint64_t)work);
		tsc = rdtsc();
		x ^= tsc;
		reads++;
	}

	printf("cpu: rounds=%ld work=%ld rdtsc_reads=%lu checksum=0x%016lx tsc_elapsed=%lu\n",
	       rounds, work, reads, x, tsc - start);
	printf("cpu: insns_per_iter=%d\n", INSNS_PER_ITER);
	return 0;
}

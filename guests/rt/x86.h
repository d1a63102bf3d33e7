/* The non-deterministic x86 instructions and cpuid, as the real instructions.
 *
 * These must stay real instructions in the text segment: the VMM finds them when it loads
 * the image and rewrites each one into an exit (ABI.md, "Non-deterministic instructions"),
 * so that it can log and replay the result. Every asm here is volatile so that each call
 * site executes the instruction exactly once, where it is written: never merged with
 * another call, hoisted out of a loop or dropped. */
#ifndef RT_X86_H
#define RT_X86_H

#include "../include/ftvm.h"

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
}

/* rdtscp: the TSC, and TSC_AUX in *aux. */
static inline uint64_t rdtscp(uint32_t *aux)
{
	uint32_t lo, hi, c;
	__asm__ volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(c));
	*aux = c;
	return (uint64_t)hi << 32 | lo;
}

/* rdrand/rdseed: the random value in *v; the result is CF (1: the value is valid). The
 * "=@ccc" output reads CF straight from the flags. */
static inline int rdrand16(uint16_t *v)
{
	int cf;
	__asm__ volatile("rdrand %0" : "=r"(*v), "=@ccc"(cf));
	return cf;
}
static inline int rdrand32(uint32_t *v)
{
	int cf;
	__asm__ volatile("rdrand %0" : "=r"(*v), "=@ccc"(cf));
	return cf;
}
static inline int rdrand64(uint64_t *v)
{
	int cf;
	__asm__ volatile("rdrand %0" : "=r"(*v), "=@ccc"(cf));
	return cf;
}
static inline int rdseed64(uint64_t *v)
{
	int cf;
	__asm__ volatile("rdseed %0" : "=r"(*v), "=@ccc"(cf));
	return cf;
}

/* rdpid: TSC_AUX into a 64-bit register (F3 0F C7 /7, register form; binutils 2.40 knows
 * the mnemonic). */
static inline uint64_t rdpid(void)
{
	uint64_t v;
	__asm__ volatile("rdpid %0" : "=r"(v));
	return v;
}

struct cpuid_regs {
	uint32_t eax, ebx, ecx, edx;
};

/* cpuid: answered by KVM from the VMM's fixed table, without an exit. */
static inline struct cpuid_regs cpuid(uint32_t leaf, uint32_t subleaf)
{
	struct cpuid_regs r;
	__asm__ volatile("cpuid"
			 : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx)
			 : "a"(leaf), "c"(subleaf));
	return r;
}

#endif

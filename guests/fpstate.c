/* fpstate: leaves values in x87 and SSE state across many calls into the VMM and checks that
 * they are still there afterwards: a snapshot taken (or a restore made) at any of those exits
 * must carry XMM8-15, three x87 registers (one an 80-bit constant no double can hold), a
 * non-default MXCSR and x87 control word. Prints what it found; exits 0 when all survived.
 * `calls=N` sets the number of calls (default 200). */
#include "rt.h"

const char *const guest_args[] = {"calls", 0};

static const uint64_t xmm_in[16] = {
	0x0123456789abcdef, 0xfedcba9876543210, 0x1111111111111111, 0x2222222222222222,
	0x3333333333333333, 0x4444444444444444, 0x5555555555555555, 0x6666666666666666,
	0x7777777777777777, 0x8888888888888888, 0x9999999999999999, 0xaaaaaaaaaaaaaaaa,
	0xbbbbbbbbbbbbbbbb, 0xcccccccccccccccc, 0xdddddddddddddddd, 0xeeeeeeeeeeeeeeee,
};
static const double x87_in[2] = {1.5, -2.25};
/* fldpi in 80 bits: 0x4000 c90fdaa2 2168c235 (little-endian bytes below). */
static const unsigned char pi80_want[10] = {0x35, 0xc2, 0x68, 0x21, 0xa2, 0xda, 0x0f, 0xc9, 0x00, 0x40};
static const uint32_t mxcsr_in = 0x7f80; /* all exceptions masked, round toward zero */
static const uint16_t fcw_in = 0x27f;    /* double precision */
static const uint32_t mxcsr_reset = 0x1f80;
static const uint16_t fcw_reset = 0x37f;

int main(struct ftvm_boot_info *bi)
{
	long n = arg_long(bi, "calls", 200);
	uint64_t calls = n > 0 ? (uint64_t)n : 1;
	uint64_t xmm_out[16];
	double x87_out[2];
	unsigned char pi80[10];
	uint32_t mxcsr_out;
	uint16_t fcw_out;
	__asm__ volatile(
		"ldmxcsr %[mi]\n\t"
		"fldcw %[fi]\n\t"
		"movdqu 0(%[in]), %%xmm8\n\t"
		"movdqu 16(%[in]), %%xmm9\n\t"
		"movdqu 32(%[in]), %%xmm10\n\t"
		"movdqu 48(%[in]), %%xmm11\n\t"
		"movdqu 64(%[in]), %%xmm12\n\t"
		"movdqu 80(%[in]), %%xmm13\n\t"
		"movdqu 96(%[in]), %%xmm14\n\t"
		"movdqu 112(%[in]), %%xmm15\n\t"
		"fldl 0(%[x87])\n\t"
		"fldl 8(%[x87])\n\t"
		"fldpi\n\t"
		"1:\n\t"
		"xorl %%edi, %%edi\n\t"
		"out %%al, $0x03\n\t" /* clock(monotonic): only RAX changes */
		"decq %[n]\n\t"
		"jnz 1b\n\t"
		"movdqu %%xmm8, 0(%[out])\n\t"
		"movdqu %%xmm9, 16(%[out])\n\t"
		"movdqu %%xmm10, 32(%[out])\n\t"
		"movdqu %%xmm11, 48(%[out])\n\t"
		"movdqu %%xmm12, 64(%[out])\n\t"
		"movdqu %%xmm13, 80(%[out])\n\t"
		"movdqu %%xmm14, 96(%[out])\n\t"
		"movdqu %%xmm15, 112(%[out])\n\t"
		"fstpt %[pi]\n\t"
		"fstpl 8(%[x87out])\n\t"
		"fstpl 0(%[x87out])\n\t"
		"stmxcsr %[mo]\n\t"
		"fnstcw %[fo]\n\t"
		"ldmxcsr %[mr]\n\t"
		"fldcw %[fr]\n\t"
		: [n] "+r"(calls), [mo] "=m"(mxcsr_out), [fo] "=m"(fcw_out), [pi] "=m"(pi80)
		: [in] "r"(xmm_in), [out] "r"(xmm_out), [x87] "r"(x87_in), [x87out] "r"(x87_out),
		  [mi] "m"(mxcsr_in), [fi] "m"(fcw_in), [mr] "m"(mxcsr_reset), [fr] "m"(fcw_reset)
		: "rax", "rdi", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
		  "memory", "cc");
	int bad = 0;
	if (memcmp(xmm_out, xmm_in, sizeof xmm_in) != 0) {
		bad = 1;
		for (int i = 0; i < 8; i++)
			printf("fpstate: xmm%d = %016lx%016lx\n", i + 8, xmm_out[2 * i + 1], xmm_out[2 * i]);
	}
	if (memcmp(x87_out, x87_in, sizeof x87_in) != 0 || memcmp(pi80, pi80_want, sizeof pi80) != 0) {
		bad = 1;
		printf("fpstate: x87 registers changed\n");
	}
	if (mxcsr_out != mxcsr_in || fcw_out != fcw_in) {
		bad = 1;
		printf("fpstate: mxcsr=%#x fcw=%#x (want %#x %#x)\n", mxcsr_out, fcw_out, mxcsr_in, fcw_in);
	}
	printf("fpstate: %s\n", bad ? "state lost" : "state kept");
	return bad;
}

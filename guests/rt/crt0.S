/* Guest entry stub (ABI.md, "Entry state").
 *
 * On entry: CPL3 in long mode, RSP = stack_top (16-byte aligned), RDI = the boot
 * information, every other general register 0. We clear .bss, hand the boot information to
 * the runtime, run main(bi) and pass its result to exit(), which flushes the console and
 * stops the VM. */

	.section .text.start, "ax", @progbits
	.globl _start
	.type _start, @function
_start:
	xor	%ebp, %ebp		/* the outermost frame, for anyone walking frames */
	and	$-16, %rsp		/* already aligned by the ABI; cheap insurance */
	mov	%rdi, %rbx		/* callee-saved: survives the calls below */

	/* Clear .bss. The VMM zeroes memsz beyond filesz as ELF loaders do and RAM starts
	 * zeroed, so this only guards against a loader that does not. DF is 0 (RFLAGS 0x3202). */
	mov	$__bss_start, %edi
	mov	$__bss_end, %ecx
	sub	%rdi, %rcx
	xor	%eax, %eax
	rep stosb

	/* RSP is 16-byte aligned here, so each callee starts with RSP+8 aligned, as the SysV
	 * ABI wants (gcc may use aligned SSE stores to the stack). Push nothing before a call. */
	mov	%rbx, %rdi
	call	rt_init			/* checks the boot information, reads the command line */
	mov	%rbx, %rdi
	call	main
	mov	%eax, %edi
	call	exit			/* does not return */
	ud2
	.size _start, . - _start

	/* The stack is not executable. */
	.section .note.GNU-stack, "", @progbits

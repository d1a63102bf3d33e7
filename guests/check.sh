#!/bin/bash
# Static checks of built guest images, run by `make -C guests check`:
#   - program headers: three PT_LOAD segments (R+X, R, R+W), page aligned, none both
#     writable and executable, plus a non-executable PT_GNU_STACK;
#   - the entry point lies in the executable segment;
#   - no undefined symbols, nothing objdump cannot decode in the text;
#   - only the ABI's ports in `out` instructions (badport's 0x77 aside), never `in`; the
#     network guests use the NIC's three ports, the disk guests the block device's two;
#   - nondet contains each non-deterministic instruction, and the loop in cpu's mix() has
#     the INSNS_PER_ITER instructions cpu.c claims.
# Usage: check.sh build/*.elf
set -u
fail=0
err() { echo "check: $*" >&2; fail=1; }

for elf in "$@"; do
	name=$(basename "$elf" .elf)

	# Program headers: "LOAD off vaddr paddr filesz memsz FLAGS align", flags being
	# 1-3 words (R, R E, RW, RWE).
	loads=$(readelf -lW "$elf" | awk '$1 == "LOAD" {
		flg = ""; for (i = 7; i < NF; i++) flg = flg $i; print $3, $6, flg }')
	[ "$(echo "$loads" | awk '{print $3}' | tr '\n' ' ')" = "RE R RW " ] ||
		err "$name: want LOAD segments RE, R, RW in that order, got: $(echo $loads)"
	while read -r vaddr memsz flg; do
		case $flg in *W*E*) err "$name: segment at $vaddr is writable and executable" ;; esac
		[ $((vaddr % 4096)) -eq 0 ] || err "$name: segment at $vaddr is not page aligned"
	done <<<"$loads"
	readelf -lW "$elf" | grep -q 'GNU_STACK.* RW ' || err "$name: no non-executable PT_GNU_STACK"

	entry=$(readelf -hW "$elf" | awk '/Entry point/ {print $4}')
	read -r tvaddr tmemsz _ <<<"$(echo "$loads" | awk '$3 == "RE"')"
	if ! [ $((entry)) -ge $((tvaddr)) ] || ! [ $((entry)) -lt $((tvaddr + tmemsz)) ]; then
		err "$name: entry $entry outside the text segment $tvaddr+$tmemsz"
	fi

	undef=$(nm -u "$elf")
	[ -z "$undef" ] || err "$name: undefined symbols: $undef"

	dis=$(objdump -d --no-show-raw-insn "$elf")
	echo "$dis" | grep -q '(bad)' && err "$name: objdump cannot decode part of the text"
	echo "$dis" | grep -Eq '[[:space:]]in[[:space:]]' && err "$name: uses an in instruction"
	ports=$(echo "$dis" | awk '$2 == "out" { split($3, a, "\\$"); print a[2] }' | sort -u | tr '\n' ' ')
	for p in $ports; do
		case $p in
		0x1 | 0x2 | 0x3 | 0x4 | 0x5 | 0x20 | 0x21 | 0x22 | 0x30 | 0x31) ;;
		0x77) [ "$name" = badport ] || err "$name: writes to port 0x77" ;;
		*) err "$name: writes to port $p, which the ABI does not define" ;;
		esac
	done
	case " $ports " in *" 0x1 "*) ;; *) err "$name: no console write (out %al,\$0x1)" ;; esac
	case $name in kvstore | netsink | netsource | redis)
		for p in 0x20 0x21 0x22 0x4; do
			case " $ports " in *" $p "*) ;; *) err "$name: no out to port $p (NIC info, transmit, receive, wait)" ;; esac
		done ;;
	esac

	if [ "$name" = nondet ]; then
		for insn in rdtsc rdtscp rdrand rdseed rdpid cpuid; do
			echo "$dis" | grep -Eq "[[:space:]]$insn([[:space:]]|\$)" ||
				err "nondet: no $insn instruction"
		done
		# One each of 16-, 32- and 64-bit.
		for reg in '%([a-d]x|[sd]i|r[0-9]+w)' '%(e[a-z]+|r[0-9]+d)' '%r([a-z]+|[0-9]+)'; do
			echo "$dis" | grep -Eq "rdrand +$reg\$" || err "nondet: no rdrand into $reg"
		done
	fi

	if [ "$name" = cpu ]; then
		want=$(awk '/^#define INSNS_PER_ITER/ {print $3}' "$(dirname "$0")/cpu.c")
		# The loop is the backward conditional jump in mix(): count from its target
		# to the jump itself.
		got=
		addrs=()
		while read -r a insn target _; do
			a=$((0x${a%:}))
			addrs+=("$a")
			case $insn in jmp | j*) ;; *) continue ;; esac
			[ "$insn" != jmp ] && [ $((0x$target)) -lt "$a" ] || continue
			got=0
			for x in "${addrs[@]}"; do [ "$x" -ge $((0x$target)) ] && got=$((got + 1)); done
			break
		done < <(echo "$dis" | awk '/<mix>:/ { f = 1; next } f && /^$/ { exit } f { print $1, $2, $3 }')
		[ "$got" = "$want" ] || err "cpu: the loop in mix() has ${got:-?} instructions, cpu.c says $want"
		rd=$(echo "$dis" | grep -Ec '[[:space:]]rdtsc$')
		[ "$rd" -eq 2 ] || err "cpu: want 2 rdtsc instructions (start, per round), found $rd"
	fi
done

[ $fail -eq 0 ] && echo "check: $# images OK"
exit $fail

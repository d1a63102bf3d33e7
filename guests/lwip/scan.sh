#!/usr/bin/env bash
# scan.sh ELF: the loader's scan of executable pages (ABI.md, "How the loader finds code"),
# at link time. Lists every offset of the executable segment whose bytes the loader refuses
# (rdtsc, rdtscp, cpuid, rdrand, rdseed, rdpid, rdpmc, xgetbv, rdpru, sgdt, sidt, smsw,
# rd/wr fs/gs base, fxsave, xsave*, xbegin) unless they are the opcode of an instruction
# the loader rewrites (by objdump's sweep, which for compiled code matches the loader's
# proof: a real rdrand is rewritten, not refused). Exit status 1 when there are any.
# The Makefile links the lwIP guests until this passes (LWIP_GAPS).
set -euo pipefail
elf=$1
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
read -r off vaddr filesz < <(readelf -lW "$elf" | awk '$1 == "LOAD" {
	for (i = 7; i < NF; i++) if ($i ~ /E/) { print $2, $3, $5; exit } }')
# Instruction starts with their mnemonics, then the segment's bytes in decimal.
objdump -d --no-show-raw-insn "$elf" | awk '/^ +[0-9a-f]+:/ { sub(":", "", $1); print "I", $1, $2 }' >"$tmp"
od -An -v -tu1 -j $((off)) -N $((filesz)) "$elf" | tr -s ' \n' '\n\n' | grep -v '^$' | sed 's/^/B /' >>"$tmp"
# mawk has no hex constants: the opcodes are decimal (15 = 0x0f, 199 = 0xc7, ...).
awk -v base=$((vaddr)) '
BEGIN { split("rdtsc rdtscp rdrand rdseed rdpid cpuid", r, " "); for (i in r) rewritten[r[i]] = 1 }
$1 == "I" { start[$2] = $3; next }
$1 == "B" { b[n++] = $2 + 0 }
END {
	bad = 0
	for (i = 0; i + 1 < n; i++) {
		hit = ""
		if (b[i] == 199 && b[i + 1] == 248) hit = "xbegin"
		if (b[i] == 15) {
			op = b[i + 1]; m = (i + 2 < n) ? b[i + 2] : -1
			mod = int(m / 64); reg = int(m / 8) % 8
			if (op == 49 || op == 162 || op == 51) hit = "0f 31/a2/33"
			else if (op == 1 && m >= 0 && (m == 249 || m == 208 || m == 253 || (mod != 3 && reg <= 1) || reg == 4)) hit = "0f 01"
			else if (op == 199 && m >= 0 && ((mod == 3 && reg >= 6) || (mod != 3 && (reg == 4 || reg == 5)))) hit = "0f c7"
			else if (op == 174 && m >= 0 && ((mod == 3 && reg <= 3) || (mod != 3 && (reg == 0 || reg == 4 || reg == 6)))) hit = "0f ae"
		}
		if (hit == "") continue
		# Fine if they are the opcode of an instruction the loader rewrites (after
		# up to 3 bytes of prefixes).
		ok = 0
		for (k = 0; k <= 3 && !ok; k++) {
			a = sprintf("%x", base + i - k)
			if ((a in start) && (start[a] in rewritten)) ok = 1
		}
		if (ok) continue
		printf "scan: bytes %s at 0x%x, inside an instruction: the loader refuses them\n", hit, base + i > "/dev/stderr"
		bad = 1
	}
	exit bad
}' "$tmp"

package vmm

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// The loader decides which bytes are code by following control flow, and
// only then rewrites: a linear sweep is desynchronised by one data byte in
// the text (an e8 before an rdtsc makes it read a call and step over the
// rdtsc) and cannot see instructions hidden inside others.
//
// Soundness does not rest on the control flow being complete. After
// rewriting, every byte offset of every executable page is scanned for the
// opcode bytes of the instructions the VMM traps or refuses (scanPatterns):
// an occurrence there is a load error, or its page is made non-executable
// when no proven instruction lies in it. Whatever address the guest jumps to,
// it cannot find such bytes to execute. Following control flow is what makes
// that rule precise enough for real guests: proven instructions are
// rewritten, so the scan finds nothing where the code is.

// FuncSym is a function symbol of the guest (STT_FUNC): code starts at Addr,
// and a jump table inside the function targets [Addr, Addr+Size).
type FuncSym struct {
	Name       string
	Addr, Size uint64
}

// maxTableEntries bounds a jump table the loader reads.
const maxTableEntries = 4096

// codeProof is the set of proven instructions of an image, built from roots
// (the entry point and function symbols) by following control flow.
type codeProof struct {
	img   *Image
	funcs []FuncSym // sorted by Addr
	// owner maps each byte of a proven instruction to the instruction's
	// start: owner[a] == a marks an instruction start. A byte has one
	// owner, so every proven byte decodes at exactly one alignment.
	owner map[uint64]uint64
	// spec are jump-table entries found only speculatively (bounded by the
	// function symbol, not by a compare), explored after the proven code.
	spec []specTarget
	// specTried are the speculative targets explored already, and
	// specBudget the instructions speculative exploration may still
	// decode: a dropped trace is decoded again from each entry that leads
	// into it, and a table has up to maxTableEntries of them.
	specTried  map[uint64]bool
	specBudget int
}

type specTarget struct{ target, jmp uint64 }

// trace is what one exploration found; it joins the proof only whole.
type trace struct {
	owner map[uint64]uint64
	spec  []specTarget
}

// errSpecBudget ends speculative exploration that has decoded too much.
var errSpecBudget = errors.New("vmm: speculative exploration exceeded its budget")

func (p *codeProof) ownerOf(t *trace, a uint64) (uint64, bool) {
	if o, ok := p.owner[a]; ok {
		return o, true
	}
	o, ok := t.owner[a]
	return o, ok
}

// codeAt returns the file bytes of the executable segment from addr on, or
// nil when addr is outside them.
func (img *Image) codeAt(addr uint64) []byte {
	for i := range img.Segments {
		s := &img.Segments[i]
		if s.Exec && addr >= s.Addr && addr < s.Addr+uint64(len(s.Data)) {
			return s.Data[addr-s.Addr:]
		}
	}
	return nil
}

// dataAt returns the file bytes of a non-writable segment from addr on, or
// nil: jump tables are read only where the guest cannot change them.
func (img *Image) dataAt(addr uint64) []byte {
	for i := range img.Segments {
		s := &img.Segments[i]
		if !s.Write && addr >= s.Addr && addr < s.Addr+uint64(len(s.Data)) {
			return s.Data[addr-s.Addr:]
		}
	}
	return nil
}

// decoded is one instruction as the loader sees it.
type decoded struct {
	addr uint64
	n    int
	inst x86asm.Inst // Op == 0 for the ones x86asm does not know (rdseed, rdpid, endbr64)
}

// decodeAt decodes the instruction at addr (code are its bytes onwards) with
// the length every vendor's CPU gives it, or says why the guest may not run it.
func decodeAt(addr uint64, code []byte) (decoded, error) {
	if s, ok := matchNondet(code); ok {
		return decoded{addr: addr, n: len(s.Orig)}, nil
	}
	if n := endbrLen(code); n > 0 {
		return decoded{addr: addr, n: n}, nil // endbr64/endbr32: a NOP without CET (gcc -fcf-protection)
	}
	end := min(15, len(code))
	if why := vendorsDisagree(code); why != "" {
		return decoded{}, fmt.Errorf("vmm: the instruction at %#x (bytes %s) %s", addr, hex.EncodeToString(code[:min(end, 8)]), why)
	}
	inst, err := x86asm.Decode(code, 64)
	if err == nil && inst.Op == 0 {
		// x86asm's answer for truncated bytes and for an invalid opcode
		// after a prefix (Len 1, Op 0, no error).
		err = fmt.Errorf("not a whole instruction")
	}
	if err != nil {
		if len(code) < 15 {
			err = fmt.Errorf("%v; it may run off the end of its segment at %#x", err, addr+uint64(len(code)))
		}
		return decoded{}, fmt.Errorf("vmm: cannot decode the instruction at %#x (bytes %s): %v; code the loader reaches must decode whole", addr, hex.EncodeToString(code[:end]), err)
	}
	if why := refused(code, inst); why != "" {
		return decoded{}, fmt.Errorf("vmm: %s at %#x (bytes %s) %s; guests/ABI.md lists what a guest may use", strings.ToLower(inst.Op.String()), addr, hex.EncodeToString(code[:inst.Len]), why)
	}
	return decoded{addr: addr, n: inst.Len, inst: inst}, nil
}

// vendorsDisagree says why AMD and Intel CPUs would run the instruction at
// the start of code differently (in length or in target), or "". It looks at
// the raw bytes because x86asm's length is one of the disagreeing answers.
func vendorsDisagree(code []byte) string {
	i, opsize := 0, false
	for ; i < len(code) && i < 14; i++ {
		switch code[i] {
		case 0x66:
			opsize = true
			continue
		case 0xf2, 0xf3, 0x2e, 0x3e, 0x26, 0x64, 0x65, 0x36, 0xf0, 0x67:
			continue
		}
		break
	}
	if i < len(code) && code[i]&0xf0 == 0x40 {
		i++
	}
	if i >= len(code) {
		return ""
	}
	op := code[i]
	var modrm byte
	hasModRM := i+1 < len(code)
	if hasModRM {
		modrm = code[i+1]
	}
	const branch66 = "is a branch with an operand-size (66) prefix: Intel ignores the prefix in 64-bit mode, AMD takes a 16-bit displacement and truncates RIP to 16 bits, so the CPUs disagree on its length and target; assemble it without the 66 prefix"
	if opsize {
		switch {
		case op >= 0x70 && op <= 0x7f, op >= 0xe0 && op <= 0xe3, op == 0xe8, op == 0xe9, op == 0xeb, op == 0xc2, op == 0xc3:
			return branch66
		case op == 0x0f && hasModRM && modrm&0xf0 == 0x80:
			return branch66
		case op == 0xff && hasModRM && (modrm>>3)&7 >= 2 && (modrm>>3)&7 <= 5:
			return branch66
		}
	}
	if op == 0x0f && i+2 < len(code) && modrm >= 0x20 && modrm <= 0x23 && code[i+2]>>6 != 3 {
		return "is a mov to or from a control or debug register with a memory-form ModRM byte: the CPU ignores the mod bits while a decoder reads a displacement, so the lengths disagree"
	}
	return ""
}

// regFamily is the general register a register operand names (0=rax ..
// 15=r15, any width), or -1 (ah..bh and non-general registers).
func regFamily(r x86asm.Reg) int {
	switch {
	case r >= x86asm.AL && r <= x86asm.BL:
		return int(r - x86asm.AL)
	case r >= x86asm.SPB && r <= x86asm.R15B:
		return int(r-x86asm.SPB) + 4
	case r >= x86asm.AX && r <= x86asm.R15W:
		return int(r - x86asm.AX)
	case r >= x86asm.EAX && r <= x86asm.R15L:
		return int(r - x86asm.EAX)
	case r >= x86asm.RAX && r <= x86asm.R15:
		return int(r - x86asm.RAX)
	}
	return -1
}

// isCondBranch reports a conditional branch with a relative target.
func isCondBranch(op x86asm.Op) bool {
	switch op {
	case x86asm.JA, x86asm.JAE, x86asm.JB, x86asm.JBE, x86asm.JE, x86asm.JNE, x86asm.JG, x86asm.JGE,
		x86asm.JL, x86asm.JLE, x86asm.JO, x86asm.JNO, x86asm.JP, x86asm.JNP, x86asm.JS, x86asm.JNS,
		x86asm.JCXZ, x86asm.JECXZ, x86asm.JRCXZ, x86asm.LOOP, x86asm.LOOPE, x86asm.LOOPNE:
		return true
	}
	return false
}

// endsPath reports an instruction after which execution never falls through.
func endsPath(op x86asm.Op) bool {
	switch op {
	case x86asm.RET, x86asm.LRET, x86asm.IRET, x86asm.IRETD, x86asm.IRETQ, x86asm.UD0, x86asm.UD1, x86asm.UD2,
		x86asm.HLT, x86asm.INT, x86asm.INTO, x86asm.SYSRET, x86asm.SYSEXIT:
		return true
	}
	return false
}

func relTarget(d decoded) (uint64, bool) {
	if len(d.inst.Args) == 0 {
		return 0, false
	}
	rel, ok := d.inst.Args[0].(x86asm.Rel)
	if !ok {
		return 0, false
	}
	return d.addr + uint64(d.n) + uint64(int64(rel)), true
}

// explore follows control flow from root and adds what it finds to the
// proof. A speculative exploration that fails leaves the proof unchanged.
func (p *codeProof) explore(root uint64, speculative bool) error {
	t := &trace{owner: map[uint64]uint64{}}
	work := []uint64{root}
	for len(work) > 0 {
		a := work[len(work)-1]
		work = work[:len(work)-1]
		var hist []decoded // the straight line of instructions leading here
		for {
			if o, ok := p.ownerOf(t, a); ok {
				if o != a {
					return overlapError(a, o)
				}
				break // already explored
			}
			code := p.img.codeAt(a)
			if code == nil {
				break // outside the file bytes of the text: it faults, or runs zeros
			}
			if speculative {
				if p.specBudget == 0 {
					return errSpecBudget
				}
				p.specBudget--
			}
			d, err := decodeAt(a, code)
			if err != nil {
				return err
			}
			for i := uint64(1); i < uint64(d.n); i++ {
				if o, ok := p.ownerOf(t, a+i); ok {
					return overlapError(o, a)
				}
			}
			for i := uint64(0); i < uint64(d.n); i++ {
				t.owner[a+i] = a
			}
			hist = append(hist, d)
			next := a + uint64(d.n)
			op := d.inst.Op
			switch {
			case isCondBranch(op):
				if to, ok := relTarget(d); ok {
					work = append(work, to)
				}
			case op == x86asm.CALL:
				if to, ok := relTarget(d); ok {
					work = append(work, to)
				}
			case op == x86asm.JMP:
				if to, ok := relTarget(d); ok {
					next, hist = to, nil
					break
				}
				targets, bounded := p.jumpTable(hist)
				if bounded && !speculative {
					work = append(work, targets...)
				} else {
					for _, to := range targets {
						t.spec = append(t.spec, specTarget{to, a})
					}
				}
				next = 0
			case endsPath(op):
				next = 0
			}
			if next == 0 {
				break
			}
			a = next
		}
	}
	for b, o := range t.owner {
		p.owner[b] = o
	}
	p.spec = append(p.spec, t.spec...)
	return nil
}

func overlapError(inside, start uint64) error {
	return fmt.Errorf("vmm: code reaches both %#x and %#x, inside the instruction that starts there: the bytes would run as two different instructions (overlapping code, or data in the text that a branch leads into); the loader proves code that decodes one way only", inside, start)
}

// jumpTable finds the targets of the indirect jmp that ends hist, when it is
// an absolute jump table (jmp *TABLE(,%reg,8), as gcc -fno-pic emits). bounded
// says the count came from the compare and branch guarding the index
// (cmp $N,%reg; ja default: N+1 entries); otherwise the entries are those that
// stay inside the containing function and are speculative.
func (p *codeProof) jumpTable(hist []decoded) (targets []uint64, bounded bool) {
	jmp := hist[len(hist)-1]
	mem, ok := jmp.inst.Args[0].(x86asm.Mem)
	if !ok || mem.Base != 0 || mem.Index == 0 || mem.Scale != 8 || mem.Segment != 0 || mem.Disp < 0 {
		return nil, false // jmp *%rax and the like: the path ends; function symbols cover pointer targets
	}
	table := uint64(mem.Disp)
	count := -1
	idx, j := regFamily(mem.Index), len(hist)-2
	if j >= 0 && (hist[j].inst.Op == x86asm.MOVZX || hist[j].inst.Op == x86asm.MOV) {
		dst, ok1 := hist[j].inst.Args[0].(x86asm.Reg)
		src, ok2 := hist[j].inst.Args[1].(x86asm.Reg)
		if ok1 && ok2 && regFamily(dst) == idx {
			idx, j = regFamily(src), j-1
		}
	}
	if j >= 1 && idx >= 0 && (hist[j].inst.Op == x86asm.JA || hist[j].inst.Op == x86asm.JAE) && hist[j-1].inst.Op == x86asm.CMP {
		r, ok1 := hist[j-1].inst.Args[0].(x86asm.Reg)
		imm, ok2 := hist[j-1].inst.Args[1].(x86asm.Imm)
		if ok1 && ok2 && regFamily(r) == idx && imm >= 0 && imm < maxTableEntries {
			count = int(imm)
			if hist[j].inst.Op == x86asm.JA {
				count++
			}
		}
	}
	if count >= 0 {
		if b := p.img.dataAt(table); uint64(len(b)) >= uint64(count)*8 {
			for i := 0; i < count; i++ {
				targets = append(targets, binary.LittleEndian.Uint64(b[8*i:]))
			}
			return targets, true
		}
	}
	fn, ok := p.funcContaining(jmp.addr)
	if !ok {
		return nil, false
	}
	b := p.img.dataAt(table)
	for i := 0; i < maxTableEntries && len(b) >= 8*(i+1); i++ {
		to := binary.LittleEndian.Uint64(b[8*i:])
		if to < fn.Addr || to >= fn.Addr+fn.Size {
			break
		}
		targets = append(targets, to)
	}
	return targets, false
}

func (p *codeProof) funcContaining(a uint64) (FuncSym, bool) {
	i := sort.Search(len(p.funcs), func(i int) bool { return p.funcs[i].Addr > a }) - 1
	for ; i >= 0; i-- {
		if f := p.funcs[i]; a < f.Addr+f.Size {
			return f, true
		}
		if p.funcs[i].Size != 0 {
			break
		}
	}
	return FuncSym{}, false
}

// proveCode finds the image's code from the entry point and funcs, rewrites
// every proven non-deterministic instruction, and checks the invariant: no
// trapped or refused opcode bytes remain at any executable byte offset
// (pages without proven code that hold such bytes become non-executable).
func (img *Image) proveCode(funcs []FuncSym) error {
	funcs = append([]FuncSym(nil), funcs...)
	sort.Slice(funcs, func(i, j int) bool { return funcs[i].Addr < funcs[j].Addr })
	p := &codeProof{img: img, funcs: funcs, owner: map[uint64]uint64{}, specTried: map[uint64]bool{}}
	if img.codeAt(img.Entry) == nil {
		return fmt.Errorf("vmm: entry point %#x is not inside an executable segment", img.Entry)
	}
	if err := p.explore(img.Entry, false); err != nil {
		return err
	}
	for _, f := range funcs {
		if img.codeAt(f.Addr) == nil {
			continue
		}
		if err := p.explore(f.Addr, false); err != nil {
			return fmt.Errorf("%w (exploring function %s)", err, f.Name)
		}
	}
	p.specBudget = 4*len(p.owner) + 4096
	for len(p.spec) > 0 {
		s := p.spec[0]
		p.spec = p.spec[1:]
		if p.specTried[s.target] {
			continue
		}
		p.specTried[s.target] = true
		if err := p.explore(s.target, true); errors.Is(err, errSpecBudget) {
			img.Warnings = append(img.Warnings, fmt.Sprintf("%#x: jump table entries from %#x on not followed: %v", s.jmp, s.target, err))
			break
		} else if err != nil {
			img.Warnings = append(img.Warnings, fmt.Sprintf("%#x: jump table entry %#x (bounded only by its function) dropped: %v", s.jmp, s.target, err))
		}
	}
	img.rewriteProven(p.owner)
	return img.checkNoTriggers(p.owner)
}

// rewriteProven turns every proven non-deterministic instruction into a trap.
func (img *Image) rewriteProven(owner map[uint64]uint64) {
	var starts []uint64
	for b, o := range owner {
		if b == o {
			starts = append(starts, b)
		}
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
	img.Sites = img.Sites[:0]
	for _, a := range starts {
		code := img.codeAt(a)
		if s, ok := matchNondet(code); ok {
			s.Addr = a
			s.Orig = append([]byte(nil), s.Orig...)
			copy(code, s.Trap())
			img.Sites = append(img.Sites, s)
			continue
		}
		if len(code) >= 2 && code[0] == 0xe6 && code[1] == portRewrite {
			img.Warnings = append(img.Warnings, fmt.Sprintf("%#x: the guest itself uses the VMM's rewrite port %#x; that exit will be refused", a, portRewrite))
		}
	}
	img.sites = make(map[uint64]*Site, len(img.Sites))
	for i := range img.Sites {
		img.sites[img.Sites[i].Addr] = &img.Sites[i]
	}
}

// scanPattern is opcode bytes that must not be executable anywhere but at a
// proven, rewritten instruction start.
type scanPattern struct {
	name  string
	match func(b []byte) int // length matched at the start of b, or 0
}

func fixed(seq ...byte) func([]byte) int {
	return func(b []byte) int {
		if len(b) < len(seq) {
			return 0
		}
		for i, c := range seq {
			if b[i] != c {
				return 0
			}
		}
		return len(seq)
	}
}

// scanPatterns are the trigger bytes of every instruction the VMM traps, and
// of the refused ones whose bytes never occur by accident in the guests'
// code (measured on guests/build; ABI.md says which and why).
var scanPatterns = []scanPattern{
	{"rdtsc", fixed(0x0f, 0x31)},
	{"rdtscp", fixed(0x0f, 0x01, 0xf9)},
	{"cpuid", fixed(0x0f, 0xa2)},
	{"rdrand, rdseed or rdpid", func(b []byte) int {
		if len(b) >= 3 && b[0] == 0x0f && b[1] == 0xc7 && b[2]>>6 == 3 && (b[2]>>3)&7 >= 6 {
			return 3
		}
		return 0
	}},
	{"rdpmc", fixed(0x0f, 0x33)},
	{"xgetbv", fixed(0x0f, 0x01, 0xd0)},
	{"rdpru", fixed(0x0f, 0x01, 0xfd)},
	{"sgdt, sidt or smsw", func(b []byte) int {
		if len(b) >= 3 && b[0] == 0x0f && b[1] == 0x01 && (b[2]>>6 != 3 && (b[2]>>3)&7 <= 1 || (b[2]>>3)&7 == 4) {
			return 3
		}
		return 0
	}},
	{"rdfsbase, rdgsbase, wrfsbase, wrgsbase, fxsave, xsave or xsaveopt", func(b []byte) int {
		if len(b) < 3 || b[0] != 0x0f || b[1] != 0xae {
			return 0
		}
		mod, reg := b[2]>>6, (b[2]>>3)&7
		if mod == 3 && reg <= 3 || mod != 3 && (reg == 0 || reg == 4 || reg == 6) {
			return 3
		}
		return 0
	}},
	{"xsavec or xsaves", func(b []byte) int {
		if len(b) >= 3 && b[0] == 0x0f && b[1] == 0xc7 && b[2]>>6 != 3 && ((b[2]>>3)&7 == 4 || (b[2]>>3)&7 == 5) {
			return 3
		}
		return 0
	}},
	{"xbegin", fixed(0xc7, 0xf8)},
}

// matchTrigger returns the pattern found at the start of b, if any.
func matchTrigger(b []byte) (string, int) {
	for _, p := range scanPatterns {
		if n := p.match(b); n > 0 {
			return p.name, n
		}
	}
	return "", 0
}

// execRuns returns the image's executable pages as runs of contiguous bytes
// as they will be in RAM (zero where no segment's file bytes are).
func (img *Image) execRuns() []execRun {
	var pages []uint64
	seen := map[uint64]bool{}
	for _, s := range img.Segments {
		if !s.Exec {
			continue
		}
		for a := s.Addr &^ (pageSize - 1); a < s.Addr+s.MemSize; a += pageSize {
			if !seen[a] {
				seen[a] = true
				pages = append(pages, a)
			}
		}
	}
	sort.Slice(pages, func(i, j int) bool { return pages[i] < pages[j] })
	var runs []execRun
	for _, pg := range pages {
		if n := len(runs); n > 0 && runs[n-1].addr+uint64(len(runs[n-1].bytes)) == pg {
			runs[n-1].bytes = append(runs[n-1].bytes, make([]byte, pageSize)...)
		} else {
			runs = append(runs, execRun{addr: pg, bytes: make([]byte, pageSize)})
		}
	}
	for _, r := range runs {
		for _, s := range img.Segments {
			if lo, hi := max(s.Addr, r.addr), min(s.Addr+uint64(len(s.Data)), r.addr+uint64(len(r.bytes))); lo < hi {
				copy(r.bytes[lo-r.addr:hi-r.addr], s.Data[lo-s.Addr:hi-s.Addr])
			}
		}
	}
	return runs
}

type execRun struct {
	addr  uint64
	bytes []byte
}

// checkNoTriggers scans every executable byte offset after rewriting.
func (img *Image) checkNoTriggers(owner map[uint64]uint64) error {
	codePages := map[uint64]bool{}
	for b := range owner {
		codePages[b&^(pageSize-1)] = true
	}
	noExec := map[uint64]bool{}
	for _, r := range img.execRuns() {
		for off, c := range r.bytes {
			if c != 0x0f && c != 0xc7 { // every pattern starts with one of them
				continue
			}
			name, n := matchTrigger(r.bytes[off:])
			if n == 0 {
				continue
			}
			a := r.addr + uint64(off)
			first, last := a&^(pageSize-1), (a+uint64(n)-1)&^(pageSize-1)
			if noExec[first] || noExec[last] {
				continue
			}
			if pg := first; !codePages[pg] || !codePages[last] {
				if codePages[pg] {
					pg = last
				}
				noExec[pg] = true
				img.NoExecPages = append(img.NoExecPages, pg)
				img.Warnings = append(img.Warnings, fmt.Sprintf("page %#x made non-executable: bytes %s at %#x would run %s, and no code the loader found is in that page", pg, hex.EncodeToString(r.bytes[off:off+n]), a, name))
				continue
			}
			where := "in bytes no code the loader found reaches"
			if o, ok := owner[a]; ok {
				where = fmt.Sprintf("inside the instruction at %#x", o)
			}
			return fmt.Errorf("vmm: bytes %s at %#x (%s) are not an instruction the loader can prove, yet would run %s natively if jumped to; if they are data, move them out of .text into .rodata; if a constant or displacement, change it; if code reached only through a jump table or pointer the loader cannot follow, give its function a symbol or build with -fno-jump-tables",
				hex.EncodeToString(r.bytes[off:off+n]), a, where, name)
		}
	}
	sort.Slice(img.NoExecPages, func(i, j int) bool { return img.NoExecPages[i] < img.NoExecPages[j] })
	return nil
}

package vmm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testSeg is one PT_LOAD segment of a crafted ELF.
type testSeg struct {
	addr  uint64
	data  []byte
	flags elf.ProgFlag
}

// testSym is a function symbol of a crafted ELF.
type testSym struct {
	name       string
	addr, size uint64
}

// craftELF writes a static x86-64 ELF: the segments, and a symbol table
// with the function symbols when there are any.
func craftELF(entry uint64, segs []testSeg, syms []testSym) []byte {
	le := binary.LittleEndian
	const ehsize, phsize, shsize = 64, 56, 64
	var body bytes.Buffer
	off := func() uint64 { return uint64(ehsize + phsize*len(segs) + body.Len()) }
	var phdrs bytes.Buffer
	for _, s := range segs {
		p := elf.Prog64{Type: uint32(elf.PT_LOAD), Flags: uint32(s.flags | elf.PF_R), Off: off(), Vaddr: s.addr, Paddr: s.addr,
			Filesz: uint64(len(s.data)), Memsz: uint64(len(s.data)), Align: 1}
		binary.Write(&phdrs, le, &p)
		body.Write(s.data)
	}
	var shdrs []elf.Section64
	shstrtab := []byte("\x00.symtab\x00.strtab\x00.shstrtab\x00")
	if len(syms) > 0 {
		strtab := []byte{0}
		var symtab bytes.Buffer
		binary.Write(&symtab, le, &elf.Sym64{})
		for _, s := range syms {
			binary.Write(&symtab, le, &elf.Sym64{Name: uint32(len(strtab)), Info: byte(elf.STB_GLOBAL)<<4 | byte(elf.STT_FUNC),
				Shndx: uint16(elf.SHN_ABS), Value: s.addr, Size: s.size})
			strtab = append(append(strtab, s.name...), 0)
		}
		shdrs = append(shdrs, elf.Section64{})
		shdrs = append(shdrs, elf.Section64{Name: 1, Type: uint32(elf.SHT_SYMTAB), Off: off(), Size: uint64(symtab.Len()), Link: 2, Info: 1, Addralign: 8, Entsize: 24})
		body.Write(symtab.Bytes())
		shdrs = append(shdrs, elf.Section64{Name: 9, Type: uint32(elf.SHT_STRTAB), Off: off(), Size: uint64(len(strtab)), Addralign: 1})
		body.Write(strtab)
		shdrs = append(shdrs, elf.Section64{Name: 17, Type: uint32(elf.SHT_STRTAB), Off: off(), Size: uint64(len(shstrtab)), Addralign: 1})
		body.Write(shstrtab)
	}
	for body.Len()%8 != 0 {
		body.WriteByte(0)
	}
	shoff := uint64(0)
	if len(shdrs) > 0 {
		shoff = off()
		for _, sh := range shdrs {
			binary.Write(&body, le, &sh)
		}
	}
	h := elf.Header64{Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: 1, Entry: entry,
		Phoff: ehsize, Shoff: shoff, Ehsize: ehsize, Phentsize: phsize, Phnum: uint16(len(segs)), Shentsize: shsize,
		Shnum: uint16(len(shdrs))}
	if len(shdrs) > 0 {
		h.Shstrndx = 3
	}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS], h.Ident[elf.EI_DATA], h.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), 1
	var out bytes.Buffer
	binary.Write(&out, le, &h)
	out.Write(phdrs.Bytes())
	out.Write(body.Bytes())
	return out.Bytes()
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLoaderClasses: one crafted guest per way issue 12's review got a
// native instruction past the linear sweep (or had its data rewritten).
// Each asserts a refusal naming the address, or the exact sites rewritten
// and pages made non-executable; each fails on the linear-sweep loader.
func TestLoaderClasses(t *testing.T) {
	text := func(code string) []testSeg {
		return []testSeg{{addr: imageBase, data: unhex(t, code), flags: elf.PF_X}}
	}
	// twoPages: page 0 holds code, page 1 (0x101000) bytes no code reaches.
	twoPages := func(code, page1 string) []testSeg {
		b := bytes.Repeat([]byte{0x90}, 2*pageSize)
		copy(b, unhex(t, code))
		copy(b[pageSize:], unhex(t, page1))
		return []testSeg{{addr: imageBase, data: b, flags: elf.PF_X}}
	}
	cases := []struct {
		name string
		segs []testSeg
		syms []testSym
		// want is a refusal's substrings; empty means accepted with
		// exactly sites (and noExec pages made non-executable).
		want   []string
		sites  []uint64
		noExec []uint64
	}{
		{name: "data byte e8 before rdtsc",
			// jmp +1; .byte 0xe8; rdtsc; ret: a sweep reads e8 0f 31 c3 .. as a call.
			segs: text("eb01 e8 0f31 c3 90909090"), sites: []uint64{imageBase + 3}},
		{name: "3-byte string before a function",
			// _start: call f; ret; "hi\0"; f: rdtsc; ret. A sweep reads 68 69 00 0f 31 as push.
			segs: text("e804000000 c3 686900 0f31 c3 90909090"), syms: []testSym{{"f", imageBase + 9, 3}},
			sites: []uint64{imageBase + 9}},
		{name: "rdtsc inside an immediate, reached by a jump into the middle",
			// mov $0x9090310f,%eax; jmp back to its second byte.
			segs: text("b80f319090 ebfa"), want: []string{"0x100001", "0x100000"}},
		{name: "66-prefixed jmp before rdtsc",
			segs: text("66e90000 0f31 c3 90"), want: []string{"0x100000", "operand-size (66) prefix"}},
		{name: "66-prefixed call before rdtsc",
			segs: text("66e80000 0f31 c3 90"), want: []string{"0x100000", "operand-size (66) prefix"}},
		{name: "mov to cr0 with a memory-form ModRM",
			segs: text("0f22050f310000 c3"), want: []string{"0x100000", "control or debug register"}},
		{name: "rdtsc split across two adjacent executable segments",
			// Segment 1: ret; mov $0x0f000000,%eax (a sweep ends in step);
			// segment 2 starts with 31: RAM holds 0f 31 at 0x100005.
			segs: []testSeg{{addr: imageBase, data: unhex(t, "c3 b80000000f"), flags: elf.PF_X},
				{addr: imageBase + 6, data: unhex(t, "31c3"), flags: elf.PF_X}},
			want: []string{"0x100005", "rdtsc"}},
		{name: "data 0f 31 in a page no code reaches",
			segs: twoPages("c3", "0f31"), noExec: []uint64{imageBase + pageSize}},
		{name: "data 0f 31 in a page with code",
			segs: text("c3 0f31 90"), want: []string{"0x100001", "rdtsc", ".rodata"}},
		{name: "rdrand bytes in a displacement",
			// mov 0xf0c70f(%rip),%eax: the proven instruction hides 0f c7 f0.
			segs: text("8b050fc7f000 c3"), want: []string{"0x100002", "inside the instruction at 0x100000"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, err := LoadELF(craftELF(imageBase, c.segs, c.syms))
			if len(c.want) > 0 {
				if err == nil {
					t.Fatalf("accepted, sites %v", img.Sites)
				}
				for _, w := range c.want {
					if !strings.Contains(err.Error(), w) {
						t.Fatalf("error %q; want it to contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []uint64
			for _, s := range img.Sites {
				got = append(got, s.Addr)
			}
			if fmt.Sprint(got) != fmt.Sprint(c.sites) {
				t.Fatalf("rewritten %#x; want %#x", got, c.sites)
			}
			desc := Describe(img)
			for _, pg := range c.noExec {
				if !strings.Contains(desc, fmt.Sprintf("%#08x-%#08x r--", pg, pg+pageSize)) {
					t.Fatalf("page %#x not made non-executable:\n%s", pg, desc)
				}
			}
			if len(c.noExec) == 0 && strings.Contains(desc, "non-executable") {
				t.Fatalf("a page made non-executable:\n%s", desc)
			}
			// The data stays as the guest wrote it unless it was proven code.
			if c.noExec != nil && !bytes.Equal(img.Segments[0].Data[pageSize:pageSize+2], []byte{0x0f, 0x31}) {
				t.Fatalf("data rewritten: % x", img.Segments[0].Data[pageSize:pageSize+2])
			}
		})
	}
}

// TestJumpTables: cases reached only through an absolute jump table are
// code; a table bounded only by its function drops entries that conflict.
func TestJumpTables(t *testing.T) {
	const rodata = imageBase + pageSize
	table := func(targets ...uint64) []byte {
		b := make([]byte, 8*len(targets))
		for i, a := range targets {
			binary.LittleEndian.PutUint64(b[8*i:], a)
		}
		return b
	}
	// f: cmp $1,%al; ja def; movzbl %al,%eax; jmp *rodata(,%rax,8);
	// case0: rdtsc; ret; case1: cpuid; ret; def: ret.
	code := unhex(t, "3c01 7710 0fb6c0 ff24c5"+hex.EncodeToString(binary.LittleEndian.AppendUint32(nil, rodata))+"0f31 c3 0fa2 c3 c3")
	const case0, case1 = imageBase + 14, imageBase + 17
	t.Run("bounded by cmp and ja", func(t *testing.T) {
		img, err := LoadELF(craftELF(imageBase, []testSeg{
			{addr: imageBase, data: code, flags: elf.PF_X},
			{addr: rodata, data: append(table(case0, case1), table(imageBase+15)...)}, // the third is past the bound: not read
		}, nil))
		if err != nil {
			t.Fatal(err)
		}
		if len(img.Sites) != 2 || img.Sites[0].Addr != case0 || img.Sites[1].Addr != case1 || len(img.Warnings) != 0 {
			t.Fatalf("sites %v warnings %q", img.Sites, img.Warnings)
		}
	})
	t.Run("bounded by the function symbol", func(t *testing.T) {
		nocmp := append(unhex(t, "9090 9090 909090"), code[7:]...)
		img, err := LoadELF(craftELF(imageBase, []testSeg{
			{addr: imageBase, data: nocmp, flags: elf.PF_X},
			// The third entry lands inside case0's rdtsc: speculative, dropped.
			{addr: rodata, data: table(case0, case1, case0+1, 0x200000)},
		}, []testSym{{"f", imageBase, uint64(len(nocmp))}}))
		if err != nil {
			t.Fatal(err)
		}
		if len(img.Sites) != 2 || img.Sites[0].Addr != case0 || img.Sites[1].Addr != case1 {
			t.Fatalf("sites %v", img.Sites)
		}
		if len(img.Warnings) != 1 || !strings.Contains(img.Warnings[0], "dropped") {
			t.Fatalf("warnings %q; want the conflicting entry dropped", img.Warnings)
		}
	})
	t.Run("table in a writable segment is not read", func(t *testing.T) {
		_, err := LoadELF(craftELF(imageBase, []testSeg{
			{addr: imageBase, data: code, flags: elf.PF_X},
			{addr: rodata, data: table(case0, case1), flags: elf.PF_W},
		}, nil))
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%#x", case0)) {
			t.Fatalf("got %v; want the unproven rdtsc at %#x refused", err, case0)
		}
	})
}

// TestGuestsLoadWithTheirSites: every built guest loads, nothing is made
// non-executable, and only nondet, cpu and redis (lwIP's rdrand) have
// rewritten instructions.
func TestGuestsLoadWithTheirSites(t *testing.T) {
	files, _ := filepath.Glob(guestPath("*"))
	if len(files) == 0 {
		t.Skip("no guests built (make -C guests)")
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		img, err := LoadELF(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := 0
		switch filepath.Base(name) {
		case "nondet.elf":
			want = 12
		case "cpu.elf":
			want = 2
		case "redis.elf":
			want = 1 // ftvm_lwip_rand: TCP's initial sequence numbers
		}
		if len(img.Sites) != want || len(img.NoExecPages) != 0 || len(img.Warnings) != 0 {
			t.Errorf("%s: %d sites (want %d), pages made non-executable %#x, warnings %q", name, len(img.Sites), want, img.NoExecPages, img.Warnings)
		}
	}
}

// execTriggers is the fuzz target's own check, independent of cfg.go: the
// addresses in executable pages (as the machine maps them) where the bytes
// of rdtsc, rdtscp, cpuid, rdrand, rdseed or rdpid start.
func execTriggers(img *Image) []uint64 {
	ram := map[uint64]byte{}
	exec := map[uint64]bool{}
	for _, s := range img.Segments {
		for i, c := range s.Data {
			ram[s.Addr+uint64(i)] = c
		}
		for a := s.Addr &^ (pageSize - 1); a < s.Addr+s.MemSize; a += pageSize {
			exec[a] = exec[a] || s.Exec
		}
	}
	for _, a := range img.NoExecPages {
		exec[a] = false
	}
	x := func(a uint64) bool { return exec[a&^(pageSize-1)] }
	var found []uint64
	for a := range ram {
		if !x(a) || ram[a] != 0x0f || !x(a+1) {
			continue
		}
		switch b1 := ram[a+1]; {
		case b1 == 0x31, b1 == 0xa2:
			found = append(found, a)
		case b1 == 0x01 && x(a+2) && ram[a+2] == 0xf9:
			found = append(found, a)
		case b1 == 0xc7 && x(a+2) && ram[a+2] >= 0xf0:
			found = append(found, a)
		}
	}
	return found
}

// FuzzLoader feeds code bytes, split into up to two executable segments
// (adjacent or apart), a read-only segment for jump tables, an entry point
// and function symbols to the loader, and checks every image it accepts: no
// trigger bytes at any executable offset, and every site rewritten.
func FuzzLoader(f *testing.F) {
	files, _ := filepath.Glob(guestPath("*"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		ef, err := elf.NewFile(bytes.NewReader(b))
		if err != nil {
			continue
		}
		var text, ro []byte
		for _, p := range ef.Progs {
			d := make([]byte, p.Filesz)
			p.ReadAt(d, 0)
			switch {
			case p.Type != elf.PT_LOAD:
			case p.Flags&elf.PF_X != 0 && p.Vaddr == imageBase:
				text = d
			case p.Flags&elf.PF_W == 0 && ro == nil:
				ro = d // linked at the page after the text here only if the text fits one page
			}
		}
		var syms []byte
		for _, s := range funcSyms(ef) {
			syms = binary.LittleEndian.AppendUint16(syms, uint16(s.Addr-imageBase))
			syms = binary.LittleEndian.AppendUint16(syms, uint16(s.Size))
		}
		f.Add(text, uint16(len(text)), uint8(0), uint16(ef.Entry-imageBase), syms, ro)
	}
	f.Add(unhex(f, "eb01e80f31c3"), uint16(6), uint8(0), uint16(0), []byte{}, []byte{})
	f.Add(unhex(f, "c3b80000000f31c3"), uint16(6), uint8(0), uint16(0), []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, code []byte, split uint16, gap uint8, entry uint16, syms, ro []byte) {
		if len(code) == 0 || len(code) > 1<<16 {
			return
		}
		split = min(split, uint16(len(code)))
		segs := []Segment{{Addr: imageBase, Data: append([]byte(nil), code[:split]...), Exec: true}}
		next := imageBase + uint64(split)
		if int(split) < len(code) {
			next += uint64(gap)
			segs = append(segs, Segment{Addr: next, Data: append([]byte(nil), code[split:]...), Exec: true})
			next += uint64(len(code) - int(split))
		}
		if len(ro) > 0 {
			roAddr := (next + pageSize - 1) &^ (pageSize - 1)
			segs = append(segs, Segment{Addr: roAddr, Data: append([]byte(nil), ro...)})
		}
		img := &Image{Entry: imageBase + uint64(entry), sites: map[uint64]*Site{}}
		for _, s := range segs {
			if len(s.Data) > 0 {
				s.MemSize = uint64(len(s.Data))
				img.Segments = append(img.Segments, s)
			}
		}
		var funcs []FuncSym
		for i := 0; i+4 <= len(syms); i += 4 {
			funcs = append(funcs, FuncSym{Name: "f", Addr: imageBase + uint64(binary.LittleEndian.Uint16(syms[i:])), Size: uint64(binary.LittleEndian.Uint16(syms[i+2:]))})
		}
		if err := img.proveCode(funcs); err != nil {
			return
		}
		if found := execTriggers(img); len(found) > 0 {
			t.Fatalf("accepted with trigger bytes at executable addresses %#x (sites %v)", found, img.Sites)
		}
		for _, s := range img.Sites {
			if !bytes.Equal(img.codeAt(s.Addr)[:s.Len()], s.Trap()) {
				t.Fatalf("site %v not rewritten", &s)
			}
		}
	})
}

// BenchmarkLoadELF: the time to load (prove, rewrite, scan) the largest guest.
func BenchmarkLoadELF(b *testing.B) {
	file := readGuest(b, "kvstore")
	for b.Loop() {
		if _, err := LoadELF(file); err != nil {
			b.Fatal(err)
		}
	}
}

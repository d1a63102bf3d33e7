package vmm

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
)

func readGuest(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(guestPath(name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// patchProg rewrites program header i of an ELF64 file with edit.
func patchProg(t *testing.T, file []byte, match func(elf.Prog64) bool, edit func(*elf.Prog64)) []byte {
	t.Helper()
	out := append([]byte(nil), file...)
	phoff := binary.LittleEndian.Uint64(out[0x20:])
	phnum := binary.LittleEndian.Uint16(out[0x38:])
	for i := 0; i < int(phnum); i++ {
		off := phoff + uint64(i)*56
		var p elf.Prog64
		binary.Read(bytes.NewReader(out[off:off+56]), binary.LittleEndian, &p)
		if match(p) {
			edit(&p)
			var b bytes.Buffer
			binary.Write(&b, binary.LittleEndian, &p)
			copy(out[off:], b.Bytes())
			return out
		}
	}
	t.Fatal("no matching program header")
	return nil
}

func isText(p elf.Prog64) bool { return p.Type == uint32(elf.PT_LOAD) && p.Flags&uint32(elf.PF_X) != 0 }
func isData(p elf.Prog64) bool { return p.Type == uint32(elf.PT_LOAD) && p.Flags&uint32(elf.PF_W) != 0 }

func TestLoadELFRejectsBadImages(t *testing.T) {
	hello := readGuest(t, "hello")
	textOff := func() uint64 {
		f, _ := elf.NewFile(bytes.NewReader(hello))
		for _, p := range f.Progs {
			if p.Flags&elf.PF_X != 0 {
				return p.Off
			}
		}
		return 0
	}()
	cases := []struct {
		name, want string
		file       []byte
	}{
		{"not an ELF", "not an ELF executable", []byte("#!/bin/sh\necho hi\n")},
		{"empty", "not an ELF executable", nil},
		{"truncated", "", hello[:len(hello)/3]},
		{"W+X", "writable and executable", patchProg(t, hello, isText, func(p *elf.Prog64) { p.Flags |= uint32(elf.PF_W) })},
		{"below image base", "outside the image area", patchProg(t, hello, isText, func(p *elf.Prog64) { p.Vaddr, p.Paddr = 0x1000, 0x1000 })},
		{"file bytes past end", "past the end", patchProg(t, hello, isText, func(p *elf.Prog64) { p.Filesz, p.Memsz = 1<<24, 1<<24 })},
		{"filesz > memsz", "exceeds memory size", patchProg(t, hello, isText, func(p *elf.Prog64) { p.Memsz = p.Filesz - 1 })},
		{"overlapping segments", "overlap", func() []byte {
			f, _ := elf.NewFile(bytes.NewReader(hello))
			var text elf.ProgHeader
			for _, p := range f.Progs {
				if p.Flags&elf.PF_X != 0 {
					text = p.ProgHeader
				}
			}
			// The read-only segment moved into the text, with the text's flags.
			isRO := func(p elf.Prog64) bool {
				return p.Type == uint32(elf.PT_LOAD) && p.Flags&uint32(elf.PF_X|elf.PF_W) == 0
			}
			return patchProg(t, hello, isRO, func(p *elf.Prog64) {
				p.Vaddr, p.Paddr, p.Flags = text.Vaddr+0x10, text.Vaddr+0x10, uint32(text.Flags)
			})
		}()},
		{"undecodable text", "cannot decode the instruction at 0x100000", func() []byte {
			b := append([]byte(nil), hello...)
			b[textOff] = 0x06 // push %es: invalid in 64-bit mode
			return b
		}()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := LoadELF(c.file)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.HasPrefix(err.Error(), "vmm: ") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q; want it to contain %q", err, c.want)
			}
		})
	}
}

// TestSweepRefusesWhatItCannotMakeDeterministic: bytes the sweep cannot
// decode as a whole instruction, and instructions whose result differs
// between hosts or backends that the VMM does not emulate, are load errors
// naming the address; endbr64 (gcc -fcf-protection) is a NOP the sweep
// steps over whole.
func TestSweepRefusesWhatItCannotMakeDeterministic(t *testing.T) {
	cases := []struct {
		name, code, want string // want "" means accepted
	}{
		{"endbr64 then rdtsc", "f30f1efa0f31", ""},
		{"endbr32", "f30f1efb90", ""},
		{"truncated at the segment's end", "900f", "not a whole instruction"},
		{"sgdt", "0f0100", "sgdt"},
		{"sidt", "0f0108", "sidt"},
		{"smsw", "0f01e0", "smsw"},
		{"str", "0f00c8", "str"},
		{"lsl", "0f03c1", "lsl"},
		{"xgetbv", "0f01d0", "xgetbv"},
		{"rdfsbase", "f3480faec0", "rdfsbase"},
		{"wrfsbase", "f3480faed0", "wrfsbase"},
		{"wrgsbase", "f30faed8", "wrgsbase"},
		{"fxsave", "0fae00", "fxsave"},
		{"xbegin", "c7f800000000", "xbegin"},
		{"vzeroupper (VEX)", "c5f877", "AVX"},
		{"vmovups (EVEX)", "62f17c481000", "AVX"},
		{"rdpru", "0f01fd", "cannot decode"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, err := hex.DecodeString(c.code)
			if err != nil {
				t.Fatal(err)
			}
			img := rawImage(code)
			err = img.proveCode(nil)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "0x10000")):
				t.Fatalf("got %v; want an error naming the address and %q", err, c.want)
			}
			if c.name == "endbr64 then rdtsc" && (len(img.Sites) != 1 || img.Sites[0].Addr != imageBase+4) {
				t.Fatalf("sites %v; want the rdtsc at %#x", img.Sites, imageBase+4)
			}
		})
	}
}

// TestImageTooBigForMemory: an image whose bss does not fit below the stack
// is refused before it runs, naming --mem.
func TestImageTooBigForMemory(t *testing.T) {
	requireBackend(t)
	big := patchProg(t, readGuest(t, "hello"), isData, func(p *elf.Prog64) { p.Memsz = 100 << 20 })
	img, err := LoadELF(big)
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(requireBackend(t), img, Config{}, nil)
	if err == nil || !strings.Contains(err.Error(), "raise --mem") {
		t.Fatalf("got %v", err)
	}
	if _, err := New(requireBackend(t), img, Config{MemSize: 256 << 20}, nil); err != nil {
		t.Fatalf("with 256 MiB: %v", err)
	}
}

// TestTripleFault breaks the IDT so that an exception cannot be delivered:
// the VM must stop with a triple-fault error naming the RIP, not hang.
func TestTripleFault(t *testing.T) {
	b := requireBackend(t)
	if b.Name() != "kvm" {
		t.Skipf("the IDT is read by the CPU only on KVM; the %s backend delivers exceptions as signals (run with FTVM_BACKEND=kvm)", b.Name())
	}
	m, err := New(b, loadGuest(t, "ud2"), Config{}, NewLiveWorld(context.Background(), nil, &bytes.Buffer{}))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	clear(privateMemory{m.priv}.slice(privIDT, 256*16))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = m.Run(ctx)
	var f *GuestFault
	if !errors.As(err, &f) || !strings.Contains(err.Error(), "triple fault") {
		t.Fatalf("got %v", err)
	}
}

func TestMatchNondet(t *testing.T) {
	cases := []struct {
		code       []byte
		kind       SiteKind
		reg, bits  int
		length     int
		recognised bool
	}{
		{[]byte{0x0f, 0x31}, SiteRDTSC, 0, 0, 2, true},
		{[]byte{0x0f, 0x01, 0xf9}, SiteRDTSCP, 0, 0, 3, true},
		{[]byte{0x0f, 0xa2}, SiteCPUID, 0, 0, 2, true},
		{[]byte{0x0f, 0xc7, 0xf0}, SiteRDRAND, 0, 32, 3, true},       // rdrand eax
		{[]byte{0x48, 0x0f, 0xc7, 0xf3}, SiteRDRAND, 3, 64, 4, true}, // rdrand rbx
		{[]byte{0x66, 0x0f, 0xc7, 0xf1}, SiteRDRAND, 1, 16, 4, true}, // rdrand cx
		{[]byte{0x49, 0x0f, 0xc7, 0xf8}, SiteRDSEED, 8, 64, 4, true}, // rdseed r8
		{[]byte{0xf3, 0x0f, 0xc7, 0xfa}, SiteRDPID, 2, 64, 4, true},  // rdpid rdx
		{[]byte{0x0f, 0xc7, 0x0e}, 0, 0, 0, 0, false},                // cmpxchg8b (%rsi): memory form
		{[]byte{0x0f, 0x0b}, 0, 0, 0, 0, false},                      // ud2
		{[]byte{0x90, 0x0f, 0x31}, 0, 0, 0, 0, false},                // nop first
	}
	for _, c := range cases {
		s, ok := matchNondet(c.code)
		if ok != c.recognised || ok && (s.Kind != c.kind || s.Reg != c.reg || s.OpBits != c.bits && c.bits != 0 || len(s.Orig) != c.length) {
			t.Errorf("% x: got %+v %v", c.code, s, ok)
		}
	}
}

func TestSetRegSemantics(t *testing.T) {
	r := replay.Regs{RAX: 0xffffffffffffffff, R9: 0x1111222233334444}
	setReg(&r, 0, 16, 0xabcd)             // 16-bit merges
	setReg(&r, 9, 32, 0xdeadbeefcafef00d) // 32-bit zero-extends
	if r.RAX != 0xffffffffffffabcd || r.R9 != 0xcafef00d {
		t.Fatalf("rax %#x r9 %#x", r.RAX, r.R9)
	}
	setReg(&r, 15, 64, 7)
	if r.R15 != 7 {
		t.Fatal("r15")
	}
}

// FuzzLoadELF: arbitrary files give an error or an image, never a panic.
func FuzzLoadELF(f *testing.F) {
	for _, g := range []string{"hello", "nondet"} {
		if b, err := os.ReadFile(guestPath(g)); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := LoadELF(b)
		if err == nil && (img.Entry == 0 || len(img.Segments) == 0) {
			t.Fatal("accepted an image without entry or segments")
		}
	})
}

package vmm

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"fmt"
	"sort"
)

// Segment is one PT_LOAD segment of a guest image.
type Segment struct {
	Addr    uint64 // guest-physical (= virtual) load address
	Data    []byte // the file bytes, after rewriting; len(Data) <= MemSize
	MemSize uint64 // bytes in memory; past len(Data) they are zero
	Write   bool
	Exec    bool
}

// Image is a guest program, loaded from ELF and rewritten, ready to copy into
// a VM. The same file always gives the same Image.
type Image struct {
	Entry    uint64
	Segments []Segment
	// Sites are the rewritten instructions, by address.
	Sites []Site
	// NoExecPages are pages of executable segments that the loader made
	// non-executable: they hold the bytes of an instruction the VMM traps
	// or refuses, and no code the loader found lies in them (cfg.go).
	NoExecPages []uint64
	// Warnings are suspicious findings that did not stop the load.
	Warnings []string
	// Hash is the SHA-256 of the ELF file as given, before rewriting.
	Hash [32]byte
	// End is the first address past the highest segment.
	End uint64

	sites map[uint64]*Site
}

// site returns the rewritten instruction whose trap leaves RIP at rip.
func (img *Image) site(rip uint64) (*Site, bool) {
	s, ok := img.sites[rip-2]
	return s, ok
}

// LoadELF parses a static x86-64 ELF executable, checks every segment
// against the guest ABI, and rewrites its non-deterministic instructions.
func LoadELF(file []byte) (*Image, error) {
	f, err := elf.NewFile(bytes.NewReader(file))
	if err != nil {
		return nil, fmt.Errorf("vmm: not an ELF executable: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Data != elf.ELFDATA2LSB {
		return nil, fmt.Errorf("vmm: ELF is %v %v %v; want ELFCLASS64 EM_X86_64 little-endian", f.Class, f.Machine, f.Data)
	}
	if f.Type != elf.ET_EXEC {
		return nil, fmt.Errorf("vmm: ELF type %v; want ET_EXEC (a static executable linked at %#x)", f.Type, imageBase)
	}
	img := &Image{Entry: f.Entry, Hash: sha256.Sum256(file), sites: map[uint64]*Site{}}
	for i, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
		case elf.PT_INTERP, elf.PT_DYNAMIC:
			return nil, fmt.Errorf("vmm: ELF program header %d is %v: guests must be static", i, p.Type)
		default:
			continue
		}
		if p.Memsz == 0 {
			continue
		}
		if p.Filesz > p.Memsz {
			return nil, fmt.Errorf("vmm: segment %d: file size %#x exceeds memory size %#x", i, p.Filesz, p.Memsz)
		}
		if p.Vaddr < imageBase || p.Vaddr+p.Memsz < p.Vaddr || p.Vaddr+p.Memsz > MaxMemory {
			return nil, fmt.Errorf("vmm: segment %d at [%#x, %#x) is outside the image area [%#x, %#x)", i, p.Vaddr, p.Vaddr+p.Memsz, imageBase, MaxMemory)
		}
		w, x := p.Flags&elf.PF_W != 0, p.Flags&elf.PF_X != 0
		if w && x {
			return nil, fmt.Errorf("vmm: segment %d at %#x is writable and executable: the rewriter needs W^X (link text and data into separate segments)", i, p.Vaddr)
		}
		if p.Off+p.Filesz < p.Off || p.Off+p.Filesz > uint64(len(file)) {
			return nil, fmt.Errorf("vmm: segment %d: file bytes [%#x, %#x) past the end of the %d-byte file", i, p.Off, p.Off+p.Filesz, len(file))
		}
		data := make([]byte, p.Filesz)
		copy(data, file[p.Off:p.Off+p.Filesz])
		img.Segments = append(img.Segments, Segment{Addr: p.Vaddr, Data: data, MemSize: p.Memsz, Write: w, Exec: x})
		img.End = max(img.End, p.Vaddr+p.Memsz)
	}
	if len(img.Segments) == 0 {
		return nil, fmt.Errorf("vmm: ELF has no loadable segment")
	}
	sort.Slice(img.Segments, func(i, j int) bool { return img.Segments[i].Addr < img.Segments[j].Addr })
	for i := 1; i < len(img.Segments); i++ {
		a, b := img.Segments[i-1], img.Segments[i]
		if b.Addr < a.Addr+a.MemSize {
			// The last writer would win in RAM, joining bytes the rewriter
			// swept separately (a 0f from one and a 31 from the other).
			return nil, fmt.Errorf("vmm: segments [%#x, %#x) and [%#x, %#x) overlap: each byte of the image must come from one segment (fix the linker script)", a.Addr, a.Addr+a.MemSize, b.Addr, b.Addr+b.MemSize)
		}
	}
	if err := img.checkPages(); err != nil {
		return nil, err
	}
	if err := img.proveCode(funcSyms(f)); err != nil {
		return nil, err
	}
	return img, nil
}

// funcSyms are the ELF's function symbols (none if it is stripped): the
// loader proves code from them as from the entry point.
func funcSyms(f *elf.File) []FuncSym {
	syms, err := f.Symbols()
	if err != nil {
		return nil
	}
	var funcs []FuncSym
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value != 0 {
			funcs = append(funcs, FuncSym{Name: s.Name, Addr: s.Value, Size: s.Size})
		}
	}
	return funcs
}

// checkPages refuses segments that would share a page with different
// permissions: page tables cannot give half a page W and the other half X.
func (img *Image) checkPages() error {
	owner := map[uint64]int{}
	for i, s := range img.Segments {
		for a := s.Addr &^ (pageSize - 1); a < s.Addr+s.MemSize; a += pageSize {
			if j, ok := owner[a]; ok {
				o := img.Segments[j]
				if o.Write != s.Write || o.Exec != s.Exec {
					return fmt.Errorf("vmm: segments at %#x and %#x share page %#x with different permissions: align segments to 4 KiB", o.Addr, s.Addr, a)
				}
			}
			owner[a] = i
		}
	}
	return nil
}

// perm is the page permission of a segment.
func (s *Segment) perm() pagePerm {
	switch {
	case s.Exec:
		return permUserRX
	case s.Write:
		return permUserRW
	default:
		return permUserR
	}
}

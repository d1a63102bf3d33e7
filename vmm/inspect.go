package vmm

import (
	"fmt"
	"strings"
)

// Describe is a person's view of an image: hash, entry, segments, and every
// rewritten instruction.
func Describe(img *Image) string {
	var b strings.Builder
	fmt.Fprintf(&b, "sha256 %x\nentry  %#x\nsegments:\n", img.Hash, img.Entry)
	for _, s := range img.Segments {
		perm := []byte("r--")
		if s.Write {
			perm[1] = 'w'
		}
		if s.Exec {
			perm[2] = 'x'
		}
		fmt.Fprintf(&b, "  %#08x-%#08x %s file %#x bytes\n", s.Addr, s.Addr+s.MemSize, perm, len(s.Data))
	}
	fmt.Fprintf(&b, "rewritten instructions: %d\n", len(img.Sites))
	for i := range img.Sites {
		fmt.Fprintf(&b, "  %s\n", img.Sites[i].String())
	}
	if len(img.NoExecPages) > 0 {
		fmt.Fprintf(&b, "pages made non-executable: %d\n", len(img.NoExecPages))
		for _, a := range img.NoExecPages {
			fmt.Fprintf(&b, "  %#08x-%#08x r--\n", a, a+pageSize)
		}
	}
	for _, w := range img.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	return b.String()
}

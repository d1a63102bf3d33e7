package replay

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPackageIsPure keeps package replay free of I/O (ARCHITECTURE.md): its
// non-test files may import only these packages. The file edge lives in
// replay/logfile.
func TestPackageIsPure(t *testing.T) {
	allowed := map[string]bool{
		"bufio": true, "bytes": true, "crypto/sha256": true, "encoding/binary": true,
		"errors": true, "fmt": true, "hash/crc32": true, "hash/crc64": true, "io": true,
		"slices": true, "sort": true, "strconv": true, "strings": true, "time": true,
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if !allowed[path] {
				t.Errorf("%s imports %q: package replay must stay pure", name, path)
			}
		}
	}
}

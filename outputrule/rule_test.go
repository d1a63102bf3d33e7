package outputrule

import (
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/ftvm/ftvm/replay"
)

// TestTranscripts runs testdata/*.txt. Regenerate the expected output with
// -rewrite and read the diff. Commands:
//
//	new max=N                         a fresh Rule bounded at N bytes; time 0
//	now D                             set the clock to D (a Go duration: 10ms)
//	tick D                            move the clock forward by D
//	hold seq=N console|packet "TEXT"  Hold an output with bytes TEXT (a Go string literal)
//	hold seq=N console|packet size=B  Hold an output of B bytes 'x'
//	ack N                             Ack(N): print what is released and with what delay
//	held                              print Held()
//
// hold and ack end with the held count and bytes.
func TestTranscripts(t *testing.T) {
	paths, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) {
			h := &harness{rule: New(1 << 20)}
			datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
				return h.run(t, d)
			})
		})
	}
}

type harness struct {
	rule *Rule
	now  time.Duration
}

func (h *harness) run(t *testing.T, d *datadriven.TestData) string {
	switch d.Cmd {
	case "new":
		var maxBytes int
		d.ScanArgs(t, "max", &maxBytes)
		h.rule, h.now = New(maxBytes), 0
		return "ok"
	case "now", "tick":
		if len(d.CmdArgs) != 1 {
			d.Fatalf(t, "%s takes one duration", d.Cmd)
		}
		dur, err := time.ParseDuration(d.CmdArgs[0].Key)
		if err != nil {
			d.Fatalf(t, "%v", err)
		}
		if d.Cmd == "now" {
			h.now = dur
		} else {
			h.now += dur
		}
		return fmt.Sprintf("now %v", h.now)
	case "hold":
		return h.hold(t, d)
	case "ack":
		if len(d.CmdArgs) != 1 {
			d.Fatalf(t, "ack takes one seq")
		}
		seq, err := strconv.ParseUint(d.CmdArgs[0].Key, 10, 64)
		if err != nil {
			d.Fatalf(t, "%v", err)
		}
		var b strings.Builder
		rel := h.rule.Ack(seq, h.now)
		for _, r := range rel {
			fmt.Fprintf(&b, "release seq=%d %s %s delay=%v\n", r.Seq, kindName(r.Kind), showData(r.Data), r.Delay)
		}
		if len(rel) == 0 {
			b.WriteString("nothing released\n")
		}
		return b.String() + h.held()
	case "held":
		return h.held()
	}
	d.Fatalf(t, "unknown command %q", d.Cmd)
	return ""
}

func (h *harness) hold(t *testing.T, d *datadriven.TestData) string {
	var seq uint64
	d.ScanArgs(t, "seq", &seq)
	var kind replay.OutputKind
	switch {
	case d.HasArg("console"):
		kind = replay.OutputConsole
	case d.HasArg("packet"):
		kind = replay.OutputPacket
	default:
		d.Fatalf(t, "hold needs console or packet")
	}
	var data []byte
	if d.HasArg("size") {
		var n int
		d.ScanArgs(t, "size", &n)
		data = bytes.Repeat([]byte{'x'}, n)
	} else {
		// The line parser splits a literal with spaces into several bare
		// arguments; join them back.
		var parts []string
		for _, a := range d.CmdArgs {
			if len(a.Vals) == 0 && a.Key != "console" && a.Key != "packet" {
				parts = append(parts, a.Key)
			}
		}
		s, err := strconv.Unquote(strings.Join(parts, " "))
		if err != nil {
			d.Fatalf(t, "hold needs a quoted string or size=N: %v", err)
		}
		data = []byte(s)
	}
	buf := append([]byte(nil), data...)
	err := h.rule.Hold(seq, kind, buf, h.now)
	// Hold must have copied: scribbling on the caller's buffer must not
	// change what is released later.
	for i := range buf {
		buf[i] = '!'
	}
	var b strings.Builder
	switch {
	case errors.Is(err, ErrFull):
		fmt.Fprintf(&b, "full: %v\n", err)
	case err != nil:
		fmt.Fprintf(&b, "error: %v\n", err)
	default:
		b.WriteString("held\n")
	}
	return b.String() + h.held()
}

func (h *harness) held() string {
	n, bytes := h.rule.Held()
	return fmt.Sprintf("held: %d outputs, %d bytes (acked %d)", n, bytes, h.rule.Acked())
}

func kindName(k replay.OutputKind) string {
	switch k {
	case replay.OutputConsole:
		return "console"
	case replay.OutputPacket:
		return "packet"
	}
	return fmt.Sprintf("kind(%d)", k)
}

func showData(b []byte) string {
	if len(b) > 24 {
		return fmt.Sprintf("<%d bytes>", len(b))
	}
	return strconv.Quote(string(b))
}

// TestManyOutputsStayBounded holds and releases many outputs with the
// acks always a little behind, as in a long run, and checks the FIFO's
// backing array does not grow with the number of outputs.
func TestManyOutputsStayBounded(t *testing.T) {
	r := New(1 << 10)
	var now time.Duration
	for seq := uint64(1); seq <= 100000; seq++ {
		now += time.Microsecond
		if err := r.Hold(seq, replay.OutputPacket, []byte{byte(seq)}, now); err != nil {
			t.Fatalf("hold %d: %v", seq, err)
		}
		if seq > 8 {
			rel := r.Ack(seq-8, now)
			if len(rel) != 1 || rel[0].Seq != seq-8 || rel[0].Data[0] != byte(seq-8) || rel[0].Delay != 8*time.Microsecond {
				t.Fatalf("ack %d released %+v", seq-8, rel)
			}
		}
	}
	if n, b := r.Held(); n != 8 || b != 8 {
		t.Fatalf("held %d outputs, %d bytes, want 8, 8", n, b)
	}
	if cap(r.held) > 64 {
		t.Fatalf("the FIFO grew to %d slots for 8 held outputs", cap(r.held))
	}
}

// TestPackageIsPure keeps the Output Rule a pure core (ARCHITECTURE.md):
// no I/O imports and no reading of the clock.
func TestPackageIsPure(t *testing.T) {
	allowed := map[string]bool{"errors": true, "fmt": true, "time": true, "github.com/ftvm/ftvm/replay": true}
	forbidden := map[string]bool{"Now": true, "Since": true, "Until": true, "Sleep": true, "After": true, "AfterFunc": true, "NewTimer": true, "NewTicker": true, "Tick": true}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if !allowed[path] {
				t.Errorf("%s imports %q: package outputrule must stay pure", name, path)
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok {
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == "time" && forbidden[sel.Sel.Name] {
					t.Errorf("%s uses time.%s: the caller gives the time", name, sel.Sel.Name)
				}
			}
			return true
		})
	}
}

package replay

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
)

// TestTranscripts runs testdata/*.txt: a recorder over a scripted live
// world writes a log, a replayer replays it, and each command prints what
// happened. Regenerate the expected output with -rewrite and read the diff.
//
// Commands:
//
//	new [checkpoint-every=K]        a fresh log and recorder
//	start [image=S cpuid=S config=S vm=ID]
//	                                 Recorder.Start; digests are sha256(S)
//	record exit=N rip=X ANSWER [REG=V ...]
//	                                 one World call, answered live with ANSWER:
//	                                 tsc=V | random=V [rdseed] | clock=V [realtime] |
//	                                 console-read="..." [eof] [cap=N] | wait=V |
//	                                 output="..." [packet] | power-off=S
//	checkpoint                       Recorder.CheckpointNext
//	flush                            flush the log without finishing it
//	finish [digest=S]                Recorder.Finish(sha256(S))
//	log                              decode the whole log and print it
//	corrupt truncate=N | flip=OFF    cut the log to N bytes / flip bit 0 of byte OFF
//	replay-start [image=S cpuid=S config=S]
//	                                 a fresh replayer over the log; VerifyStart
//	replay exit=N rip=X REQUEST [REG=V ...]
//	                                 one World call of the replayer: tsc | random [rdseed] |
//	                                 clock [realtime] | console-read [cap=N] | wait |
//	                                 output="..." [packet] | power-off=S
//	replay-finish [digest=S]         Replayer.Finish(sha256(S))
//	summary                          the recorder's and the replayer's summaries
func TestTranscripts(t *testing.T) {
	paths, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) {
			h := &harness{}
			h.reset(0)
			datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
				return h.run(t, d)
			})
		})
	}
}

type harness struct {
	live    scriptedWorld
	log     bytes.Buffer
	sink    *teeSink
	rec     *Recorder
	printed int // entries of sink.entries already printed
	rp      *Replayer
}

// teeSink encodes entries and keeps a copy for printing.
type teeSink struct {
	enc     *Encoder
	entries []Entry
}

func (s *teeSink) Append(e Entry) error {
	if err := s.enc.Append(e); err != nil {
		return err
	}
	e.Data = append([]byte(nil), e.Data...)
	s.entries = append(s.entries, e)
	return nil
}
func (s *teeSink) Flush() error { return s.enc.Flush() }
func (s *teeSink) Bytes() int64 { return s.enc.Bytes() }
func (h *harness) reset(every int) {
	h.live = scriptedWorld{}
	h.log.Reset()
	h.sink = &teeSink{enc: NewEncoder(&h.log)}
	h.rec = NewRecorder(&h.live, h.sink, RecorderConfig{CheckpointEvery: every})
	h.printed = 0
	h.rp = nil
}

func (h *harness) run(t *testing.T, d *datadriven.TestData) string {
	switch d.Cmd {
	case "new":
		every := 0
		d.MaybeScanArgs(t, "checkpoint-every", &every)
		h.reset(every)
		return "ok"
	case "start":
		err := h.rec.Start(startInfo(t, d))
		return h.newEntries(err)
	case "record":
		return h.record(t, d)
	case "checkpoint":
		h.rec.CheckpointNext()
		return "ok"
	case "flush":
		if err := h.sink.Flush(); err != nil {
			return "error: " + err.Error()
		}
		return fmt.Sprintf("ok: %d bytes", h.log.Len())
	case "finish":
		return h.newEntries(h.rec.Finish(digestArg(t, d, "digest", "final")))
	case "log":
		dec := NewDecoder(bytes.NewReader(h.log.Bytes()))
		var b strings.Builder
		for {
			e, err := dec.Next()
			if err != nil {
				fmt.Fprintf(&b, "%v (%d bytes, %d frames)\n", err, dec.Bytes(), dec.Frames())
				break
			}
			fmt.Fprintln(&b, e)
		}
		return b.String()
	case "corrupt":
		data := h.log.Bytes()
		var n int
		switch {
		case d.MaybeScanArgs(t, "truncate", &n):
			h.log.Truncate(n)
			return fmt.Sprintf("log cut to %d bytes", n)
		case d.MaybeScanArgs(t, "flip", &n):
			data[n] ^= 1
			return fmt.Sprintf("flipped bit 0 of byte %d", n)
		}
		d.Fatalf(t, "corrupt needs truncate= or flip=")
	case "replay-start":
		h.rp = NewReplayer(NewDecoder(bytes.NewReader(bytes.Clone(h.log.Bytes()))))
		rec, err := h.rp.VerifyStart(startInfo(t, d))
		if err != nil {
			return "error: " + err.Error()
		}
		return fmt.Sprintf("ok: vm=%q", rec.VMID)
	case "replay":
		return h.replay(t, d)
	case "replay-finish":
		if err := h.rp.Finish(digestArg(t, d, "digest", "final")); err != nil {
			return "error: " + err.Error()
		}
		return "ok"
	case "summary":
		s := "record: " + h.rec.Summary().String()
		if h.rp != nil {
			s += "\nreplay: " + h.rp.Summary().String()
		}
		return s
	}
	d.Fatalf(t, "unknown command %q", d.Cmd)
	return ""
}

// newEntries prints the entries logged since the last call, then err.
func (h *harness) newEntries(err error) string {
	var b strings.Builder
	for _, e := range h.sink.entries[h.printed:] {
		fmt.Fprintln(&b, e)
	}
	h.printed = len(h.sink.entries)
	if err != nil {
		fmt.Fprintf(&b, "error: %v\n", err)
	}
	if b.Len() == 0 {
		return "ok"
	}
	return b.String()
}

func (h *harness) record(t *testing.T, d *datadriven.TestData) string {
	p := point(t, d)
	w := &h.live
	w.trace = w.trace[:0]
	var err error
	switch {
	case d.HasArg("tsc"):
		w.value = uintArg(t, d, "tsc")
		_, err = h.rec.TSC(p)
	case d.HasArg("random"):
		w.value = uintArg(t, d, "random")
		_, err = h.rec.Random(p, randKind(d))
	case d.HasArg("clock"):
		w.value = uintArg(t, d, "clock")
		_, err = h.rec.Clock(p, clockID(d))
	case d.HasArg("console-read"):
		w.input, w.eof = []byte(stringArg(t, d, "console-read")), d.HasArg("eof")
		_, _, err = h.rec.ConsoleRead(p, make([]byte, capArg(t, d)))
	case d.HasArg("wait"):
		w.value = uintArg(t, d, "wait")
		_, err = h.rec.Wait(p, 0)
	case d.HasArg("disk-read"):
		w.disk = []byte(stringArg(t, d, "disk-read"))
		offs, bufs := diskReads(t, d)
		err = h.rec.DiskRead(p, offs, bufs)
	case d.HasArg("output"):
		err = h.rec.Output(p, outputKind(d), []byte(stringArg(t, d, "output")))
	case d.HasArg("power-off"):
		err = h.rec.PowerOff(p, int(intArg(t, d, "power-off")))
	default:
		d.Fatalf(t, "record needs an answer")
	}
	out := h.newEntries(err)
	for _, line := range w.trace {
		out += "live: " + line + "\n"
	}
	return out
}

func (h *harness) replay(t *testing.T, d *datadriven.TestData) string {
	p := point(t, d)
	var (
		out string
		err error
	)
	switch {
	case d.HasArg("tsc"):
		var v uint64
		v, err = h.rp.TSC(p)
		out = fmt.Sprintf("tsc %d", v)
	case d.HasArg("random"):
		var v uint64
		v, err = h.rp.Random(p, randKind(d))
		out = fmt.Sprintf("random %#x", v)
	case d.HasArg("clock"):
		var v uint64
		v, err = h.rp.Clock(p, clockID(d))
		out = fmt.Sprintf("clock %d", v)
	case d.HasArg("console-read"):
		buf := make([]byte, capArg(t, d))
		var (
			n   int
			eof bool
		)
		n, eof, err = h.rp.ConsoleRead(p, buf)
		out = fmt.Sprintf("console-read %q eof=%t", buf[:n], eof)
	case d.HasArg("wait"):
		var v WaitResult
		v, err = h.rp.Wait(p, 0)
		out = fmt.Sprintf("wait %d", v)
	case d.HasArg("disk-read"):
		offs, bufs := diskReads(t, d)
		err = h.rp.DiskRead(p, offs, bufs)
		out = "disk-read"
		for _, b := range bufs {
			out += fmt.Sprintf(" %q", b)
		}
	case d.HasArg("output"):
		err = h.rp.Output(p, outputKind(d), []byte(stringArg(t, d, "output")))
		out = "output checked and dropped"
	case d.HasArg("power-off"):
		err = h.rp.PowerOff(p, int(intArg(t, d, "power-off")))
		out = "power-off"
	default:
		d.Fatalf(t, "replay needs a request")
	}
	if err != nil {
		return "error: " + err.Error()
	}
	return out
}

// scriptedWorld is a live World that answers what the transcript says and
// notes what it is told.
type scriptedWorld struct {
	value   uint64
	input   []byte
	eof     bool
	packets [][]byte
	disk    []byte // what DiskRead hands out, buffer after buffer
	trace   []string
}

func (w *scriptedWorld) DiskRead(_ ExecPoint, offs []uint64, bufs [][]byte) error {
	rest := w.disk
	for i, b := range bufs {
		w.trace = append(w.trace, fmt.Sprintf("read %d bytes at %d", len(b), offs[i]))
		rest = rest[copy(b, rest):]
	}
	return nil
}

func (w *scriptedWorld) NetReceive(_ ExecPoint, frames [][]byte, lens []int) (int, error) {
	n := 0
	for ; n < len(w.packets) && n < len(frames); n++ {
		lens[n] = copy(frames[n], w.packets[n])
	}
	return n, nil
}

func (w *scriptedWorld) TSC(ExecPoint) (uint64, error)              { return w.value, nil }
func (w *scriptedWorld) Random(ExecPoint, RandKind) (uint64, error) { return w.value, nil }
func (w *scriptedWorld) Clock(ExecPoint, ClockID) (uint64, error)   { return w.value, nil }
func (w *scriptedWorld) Wait(ExecPoint, uint64) (WaitResult, error) { return WaitResult(w.value), nil }
func (w *scriptedWorld) ConsoleRead(_ ExecPoint, buf []byte) (int, bool, error) {
	return copy(buf, w.input), w.eof, nil
}
func (w *scriptedWorld) Output(_ ExecPoint, kind OutputKind, data []byte) error {
	w.trace = append(w.trace, fmt.Sprintf("output %v %q", kind, data))
	return nil
}
func (w *scriptedWorld) HoldOutput(_ ExecPoint, seq uint64, kind OutputKind, data []byte) error {
	w.trace = append(w.trace, fmt.Sprintf("hold output %v %q until seq %d is acked", kind, data, seq))
	return nil
}
func (w *scriptedWorld) PowerOff(_ ExecPoint, status int) error {
	w.trace = append(w.trace, fmt.Sprintf("power-off status=%d", status))
	return nil
}

// point reads exit=, rip= and any register arguments.
func point(t *testing.T, d *datadriven.TestData) ExecPoint {
	var p ExecPoint
	p.Exit = uintArg(t, d, "exit")
	regs := p.Regs.Array()
	for i, name := range RegNames {
		if d.HasArg(name) {
			regs[i] = uintArg(t, d, name)
		}
	}
	p.Regs = regsFromArray(regs)
	return p
}

func startInfo(t *testing.T, d *datadriven.TestData) StartInfo {
	info := StartInfo{
		ImageSHA256:  digestArg(t, d, "image", "image"),
		CPUIDDigest:  digestArg(t, d, "cpuid", "cpuid"),
		ConfigDigest: digestArg(t, d, "config", "config"),
	}
	d.MaybeScanArgs(t, "vm", &info.VMID)
	return info
}

// digestArg is sha256 of the argument's text, or of def without one.
func digestArg(t *testing.T, d *datadriven.TestData, key, def string) [32]byte {
	d.MaybeScanArgs(t, key, &def)
	return sha256.Sum256([]byte(def))
}

func uintArg(t *testing.T, d *datadriven.TestData, key string) uint64 {
	var s string
	d.ScanArgs(t, key, &s)
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		d.Fatalf(t, "%s: %v", key, err)
	}
	return v
}

func intArg(t *testing.T, d *datadriven.TestData, key string) int64 {
	var s string
	d.ScanArgs(t, key, &s)
	v, err := strconv.ParseInt(s, 0, 64)
	if err != nil {
		d.Fatalf(t, "%s: %v", key, err)
	}
	return v
}

// stringArg reads a Go-quoted string argument ("a\x20b" for a space).
func stringArg(t *testing.T, d *datadriven.TestData, key string) string {
	var s string
	d.ScanArgs(t, key, &s)
	u, err := strconv.Unquote(s)
	if err != nil {
		d.Fatalf(t, "%s=%s: %v", key, s, err)
	}
	return u
}

func capArg(t *testing.T, d *datadriven.TestData) int {
	n := 64
	d.MaybeScanArgs(t, "cap", &n)
	return n
}

func randKind(d *datadriven.TestData) RandKind {
	if d.HasArg("rdseed") {
		return RandRDSEED
	}
	return RandRDRAND
}

func clockID(d *datadriven.TestData) ClockID {
	if d.HasArg("realtime") {
		return ClockRealtime
	}
	return ClockMonotonic
}

// diskReads reads lens=(A,B,...), the buffers' sizes, and at=(X,Y,...), their
// offsets, 0 where absent).
func diskReads(t *testing.T, d *datadriven.TestData) ([]uint64, [][]byte) {
	var lens, at []string
	d.ScanArgs(t, "lens", &lens)
	d.MaybeScanArgs(t, "at", &at)
	offs, bufs := make([]uint64, len(lens)), make([][]byte, len(lens))
	for i, l := range lens {
		n, err := strconv.Atoi(l)
		if err != nil {
			d.Fatalf(t, "lens: %v", err)
		}
		bufs[i] = make([]byte, n)
		if i < len(at) {
			if offs[i], err = strconv.ParseUint(at[i], 0, 64); err != nil {
				d.Fatalf(t, "at: %v", err)
			}
		}
	}
	return offs, bufs
}

func outputKind(d *datadriven.TestData) OutputKind {
	if d.HasArg("packet") {
		return OutputPacket
	}
	if d.HasArg("disk") {
		return OutputDisk
	}
	return OutputConsole
}

package replay

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// Source gives a Replayer the entries of a recording in order: a Decoder
// over a log file, or the logging channel.
type Source interface {
	// Next returns the next entry, or io.EOF after the last. It may block
	// until an entry arrives.
	Next() (Entry, error)
}

// ErrStartMismatch is wrapped by VerifyStart's error when the recording
// ran another guest image, CPUID table or configuration.
var ErrStartMismatch = errors.New("the recording is not of this VM")

// ErrIncompleteLog is wrapped by Finish's error when the log ends without
// its End entry (the recording was cut short).
var ErrIncompleteLog = errors.New("the log ends without its end entry")

// Replayer is the World of a replaying VMM: it answers every question from
// the recording and checks, before each answer, that the guest asks it at
// the recorded execution point (exit number and RIP) for the recorded kind
// of thing. It keeps the same PointHash as the recorder and compares it,
// and the full registers, at every Checkpoint. Outputs are checked against
// the recorded length and hash and dropped.
//
// Call VerifyStart first, before the guest runs, then the World methods on
// the vCPU thread, then Finish. A divergence is a *DivergenceError; after
// any error every later call returns that error.
type Replayer struct {
	src Source

	state    runState
	lastSeq  uint64    // Seq of the last entry consumed
	last     ExecPoint // the last point given
	hash     PointHash
	verified uint64 // exit of the last checkpoint that matched; 0 at the start
	summary  Summary
	err      error
}

var _ World = (*Replayer)(nil)

// NewReplayer returns a Replayer reading the recording from src.
func NewReplayer(src Source) *Replayer {
	return &Replayer{src: src, hash: NewPointHash()}
}

// VerifyStart reads the recording's Start entry and compares it with this
// VMM's: the guest image, the CPUID table and the configuration must be the
// same, or the replay would diverge for reasons that have nothing to do
// with the run. It returns the recording's StartInfo (its VMID is not
// compared). The error names every field that differs and wraps
// ErrStartMismatch.
func (r *Replayer) VerifyStart(mine StartInfo) (StartInfo, error) {
	if r.err != nil {
		return StartInfo{}, r.err
	}
	if r.state != stateNew {
		return StartInfo{}, errors.New("replay: replayer: VerifyStart called twice")
	}
	e, err := r.next()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return StartInfo{}, r.fail(fmt.Errorf("%w; the replay stopped before the start entry", err))
	}
	if e.Kind != KindStart {
		return StartInfo{}, r.fail(fmt.Errorf("replay: the log begins with %v, not a start entry: %w", e, ErrCorrupt))
	}
	rec := e.Start
	var diffs []string
	for _, f := range []struct {
		what       string
		theirs, my [32]byte
	}{
		{"guest image", rec.ImageSHA256, mine.ImageSHA256},
		{"cpuid table", rec.CPUIDDigest, mine.CPUIDDigest},
		{"configuration", rec.ConfigDigest, mine.ConfigDigest},
	} {
		if f.theirs != f.my {
			diffs = append(diffs, fmt.Sprintf("%s differs (recorded %x, here %x)", f.what, f.theirs, f.my))
		}
	}
	if diffs != nil {
		return rec, r.fail(fmt.Errorf("replay: %s: %w", strings.Join(diffs, "; "), ErrStartMismatch))
	}
	r.state = stateRunning
	return rec, nil
}

// Finish checks the end of the recording against the end of the replay:
// the log must hold (after a Checkpoint of the last point, if the recorder
// wrote one) an End entry whose digest is finalDigest. Call it once the
// guest has stopped.
func (r *Replayer) Finish(finalDigest [32]byte) error {
	if r.err != nil {
		return r.err
	}
	switch r.state {
	case stateNew:
		return errors.New("replay: replayer: Finish before VerifyStart")
	case stateFinished:
		return errors.New("replay: replayer: Finish called twice")
	}
	got := Event{Kind: KindEnd, Detail: "digest=" + shortHex(finalDigest)}
	e, err := r.next()
	if err == nil && e.Kind == KindCheckpoint {
		if err := r.checkCheckpoint(&r.last, got, &e); err != nil {
			return err
		}
		e, err = r.next()
	}
	if err == io.EOF {
		return r.fail(fmt.Errorf("replay: after exit %d (log seq %d): %w", r.last.Exit, r.lastSeq, ErrIncompleteLog))
	}
	if err != nil {
		return r.fail(fmt.Errorf("%w; the replay stopped at the end of the run after exit %d", err, r.last.Exit))
	}
	if e.Kind != KindEnd {
		return r.fail(&DivergenceError{Exit: r.last.Exit, Seq: e.Seq, Mismatch: MismatchGuestEnded, Want: eventOf(&e), Got: got})
	}
	if e.Digest != finalDigest {
		want := Event{Kind: KindEnd, Detail: "digest=" + shortHex(e.Digest)}
		return r.fail(&DivergenceError{Exit: r.last.Exit, Seq: e.Seq, Mismatch: MismatchDigest, Want: want, Got: got})
	}
	r.state = stateFinished
	return nil
}

// LastSeq is the Seq of the last entry the replay consumed: after Output,
// the entry of that output (the one whose ack releases it on the primary).
func (r *Replayer) LastSeq() uint64 { return r.lastSeq }

// Summary returns what the replayer has consumed so far.
func (r *Replayer) Summary() Summary {
	s := r.summary
	if c, ok := r.src.(byteCounter); ok {
		s.Bytes = c.Bytes()
	}
	return s
}

// TSC implements World.
func (r *Replayer) TSC(p ExecPoint) (uint64, error) {
	e, err := r.expect(&p, KindTSC)
	if err != nil {
		return 0, err
	}
	return e.Value, nil
}

// Random implements World.
func (r *Replayer) Random(p ExecPoint, kind RandKind) (uint64, error) {
	e, err := r.expect(&p, KindRandom)
	if err != nil {
		return 0, err
	}
	if e.RandKind != kind {
		return 0, r.requestDiffers(&p, &e, e.RandKind.String(), kind.String())
	}
	return e.Value, nil
}

// Clock implements World.
func (r *Replayer) Clock(p ExecPoint, c ClockID) (uint64, error) {
	e, err := r.expect(&p, KindClock)
	if err != nil {
		return 0, err
	}
	if e.Clock != c {
		return 0, r.requestDiffers(&p, &e, e.Clock.String(), c.String())
	}
	return e.Value, nil
}

// ConsoleRead implements World: it copies the recorded input into buf.
func (r *Replayer) ConsoleRead(p ExecPoint, buf []byte) (int, bool, error) {
	e, err := r.expect(&p, KindConsoleRead)
	if err != nil {
		return 0, false, err
	}
	if len(e.Data) > len(buf) {
		return 0, false, r.requestDiffers(&p, &e,
			fmt.Sprintf("%d bytes of input", len(e.Data)), fmt.Sprintf("a buffer of %d bytes", len(buf)))
	}
	return copy(buf, e.Data), e.EOF, nil
}

// NetReceive implements World: it copies the recorded batch of frames.
func (r *Replayer) NetReceive(p ExecPoint, frames [][]byte, lens []int) (int, error) {
	e, err := r.expect(&p, KindNetRX)
	if err != nil {
		return 0, err
	}
	n := 0
	for rest := e.Data; len(rest) > 0; n++ {
		frame, next, ok := NextFrame(rest)
		if !ok {
			return 0, r.fail(fmt.Errorf("replay: net-rx entry seq %d at exit %d: frame %d is malformed: %w", e.Seq, p.Exit, n, ErrCorrupt))
		}
		if n >= len(frames) || n >= len(lens) || len(frame) > len(frames[n]) {
			return 0, r.requestDiffers(&p, &e, "a larger receive batch", fmt.Sprintf("%d buffers", min(len(frames), len(lens))))
		}
		lens[n] = copy(frames[n], frame)
		rest = next
	}
	return n, nil
}

// DiskRead implements World: it copies the recorded data into the buffers,
// which must add up to exactly what was recorded.
func (r *Replayer) DiskRead(p ExecPoint, offs []uint64, bufs [][]byte) error {
	e, err := r.expect(&p, KindDiskRead)
	if err != nil {
		return err
	}
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	if total != len(e.Data) {
		return r.requestDiffers(&p, &e, fmt.Sprintf("%d bytes of disk data", len(e.Data)), fmt.Sprintf("reads of %d bytes", total))
	}
	rest := e.Data
	for _, b := range bufs {
		rest = rest[copy(b, rest):]
	}
	return nil
}

// Wait implements World; the recorded result comes back at once.
func (r *Replayer) Wait(p ExecPoint, timeoutNS uint64) (WaitResult, error) {
	e, err := r.expect(&p, KindWait)
	if err != nil {
		return 0, err
	}
	return WaitResult(e.Value), nil
}

// Output implements World: it checks the output's kind, length and hash
// against the recording and drops it.
func (r *Replayer) Output(p ExecPoint, kind OutputKind, data []byte) error {
	e, err := r.expect(&p, KindOutput)
	if err != nil {
		return err
	}
	hash := OutputHash(data)
	if e.OutputKind != kind || e.Length != uint64(len(data)) || e.Hash != hash {
		want := eventOf(&e)
		want.Detail = fmt.Sprintf("%v len=%d hash=%#016x", e.OutputKind, e.Length, e.Hash)
		got := pointEvent(&p, KindOutput)
		got.Detail = fmt.Sprintf("%v len=%d hash=%#016x", kind, len(data), hash)
		return r.fail(&DivergenceError{Exit: p.Exit, Seq: e.Seq, Mismatch: MismatchOutput, Want: want, Got: got})
	}
	r.summary.DroppedOutputs++
	r.summary.DroppedOutputBytes += uint64(len(data))
	return nil
}

// PowerOff implements World: it checks the status against the recording.
// Only Finish may follow.
func (r *Replayer) PowerOff(p ExecPoint, status int) error {
	e, err := r.expect(&p, KindPowerOff)
	if err != nil {
		return err
	}
	if e.Status != int64(status) {
		return r.requestDiffers(&p, &e, fmt.Sprintf("status=%d", e.Status), fmt.Sprintf("status=%d", status))
	}
	r.state = statePoweredOff
	return nil
}

// expect takes the guest's call for kind at p: it hashes p, checks a
// Checkpoint if one comes first, and returns the entry for p after checking
// that it is at p's exit and RIP and of kind.
func (r *Replayer) expect(p *ExecPoint, kind Kind) (Entry, error) {
	if r.err != nil {
		return Entry{}, r.err
	}
	switch r.state {
	case stateNew:
		return Entry{}, r.fail(fmt.Errorf("replay: replaying %v at exit %d: VerifyStart was not called", kind, p.Exit))
	case statePoweredOff, stateFinished:
		return Entry{}, r.fail(fmt.Errorf("replay: replaying %v at exit %d: the guest has already stopped", kind, p.Exit))
	}
	if p.Exit == 0 || p.Exit <= r.last.Exit {
		return Entry{}, r.fail(fmt.Errorf("replay: replaying %v: exit %d is not after the previous exit %d", kind, p.Exit, r.last.Exit))
	}
	r.last = *p
	r.summary.Exits++
	r.hash.Add(p)
	got := pointEvent(p, kind)

	e, err := r.next()
	if err == nil && e.Kind == KindCheckpoint {
		if e.Exit < p.Exit {
			// Only Finish writes a checkpoint of an earlier exit than the
			// next call's; if End follows, the recording stopped there.
			if end, err := r.next(); err == nil && end.Kind == KindEnd {
				return Entry{}, r.fail(&DivergenceError{Exit: p.Exit, Seq: end.Seq, Mismatch: MismatchLogEnded, Want: eventOf(&end), Got: got})
			}
		}
		if err := r.checkCheckpoint(p, got, &e); err != nil {
			return Entry{}, err
		}
		e, err = r.next()
	}
	if err == io.EOF {
		return Entry{}, r.fail(&DivergenceError{Exit: p.Exit, Mismatch: MismatchLogEnded, Want: Event{Detail: "end of log"}, Got: got})
	}
	if err != nil {
		return Entry{}, r.fail(fmt.Errorf("%w; the replay stopped at exit %d", err, p.Exit))
	}
	want := eventOf(&e)
	var m Mismatch
	switch {
	case e.Kind == KindEnd:
		m = MismatchLogEnded
	case e.Exit != p.Exit:
		m = MismatchExit
	case e.RIP != p.Regs.RIP:
		m = MismatchRIP
	case e.Kind != kind:
		m = MismatchKind
	}
	if m != 0 {
		return Entry{}, r.fail(&DivergenceError{Exit: p.Exit, Seq: e.Seq, Mismatch: m, Want: want, Got: got})
	}
	return e, nil
}

// checkCheckpoint compares the Checkpoint c with the point p the guest is
// at (got describes the guest's step there) and with the hash of the points
// since the last checkpoint, then starts a new hash.
func (r *Replayer) checkCheckpoint(p *ExecPoint, got Event, c *Entry) error {
	want := eventOf(c)
	if c.Exit != p.Exit {
		return r.fail(&DivergenceError{Exit: p.Exit, Seq: c.Seq, Mismatch: MismatchExit, Want: want, Got: got})
	}
	if diffs := diffRegs(&c.Regs, &p.Regs); diffs != nil {
		return r.fail(&DivergenceError{Exit: p.Exit, Seq: c.Seq, Mismatch: MismatchRegs, Want: want, Got: got, Regs: diffs})
	}
	if sum := r.hash.Sum(); sum != c.Hash {
		want.Detail = fmt.Sprintf("hash=%#016x", c.Hash)
		got.Detail = fmt.Sprintf("hash=%#016x", sum)
		return r.fail(&DivergenceError{Exit: p.Exit, Seq: c.Seq, Mismatch: MismatchRegsHash, Want: want, Got: got, Since: r.verified})
	}
	r.hash.Reset()
	r.verified = p.Exit
	return nil
}

// requestDiffers reports that the guest asked at the right point for the
// right kind of thing, but not the same thing.
func (r *Replayer) requestDiffers(p *ExecPoint, e *Entry, want, got string) error {
	w, g := eventOf(e), pointEvent(p, e.Kind)
	w.Detail, g.Detail = want, got
	return r.fail(&DivergenceError{Exit: p.Exit, Seq: e.Seq, Mismatch: MismatchRequest, Want: w, Got: g})
}

// next reads the next entry and checks that no entry went missing.
func (r *Replayer) next() (Entry, error) {
	e, err := r.src.Next()
	if err != nil {
		return Entry{}, err
	}
	if r.lastSeq != 0 && e.Seq != r.lastSeq+1 {
		return Entry{}, fmt.Errorf("replay: log entry seq %d follows seq %d: %w", e.Seq, r.lastSeq, ErrCorrupt)
	}
	r.lastSeq = e.Seq
	r.summary.Entries++
	r.summary.Kinds[e.Kind&tagKindMask]++
	return e, nil
}

func (r *Replayer) fail(err error) error {
	r.err = err
	return err
}

// eventOf describes a recorded entry's step.
func eventOf(e *Entry) Event { return Event{Kind: e.Kind, Exit: e.Exit, RIP: e.RIP} }

// pointEvent describes the replaying guest's step: kind asked at p.
func pointEvent(p *ExecPoint, kind Kind) Event {
	return Event{Kind: kind, Exit: p.Exit, RIP: p.Regs.RIP}
}

// PeekStart reads the Start entry at the head of src and returns it with a
// Source that yields the same entries from the beginning, Start included:
// a replaying VMM needs the recording's configuration to build its VM
// before the Replayer checks it.
func PeekStart(src Source) (StartInfo, Source, error) {
	e, err := src.Next()
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return StartInfo{}, nil, fmt.Errorf("replay: reading the start entry: %w", err)
	}
	if e.Kind != KindStart {
		return StartInfo{}, nil, fmt.Errorf("replay: the log begins with %v, not a start entry: %w", e, ErrCorrupt)
	}
	return e.Start, &peekedSource{first: &e, rest: src}, nil
}

type peekedSource struct {
	first *Entry
	rest  Source
}

// Bytes forwards the byte count of the underlying source, if it keeps one.
func (p *peekedSource) Bytes() int64 {
	if c, ok := p.rest.(interface{ Bytes() int64 }); ok {
		return c.Bytes()
	}
	return 0
}

func (p *peekedSource) Next() (Entry, error) {
	if e := p.first; e != nil {
		p.first = nil
		return *e, nil
	}
	return p.rest.Next()
}

// WithOutputs returns w with every output it accepts also handed to show:
// a replay that checks outputs against the recording and shows them to a
// person. An output w refuses (a divergence) is not shown.
func WithOutputs(w World, show func(OutputKind, []byte) error) World {
	return outputTee{World: w, show: show}
}

type outputTee struct {
	World
	show func(OutputKind, []byte) error
}

func (t outputTee) Output(p ExecPoint, kind OutputKind, data []byte) error {
	if err := t.World.Output(p, kind, data); err != nil {
		return err
	}
	return t.show(kind, data)
}

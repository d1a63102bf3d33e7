package replay

import (
	"errors"
	"fmt"
)

// Sink takes the entries a Recorder makes: an Encoder over a log file, or
// the logging channel.
type Sink interface {
	// Append takes e. It must not keep e.Data after it returns (the
	// recorder passes the guest's buffer).
	Append(e Entry) error
	// Flush pushes every appended entry on to its destination.
	Flush() error
}

// OutputHolder is a live World that holds outputs under the Output Rule: an
// output may leave only once the backup has acknowledged the log entry that
// marks it. A Recorder whose live World is an OutputHolder calls HoldOutput,
// with the Seq of the output's entry, instead of Output.
type OutputHolder interface {
	HoldOutput(p ExecPoint, seq uint64, kind OutputKind, data []byte) error
}

// DefaultCheckpointEvery is how many entries a Recorder logs between two
// checkpoints unless told otherwise: a checkpoint costs ~20-40 bytes, so
// one per 256 entries adds about 0.1 byte an entry.
const DefaultCheckpointEvery = 256

// RecorderConfig tunes a Recorder.
type RecorderConfig struct {
	// CheckpointEvery is K: a Checkpoint entry goes before the entry that
	// follows every K entries. 0 means DefaultCheckpointEvery.
	CheckpointEvery int
}

// Recorder is the World of a recording VMM: it asks a live World, logs each
// answer as an Entry stamped with its execution point, and returns the
// answer. Along the way it keeps a PointHash of every execution point and
// logs a Checkpoint every CheckpointEvery entries, right before PowerOff,
// and at Finish if points went unchecked since the last one.
//
// Call Start first, then the World methods on the vCPU thread, then Finish.
// After any error the recorder is stopped: every later call returns that
// error, so a log never has a hole.
type Recorder struct {
	live   World
	holder OutputHolder // live, if it holds outputs
	sink   Sink
	every  int

	state           runState
	seq             uint64    // Seq of the last entry logged
	last            ExecPoint // the last point given
	hash            PointHash
	sinceCheckpoint int  // entries logged since the last checkpoint
	unchecked       bool // points hashed since the last checkpoint
	forceCheckpoint bool
	frames          []byte // scratch for a NetRX batch
	summary         Summary
	err             error
}

var _ World = (*Recorder)(nil)

// NewRecorder returns a Recorder that asks live and logs to sink.
func NewRecorder(live World, sink Sink, cfg RecorderConfig) *Recorder {
	r := &Recorder{live: live, sink: sink, every: cfg.CheckpointEvery, hash: NewPointHash()}
	if r.every <= 0 {
		r.every = DefaultCheckpointEvery
	}
	r.holder, _ = live.(OutputHolder)
	return r
}

// Start logs the Start entry, Seq 1. It must be called once, before the
// guest runs.
func (r *Recorder) Start(info StartInfo) error {
	if r.err != nil {
		return r.err
	}
	if r.state != stateNew {
		return errors.New("replay: recorder: Start called twice")
	}
	e := Entry{Kind: KindStart, Start: info}
	if err := r.append(&e); err != nil {
		return err
	}
	r.state = stateRunning
	return nil
}

// Finish ends the log: a Checkpoint at the last point if the points since
// the last checkpoint are unchecked, then the End entry with finalDigest
// (see StateDigest), then a Flush of the sink. Call it once the guest has
// stopped, whether by PowerOff or not.
func (r *Recorder) Finish(finalDigest [32]byte) error {
	if r.err != nil {
		return r.err
	}
	switch r.state {
	case stateNew:
		return errors.New("replay: recorder: Finish before Start")
	case stateFinished:
		return errors.New("replay: recorder: Finish called twice")
	}
	if r.unchecked {
		if err := r.checkpoint(&r.last); err != nil {
			return err
		}
	}
	e := Entry{Kind: KindEnd, Digest: finalDigest}
	if err := r.append(&e); err != nil {
		return err
	}
	if err := r.sink.Flush(); err != nil {
		return r.fail(fmt.Errorf("replay: flushing the log: %w", err))
	}
	r.state = stateFinished
	return nil
}

// CheckpointNext makes the next entry be preceded by a Checkpoint, whatever
// the count: for a point the caller wants verified, such as the moment a
// running VM is handed to a new backup.
func (r *Recorder) CheckpointNext() { r.forceCheckpoint = true }

// LastSeq returns the Seq of the last entry logged; right after Output it
// is the Seq of that output's entry.
func (r *Recorder) LastSeq() uint64 { return r.seq }

// Summary returns what the recorder has logged so far.
func (r *Recorder) Summary() Summary {
	s := r.summary
	if c, ok := r.sink.(byteCounter); ok {
		s.Bytes = c.Bytes()
	}
	return s
}

// TSC implements World.
func (r *Recorder) TSC(p ExecPoint) (uint64, error) {
	if err := r.begin(&p, KindTSC); err != nil {
		return 0, err
	}
	v, err := r.live.TSC(p)
	if err != nil {
		return 0, r.liveFailed(&p, KindTSC, err)
	}
	e := Entry{Kind: KindTSC, Value: v}
	return v, r.log(&p, &e, false)
}

// Random implements World.
func (r *Recorder) Random(p ExecPoint, kind RandKind) (uint64, error) {
	if err := r.begin(&p, KindRandom); err != nil {
		return 0, err
	}
	if kind > RandRDSEED {
		return 0, r.fail(fmt.Errorf("replay: recording random at exit %d: unknown instruction %v", p.Exit, kind))
	}
	v, err := r.live.Random(p, kind)
	if err != nil {
		return 0, r.liveFailed(&p, KindRandom, err)
	}
	e := Entry{Kind: KindRandom, RandKind: kind, Value: v}
	return v, r.log(&p, &e, false)
}

// Clock implements World.
func (r *Recorder) Clock(p ExecPoint, c ClockID) (uint64, error) {
	if err := r.begin(&p, KindClock); err != nil {
		return 0, err
	}
	if c > ClockRealtime {
		return 0, r.fail(fmt.Errorf("replay: recording clock at exit %d: unknown %v", p.Exit, c))
	}
	v, err := r.live.Clock(p, c)
	if err != nil {
		return 0, r.liveFailed(&p, KindClock, err)
	}
	e := Entry{Kind: KindClock, Clock: c, Value: v}
	return v, r.log(&p, &e, false)
}

// ConsoleRead implements World. It hands the live world at most MaxDataLen
// bytes of buf, so that every read fits in an entry.
func (r *Recorder) ConsoleRead(p ExecPoint, buf []byte) (int, bool, error) {
	if err := r.begin(&p, KindConsoleRead); err != nil {
		return 0, false, err
	}
	buf = buf[:min(len(buf), MaxDataLen)]
	n, eof, err := r.live.ConsoleRead(p, buf)
	if err != nil {
		return 0, false, r.liveFailed(&p, KindConsoleRead, err)
	}
	if n < 0 || n > len(buf) {
		return 0, false, r.fail(fmt.Errorf("replay: recording console-read at exit %d: the live world read %d bytes into a buffer of %d", p.Exit, n, len(buf)))
	}
	e := Entry{Kind: KindConsoleRead, Data: buf[:n], EOF: eof}
	return n, eof, r.log(&p, &e, false)
}

// NetReceive implements World. The batch is one NetRX entry whose Data is
// the frames, each preceded by its length as a uvarint (EncodeFrames).
func (r *Recorder) NetReceive(p ExecPoint, frames [][]byte, lens []int) (int, error) {
	if err := r.begin(&p, KindNetRX); err != nil {
		return 0, err
	}
	n, err := r.live.NetReceive(p, frames, lens)
	if err != nil {
		return 0, r.liveFailed(&p, KindNetRX, err)
	}
	if n < 0 || n > len(frames) || n > len(lens) {
		return 0, r.fail(fmt.Errorf("replay: recording net-rx at exit %d: the live world delivered %d frames into %d buffers", p.Exit, n, len(frames)))
	}
	r.frames = r.frames[:0]
	for i := 0; i < n; i++ {
		if lens[i] < 0 || lens[i] > len(frames[i]) {
			return 0, r.fail(fmt.Errorf("replay: recording net-rx at exit %d: frame %d is %d bytes in a %d-byte buffer", p.Exit, i, lens[i], len(frames[i])))
		}
		r.frames = AppendFrame(r.frames, frames[i][:lens[i]])
	}
	e := Entry{Kind: KindNetRX, Data: r.frames}
	return n, r.log(&p, &e, false)
}

// DiskRead implements World. The batch is one DiskRead entry whose Data is
// the buffers one after another: the guest's request says how they split.
func (r *Recorder) DiskRead(p ExecPoint, offs []uint64, bufs [][]byte) error {
	if err := r.begin(&p, KindDiskRead); err != nil {
		return err
	}
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	if len(offs) != len(bufs) || total > MaxDataLen {
		return r.fail(fmt.Errorf("replay: recording disk-read at exit %d: %d offsets for %d buffers of %d bytes in all (at most %d)", p.Exit, len(offs), len(bufs), total, MaxDataLen))
	}
	if err := r.live.DiskRead(p, offs, bufs); err != nil {
		return r.liveFailed(&p, KindDiskRead, err)
	}
	r.frames = r.frames[:0]
	for _, b := range bufs {
		r.frames = append(r.frames, b...)
	}
	e := Entry{Kind: KindDiskRead, Data: r.frames}
	return r.log(&p, &e, false)
}

// Wait implements World.
func (r *Recorder) Wait(p ExecPoint, timeoutNS uint64) (WaitResult, error) {
	if err := r.begin(&p, KindWait); err != nil {
		return 0, err
	}
	res, err := r.live.Wait(p, timeoutNS)
	if err != nil {
		return 0, r.liveFailed(&p, KindWait, err)
	}
	e := Entry{Kind: KindWait, Value: uint64(res)}
	return res, r.log(&p, &e, false)
}

// Output implements World: it logs the Output entry first and only then
// hands the output on (to HoldOutput with the entry's Seq if the live world
// is an OutputHolder), so no output can get ahead of its entry.
func (r *Recorder) Output(p ExecPoint, kind OutputKind, data []byte) error {
	if err := r.begin(&p, KindOutput); err != nil {
		return err
	}
	if kind > OutputDisk {
		return r.fail(fmt.Errorf("replay: recording output at exit %d: unknown %v", p.Exit, kind))
	}
	e := Entry{Kind: KindOutput, OutputKind: kind, Length: uint64(len(data)), Hash: OutputHash(data)}
	if err := r.log(&p, &e, false); err != nil {
		return err
	}
	var err error
	if r.holder != nil {
		err = r.holder.HoldOutput(p, e.Seq, kind, data)
	} else {
		err = r.live.Output(p, kind, data)
	}
	if err != nil {
		return r.liveFailed(&p, KindOutput, err)
	}
	return nil
}

// PowerOff implements World: it logs a Checkpoint and the PowerOff entry,
// then tells the live world. Only Finish may follow.
func (r *Recorder) PowerOff(p ExecPoint, status int) error {
	if err := r.begin(&p, KindPowerOff); err != nil {
		return err
	}
	e := Entry{Kind: KindPowerOff, Status: int64(status)}
	if err := r.log(&p, &e, true); err != nil {
		return err
	}
	r.state = statePoweredOff
	if err := r.live.PowerOff(p, status); err != nil {
		return r.liveFailed(&p, KindPowerOff, err)
	}
	return nil
}

// begin checks that the recorder may take a call at p.
func (r *Recorder) begin(p *ExecPoint, kind Kind) error {
	if r.err != nil {
		return r.err
	}
	switch r.state {
	case stateNew:
		return r.fail(fmt.Errorf("replay: recording %v at exit %d: Start was not called", kind, p.Exit))
	case statePoweredOff, stateFinished:
		return r.fail(fmt.Errorf("replay: recording %v at exit %d: the guest has already stopped", kind, p.Exit))
	}
	if p.Exit == 0 || p.Exit <= r.last.Exit {
		return r.fail(fmt.Errorf("replay: recording %v: exit %d is not after the previous exit %d", kind, p.Exit, r.last.Exit))
	}
	return nil
}

// log hashes p and logs e at p, preceded by a Checkpoint when one is due
// or forced.
func (r *Recorder) log(p *ExecPoint, e *Entry, forceCheckpoint bool) error {
	r.last = *p
	r.summary.Exits++
	r.hash.Add(p)
	r.unchecked = true
	if forceCheckpoint || r.forceCheckpoint || r.sinceCheckpoint >= r.every {
		if err := r.checkpoint(p); err != nil {
			return err
		}
	}
	e.Exit, e.RIP = p.Exit, p.Regs.RIP
	if err := r.append(e); err != nil {
		return err
	}
	r.sinceCheckpoint++
	return nil
}

// checkpoint logs a Checkpoint at p, which is the last point hashed.
func (r *Recorder) checkpoint(p *ExecPoint) error {
	e := Entry{Kind: KindCheckpoint, Exit: p.Exit, RIP: p.Regs.RIP, Regs: p.Regs, Hash: r.hash.Sum()}
	if err := r.append(&e); err != nil {
		return err
	}
	r.hash.Reset()
	r.unchecked = false
	r.forceCheckpoint = false
	r.sinceCheckpoint = 0
	return nil
}

// append gives e the next Seq and hands it to the sink.
func (r *Recorder) append(e *Entry) error {
	e.Seq = r.seq + 1
	if err := r.sink.Append(*e); err != nil {
		return r.fail(fmt.Errorf("replay: logging %v at exit %d: %w", e.Kind, e.Exit, err))
	}
	r.seq = e.Seq
	r.summary.Entries++
	r.summary.Kinds[e.Kind]++
	return nil
}

func (r *Recorder) liveFailed(p *ExecPoint, kind Kind, err error) error {
	return r.fail(fmt.Errorf("replay: recording %v at exit %d: %w", kind, p.Exit, err))
}

// fail stops the recorder with err.
func (r *Recorder) fail(err error) error {
	r.err = err
	return err
}

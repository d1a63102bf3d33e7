package replay

import (
	"errors"
	"fmt"
	"io"
)

// Position is where a recording stands between two guest-caused exits: what
// a replay that starts there (from a snapshot of the VM taken at that
// moment, or on a backup that received the VM's state) needs to carry on
// checking the log exactly as a replay from the first entry would.
type Position struct {
	// Seq is the Seq of the last entry logged before the position; the
	// replay resumes with entry Seq+1. Seq >= 1 (the Start entry).
	Seq uint64
	// Hash is the PointHash of the points since the last Checkpoint, so
	// that the next Checkpoint checks them too.
	Hash uint64
	// Last is the last execution point the World was asked at (zero
	// before any): later points must come after it, and Finish checks a
	// closing Checkpoint against it.
	Last ExecPoint
}

// Position returns the recording's position now. Call it on the vCPU
// thread between two exits (a snapshot's moment); follow it with
// CheckpointNext so that the replay from there is verified at once.
func (r *Recorder) Position() Position {
	return Position{Seq: r.seq, Hash: r.hash.Sum(), Last: r.last}
}

// ErrPosition is wrapped by ResumeAt's error when the log does not reach
// the position or does not fit it.
var ErrPosition = errors.New("the log does not match the resume position")

// ResumeAt skips the log entries up to and including pos.Seq and takes up
// the recording's hash and last point there, so that the replay continues
// with a VM restored to that moment. Call it after VerifyStart, before the
// guest runs. Every skipped entry must be of an exit at or before
// pos.Last.Exit; the entry after pos.Seq must not be (checked when the
// guest reaches it).
func (r *Replayer) ResumeAt(pos Position) error {
	if r.err != nil {
		return r.err
	}
	if r.state != stateRunning || r.last.Exit != 0 {
		return errors.New("replay: replayer: ResumeAt must come right after VerifyStart")
	}
	if pos.Seq < r.lastSeq {
		return r.fail(fmt.Errorf("replay: resume position seq %d is before the start entry: %w", pos.Seq, ErrPosition))
	}
	for r.lastSeq < pos.Seq {
		e, err := r.next()
		if err == io.EOF {
			return r.fail(fmt.Errorf("replay: the log ends at seq %d, before the resume position seq %d: %w", r.lastSeq, pos.Seq, ErrPosition))
		}
		if err != nil {
			return r.fail(fmt.Errorf("%w; skipping to the resume position seq %d", err, pos.Seq))
		}
		if e.Kind.IsControl() || e.Exit > pos.Last.Exit {
			return r.fail(fmt.Errorf("replay: log entry seq %d (%v) lies after the resume position (exit %d, seq %d): %w", e.Seq, e, pos.Last.Exit, pos.Seq, ErrPosition))
		}
	}
	r.hash = PointHash{sum: pos.Hash}
	r.last = pos.Last
	r.verified = pos.Last.Exit
	return nil
}

// JoinAt starts a replay whose source begins right after pos: a backup
// that joins a running primary receives the VM's state at pos and then the
// log from entry pos.Seq+1, with no start entry and no prefix to skip. It
// stands in for VerifyStart (the pairing's handshake compared the image and
// configuration) and ResumeAt: the next entry must be pos.Seq+1, and the
// next Checkpoint covers the points since the last one before pos.
func (r *Replayer) JoinAt(pos Position) error {
	if r.err != nil {
		return r.err
	}
	if r.state != stateNew {
		return errors.New("replay: replayer: JoinAt must come first, instead of VerifyStart")
	}
	if pos.Seq == 0 {
		return r.fail(fmt.Errorf("replay: a join position must follow at least the start entry (seq 0 given): %w", ErrPosition))
	}
	r.state = stateRunning
	r.lastSeq = pos.Seq
	r.hash = PointHash{sum: pos.Hash}
	r.last = pos.Last
	r.verified = pos.Last.Exit
	return nil
}

// ContinueAt starts a recording that continues a log at pos instead of
// with a Start entry: the next entry gets Seq pos.Seq+1, the point hash
// goes on from pos.Hash, and the next point must come after pos.Last. A
// backup that went live continues the log it replayed this way, so that a
// backup that joins it later replays entries numbered on from the ones
// before. Call it instead of Start, before the first World call.
func (r *Recorder) ContinueAt(pos Position) error {
	if r.err != nil {
		return r.err
	}
	if r.state != stateNew {
		return errors.New("replay: recorder: ContinueAt must come first, instead of Start")
	}
	if pos.Seq == 0 {
		return r.fail(fmt.Errorf("replay: a recording must continue after at least the start entry (seq 0 given): %w", ErrPosition))
	}
	r.state = stateRunning
	r.seq = pos.Seq
	r.hash = PointHash{sum: pos.Hash}
	r.last = pos.Last
	r.unchecked = true
	return nil
}

// FreshPosition is the position after entry seq and point last with no
// points hashed since: where a recording continues when the points before
// it were checked already (a backup's replay that went live at the exit
// after last).
func FreshPosition(seq uint64, last ExecPoint) Position {
	h := NewPointHash()
	return Position{Seq: seq, Hash: h.Sum(), Last: last}
}

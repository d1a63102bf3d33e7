// Package outputrule holds the outputs of a primary VM until the backup has
// acknowledged the log entries that mark them: VM-FT's Output Rule, "the
// primary VM may not send an output to the external world until the backup
// VM has received and acknowledged the log entry associated with the
// operation producing the output" (Scales et al. 2010).
//
// The package is pure, like raft's core: it does no I/O and reads no clock.
// The caller says what happened (an output was produced, an ack arrived) and
// what time it is, as a time.Duration on any monotonic clock of its choice;
// the Rule answers with the outputs that may now leave. Sending them is the
// caller's business.
//
// A Rule is not safe for concurrent use: outputs are held on the vCPU
// thread and acks arrive on the logging channel's reader, so the caller
// serialises the two with a mutex (every method is short and never blocks).
package outputrule

import (
	"errors"
	"fmt"
	"time"

	"github.com/ftvm/ftvm/replay"
)

// ErrFull is returned by Hold when holding the output would take the held
// bytes over the bound given to New. Nothing is held. The backup is behind
// on acknowledgements; the caller waits for the next ack (feeding it to
// Ack, which frees room) and calls Hold again with the same arguments.
// Blocking the vCPU this way is what bounds the primary's memory when the
// backup is slow, as VM-FT stalls the primary when its log buffer is full.
var ErrFull = errors.New("outputrule: held outputs are at their bound")

// ErrTooLarge is wrapped by Hold's error for an output larger than the
// bound itself: no number of acks would make room for it, so waiting (as
// for ErrFull) would wait forever.
var ErrTooLarge = errors.New("outputrule: output larger than the bound")

// Released is an output that may leave the primary now.
type Released struct {
	// Seq is the Seq of the log entry that marks the output.
	Seq uint64
	// Kind says where the output goes.
	Kind replay.OutputKind
	// Data are the output's bytes, the Rule's own copy: the caller may
	// keep them.
	Data []byte
	// Delay is how long the output was held: the now of the Ack that
	// released it minus the now of its Hold (0 if the caller's clock went
	// backwards). This is the latency the Output Rule adds.
	Delay time.Duration
}

// Rule holds outputs in the order of their log entries and releases them
// as the backup acknowledges those entries.
type Rule struct {
	maxBytes int

	// held is a FIFO in Seq order: since every Hold has a greater Seq than
	// the one before, an ack releases a prefix of it.
	held  []heldOutput
	head  int // index in held of the oldest output still held
	bytes int // total len(Data) of the outputs held

	lastHold uint64 // Seq of the latest Hold; 0 before the first
	acked    uint64 // the highest Seq acknowledged so far
}

type heldOutput struct {
	seq  uint64
	kind replay.OutputKind
	data []byte
	at   time.Duration // the now of the Hold
}

// New returns a Rule that holds at most maxHeldBytes bytes of outputs at a
// time; a bound below 1 is taken as 1. The bound counts the outputs' bytes
// only: a console write is a few bytes and a packet at most
// replay.MaxFrame, so a bound of a few MiB holds thousands of them.
func New(maxHeldBytes int) *Rule {
	return &Rule{maxBytes: max(maxHeldBytes, 1)}
}

// Hold takes an output of the guest that must not leave before the log
// entry with Seq seq is acknowledged. It copies data, so the caller may
// reuse its buffer.
//
// seq must be greater than the seq of every earlier Hold, because log
// entries are made in order and each output has its own entry; an
// out-of-order or repeated seq is refused with an error and nothing is
// held.
//
// If the bound would be exceeded Hold returns ErrFull and holds nothing
// (see ErrFull for what to do). An output larger than the whole bound gets
// an error wrapping ErrTooLarge.
//
// The ack can race ahead of the Hold: the entry is sent before the output
// is handed over, so its ack may already have been given to Ack. The
// output is then still held, and released by the next Ack with a seq at
// least as high; acks are idempotent, so right after Hold the caller
// should call Ack(highest ack received so far, now), which releases it at
// once (see Acked).
func (r *Rule) Hold(seq uint64, kind replay.OutputKind, data []byte, now time.Duration) error {
	if seq == 0 {
		return errors.New("outputrule: hold of an output with seq 0 (log entries start at seq 1)")
	}
	if seq <= r.lastHold {
		return fmt.Errorf("outputrule: hold of an output at seq %d after one at seq %d: outputs must be held in log order", seq, r.lastHold)
	}
	if len(data) > r.maxBytes {
		return fmt.Errorf("outputrule: output at seq %d is %d bytes, the bound is %d: %w", seq, len(data), r.maxBytes, ErrTooLarge)
	}
	if r.bytes+len(data) > r.maxBytes {
		return ErrFull
	}
	r.compact()
	r.held = append(r.held, heldOutput{seq: seq, kind: kind, data: append([]byte(nil), data...), at: now})
	r.bytes += len(data)
	r.lastHold = seq
	return nil
}

// Ack records that the backup has acknowledged every log entry up to and
// including seq, and returns the outputs this releases, in Seq order (nil
// if none). An ack lower than an earlier one is stale and ignored; an ack
// equal to an earlier one is not, so a repeated Ack releases outputs held
// since (see Hold). An ack beyond the last held output is normal: most log
// entries are not outputs.
func (r *Rule) Ack(seq uint64, now time.Duration) []Released {
	if seq < r.acked {
		return nil
	}
	r.acked = seq
	var out []Released
	for r.head < len(r.held) && r.held[r.head].seq <= seq {
		h := &r.held[r.head]
		out = append(out, Released{Seq: h.seq, Kind: h.kind, Data: h.data, Delay: max(now-h.at, 0)})
		r.bytes -= len(h.data)
		*h = heldOutput{} // drop the reference to the data
		r.head++
	}
	if r.head == len(r.held) {
		r.held, r.head = r.held[:0], 0
	}
	return out
}

// Acked returns the highest seq given to Ack so far (0 before the first).
func (r *Rule) Acked() uint64 { return r.acked }

// Held returns how many outputs are held and their total size in bytes.
func (r *Rule) Held() (count int, bytes int) { return len(r.held) - r.head, r.bytes }

// compact moves the held outputs to the front of the slice once the
// released prefix is at least half of it, so the FIFO does not grow
// without bound while it never quite empties.
func (r *Rule) compact() {
	if r.head > 0 && r.head >= len(r.held)/2 {
		n := copy(r.held, r.held[r.head:])
		clear(r.held[n:])
		r.held, r.head = r.held[:n], 0
	}
}

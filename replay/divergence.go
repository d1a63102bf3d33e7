package replay

import (
	"fmt"
	"strings"
)

// Mismatch says what a DivergenceError found different.
type Mismatch uint8

const (
	// MismatchExit: the guest is at a different exit number than the
	// recording's next entry.
	MismatchExit Mismatch = iota + 1
	// MismatchRIP: same exit number, different RIP.
	MismatchRIP
	// MismatchKind: the guest asked for one thing where the recording has
	// another (a TSC where the recording has a console read).
	MismatchKind
	// MismatchRequest: same kind, but the request differs: another clock,
	// RDSEED for RDRAND, a console buffer too small for the recorded input,
	// another power-off status.
	MismatchRequest
	// MismatchOutput: the guest's output differs in kind, length or hash.
	MismatchOutput
	// MismatchRegs: registers differ at a checkpoint.
	MismatchRegs
	// MismatchRegsHash: the registers at a checkpoint agree but the hash
	// of the registers at the exits since the previous checkpoint does not.
	MismatchRegsHash
	// MismatchLogEnded: the log ended before the guest did.
	MismatchLogEnded
	// MismatchGuestEnded: the guest ended where the log goes on.
	MismatchGuestEnded
	// MismatchDigest: the final state digests differ.
	MismatchDigest
)

var mismatchText = [...]string{
	MismatchExit:       "exit number differs",
	MismatchRIP:        "rip differs",
	MismatchKind:       "entry kind differs",
	MismatchRequest:    "request differs",
	MismatchOutput:     "output differs",
	MismatchRegs:       "registers differ at a checkpoint",
	MismatchRegsHash:   "register hash differs at a checkpoint",
	MismatchLogEnded:   "the log ended before the guest did",
	MismatchGuestEnded: "the guest ended before the log did",
	MismatchDigest:     "final state digest differs",
}

func (m Mismatch) String() string {
	if int(m) < len(mismatchText) && mismatchText[m] != "" {
		return mismatchText[m]
	}
	return fmt.Sprintf("mismatch(%d)", uint8(m))
}

// Event is one step of a run as the divergence check sees it: what was
// asked for, and where.
type Event struct {
	// Kind is what the step asked for; 0 when there is no step (the log or
	// the run had ended), Detail then says which.
	Kind Kind
	// Exit and RIP are the step's execution point (0 for a control entry).
	Exit, RIP uint64
	// Detail is what the step carried, where that is what differs
	// ("console len=5 hash=0x...", "status=3").
	Detail string
}

func (ev Event) String() string {
	if ev.Kind == 0 {
		if ev.Detail != "" {
			return ev.Detail
		}
		return "nothing"
	}
	s := ev.Kind.String()
	if !ev.Kind.IsControl() {
		s += fmt.Sprintf(" at exit %d rip %#x", ev.Exit, ev.RIP)
	}
	if ev.Detail != "" {
		s += " (" + ev.Detail + ")"
	}
	return s
}

// RegDiff is one register that differs between the recording and the
// replay.
type RegDiff struct {
	Name      string // as in RegNames
	Want, Got uint64
}

// DivergenceError says where a replay parted from its recording. A backup
// that returns one must never go live. Its message names the exit, the
// expected and actual step with their RIPs, and each register that
// differs, e.g.
//
//	replay: divergence at exit 13 (log seq 7): rip differs: want console-read at exit 13 rip 0x100090, got console-read at exit 13 rip 0x100080
type DivergenceError struct {
	// Exit is the replaying guest's exit number where the divergence was
	// seen (at Finish, its last exit).
	Exit uint64
	// Seq is the log entry the guest was compared with; 0 if the log had
	// none left.
	Seq uint64
	// Mismatch says what differs.
	Mismatch Mismatch
	// Want is the step the recording has, Got the one the replay took.
	Want, Got Event
	// Regs are the registers that differ, when the recording had them (at
	// a checkpoint), in RegNames order.
	Regs []RegDiff
	// Since is, for MismatchRegsHash, the exit of the previous checkpoint
	// (0 for the start of the run): the runs parted after exit Since and
	// before exit Exit.
	Since uint64
}

func (e *DivergenceError) Error() string {
	var b strings.Builder
	since := "the start"
	if e.Since != 0 {
		since = fmt.Sprintf("exit %d", e.Since)
	}
	if e.Mismatch == MismatchRegsHash {
		fmt.Fprintf(&b, "replay: divergence between %s and exit %d", since, e.Exit)
	} else {
		fmt.Fprintf(&b, "replay: divergence at exit %d", e.Exit)
	}
	if e.Seq != 0 {
		fmt.Fprintf(&b, " (log seq %d)", e.Seq)
	}
	b.WriteString(": ")
	switch e.Mismatch {
	case MismatchKind:
		fmt.Fprintf(&b, "the guest asked for %v where the recording has %v", e.Got.Kind, e.Want.Kind)
	case MismatchRegsHash:
		fmt.Fprintf(&b, "registers agree at exit %d but their hash over the exits since %s differs", e.Exit, since)
	default:
		b.WriteString(e.Mismatch.String())
	}
	fmt.Fprintf(&b, ": want %v, got %v", e.Want, e.Got)
	for _, r := range e.Regs {
		fmt.Fprintf(&b, "; %s: want %#x got %#x", r.Name, r.Want, r.Got)
	}
	return b.String()
}

// diffRegs lists the registers that differ between want and got.
func diffRegs(want, got *Regs) []RegDiff {
	w, g := want.Array(), got.Array()
	var diffs []RegDiff
	for i := range w {
		if w[i] != g[i] {
			diffs = append(diffs, RegDiff{Name: RegNames[i], Want: w[i], Got: g[i]})
		}
	}
	return diffs
}

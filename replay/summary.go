package replay

import (
	"fmt"
	"strings"
)

// Summary counts what a Recorder logged or a Replayer consumed.
type Summary struct {
	// Entries is the number of entries logged or consumed.
	Entries uint64
	// Bytes is the number of encoded bytes the sink wrote or the source
	// read, when it can tell (it has a Bytes() int64 method, as Encoder and
	// Decoder do); 0 otherwise.
	Bytes int64
	// Exits is the number of execution points the World was asked at.
	Exits uint64
	// Kinds counts entries per Kind, indexed by Kind (32 covers every kind
	// the five-bit tag can hold).
	Kinds [32]uint64
	// DroppedOutputs and DroppedOutputBytes count the outputs a replayer
	// checked and dropped.
	DroppedOutputs, DroppedOutputBytes uint64
}

// String prints the summary on one line, kinds in Kind order, e.g.
//
//	entries=5 bytes=80 exits=3 start=1 tsc=2 end=1
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "entries=%d bytes=%d exits=%d", s.Entries, s.Bytes, s.Exits)
	for k, n := range s.Kinds {
		if n != 0 {
			fmt.Fprintf(&b, " %v=%d", Kind(k), n)
		}
	}
	if s.DroppedOutputs != 0 {
		fmt.Fprintf(&b, " dropped-outputs=%d (%d bytes)", s.DroppedOutputs, s.DroppedOutputBytes)
	}
	return b.String()
}

// byteCounter is implemented by sinks and sources that know how many
// encoded bytes went through them.
type byteCounter interface{ Bytes() int64 }

// runState is where a Recorder or Replayer is in its run.
type runState uint8

const (
	stateNew        runState = iota // before Start / VerifyStart
	stateRunning                    // the guest runs
	statePoweredOff                 // the guest asked to stop; only Finish is left
	stateFinished                   // the End entry is written / checked
)

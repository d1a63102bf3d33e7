package ft

import (
	"errors"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm"
)

// failoverWorld is the backup's world: it answers from the replayer while
// the log lasts. When the log ends because the primary is gone (the
// channel's ErrPeerLost, after every received entry was replayed), it asks
// goLive; if that succeeds, this very exit and every later one are
// answered by the live world, whose clocks continue from the log's last
// values. A divergence is never turned into going live.
type failoverWorld struct {
	rep  *replay.Replayer
	live *vmm.LiveWorld
	// becomeLive, if set, is asked at go-live, at the point p the log ran
	// out at, for the world that answers from then on (a recording, so
	// that a new backup can join); nil: live answers.
	becomeLive func(p replay.ExecPoint) (replay.World, error)
	after      replay.World            // what answers once live
	lost       error                   // the channel's "peer lost" sentinel
	goLive     func(cause error) error // arbiter + network takeover; nil error: go live
	progress   func(exit uint64)       // tells the channel how far the replay got
	done       <-chan struct{}         // the backup's end: a stalled replay gives up
	// primaryReleased is the Seq up to which the primary said every
	// output left it; final once the channel ended. Nil: assume all did.
	primaryReleased func() uint64
	// onRelease is told how many outputs went out at go-live, onReissue
	// how many disk blocks were written again.
	onRelease func(n int, bytes int)
	onReissue func(blocks int)

	isLive             bool
	lastTSC, lastClock uint64
	// unreleased holds, oldest first, the replayed outputs the primary had
	// not reported released: if it is lost, this side releases them at
	// go-live (nothing lost; at most an output that left the primary just
	// before it died, and before it could say so, leaves twice, as in
	// VM-FT, where TCP drops such a duplicate).
	unreleased      []pendingOutput
	unreleasedBytes int
	// journal, with a shared disk, keeps the replayed disk writes the
	// primary may not have completed; go-live writes them again before
	// any other output leaves. Disk outputs are never in unreleased: a
	// write released long ago must not be written again after a newer one.
	journal *vmm.DiskJournal
}

// maxUnreleasedBytes bounds the outputs a backup keeps for go-live. The
// primary holds at most maxHeldBytes and reports releases within a
// heartbeat tick, so this is reached only if it stopped reporting; the
// oldest are then dropped (and counted in the go-live message).
const maxUnreleasedBytes = 4 * maxHeldBytes

// pendingOutput is a replayed output the primary may not have released.
type pendingOutput struct {
	seq  uint64
	kind replay.OutputKind
	data []byte
}

var _ replay.World = (*failoverWorld)(nil)

// next decides, after the replayer answered with err, whether to use the
// live world for this call (true) or return err.
func (f *failoverWorld) next(p replay.ExecPoint, err error) (bool, error) {
	if err == nil {
		replayStall.pass(f.done)
		f.progress(p.Exit)
		return false, nil
	}
	var div *replay.DivergenceError
	if errors.As(err, &div) || !errors.Is(err, f.lost) {
		return false, err
	}
	if err := f.goLive(err); err != nil {
		return false, err
	}
	f.live.ContinueFrom(f.lastTSC, f.lastClock)
	f.after = f.live
	if f.becomeLive != nil {
		w, err := f.becomeLive(p)
		if err != nil {
			return false, err
		}
		f.after = w
	}
	f.isLive = true
	if err := f.releaseUnreleased(p); err != nil {
		return false, err
	}
	return true, nil
}

// keepUnreleased remembers the output just replayed unless the primary
// already reported it released, and forgets those it has.
func (f *failoverWorld) keepUnreleased(kind replay.OutputKind, data []byte) {
	if f.primaryReleased == nil {
		return
	}
	released := f.primaryReleased()
	f.forget(func(o pendingOutput) bool { return o.seq <= released })
	if seq := f.rep.LastSeq(); seq > released {
		f.unreleased = append(f.unreleased, pendingOutput{seq: seq, kind: kind, data: append([]byte(nil), data...)})
		f.unreleasedBytes += len(data)
	}
	f.forget(func(pendingOutput) bool { return f.unreleasedBytes > maxUnreleasedBytes })
}

// forget drops outputs from the front of unreleased while drop says so.
func (f *failoverWorld) forget(drop func(pendingOutput) bool) {
	n := 0
	for n < len(f.unreleased) && drop(f.unreleased[n]) {
		f.unreleasedBytes -= len(f.unreleased[n].data)
		n++
	}
	if n > 0 {
		f.unreleased = append(f.unreleased[:0], f.unreleased[n:]...)
	}
}

// waitReleased waits, after the guest ended, for the channel to end
// (ended closed) and says whether the primary had reported every replayed
// output released by then. A primary whose guest ended writes its last
// report and closes; the backup lets it close first, or the primary, still
// flushing, would take the backup's hang-up for a lost backup and ask the
// arbiter for nothing. A primary that dies or hangs instead is lost by the
// channel's failure detection, which closes ended too.
func (f *failoverWorld) waitReleased(ended <-chan struct{}) bool {
	<-ended
	return f.primaryReleased == nil || len(f.unreleased) == 0 ||
		f.unreleased[len(f.unreleased)-1].seq <= f.primaryReleased()
}

// releaseUnreleased sends, at go-live and in their order, the outputs the
// primary never reported released, after writing again the disk writes it
// may not have completed (a reply that says a write is durable may be
// among those outputs).
func (f *failoverWorld) releaseUnreleased(p replay.ExecPoint) error {
	if f.journal != nil {
		blocks := f.journal.Blocks()
		if err := f.live.ReissueDisk(f.journal.Batch()); err != nil {
			return err
		}
		if f.onReissue != nil {
			f.onReissue(blocks)
		}
	}
	if f.primaryReleased == nil {
		return nil
	}
	released := f.primaryReleased()
	n, bytes := 0, 0
	for _, o := range f.unreleased {
		if o.seq <= released {
			continue
		}
		if err := f.live.Output(p, o.kind, o.data); err != nil {
			return err
		}
		n++
		bytes += len(o.data)
	}
	f.unreleased, f.unreleasedBytes = nil, 0
	if f.onRelease != nil {
		f.onRelease(n, bytes)
	}
	return nil
}

func (f *failoverWorld) TSC(p replay.ExecPoint) (uint64, error) {
	if !f.isLive {
		v, err := f.rep.TSC(p)
		if live, err := f.next(p, err); !live {
			f.lastTSC = max(f.lastTSC, v)
			return v, err
		}
	}
	return f.after.TSC(p)
}

func (f *failoverWorld) Random(p replay.ExecPoint, k replay.RandKind) (uint64, error) {
	if !f.isLive {
		v, err := f.rep.Random(p, k)
		if live, err := f.next(p, err); !live {
			return v, err
		}
	}
	return f.after.Random(p, k)
}

func (f *failoverWorld) Clock(p replay.ExecPoint, c replay.ClockID) (uint64, error) {
	if !f.isLive {
		v, err := f.rep.Clock(p, c)
		if live, err := f.next(p, err); !live {
			if c == replay.ClockMonotonic {
				f.lastClock = max(f.lastClock, v)
			}
			return v, err
		}
	}
	return f.after.Clock(p, c)
}

func (f *failoverWorld) ConsoleRead(p replay.ExecPoint, buf []byte) (int, bool, error) {
	if !f.isLive {
		n, eof, err := f.rep.ConsoleRead(p, buf)
		if live, err := f.next(p, err); !live {
			return n, eof, err
		}
	}
	return f.after.ConsoleRead(p, buf)
}

func (f *failoverWorld) Wait(p replay.ExecPoint, timeoutNS uint64) (replay.WaitResult, error) {
	if !f.isLive {
		r, err := f.rep.Wait(p, timeoutNS)
		if live, err := f.next(p, err); !live {
			return r, err
		}
	}
	return f.after.Wait(p, timeoutNS)
}

func (f *failoverWorld) NetReceive(p replay.ExecPoint, frames [][]byte, lens []int) (int, error) {
	if !f.isLive {
		n, err := f.rep.NetReceive(p, frames, lens)
		if live, err := f.next(p, err); !live {
			return n, err
		}
	}
	return f.after.NetReceive(p, frames, lens)
}

func (f *failoverWorld) DiskRead(p replay.ExecPoint, offs []uint64, bufs [][]byte) error {
	if !f.isLive {
		err := f.rep.DiskRead(p, offs, bufs)
		if live, err := f.next(p, err); !live {
			return err
		}
	}
	return f.after.DiskRead(p, offs, bufs)
}

func (f *failoverWorld) Output(p replay.ExecPoint, kind replay.OutputKind, data []byte) error {
	if !f.isLive {
		err := f.rep.Output(p, kind, data)
		switch {
		case err == nil && kind == replay.OutputDisk:
			if f.journal != nil {
				err = f.journal.Observe(data)
			}
		case err == nil:
			f.keepUnreleased(kind, data)
		}
		if live, err := f.next(p, err); !live {
			return err
		}
	}
	return f.after.Output(p, kind, data)
}

func (f *failoverWorld) PowerOff(p replay.ExecPoint, status int) error {
	if !f.isLive {
		err := f.rep.PowerOff(p, status)
		if live, err := f.next(p, err); !live {
			return err
		}
	}
	return f.after.PowerOff(p, status)
}

package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backend"
)

// SnapshotPlan asks a recording for a snapshot of the running guest.
type SnapshotPlan struct {
	// AtExit: the state is captured after the guest's exit AtExit has
	// been handled, before it resumes. 0: no snapshot.
	AtExit uint64
	// Path is the file the snapshot is written to (never half-written);
	// the guest runs on while it is written.
	Path string
	// Transfer, if set, gets a live transfer of the running guest (a
	// pre-copy stream, vmm.ReceivePrecopy) started with the run; its state
	// carries the recorder's position at the pause, so the log after it
	// replays on the state it gives (ReplayJoined).
	Transfer        io.Writer
	TransferOptions vmm.PrecopyOptions
	// TransferAtExit starts the transfer after that exit instead of with
	// the run (not together with AtExit).
	TransferAtExit uint64
	// Started, if set, is given the machine once it is created, before
	// the guest runs: for transfers the caller starts itself.
	Started func(*vmm.Machine)
}

// SnapshotTaken says how a recording's snapshot went and what it cost.
type SnapshotTaken struct {
	// Err says why no snapshot was written (the guest stopped before
	// the exit, the file could not be written); nil when one was.
	Err error
	// Transfer and TransferErr: how the live transfer went, if one was
	// asked for.
	Transfer    vmm.PrecopyStats
	TransferErr error
	Exit        uint64
	Path        string
	Pause       time.Duration // how long the guest was stopped for the capture
	Bytes       int64         // size of the file
	Pages       int           // pages of RAM in it (the rest are zero)
}

// RecordSnapshot is RecordWith, taking the snapshot plan asks for: the
// state carries the recorder's position, and the next log entry gets a
// Checkpoint, so a replay from the snapshot is verified at once. The error
// is the recording's, as RecordWith's; how the snapshot went is in the
// SnapshotTaken (with plan.AtExit 0, a zero one).
func RecordSnapshot(ctx context.Context, b backend.Backend, img *vmm.Image, cfg vmm.Config, vmID string, rec *replay.Recorder, plan SnapshotPlan) (End, SnapshotTaken, error) {
	var taken SnapshotTaken
	if err := rec.Start(vmm.StartInfo(img, cfg, vmID)); err != nil {
		return End{}, taken, err
	}
	m, err := vmm.New(b, img, cfg, rec)
	if err != nil {
		return End{}, taken, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	defer m.Close()
	if plan.Started != nil {
		plan.Started(m)
	}
	captured := false
	written := make(chan error, 1)
	if plan.AtExit > 0 {
		m.CaptureAfter(plan.AtExit, func(st *vmm.State) error {
			st.Log, st.LogVMID = rec.Position(), vmID
			rec.CheckpointNext()
			captured = true
			taken = SnapshotTaken{Exit: st.Exits, Path: plan.Path, Pages: st.Pages(), Pause: st.CaptureTime}
			go func() {
				err := st.WriteFile(plan.Path)
				if fi, serr := os.Stat(plan.Path); err == nil && serr == nil {
					taken.Bytes = fi.Size()
				}
				written <- err
			}()
			return nil
		})
	}
	transfer := make(chan *vmm.Precopy, 1)
	if plan.Transfer != nil {
		opt := plan.TransferOptions
		opt.AtPause = func(st *vmm.State) error {
			st.Log, st.LogVMID = rec.Position(), vmID
			rec.CheckpointNext()
			return nil
		}
		start := func() error {
			p, err := m.StartPrecopy(plan.Transfer, opt)
			if err == nil {
				transfer <- p
			}
			return err
		}
		switch {
		case plan.TransferAtExit > 0 && plan.AtExit > 0:
			return End{}, taken, errors.New("session: a snapshot and a transfer at an exit at once")
		case plan.TransferAtExit > 0:
			m.CaptureAfter(plan.TransferAtExit, func(*vmm.State) error { return start() })
		default:
			if err := start(); err != nil {
				return End{}, taken, err
			}
		}
	}
	end, err := Run(ctx, m)
	end.Summary = rec.Summary()
	if plan.Transfer != nil {
		select {
		case p := <-transfer:
			taken.Transfer, taken.TransferErr = p.Wait()
		default:
			taken.TransferErr = fmt.Errorf("session: the guest stopped after %d exits, before exit %d: no transfer", end.Result.Exits, plan.TransferAtExit)
		}
	}
	switch {
	case captured:
		taken.Err = <-written
	case plan.AtExit > 0:
		taken.Err = fmt.Errorf("session: the guest stopped after %d exits, before exit %d: no snapshot taken", end.Result.Exits, plan.AtExit)
	}
	if err != nil {
		return end, taken, err
	}
	if err := rec.Finish(end.Digest); err != nil {
		return end, taken, err
	}
	end.Summary = rec.Summary()
	return end, taken, nil
}

// RunFromSnapshot restores st on b and runs the guest to its end in world
// (a live world should ContinueFrom st.SeenTime(), so that time goes on
// from where the guest saw it). A snapshot of another image, CPUID table,
// configuration or ABI is ErrRefused.
func RunFromSnapshot(ctx context.Context, b backend.Backend, img *vmm.Image, st *vmm.State, world replay.World) (End, error) {
	m, err := vmm.Restore(b, img, st, world)
	if errors.Is(err, vmm.ErrStateMismatch) {
		return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	defer m.Close()
	return Run(ctx, m)
}

// ReplayFromSnapshot replays the log in src from the snapshot st on: the
// VM is restored to st, the log entries up to st's position are skipped,
// and the rest are replayed and checked exactly as Replay checks them,
// final digest included. A snapshot that belongs to another image,
// configuration or recording, or was not taken while recording, is
// ErrRefused.
func ReplayFromSnapshot(ctx context.Context, pick func() (backend.Backend, error), img *vmm.Image, st *vmm.State, src replay.Source, wrap func(*replay.Replayer) replay.World) (End, error) {
	return replayFrom(ctx, pick, img, st, src, wrap, nil)
}

// snapshotFitsLog says why st cannot start a replay of the log whose
// start entry is start (with configuration cfg), or nil.
func snapshotFitsLog(st *vmm.State, img *vmm.Image, cfg vmm.Config, start replay.StartInfo) error {
	if err := st.CheckFor(img, cfg); err != nil {
		return err
	}
	if st.Log.Seq == 0 {
		return errors.New("the snapshot was not taken while recording, so it has no place in a log")
	}
	if st.LogVMID != start.VMID {
		return fmt.Errorf("the snapshot is of a recording of VM %q, the log of VM %q", st.LogVMID, start.VMID)
	}
	return nil
}

// ReplayJoined replays, on a VM restored to st, a log source that begins
// right after st's position: what a backup that joins a running primary
// has, the VM's state at a moment of the recording and then the log from
// the entry after it, with no start entry and no prefix. The configuration
// is st's (the pairing's handshake compared the image and configuration
// digests); the replay is checked as Replay checks it, final digest
// included.
func ReplayJoined(ctx context.Context, b backend.Backend, img *vmm.Image, st *vmm.State, src replay.Source, wrap func(*replay.Replayer) replay.World) (End, error) {
	cfg, err := st.MachineConfig(img)
	if err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if err := st.CheckFor(img, cfg); err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if st.Log.Seq == 0 {
		return End{}, fmt.Errorf("%w: the state was not taken while recording, so no log can follow it", ErrRefused)
	}
	rep := replay.NewReplayer(src)
	if err := rep.JoinAt(st.Log); err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	var world replay.World = rep
	if wrap != nil {
		world = wrap(rep)
	}
	end, err := RunFromSnapshot(ctx, b, img, st, world)
	end.Summary = rep.Summary()
	if err != nil {
		return end, err
	}
	return end, rep.Finish(end.Digest)
}

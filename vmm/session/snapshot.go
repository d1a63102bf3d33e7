package session

import (
	"context"
	"errors"
	"fmt"
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
}

// SnapshotTaken says what a recording's snapshot cost.
type SnapshotTaken struct {
	Exit  uint64
	Path  string
	Pause time.Duration // how long the guest was stopped for the capture
	Bytes int64         // size of the file
	Pages int           // pages of RAM in it (the rest are zero)
}

// RecordSnapshot is RecordWith, taking the snapshot plan asks for: the
// state carries the recorder's position, and the next log entry gets a
// Checkpoint, so a replay from the snapshot is verified at once. If the
// guest stops before the planned exit, the log is still finished and the
// error says that no snapshot was taken.
func RecordSnapshot(ctx context.Context, b backend.Backend, img *vmm.Image, cfg vmm.Config, vmID string, rec *replay.Recorder, plan SnapshotPlan) (End, *SnapshotTaken, error) {
	if err := rec.Start(vmm.StartInfo(img, cfg, vmID)); err != nil {
		return End{}, nil, err
	}
	m, err := vmm.New(b, img, cfg, rec)
	if err != nil {
		return End{}, nil, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	defer m.Close()
	var taken *SnapshotTaken
	written := make(chan error, 1)
	if plan.AtExit > 0 {
		m.CaptureAfter(plan.AtExit, func(st *vmm.State) error {
			st.Log, st.LogVMID = rec.Position(), vmID
			rec.CheckpointNext()
			taken = &SnapshotTaken{Exit: st.Exits, Path: plan.Path, Pages: st.Pages(), Pause: st.CaptureTime}
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
	end, runErr := Run(ctx, m)
	end.Summary = rec.Summary()
	var snapErr error
	if taken != nil {
		snapErr = <-written
	}
	if runErr != nil {
		return end, taken, errors.Join(runErr, snapErr)
	}
	if err := rec.Finish(end.Digest); err != nil {
		return end, taken, errors.Join(err, snapErr)
	}
	end.Summary = rec.Summary()
	if snapErr != nil {
		return end, nil, snapErr
	}
	if plan.AtExit > 0 && taken == nil {
		return end, nil, fmt.Errorf("session: the guest stopped after %d exits, before exit %d: no snapshot taken (the log is complete)", end.Result.Exits, plan.AtExit)
	}
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
	start, src, err := replay.PeekStart(src)
	if err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	cfg, err := vmm.ParseConfigText(start.Config)
	if err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if err := st.CheckFor(img, cfg); err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if st.Log.Seq == 0 {
		return End{}, fmt.Errorf("%w: the snapshot was not taken while recording, so it has no place in a log", ErrRefused)
	}
	if st.LogVMID != start.VMID {
		return End{}, fmt.Errorf("%w: the snapshot is of a recording of VM %q, the log of VM %q", ErrRefused, st.LogVMID, start.VMID)
	}
	rep := replay.NewReplayer(src)
	if _, err := rep.VerifyStart(vmm.StartInfo(img, cfg, "")); err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if err := rep.ResumeAt(st.Log); err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	b, err := pick()
	if err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrSetup, err)
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

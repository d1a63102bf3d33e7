// Package session is the one home of a recorded or replayed run: the
// recorder or replayer around a World, the VM on its backend, the rule that
// a guest fault ends a run as deterministically as an exit does, and the
// final state digest that closes a log. The CLI, the pair (vmm/ft), the
// benchmarks and the tests all run guests through it.
package session

import (
	"context"
	"errors"
	"fmt"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backend"
)

// ErrRefused wraps why a log does not replay here at all: its start entry
// is unreadable, or names another image, configuration or backend.
var ErrRefused = errors.New("session: refusing to replay")

// ErrSetup wraps a failure to create the VM (the backend, the memory):
// the fault of this host, not of the guest or the log.
var ErrSetup = errors.New("session: cannot create the VM")

// End is how a run ended.
type End struct {
	Result vmm.Result
	// Fault is set when the guest stopped with a fault: a deterministic
	// end, which a replay reaches at the same exit with the same report.
	Fault *vmm.GuestFault
	// Digest and Regs are the final state (Run fills them only for a
	// deterministic end).
	Digest  [32]byte
	Regs    replay.Regs
	Summary replay.Summary
}

// Run runs m to its end. If the guest exited or faulted, the end replays,
// so Run reads the final state into the End and returns nil; any other
// error (interrupted, a divergence, a backend failure) is returned as it is,
// with the End as far as it got.
func Run(ctx context.Context, m *vmm.Machine) (End, error) {
	res, err := m.Run(ctx)
	end := End{Result: res}
	if err != nil && !errors.As(err, &end.Fault) {
		return end, err
	}
	var derr error
	if end.Digest, derr = m.StateDigest(); derr == nil {
		end.Regs, derr = m.Regs()
	}
	return end, derr
}

// RunOn creates the VM for img on b with world and runs it to its end, as
// Run does; a VM that cannot be created is ErrSetup.
func RunOn(ctx context.Context, b backend.Backend, img *vmm.Image, cfg vmm.Config, world replay.World) (End, error) {
	m, err := vmm.New(b, img, cfg, world)
	if err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	defer m.Close()
	return Run(ctx, m)
}

// Record runs img on b with every answer of live recorded into sink, and
// closes the log with the final digest when the run ends deterministically.
// A run that ends otherwise leaves the log without its end entry (a partial
// log never pretends to be replayable), and its error is returned.
func Record(ctx context.Context, b backend.Backend, img *vmm.Image, cfg vmm.Config, vmID string, live replay.World, sink replay.Sink) (End, error) {
	rec := replay.NewRecorder(live, sink, replay.RecorderConfig{})
	return RecordWith(ctx, b, img, cfg, vmID, rec)
}

// RecordWith is Record with a recorder of the caller's (the primary's,
// whose sink is the logging channel).
func RecordWith(ctx context.Context, b backend.Backend, img *vmm.Image, cfg vmm.Config, vmID string, rec *replay.Recorder) (End, error) {
	end, _, err := RecordSnapshot(ctx, b, img, cfg, vmID, rec, SnapshotPlan{})
	return end, err
}

// Replay replays the log in src: it rebuilds the VM's configuration from
// the log's start entry, refuses (ErrRefused) a log of another image or
// ABI profile, runs the guest on the backend pick returns (any: a log
// recorded on one backend replays on every other), with every answer from
// the log (wrap, if not nil, puts a World of the caller's around the
// replayer: to show outputs, say), and checks the final state against the
// log's. A divergence is a
// *replay.DivergenceError; a damaged log is an error naming where.
func Replay(ctx context.Context, pick func() (backend.Backend, error), img *vmm.Image, src replay.Source, wrap func(*replay.Replayer) replay.World) (End, error) {
	return replayFrom(ctx, pick, img, nil, src, wrap, nil)
}

// ReplayWithLocalDisk is Replay of a log whose VM had a local disk, whose
// reads are not in the log: disk gets the recorded config and attaches
// the copy as it was when the recording started (cfg.Disk.File).
func ReplayWithLocalDisk(ctx context.Context, pick func() (backend.Backend, error), img *vmm.Image, src replay.Source, wrap func(*replay.Replayer) replay.World, disk func(cfg *vmm.Config) error) (End, error) {
	return replayFrom(ctx, pick, img, nil, src, wrap, disk)
}

// replayFrom is Replay, from the snapshot st on if st is not nil
// (ReplayFromSnapshot).
func replayFrom(ctx context.Context, pick func() (backend.Backend, error), img *vmm.Image, st *vmm.State, src replay.Source, wrap func(*replay.Replayer) replay.World, disk func(*vmm.Config) error) (End, error) {
	start, src, err := replay.PeekStart(src)
	if err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	cfg, err := vmm.ParseConfigText(start.Config)
	if err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if disk != nil && cfg.Disk != nil && cfg.Disk.Local {
		if err := disk(&cfg); err != nil {
			return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
		}
	}
	if cfg.Disk != nil && cfg.Disk.Local && cfg.Disk.File == nil {
		return End{}, fmt.Errorf("%w: the recording's VM had a local disk, whose reads are not in the log: the replay needs its copy as it was when the recording started", ErrRefused)
	}
	if st != nil {
		if err := snapshotFitsLog(st, img, cfg, start); err != nil {
			return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
		}
	}
	rep := replay.NewReplayer(src)
	if _, err := rep.VerifyStart(vmm.StartInfo(img, cfg, "")); err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if st != nil {
		if err := rep.ResumeAt(st.Log); err != nil {
			return End{}, fmt.Errorf("%w: %w", ErrRefused, err)
		}
	}
	b, err := pick()
	if err != nil {
		return End{}, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	var world replay.World = rep
	if wrap != nil {
		world = wrap(rep)
	}
	var end End
	if st != nil {
		end, err = RunFromSnapshot(ctx, b, img, st, world)
	} else {
		end, err = RunOn(ctx, b, img, cfg, world)
	}
	end.Summary = rep.Summary()
	if err != nil {
		return end, err
	}
	return end, rep.Finish(end.Digest)
}

// Err is the end as an error: the guest's fault, or nil.
func (e End) Err() error {
	if e.Fault != nil {
		return e.Fault
	}
	return nil
}

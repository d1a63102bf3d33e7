package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/session"
)

// recordWithSnapshot is session.Record with a snapshot at exit atExit
// written to path; it reports the snapshot on stderr. ok is false when
// no snapshot was written (the recording's own outcome is in end and err).
func recordWithSnapshot(ctx context.Context, g *guestFlags, img *vmm.Image, cfg vmm.Config, live replay.World, sink replay.Sink, atExit uint64, path string) (end session.End, ok bool, err error) {
	rec := replay.NewRecorder(live, sink, replay.RecorderConfig{})
	end, taken, err := session.RecordSnapshot(ctx, g.be, img, cfg, g.vmID, rec, session.SnapshotPlan{AtExit: atExit, Path: path})
	if taken.Err != nil {
		fmt.Fprintf(os.Stderr, "ftvm record: no snapshot: %v\n", taken.Err)
		return end, false, err
	}
	fmt.Fprintf(os.Stderr, "ftvm record: snapshot at exit %d: %s, %d bytes (%d pages of RAM), guest paused %v\n",
		taken.Exit, taken.Path, taken.Bytes, taken.Pages, taken.Pause.Round(time.Microsecond))
	return end, true, err
}

// snapshotFlagsError checks that --snapshot-at-exit and --snapshot come
// together.
func snapshotFlagsError(atExit uint64, path string) error {
	if (atExit == 0) != (path == "") {
		return usagef("--snapshot-at-exit N and --snapshot FILE go together (N >= 1)")
	}
	return nil
}

// runFromSnapshot restores the snapshot at path for img and runs it with
// world, whose clocks continue from the snapshot's. The guest's arguments
// and memory size come from the snapshot; cfg (from the command line) must
// agree with it on the NIC.
func runFromSnapshot(ctx context.Context, b backend.Backend, img *vmm.Image, cfg vmm.Config, path string, world *vmm.LiveWorld) int {
	st, err := vmm.ReadStateFile(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm run: %v\n", err)
		return exitFailed
	}
	scfg, err := st.MachineConfig(img)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm run: %s: %v\n", path, err)
		return exitFailed
	}
	if cfg.Cmdline != "" || cfg.MemSize != 0 && cfg.MemSize != scfg.MemSize {
		fmt.Fprintf(os.Stderr, "ftvm run: --from-snapshot takes the guest's arguments and memory size from the snapshot (%q, %d MiB)\n", scfg.Cmdline, scfg.MemSize>>20)
		return exitUsage
	}
	cfg.Cmdline, cfg.MemSize = scfg.Cmdline, scfg.MemSize
	if vmm.ConfigDigest(cfg) != st.ConfigDigest {
		fmt.Fprintf(os.Stderr, "ftvm run: the snapshot's NIC (%s) is not the one --net gives\n", scfg.Text())
		return exitFailed
	}
	world.ContinueFrom(st.SeenTime())
	end, err := session.RunFromSnapshot(ctx, b, img, st, world)
	if err == nil {
		err = end.Err()
	}
	return exitStatus(end.Result, err)
}

// replayFromSnapshot is session.ReplayFromSnapshot with the snapshot read
// from path; a snapshot that cannot be read is a refusal.
func replayFromSnapshot(ctx context.Context, pick func() (backend.Backend, error), img *vmm.Image, path string, src replay.Source, wrap func(*replay.Replayer) replay.World) (session.End, error) {
	st, err := vmm.ReadStateFile(path)
	if err != nil {
		return session.End{}, fmt.Errorf("%w: %w", session.ErrRefused, err)
	}
	return session.ReplayFromSnapshot(ctx, pick, img, st, src, wrap)
}

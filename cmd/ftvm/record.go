package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/replay/logfile"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/session"
)

func cmdRecord(args []string) int {
	fs := newFlagSet("record", "--log FILE [--snapshot-at-exit N --snapshot FILE] [--backend auto|kvm|ptrace] [--mem SIZE] [--net SPEC] [--vm-id ID] GUEST.elf [ARGS...]")
	g := guestFlags{cmd: "record"}
	g.register(fs)
	logPath := fs.String("log", "", "write the log to `FILE` (as FILE.incomplete until the run ends)")
	snapAt := fs.Uint64("snapshot-at-exit", 0, "take a snapshot after the guest's exit `N` (needs --snapshot)")
	snapPath := fs.String("snapshot", "", "write the snapshot to `FILE` (as FILE.incomplete until written)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if err := snapshotFlagsError(*snapAt, *snapPath); err != nil {
		fmt.Fprintf(os.Stderr, "ftvm record: %v\n", err)
		return exitUsage
	}
	if *logPath == "" {
		fmt.Fprintln(os.Stderr, "ftvm record: --log FILE is required")
		return exitUsage
	}
	img, cfg, err := g.loadGuest(fs.Args())
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm record: %v\n", err)
		return failStatus(err)
	}
	log, err := logfile.Create(*logPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm record: %v\n", err)
		return exitFailed
	}
	defer g.closeDisk()
	ctx, cancel := interruptContext()
	defer cancel()
	live := vmm.NewLiveWorld(ctx, os.Stdin, os.Stdout)
	if d := g.sharedDisk(); d != nil {
		live.AttachDisk(d)
	}
	netb, err := g.openNet(true)
	if err != nil {
		log.Abort()
		fmt.Fprintf(os.Stderr, "ftvm record: --net: %v\n", err)
		return exitFailed
	}
	if netb != nil {
		defer netb.Close()
		live.AttachNet(netb)
	}
	var end session.End
	snapOK := true
	if *snapAt > 0 {
		end, snapOK, err = recordWithSnapshot(ctx, &g, img, cfg, live, log, *snapAt, *snapPath)
	} else {
		end, err = session.Record(ctx, g.be, img, cfg, g.vmID, live, log)
	}
	if err == nil {
		err = log.Close()
	}
	if err != nil {
		// Interrupted or failed: the run has no deterministic end, so the
		// log stays incomplete rather than pretend to be replayable.
		log.Abort()
		fmt.Fprintf(os.Stderr, "ftvm record: the log is incomplete, left at %s.incomplete\n", *logPath)
		return exitStatus(end.Result, err)
	}
	fmt.Fprintf(os.Stderr, "ftvm record: %s: %s\n", *logPath, end.Summary)
	if !snapOK {
		return exitFailed
	}
	return exitStatus(end.Result, end.Err())
}

func cmdReplay(args []string) int {
	fs := newFlagSet("replay", "--log FILE [--from-snapshot FILE] [--disk FILE] [--backend NAME] GUEST.elf")
	logPath := fs.String("log", "", "replay the log in `FILE`")
	diskPath := fs.String("disk", "", "for a log of a VM with a local disk: its copy as it was when the recording started, in `FILE` (read only: the replay's writes stay in memory)")
	fromSnap := fs.String("from-snapshot", "", "start from the snapshot in `FILE` (taken while recording the log) and replay the rest of the log")
	quiet := fs.Bool("quiet", false, "do not show the guest's console output")
	var backendName string
	registerBackend(fs, &backendName)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *logPath == "" || fs.NArg() != 1 {
		fs.Usage()
		return exitUsage
	}
	file, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm replay: %v\n", err)
		return exitFailed
	}
	img, err := vmm.LoadELF(file)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm replay: %s: %v\n", fs.Arg(0), err)
		return exitFailed
	}
	log, err := logfile.Open(*logPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm replay: %v\n", err)
		return exitFailed
	}
	defer log.Close()
	pick := func() (backend.Backend, error) { return chooseBackend("replay", backendName) }
	var wrap func(*replay.Replayer) replay.World
	if !*quiet {
		wrap = func(rep *replay.Replayer) replay.World {
			return replay.WithOutputs(rep, func(kind replay.OutputKind, data []byte) error {
				if kind != replay.OutputConsole {
					return nil // packets were checked against the log; there is no wire to show them on
				}
				_, err := os.Stdout.Write(data)
				return err
			})
		}
	}
	ctx, cancel := interruptContext()
	defer cancel()
	began := time.Now()
	var end session.End
	if *fromSnap != "" {
		end, err = replayFromSnapshot(ctx, pick, img, *fromSnap, log, wrap)
	} else if *diskPath != "" {
		end, err = session.ReplayWithLocalDisk(ctx, pick, img, log, wrap, func(cfg *vmm.Config) error {
			return attachReplayDisk(cfg, *diskPath)
		})
	} else {
		end, err = session.Replay(ctx, pick, img, log, wrap)
	}
	elapsed := time.Since(began)
	switch {
	case errors.Is(err, session.ErrRefused):
		// Not a divergence: nothing was replayed (a log of another guest,
		// or no log at all).
		fmt.Fprintf(os.Stderr, "ftvm replay: %s does not replay %s: %v\n", *logPath, fs.Arg(0), err)
		return exitFailed
	case logDamaged(err):
		fmt.Fprintf(os.Stderr, "ftvm replay: the log is damaged, so the replay could not be checked to its end: %v\n", err)
		return exitFailed
	case errors.Is(err, session.ErrSetup), errors.Is(err, vmm.ErrInterrupted):
		return exitStatus(end.Result, err)
	case err != nil:
		fmt.Fprintf(os.Stderr, "ftvm replay: DIVERGED: %v\n", err)
		return exitDiverged
	}
	what := fmt.Sprintf("guest exited %d", end.Result.Status)
	if end.Fault != nil {
		what = "guest stopped as recorded: " + end.Fault.Error()
	}
	fmt.Fprintf(os.Stderr, "ftvm replay: verified: final state digest %x matches; %s\nftvm replay: %s, replay time %v\n",
		end.Digest[:8], what, end.Summary, elapsed.Round(time.Millisecond))
	return 0
}

// logDamaged says whether err is about the log's bytes (damaged, cut
// short, of another version) rather than about the guest's execution.
func logDamaged(err error) bool {
	var de *replay.DecodeError
	return errors.As(err, &de) || errors.Is(err, replay.ErrIncompleteLog)
}

func cmdLog(args []string) int {
	if len(args) != 2 || (args[0] != "dump" && args[0] != "stats") {
		fmt.Fprintln(os.Stderr, "usage: ftvm log dump FILE | ftvm log stats FILE")
		return exitUsage
	}
	f, err := os.Open(args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm log: %v\n", err)
		return exitFailed
	}
	defer f.Close()
	dec := replay.NewDecoder(f)
	if args[0] == "dump" {
		return dumpLog(dec)
	}
	return logStats(dec)
}

func dumpLog(dec *replay.Decoder) int {
	for {
		e, err := dec.Next()
		if err == io.EOF {
			return 0
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "ftvm log dump: %v\n", err)
			return exitFailed
		}
		fmt.Println(e.String())
	}
}

func logStats(dec *replay.Decoder) int {
	type kindStats struct{ count, bytes, payload uint64 }
	stats := map[replay.Kind]*kindStats{}
	var entries, lastTime uint64
	var readErr error
	for {
		e, err := dec.Next()
		if err != nil {
			if err != io.EOF {
				readErr = err
			}
			break
		}
		entries++
		s := stats[e.Kind]
		if s == nil {
			s = &kindStats{}
			stats[e.Kind] = s
		}
		s.count++
		s.bytes += uint64(dec.EntrySize())
		s.payload += uint64(len(e.Data)) + e.Length
		if e.Kind == replay.KindTSC || e.Kind == replay.KindClock && e.Clock == replay.ClockMonotonic {
			lastTime = max(lastTime, e.Value)
		}
	}
	kinds := make([]replay.Kind, 0, len(stats))
	for k := range stats {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool { return kinds[i] < kinds[j] })
	total := dec.Bytes()
	fmt.Printf("%-14s %10s %12s %10s %14s\n", "kind", "entries", "bytes", "bytes/ent", "payload bytes")
	var entryBytes uint64
	for _, k := range kinds {
		s := stats[k]
		entryBytes += s.bytes
		fmt.Printf("%-14v %10d %12d %10.2f %14d\n", k, s.count, s.bytes, float64(s.bytes)/float64(s.count), s.payload)
	}
	fmt.Printf("%-14s %10s %12d\n", "framing", "", uint64(total)-entryBytes)
	fmt.Printf("total: %d entries, %d bytes in %d frames", entries, total, dec.Frames())
	if lastTime > 0 {
		secs := float64(lastTime) / 1e9
		fmt.Printf(", %.3f s of guest time, %.0f bytes/s (%.3f Mbit/s)", secs, float64(total)/secs, float64(total)*8/secs/1e6)
	}
	fmt.Println()
	if readErr != nil {
		fmt.Fprintf(os.Stderr, "ftvm log stats: %v\n", readErr)
		return exitFailed
	}
	return 0
}

// attachReplayDisk opens path for the replay of a local-disk log: read only
// (writes stay in memory), and only if it is the copy the recording
// started from.
func attachReplayDisk(cfg *vmm.Config, path string) error {
	digest, err := vmm.DiskDigest(path)
	if err != nil {
		return err
	}
	if digest != cfg.Disk.Digest {
		return fmt.Errorf("the disk %s is not the copy the recording started from (sha256 %.16s…, recorded %.16s…)", path, digest, cfg.Disk.Digest)
	}
	d, err := vmm.OpenDiskScratch(path)
	if err != nil {
		return err
	}
	cfg.Disk.File = d
	return nil
}

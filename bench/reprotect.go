package bench

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/ftvm/ftvm/bench/kv"
)

// ReprotectRow is re-protection after failovers for one guest size (three
// quarters of its RAM filled with data by kvstore's fill=) and load: how long the survivor ran unprotected (from going live to a new
// backup holding its state, the new backup's process start included), and
// the live transfer's bytes, length and final pause.
type ReprotectRow struct {
	MemMiB    uint64
	Load      string // "idle" or "kvstore, 3 clients"
	Failovers int
	// Per failover, in ms and MiB.
	Unprotected, Transfer, Pause, SentMiB []float64
	// Medians and maxima of the above.
	UnprotectedP50, UnprotectedMax, TransferP50, PauseP50, PauseMax, SentMiBP50 float64
}

var (
	liveAtRE      = regexp.MustCompile(`backup: LIVE since (\S+) `)
	protectedAtRE = regexp.MustCompile(`primary: PROTECTED again at (\S+): .*\((\d+(?:\.\d+)?) (bytes|KiB|MiB) sent in \d+ rounds, (\S+) in all; the guest paused (\S+)\)`)
)

// benchReprotect runs kvstore under ftvm pair with the live side killed
// again and again, each time after a new backup joined it, for each guest
// size, idle and under clients.
func benchReprotect(ctx context.Context, o Options, r *Results, _ string) error {
	if o.FTVM == "" {
		o.Logf("re-protection: skipped (no ftvm binary given)")
		return nil
	}
	mems, failovers := []uint64{64, 256, 1024}, 3
	if o.Quick {
		mems, failovers = []uint64{64}, 1
	}
	for _, mem := range mems {
		for _, load := range []bool{false, true} {
			row, err := reprotectTrial(ctx, o, mem, load, failovers)
			if err != nil {
				return fmt.Errorf("re-protection, %d MiB, load %v: %w", mem, load, err)
			}
			o.Logf("re-protection %d MiB %s: unprotected p50 %.0f ms (max %.0f), transfer p50 %.0f ms, %.1f MiB sent, pause p50 %.2f ms (max %.2f)",
				mem, row.Load, row.UnprotectedP50, row.UnprotectedMax, row.TransferP50, row.SentMiBP50, row.PauseP50, row.PauseMax)
			r.Reprotect = append(r.Reprotect, row)
		}
	}
	return nil
}

func reprotectTrial(ctx context.Context, o Options, memMiB uint64, load bool, failovers int) (ReprotectRow, error) {
	row := ReprotectRow{MemMiB: memMiB, Load: "idle", Failovers: failovers}
	if load {
		row.Load = "kvstore, 3 clients"
	}
	_, addr, _, err := userNet(7000)
	if err != nil {
		return row, err
	}
	cmd := exec.CommandContext(ctx, o.FTVM, "pair", "--backend", o.Backend.Name(), "--mem", strconv.FormatUint(memMiB<<20, 10),
		"--net", "user,hostfwd=udp:"+addr+"-:7000", "--kill-primary-after", "1s", "--failovers", strconv.Itoa(failovers), o.imagePath("kvstore"),
		fmt.Sprintf("fill=%d", memMiB*3/4))
	var stderr strings.Builder
	log := &lockedBuilder{b: &stderr}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		return row, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	stop := make(chan struct{})
	ran := make(chan error, 1)
	var out kv.Outcome
	if load {
		w := kv.Workload{Clients: 3, Keys: 4, Duration: time.Hour, Seed: int64(memMiB), OpTimeout: time.Minute, Stop: stop}
		go func() {
			var err error
			out, err = w.Run(ctx, addr)
			ran <- err
		}()
	}
	deadline := time.Now().Add(time.Duration(failovers) * 3 * time.Minute)
	for strings.Count(log.String(), "primary: PROTECTED again") < failovers {
		select {
		case <-done:
			close(stop)
			return row, fmt.Errorf("the pair ended after %d re-protections:\n%s", strings.Count(log.String(), "primary: PROTECTED again"), log.String())
		case <-ctx.Done():
			close(stop)
			return row, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			close(stop)
			return row, fmt.Errorf("not %d re-protections in time:\n%s", failovers, log.String())
		}
	}
	close(stop)
	if load {
		if err := <-ran; err != nil {
			return row, err
		}
		if out.Failed > 0 {
			return row, fmt.Errorf("%d calls without a reply", out.Failed)
		}
		if res, _ := kv.CheckLinearizable(out.Calls, time.Minute); res != porcupine.Ok {
			return row, fmt.Errorf("history is %v", res)
		}
	}
	if err := row.parse(log.String()); err != nil {
		return row, err
	}
	return row, nil
}

// parse takes the figures of each failover from the pair's log: a LIVE
// line, then the PROTECTED line of the same side.
func (row *ReprotectRow) parse(log string) error {
	var liveAt time.Time
	for _, line := range strings.Split(log, "\n") {
		if m := liveAtRE.FindStringSubmatch(line); m != nil {
			t, err := time.Parse(time.RFC3339Nano, m[1])
			if err != nil {
				return fmt.Errorf("a LIVE line's time: %w", err)
			}
			liveAt = t
			continue
		}
		m := protectedAtRE.FindStringSubmatch(line)
		if m == nil || liveAt.IsZero() {
			continue // a join after the backup died is not a failover's
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			return fmt.Errorf("a PROTECTED line's time: %w", err)
		}
		size, _ := strconv.ParseFloat(m[2], 64)
		switch m[3] {
		case "KiB":
			size /= 1 << 10
		case "bytes":
			size /= 1 << 20
		}
		total, err1 := time.ParseDuration(m[4])
		pause, err2 := time.ParseDuration(m[5])
		if err1 != nil || err2 != nil {
			return fmt.Errorf("cannot read the figures of: %s", line)
		}
		row.Unprotected = append(row.Unprotected, ms(at.Sub(liveAt)))
		row.Transfer = append(row.Transfer, ms(total))
		row.Pause = append(row.Pause, ms(pause))
		row.SentMiB = append(row.SentMiB, size)
		liveAt = time.Time{}
	}
	if len(row.Unprotected) < row.Failovers {
		return fmt.Errorf("figures for %d re-protections in the log, want %d", len(row.Unprotected), row.Failovers)
	}
	row.UnprotectedP50, row.UnprotectedMax = median(row.Unprotected), maxOf(row.Unprotected)
	row.TransferP50, row.SentMiBP50 = median(row.Transfer), median(row.SentMiB)
	row.PauseP50, row.PauseMax = median(row.Pause), maxOf(row.Pause)
	return nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func maxOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

package bench

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ftvm/ftvm/logchannel"
)

// SideStats are one side's figures over a row's repetitions (medians and
// ranges): where its time went.
type SideStats struct {
	Runs int
	// CPUSeconds: user + system of the process and its reaped children
	// (on ptrace the traced guest); ChildCPUSeconds the children's part.
	CPUSeconds, ChildCPUSeconds Stat
	// VMSeconds: the VM's run as the process timed it.
	VMSeconds Stat
	// CPUPerWall: CPU-seconds per second of the VM's run (1 = one core).
	CPUPerWall Stat
	Exits      Stat
	// ExitsPerSecond: exits per second of the VM's run.
	ExitsPerSecond Stat
	// CPUMicrosPerExit: CPU time per exit, VMM and guest together.
	CPUMicrosPerExit Stat
	// AllocsPerExit: heap allocations of the whole process per exit.
	AllocsPerExit Stat
	// SwitchesPerExit: voluntary (blocking waits) and involuntary
	// (preemptions) context switches of the Go process per exit.
	VoluntaryPerExit, InvoluntaryPerExit Stat
	GCs                                  Stat
	GOMAXPROCS                           Stat
}

// sideStats aggregates one side's member figures.
func sideStats(ms []MemberStats) SideStats {
	var cpu, child, vm, perWall, exits, eps, usPer, allocs, vol, invol, gcs, procs []float64
	for _, m := range ms {
		c := m.CPUSeconds()
		cpu, child, vm = append(cpu, c), append(child, m.ChildUserSeconds+m.ChildSysSeconds), append(vm, m.VMSeconds)
		exits, gcs, procs = append(exits, float64(m.Exits)), append(gcs, float64(m.GCs)), append(procs, float64(m.GOMAXPROCS))
		if m.VMSeconds > 0 {
			perWall = append(perWall, c/m.VMSeconds)
			eps = append(eps, float64(m.Exits)/m.VMSeconds)
		}
		if m.Exits > 0 {
			e := float64(m.Exits)
			usPer = append(usPer, c*1e6/e)
			allocs = append(allocs, float64(m.Mallocs)/e)
			vol, invol = append(vol, float64(m.VoluntarySwitches)/e), append(invol, float64(m.InvoluntarySwitches)/e)
		}
	}
	return SideStats{Runs: len(ms), CPUSeconds: newStat(cpu), ChildCPUSeconds: newStat(child), VMSeconds: newStat(vm),
		CPUPerWall: newStat(perWall), Exits: newStat(exits), ExitsPerSecond: newStat(eps), CPUMicrosPerExit: newStat(usPer),
		AllocsPerExit: newStat(allocs), VoluntaryPerExit: newStat(vol), InvoluntaryPerExit: newStat(invol), GCs: newStat(gcs),
		GOMAXPROCS: newStat(procs)}
}

// ChannelStats are the primary's logging-channel figures over a row's
// FT runs, in milliseconds where they are times.
type ChannelStats struct {
	// AckDelayAvgMS: from sending a frame to the ack covering it.
	AckDelayAvgMS Stat
	// RTTAvgMS: the heartbeat round trip, measured while the log is idle.
	RTTAvgMS   Stat
	RTTSamples Stat
	// LagWaits, LagWaitMS: how often and how long the lag throttle
	// stopped the primary's vCPU.
	LagWaits, LagWaitMS Stat
	// FlowBlocked, FlowBlockedMS: how often and how long the primary
	// waited for the backup's acks to free the unacked window.
	FlowBlocked, FlowBlockedMS Stat
	// Frames and Acks per run, and entries per frame (batching).
	Frames, Acks, EntriesPerFrame Stat
}

func channelStats(cs []logchannel.Stats) ChannelStats {
	msOf := func(d time.Duration) float64 { return float64(d) / 1e6 }
	var ack, rtt, rttN, waits, waitMS, fb, fbMS, frames, acks, epf []float64
	for _, c := range cs {
		ack, waits, waitMS = append(ack, msOf(c.AckDelayAvg)), append(waits, float64(c.LagWaits)), append(waitMS, msOf(c.LagWaitTime))
		fb, fbMS = append(fb, float64(c.FlowBlocked)), append(fbMS, msOf(c.FlowBlockedTime))
		frames, acks = append(frames, float64(c.Frames)), append(acks, float64(c.Acks))
		if c.RTTSamples > 0 {
			rtt, rttN = append(rtt, msOf(c.RTTAvg)), append(rttN, float64(c.RTTSamples))
		}
		if c.Frames > 0 {
			epf = append(epf, float64(c.Entries)/float64(c.Frames))
		}
	}
	return ChannelStats{AckDelayAvgMS: newStat(ack), RTTAvgMS: newStat(rtt), RTTSamples: newStat(rttN), LagWaits: newStat(waits),
		LagWaitMS: newStat(waitMS), FlowBlocked: newStat(fb), FlowBlockedMS: newStat(fbMS), Frames: newStat(frames), Acks: newStat(acks),
		EntriesPerFrame: newStat(epf)}
}

// ProfileSummary is the top of one side's CPU profile for a workload.
type ProfileSummary struct {
	Workload, Role, Placement string
	File                      string
	Top                       []ProfileLine
	Err                       string `json:",omitempty"`
}

// ProfileLine is one function of a profile's top: its own (flat) and its
// cumulative share of the samples, in percent.
type ProfileLine struct {
	Func            string
	FlatPct, CumPct float64
}

// profileTop runs `go tool pprof -top` on a CPU profile (it carries its
// symbols) and returns its first n functions.
func profileTop(file string, n int) ([]ProfileLine, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("no go tool to read %s: %w", file, err)
	}
	out, err := exec.Command(gobin, "tool", "pprof", "-top", fmt.Sprintf("-nodecount=%d", n), file).Output()
	if err != nil {
		return nil, fmt.Errorf("go tool pprof -top %s: %w", file, err)
	}
	return parsePprofTop(string(out)), nil
}

// parsePprofTop reads the table of `go tool pprof -top`: after the header
// line "flat  flat%   sum%        cum   cum%", lines of
// "0.50s 45.45% 45.45% 0.60s 54.55%  pkg.Func".
func parsePprofTop(text string) []ProfileLine {
	var lines []ProfileLine
	inTable := false
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if !inTable {
			inTable = len(f) == 5 && f[0] == "flat" && f[1] == "flat%"
			continue
		}
		if len(f) < 6 {
			continue
		}
		flat, err1 := strconv.ParseFloat(strings.TrimSuffix(f[1], "%"), 64)
		cum, err2 := strconv.ParseFloat(strings.TrimSuffix(f[4], "%"), 64)
		if err1 != nil || err2 != nil {
			continue
		}
		lines = append(lines, ProfileLine{Func: strings.Join(f[5:], " "), FlatPct: flat, CumPct: cum})
	}
	return lines
}

// Target is one of issue 17's targets, checked against a run's figures.
type Target struct {
	What     string
	Met      bool
	Measured string
	// Bound: for a target not met, the figure that bounds it.
	Bound string
}

// ratioTargets are the FT/plain targets, pinned, per workload.
var ratioTargets = []struct {
	workload string
	min      float64
}{{"cpu", 0.95}, {"kvstore", 0.90}, {"netsource transmit", 0.90}, {"netsink receive", 0.85}}

// targets checks the targets against r (the pinned rows if any).
func (r *Results) targets() []Target {
	var ts []Target
	rows := map[string]Throughput{}
	for _, t := range append(append([]Throughput(nil), r.Table1...), r.Table2...) {
		if _, seen := rows[t.Workload]; !seen || t.Placement == Pinned.Name {
			rows[t.Workload] = t
		}
	}
	for _, want := range ratioTargets {
		t, ok := rows[want.workload]
		if !ok {
			continue
		}
		tg := Target{What: fmt.Sprintf("FT/plain >= %.2f for `%s` (%s)", want.min, want.workload, t.Placement),
			Met: t.Ratio.Median >= want.min, Measured: stat(t.Ratio, "%.3f")}
		if !tg.Met {
			tg.Bound = ratioBound(t)
		}
		ts = append(ts, tg)
	}
	if kvRow, ok := rows["kvstore"]; ok && kvRow.Channel != nil {
		d := r.OutputDelayBy[kvRow.Placement]
		if d == nil {
			d = r.OutputDelay
		}
		rtt := r.LoopbackRTTUS / 1e3
		tg := Target{What: fmt.Sprintf("Output Rule delay p99 <= loopback round trip + 0.1 ms (`kvstore`, %s)", kvRow.Placement),
			Met:      rtt > 0 && d["p99_ms"] <= rtt+0.1,
			Measured: fmt.Sprintf("p99 %.3f ms (p50 %.3f ms) against a loopback TCP round trip of %.3f ms (+0.1 = %.3f ms)", d["p99_ms"], d["p50_ms"], rtt, rtt+0.1)}
		if !tg.Met {
			tg.Bound = fmt.Sprintf("the primary's mean ack delay (frame sent to its ack) is %s ms; the backup acks on receipt, so the rest of the p99 is queueing behind the vCPU and the backup's wake-ups on a shared core", stat(kvRow.Channel.AckDelayAvgMS, "%.3f"))
		}
		ts = append(ts, tg)
	}
	var worse []string
	var all []string
	for _, t := range append(append([]Throughput(nil), r.Table1...), r.Table2...) {
		p, b := t.Sides[RolePrimary], t.Sides[RoleBackup]
		if p.Runs == 0 {
			continue
		}
		all = append(all, fmt.Sprintf("%s %s %.3f/%.3f", t.Workload, t.Placement, b.CPUSeconds.Median, p.CPUSeconds.Median))
		if b.CPUSeconds.Median > p.CPUSeconds.Median {
			worse = append(worse, fmt.Sprintf("`%s` %s", t.Workload, t.Placement))
		}
	}
	if len(all) > 0 {
		tg := Target{What: "backup CPU-seconds <= primary CPU-seconds, every workload", Met: len(worse) == 0,
			Measured: "backup/primary CPU-s: " + strings.Join(all, "; ")}
		if !tg.Met {
			tg.Bound = "more backup than primary CPU on " + strings.Join(worse, ", ")
		}
		ts = append(ts, tg)
	}
	var allocs []string
	zero := true
	for _, t := range r.Table1 {
		for _, role := range []string{RolePrimary, RoleBackup} {
			s, ok := t.Sides[role]
			if !ok || t.Placement != rows[t.Workload].Placement {
				continue
			}
			allocs = append(allocs, fmt.Sprintf("%s %s %.2f", t.Workload, role, s.AllocsPerExit.Median))
			if s.AllocsPerExit.Median > 0.005 {
				zero = false
			}
		}
	}
	if len(allocs) > 0 {
		tg := Target{What: "zero allocations per exit on the record and replay paths", Met: zero,
			Measured: "whole-process heap allocations per exit: " + strings.Join(allocs, "; ")}
		if !zero {
			tg.Bound = "the figure counts every allocation of the process while its VM ran, setup included (the code proof, the TLS handshake: about 2,000 in a cpu run), and the devices' (user networking allocates per packet, plain runs too); what one more exit costs a pair, record, channel and replay together, is measured by TestPairAllocatesNothingPerExit in vmm/ft: 0.003-0.013 per exit on kvm and on ptrace, paid per batch and per unit of time, not per exit"
		}
		ts = append(ts, tg)
	}
	return ts
}

// ratioBound names the figures that bound a row's FT/plain ratio: the
// primary's extra CPU per exit over plain, what that alone would cost,
// and the time the primary spent off the CPU, waiting.
func ratioBound(t Throughput) string {
	pl, pr := t.Sides[RolePlain], t.Sides[RolePrimary]
	if pl.Runs == 0 || pr.Runs == 0 {
		return "no per-process figures (the run was not in processes)"
	}
	extra := pr.CPUMicrosPerExit.Median - pl.CPUMicrosPerExit.Median
	// With the primary's exits at the plain VM's pace plus its extra CPU
	// per exit, a CPU-bound run would take this much longer.
	cpuBound := safeDiv(pl.VMSeconds.Median, pl.VMSeconds.Median+pl.Exits.Median*extra/1e6)
	s := fmt.Sprintf("primary %.3f CPU-s in a %.3f s run, plain %.3f in %.3f s; CPU per exit %.1f µs against %.1f µs plain: +%.1f µs of recording and channel per exit, which alone bounds the ratio at %.3f; off-CPU (waiting) %.3f s against %.3f s plain",
		pr.CPUSeconds.Median, pr.VMSeconds.Median, pl.CPUSeconds.Median, pl.VMSeconds.Median, pr.CPUMicrosPerExit.Median, pl.CPUMicrosPerExit.Median,
		extra, cpuBound, pr.VMSeconds.Median-pr.CPUSeconds.Median, pl.VMSeconds.Median-pl.CPUSeconds.Median)
	if t.Channel != nil {
		s += fmt.Sprintf(", mean ack delay %.3f ms", t.Channel.AckDelayAvgMS.Median)
	}
	if t.Workload == "kvstore" {
		s += fmt.Sprintf("; closed loop: each client waits for its reply, so ops/s follow the latency the Output Rule adds (exits/s %.0f against %.0f plain)", pr.ExitsPerSecond.Median, pl.ExitsPerSecond.Median)
	}
	return s
}

func safeDiv(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// breakdownMarkdown writes where the time went: each side's CPU, exits,
// allocations and switches, the channel's figures, and the profiles.
func (r *Results) breakdownMarkdown(b *strings.Builder) {
	rows := append(append([]Throughput(nil), r.Table1...), r.Table2...)
	if len(rows) == 0 || rows[0].Sides == nil {
		return
	}
	b.WriteString("## Where the time goes, per side\n\nEach process measured itself when its VM stopped: CPU-s is getrusage user + system of the process (every thread) plus its reaped children (RUSAGE_CHILDREN: on ptrace the traced guest process, its part in the `guest CPU-s` column; on kvm the guest runs on a VMM thread and is inside the process's own time); `VM s` the VM's run (a primary's from dialling its backup to its last output released; a server's until the bench stopped it); allocations are the whole process's heap allocations (runtime.MemStats.Mallocs) per guest-caused exit; switches are the Go process's voluntary (blocking waits, wake-ups) and involuntary (preemptions) context switches per exit. A pinned process starts with GOMAXPROCS 1 (Go derives it from the affinity); the VMM raises it to 2 when it runs a vCPU, because the vCPU thread keeps its P through KVM_RUN or wait4 and with one P the channel's goroutines waited for the scheduler to retake it (a 2.0 ms mean ack delay and 20 ms idle round trips on a pinned `cpu` primary before, 0.32 ms and 0.17 ms after). The backend's own round trip of one exit, VMM work included, is in the header; CPU µs per exit above it is the guest's computing between exits plus, for the primary and the backup, recording or replaying and the channel.\n\n")
	b.WriteString("| workload | placement | side | CPU-s | guest CPU-s | VM s | CPU-s per VM s | exits | exits/s | CPU µs/exit | allocs/exit | vol. switches/exit | invol. switches/exit | GCs | GOMAXPROCS |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, t := range rows {
		for _, role := range []string{RolePlain, RolePrimary, RoleBackup} {
			s, ok := t.Sides[role]
			if !ok {
				continue
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", t.Workload, t.Placement, role,
				stat(s.CPUSeconds, "%.3f"), stat(s.ChildCPUSeconds, "%.3f"), stat(s.VMSeconds, "%.3f"), stat(s.CPUPerWall, "%.2f"),
				stat(s.Exits, "%.0f"), stat(s.ExitsPerSecond, "%.0f"), stat(s.CPUMicrosPerExit, "%.1f"), stat(s.AllocsPerExit, "%.2f"),
				stat(s.VoluntaryPerExit, "%.2f"), stat(s.InvoluntaryPerExit, "%.3f"), stat(s.GCs, "%.0f"), stat(s.GOMAXPROCS, "%.0f"))
		}
	}
	b.WriteString("\n## The logging channel and the lag throttle (the primary's counters)\n\nAck delay: from sending a frame to the ack that covers it (the backup acks on receipt). RTT: heartbeat round trip while the log is idle (a row without idle time has no sample). Lag throttle: the times the primary's vCPU waited for the backup's replay lag to fall under 500 ms, and for how long in all. Flow blocked: the times it waited for acks to free the unacked window.\n\n")
	b.WriteString("| workload | placement | ack delay mean ms | idle RTT ms | lag-throttle stops | stopped ms | flow blocked | blocked ms | frames | entries/frame | acks |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, t := range rows {
		c := t.Channel
		if c == nil {
			continue
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", t.Workload, t.Placement, stat(c.AckDelayAvgMS, "%.3f"),
			stat(c.RTTAvgMS, "%.3f"), stat(c.LagWaits, "%.0f"), stat(c.LagWaitMS, "%.1f"), stat(c.FlowBlocked, "%.0f"), stat(c.FlowBlockedMS, "%.1f"),
			stat(c.Frames, "%.0f"), stat(c.EntriesPerFrame, "%.1f"), stat(c.Acks, "%.0f"))
	}
	b.WriteString("\n")
	if len(r.Profiles) > 0 {
		b.WriteString("## CPU profiles (one extra run per workload and mode, not counted above)\n\nThe Go process of each side (pprof; on ptrace the guest process is not in it). Top functions by own (flat) samples, with their cumulative share.\n\n| workload | side | top functions: flat% (cum%) |\n|---|---|---|\n")
		for _, p := range r.Profiles {
			var fs []string
			for _, l := range p.Top {
				fs = append(fs, fmt.Sprintf("`%s` %.1f (%.1f)", l.Func, l.FlatPct, l.CumPct))
			}
			if p.Err != "" {
				fs = append(fs, "error: "+p.Err)
			}
			fmt.Fprintf(b, "| %s | %s | %s |\n", p.Workload, p.Role, strings.Join(fs, "; "))
		}
		b.WriteString("\n")
	}
}

// loopbackRTT is the median round trip of one byte over a loopback TCP
// connection, n times: the floor under an ack on this machine.
func loopbackRTT(n int) (time.Duration, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	rtts := make([]time.Duration, 0, n)
	buf := []byte{1}
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0, err
		}
		rtts = append(rtts, time.Since(t0))
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	return rtts[len(rtts)/2], nil
}

package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/logchannel"
)

func TestParsePprofTop(t *testing.T) {
	out := `File: ftvm
Type: cpu
Duration: 1.21s, Total samples = 1.10s (90.91%)
Showing nodes accounting for 0.90s, 81.82% of 1.10s total
      flat  flat%   sum%        cum   cum%
     0.50s 45.45% 45.45%      0.60s 54.55%  internal/runtime/syscall.Syscall6
     0.20s 18.18% 63.64%      0.20s 18.18%  runtime.futex
     0.10s  9.09% 72.73%      0.15s 13.64%  github.com/ftvm/ftvm/vmm.(*Machine).Run
         0     0% 72.73%      0.05s  4.55%  some func with spaces
`
	got := parsePprofTop(out)
	want := []ProfileLine{
		{"internal/runtime/syscall.Syscall6", 45.45, 54.55},
		{"runtime.futex", 18.18, 18.18},
		{"github.com/ftvm/ftvm/vmm.(*Machine).Run", 9.09, 13.64},
		{"some func with spaces", 0, 4.55},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d lines %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	if l := parsePprofTop("no table here\n"); len(l) != 0 {
		t.Errorf("a text without the table gave %+v", l)
	}
}

func TestSideStats(t *testing.T) {
	ms := []MemberStats{
		{VMSeconds: 1, Exits: 1000, UserSeconds: 0.5, SysSeconds: 0.25, ChildUserSeconds: 0.25, Mallocs: 2000, VoluntarySwitches: 100, GCs: 1},
		{VMSeconds: 2, Exits: 1000, UserSeconds: 1, SysSeconds: 0.5, ChildSysSeconds: 0.5, Mallocs: 0, VoluntarySwitches: 300, GCs: 3},
		{VMSeconds: 0, Exits: 0}, // a run that never started counts in CPU, not in per-exit figures
	}
	s := sideStats(ms)
	if s.Runs != 3 {
		t.Errorf("Runs %d, want 3", s.Runs)
	}
	if s.CPUSeconds.Max != 2 || s.CPUSeconds.Min != 0 || s.CPUSeconds.Median != 1 {
		t.Errorf("CPUSeconds %+v, want 0, 1, 2", s.CPUSeconds)
	}
	if s.ChildCPUSeconds.Max != 0.5 {
		t.Errorf("ChildCPUSeconds %+v", s.ChildCPUSeconds)
	}
	if len(s.CPUMicrosPerExit.Samples) != 2 || s.CPUMicrosPerExit.Min != 1000 || s.CPUMicrosPerExit.Max != 2000 {
		t.Errorf("CPUMicrosPerExit %+v, want 1000 and 2000", s.CPUMicrosPerExit)
	}
	if s.AllocsPerExit.Min != 0 || s.AllocsPerExit.Max != 2 {
		t.Errorf("AllocsPerExit %+v, want 0 and 2", s.AllocsPerExit)
	}
	if s.ExitsPerSecond.Min != 500 || s.ExitsPerSecond.Max != 1000 {
		t.Errorf("ExitsPerSecond %+v", s.ExitsPerSecond)
	}
	if s.CPUPerWall.Min != 1 || s.CPUPerWall.Max != 1 {
		t.Errorf("CPUPerWall %+v, want 1", s.CPUPerWall)
	}
	if s.VoluntaryPerExit.Max != 0.3 {
		t.Errorf("VoluntaryPerExit %+v", s.VoluntaryPerExit)
	}
}

func TestChannelStats(t *testing.T) {
	c := channelStats([]logchannel.Stats{
		{Entries: 30, Frames: 10, Acks: 5, AckDelayAvg: 2 * time.Millisecond, LagWaits: 1, LagWaitTime: 300 * time.Millisecond},
		{Entries: 0, Frames: 0, RTTAvg: 100 * time.Microsecond, RTTSamples: 4},
	})
	if c.EntriesPerFrame.Median != 3 || len(c.EntriesPerFrame.Samples) != 1 {
		t.Errorf("EntriesPerFrame %+v, want 3 from the run with frames", c.EntriesPerFrame)
	}
	if c.RTTAvgMS.Median != 0.1 || len(c.RTTAvgMS.Samples) != 1 {
		t.Errorf("RTTAvgMS %+v, want 0.1 from the run with samples", c.RTTAvgMS)
	}
	if c.LagWaitMS.Max != 300 || c.LagWaits.Max != 1 || c.AckDelayAvgMS.Max != 2 {
		t.Errorf("lag/ack figures %+v", c)
	}
}

// TestTargets: the targets read the pinned row, and a target not met
// names its bound.
func TestTargets(t *testing.T) {
	side := func(cpu, vm float64, exits uint64) SideStats {
		return sideStats([]MemberStats{{UserSeconds: cpu, VMSeconds: vm, Exits: exits}})
	}
	r := &Results{LoopbackRTTUS: 50, OutputDelayBy: map[string]map[string]float64{"pinned": {"p50_ms": 0.1, "p99_ms": 0.12}}}
	r.Table1 = []Throughput{
		{Workload: "cpu", Placement: "unpinned", Ratio: newStat([]float64{0.99})},
		{Workload: "cpu", Placement: "pinned", Ratio: newStat([]float64{0.80}), Sides: map[string]SideStats{
			RolePlain: side(1, 1, 1000), RolePrimary: side(1.25, 1.25, 1000), RoleBackup: side(1.3, 1.25, 1000)}},
		// 1000 exits at +250 µs each on a 1 s run: bound 1/1.25 = 0.800.
		{Workload: "kvstore", Placement: "pinned", Ratio: newStat([]float64{0.95}), Channel: &ChannelStats{}},
	}
	ts := r.targets()
	find := func(prefix string) Target {
		for _, tg := range ts {
			if strings.HasPrefix(tg.What, prefix) {
				return tg
			}
		}
		t.Fatalf("no target %q in %+v", prefix, ts)
		return Target{}
	}
	if c := find("FT/plain >= 0.95 for `cpu`"); c.Met || !strings.Contains(c.What, "pinned") || !strings.Contains(c.Bound, "+250.0 µs") {
		t.Errorf("cpu target %+v: want not met on the pinned row, bound naming 250 µs per exit", c)
	}
	if c := find("FT/plain >= 0.95 for `cpu`"); !strings.Contains(c.Bound, "bounds the ratio at 0.800") {
		t.Errorf("cpu bound %q: want the CPU bound 0.800", c.Bound)
	}
	if k := find("FT/plain >= 0.90 for `kvstore`"); !k.Met {
		t.Errorf("kvstore target %+v: want met", k)
	}
	if d := find("Output Rule delay"); !d.Met {
		t.Errorf("delay target %+v: 0.12 ms <= 0.05 + 0.1 ms", d)
	}
	if b := find("backup CPU-seconds"); b.Met || !strings.Contains(b.Bound, "`cpu` pinned") {
		t.Errorf("backup CPU target %+v: want not met on cpu pinned", b)
	}
}

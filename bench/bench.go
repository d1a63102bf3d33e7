package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/ftvm/ftvm/bench/kv"
	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/vnet"
)

// Options configure a benchmark run.
type Options struct {
	// Quick: one repetition of short runs and a few failover trials: a
	// smoke test that finishes in under two minutes.
	Quick bool
	// Only, if not empty, names the Steps to run; the others are left out
	// of the run and the report.
	Only []string
	// GuestDir holds the guest images (guests/build).
	GuestDir string
	// Backend runs every guest of the run.
	Backend backend.Backend
	// FTVM is the ftvm binary, for the failover trials (real processes).
	FTVM string
	// Logf reports progress.
	Logf func(format string, args ...any)
	// Reps is how many times each workload runs plain and under FT in
	// each placement (0: 1 quick, 5 full).
	Reps int
	// FailoverTrials per failure setting (0: 2 quick, 50 full).
	FailoverTrials int
	// CPUProfileDir, if set, gets a CPU profile of each side of one extra
	// plain and FT run of every workload (not counted in the figures).
	CPUProfileDir string
	// ChannelTimeout is the logging channel's failover timeout in the
	// plain-versus-FT runs (0: the channel's default). Under emulation a
	// starved side can miss a second of heartbeats.
	ChannelTimeout time.Duration
}

func (o Options) reps() int {
	if o.Reps > 0 {
		return o.Reps
	}
	if o.Quick {
		return 1
	}
	return 5
}

// inProcesses: each VM runs in a process of its own, which needs the
// ftvm binary; without it (go test) the FT runs share this process.
func (o Options) inProcesses() bool { return o.FTVM != "" }

func (o Options) placements() []Placement {
	if !o.inProcesses() {
		return []Placement{{Name: "in one process"}}
	}
	return placements()
}

// start runs spec in mode in place: in member processes if it can.
func (o Options) start(ctx context.Context, m Mode, place Placement, spec vmSpec, arbDir string) vmRun {
	spec.FailoverTimeout = o.ChannelTimeout
	if !o.inProcesses() {
		return startVM(ctx, m, spec, arbDir)
	}
	pr := procRun{FTVM: o.FTVM, ImagePath: spec.ImagePath, Net: spec.NetSpec, Netns: spec.Netns, Place: place}
	if place.profile != "" {
		pr.ProfileDir, pr.Profile = filepath.Join(o.CPUProfileDir, o.Backend.Name()), place.profile+"-"+string(m)
	}
	return startProcVM(ctx, m, spec, pr, arbDir)
}

func (o Options) dur(quick, full time.Duration) time.Duration {
	if o.Quick {
		return quick
	}
	return full
}

// Stat is a median with its spread over repetitions.
type Stat struct {
	Median, Min, Max float64
	Samples          []float64
}

func newStat(xs []float64) Stat {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return Stat{}
	}
	return Stat{Median: s[len(s)/2], Min: s[0], Max: s[len(s)-1], Samples: xs}
}

// Throughput is one workload's plain and FT figures.
type Throughput struct {
	Workload string
	Unit     string // of Plain and FT, e.g. "runs/s", "ops/s", "Mbit/s"
	Plain    Stat
	FT       Stat
	// Ratio is FT/plain, per alternating pair of runs.
	Ratio Stat
	// LogMbps is the logging bandwidth under FT.
	LogMbps Stat
	Note    string
	// Placement: the processes' cores (Placement.Name).
	Placement string
	// Sides: each process's figures (plain, primary, backup), when the
	// VMs ran in processes of their own.
	Sides map[string]SideStats `json:",omitempty"`
	// Channel: the primary's logging channel and Output Rule figures.
	Channel *ChannelStats `json:",omitempty"`
}

// Results is everything one benchmark run measured.
type Results struct {
	// Backend ran every guest of this run; ExitRoundTripUS is its cost of
	// one guest-caused exit, VMM work included, measured at the start.
	Backend         string
	ExitRoundTripUS float64
	// LoopbackRTTUS: the median round trip of one byte over loopback TCP.
	LoopbackRTTUS float64
	Date          string
	Machine       map[string]string
	Command       string
	Quick         bool
	Table1        []Throughput
	Table2        []Throughput
	KVLatency     map[string]map[string]float64 // mode -> p50/p99/p999 (ms)
	// RedisLatency: redis-benchmark's figures per test and placement.
	RedisLatency []RedisLatency `json:",omitempty"`
	// NotRun: the parts of the bench that could not run here, and why.
	NotRun []NotRun `json:",omitempty"`
	// OutputDelay: the delay the Output Rule added on kvstore (ms).
	OutputDelay map[string]float64
	// OutputDelayBy: the same per placement.
	OutputDelayBy map[string]map[string]float64 `json:",omitempty"`
	// Profiles: the top of each side's CPU profile per workload.
	Profiles    []ProfileSummary `json:",omitempty"`
	InProcesses bool
	Failover    []FailoverRow
	Reprotect   []ReprotectRow `json:",omitempty"`
	LogKinds    []LogKind
	PerPacket   map[string]float64
}

func (o Options) imagePath(name string) string { return filepath.Join(o.GuestDir, name+".elf") }

func (o Options) image(name string) (*vmm.Image, error) {
	b, err := os.ReadFile(filepath.Join(o.GuestDir, name+".elf"))
	if err != nil {
		return nil, err
	}
	return vmm.LoadELF(b)
}

// Run runs every benchmark.
func Run(ctx context.Context, o Options) (*Results, error) {
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Backend == nil {
		return nil, fmt.Errorf("bench: no backend given")
	}
	r := &Results{Backend: o.Backend.Name(), Date: time.Now().UTC().Format(time.RFC3339), Machine: machine(), Quick: o.Quick,
		KVLatency: map[string]map[string]float64{}, OutputDelay: map[string]float64{}, OutputDelayBy: map[string]map[string]float64{},
		InProcesses: o.inProcesses()}
	per, err := vmm.ExitRoundTrip(o.Backend, 20000)
	if err != nil {
		return nil, fmt.Errorf("bench: measuring the %s exit round trip: %w", o.Backend.Name(), err)
	}
	r.ExitRoundTripUS = float64(per) / 1e3
	if rtt, err := loopbackRTT(2000); err == nil {
		r.LoopbackRTTUS = float64(rtt) / 1e3
		o.Logf("loopback TCP round trip %.1f us", r.LoopbackRTTUS)
	}
	o.Logf("backend %s: exit round trip %.1f us", r.Backend, r.ExitRoundTripUS)
	arbDir, err := os.MkdirTemp("", "ftvm-bench-arbiter-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(arbDir)
	for _, step := range Steps {
		if len(o.Only) > 0 && !slices.Contains(o.Only, step.Name) {
			continue
		}
		if err := step.run(ctx, o, r, arbDir); err != nil {
			return r, err
		}
	}
	return r, nil
}

// Step is one part of the benchmark run, by name (Options.Only).
type Step struct {
	Name string
	run  func(context.Context, Options, *Results, string) error
}

// Steps are the benchmark's parts, in the order they run.
var Steps = []Step{{"cpu", benchCPU}, {"echo", benchEcho}, {"kvstore", benchKV}, {"redis", benchRedis}, {"net", benchNet}, {"disk", benchDisk}, {"log", benchLog},
	{"failover", benchFailover}, {"reprotect", benchReprotect}}

// alternate runs plain and FT alternately reps times in every placement,
// the placements side by side in each repetition, and collects the metric
// each returns, one row per placement. With a profile directory it then
// runs each mode once more, profiled, and keeps the profiles' tops.
func alternate(o Options, r *Results, name string, run func(Mode, Placement) (value float64, vm vmRun, err error)) ([]Throughput, error) {
	places := o.placements()
	type acc struct {
		plain, ftv, ratio, logs []float64
		sides                   map[string][]MemberStats
		channel                 []logchannel.Stats
	}
	accs := make([]acc, len(places))
	for i := range accs {
		accs[i].sides = map[string][]MemberStats{}
	}
	for i := 0; i < o.reps(); i++ {
		for pi, place := range places {
			a := &accs[pi]
			p, pvm, err := run(Plain, place)
			if err != nil {
				return nil, fmt.Errorf("%s plain (%s): %w", name, place.Name, err)
			}
			f, fvm, err := run(FT, place)
			if err != nil {
				return nil, fmt.Errorf("%s ft (%s): %w", name, place.Name, err)
			}
			l := logMbps(fvm)
			a.plain, a.ftv, a.logs = append(a.plain, p), append(a.ftv, f), append(a.logs, l)
			if p > 0 {
				a.ratio = append(a.ratio, f/p)
			}
			if o.inProcesses() {
				a.sides[RolePlain] = append(a.sides[RolePlain], pvm.Side)
				a.sides[RolePrimary] = append(a.sides[RolePrimary], fvm.Side)
				a.sides[RoleBackup] = append(a.sides[RoleBackup], fvm.Backup)
			}
			a.channel = append(a.channel, fvm.Primary.Channel)
			o.Logf("%s, %s: plain %.4g, ft %.4g, log %.3f Mbit/s; CPU-s plain %.3f, primary %.3f, backup %.3f", name, place.Name, p, f, l,
				pvm.Side.CPUSeconds(), fvm.Side.CPUSeconds(), fvm.Backup.CPUSeconds())
		}
	}
	var rows []Throughput
	for pi, place := range places {
		a := accs[pi]
		t := Throughput{Workload: name, Placement: place.Name, Plain: newStat(a.plain), FT: newStat(a.ftv), Ratio: newStat(a.ratio),
			LogMbps: newStat(a.logs)}
		if o.inProcesses() {
			t.Sides = map[string]SideStats{}
			for role, ms := range a.sides {
				t.Sides[role] = sideStats(ms)
			}
			c := channelStats(a.channel)
			t.Channel = &c
		}
		rows = append(rows, t)
	}
	if o.CPUProfileDir != "" && o.inProcesses() {
		dir := filepath.Join(o.CPUProfileDir, o.Backend.Name())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return rows, err
		}
		place := places[len(places)-1]
		place.profile = strings.ReplaceAll(name, " ", "-")
		for _, m := range []Mode{Plain, FT} {
			if _, _, err := run(m, place); err != nil {
				return rows, fmt.Errorf("%s %s, profiled: %w", name, m, err)
			}
		}
		roles := map[Mode][]string{Plain: {RolePlain}, FT: {RolePrimary, RoleBackup}}
		for _, m := range []Mode{Plain, FT} {
			for _, role := range roles[m] {
				file := filepath.Join(dir, place.profile+"-"+string(m)+"-"+role+".pprof")
				top, err := profileTop(file, 8)
				ps := ProfileSummary{Workload: name, Role: role, Placement: place.Name, File: file, Top: top}
				if err != nil {
					ps.Err = err.Error()
				}
				r.Profiles = append(r.Profiles, ps)
			}
		}
	}
	return rows, nil
}

func logMbps(run vmRun) float64 {
	if run.Primary.Elapsed == 0 {
		return 0
	}
	return float64(run.Primary.Channel.LogBytes) * 8 / run.Primary.Elapsed.Seconds() / 1e6
}

func benchCPU(ctx context.Context, o Options, r *Results, arbDir string) error {
	img, err := o.image("cpu")
	if err != nil {
		return err
	}
	cfg := cpuConfig(o)
	rows, err := alternate(o, r, "cpu", func(m Mode, p Placement) (float64, vmRun, error) {
		run := o.start(ctx, m, p, vmSpec{Backend: o.Backend, Image: img, ImagePath: o.imagePath("cpu"), Config: cfg}, arbDir)
		return 1 / run.Elapsed.Seconds(), run, run.Err
	})
	r.Table1 = append(r.Table1, withNote(rows, "runs/s", "compute with an RDTSC exit every ~0.2 ms")...)
	return err
}

func benchEcho(ctx context.Context, o Options, r *Results, arbDir string) error {
	img, err := o.image("echo")
	if err != nil {
		return err
	}
	var in strings.Builder
	for i := 0; i < map[bool]int{true: 500, false: 3000}[o.Quick]; i++ {
		fmt.Fprintf(&in, "line %d of the echo benchmark\n", i)
	}
	rows, err := alternate(o, r, "echo", func(m Mode, p Placement) (float64, vmRun, error) {
		run := o.start(ctx, m, p, vmSpec{Backend: o.Backend, Image: img, ImagePath: o.imagePath("echo"), Stdin: in.String()}, arbDir)
		return 1 / run.Elapsed.Seconds(), run, run.Err
	})
	r.Table1 = append(r.Table1, withNote(rows, "runs/s", "console input and output: every output held for an ack")...)
	return err
}

// benchDisk writes and reads a disk through the block device, shared and
// local, plain and under FT: MiB/s, with the log bandwidth each costs
// (shared-mode reads put their data in the log, writes and local reads only
// a few bytes per call).
func benchDisk(ctx context.Context, o Options, r *Results, arbDir string) error {
	img, err := o.image("disk")
	if err != nil {
		return err
	}
	blocks := map[bool]int{true: 512, false: 16384}[o.Quick] // 2 or 64 MiB
	dir, err := os.MkdirTemp("", "ftvm-bench-disk-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		return err
	}
	if err := os.Truncate(path, int64(blocks)*vmm.DiskBlock); err != nil {
		return err
	}
	mib := float64(blocks) * vmm.DiskBlock / (1 << 20)
	for _, local := range []bool{false, true} {
		mode := map[bool]string{false: "shared", true: "local"}[local]
		for _, op := range []struct{ name, cmdline, note string }{
			{"write", fmt.Sprintf("write=%d batch=32 flush=1", blocks), "128 KiB writes, each call with a flush"},
			{"read", fmt.Sprintf("read=%d batch=32", blocks), "128 KiB reads"},
		} {
			name := "disk " + op.name + " " + mode
			rows, err := alternate(o, r, name, func(m Mode, p Placement) (float64, vmRun, error) {
				if local && m != Plain {
					// The backup's copy: equal to the primary's when the pair starts.
					if err := copyFile(path, path+".backup"); err != nil {
						return 0, vmRun{}, err
					}
				}
				run := o.start(ctx, m, p, vmSpec{Backend: o.Backend, Image: img, ImagePath: o.imagePath("disk"),
					Config: vmm.Config{Cmdline: op.cmdline}, Disk: path, DiskLocal: local}, arbDir)
				return mib / run.Elapsed.Seconds(), run, run.Err
			})
			r.Table1 = append(r.Table1, withNote(rows, "MiB/s", fmt.Sprintf("%s, %.0f MiB, a %s disk", op.note, mib, mode))...)
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// copyFile copies src over dst.
func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o600)
}

// userNet is user networking forwarding a free loopback UDP port to port:
// the spec, the address clients use and the spec as --net takes it.
func userNet(port uint16) (*vnet.Spec, string, string, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, "", "", err
	}
	addr := c.LocalAddr().String()
	c.Close()
	text := fmt.Sprintf("user,hostfwd=udp:%s-:%d", addr, port)
	spec, err := vnet.ParseSpec(text, "bench")
	return &spec, addr, text, err
}

// withNote sets rows' unit and note.
func withNote(rows []Throughput, unit, note string) []Throughput {
	for i := range rows {
		rows[i].Unit, rows[i].Note = unit, note
	}
	return rows
}

func nicConfig(s *vnet.Spec, cmdline string) vmm.Config {
	cfg := vmm.Config{Cmdline: cmdline, NIC: &vmm.NICConfig{Addr: s.Addr, Gateway: s.Gateway}}
	copy(cfg.NIC.MAC[:], s.MAC)
	return cfg
}

func benchKV(ctx context.Context, o Options, r *Results, arbDir string) error {
	img, err := o.image("kvstore")
	if err != nil {
		return err
	}
	d := o.dur(2*time.Second, 8*time.Second)
	lat := map[string][]time.Duration{}
	delays := map[string][]time.Duration{}
	rows, err := alternate(o, r, "kvstore", func(m Mode, p Placement) (float64, vmRun, error) {
		spec, addr, netSpec, err := userNet(7000)
		if err != nil {
			return 0, vmRun{}, err
		}
		var res kv.BenchResult
		var berr error
		run := o.start(ctx, m, p, vmSpec{Backend: o.Backend, Image: img, ImagePath: o.imagePath("kvstore"), Config: nicConfig(spec, ""), Net: spec, NetSpec: netSpec, Ready: func(ctx context.Context) {
			res, berr = kv.Bench(ctx, addr, 4, d)
		}}, arbDir)
		if berr == nil && res.Errors > 0 {
			berr = fmt.Errorf("%d client errors", res.Errors)
		}
		if run.Err != nil {
			berr = run.Err
		}
		if !p.profiled() {
			key := string(m) + ", " + p.Name
			lat[key] = append(lat[key], res.Latencies...)
			delays[p.Name] = append(delays[p.Name], run.Primary.OutputDelays...)
		}
		if res.Elapsed <= 0 {
			return 0, run, berr
		}
		return float64(res.Ops) / res.Elapsed.Seconds(), run, berr
	})
	r.Table1 = append(r.Table1, withNote(rows, "ops/s", "4 clients, 30% PUT 60% GET 10% APPEND, UDP over user networking")...)
	for key, l := range lat {
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		r.KVLatency[key] = map[string]float64{"p50_ms": ms(quantile(l, 0.5)), "p99_ms": ms(quantile(l, 0.99)), "p999_ms": ms(quantile(l, 0.999))}
	}
	for i, p := range o.placements() {
		d := delays[p.Name]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		figs := map[string]float64{"p50_ms": ms(quantile(d, 0.5)), "p99_ms": ms(quantile(d, 0.99)), "outputs": float64(len(d))}
		r.OutputDelayBy[p.Name] = figs
		if i == 0 {
			r.OutputDelay = figs
		}
	}
	return err
}

func quantile(s []time.Duration, q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func benchNet(ctx context.Context, o Options, r *Results, arbDir string) error {
	sink, err := o.image("netsink")
	if err != nil {
		return err
	}
	source, err := o.image("netsource")
	if err != nil {
		return err
	}
	d := o.dur(time.Second, 4*time.Second)
	rows, err := alternate(o, r, "netsink receive", func(m Mode, p Placement) (float64, vmRun, error) {
		spec, addr, netSpec, err := userNet(7001)
		if err != nil {
			return 0, vmRun{}, err
		}
		var mbps float64
		var nerr error
		run := o.start(ctx, m, p, vmSpec{Backend: o.Backend, Image: sink, ImagePath: o.imagePath("netsink"), Config: nicConfig(spec, ""), Net: spec, NetSpec: netSpec, Ready: func(ctx context.Context) {
			mbps, nerr = BlastSink(ctx, addr, d)
		}}, arbDir)
		if run.Err != nil {
			nerr = run.Err
		}
		return mbps, run, nerr
	})
	r.Table2 = append(r.Table2, withNote(rows, "Mbit/s", "1400-byte UDP payloads sent as fast as one client can; counted by the guest")...)
	if err != nil {
		return err
	}
	count := map[bool]int{true: 20000, false: 100000}[o.Quick]
	rows, err = alternate(o, r, "netsource transmit", func(m Mode, p Placement) (float64, vmRun, error) {
		spec, addr, netSpec, err := userNet(7002)
		if err != nil {
			return 0, vmRun{}, err
		}
		var mbps float64
		var nerr error
		run := o.start(ctx, m, p, vmSpec{Backend: o.Backend, Image: source, ImagePath: o.imagePath("netsource"), Config: nicConfig(spec, ""), Net: spec, NetSpec: netSpec, Ready: func(ctx context.Context) {
			mbps, nerr = DrainSource(ctx, addr, count, 1400)
		}}, arbDir)
		if run.Err != nil {
			nerr = run.Err
		}
		return mbps, run, nerr
	})
	r.Table2 = append(r.Table2, withNote(rows, "Mbit/s", fmt.Sprintf("%d datagrams of 1400 bytes, batches of 64 per exit", count))...)
	return err
}

// BlastSink sends 1400-byte datagrams to the netsink guest at addr for d
// as fast as it can, then asks what it received, and returns the guest's
// receive throughput in Mbit/s.
func BlastSink(ctx context.Context, addr string, d time.Duration) (float64, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	payload := make([]byte, 1400)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	start := time.Now()
	for time.Since(start) < d && ctx.Err() == nil {
		for i := 0; i < 64; i++ {
			c.Write(payload)
		}
	}
	time.Sleep(100 * time.Millisecond) // let the guest drain its queue
	buf := make([]byte, 256)
	for try := 0; try < 50; try++ {
		c.Write([]byte("REPORT"))
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			continue
		}
		f := strings.Fields(string(buf[:n]))
		if len(f) != 2 {
			return 0, fmt.Errorf("netsink answered %q", buf[:n])
		}
		bytes, _ := strconv.ParseFloat(f[1], 64)
		return bytes * 8 / d.Seconds() / 1e6, nil
	}
	return 0, fmt.Errorf("netsink did not answer REPORT")
}

// DrainSource asks the netsource guest at addr for count datagrams of size
// bytes and returns how fast they arrived, in Mbit/s.
func DrainSource(ctx context.Context, addr string, count, size int) (float64, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetReadBuffer(8 << 20)
	dst, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 2048)
	var got, bytes int
	var start time.Time
	for try := 0; try < 20 && got == 0; try++ {
		c.WriteToUDP([]byte(fmt.Sprintf("SEND %d %d 0", count, size)), dst) // 0: reply to the port the request came from
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, _, err := c.ReadFromUDP(buf); err == nil && !strings.HasPrefix(string(buf[:n]), "ERR") {
			start, got, bytes = time.Now(), 1, n
		}
	}
	if got == 0 {
		return 0, fmt.Errorf("netsource sent nothing")
	}
	end := start
	for ctx.Err() == nil {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := c.ReadFromUDP(buf)
		if err != nil {
			break
		}
		end = time.Now()
		if strings.HasPrefix(string(buf[:n]), "DONE") {
			break
		}
		got++
		bytes += n
	}
	if end.Sub(start) <= 0 {
		return 0, fmt.Errorf("netsource: only %d datagrams", got)
	}
	return float64(bytes) * 8 / end.Sub(start).Seconds() / 1e6, nil
}

// FailoverRow is the unavailability clients saw in failover trials.
type FailoverRow struct {
	How             string // "kill -9" or "SIGSTOP"
	FailoverTimeout string
	Trials          int
	P50, P99, Max   float64 // ms
	Samples         []float64
}

var liveRE = regexp.MustCompile(`backup: LIVE since`)

func benchFailover(ctx context.Context, o Options, r *Results, _ string) error {
	if o.FTVM == "" {
		o.Logf("failover: skipped (no ftvm binary given)")
		return nil
	}
	kvImg := filepath.Join(o.GuestDir, "kvstore.elf")
	configs := []struct {
		how, timeout string
		trials       int
	}{
		{"kill -9", "1s", 50}, {"silent death", "250ms", 50}, {"silent death", "500ms", 50}, {"silent death", "1s", 50},
	}
	for _, c := range configs {
		if o.Quick {
			c.trials = 2
		}
		if o.FailoverTrials > 0 {
			c.trials = o.FailoverTrials
		}
		row := FailoverRow{How: c.how, FailoverTimeout: c.timeout}
		for i := 0; i < c.trials; i++ {
			var gap time.Duration
			var err error
			after := time.Duration(500+(int64(i)*137)%1000) * time.Millisecond
			if c.how == "kill -9" {
				gap, err = failoverTrial(ctx, o.FTVM, o.Backend.Name(), kvImg, after, c.timeout, int64(i))
			} else {
				timeout, _ := time.ParseDuration(c.timeout)
				gap, err = silentDeathTrial(ctx, o, timeout, after, int64(i))
			}
			if err != nil {
				return fmt.Errorf("failover %s %s trial %d: %w", c.how, c.timeout, i, err)
			}
			row.Samples = append(row.Samples, ms(gap))
		}
		s := append([]float64(nil), row.Samples...)
		sort.Float64s(s)
		row.Trials, row.P50, row.P99, row.Max = len(s), s[len(s)/2], s[min(len(s)-1, int(0.99*float64(len(s))))], s[len(s)-1]
		o.Logf("failover %s, timeout %s: p50 %.0f ms, p99 %.0f ms over %d trials", c.how, c.timeout, row.P50, row.P99, row.Trials)
		r.Failover = append(r.Failover, row)
	}
	return nil
}

// failoverTrial runs kvstore under ftvm pair with clients and kills the
// primary (kill -9) after `after`; it returns the longest time no client
// got a reply, after checking the history is linearizable.
func failoverTrial(ctx context.Context, ftvm, backendName, image string, after time.Duration, timeout string, seed int64) (time.Duration, error) {
	_, addr, _, err := userNet(7000)
	if err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, ftvm, "pair", "--backend", backendName, "--net", "user,hostfwd=udp:"+addr+"-:7000", "--failover-timeout", timeout, "--kill-primary-after", after.String(), image)
	var stderr strings.Builder
	cmd.Stderr = &lockedBuilder{b: &stderr}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
	}()
	w := kv.Workload{Clients: 3, Keys: 4, Duration: after + 1500*time.Millisecond, Seed: seed, OpTimeout: 30 * time.Second}
	out, err := w.Run(ctx, addr)
	if err != nil {
		return 0, err
	}
	if out.Failed > 0 {
		return 0, fmt.Errorf("%d calls without a reply", out.Failed)
	}
	if res, _ := kv.CheckLinearizable(out.Calls, time.Minute); res != porcupine.Ok {
		return 0, fmt.Errorf("history is %v", res)
	}
	if !liveRE.MatchString(stderr.String()) {
		return 0, fmt.Errorf("the backup did not go live:\n%s", stderr.String())
	}
	return out.MaxGap, nil
}

package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/ftvm/ftvm/bench/kv"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// LogKind is one entry kind's share of a log.
type LogKind struct {
	Log         string
	Kind        string
	Entries     int
	Bytes       int     // encoded entry bytes (frame overhead excluded)
	PerEntry    float64 // Bytes / Entries
	Payload     int     // the bytes the entries stand for (packet, console, output bytes)
	PayloadPerE float64
}

// benchLog records kvstore serving clients and cpu into memory and breaks
// the logs down by entry kind.
func benchLog(ctx context.Context, o Options, r *Results, arbDir string) error {
	kvImg, err := o.image("kvstore")
	if err != nil {
		return err
	}
	spec, addr, _, err := userNet(7000)
	if err != nil {
		return err
	}
	var berr error
	kvRun := startVM(ctx, Record, vmSpec{Backend: o.Backend, Image: kvImg, Config: nicConfig(spec, ""), Net: spec, Ready: func(ctx context.Context) {
		_, berr = kv.Bench(ctx, addr, 4, o.dur(time.Second, 3*time.Second))
	}}, arbDir)
	if kvRun.Err != nil || berr != nil {
		return fmt.Errorf("log composition: %v %v", kvRun.Err, berr)
	}
	cpuImg, err := o.image("cpu")
	if err != nil {
		return err
	}
	cpuRun := startVM(ctx, Record, vmSpec{Backend: o.Backend, Image: cpuImg, Config: cpuConfig(o)}, arbDir)
	if cpuRun.Err != nil {
		return cpuRun.Err
	}
	r.PerPacket = map[string]float64{}
	for _, l := range []struct {
		name string
		log  []byte
	}{{"kvstore", kvRun.Log}, {"cpu", cpuRun.Log}} {
		kinds, packets, packetBytes, rxBytes := composition(l.log)
		for _, k := range kinds {
			k.Log = l.name
			r.LogKinds = append(r.LogKinds, k)
		}
		if l.name == "kvstore" && packets > 0 {
			r.PerPacket["rx_packets"] = float64(packets)
			r.PerPacket["rx_packet_bytes_per_packet"] = float64(packetBytes) / float64(packets)
			r.PerPacket["rx_log_bytes_per_packet"] = float64(rxBytes) / float64(packets)
		}
	}
	return nil
}

func cpuConfig(o Options) vmm.Config {
	return vmm.Config{Cmdline: map[bool]string{true: "rounds=2000 work=32000", false: "rounds=10000 work=32000"}[o.Quick]}
}

// composition tallies a log by kind.
func composition(log []byte) (kinds []LogKind, packets, packetBytes, rxLogBytes int) {
	dec := replay.NewDecoder(bytes.NewReader(log))
	byKind := map[replay.Kind]*LogKind{}
	for {
		e, err := dec.Next()
		if err != nil {
			break
		}
		k := byKind[e.Kind]
		if k == nil {
			k = &LogKind{Kind: e.Kind.String()}
			byKind[e.Kind] = k
		}
		k.Entries++
		k.Bytes += dec.EntrySize()
		k.Payload += len(e.Data) + int(e.Length)
		if e.Kind == replay.KindNetRX {
			rxLogBytes += dec.EntrySize()
			for rest := e.Data; len(rest) > 0; {
				f, next, ok := replay.NextFrame(rest)
				if !ok {
					break
				}
				packets++
				packetBytes += len(f)
				rest = next
			}
		}
	}
	for _, k := range byKind {
		k.PerEntry = float64(k.Bytes) / float64(k.Entries)
		k.PayloadPerE = float64(k.Payload) / float64(k.Entries)
		kinds = append(kinds, *k)
	}
	sort.Slice(kinds, func(i, j int) bool { return kinds[i].Bytes > kinds[j].Bytes })
	return kinds, packets, packetBytes, rxLogBytes
}

func machine() map[string]string {
	m := map[string]string{"cores": fmt.Sprint(runtime.NumCPU()), "go": runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				m["cpu"] = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
				break
			}
		}
	}
	if out, err := exec.Command("uname", "-sr").Output(); err == nil {
		m["kernel"] = strings.TrimSpace(string(out))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m["memory"] = strings.TrimSpace(strings.TrimPrefix(strings.SplitN(string(b), "\n", 2)[0], "MemTotal:"))
	}
	return m
}

// VM-FT's published figures for the same rows (Scales et al. 2010,
// Tables 1 and 2), for comparison in the report.
var vmftNotes = map[string]string{
	"cpu":                "VM-FT SPECJbb2005 0.98 / 1.5 Mbit/s; kernel compile 0.95 / 3.0 Mbit/s",
	"echo":               "no direct analog (interactive console)",
	"kvstore":            "VM-FT Oracle Swingbench 0.99 / 12 Mbit/s; MS-SQL DVD Store 0.94 / 18 Mbit/s",
	"redis-benchmark":    "VM-FT Oracle Swingbench 0.99 / 12 Mbit/s; MS-SQL DVD Store 0.94 / 18 Mbit/s (its database rows)",
	"netsink receive":    "VM-FT receive 940 -> 604 Mbit/s (log 730) on a 1 Gbit logging link, -> 860 (log 990) on 10 Gbit",
	"netsource transmit": "VM-FT transmit 940 -> 855 Mbit/s (log 42) on 1 Gbit, -> 935 (log 60) on 10 Gbit",
}

// WriteReport writes REPORT.md, results.json and the plots into dir.
func (r *Results) WriteReport(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(dir, "results.json"), js); err != nil {
		return err
	}
	if len(r.Table1)+len(r.Table2) > 0 { // none if --only left them out
		if err := r.plotRatios(filepath.Join(dir, "ratios.png")); err != nil {
			return err
		}
	}
	if len(r.Failover) > 0 {
		if err := r.plotFailover(filepath.Join(dir, "failover.png")); err != nil {
			return err
		}
	}
	return writeAtomic(filepath.Join(dir, "REPORT.md"), []byte(r.markdown()))
}

// writeAtomic writes to a temporary name and renames, so a report is never
// half-written.
func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func stat(s Stat, format string) string {
	if len(s.Samples) <= 1 {
		return fmt.Sprintf(format, s.Median)
	}
	return fmt.Sprintf(format+" ("+format+"-"+format+")", s.Median, s.Min, s.Max)
}

func (r *Results) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# ftvm benchmark report: the %s backend\n\n%s. Command: `%s`%s. Every guest ran on the **%s** backend; its guest-caused exit costs %.1f µs, VMM work included.\n\n", r.Backend, r.Date, r.Command, map[bool]string{true: " (quick: one repetition, short runs)", false: ""}[r.Quick], r.Backend, r.ExitRoundTripUS)
	how := "Plain runs (`ftvm run`) and FT runs (a primary and a backup over loopback TCP on the same machine) alternate"
	if r.InProcesses {
		how = "Plain runs and FT runs alternate, each VM in a process of its own (`ftvm bench --member`: the plain VM, the primary and the backup, the pair under the supervisor of `ftvm pair`), in each placement side by side: **pinned** (`taskset`: the plain VM and the primary on core 0, the backup on core 1, as two hosts would have them; the load-generating clients and this driver unpinned) and **unpinned**. A run's time and throughput are the primary's, as its clients see them, with its outputs released as they are acked; the backup's replay is a figure of its own below"
	} else {
		how += ", both FT sides in one process (no ftvm binary was given)"
	}
	fmt.Fprintf(&b, "Machine: %s, %s cores, %s, %s, Go %s, **shared** with other work while this ran: compare ratios measured side by side, and CPU-seconds, not wall time across runs. %s; each figure is the median over the repetitions with the range in parentheses. Unlike VM-FT's two hosts, primary and backup share this machine's cores, and the logging link is loopback.\n\n",
		r.Machine["cpu"], r.Machine["cores"], r.Machine["memory"], r.Machine["kernel"], r.Machine["go"], how)
	if ts := r.targets(); len(ts) > 0 {
		b.WriteString("## Issue 17's targets\n\n| target | met | measured | bound (if not met) |\n|---|---|---|---|\n")
		for _, t := range ts {
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.What, map[bool]string{true: "yes", false: "**no**"}[t.Met], t.Measured, t.Bound)
		}
		b.WriteString("\n")
	}
	table := func(title string, rows []Throughput) {
		fmt.Fprintf(&b, "## %s\n\n| workload | placement | plain | FT | FT/plain | log Mbit/s | what | VM-FT (for comparison) |\n|---|---|---|---|---|---|---|---|\n", title)
		for _, t := range rows {
			fmt.Fprintf(&b, "| %s | %s | %s %s | %s %s | %s | %s | %s | %s |\n", t.Workload, t.Placement, stat(t.Plain, "%.4g"), t.Unit, stat(t.FT, "%.4g"), t.Unit,
				stat(t.Ratio, "%.3f"), stat(t.LogMbps, "%.3f"), t.Note, vmftNotes[t.Workload])
		}
		b.WriteString("\n")
	}
	table("Table 1 analog: FT overhead and logging bandwidth", r.Table1)
	for _, nr := range r.NotRun {
		fmt.Fprintf(&b, "**Not run: %s**: %s.\n\n", nr.Workload, nr.Why)
	}
	if len(r.RedisLatency) > 0 {
		b.WriteString("### redis-benchmark per test\n\nThe redis guest (RESP over lwIP's TCP in the guest) under Debian's unmodified `redis-benchmark`, from a network namespace of its own over a veth and a bridge to the VM's TAP device (the VM's processes in a namespace of their own, the logging channel on its loopback). Latencies are redis-benchmark's own p50 and p99 per request (ms), the median over the repetitions with the range in parentheses; under FT every reply waits for the backup's ack of its log entry (the Output Rule).\n\n" +
			"| test | placement | plain requests/s | FT requests/s | FT/plain | plain p50 | plain p99 | FT p50 | FT p99 |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, l := range r.RedisLatency {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", l.Test, l.Placement, stat(l.PlainRPS, "%.0f"), stat(l.FTRPS, "%.0f"), stat(l.RPSRatio, "%.3f"),
				stat(l.PlainP50, "%.3f"), stat(l.PlainP99, "%.3f"), stat(l.FTP50, "%.3f"), stat(l.FTP99, "%.3f"))
		}
		b.WriteString("\n")
	}
	table("Table 2 analog: network throughput", r.Table2)
	b.WriteString("![FT/plain throughput ratios](ratios.png)\n\n")
	r.breakdownMarkdown(&b)
	fmt.Fprintf(&b, "## Latency and the Output Rule (kvstore)\n\n| | p50 | p99 | p999 |\n|---|---|---|---|\n")
	for _, m := range sortedKeys(r.KVLatency) {
		l := r.KVLatency[m]
		fmt.Fprintf(&b, "| client latency, %s | %.3f ms | %.3f ms | %.3f ms |\n", m, l["p50_ms"], l["p99_ms"], l["p999_ms"])
	}
	if len(r.OutputDelayBy) > 0 {
		for _, p := range sortedKeys(r.OutputDelayBy) {
			d := r.OutputDelayBy[p]
			fmt.Fprintf(&b, "| delay the Output Rule added to an output, %s (%.0f outputs) | %.3f ms | %.3f ms | |\n", p, d["outputs"], d["p50_ms"], d["p99_ms"])
		}
		b.WriteString("\n")
	} else {
		fmt.Fprintf(&b, "| delay the Output Rule added to an output (%.0f outputs) | %.3f ms | %.3f ms | |\n\n", r.OutputDelay["outputs"], r.OutputDelay["p50_ms"], r.OutputDelay["p99_ms"])
	}
	if len(r.Failover) > 0 {
		b.WriteString("## Failover: client-observed unavailability\n\nkvstore under `ftvm pair` with 3 clients (porcupine-checked histories); the primary fails 0.5-1.5 s in. `kill -9` (of the real `ftvm pair` process) on the same host resets the logging channel's connection, so the backup learns at once. A silent death (in one process, through a proxy) makes the primary's host vanish: its VM and sockets are gone and its logging channel goes silent with no FIN or reset, as when a host loses power, so only the failover timeout detects it. Unavailability is the longest time no client got a reply; the clients resend every 200 ms.\n\n| failure | failover timeout | trials | p50 | p99 | max |\n|---|---|---|---|---|---|\n")
		for _, f := range r.Failover {
			fmt.Fprintf(&b, "| %s | %s | %d | %.0f ms | %.0f ms | %.0f ms |\n", f.How, f.FailoverTimeout, f.Trials, f.P50, f.P99, f.Max)
		}
		b.WriteString("\n![failover unavailability](failover.png)\n\n")
	}
	if len(r.Reprotect) > 0 {
		b.WriteString("## Re-protection after a failover\n\nkvstore under `ftvm pair --kill-primary-after 1s --failovers N`: each time the backup went live, the supervisor started a new `ftvm backup --join` process, which received the running guest's state by live transfer over the logging channel (mutual TLS) and then its log; the live side is killed again 1 s after it is protected. *Unprotected* runs from the survivor going live to its new backup holding the state (process start of the new backup included); *transfer* from the join's start to the last byte; *pause* is how long the guest stood still for the last dirty pages and the registers (VM-FT: \"less than a second\"). kvstore fills three quarters of its RAM with data at boot (`fill=`); zero pages are not sent.\n\n| guest RAM | load | failovers | unprotected p50 | unprotected max | transfer p50 | sent p50 | pause p50 | pause max |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, x := range r.Reprotect {
			fmt.Fprintf(&b, "| %d MiB | %s | %d | %.0f ms | %.0f ms | %.0f ms | %.1f MiB | %.2f ms | %.2f ms |\n", x.MemMiB, x.Load, x.Failovers,
				x.UnprotectedP50, x.UnprotectedMax, x.TransferP50, x.SentMiBP50, x.PauseP50, x.PauseMax)
		}
		b.WriteString("\n")
	}
	b.WriteString("## Log composition\n\n| log | kind | entries | bytes | bytes/entry | payload bytes/entry |\n|---|---|---|---|---|---|\n")
	for _, k := range r.LogKinds {
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %.2f | %.1f |\n", k.Log, k.Kind, k.Entries, k.Bytes, k.PerEntry, k.PayloadPerE)
	}
	if p := r.PerPacket; p["rx_packets"] > 0 {
		fmt.Fprintf(&b, "\nReceived packets (kvstore): %.0f packets of %.1f bytes on average took %.1f log bytes each: the floor is the packet itself, which the backup cannot get any other way.\n",
			p["rx_packets"], p["rx_packet_bytes_per_packet"], p["rx_log_bytes_per_packet"])
	}
	return b.String()
}

func (r *Results) plotRatios(path string) error {
	p := plot.New()
	p.Title.Text = "FT / plain throughput (median)"
	p.Y.Label.Text = "ratio"
	var vals plotter.Values
	var names []string
	for _, t := range append(append([]Throughput(nil), r.Table1...), r.Table2...) {
		vals = append(vals, t.Ratio.Median)
		name := t.Workload
		if t.Placement != "" {
			name += "\n" + t.Placement
		}
		names = append(names, name)
	}
	bars, err := plotter.NewBarChart(vals, vg.Points(30))
	if err != nil {
		return err
	}
	bars.Color = plotutil.Color(0)
	p.Add(bars)
	p.NominalX(names...)
	p.Y.Min, p.Y.Max = 0, 1.2
	return p.Save(10*vg.Inch, 4*vg.Inch, path)
}

func (r *Results) plotFailover(path string) error {
	p := plot.New()
	p.Title.Text = "Client-observed unavailability after a primary failure (CDF)"
	p.X.Label.Text = "ms"
	p.Y.Label.Text = "fraction of trials"
	for i, f := range r.Failover {
		s := append([]float64(nil), f.Samples...)
		sort.Float64s(s)
		pts := make(plotter.XYs, len(s))
		for j, v := range s {
			pts[j].X, pts[j].Y = v, float64(j+1)/float64(len(s))
		}
		line, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		line.Color = plotutil.Color(i)
		p.Add(line)
		p.Legend.Add(f.How+", timeout "+f.FailoverTimeout, line)
	}
	p.Legend.Top = false
	return p.Save(7*vg.Inch, 4*vg.Inch, path)
}

// row finds a workload's figures in Table 1 or 2.
func (r *Results) row(workload string) (Throughput, bool) {
	for _, t := range append(append([]Throughput(nil), r.Table1...), r.Table2...) {
		if t.Workload == workload {
			return t, true
		}
	}
	return Throughput{}, false
}

// rowIn finds a workload's figures in a placement.
func (r *Results) rowIn(workload, placement string) (Throughput, bool) {
	for _, t := range append(append([]Throughput(nil), r.Table1...), r.Table2...) {
		if t.Workload == workload && t.Placement == placement {
			return t, true
		}
	}
	return Throughput{}, false
}

// WriteComparison writes dir/REPORT.md: the backends' key figures side by
// side, each from its own run above (reports in dir/BACKEND/).
func WriteComparison(dir, command string, runs []*Results) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# ftvm benchmark: backends side by side\n\nCommand: `%s`. One run per backend, one after the other on this machine; the full report of each is in its folder.\n\n", command)
	b.WriteString("| figure |")
	for _, r := range runs {
		fmt.Fprintf(&b, " [%s](%s/REPORT.md) |", r.Backend, r.Backend)
	}
	b.WriteString("\n|---|")
	for range runs {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	line := func(name string, cell func(r *Results) string) {
		fmt.Fprintf(&b, "| %s |", name)
		for _, r := range runs {
			fmt.Fprintf(&b, " %s |", cell(r))
		}
		b.WriteString("\n")
	}
	line("guest-caused exit round trip", func(r *Results) string { return fmt.Sprintf("%.1f µs", r.ExitRoundTripUS) })
	line("`cpu` plain run time", func(r *Results) string {
		if t, ok := r.row("cpu"); ok && t.Plain.Median > 0 {
			return fmt.Sprintf("%.3f s", 1/t.Plain.Median)
		}
		return "-"
	})
	for _, w := range []string{"cpu", "kvstore", "echo", "netsink receive", "netsource transmit"} {
		for _, p := range []string{Pinned.Name, Unpinned.Name} {
			line("FT/plain, `"+w+"`, "+p, func(r *Results) string {
				if t, ok := r.rowIn(w, p); ok {
					return stat(t.Ratio, "%.3f")
				}
				return "-"
			})
		}
	}
	line("CPU-s backup / primary, `cpu`, pinned", func(r *Results) string {
		if t, ok := r.rowIn("cpu", Pinned.Name); ok && t.Sides[RolePrimary].Runs > 0 {
			return fmt.Sprintf("%.3f", safeDiv(t.Sides[RoleBackup].CPUSeconds.Median, t.Sides[RolePrimary].CPUSeconds.Median))
		}
		return "-"
	})
	return writeAtomic(filepath.Join(dir, "REPORT.md"), []byte(b.String()))
}

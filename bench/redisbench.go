package bench

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/bench/hosts"
	"github.com/ftvm/ftvm/bench/resp"
	"github.com/ftvm/ftvm/vmm/vnet"
)

// The redis-benchmark row: the redis guest (RESP over lwIP's TCP) driven
// by Debian's unmodified redis-benchmark, plain and under FT, each VM in a
// process of its own inside a network namespace the bench makes, its TAP
// on a bridge that a veth joins to the clients' namespace:
//
//	clients 10.99.0.1 ── veth ── vm: br0 ── tap0 (guest 10.99.0.2)
//
// The logging channel is the vm namespace's loopback.

const (
	redisBenchGuestIP = "10.99.0.2"
	redisBenchNet     = "tap,ifname=tap0,ip=" + redisBenchGuestIP + "/24,gw=10.99.0.1"
)

// NotRun is a part of the bench that could not run here, and why.
type NotRun struct {
	Workload, Why string
}

// RedisLatency is a redis-benchmark test's latencies in one placement:
// the medians over the repetitions of redis-benchmark's p50 and p99 (ms).
type RedisLatency struct {
	Test, Placement           string
	PlainP50, PlainP99        Stat
	FTP50, FTP99              Stat
	PlainRPS, FTRPS, RPSRatio Stat
}

// redisBenchUnavailable says why the row cannot run here, or "".
func redisBenchUnavailable(o Options) string {
	if !o.inProcesses() {
		return "it runs each VM in a process of its own inside a network namespace, which needs the ftvm binary (ftvm bench, not go test)"
	}
	if err := hosts.Available(); err != nil {
		return fmt.Sprintf("no network namespaces for the TAP device and the clients: %v", err)
	}
	if _, err := exec.LookPath("redis-benchmark"); err != nil {
		return "no redis-benchmark (Debian's redis-tools: .ci/install-redis.sh installs it)"
	}
	if _, err := os.Stat(o.imagePath("redis")); err != nil {
		return fmt.Sprintf("no redis guest: %v", err)
	}
	return ""
}

var redisBenchNets atomic.Int64

func benchRedis(ctx context.Context, o Options, r *Results, arbDir string) error {
	const name = "redis-benchmark"
	if why := redisBenchUnavailable(o); why != "" {
		o.Logf("%s: NOT RUN: %s", name, why)
		r.NotRun = append(r.NotRun, NotRun{Workload: name, Why: why})
		return nil
	}
	img, err := o.image("redis")
	if err != nil {
		return err
	}
	h := hosts.New(fmt.Sprintf("ftvmbench%d-%d", os.Getpid(), redisBenchNets.Add(1)))
	defer h.Close()
	if err := redisBenchHosts(h); err != nil {
		return err
	}
	spec, err := vnet.ParseSpec(redisBenchNet, "bench")
	if err != nil {
		return err
	}
	n := map[bool]int{true: 5000, false: 100000}[o.Quick]
	const clients = 50
	type figs struct{ p50, p99, rps []float64 }
	lat := map[string]*figs{} // test, mode, placement ->
	rows, err := alternate(o, r, name, func(m Mode, p Placement) (float64, vmRun, error) {
		var res map[string]redisBenchFigures
		var berr error
		run := o.start(ctx, m, p, vmSpec{Backend: o.Backend, Image: img, ImagePath: o.imagePath("redis"), Config: nicConfig(&spec, ""), Net: &spec, NetSpec: redisBenchNet,
			Netns: h.NS("vm"), Ready: func(ctx context.Context) {
				if berr = waitRESP(ctx, h, 30*time.Second); berr == nil {
					res, berr = runRedisBenchmark(ctx, h, n, clients)
				}
			}}, arbDir)
		if run.Err != nil {
			berr = run.Err
		}
		if berr != nil {
			return 0, run, berr
		}
		// Both tests' requests over both tests' time.
		var secs float64
		for _, test := range []string{"SET", "GET"} {
			f := res[test]
			secs += float64(n) / f.rps
			if !p.profiled() {
				key := test + "\x00" + string(m) + "\x00" + p.Name
				if lat[key] == nil {
					lat[key] = &figs{}
				}
				l := lat[key]
				l.p50, l.p99, l.rps = append(l.p50, f.p50), append(l.p99, f.p99), append(l.rps, f.rps)
			}
		}
		return float64(2*n) / secs, run, nil
	})
	r.Table1 = append(r.Table1, withNote(rows, "requests/s", fmt.Sprintf("redis-benchmark -t set,get -n %d -c %d, TCP over TAP (lwIP in the guest); p50 and p99 below", n, clients))...)
	for _, p := range o.placements() {
		for _, test := range []string{"SET", "GET"} {
			pl, ft := lat[test+"\x00"+string(Plain)+"\x00"+p.Name], lat[test+"\x00"+string(FT)+"\x00"+p.Name]
			if pl == nil || ft == nil {
				continue
			}
			var ratio []float64
			for i := range min(len(pl.rps), len(ft.rps)) {
				ratio = append(ratio, ft.rps[i]/pl.rps[i])
			}
			r.RedisLatency = append(r.RedisLatency, RedisLatency{Test: test, Placement: p.Name, PlainP50: newStat(pl.p50), PlainP99: newStat(pl.p99),
				FTP50: newStat(ft.p50), FTP99: newStat(ft.p99), PlainRPS: newStat(pl.rps), FTRPS: newStat(ft.rps), RPSRatio: newStat(ratio)})
		}
	}
	return err
}

// redisBenchHosts makes the VM's host (a bridge, the TAP on it) and the
// clients' host, joined by a veth.
func redisBenchHosts(h *hosts.Net) error {
	for _, host := range []string{"vm", "clients"} {
		if _, err := h.Add(host); err != nil {
			return err
		}
	}
	if err := h.Link("clients", "eth0", "vm", "vc"); err != nil {
		return err
	}
	for _, s := range [][]string{
		{"vm", "link", "add", "br0", "type", "bridge"},
		{"vm", "link", "set", "br0", "up"},
		{"vm", "tuntap", "add", "dev", "tap0", "mode", "tap"},
		{"vm", "link", "set", "tap0", "master", "br0", "up"},
		{"vm", "link", "set", "vc", "master", "br0", "up"},
		{"clients", "addr", "add", "10.99.0.1/24", "dev", "eth0"},
		{"clients", "link", "set", "eth0", "up"},
	} {
		if err := h.IP(s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// waitRESP waits until the guest answers PING from the clients' host.
func waitRESP(ctx context.Context, h *hosts.Net, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		var c *resp.Client
		err := h.Do("clients", func() (err error) {
			c, err = resp.Dial(redisBenchGuestIP+":6379", time.Second)
			return err
		})
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			var v resp.Value
			v, err = c.Do(pctx, "PING")
			cancel()
			c.Close()
			if err == nil && v.Str == "PONG" {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("PING answered %v", v)
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("bench: the redis guest did not answer PING: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// redisBenchFigures are what redis-benchmark --csv says about one test.
type redisBenchFigures struct{ rps, p50, p99 float64 }

// runRedisBenchmark runs redis-benchmark -t set,get in the clients' host
// and returns each test's figures; any error it reports fails the run.
func runRedisBenchmark(ctx context.Context, h *hosts.Net, n, clients int) (map[string]redisBenchFigures, error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", h.NS("clients"), "redis-benchmark", "-h", redisBenchGuestIP,
		"-t", "set,get", "-n", strconv.Itoa(n), "-c", strconv.Itoa(clients), "--csv")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("redis-benchmark: %v\n%s%s", err, out, stderr.String())
	}
	for _, bad := range []string{"Error", "error", "reset", "Could not"} {
		if strings.Contains(stderr.String(), bad) || strings.Contains(string(out), bad) {
			return nil, fmt.Errorf("redis-benchmark says %q:\n%s%s", bad, out, stderr.String())
		}
	}
	return parseRedisBenchCSV(string(out))
}

// parseRedisBenchCSV reads redis-benchmark --csv's output: a header
// ("test","rps",...,"p50_latency_ms",...,"p99_latency_ms",...) and a
// line per test.
func parseRedisBenchCSV(text string) (map[string]redisBenchFigures, error) {
	recs, err := csv.NewReader(strings.NewReader(text)).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("redis-benchmark --csv: %w\n%s", err, text)
	}
	if len(recs) < 2 {
		return nil, fmt.Errorf("redis-benchmark --csv: no tests in %q", text)
	}
	col := map[string]int{}
	for i, name := range recs[0] {
		col[name] = i
	}
	for _, want := range []string{"test", "rps", "p50_latency_ms", "p99_latency_ms"} {
		if _, ok := col[want]; !ok {
			return nil, fmt.Errorf("redis-benchmark --csv: no %s column in %q", want, recs[0])
		}
	}
	res := map[string]redisBenchFigures{}
	for _, rec := range recs[1:] {
		if len(rec) != len(recs[0]) {
			return nil, fmt.Errorf("redis-benchmark --csv: line %q", rec)
		}
		var f redisBenchFigures
		var errs []error
		for _, v := range []struct {
			to  *float64
			col string
		}{{&f.rps, "rps"}, {&f.p50, "p50_latency_ms"}, {&f.p99, "p99_latency_ms"}} {
			x, err := strconv.ParseFloat(rec[col[v.col]], 64)
			*v.to, errs = x, append(errs, err)
		}
		if err := errors.Join(errs...); err != nil || f.rps <= 0 {
			return nil, fmt.Errorf("redis-benchmark --csv: line %q: %v", rec, err)
		}
		res[rec[col["test"]]] = f
	}
	for _, test := range []string{"SET", "GET"} {
		if _, ok := res[test]; !ok {
			return nil, fmt.Errorf("redis-benchmark --csv: no %s test in %q", test, text)
		}
	}
	return res, nil
}

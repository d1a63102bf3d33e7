package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ftvm/ftvm/bench/hosts"
	"github.com/ftvm/ftvm/bench/kv"
	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/vmm/ft"
)

// The fault campaign (ftvm chaos): kvstore protected by a primary and a
// backup, each an ftvm process of its own with its logging channel through
// a proxy the campaign controls, clients checking their history, and one
// fault per trial at a random moment.

// Faults the campaign injects.
const (
	FaultKillPrimary   = "kill-primary"   // kill -9 of the primary
	FaultKillBackup    = "kill-backup"    // kill -9 of the backup
	FaultFreezePrimary = "freeze-primary" // SIGSTOP past the failover timeout, then SIGCONT: the woken old primary must halt
	FaultFreezeBackup  = "freeze-backup"  // the same for the backup
	FaultPartition     = "partition"      // the logging link goes silent both ways; both sides live on
	// The logging link goes silent one way only: from the primary to the
	// backup (log and heartbeats stop, the backup's acks and heartbeats
	// still arrive), or from the backup to the primary.
	FaultPartitionToBackup  = "partition-to-backup"
	FaultPartitionToPrimary = "partition-to-primary"
	// The arbiter's storage (a real S3 server, versitygw) goes away, the
	// primary is killed meanwhile, and the storage comes back: the backup
	// must not go live before it can ask, and must once it can.
	FaultArbiterDown = "arbiter-down"
	// The logging link delays (40 ms ± 20 ms each way), loses (5% each
	// way) or reorders (25% of packets sent at once, the rest 10 ms late)
	// packets for 1-2.5 s; the primary's host loses its LAN link for as
	// long (clients-cut). Then the primary is killed if no side went on
	// alone meanwhile. Hosts (network namespaces) only.
	FaultLinkDelay   = "link-delay"
	FaultLinkLoss    = "link-loss"
	FaultLinkReorder = "link-reorder"
	FaultClientsCut  = "clients-cut"
	// The backup stops replaying (a failpoint; its channel, acks and
	// heartbeats go on) for as long as a freeze, then goes on.
	FaultStallBackup = "stall-backup"
)

// chaosImpair are the link faults' impairments of each direction.
var chaosImpair = map[string]hosts.Impair{
	FaultLinkDelay:   {Delay: 40 * time.Millisecond, Jitter: 20 * time.Millisecond},
	FaultLinkLoss:    {Loss: 0.05},
	FaultLinkReorder: {Delay: 10 * time.Millisecond, Reorder: 0.25},
}

// ChaosFaults are every fault kind, in report order.
var ChaosFaults = []string{FaultKillPrimary, FaultKillBackup, FaultFreezePrimary, FaultFreezeBackup, FaultPartition,
	FaultPartitionToBackup, FaultPartitionToPrimary, FaultArbiterDown, FaultLinkDelay, FaultLinkLoss, FaultLinkReorder, FaultClientsCut, FaultStallBackup,
	FaultJoinKillJoiner, FaultJoinFreezeJoiner, FaultJoinPartition, FaultJoinKillLive}

// ChaosOptions configure a campaign.
type ChaosOptions struct {
	FTVM     string // the ftvm binary
	GuestDir string
	// Root is the source tree, where .ci/install-s3.sh puts versitygw
	// (arbiter-down trials; $VERSITYGW and PATH are looked at too).
	Root    string
	Backend string
	Trials  int
	Faults  []string // default ChaosFaults, taken in turn
	// TCPTrials more trials run the redis guest with RESP clients over TCP
	// (hosts only), the faults TCPFaults (default TCPChaosFaults) taken in
	// turn; after the kvstore trials.
	TCPTrials int
	TCPFaults []string
	// LogDir, if set, receives the logs of every failed trial's processes.
	LogDir string
	// Parallel trials run at once (default 1). On hosts they cannot
	// collide; they do share the machine's cores.
	Parallel int
	Seed     uint64 // the campaign's; each trial's is derived from it
	// TrialSeed, if not 0, is the seed of every trial: to replay a failed
	// one (with Trials 1 and its fault).
	TrialSeed uint64
	// Hosts runs each trial's processes on hosts of their own (network
	// namespaces, see chaosNet); without it everything runs on loopback
	// and the hosts-only faults are refused.
	Hosts bool
	// FailoverTimeout of both sides (default 500 ms).
	FailoverTimeout time.Duration
	Logf            func(format string, args ...any)
}

// ChaosTrial is one trial's outcome. A trial replays with its Seed and
// Fault (ftvm chaos --replay-seed).
type ChaosTrial struct {
	N     int
	Seed  uint64
	Fault string
	// Service is the guest and its clients: kvstore (UDP) or redis (TCP).
	Service string
	// At is when the fault hit, after the pair was up.
	At time.Duration
	// Calls the clients completed; Failed never got a reply.
	Calls, Failed int
	// Unavailable is the longest time no client got a reply (ms).
	Unavailable float64
	// Linearizable: porcupine's verdict on the clients' history (a lost
	// acknowledged write makes it not).
	Linearizable bool
	// Live is the side that ran the guest at the end; SplitBrain says
	// that both sides went on (neither halted nor died), or that more
	// than one side went live in an epoch.
	Live       string
	SplitBrain bool
	// ThenKilled: the fault left the pair intact, so the primary was
	// killed after it.
	ThenKilled bool `json:",omitempty"`
	// DuringTransfer: a join fault hit while the joining backup was
	// receiving the guest's state (not after it had joined).
	DuringTransfer bool `json:",omitempty"`
	// Logs are the files, beside the report, that hold a failed trial's
	// processes' logs (with every goroutine's stack of those that were
	// still running).
	Logs []string `json:",omitempty"`
	// ServiceLost: a double failure (the live side killed while its new
	// backup was still receiving the state) left no side to run the
	// guest, as it must: calls without reply are expected then.
	ServiceLost bool `json:",omitempty"`
	// FramesPrimary and FramesBackup are the guest's frames that reached
	// the LAN from each side's host (hosts only).
	FramesPrimary, FramesBackup int
	// LateDuplicates are frames a side let out after the guest had moved
	// on, each a byte-for-byte copy of one the new side sent (see
	// checkWire).
	LateDuplicates int    `json:",omitempty"`
	Err            string `json:",omitempty"`
}

// ChaosRow sums up the trials of one fault kind.
type ChaosRow struct {
	Service, Fault              string
	Trials                      int
	UnavailP50, UnavailP99, Max float64 // ms
	Failed, SplitBrains         int
	Violations, Errors          int
	// Join faults: the trials whose fault hit during the state transfer,
	// and those that left no side to run the guest (a double failure).
	DuringTransfer, ServiceLost int
	// LateDuplicates in all, and the trials that had any.
	LateDuplicates, LateDuplicateTrials int
	FailedSeeds                         []uint64 `json:",omitempty"`
}

// ChaosResults are a campaign's.
type ChaosResults struct {
	Date, Command, Backend string
	// Hosts: the trials ran on hosts of their own (network namespaces),
	// not on loopback.
	Hosts    bool
	Seed     uint64
	Parallel int // trials at once
	Elapsed  string
	Rows     []ChaosRow
	Trials   []ChaosTrial
}

// Ok says whether every trial held the promise.
func (r *ChaosResults) Ok() bool {
	for _, row := range r.Rows {
		if row.Failed+row.SplitBrains+row.Violations+row.Errors > 0 {
			return false
		}
	}
	return true
}

// RunChaos runs the campaign.
func RunChaos(ctx context.Context, o ChaosOptions) (*ChaosResults, error) {
	if len(o.Faults) == 0 {
		for _, f := range ChaosFaults {
			if o.Hosts || !slices.Contains(HostsOnlyFaults, f) {
				o.Faults = append(o.Faults, f)
			}
		}
	}
	for _, f := range o.Faults {
		if !slices.Contains(ChaosFaults, f) {
			return nil, fmt.Errorf("chaos: no fault %q (the faults: %s)", f, strings.Join(ChaosFaults, ", "))
		}
		if !o.Hosts && slices.Contains(HostsOnlyFaults, f) {
			return nil, fmt.Errorf("chaos: the %s fault needs hosts (network namespaces)", f)
		}
	}
	if o.TCPTrials > 0 && len(o.TCPFaults) == 0 {
		o.TCPFaults = TCPChaosFaults()
	}
	for _, f := range o.TCPFaults {
		if !slices.Contains(TCPChaosFaults(), f) {
			return nil, fmt.Errorf("chaos: no fault %q for TCP clients (theirs: %s)", f, strings.Join(TCPChaosFaults(), ", "))
		}
	}
	if o.TCPTrials > 0 && !o.Hosts {
		return nil, errors.New("chaos: TCP clients need hosts (network namespaces): user networking forwards only UDP")
	}
	if o.FailoverTimeout == 0 {
		o.FailoverTimeout = 500 * time.Millisecond
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Hosts {
		hosts.RemoveStale(chaosNetPrefix)
	}
	if o.LogDir != "" {
		if err := os.MkdirAll(o.LogDir, 0o755); err != nil {
			return nil, err
		}
	}
	began := time.Now()
	r := &ChaosResults{Date: began.UTC().Format(time.RFC3339), Backend: o.Backend, Seed: o.Seed, Hosts: o.Hosts, Parallel: max(o.Parallel, 1)}
	rng := rand.New(rand.NewPCG(o.Seed, 0xc4a05))
	all := make([]ChaosTrial, o.Trials+o.TCPTrials)
	for i := range all {
		all[i] = ChaosTrial{N: i, Seed: rng.Uint64(), Service: ServiceKV}
		if i < o.Trials {
			all[i].Fault = o.Faults[i%len(o.Faults)]
		} else {
			all[i].Fault, all[i].Service = o.TCPFaults[(i-o.Trials)%len(o.TCPFaults)], ServiceRedis
		}
		if o.TrialSeed != 0 {
			all[i].Seed = o.TrialSeed
		}
	}
	ran := make([]bool, len(all))
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < max(o.Parallel, 1); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				tr := &all[i]
				if err := chaosTrial(ctx, o, tr); err != nil {
					tr.Err = err.Error()
				}
				if ctx.Err() != nil {
					continue // cut short: not a result
				}
				ran[i] = true
				status := "ok"
				if !tr.ok() {
					status = "FAILED"
				}
				then := ""
				if tr.ThenKilled {
					then = " (then kill-primary)"
				}
				if tr.Service == ServiceRedis {
					then += ", redis over TCP"
				}
				o.Logf("trial %d (%s%s, seed %d, at %v): %s; %d calls, unavailable %.0f ms, live %s%s", i, tr.Fault, then, tr.Seed, tr.At.Round(time.Millisecond),
					status, tr.Calls, tr.Unavailable, tr.Live, errSuffix(tr.Err))
			}
		}()
	}
feed:
	for i := range all {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	for i, t := range all {
		if ran[i] {
			r.Trials = append(r.Trials, t)
		}
	}
	r.Elapsed = time.Since(began).Round(time.Second).String()
	for _, svc := range ChaosServices {
		for _, f := range ChaosFaults {
			r.addRow(svc, f)
		}
	}
	return r, ctx.Err()
}

// addRow sums up the trials of service svc and fault f, if any.
func (r *ChaosResults) addRow(svc, f string) {
	row := ChaosRow{Service: svc, Fault: f}
	var gaps []float64
	for _, t := range r.Trials {
		if t.Fault != f || t.service() != svc {
			continue
		}
		row.Trials++
		if t.DuringTransfer {
			row.DuringTransfer++
		}
		if t.LateDuplicates > 0 {
			row.LateDuplicates += t.LateDuplicates
			row.LateDuplicateTrials++
		}
		if t.ServiceLost {
			row.ServiceLost++
		} else {
			gaps = append(gaps, t.Unavailable)
		}
		bad := false
		if t.Failed > 0 && !t.ServiceLost {
			row.Failed++
			bad = true
		}
		if t.SplitBrain {
			row.SplitBrains++
			bad = true
		}
		if t.Err == "" && !t.Linearizable {
			row.Violations++
			bad = true
		}
		if t.Err != "" {
			row.Errors++
			bad = true
		}
		if bad {
			row.FailedSeeds = append(row.FailedSeeds, t.Seed)
		}
	}
	if row.Trials == 0 {
		return
	}
	if len(gaps) > 0 {
		sort.Float64s(gaps)
		row.UnavailP50, row.UnavailP99, row.Max = gaps[len(gaps)/2], gaps[min(len(gaps)-1, int(0.99*float64(len(gaps))))], gaps[len(gaps)-1]
	}
	r.Rows = append(r.Rows, row)
}

// service is the trial's (kvstore in reports from before there was a
// choice).
func (t *ChaosTrial) service() string {
	if t.Service == "" {
		return ServiceKV
	}
	return t.Service
}

// ok says whether the trial kept the promise.
func (t *ChaosTrial) ok() bool {
	return t.Err == "" && t.Linearizable && (t.Failed == 0 || t.ServiceLost) && !t.SplitBrain
}

// The campaign's clients and the keys they share.
const chaosClients, chaosKeys = 3, 4

// chaosFinalReads GETs keys k0..k(keys-1) with a client of its own (client
// number after the workload's).
func chaosFinalReads(ctx context.Context, cn *chaosNet, keys, client int) ([]kv.Call, error) {
	c, err := cn.dialClient(cn.clientAddr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var calls []kv.Call
	for k := 0; k < keys; k++ {
		call := kv.Call{Client: client, Op: kv.Get, Key: fmt.Sprintf("k%d", k), Start: time.Now()}
		octx, cancel := context.WithTimeout(ctx, 20*time.Second)
		r, err := c.Do(octx, kv.Get, call.Key, "")
		cancel()
		if err != nil {
			return nil, err
		}
		call.Reply, call.Done, call.End = r, true, time.Now()
		calls = append(calls, call)
	}
	return calls, nil
}

// whoWentOn returns the side whose log says it went on without the other,
// and the other; nils if neither does.
func whoWentOn(primary, backup *chaosSide) (survivor, loser *chaosSide) {
	switch {
	case strings.Contains(primary.log.String(), lineAlone):
		return primary, backup
	case strings.Contains(backup.log.String(), lineLive):
		return backup, primary
	}
	return nil, nil
}

// keepLogs writes the logs of a failed trial's processes into dir, after
// making those still running dump their goroutines (SIGQUIT: a Go
// program prints every goroutine's stack and exits), and returns the
// files' names.
func keepLogs(dir string, n int, sides []*chaosSide) []string {
	for _, s := range sides {
		if !s.ended() {
			s.signal(syscall.SIGCONT)
			s.signal(syscall.SIGQUIT)
			select {
			case <-s.done:
			case <-time.After(5 * time.Second):
			}
		}
	}
	var names []string
	for _, s := range sides {
		name := fmt.Sprintf("trial-%d-%s.log", n, strings.ReplaceAll(s.name, " ", "-"))
		if writeAtomic(filepath.Join(dir, name), []byte(s.log.String())) == nil {
			names = append(names, name)
		}
	}
	return names
}

// chaosFreeze is how long a freeze or stall lasts: long enough for the
// other side to notice and decide, short enough that clients' retries are
// still running when the frozen side wakes.
func chaosFreeze(o ChaosOptions) time.Duration { return 4*o.FailoverTimeout + time.Second }

func errSuffix(e string) string {
	if e == "" {
		return ""
	}
	return ": " + e
}

// chaosSide is one ftvm process of a trial.
type chaosSide struct {
	name string
	cmd  *exec.Cmd
	log  *lockedBuilder
	done chan struct{}
}

func (s *chaosSide) start(cmd *exec.Cmd, env []string) error {
	s.cmd = cmd
	s.cmd.Env = env
	s.log = &lockedBuilder{b: &strings.Builder{}}
	s.cmd.Stderr = s.log
	s.done = make(chan struct{})
	if err := s.cmd.Start(); err != nil {
		return err
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	return nil
}

func (s *chaosSide) signal(sig syscall.Signal) { s.cmd.Process.Signal(sig) }

func (s *chaosSide) ended() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// status is the exit status, -1 if killed by a signal or still running.
func (s *chaosSide) status() int {
	if !s.ended() {
		return -1
	}
	return s.cmd.ProcessState.ExitCode()
}

// waitLine waits until the side's log has a line with one of wants, or it
// ends, or d passes; it returns the want seen, or "".
func (s *chaosSide) waitLine(d time.Duration, wants ...string) string {
	deadline := time.Now().Add(d)
	for {
		text := s.log.String()
		for _, w := range wants {
			if strings.Contains(text, w) {
				return w
			}
		}
		if s.ended() || time.Now().After(deadline) {
			return ""
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const (
	chaosHalted = 124 // ftvm's status for a side that lost the test-and-set
	lineLive    = "backup: LIVE since"
	lineAlone   = "carrying on alone"
)

func chaosTrial(ctx context.Context, o ChaosOptions, tr *ChaosTrial) (err error) {
	rng := rand.New(rand.NewPCG(tr.Seed, 0xfa017))
	dir, err := os.MkdirTemp("", "ftvm-chaos-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	const vmID = "chaos"
	cn, err := newChaosNet(o.Hosts, vmID, tr.Seed)
	if err != nil {
		return err
	}
	defer cn.close()
	arbURL := "file://" + filepath.Join(dir, "arbiter")
	env := os.Environ()
	var s3srv *s3Server
	if tr.Fault == FaultArbiterDown {
		bin, err := findVersityGW(o.Root)
		if err != nil {
			return err
		}
		if s3srv, err = startS3Server(ctx, bin, dir, cn.hosts, "storage", chaosStorageIP+":7070"); err != nil {
			return err
		}
		defer s3srv.stop()
		arbURL, env = s3srv.url(vmID+"-arbiter"), s3srv.env()
	} else if err := os.Mkdir(filepath.Join(dir, "arbiter"), 0o700); err != nil {
		return err
	}
	initArb := cn.command("primary", o.FTVM, "arbiter", "init", "--arbiter", arbURL)
	initArb.Env = env
	if out, err := initArb.CombinedOutput(); err != nil {
		return fmt.Errorf("ftvm arbiter init: %v\n%s", err, out)
	}
	if err := logchannel.WritePairCredentials(dir, vmID, "primary", "backup"); err != nil {
		return err
	}
	common := func(host string) []string {
		f := logchannel.PairFiles(dir, host)
		args := []string{"--backend", o.Backend, "--vm-id", vmID, "--arbiter", arbURL, "--failover-timeout", o.FailoverTimeout.String(),
			"--net", cn.guestNet, "--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA}
		if strings.HasPrefix(tr.Fault, "join-") {
			join := cn.primaryJoin
			if host == "backup" {
				join = cn.backupJoin
			}
			args = append(args, "--mem", chaosJoinMem, "--join-listen", join)
		}
		return args
	}
	guest := []string{filepath.Join(o.GuestDir, "kvstore.elf")}
	if tr.service() == ServiceRedis {
		if cn.hosts == nil || strings.HasPrefix(tr.Fault, "join-") {
			return fmt.Errorf("chaos: the %s fault with TCP clients needs hosts and is not a join fault", tr.Fault)
		}
		guest = []string{filepath.Join(o.GuestDir, "redis.elf")}
	}
	if strings.HasPrefix(tr.Fault, "join-") {
		guest = append(guest, chaosJoinFill)
	}
	backup := &chaosSide{name: "backup"}
	backupEnv := env
	if tr.Fault == FaultStallBackup {
		backupEnv = append(slices.Clip(env), ft.FailpointsEnv+"=replay-stall")
	}
	if err := backup.start(cn.command("backup", o.FTVM, append(append([]string{"backup", "--listen", cn.backupListen}, common("backup")...), guest...)...), backupEnv); err != nil {
		return err
	}
	sides := []*chaosSide{backup}
	defer func() {
		if err != nil && o.LogDir != "" {
			tr.Logs = keepLogs(o.LogDir, tr.N, sides)
		}
		for _, s := range sides {
			s.signal(syscall.SIGCONT)
			s.signal(syscall.SIGKILL)
			<-s.done
		}
	}()
	if backup.waitLine(time.Minute, "listening for the primary") == "" {
		return fmt.Errorf("the backup did not start:\n%s", backup.log.String())
	}
	if err := cn.startLink(); err != nil {
		return err
	}
	primary := &chaosSide{name: "primary"}
	if err := primary.start(cn.command("primary", o.FTVM, append(append([]string{"primary", "--backup", cn.backupDial}, common("primary")...), guest...)...), env); err != nil {
		return err
	}
	sides = append(sides, primary)
	if primary.waitLine(time.Minute, "primary: connected to the backup") == "" {
		return fmt.Errorf("the primary did not connect:\n%s", primary.log.String())
	}

	stop := make(chan struct{})
	stopOnce := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
	}
	defer stopOnce()
	type ran struct {
		h   chaosHistory
		err error
	}
	clients := make(chan ran, 1)
	var completed atomic.Int64
	wctx, abandonCalls := context.WithCancel(ctx)
	defer abandonCalls()
	go func() {
		h, err := runChaosClients(wctx, cn, tr.service(), tr.Seed, stop, &completed)
		clients <- ran{h, err}
	}()

	// The fault's moment counts from the clients' first reply: reaching
	// the guest at first (ARP, a bridge port coming up) is not the fault's.
	for deadline := time.Now().Add(time.Minute); completed.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("no client got a reply within a minute of the pair starting")
		}
	}
	tr.At = time.Duration(300+rng.IntN(1200)) * time.Millisecond
	select {
	case <-time.After(tr.At):
	case <-ctx.Done():
		return ctx.Err()
	}
	faultAt := time.Now()
	// finish ends a trial whose fault is over: survivor runs the guest,
	// which lived on the hosts liveHosts in turn. Clients go on a little
	// past the takeover, then stop; lossAllowed: the fault was a double
	// failure that may leave no side running, whose unanswered calls are
	// abandoned (not counted as lost).
	finish := func(survivor *chaosSide, liveHosts []string, lossAllowed bool) error {
		if lossAllowed {
			tr.ServiceLost = true
			abandonCalls()
		}
		time.Sleep(500 * time.Millisecond)
		stopOnce()
		res := <-clients
		if res.err != nil && !lossAllowed {
			return res.err
		}
		if survivor != nil {
			// The survivor's state must hold every acknowledged write: read
			// every key once more, into the history that porcupine checks.
			if err := res.h.finalReads(ctx, cn); err != nil {
				return fmt.Errorf("reading every key from the %s after the trial: %w", survivor.name, err)
			}
		}
		var gap time.Duration
		tr.Calls, tr.Failed, gap, tr.Linearizable = res.h.verdict(faultAt)
		tr.Unavailable = ms(gap)
		if survivor != nil && survivor.ended() {
			return fmt.Errorf("the %s, which went on, ended with status %d:\n%s", survivor.name, survivor.status(), survivor.log.String())
		}
		if cn.hosts == nil {
			return nil
		}
		fromPrimary, fromBackup, err := cn.captured()
		if err != nil {
			return fmt.Errorf("capturing the LAN: %w", err)
		}
		tr.FramesPrimary, tr.FramesBackup = len(fromPrimary), len(fromBackup)
		if err := checkWire(liveHosts, !lossAllowed, fromPrimary, fromBackup, &tr.SplitBrain, &tr.LateDuplicates); err != nil {
			return fmt.Errorf("%w (%s)", err, cn.captureQuality())
		}
		return nil
	}
	if strings.HasPrefix(tr.Fault, "join-") {
		return chaosJoinFault(o, tr, rng, cn, env, common, guest, primary, backup, &sides, finish)
	}
	freeze := chaosFreeze(o)
	var survivor, loser *chaosSide
	switch tr.Fault {
	case FaultKillPrimary:
		primary.signal(syscall.SIGKILL)
		survivor, loser = backup, primary
	case FaultKillBackup:
		backup.signal(syscall.SIGKILL)
		survivor, loser = primary, backup
	case FaultFreezePrimary, FaultFreezeBackup:
		frozen, other := primary, backup
		if tr.Fault == FaultFreezeBackup {
			frozen, other = backup, primary
		}
		frozen.signal(syscall.SIGSTOP)
		time.Sleep(freeze) // the fault's length is part of the fault
		frozen.signal(syscall.SIGCONT)
		survivor, loser = other, frozen
	case FaultPartition, FaultPartitionToBackup, FaultPartitionToPrimary:
		if err := cn.partition(tr.Fault != FaultPartitionToPrimary, tr.Fault != FaultPartitionToBackup); err != nil {
			return err
		}
	case FaultLinkDelay, FaultLinkLoss, FaultLinkReorder, FaultClientsCut, FaultStallBackup:
		// The fault's length is part of the fault.
		length := time.Duration(1000+rng.IntN(1500)) * time.Millisecond
		switch tr.Fault {
		case FaultStallBackup:
			backup.signal(syscall.SIGUSR2)
			time.Sleep(freeze)
			backup.signal(syscall.SIGUSR2)
		case FaultClientsCut:
			if err := cn.cutClients(true); err != nil {
				return err
			}
			time.Sleep(length)
			if err := cn.cutClients(false); err != nil {
				return err
			}
		default:
			cn.degrade(chaosImpair[tr.Fault])
			time.Sleep(length)
			cn.heal()
		}
		// These faults need not end the pair. Once it has had time to
		// settle: if one side went on alone, check that as after any
		// failover; if not, kill the primary, so that the backup shows
		// it holds every acknowledged write despite the fault.
		time.Sleep(3 * o.FailoverTimeout)
		if survivor, loser = whoWentOn(primary, backup); survivor == nil {
			tr.ThenKilled = true
			primary.signal(syscall.SIGKILL)
			survivor, loser = backup, primary
		}
	case FaultArbiterDown:
		s3srv.stop()
		primary.signal(syscall.SIGKILL)
		survivor, loser = backup, primary
		// The backup finds its primary gone and the storage unreachable:
		// it must retry, and not go live, for as long as the storage is
		// away (the fault's length: a few failover timeouts).
		if backup.waitLine(time.Minute, "arbiter unreachable") == "" {
			return fmt.Errorf("the backup never said the arbiter was unreachable:\n%s", backup.log.String())
		}
		time.Sleep(freeze)
		if strings.Contains(backup.log.String(), lineLive) {
			tr.SplitBrain = true
			return fmt.Errorf("the backup went live while the arbiter's storage was down:\n%s", backup.log.String())
		}
		if err := s3srv.start(ctx); err != nil {
			return err
		}
	}
	// The outcome: which side went on, and that the other one stopped.
	wantLive := map[*chaosSide]string{primary: lineAlone, backup: lineLive}
	if survivor == nil {
		// A partition: whichever side won the arbiter goes on.
		deadline := time.Now().Add(time.Minute)
		for survivor == nil && time.Now().Before(deadline) {
			if survivor, loser = whoWentOn(primary, backup); survivor == nil {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if survivor == nil {
			return errors.New("after the partition no side went on within a minute")
		}
	}
	tr.Live = survivor.name
	if survivor.waitLine(time.Minute, wantLive[survivor]) == "" {
		return fmt.Errorf("the %s did not go on after the fault:\n%s", survivor.name, survivor.log.String())
	}
	// The loser must stop: killed already, or halted by the arbiter.
	select {
	case <-loser.done:
	case <-time.After(time.Minute):
		tr.SplitBrain = true
		return fmt.Errorf("the %s is still running a minute after the %s went on:\n%s", loser.name, survivor.name, loser.log.String())
	}
	if st := loser.status(); st != -1 && st != chaosHalted {
		return fmt.Errorf("the %s ended with status %d, not %d (halted) or killed:\n%s", loser.name, st, chaosHalted, loser.log.String())
	}
	if strings.Contains(loser.log.String(), wantLive[loser]) {
		tr.SplitBrain = true
		return fmt.Errorf("both sides went on: the %s too:\n%s", loser.name, loser.log.String())
	}
	liveHosts := []string{"primary"}
	if survivor == backup {
		liveHosts = append(liveHosts, "backup")
	}
	return finish(survivor, liveHosts, false)
}

// checkWire checks what the VM hosts' TAPs captured: the guest's frames came from
// one host at a time, in the order the guest lived on them (liveHosts:
// "primary" and "backup", the hosts whose TAPs were captured), never
// going back to a host it had left, or the trial is a split brain: two
// sides released output. One exception, counted in dups: a frame from a
// host the guest had left that another host put on the LAN too, byte for
// byte. That is an output both sides had committed (the backup had
// acknowledged its entry, and released it at go-live), which the old side
// let out late; to the network it is a duplicate, as VM-FT allows (TCP
// drops such duplicates). lastSpoke: the last host must have put at least
// its gratuitous ARP on the LAN.
func checkWire(liveHosts []string, lastSpoke bool, fromPrimary, fromBackup []hosts.Frame, splitBrain *bool, dups *int) error {
	type frame struct {
		hosts.Frame
		host string
	}
	var all []frame
	senders := map[uint64]map[string]bool{}
	for _, c := range []struct {
		host   string
		frames []hosts.Frame
	}{{"primary", fromPrimary}, {"backup", fromBackup}} {
		for _, f := range c.frames {
			all = append(all, frame{f, c.host})
			if senders[f.Sum] == nil {
				senders[f.Sum] = map[string]bool{}
			}
			senders[f.Sum][c.host] = true
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].At.Before(all[j].At) })
	cur := -1 // liveHosts[cur] is the host the guest is on
	for i, f := range all {
		if cur >= 0 && liveHosts[cur] == f.host {
			continue
		}
		j := cur + 1
		for j < len(liveHosts) && liveHosts[j] != f.host {
			j++
		}
		if j < len(liveHosts) {
			cur = j
			continue
		}
		if len(senders[f.Sum]) > 1 {
			*dups++
			continue
		}
		*splitBrain = true
		prev := frame{host: "no"}
		if i > 0 {
			prev = all[i-1]
		}
		seen := "; the capture had not seen that frame before"
		for _, g := range all[:i] {
			if g.Sum == f.Sum && g.host == f.host {
				seen = fmt.Sprintf("; the same frame had come from there at %s", g.At.Format(time.RFC3339Nano))
				break
			}
		}
		return fmt.Errorf("the %s's host put the guest's frame on the LAN at %s (%v), after the %s's host did at %s (%v), and no other host sent that frame%s: the guest lived on %s in that order",
			f.host, f.At.Format(time.RFC3339Nano), f.Frame, prev.host, prev.At.Format(time.RFC3339Nano), prev.Frame, seen, strings.Join(liveHosts, ", then "))
	}
	if lastSpoke && len(liveHosts) > 1 && cur != len(liveHosts)-1 {
		return fmt.Errorf("the guest went live on the %s's host last but none of its frames (not even a gratuitous ARP) reached the LAN from there", liveHosts[len(liveHosts)-1])
	}
	return nil
}

// WriteReport writes REPORT.md and results.json into dir.
func (r *ChaosResults) WriteReport(dir string) error {
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
	var b strings.Builder
	where := "loopback"
	if r.Hosts {
		where = "hosts of their own"
	}
	fmt.Fprintf(&b, "# ftvm fault campaign\n\nCommand: `%s`, on the %s backend, %s; %d trials in %s on %s, %d at a time; campaign seed %d.\n\n",
		r.Command, r.Backend, r.Date, len(r.Trials), r.Elapsed, where, r.Parallel, r.Seed)
	if r.Hosts {
		b.WriteString("Each trial runs on hosts of their own (network namespaces the campaign makes and removes): the primary's and the backup's each with a bridge joining the guest's TAP to the LAN, and a logging link of their own between them whose packets pass through the campaign (which cuts, delays, loses or reorders them); the clients' host and the storage host on the LAN. " +
			"The guest keeps its IP (10.77.0.100) and MAC on either host; a backup that goes live announces it by gratuitous ARP. " +
			"What the VMM on the primary's host and on the backup's host writes into its TAP is captured (when a side released a frame, not when the LAN passed it on): the guest's frames must come from one host at a time (the primary's all before the backup's first, none from the backup's if the primary stays live), or the trial is a split brain, except for late duplicates: a frame the old side let out after the guest moved on that the new side sent too, byte for byte (an output both had committed; to the network a duplicate, as VM-FT allows).\n\n")
	} else {
		b.WriteString("Each trial runs on loopback (no network namespaces here): the logging link passes through a proxy the campaign controls, and clients reach the guest by user-mode networking's forwarded port. A frozen primary keeps that port, so clients reach the backup only once the woken primary has halted.\n\n")
	}
	b.WriteString("kvstore protected by `ftvm primary` and `ftvm backup`, two processes with mutual TLS and a file arbiter (S3 for arbiter-down); 3 clients with porcupine-checked histories, and after the trial one GET of every key from the side that went on, in the same history (a lost acknowledged write makes it not linearizable); one fault 0.3-1.5 s after the clients' first reply. " +
		"kill: `kill -9`. arbiter-down: the S3 arbiter's server (versitygw) is killed, then the primary; the backup must retry without going live for 4 failover timeouts + 1 s, until the server is back on the same storage. freeze: SIGSTOP for 4 failover timeouts + 1 s, then SIGCONT (the woken side must halt: status 124). partition: the logging link goes silent both ways, or one way only (to-backup: the log and the primary's heartbeats stop, the backup's still arrive; to-primary: the reverse), while both processes live on (exactly one side may go on). " +
		"link-delay (40 ± 20 ms each way), link-loss (5% each way), link-reorder (25% of packets sent at once, the others held 10 ms): for 1-2.5 s; clients-cut: the primary's host off the LAN for as long (its logging link stays). After these four, if the pair is still whole 3 failover timeouts later, the primary is killed, so the backup shows it holds every acknowledged write. " +
		"stall-backup: the backup's replay stops (a failpoint; its acks and heartbeats go on) as long as a freeze. " +
		"join-*: after a kill -9 of the primary, a new backup joins the side that went live (from the primary's host, 128 MiB of the guest's 256 MiB filled), and 0-1 s after it began (mostly during the state transfer) it is killed, frozen, or cut off (join-partition), or the live side is killed (join-kill-live: a new backup that had not joined must not go live, and nothing runs the guest; one that had must take over). After the others a second backup joins if the first did not make it, and the live side is killed: the new backup must take over. " +
		"redis trials (TCP clients): the redis guest (RESP over lwIP's TCP) instead of kvstore, and 3 clients of `bench/resp`, each on one TCP connection for the whole trial, doing SET (unique values), APPEND and GET on 4 shared keys, without retries of their own: only TCP's retransmissions carry a call across the fault, and a connection reset or an error reply counts as a call without reply; the same final GETs, porcupine check, wire check and unavailability (no join faults: their guest fills memory with a kvstore argument). " +
		"A split brain is both sides going on, the losing side still running a minute after the winner went on, or (on hosts) both putting the guest's frames on the wire. Unavailability is the longest time no client got a reply from the fault on (kvstore's clients resend every 200 ms; redis's wait for TCP's retransmissions).\n\n")
	b.WriteString("| service | fault | trials | unavailable p50 | p99 | max | calls without reply | split brains | linearizability violations | errors | notes | seeds of failed trials |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range r.Rows {
		seeds := make([]string, len(row.FailedSeeds))
		for i, s := range row.FailedSeeds {
			seeds[i] = fmt.Sprint(s)
		}
		var notes []string
		if strings.HasPrefix(row.Fault, "join-") {
			notes = append(notes, fmt.Sprintf("%d during the transfer", row.DuringTransfer))
		}
		if row.LateDuplicates > 0 {
			notes = append(notes, fmt.Sprintf("%d late duplicate frames in %d trials", row.LateDuplicates, row.LateDuplicateTrials))
		}
		if row.ServiceLost > 0 {
			notes = append(notes, fmt.Sprintf("%d left no side (the new backup had not joined; not in the unavailability)", row.ServiceLost))
		}
		svc := row.Service
		if svc == "" {
			svc = ServiceKV
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %.0f ms | %.0f ms | %.0f ms | %d | %d | %d | %d | %s | %s |\n", svc, row.Fault, row.Trials, row.UnavailP50, row.UnavailP99, row.Max,
			row.Failed, row.SplitBrains, row.Violations, row.Errors, strings.Join(notes, "; "), strings.Join(seeds, " "))
	}
	var failed []ChaosTrial
	for _, t := range r.Trials {
		if !t.ok() {
			failed = append(failed, t)
		}
	}
	if len(failed) > 0 {
		b.WriteString("\n## Failed trials\n\nReplay one with `ftvm chaos --trials 1 --faults FAULT --trial-seed SEED`, a redis one with `ftvm chaos --trials 0 --tcp-trials 1 --tcp-faults FAULT --trial-seed SEED`.\n\n")
		for _, t := range failed {
			fmt.Fprintf(&b, "- trial %d, %s, %s, seed %d, fault at %v: %d calls, %d without reply, linearizable %v, split brain %v: %s",
				t.N, t.service(), t.Fault, t.Seed, t.At.Round(time.Millisecond), t.Calls, t.Failed, t.Linearizable, t.SplitBrain, firstLine(t.Err))
			if len(t.Logs) > 0 {
				fmt.Fprintf(&b, " (logs: %s)", strings.Join(t.Logs, ", "))
			}
			b.WriteString("\n")
		}
	}
	return writeAtomic(filepath.Join(dir, "REPORT.md"), []byte(b.String()))
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

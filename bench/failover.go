package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/ftvm/ftvm/bench/kv"
	"github.com/ftvm/ftvm/bench/netproxy"
	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/splitbrain"
	"github.com/ftvm/ftvm/vmm/ft"
	"github.com/ftvm/ftvm/vmm/vnet"
)

// silentDeathTrial runs kvstore fault-tolerantly in this process with
// clients, and after `after` makes the primary's host vanish: its logging
// channel goes silent and its VM and sockets are gone. It returns the
// longest time no client got a reply, after checking the history.
func silentDeathTrial(ctx context.Context, o Options, timeout, after time.Duration, seed int64) (time.Duration, error) {
	img, err := o.image("kvstore")
	if err != nil {
		return 0, err
	}
	spec, addr, _, err := userNet(7000)
	if err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("", "ftvm-bench-failover-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	arb, err := splitbrain.Open("file://" + dir)
	if err != nil {
		return 0, err
	}
	if _, err := arb.Init(ctx); err != nil {
		return 0, err
	}
	gen, err := ft.TakeEpoch(ctx, arb, "bench-failover", "bench")
	if err != nil {
		return 0, err
	}
	ln, err := logchannel.Listen("127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	proxy, err := netproxy.New(ln.Addr().String())
	if err != nil {
		return 0, err
	}
	defer proxy.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	chcfg := logchannel.Config{FailoverTimeout: timeout, HeartbeatInterval: timeout / 5}
	primaryTLS, backupTLS, err := logchannel.NewPairCredentials("bench-failover")
	if err != nil {
		return 0, err
	}
	var stderr strings.Builder
	logs := &lockedBuilder{b: &stderr}
	common := func(role string, nb vnet.Backend) ft.Common {
		chcfg := chcfg
		chcfg.TLS = primaryTLS
		if role == "backup" {
			chcfg.TLS = backupTLS
		}
		return ft.Common{Backend: o.Backend, Image: img, Config: nicConfig(spec, ""), VMID: "bench-failover", Generation: gen, Arbiter: arb,
			Claimant: role, Stdin: strings.NewReader(""), Stdout: io.Discard, Net: nb, Channel: chcfg,
			Logf: func(f string, a ...any) { fmt.Fprintf(logs, role+": "+f+"\n", a...) }}
	}
	bnet, err := vnet.New(*spec)
	if err != nil {
		return 0, err
	}
	defer bnet.Close()
	var wg sync.WaitGroup
	var live bool
	wg.Add(2)
	go func() {
		defer wg.Done()
		out, _ := ft.RunBackup(ctx, ft.BackupOptions{Common: common("backup", bnet), Listener: ln})
		live = out.WentLive
	}()
	pnet, err := vnet.Open(*spec)
	if err != nil {
		return 0, err
	}
	pctx, kill := context.WithCancel(ctx)
	go func() {
		defer wg.Done()
		ft.RunPrimary(pctx, ft.PrimaryOptions{Common: common("primary", pnet), BackupAddr: proxy.Addr()})
		pnet.Close() // the dead host's sockets are gone
	}()
	time.AfterFunc(after, func() { proxy.Freeze(); kill() })
	w := kv.Workload{Clients: 3, Keys: 4, Duration: after + 1500*time.Millisecond + timeout, Seed: seed, OpTimeout: 30 * time.Second}
	out, err := w.Run(ctx, addr)
	cancel()
	wg.Wait()
	if err != nil {
		return 0, err
	}
	if out.Failed > 0 {
		return 0, fmt.Errorf("%d calls without a reply\n%s", out.Failed, stderr.String())
	}
	if res, _ := kv.CheckLinearizable(out.Calls, time.Minute); res != porcupine.Ok {
		return 0, fmt.Errorf("history is %v", res)
	}
	if !live {
		return 0, fmt.Errorf("the backup did not go live\n%s", stderr.String())
	}
	return out.MaxGap, nil
}

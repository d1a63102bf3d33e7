package bench

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/ftvm/ftvm/bench/kv"
	"github.com/ftvm/ftvm/bench/resp"
)

// The campaign's services: kvstore with its own UDP clients (which resend
// every 200 ms and carry request ids for exactly-once), or the redis guest
// with RESP clients over TCP, each on one connection that must survive
// every fault (a reset is a call without reply: a failed trial).
const (
	ServiceKV    = "kvstore"
	ServiceRedis = "redis"
)

// ChaosServices are the services, in report order.
var ChaosServices = []string{ServiceKV, ServiceRedis}

// TCPChaosFaults are the faults a redis trial can take: all but the join
// faults, whose guest fills its memory with a kvstore argument.
func TCPChaosFaults() []string {
	var fs []string
	for _, f := range ChaosFaults {
		if !isJoinFault(f) {
			fs = append(fs, f)
		}
	}
	return fs
}

func isJoinFault(f string) bool { return strings.HasPrefix(f, "join-") }

// chaosRedisPort is where the redis guest listens.
const chaosRedisPort = 6379

// chaosHistory is what a trial's clients saw, of either service.
type chaosHistory interface {
	// finalReads reads every key once more from the server into the
	// history: the state of the side that went on must hold every
	// acknowledged write.
	finalReads(ctx context.Context, cn *chaosNet) error
	// verdict: the calls, those without a reply (or, for redis, with an
	// error reply), the longest time from since that no call completed,
	// and porcupine's verdict.
	verdict(since time.Time) (calls, failed int, unavailable time.Duration, linearizable bool)
}

// runChaosClients runs the trial's clients until stop closes.
func runChaosClients(ctx context.Context, cn *chaosNet, service string, seed uint64, stop <-chan struct{}, completed *atomic.Int64) (chaosHistory, error) {
	if service == ServiceRedis {
		w := resp.Workload{Clients: chaosClients, Keys: chaosKeys, Duration: 10 * time.Minute, Seed: int64(seed), OpTimeout: time.Minute, Stop: stop,
			Dial: cn.dialRESP, Completed: completed}
		out, err := w.Run(ctx, cn.redisAddr())
		return &respHistory{out: out}, err
	}
	w := kv.Workload{Clients: chaosClients, Keys: chaosKeys, Duration: 10 * time.Minute, Seed: int64(seed), OpTimeout: time.Minute, Stop: stop}
	w.Dial, w.Completed = cn.dialClient, completed
	out, err := w.Run(ctx, cn.clientAddr)
	return &kvHistory{out: out}, err
}

type kvHistory struct{ out kv.Outcome }

func (h *kvHistory) finalReads(ctx context.Context, cn *chaosNet) error {
	final, err := chaosFinalReads(ctx, cn, chaosKeys, chaosClients)
	h.out.Calls = append(h.out.Calls, final...)
	return err
}

func (h *kvHistory) verdict(since time.Time) (int, int, time.Duration, bool) {
	v, _ := kv.CheckLinearizable(h.out.Calls, time.Minute)
	return len(h.out.Calls), h.out.Failed, kv.MaxGapSince(h.out.Calls, since), v == porcupine.Ok
}

type respHistory struct{ out resp.Outcome }

func (h *respHistory) finalReads(ctx context.Context, cn *chaosNet) error {
	c, err := cn.dialRESP(cn.redisAddr())
	if err != nil {
		return err
	}
	defer c.Close()
	final, err := resp.FinalReads(ctx, c, chaosKeys, chaosClients)
	h.out.Calls = append(h.out.Calls, final...)
	return err
}

func (h *respHistory) verdict(since time.Time) (int, int, time.Duration, bool) {
	v, _ := resp.CheckLinearizable(h.out.Calls, time.Minute)
	return len(h.out.Calls), h.out.Failed + h.out.Errors, resp.MaxGapSince(h.out.Calls, since), v == porcupine.Ok
}

// redisAddr is where RESP clients connect: the guest on the LAN.
func (cn *chaosNet) redisAddr() string { return fmt.Sprintf("%s:%d", chaosGuestIP, chaosRedisPort) }

// dialRESP connects a RESP client from the clients' host (hosts only: user
// networking forwards only UDP, and a forwarded TCP connection would end
// at the primary VMM's socket and die with it).
func (cn *chaosNet) dialRESP(addr string) (*resp.Client, error) {
	if cn.hosts == nil {
		return nil, fmt.Errorf("chaos: RESP clients need hosts (network namespaces)")
	}
	var c *resp.Client
	err := cn.hosts.Do("clients", func() (err error) {
		c, err = resp.Dial(addr, 10*time.Second)
		return err
	})
	return c, err
}

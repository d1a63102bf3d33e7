package ft

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/ftvm/ftvm/splitbrain"
)

// ErrLostArbitration: the other side won the test-and-set; this one halts.
var ErrLostArbitration = errors.New("ft: the other side won the go-live test-and-set; halted")

// policyTick is one tick of the go-live policy; claims are retried after
// 1-2 ticks at first and at most every 16 ticks (~1.6 s) while the storage
// is unreachable or erroring.
const policyTick = 100 * time.Millisecond

// arbitrate runs splitbrain's go-live policy against the arbiter until it
// says go live (nil) or halt (ErrLostArbitration), or ctx ends. It never
// returns nil on an error of the storage: it retries with backoff. Each
// attempt's outcome is logged through logf.
func arbitrate(ctx context.Context, arb splitbrain.Arbiter, claim splitbrain.Claim, logf func(string, ...any)) (splitbrain.Decision, error) {
	pol, err := splitbrain.NewPolicy(splitbrain.PolicyConfig{RetryBase: 1, RetryMax: 16, Rand: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x9e3779b97f4a7c15))})
	if err != nil {
		return splitbrain.Decision{}, err
	}
	act := pol.PeerLost()
	tick := time.NewTicker(policyTick)
	defer tick.Stop()
	for {
		switch act {
		case splitbrain.ActionClaim:
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			d, err := arb.Claim(cctx, claim)
			cancel()
			if err != nil {
				logf("arbiter unreachable or failing (%v); nobody goes live on an error, retrying", err)
			}
			if act, err = pol.ClaimResult(d, err); err != nil {
				return d, err
			}
			switch act {
			case splitbrain.ActionGoLive:
				return d, nil
			case splitbrain.ActionHalt:
				return d, fmt.Errorf("%w (held by %s since %s: %s)", ErrLostArbitration, d.Holder.Claimant,
					d.Holder.ClaimedAt.Format(time.RFC3339Nano), d.Holder.Reason)
			}
			continue
		}
		select {
		case <-ctx.Done():
			return splitbrain.Decision{}, ctx.Err()
		case <-tick.C:
			act = pol.Tick()
		}
	}
}

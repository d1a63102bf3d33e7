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

// ErrArbiterRefused: the arbiter answered this side's claim with an error
// every retry would repeat (splitbrain.IsPermanent: a stale epoch, another
// cluster's storage, no permission, no bucket); this side stops without
// going live instead of waiting forever.
var ErrArbiterRefused = errors.New("ft: the arbiter can never grant this side's claim; stopped without going live")

// policyTick is one tick of the go-live policy; claims are retried after
// 1-2 ticks at first and at most every 16 ticks (~1.6 s) while the storage
// is unreachable or erroring.
const policyTick = 100 * time.Millisecond

// arbitrate runs splitbrain's go-live policy against the arbiter until it
// says go live (nil), halt (ErrLostArbitration) or fail (ErrArbiterRefused),
// or ctx ends. It never returns nil on an error of the storage: it retries
// transient ones with backoff. Each attempt's outcome is logged through logf.
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
			claimErr := err
			if err != nil && !splitbrain.IsPermanent(err) {
				logf("arbiter unreachable or failing (%v); nobody goes live on an error, retrying", err)
			}
			if act, err = pol.ClaimResult(d, err); err != nil {
				return d, err
			}
			switch act {
			case splitbrain.ActionFail:
				return splitbrain.Decision{}, fmt.Errorf("%w: %w", ErrArbiterRefused, claimErr)
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

// Start-up: everything a failover will need from the arbiter is checked
// before a side starts, so that a configuration error is an error now, not
// a side that waits forever at the first failure.

// startCheckTimeout bounds the start-up check of the arbiter.
const startCheckTimeout = 30 * time.Second

// checkArbiter checks that vmID can be used as a slot and that the arbiter
// answers, carries its cluster marker and takes (conditional) writes.
func checkArbiter(ctx context.Context, arb splitbrain.Arbiter, vmID string) (context.Context, context.CancelFunc, error) {
	if err := splitbrain.ValidateVMID(vmID); err != nil {
		return nil, nil, fmt.Errorf("ft: --vm-id: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, startCheckTimeout)
	if _, err := arb.Check(ctx); err != nil {
		cancel()
		return nil, nil, fmt.Errorf("ft: the arbiter cannot decide a failover: %w", err)
	}
	return ctx, cancel, nil
}

// CheckArbiter checks that vmID can be used as a slot and that the
// arbiter answers, carries its cluster marker and takes conditional
// writes: what a backup that joins a running primary checks at start (the
// primary takes the pairing's epoch).
func CheckArbiter(ctx context.Context, arb splitbrain.Arbiter, vmID string) error {
	_, cancel, err := checkArbiter(ctx, arb, vmID)
	if err == nil {
		cancel()
	}
	return err
}

// TakeEpoch checks the arbiter and takes vmID's next epoch for a new
// pairing; it returns the generation the pairing uses. Whoever starts a
// pairing calls it: the backup (which waits for its primary) or ftvm pair.
// Taking an epoch fences every older pairing of vmID: none of its sides
// can claim the arbiter again.
func TakeEpoch(ctx context.Context, arb splitbrain.Arbiter, vmID, taker string) (uint64, error) {
	ctx, cancel, err := checkArbiter(ctx, arb, vmID)
	if err != nil {
		return 0, err
	}
	defer cancel()
	cur, err := arb.Epoch(ctx, vmID)
	if err != nil {
		return 0, fmt.Errorf("ft: reading the epoch of %s: %w", vmID, err)
	}
	rec, err := arb.AdvanceEpoch(ctx, vmID, cur.Epoch, taker)
	if err != nil {
		return 0, fmt.Errorf("ft: taking a new epoch for %s (another pairing of it starting at the same moment?): %w", vmID, err)
	}
	return rec.Epoch, nil
}

// JoinEpoch checks the arbiter and that generation (0: whatever is
// current) is vmID's current epoch and that nobody has claimed it yet: a
// side joins the pairing someone else started with TakeEpoch, and refuses
// an old pairing's epoch or one that already had its failover.
func JoinEpoch(ctx context.Context, arb splitbrain.Arbiter, vmID string, generation uint64) (uint64, error) {
	ctx, cancel, err := checkArbiter(ctx, arb, vmID)
	if err != nil {
		return 0, err
	}
	defer cancel()
	cur, err := arb.Epoch(ctx, vmID)
	if err != nil {
		return 0, fmt.Errorf("ft: reading the epoch of %s: %w", vmID, err)
	}
	switch {
	case cur.Epoch == 0:
		return 0, fmt.Errorf("ft: no pairing of %s has started: the backup takes the epoch when it starts (start it first), or use ftvm pair", vmID)
	case generation != 0 && generation != cur.Epoch:
		return 0, fmt.Errorf("ft: generation %d is not the current epoch of %s, which is %d (taken by %s at %s): an old pairing cannot be restarted; leave --generation out",
			generation, vmID, cur.Epoch, cur.TakenBy, cur.TakenAt.Format(time.RFC3339))
	}
	held, ok, err := arb.Holder(ctx, vmID, cur.Epoch)
	if err != nil {
		return 0, fmt.Errorf("ft: reading the claim of %s epoch %d: %w", vmID, cur.Epoch, err)
	}
	if ok {
		return 0, fmt.Errorf("ft: epoch %d of %s is held by %s since %s: that pairing already had its failover; a new pairing needs a new epoch (restart the backup)",
			cur.Epoch, vmID, held.Claimant, held.ClaimedAt.Format(time.RFC3339))
	}
	return cur.Epoch, nil
}

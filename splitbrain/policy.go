package splitbrain

import (
	"errors"
	"fmt"
	"math/rand/v2"
)

// Policy is the pure go-live core of one side (primary or backup). It does
// no I/O and reads no clock: the caller feeds it ticks, "peer lost" and the
// results of the claims it asked for, and does what the returned Action says.
//
// Its one safety rule: it returns ActionGoLive only in answer to a Decision
// with Won set and no error. An error means the storage could not be asked,
// and the answer to that is to wait and ask again, with bounded, jittered
// exponential backoff so that a recovering store is not hammered by every
// waiting side at once. A permanent error (IsPermanent: a stale epoch,
// another cluster's storage, no permission) would be repeated by every
// retry, so it ends the policy with ActionFail instead of waiting forever.
//
// Driving loop (the I/O edge):
//
//	act := p.PeerLost()            // or p.Tick() on every tick
//	if act == ActionClaim {
//	    d, err := arbiter.Claim(ctxWithTimeout, claim)
//	    act, _ = p.ClaimResult(d, err)
//	}
//	// ActionGoLive: replay to the end of the log and go live.
//	// ActionHalt: stop the VM.
//	// ActionFail: stop the VM; the arbiter can never decide for this side.
//
// The caller bounds each Claim call with a context deadline and reports a
// timeout as an error; the policy never has more than one claim in flight.
type Policy struct {
	cfg      PolicyConfig
	state    PolicyState
	now      uint64 // ticks since NewPolicy
	failures int    // consecutive claims that ended in an error
	retryAt  uint64 // in StateBackoff: the tick at which to claim again
	lastErr  string
	holder   Record // in StateHalted (and StateLive): who holds the claim
}

// PolicyConfig tunes the backoff; units are ticks.
type PolicyConfig struct {
	// RetryBase is the nominal wait after the first failed claim (>= 1).
	// Each further failure doubles it.
	RetryBase int
	// RetryMax caps the nominal wait (>= RetryBase), so a side never waits
	// longer than this to notice that the storage came back.
	RetryMax int
	// Rand jitters each wait within [ceil(nominal/2), nominal]. The caller
	// seeds it, so a run (and a transcript test) replays exactly.
	Rand *rand.Rand
}

// PolicyState is where a Policy is.
type PolicyState int

const (
	// StateWatching: the peer is alive (as far as the caller knows).
	StateWatching PolicyState = iota
	// StateClaiming: a claim is in flight; waiting for ClaimResult.
	StateClaiming
	// StateBackoff: the last claim ended in an error; waiting to retry.
	StateBackoff
	// StateLive: the claim was won; terminal.
	StateLive
	// StateHalted: the claim was lost to another claimant; terminal.
	StateHalted
	// StateFailed: the claim got a permanent error; terminal.
	StateFailed
)

func (s PolicyState) String() string {
	switch s {
	case StateWatching:
		return "watching"
	case StateClaiming:
		return "claiming"
	case StateBackoff:
		return "backoff"
	case StateLive:
		return "live"
	case StateHalted:
		return "halted"
	case StateFailed:
		return "failed"
	}
	return fmt.Sprintf("PolicyState(%d)", int(s))
}

// Action is what the caller must do after an input.
type Action int

const (
	// ActionNone: nothing to do now.
	ActionNone Action = iota
	// ActionClaim: call Arbiter.Claim now and report with ClaimResult.
	ActionClaim
	// ActionGoLive: this side won; go live.
	ActionGoLive
	// ActionHalt: the other side won; stop the VM.
	ActionHalt
	// ActionFail: the arbiter refuses this side for good (Status().LastError
	// says why); stop the VM without going live.
	ActionFail
)

func (a Action) String() string {
	switch a {
	case ActionNone:
		return "none"
	case ActionClaim:
		return "claim"
	case ActionGoLive:
		return "go-live"
	case ActionHalt:
		return "halt"
	case ActionFail:
		return "fail"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// ErrUnexpectedResult is returned by ClaimResult when no claim was asked for.
var ErrUnexpectedResult = errors.New("splitbrain: claim result while no claim is in flight")

// NewPolicy returns a Policy in StateWatching at tick 0.
func NewPolicy(cfg PolicyConfig) (*Policy, error) {
	if cfg.RetryBase < 1 || cfg.RetryMax < cfg.RetryBase {
		return nil, fmt.Errorf("splitbrain: policy backoff base=%d max=%d: want 1 <= base <= max", cfg.RetryBase, cfg.RetryMax)
	}
	if cfg.Rand == nil {
		return nil, errors.New("splitbrain: policy needs a seeded Rand for jitter")
	}
	return &Policy{cfg: cfg}, nil
}

// PeerLost tells the policy the peer has gone silent. The first call starts
// a claim; later ones change nothing (a claim is already under way or done).
func (p *Policy) PeerLost() Action {
	if p.state != StateWatching {
		return ActionNone
	}
	p.state = StateClaiming
	return ActionClaim
}

// Tick advances time by one tick; it returns ActionClaim when a backoff ends.
func (p *Policy) Tick() Action {
	p.now++
	if p.state == StateBackoff && p.now >= p.retryAt {
		p.state = StateClaiming
		return ActionClaim
	}
	return ActionNone
}

// ClaimResult reports the outcome of the claim the last ActionClaim asked
// for. An error leads to backoff, whatever d says, and a permanent one to
// ActionFail.
func (p *Policy) ClaimResult(d Decision, err error) (Action, error) {
	if p.state != StateClaiming {
		// Ignoring it is safe even if it says Won: the stored claim stays
		// ours, and the next claim (idempotent) will report Won again.
		return ActionNone, fmt.Errorf("%w (state %s)", ErrUnexpectedResult, p.state)
	}
	switch {
	case err != nil && IsPermanent(err):
		p.failures++
		p.lastErr = err.Error()
		p.state = StateFailed
		return ActionFail, nil
	case err != nil:
		p.failures++
		p.lastErr = err.Error()
		p.retryAt = p.now + uint64(p.backoff())
		p.state = StateBackoff
		return ActionNone, nil
	case d.Won:
		p.state, p.holder = StateLive, d.Holder
		return ActionGoLive, nil
	default:
		p.state, p.holder = StateHalted, d.Holder
		return ActionHalt, nil
	}
}

// backoff is the jittered wait after p.failures consecutive errors.
func (p *Policy) backoff() int {
	nominal := p.cfg.RetryBase
	for i := 1; i < p.failures; i++ {
		if nominal > p.cfg.RetryMax/2 { // doubling would pass the cap (or overflow)
			nominal = p.cfg.RetryMax
			break
		}
		nominal *= 2
	}
	// Equal jitter: never below half the nominal wait, so the retries of
	// many sides spread out without ever collapsing to a hot loop.
	half := nominal / 2
	return nominal - half + p.cfg.Rand.IntN(half+1)
}

// PolicyStatus is a snapshot of a Policy for display and tests.
type PolicyStatus struct {
	State     PolicyState
	Now       uint64
	Failures  int    // consecutive claim errors so far
	RetryAt   uint64 // meaningful in StateBackoff
	LastError string // the most recent claim error, kept after recovery
	Holder    Record // in StateLive / StateHalted
}

// Status returns the current state.
func (p *Policy) Status() PolicyStatus {
	return PolicyStatus{State: p.state, Now: p.now, Failures: p.failures, RetryAt: p.retryAt, LastError: p.lastErr, Holder: p.holder}
}

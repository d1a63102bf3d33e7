package splitbrain

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
)

// TestPolicyTranscripts runs testdata/policy/*: a reviewer reads those files
// to see what the go-live policy does. Regenerate with -rewrite.
//
//	new base=B max=M seed=S          a fresh Policy
//	peer-lost                        the peer went silent
//	tick [N]                         N ticks (default 1)
//	claim-result won|lost [holder=H] [err=MSG [permanent]]
//	status
//
// Each command prints the actions it produced, then the state.
func TestPolicyTranscripts(t *testing.T) {
	datadriven.Walk(t, "testdata/policy", func(t *testing.T, path string) {
		var p *Policy
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			if p == nil && d.Cmd != "new" {
				d.Fatalf(t, "first command must be new")
			}
			var out strings.Builder
			switch d.Cmd {
			case "new":
				var base, maxWait int
				var seed uint64
				d.ScanArgs(t, "base", &base)
				d.ScanArgs(t, "max", &maxWait)
				d.ScanArgs(t, "seed", &seed)
				var err error
				p, err = NewPolicy(PolicyConfig{RetryBase: base, RetryMax: maxWait, Rand: rand.New(rand.NewPCG(seed, seed))})
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
			case "peer-lost":
				writeAction(&out, p.Status().Now, p.PeerLost())
			case "tick":
				n := 1
				if len(d.CmdArgs) > 0 {
					var err error
					if n, err = strconv.Atoi(d.CmdArgs[0].Key); err != nil {
						d.Fatalf(t, "tick %s: %v", d.CmdArgs[0].Key, err)
					}
				}
				for range n {
					writeAction(&out, p.Status().Now+1, p.Tick())
				}
			case "claim-result":
				var dec Decision
				var err error
				dec.Won = d.HasArg("won")
				if d.HasArg("holder") {
					d.ScanArgs(t, "holder", &dec.Holder.Claimant)
				} else if dec.Won {
					dec.Holder.Claimant = "me"
				}
				if d.HasArg("err") {
					var msg string
					d.ScanArgs(t, "err", &msg)
					err = errors.New(msg)
					if d.HasArg("permanent") {
						err = permanent(err)
					}
				}
				act, rerr := p.ClaimResult(dec, err)
				if rerr != nil {
					fmt.Fprintf(&out, "error: %v\n", rerr)
				}
				writeAction(&out, p.Status().Now, act)
			case "status":
			default:
				d.Fatalf(t, "unknown command %q", d.Cmd)
			}
			writeStatus(&out, p.Status())
			return out.String()
		})
	})
}

func writeAction(out *strings.Builder, tick uint64, a Action) {
	if a != ActionNone {
		fmt.Fprintf(out, "tick %d: %s\n", tick, a)
	}
}

func writeStatus(out *strings.Builder, s PolicyStatus) {
	fmt.Fprintf(out, "state=%s now=%d failures=%d", s.State, s.Now, s.Failures)
	if s.State == StateBackoff {
		fmt.Fprintf(out, " retry-at=%d", s.RetryAt)
	}
	if s.LastError != "" {
		fmt.Fprintf(out, " last-error=%q", s.LastError)
	}
	if s.State == StateLive || s.State == StateHalted {
		fmt.Fprintf(out, " holder=%s", s.Holder.Claimant)
	}
	out.WriteString("\n")
}

func TestNewPolicyRejectsBadConfig(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for _, cfg := range []PolicyConfig{
		{RetryBase: 0, RetryMax: 4, Rand: r},
		{RetryBase: 5, RetryMax: 4, Rand: r},
		{RetryBase: 1, RetryMax: 4},
	} {
		if _, err := NewPolicy(cfg); err == nil || !strings.HasPrefix(err.Error(), "splitbrain: ") {
			t.Errorf("NewPolicy(%+v) = %v; want a splitbrain error", cfg, err)
		}
	}
}

// TestPolicyRandomRuns drives many random input sequences and checks the
// invariants the transcripts only show by example: no go-live without a clean
// Won, every backoff within [1, max], and a claim asked for at the tick its
// backoff ends.
func TestPolicyRandomRuns(t *testing.T) {
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 99))
		base := 1 + r.IntN(4)
		maxWait := base + r.IntN(40)
		p, err := NewPolicy(PolicyConfig{RetryBase: base, RetryMax: maxWait, Rand: rand.New(rand.NewPCG(seed, seed))})
		if err != nil {
			t.Fatal(err)
		}
		inFlight := false
		check := func(a Action, cleanWon bool) {
			switch a {
			case ActionClaim:
				if inFlight {
					t.Fatalf("seed %d: second claim while one is in flight", seed)
				}
				inFlight = true
			case ActionGoLive:
				if !cleanWon {
					t.Fatalf("seed %d: go-live without a clean Won", seed)
				}
			}
		}
		check(p.PeerLost(), false)
		terminal := func(s PolicyState) bool { return s == StateLive || s == StateHalted || s == StateFailed }
		for step := 0; step < 200 && !terminal(p.Status().State); step++ {
			if !inFlight {
				before := p.Status()
				if before.State != StateBackoff {
					t.Fatalf("seed %d: nothing in flight in state %s", seed, before.State)
				}
				if wait := before.RetryAt - before.Now; wait < 1 || wait > uint64(maxWait) {
					t.Fatalf("seed %d: backoff %d outside [1,%d]", seed, wait, maxWait)
				}
				for p.Status().Now < before.RetryAt-1 {
					check(p.Tick(), false)
					if inFlight {
						t.Fatalf("seed %d: claim before the backoff ended", seed)
					}
				}
				check(p.Tick(), false)
				if !inFlight {
					t.Fatalf("seed %d: no claim when the backoff ended", seed)
				}
				continue
			}
			inFlight = false
			var d Decision
			var err error
			switch r.IntN(12) {
			case 0:
				d.Won = true
			case 1:
				d.Won, err = true, errors.New("timeout after the write") // must still wait
			case 2:
				d.Won = false
			case 3:
				d.Won, err = true, permanent(errors.New("stale epoch")) // must end, never live
			default:
				err = errors.New("unreachable")
			}
			a, rerr := p.ClaimResult(d, err)
			if rerr != nil {
				t.Fatalf("seed %d: %v", seed, rerr)
			}
			check(a, d.Won && err == nil)
			if (a == ActionFail) != (err != nil && IsPermanent(err)) {
				t.Fatalf("seed %d: %s after error %v", seed, a, err)
			}
		}
	}
}

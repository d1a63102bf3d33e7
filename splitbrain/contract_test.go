package splitbrain

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// RunContractTests checks the Arbiter contract every backend must meet.
// newArbiter returns an arbiter over fresh, empty, reachable storage;
// newUnreachable one whose storage cannot be reached.
func RunContractTests(t *testing.T, newArbiter, newUnreachable func(t *testing.T) Arbiter) {
	ctx := context.Background()

	t.Run("EmptySlotHasNoHolder", func(t *testing.T) {
		a := newArbiter(t)
		if rec, ok, err := a.Holder(ctx, "vm1", 1); err != nil || ok {
			t.Fatalf("Holder on empty storage = %+v, %v, %v; want no holder, no error", rec, ok, err)
		}
	})

	t.Run("FirstClaimWins", func(t *testing.T) {
		a := newArbiter(t)
		c := Claim{VMID: "vm1", Generation: 1, Claimant: "backup@h2:7000", Reason: "primary silent"}
		d := mustClaim(t, a, c)
		if !d.Won {
			t.Fatalf("first claim lost: %+v", d)
		}
		checkHolder(t, d.Holder, c)
		rec, ok, err := a.Holder(ctx, "vm1", 1)
		if err != nil || !ok {
			t.Fatalf("Holder after win = %v, %v", ok, err)
		}
		checkHolder(t, rec, c)
		if !rec.ClaimedAt.Equal(d.Holder.ClaimedAt) {
			t.Errorf("Holder ClaimedAt %v, Claim said %v", rec.ClaimedAt, d.Holder.ClaimedAt)
		}
	})

	t.Run("SecondClaimantLosesAndLearnsWinner", func(t *testing.T) {
		a := newArbiter(t)
		first := Claim{VMID: "vm1", Generation: 1, Claimant: "backup@h2:7000", Reason: "primary silent"}
		won := mustClaim(t, a, first)
		d := mustClaim(t, a, Claim{VMID: "vm1", Generation: 1, Claimant: "primary@h1:7000", Reason: "backup silent"})
		if d.Won {
			t.Fatalf("second claimant won: %+v", d)
		}
		checkHolder(t, d.Holder, first)
		if !d.Holder.ClaimedAt.Equal(won.Holder.ClaimedAt) {
			t.Errorf("loser sees ClaimedAt %v, winner stored %v", d.Holder.ClaimedAt, won.Holder.ClaimedAt)
		}
	})

	t.Run("SameClaimantIsIdempotent", func(t *testing.T) {
		a := newArbiter(t)
		first := Claim{VMID: "vm1", Generation: 1, Claimant: "backup@h2:7000", Reason: "first try"}
		mustClaim(t, a, first)
		// The retry of a claim whose response was lost must not lose to itself.
		retry := first
		retry.Reason = "retry after timeout"
		d := mustClaim(t, a, retry)
		if !d.Won {
			t.Fatalf("re-claim by the holder lost: %+v", d)
		}
		checkHolder(t, d.Holder, first) // the stored record is the first one
		if d := mustClaim(t, a, Claim{VMID: "vm1", Generation: 1, Claimant: "primary@h1:7000"}); d.Won {
			t.Fatalf("other claimant won after idempotent re-claim: %+v", d)
		}
	})

	t.Run("GenerationsAndVMsAreIndependent", func(t *testing.T) {
		a := newArbiter(t)
		mustClaim(t, a, Claim{VMID: "vm1", Generation: 1, Claimant: "backup@h2:7000"})
		if d := mustClaim(t, a, Claim{VMID: "vm1", Generation: 2, Claimant: "primary@h1:7000"}); !d.Won {
			t.Fatalf("first claim of generation 2 lost: %+v", d)
		}
		if d := mustClaim(t, a, Claim{VMID: "vm1", Generation: 2, Claimant: "backup@h2:7000"}); d.Won || d.Holder.Claimant != "primary@h1:7000" {
			t.Fatalf("generation 2 second claim = %+v; want lost to primary", d)
		}
		if d := mustClaim(t, a, Claim{VMID: "vm2", Generation: 1, Claimant: "primary@h1:7000"}); !d.Won {
			t.Fatalf("first claim of vm2 lost: %+v", d)
		}
	})

	t.Run("ConcurrentClaimantsHaveOneWinner", func(t *testing.T) {
		a := newArbiter(t)
		const claimants, rounds = 32, 20
		for round := 1; round <= rounds; round++ {
			gen := uint64(round)
			decisions := make([]Decision, claimants)
			errs := make([]error, claimants)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range claimants {
				wg.Go(func() {
					<-start // line everyone up so the claims really race
					decisions[i], errs[i] = a.Claim(ctx, Claim{VMID: "race", Generation: gen, Claimant: fmt.Sprintf("c%02d", i)})
				})
			}
			close(start)
			wg.Wait()
			winners := []string{}
			for i, d := range decisions {
				if errs[i] != nil {
					if d.Won {
						t.Errorf("round %d claimant %d: Won together with error %v", round, i, errs[i])
					}
					t.Errorf("round %d claimant %d: %v", round, i, errs[i])
					continue
				}
				if d.Won {
					winners = append(winners, fmt.Sprintf("c%02d", i))
				}
			}
			if len(winners) != 1 {
				t.Fatalf("round %d: %d winners %v; want exactly 1", round, len(winners), winners)
			}
			for i, d := range decisions {
				if errs[i] == nil && d.Holder.Claimant != winners[0] {
					t.Errorf("round %d claimant %d sees holder %q; winner is %q", round, i, d.Holder.Claimant, winners[0])
				}
			}
			rec, ok, err := a.Holder(ctx, "race", gen)
			if err != nil || !ok || rec.Claimant != winners[0] {
				t.Fatalf("round %d: Holder = %+v, %v, %v; want %q", round, rec, ok, err, winners[0])
			}
		}
	})

	t.Run("BadInputRejected", func(t *testing.T) {
		a := newArbiter(t)
		badIDs := []string{"", ".", "..", "../etc", "a/b", "/abs", `a\b`, "a\x00b", "a b", ".hidden", "vm\n", strings.Repeat("v", maxVMIDLen+1)}
		for _, id := range badIDs {
			d, err := a.Claim(ctx, Claim{VMID: id, Generation: 1, Claimant: "x"})
			if !errors.Is(err, ErrInvalidClaim) || d.Won {
				t.Errorf("Claim(VMID %q) = %+v, %v; want ErrInvalidClaim, not won", id, d, err)
			}
			if _, ok, err := a.Holder(ctx, id, 1); !errors.Is(err, ErrInvalidClaim) || ok {
				t.Errorf("Holder(%q) = %v, %v; want ErrInvalidClaim", id, ok, err)
			}
		}
		for _, c := range []Claim{
			{VMID: "vm1", Generation: 0, Claimant: "x"},
			{VMID: "vm1", Generation: 1, Claimant: ""},
			{VMID: "vm1", Generation: 1, Claimant: strings.Repeat("x", maxClaimantLen+1)},
			{VMID: "vm1", Generation: 1, Claimant: "x", Reason: strings.Repeat("r", maxReasonLen+1)},
		} {
			if d, err := a.Claim(ctx, c); !errors.Is(err, ErrInvalidClaim) || d.Won {
				t.Errorf("Claim(%.60q gen %d claimant %.20q) = %+v, %v; want ErrInvalidClaim", c.VMID, c.Generation, c.Claimant, d, err)
			}
		}
		// A long but legal id works.
		if d := mustClaim(t, a, Claim{VMID: strings.Repeat("v", maxVMIDLen), Generation: 1, Claimant: "x"}); !d.Won {
			t.Errorf("claim with a %d-byte id lost: %+v", maxVMIDLen, d)
		}
	})

	t.Run("CancelledContextIsAnError", func(t *testing.T) {
		a := newArbiter(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if d, err := a.Claim(cctx, Claim{VMID: "vm1", Generation: 1, Claimant: "x"}); err == nil || d.Won {
			t.Fatalf("Claim with cancelled context = %+v, %v; want an error, not won", d, err)
		}
	})

	t.Run("UnreachableStorageIsAnErrorNeverAWin", func(t *testing.T) {
		a := newUnreachable(t)
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		d, err := a.Claim(cctx, Claim{VMID: "vm1", Generation: 1, Claimant: "backup@h2:7000"})
		if err == nil || d.Won {
			t.Fatalf("Claim on unreachable storage = %+v, %v; want an error, not won", d, err)
		}
		if !strings.HasPrefix(err.Error(), "splitbrain: ") {
			t.Errorf("error %q lacks the package prefix", err)
		}
		if _, ok, err := a.Holder(cctx, "vm1", 1); err == nil || ok {
			t.Fatalf("Holder on unreachable storage = %v, %v; want an error", ok, err)
		}
	})
}

func mustClaim(t *testing.T, a Arbiter, c Claim) Decision {
	t.Helper()
	d, err := a.Claim(context.Background(), c)
	if err != nil {
		t.Fatalf("Claim(%s gen %d by %s): %v", c.VMID, c.Generation, c.Claimant, err)
	}
	return d
}

func checkHolder(t *testing.T, got Record, want Claim) {
	t.Helper()
	if got.VMID != want.VMID || got.Generation != want.Generation || got.Claimant != want.Claimant || got.Reason != want.Reason {
		t.Errorf("holder = %+v; want vm %s gen %d claimant %s reason %q", got, want.VMID, want.Generation, want.Claimant, want.Reason)
	}
	if got.ClaimedAt.IsZero() {
		t.Errorf("holder %+v has no ClaimedAt", got)
	}
}

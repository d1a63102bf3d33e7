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
// newStorage makes fresh, empty, reachable storage with no cluster marker
// and returns a function that opens an arbiter over it: each call is another
// process's view of the same storage. newUnreachable returns an arbiter
// whose storage cannot be reached.
func RunContractTests(t *testing.T, newStorage func(t *testing.T) (open func() Arbiter), newUnreachable func(t *testing.T) Arbiter) {
	ctx := context.Background()
	// newArbiter opens initialized storage whose vm1 is at epoch 1.
	newArbiter := func(t *testing.T) Arbiter {
		a := newStorage(t)()
		if _, err := a.Init(ctx); err != nil {
			t.Fatalf("Init: %v", err)
		}
		takeEpoch(t, a, "vm1", 0)
		return a
	}

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

	t.Run("EpochsAndVMsAreIndependent", func(t *testing.T) {
		a := newArbiter(t)
		mustClaim(t, a, Claim{VMID: "vm1", Generation: 1, Claimant: "backup@h2:7000"})
		takeEpoch(t, a, "vm1", 1)
		if d := mustClaim(t, a, Claim{VMID: "vm1", Generation: 2, Claimant: "primary@h1:7000"}); !d.Won {
			t.Fatalf("first claim of generation 2 lost: %+v", d)
		}
		if d := mustClaim(t, a, Claim{VMID: "vm1", Generation: 2, Claimant: "backup@h2:7000"}); d.Won || d.Holder.Claimant != "primary@h1:7000" {
			t.Fatalf("generation 2 second claim = %+v; want lost to primary", d)
		}
		// The slot of epoch 1 keeps its real holder after the advance.
		if rec, ok, err := a.Holder(ctx, "vm1", 1); err != nil || !ok || rec.Claimant != "backup@h2:7000" || rec.Fenced {
			t.Fatalf("Holder(vm1, 1) after the advance = %+v, %v, %v; want backup@h2:7000", rec, ok, err)
		}
		takeEpoch(t, a, "vm2", 0)
		if d := mustClaim(t, a, Claim{VMID: "vm2", Generation: 1, Claimant: "primary@h1:7000"}); !d.Won {
			t.Fatalf("first claim of vm2 lost: %+v", d)
		}
	})

	t.Run("ConcurrentClaimantsHaveOneWinner", func(t *testing.T) {
		a := newArbiter(t)
		const claimants, rounds = 32, 20
		for round := 1; round <= rounds; round++ {
			gen := takeEpoch(t, a, "race", uint64(round-1)).Epoch
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
			if !IsPermanent(err) {
				t.Errorf("Claim(VMID %q): %v is not permanent", id, err)
			}
			if rec, err := a.Epoch(ctx, id); !errors.Is(err, ErrInvalidClaim) || !IsPermanent(err) {
				t.Errorf("Epoch(%q) = %+v, %v; want permanent ErrInvalidClaim", id, rec, err)
			}
			if rec, err := a.AdvanceEpoch(ctx, id, 0, "x"); !errors.Is(err, ErrInvalidClaim) || !IsPermanent(err) {
				t.Errorf("AdvanceEpoch(%q) = %+v, %v; want permanent ErrInvalidClaim", id, rec, err)
			}
		}
		for _, taker := range []string{"", strings.Repeat("x", maxClaimantLen+1)} {
			if rec, err := a.AdvanceEpoch(ctx, "vm1", 1, taker); !errors.Is(err, ErrInvalidClaim) || !IsPermanent(err) {
				t.Errorf("AdvanceEpoch(taker %.20q) = %+v, %v; want permanent ErrInvalidClaim", taker, rec, err)
			}
		}
		for _, c := range []Claim{
			{VMID: "vm1", Generation: 0, Claimant: "x"},
			{VMID: "vm1", Generation: 1, Claimant: ""},
			{VMID: "vm1", Generation: 1, Claimant: strings.Repeat("x", maxClaimantLen+1)},
			{VMID: "vm1", Generation: 1, Claimant: "x", Reason: strings.Repeat("r", maxReasonLen+1)},
		} {
			if d, err := a.Claim(ctx, c); !errors.Is(err, ErrInvalidClaim) || !IsPermanent(err) || d.Won {
				t.Errorf("Claim(%.60q gen %d claimant %.20q) = %+v, %v; want permanent ErrInvalidClaim", c.VMID, c.Generation, c.Claimant, d, err)
			}
		}
		// A long but legal id works.
		takeEpoch(t, a, strings.Repeat("v", maxVMIDLen), 0)
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
		if IsPermanent(err) {
			t.Errorf("Claim on unreachable storage: %v is permanent; it may come back", err)
		}
		if _, ok, err := a.Holder(cctx, "vm1", 1); err == nil || ok {
			t.Fatalf("Holder on unreachable storage = %v, %v; want an error", ok, err)
		}
		if _, err := a.Check(cctx); err == nil {
			t.Fatal("Check on unreachable storage succeeded")
		}
		if rec, err := a.AdvanceEpoch(cctx, "vm1", 0, "x"); err == nil {
			t.Fatalf("AdvanceEpoch on unreachable storage = %+v", rec)
		}
	})

	t.Run("StorageWithoutMarkerIsRefused", func(t *testing.T) {
		// An unmounted share, or a bucket nobody ran init on, looks empty:
		// nothing may be decided on it.
		a := newStorage(t)()
		if id, err := a.Check(ctx); !errors.Is(err, ErrNotInitialized) {
			t.Fatalf("Check without marker = %q, %v; want ErrNotInitialized", id, err)
		}
		if rec, err := a.AdvanceEpoch(ctx, "vm1", 0, "x"); !errors.Is(err, ErrNotInitialized) {
			t.Fatalf("AdvanceEpoch without marker = %+v, %v; want ErrNotInitialized", rec, err)
		}
		if rec, err := a.Epoch(ctx, "vm1"); !errors.Is(err, ErrNotInitialized) {
			t.Fatalf("Epoch without marker = %+v, %v; want ErrNotInitialized", rec, err)
		}
		if d, err := a.Claim(ctx, Claim{VMID: "vm1", Generation: 1, Claimant: "x"}); !errors.Is(err, ErrNotInitialized) || d.Won {
			t.Fatalf("Claim without marker = %+v, %v; want ErrNotInitialized", d, err)
		}
	})

	t.Run("InitKeepsTheFirstClusterID", func(t *testing.T) {
		open := newStorage(t)
		id, err := open().Init(ctx)
		if err != nil || id == "" {
			t.Fatalf("Init = %q, %v", id, err)
		}
		again, err := open().Init(ctx)
		if err != nil || again != id {
			t.Fatalf("second Init = %q, %v; want the first id %q", again, err, id)
		}
		checked, err := open().Check(ctx)
		if err != nil || checked != id {
			t.Fatalf("Check = %q, %v; want %q", checked, err, id)
		}
	})

	t.Run("EpochsAdvanceOneAtATime", func(t *testing.T) {
		open := newStorage(t)
		a := open()
		if _, err := a.Init(ctx); err != nil {
			t.Fatal(err)
		}
		if rec, err := a.Epoch(ctx, "vm1"); err != nil || rec.Epoch != 0 {
			t.Fatalf("Epoch of a new VM = %+v, %v; want 0", rec, err)
		}
		for want := uint64(1); want <= 3; want++ {
			rec := takeEpoch(t, a, "vm1", want-1)
			if rec.VMID != "vm1" || rec.TakenBy != "taker" || rec.TakenAt.IsZero() {
				t.Errorf("AdvanceEpoch = %+v", rec)
			}
			// Another process sees the same.
			got, err := open().Epoch(ctx, "vm1")
			if err != nil || got.Epoch != want || got.TakenBy != "taker" || !got.TakenAt.Equal(rec.TakenAt) {
				t.Fatalf("Epoch after advance to %d = %+v, %v; want %+v", want, got, err, rec)
			}
		}
		for _, from := range []uint64{0, 1, 2, 4, 9} {
			if rec, err := a.AdvanceEpoch(ctx, "vm1", from, "late"); !errors.Is(err, ErrEpochConflict) {
				t.Errorf("AdvanceEpoch from %d at epoch 3 = %+v, %v; want ErrEpochConflict", from, rec, err)
			}
		}
		if got, err := a.Epoch(ctx, "vm1"); err != nil || got.Epoch != 3 {
			t.Fatalf("Epoch after refused advances = %+v, %v; want 3", got, err)
		}
	})

	t.Run("ConcurrentAdvancesHaveOneWinner", func(t *testing.T) {
		open := newStorage(t)
		if _, err := open().Init(ctx); err != nil {
			t.Fatal(err)
		}
		const takers, rounds = 16, 10
		arbiters := make([]Arbiter, takers)
		for i := range arbiters {
			arbiters[i] = open()
		}
		for from := range uint64(rounds) {
			recs := make([]EpochRecord, takers)
			errs := make([]error, takers)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range takers {
				wg.Go(func() {
					<-start
					recs[i], errs[i] = arbiters[i].AdvanceEpoch(ctx, "vm1", from, fmt.Sprintf("t%02d", i))
				})
			}
			close(start)
			wg.Wait()
			winner := ""
			for i, err := range errs {
				switch {
				case err == nil && winner != "":
					t.Fatalf("epoch %d: taken by both %s and t%02d", from+1, winner, i)
				case err == nil:
					winner = recs[i].TakenBy
				case !errors.Is(err, ErrEpochConflict):
					t.Errorf("epoch %d: t%02d: %v; want ErrEpochConflict", from+1, i, err)
				}
			}
			rec, err := open().Epoch(ctx, "vm1")
			if err != nil || rec.Epoch != from+1 || rec.TakenBy != winner || winner == "" {
				t.Fatalf("after round %d: Epoch = %+v, %v; want epoch %d taken by the one winner %q", from, rec, err, from+1, winner)
			}
		}
	})

	t.Run("StaleEpochCannotClaim", func(t *testing.T) {
		// The pairing of epoch 1 is replaced by one of epoch 2 while the old
		// primary still runs: neither its claim nor any other of epoch 1
		// may win again, and a generation nobody took cannot be claimed.
		a := newArbiter(t)
		takeEpoch(t, a, "vm1", 1)
		for _, c := range []Claim{
			{VMID: "vm1", Generation: 1, Claimant: "primary@h1:7000"},
			{VMID: "vm1", Generation: 1, Claimant: "backup@h2:7000"},
		} {
			d, err := a.Claim(ctx, c)
			if !errors.Is(err, ErrStaleEpoch) || !IsPermanent(err) || d.Won {
				t.Fatalf("Claim of stale epoch 1 by %s = %+v, %v; want permanent ErrStaleEpoch", c.Claimant, d, err)
			}
		}
		if rec, ok, err := a.Holder(ctx, "vm1", 1); err != nil || !ok || !rec.Fenced {
			t.Fatalf("Holder of the left epoch = %+v, %v, %v; want a fenced slot", rec, ok, err)
		}
		d, err := a.Claim(ctx, Claim{VMID: "vm1", Generation: 3, Claimant: "x"})
		if !errors.Is(err, ErrInvalidClaim) || !IsPermanent(err) || d.Won {
			t.Fatalf("Claim of untaken epoch 3 = %+v, %v; want permanent ErrInvalidClaim", d, err)
		}
		if d := mustClaim(t, a, Claim{VMID: "vm1", Generation: 2, Claimant: "backup@h3:7000"}); !d.Won {
			t.Fatalf("claim of the current epoch lost: %+v", d)
		}
	})

	t.Run("AdvanceRacingClaimsFencesTheOldEpoch", func(t *testing.T) {
		// A claim racing an advance from its epoch either wins before the
		// advance (and keeps the slot) or is refused as stale; after the
		// advance, no claim of the old epoch can win.
		open := newStorage(t)
		if _, err := open().Init(ctx); err != nil {
			t.Fatal(err)
		}
		claimer, advancer := open(), open()
		takeEpoch(t, advancer, "vm1", 0)
		for from := uint64(1); from <= 10; from++ {
			var d Decision
			var claimErr, advErr error
			start := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				<-start
				d, claimErr = claimer.Claim(ctx, Claim{VMID: "vm1", Generation: from, Claimant: "old"})
			})
			wg.Go(func() { <-start; _, advErr = advancer.AdvanceEpoch(ctx, "vm1", from, "new") })
			close(start)
			wg.Wait()
			if advErr != nil {
				t.Fatalf("round %d: advance: %v", from, advErr)
			}
			if claimErr != nil && (!errors.Is(claimErr, ErrStaleEpoch) || d.Won) {
				t.Fatalf("round %d: claim = %+v, %v; want a win or ErrStaleEpoch", from, d, claimErr)
			}
			rec, ok, err := open().Holder(ctx, "vm1", from)
			if err != nil || !ok || (d.Won && rec.Claimant != "old") || (!d.Won && !rec.Fenced) {
				t.Fatalf("round %d: claim won=%v, Holder = %+v, %v, %v", from, d.Won, rec, ok, err)
			}
			if d, err := claimer.Claim(ctx, Claim{VMID: "vm1", Generation: from, Claimant: "later"}); !errors.Is(err, ErrStaleEpoch) || d.Won {
				t.Fatalf("round %d: claim after the advance = %+v, %v; want ErrStaleEpoch", from, d, err)
			}
		}
	})
}

// takeEpoch advances vmID from epoch from, failing the test on an error.
func takeEpoch(t *testing.T, a Arbiter, vmID string, from uint64) EpochRecord {
	t.Helper()
	rec, err := a.AdvanceEpoch(context.Background(), vmID, from, "taker")
	if err != nil {
		t.Fatalf("AdvanceEpoch(%s from %d): %v", vmID, from, err)
	}
	if rec.Epoch != from+1 {
		t.Fatalf("AdvanceEpoch(%s from %d) = %+v", vmID, from, rec)
	}
	return rec
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

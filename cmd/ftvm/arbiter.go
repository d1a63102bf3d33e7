package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/ftvm/ftvm/splitbrain"
	"github.com/ftvm/ftvm/vmm/ft"
)

// openArbiter opens --arbiter and checks, before the side listens or dials,
// everything its first failover will need (ft.TakeEpoch, ft.JoinEpoch). It
// returns the pairing's generation: a backup starts a pairing, so it takes
// a new epoch unless --generation names the current one (as ftvm pair's
// members do: pair takes it); a primary joins the current epoch.
func (f *ftFlags) openArbiter(role, claimant string) (splitbrain.Arbiter, uint64, error) {
	arb, err := splitbrain.Open(f.arbiter)
	if err != nil {
		return nil, 0, err
	}
	ctx, cancel := interruptContext()
	defer cancel()
	var gen uint64
	if role == "joiner" {
		// The running primary it joins takes the epoch and gives it.
		if f.generation != 0 {
			return nil, 0, errors.New("--generation: a backup that joins gets the pairing's epoch from the primary")
		}
		err = ft.CheckArbiter(ctx, arb, f.vmID)
	} else if role == "backup" && f.generation == 0 {
		gen, err = ft.TakeEpoch(ctx, arb, f.vmID, claimant)
	} else {
		gen, err = ft.JoinEpoch(ctx, arb, f.vmID, f.generation)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("--arbiter %s: %w", f.arbiter, err)
	}
	return arb, gen, nil
}

// cmdArbiter sets up and shows the go-live arbiter's storage.
func cmdArbiter(args []string) int {
	if len(args) < 1 || (args[0] != "init" && args[0] != "show") {
		fmt.Fprintln(os.Stderr, "usage: ftvm arbiter init --arbiter URL | ftvm arbiter show --arbiter URL [--vm-id ID]")
		return exitUsage
	}
	sub := args[0]
	fs := newFlagSet("arbiter "+sub, "--arbiter URL")
	url := fs.String("arbiter", "", "the arbiter: file:///DIR or s3://BUCKET/PREFIX?endpoint=URL")
	vmID := fs.String("vm-id", "vm", "show: the VM whose epoch and claim to show")
	if err := fs.Parse(args[1:]); err != nil {
		return exitUsage
	}
	if *url == "" || fs.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "ftvm arbiter %s: --arbiter URL is required, and nothing else\n", sub)
		return exitUsage
	}
	arb, err := splitbrain.Open(*url)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm arbiter %s: %v\n", sub, err)
		return exitUsage
	}
	ctx, cancel := interruptContext()
	defer cancel()
	if sub == "init" {
		id, err := initArbiter(ctx, arb)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ftvm arbiter init: %v\n", err)
			return exitFailed
		}
		fmt.Printf("arbiter %s: cluster %s\n", *url, id)
		return 0
	}
	if err := showArbiter(ctx, arb, *url, *vmID); err != nil {
		fmt.Fprintf(os.Stderr, "ftvm arbiter show: %v\n", err)
		return exitFailed
	}
	return 0
}

// initArbiter writes the cluster marker (or finds the one there) and checks
// the storage as a side's start-up will.
func initArbiter(ctx context.Context, arb splitbrain.Arbiter) (string, error) {
	if _, err := arb.Init(ctx); err != nil {
		return "", err
	}
	return arb.Check(ctx)
}

func showArbiter(ctx context.Context, arb splitbrain.Arbiter, url, vmID string) error {
	id, err := arb.Check(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("arbiter %s: cluster %s\n", url, id)
	ep, err := arb.Epoch(ctx, vmID)
	if err != nil {
		return err
	}
	if ep.Epoch == 0 {
		fmt.Printf("%s: no epoch taken yet\n", vmID)
		return nil
	}
	fmt.Printf("%s: epoch %d, taken by %s at %s\n", vmID, ep.Epoch, ep.TakenBy, ep.TakenAt.Format(time.RFC3339))
	held, ok, err := arb.Holder(ctx, vmID, ep.Epoch)
	switch {
	case err != nil:
		return err
	case !ok:
		fmt.Printf("%s: epoch %d unclaimed (no failover yet)\n", vmID, ep.Epoch)
	default:
		fmt.Printf("%s: epoch %d claimed by %s at %s (%s)\n", vmID, ep.Epoch, held.Claimant, held.ClaimedAt.Format(time.RFC3339), held.Reason)
	}
	return nil
}

// pairArbiter prepares ftvm pair's arbiter: with no URL, a new directory
// of its own, initialized here (remove deletes it); either way it takes
// the pairing's epoch, which both members are given as --generation.
func pairArbiter(url, vmID, taker string) (arbURL string, gen uint64, remove func(), err error) {
	remove = func() {}
	ctx, cancel := interruptContext()
	defer cancel()
	own := url == ""
	if own {
		dir, err := os.MkdirTemp("", "ftvm-pair-arbiter-")
		if err != nil {
			return "", 0, nil, err
		}
		remove = func() { os.RemoveAll(dir) }
		url = "file://" + dir
	}
	fail := func(err error) (string, uint64, func(), error) {
		remove()
		return "", 0, nil, fmt.Errorf("--arbiter %s: %w", url, err)
	}
	arb, err := splitbrain.Open(url)
	if err != nil {
		return fail(err)
	}
	if own {
		if _, err := arb.Init(ctx); err != nil {
			return fail(err)
		}
	}
	if gen, err = ft.TakeEpoch(ctx, arb, vmID, taker); err != nil {
		return fail(err)
	}
	return url, gen, remove, nil
}

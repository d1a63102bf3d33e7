// Package splitbrain decides which half of a partitioned primary/backup pair
// may go live. As in vSphere FT, the side that wants to go live performs an
// atomic test-and-set on shared storage: the first claim for a (VM,
// generation) wins, every later one loses, and a side that cannot reach the
// storage waits instead of guessing. The Arbiter does the test-and-set; the
// Policy (policy.go) is the pure core that says when to try and what to do
// with the answer.
//
// Generations are epochs (epoch.go): each pairing of a VM takes the next
// epoch on the arbiter by compare-and-swap, and only the current epoch can
// be claimed, so a side of an older pairing can never go live again. The
// storage carries a cluster marker (cluster.go) written once by Init, so
// that an unmounted share or another cluster's bucket is refused instead of
// being taken for empty storage.
package splitbrain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Claim asks the arbiter for the right to go live.
type Claim struct {
	// VMID names the protected VM. It becomes a path or key component, so it
	// must pass ValidateVMID.
	VMID string
	// Generation numbers one primary/backup pairing of VMID; it is > 0. A new
	// pairing (after a failover and a fresh backup) uses a new generation, so
	// its claim is independent of the old pairing's.
	Generation uint64
	// Claimant identifies the contender, e.g. "backup@10.0.0.2:7000". It must
	// be unique among the contenders of one generation: a claim already held
	// by the same Claimant is reported as Won, which is what makes a retry
	// after a lost response safe.
	Claimant string
	// Reason is free text kept for operators ("primary silent for 3s").
	Reason string
}

// Record is what a winning claim stores and what Holder reads back.
type Record struct {
	VMID       string    `json:"vm_id"`
	Generation uint64    `json:"generation"`
	Claimant   string    `json:"claimant"`
	Reason     string    `json:"reason,omitempty"`
	ClaimedAt  time.Time `json:"claimed_at"` // the winner's clock, for display only
	// Fenced marks a slot that AdvanceEpoch closed before anybody claimed
	// it: nobody won it, and a claim of it fails with ErrStaleEpoch.
	// Claimant then names the epoch's taker.
	Fenced bool `json:"fenced,omitempty"`
}

// Decision is the arbiter's answer to a Claim.
type Decision struct {
	// Won is true when the caller holds the claim and may go live.
	Won bool
	// Holder is the stored claim: the caller's own record when Won, the
	// winner's when lost. Holder.ClaimedAt says since when it is held.
	Holder Record
}

// Arbiter is the atomic test-and-set on shared storage.
//
// An error from Claim means "undecided": the caller must neither go live nor
// halt, and should retry later (see Policy), unless it is a *PermanentError:
// an answer every retry would repeat (an invalid id, a stale epoch, another
// cluster's storage, no permission, no bucket), which the caller must treat
// as fatal. Implementations never return a Decision with Won set together
// with a non-nil error.
//
// Every operation but Init refuses storage without the cluster marker, and
// storage whose marker names another cluster than the one the first
// operation saw (ErrNotInitialized, ErrWrongCluster).
type Arbiter interface {
	// Claim tries to take the (VMID, Generation) slot for c.Claimant.
	// Generation must be the VM's current epoch: an older one is refused
	// with ErrStaleEpoch, a newer one with ErrInvalidClaim, both permanent.
	Claim(ctx context.Context, c Claim) (Decision, error)
	// Holder reads who holds the slot, for status display. ok is false when
	// nobody has claimed it yet. A slot closed by an epoch advance has a
	// holder with Fenced set.
	Holder(ctx context.Context, vmID string, generation uint64) (rec Record, ok bool, err error)

	// Init writes the cluster marker with a new random cluster id, or
	// returns the id already there: it never replaces a marker.
	Init(ctx context.Context) (clusterID string, err error)
	// Check verifies that the storage can do what a failover will need: the
	// marker is there (its id is remembered for every later operation), the
	// storage takes writes, and (S3) the server honours conditional writes.
	Check(ctx context.Context) (clusterID string, err error)

	// Epoch reads the VM's current epoch; Epoch is 0 when none was taken.
	Epoch(ctx context.Context, vmID string) (EpochRecord, error)
	// AdvanceEpoch takes epoch from+1 for taker if the current epoch is
	// from, and fails with ErrEpochConflict otherwise: of concurrent
	// advances from the same epoch exactly one succeeds. Before moving on
	// it closes the claim slot of epoch from (unless someone holds it), so
	// that a side of the old pairing can never win it afterwards.
	AdvanceEpoch(ctx context.Context, vmID string, from uint64, taker string) (EpochRecord, error)
}

// Errors callers may test for with errors.Is.
var (
	ErrInvalidClaim = errors.New("splitbrain: invalid claim")
	ErrCorruptClaim = errors.New("splitbrain: stored claim is unreadable")
	// ErrStaleEpoch: the claim's generation is older than the VM's current
	// epoch; a newer pairing exists and this side must never go live.
	ErrStaleEpoch = errors.New("splitbrain: stale epoch")
	// ErrEpochConflict: AdvanceEpoch's from is not the current epoch
	// (someone else advanced first).
	ErrEpochConflict = errors.New("splitbrain: epoch conflict")
	// ErrNotInitialized: the storage has no cluster marker: `ftvm arbiter
	// init` was never run on it, or (file) the share is not mounted.
	ErrNotInitialized = errors.New("splitbrain: arbiter storage has no cluster marker")
	// ErrWrongCluster: the marker names another cluster than the one this
	// arbiter saw first (another share was mounted, another bucket or
	// prefix is configured).
	ErrWrongCluster = errors.New("splitbrain: arbiter storage belongs to another cluster")
	// ErrNoConditionalWrites: the S3 server ignores If-None-Match or
	// If-Match, so it cannot arbitrate.
	ErrNoConditionalWrites = errors.New("splitbrain: the S3 server does not honour conditional writes")
)

// PermanentError is an arbiter error that every retry would repeat: the
// request can never be accepted as it is. Err says why; errors.Is sees
// through it to the sentinels above.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// IsPermanent reports whether err, or an error it wraps, is a
// *PermanentError.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// permanent marks err permanent; nil stays nil.
func permanent(err error) error {
	if err == nil || IsPermanent(err) {
		return err
	}
	return &PermanentError{Err: err}
}

const (
	maxVMIDLen     = 128
	maxClaimantLen = 256
	maxReasonLen   = 1024
	// recordFormat is stored in every claim so that a future layout can be
	// told apart from this one instead of being misread.
	recordFormat = "ftvm-claim/1"
)

// ValidateVMID accepts ids made of ASCII letters, digits, '-', '_' and '.',
// 1..128 bytes, not starting with '.'. The id is used as a directory name and
// an S3 key component, so anything that could escape its slot ("..", "/",
// "\\", NUL) or collide with the file backend's hidden temp files is refused.
func ValidateVMID(id string) error {
	return permanent(validateVMID(id))
}

func validateVMID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty VM id", ErrInvalidClaim)
	}
	if len(id) > maxVMIDLen {
		return fmt.Errorf("%w: VM id is %d bytes, the limit is %d", ErrInvalidClaim, len(id), maxVMIDLen)
	}
	if id[0] == '.' {
		return fmt.Errorf("%w: VM id %q starts with '.'", ErrInvalidClaim, id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return fmt.Errorf("%w: VM id %q has byte %q at %d; allowed are letters, digits, '-', '_', '.'", ErrInvalidClaim, id, c, i)
		}
	}
	return nil
}

func validateSlot(vmID string, generation uint64) error {
	if err := ValidateVMID(vmID); err != nil {
		return err
	}
	if generation == 0 {
		// Zero is what an unset field looks like; refusing it catches callers
		// that forgot to carry the pairing's generation.
		return permanent(fmt.Errorf("%w: generation must be > 0", ErrInvalidClaim))
	}
	return nil
}

// validateClaimant checks a claimant or epoch taker name.
func validateClaimant(name string) error {
	if name == "" {
		return permanent(fmt.Errorf("%w: empty claimant", ErrInvalidClaim))
	}
	if len(name) > maxClaimantLen {
		return permanent(fmt.Errorf("%w: claimant is %d bytes, the limit is %d", ErrInvalidClaim, len(name), maxClaimantLen))
	}
	return nil
}

func (c Claim) validate() error {
	if err := validateSlot(c.VMID, c.Generation); err != nil {
		return err
	}
	if err := validateClaimant(c.Claimant); err != nil {
		return err
	}
	if len(c.Reason) > maxReasonLen {
		return permanent(fmt.Errorf("%w: reason is %d bytes, the limit is %d", ErrInvalidClaim, len(c.Reason), maxReasonLen))
	}
	return nil
}

// checkEpoch refuses a claim whose generation is not the current epoch.
func checkEpoch(c Claim, current uint64) error {
	switch {
	case c.Generation < current:
		return permanent(fmt.Errorf("%w: %s generation %d, but epoch %d was taken since: a newer pairing exists; this side must not go live",
			ErrStaleEpoch, c.VMID, c.Generation, current))
	case c.Generation > current:
		return permanent(fmt.Errorf("%w: %s generation %d was never taken as an epoch (the current epoch is %d)",
			ErrInvalidClaim, c.VMID, c.Generation, current))
	}
	return nil
}

// storedRecord is the on-storage form: Record plus a format tag.
type storedRecord struct {
	Format string `json:"format"`
	Record
}

func encodeRecord(r Record) ([]byte, error) {
	b, err := json.Marshal(storedRecord{Format: recordFormat, Record: r})
	if err != nil {
		return nil, fmt.Errorf("splitbrain: encode claim: %w", err)
	}
	return append(b, '\n'), nil
}

// decodeRecord parses a stored claim and checks that it belongs to the slot
// it was read from. Our writers make a claim visible only once it is complete,
// so anything that does not parse was not written by a correct claimant and is
// reported as ErrCorruptClaim rather than guessed at.
func decodeRecord(b []byte, vmID string, generation uint64) (Record, error) {
	var s storedRecord
	if err := json.Unmarshal(b, &s); err != nil {
		return Record{}, fmt.Errorf("%w: %s gen %d: %w", ErrCorruptClaim, vmID, generation, err)
	}
	if s.Format != recordFormat {
		return Record{}, fmt.Errorf("%w: %s gen %d: format %q, want %q", ErrCorruptClaim, vmID, generation, s.Format, recordFormat)
	}
	if s.VMID != vmID || s.Generation != generation || s.Claimant == "" {
		return Record{}, fmt.Errorf("%w: %s gen %d: record names vm %q gen %d claimant %q",
			ErrCorruptClaim, vmID, generation, s.VMID, s.Generation, s.Claimant)
	}
	return s.Record, nil
}

// decideOnConflict turns "the slot was already taken" plus the stored record
// into a Decision. The claimant comparison is what makes Claim idempotent: a
// retry whose first attempt did succeed finds its own record and wins. A
// fenced slot was closed by an epoch advance that raced this claim.
func decideOnConflict(c Claim, held Record) (Decision, error) {
	if held.Fenced {
		return Decision{}, permanent(fmt.Errorf("%w: %s generation %d was closed by %s: a newer pairing exists; this side must not go live",
			ErrStaleEpoch, c.VMID, c.Generation, held.Claimant))
	}
	return Decision{Won: held.Claimant == c.Claimant, Holder: held}, nil
}

package splitbrain

import (
	"encoding/json"
	"fmt"
	"time"
)

// EpochRecord is a VM's current epoch as the arbiter stores it. Each pairing
// of a primary with a backup takes the next epoch (AdvanceEpoch) and uses it
// as its generation; epochs only grow, and only the current one can be
// claimed.
type EpochRecord struct {
	VMID string `json:"vm_id"`
	// Epoch is > previous Epoch of the VM; 0 only in the answer to Epoch
	// for a VM whose first epoch was never taken (nothing is stored then).
	Epoch   uint64    `json:"epoch"`
	TakenBy string    `json:"taken_by"` // who advanced to it, e.g. "backup@h2:4711"
	TakenAt time.Time `json:"taken_at"` // the taker's clock, for display only
}

// epochFormat tags every stored epoch record, as recordFormat tags claims.
const epochFormat = "ftvm-epoch/1"

type storedEpoch struct {
	Format string `json:"format"`
	EpochRecord
}

func encodeEpoch(r EpochRecord) ([]byte, error) {
	b, err := json.Marshal(storedEpoch{Format: epochFormat, EpochRecord: r})
	if err != nil {
		return nil, fmt.Errorf("splitbrain: encode epoch: %w", err)
	}
	return append(b, '\n'), nil
}

// decodeEpoch parses a stored epoch record of vmID. want is the epoch the
// storage location says it holds, or 0 where the location does not say.
func decodeEpoch(b []byte, vmID string, want uint64) (EpochRecord, error) {
	var s storedEpoch
	if err := json.Unmarshal(b, &s); err != nil {
		return EpochRecord{}, fmt.Errorf("%w: %s epoch record: %w", ErrCorruptClaim, vmID, err)
	}
	if s.Format != epochFormat {
		return EpochRecord{}, fmt.Errorf("%w: %s epoch record: format %q, want %q", ErrCorruptClaim, vmID, s.Format, epochFormat)
	}
	if s.VMID != vmID || s.Epoch == 0 || (want != 0 && s.Epoch != want) {
		return EpochRecord{}, fmt.Errorf("%w: %s epoch record names vm %q epoch %d", ErrCorruptClaim, vmID, s.VMID, s.Epoch)
	}
	return s.EpochRecord, nil
}

// validateAdvance checks AdvanceEpoch's arguments.
func validateAdvance(vmID string, from uint64, taker string) error {
	if err := ValidateVMID(vmID); err != nil {
		return err
	}
	if from == ^uint64(0) {
		return permanent(fmt.Errorf("%w: %s epoch %d has no successor", ErrInvalidClaim, vmID, from))
	}
	return validateClaimant(taker)
}

// epochConflict is AdvanceEpoch's error when the VM is not at epoch from.
func epochConflict(vmID string, from, current uint64) error {
	return fmt.Errorf("%w: %s is at epoch %d, not %d: another pairing took it", ErrEpochConflict, vmID, current, from)
}

// fenceRecord is the claim record AdvanceEpoch stores in the slot of the
// epoch it leaves, so that nobody can win that slot afterwards.
func fenceRecord(vmID string, from uint64, taker string, now time.Time) Record {
	return Record{VMID: vmID, Generation: from, Claimant: fmt.Sprintf("epoch %d taken by %s", from+1, taker),
		Reason: "closed by an epoch advance", ClaimedAt: now, Fenced: true}
}

package splitbrain

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// FileArbiter keeps claims as files under a shared directory (NFS, a cluster
// filesystem):
//
//	Root/.ftvm-arbiter               the cluster marker (Init)
//	Root/<vmid>/epoch-<n>            one file per epoch taken; the highest is current
//	Root/<vmid>/gen-<n>.claim        the claim of generation (epoch) n
//
// Every test-and-set is link(2) of a fully written and fsynced temp file onto
// the final name: link is atomic and fails with EEXIST when the name exists,
// so exactly one contender succeeds, and a reader can never see a record that
// is only half written (O_EXCL-then-write could leave an empty file after a
// crash that would block the slot without saying who holds it). An epoch
// advance from n links epoch-<n+1>: that name exists exactly when the current
// epoch is past n, so the link is a compare-and-swap of the current epoch.
type FileArbiter struct {
	root    string
	now     func() time.Time
	cluster clusterPin
}

// NewFileArbiter returns an arbiter over root, which must be an absolute path.
// It does no I/O: root is checked on each operation, and is never created,
// because creating a missing root would hide an unmounted shared filesystem
// and let both sides win on their own local disks.
func NewFileArbiter(root string) (*FileArbiter, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("splitbrain: file arbiter root %q is not an absolute path", root)
	}
	return &FileArbiter{root: filepath.Clean(root), now: time.Now}, nil
}

func (a *FileArbiter) vmDir(vmID string) string { return filepath.Join(a.root, vmID) }

func claimName(generation uint64) string {
	return "gen-" + strconv.FormatUint(generation, 10) + ".claim"
}

const epochPrefix = "epoch-"

func epochName(epoch uint64) string { return epochPrefix + strconv.FormatUint(epoch, 10) }

// Init implements Arbiter.
func (a *FileArbiter) Init(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("splitbrain: init %s: %w", a.root, err)
	}
	if err := a.checkRoot(); err != nil {
		return "", err
	}
	data, _, err := newMarker(a.now())
	if err != nil {
		return "", err
	}
	if _, err := a.linkRecord(a.root, markerName, data); err != nil {
		return "", err
	}
	// Ours or one written before: either way the stored one counts.
	return a.checkCluster()
}

// Check implements Arbiter: the root is a directory, holds the marker, and
// takes a durable write.
func (a *FileArbiter) Check(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("splitbrain: check %s: %w", a.root, err)
	}
	id, err := a.checkCluster()
	if err != nil {
		return "", err
	}
	probe, err := writeTempSynced(a.root, ".ftvm-probe-", nil)
	if err != nil {
		return "", err
	}
	if err := os.Remove(probe); err != nil {
		return "", fileError(fmt.Errorf("splitbrain: remove probe: %w", err))
	}
	return id, nil
}

// checkCluster reads the marker and checks it against the pinned cluster id.
func (a *FileArbiter) checkCluster() (string, error) {
	if err := a.checkRoot(); err != nil {
		return "", err
	}
	path := filepath.Join(a.root, markerName)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		// Not permanent: a share that is not mounted yet may be mounted.
		return "", fmt.Errorf("%w: %s is missing (run `ftvm arbiter init --arbiter file://%s` once, on the shared filesystem; or the share is not mounted here)",
			ErrNotInitialized, path, a.root)
	}
	if err != nil {
		return "", fileError(fmt.Errorf("splitbrain: read cluster marker: %w", err))
	}
	id, err := decodeMarker(b, path)
	if err != nil {
		return "", err
	}
	return a.cluster.check(id, a.root)
}

// Claim implements Arbiter.
func (a *FileArbiter) Claim(ctx context.Context, c Claim) (Decision, error) {
	if err := c.validate(); err != nil {
		return Decision{}, err
	}
	if err := ctx.Err(); err != nil {
		return Decision{}, fmt.Errorf("splitbrain: claim %s gen %d: %w", c.VMID, c.Generation, err)
	}
	if _, err := a.checkCluster(); err != nil {
		return Decision{}, err
	}
	current, err := a.currentEpoch(c.VMID)
	if err != nil {
		return Decision{}, err
	}
	if err := checkEpoch(c, current.Epoch); err != nil {
		return Decision{}, err
	}
	rec := Record{VMID: c.VMID, Generation: c.Generation, Claimant: c.Claimant, Reason: c.Reason, ClaimedAt: a.now().UTC()}
	data, err := encodeRecord(rec)
	if err != nil {
		return Decision{}, err
	}
	created, err := a.linkRecord(a.vmDir(c.VMID), claimName(c.Generation), data)
	if err != nil {
		return Decision{}, fmt.Errorf("splitbrain: claim %s gen %d: %w", c.VMID, c.Generation, err)
	}
	if created {
		return Decision{Won: true, Holder: rec}, nil
	}
	// Someone holds it, perhaps us (an earlier attempt, or an NFS link
	// whose reply was lost and whose retransmission saw our own file).
	held, ok, err := a.readHolder(c.VMID, c.Generation)
	if err != nil {
		return Decision{}, err
	}
	if !ok {
		return Decision{}, fmt.Errorf("splitbrain: claim %s gen %d: link said the claim exists but it cannot be found", c.VMID, c.Generation)
	}
	return decideOnConflict(c, held)
}

// linkRecord makes dir/name hold data if the name is free: it writes a
// synced temp file, links it to the name, and syncs dir. created is false
// when the name already existed (its content is then whatever was there).
// Only a durable directory entry counts: after a crash before the sync the
// record may be gone, so the sync is repeated when the name exists (it may
// be our own earlier attempt that died before its sync).
func (a *FileArbiter) linkRecord(dir, name string, data []byte) (created bool, err error) {
	if dir != a.root {
		if err := a.ensureDir(dir); err != nil {
			return false, err
		}
	}
	tmp, err := writeTempSynced(dir, "."+name+".tmp-", data)
	if err != nil {
		return false, err
	}
	// The temp name is ours alone; whatever happens below it is garbage.
	defer os.Remove(tmp)
	linkErr := os.Link(tmp, filepath.Join(dir, name))
	if linkErr != nil && !errors.Is(linkErr, fs.ErrExist) {
		return false, fileError(linkErr)
	}
	if err := syncDir(dir); err != nil {
		return false, fileError(err)
	}
	return linkErr == nil, nil
}

// Holder implements Arbiter.
func (a *FileArbiter) Holder(ctx context.Context, vmID string, generation uint64) (Record, bool, error) {
	if err := validateSlot(vmID, generation); err != nil {
		return Record{}, false, err
	}
	if err := ctx.Err(); err != nil {
		return Record{}, false, fmt.Errorf("splitbrain: holder of %s gen %d: %w", vmID, generation, err)
	}
	if _, err := a.checkCluster(); err != nil {
		return Record{}, false, err
	}
	return a.readHolder(vmID, generation)
}

func (a *FileArbiter) readHolder(vmID string, generation uint64) (Record, bool, error) {
	b, err := os.ReadFile(filepath.Join(a.vmDir(vmID), claimName(generation)))
	if errors.Is(err, fs.ErrNotExist) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, fileError(fmt.Errorf("splitbrain: holder of %s gen %d: %w", vmID, generation, err))
	}
	rec, err := decodeRecord(b, vmID, generation)
	if err != nil {
		return Record{}, false, err
	}
	return rec, true, nil
}

// Epoch implements Arbiter.
func (a *FileArbiter) Epoch(ctx context.Context, vmID string) (EpochRecord, error) {
	if err := ValidateVMID(vmID); err != nil {
		return EpochRecord{}, err
	}
	if err := ctx.Err(); err != nil {
		return EpochRecord{}, fmt.Errorf("splitbrain: epoch of %s: %w", vmID, err)
	}
	if _, err := a.checkCluster(); err != nil {
		return EpochRecord{}, err
	}
	return a.currentEpoch(vmID)
}

// currentEpoch reads the highest epoch file of vmID. Epoch files are never
// removed and each is linked only after its predecessor existed, so the
// highest one is the current epoch.
func (a *FileArbiter) currentEpoch(vmID string) (EpochRecord, error) {
	entries, err := os.ReadDir(a.vmDir(vmID))
	if errors.Is(err, fs.ErrNotExist) {
		return EpochRecord{VMID: vmID}, nil
	}
	if err != nil {
		return EpochRecord{}, fileError(fmt.Errorf("splitbrain: epoch of %s: %w", vmID, err))
	}
	var highest uint64
	for _, e := range entries {
		digits, ok := strings.CutPrefix(e.Name(), epochPrefix)
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(digits, 10, 64)
		if err != nil || epochName(n) != e.Name() {
			return EpochRecord{}, fmt.Errorf("%w: %s holds a stray %s", ErrCorruptClaim, a.vmDir(vmID), e.Name())
		}
		highest = max(highest, n)
	}
	if highest == 0 {
		return EpochRecord{VMID: vmID}, nil
	}
	b, err := os.ReadFile(filepath.Join(a.vmDir(vmID), epochName(highest)))
	if err != nil {
		return EpochRecord{}, fileError(fmt.Errorf("splitbrain: epoch of %s: %w", vmID, err))
	}
	return decodeEpoch(b, vmID, highest)
}

// AdvanceEpoch implements Arbiter.
func (a *FileArbiter) AdvanceEpoch(ctx context.Context, vmID string, from uint64, taker string) (EpochRecord, error) {
	if err := validateAdvance(vmID, from, taker); err != nil {
		return EpochRecord{}, err
	}
	if err := ctx.Err(); err != nil {
		return EpochRecord{}, fmt.Errorf("splitbrain: advance %s past epoch %d: %w", vmID, from, err)
	}
	if _, err := a.checkCluster(); err != nil {
		return EpochRecord{}, err
	}
	current, err := a.currentEpoch(vmID)
	if err != nil {
		return EpochRecord{}, err
	}
	if current.Epoch != from {
		return EpochRecord{}, epochConflict(vmID, from, current.Epoch)
	}
	now := a.now().UTC()
	if from > 0 {
		data, err := encodeRecord(fenceRecord(vmID, from, taker, now))
		if err != nil {
			return EpochRecord{}, err
		}
		// Taken already (a real holder, or a racing advance's fence): fine,
		// the slot is closed to newcomers either way.
		if _, err := a.linkRecord(a.vmDir(vmID), claimName(from), data); err != nil {
			return EpochRecord{}, fmt.Errorf("splitbrain: close %s gen %d: %w", vmID, from, err)
		}
	}
	rec := EpochRecord{VMID: vmID, Epoch: from + 1, TakenBy: taker, TakenAt: now}
	data, err := encodeEpoch(rec)
	if err != nil {
		return EpochRecord{}, err
	}
	created, err := a.linkRecord(a.vmDir(vmID), epochName(from+1), data)
	if err != nil {
		return EpochRecord{}, fmt.Errorf("splitbrain: advance %s to epoch %d: %w", vmID, from+1, err)
	}
	if !created {
		return EpochRecord{}, epochConflict(vmID, from, from+1)
	}
	return rec, nil
}

// checkRoot refuses a root that is missing or not a directory, so that an
// unmounted share is an error (wait) rather than an empty slot.
func (a *FileArbiter) checkRoot() error {
	st, err := os.Stat(a.root)
	if err != nil {
		return fileError(fmt.Errorf("splitbrain: arbiter root: %w", err))
	}
	if !st.IsDir() {
		return permanent(fmt.Errorf("splitbrain: arbiter root %s is not a directory", a.root))
	}
	return nil
}

// ensureDir creates dir (a VM's directory under the root) if needed and
// makes its entry durable.
func (a *FileArbiter) ensureDir(dir string) error {
	err := os.Mkdir(dir, 0o755)
	if err == nil {
		if err := syncDir(a.root); err != nil {
			return fileError(fmt.Errorf("splitbrain: create %s: %w", dir, err))
		}
		return nil
	}
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	return fileError(fmt.Errorf("splitbrain: create %s: %w", dir, err))
}

// fileError marks the errors a retry cannot cure permanent: no permission,
// a read-only filesystem.
func fileError(err error) error {
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
		return permanent(err)
	}
	return err
}

// writeTempSynced writes data to a new file named prefix+<random> in dir and
// fsyncs it, returning its path.
func writeTempSynced(dir, prefix string, data []byte) (string, error) {
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", fmt.Errorf("splitbrain: temp name: %w", err)
	}
	path := filepath.Join(dir, prefix+hex.EncodeToString(nonce[:]))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", fileError(fmt.Errorf("splitbrain: write claim: %w", err))
	}
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(path)
		return "", fileError(fmt.Errorf("splitbrain: write claim %s: %w", path, err))
	}
	return path, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	serr := d.Sync()
	cerr := d.Close()
	if err := errors.Join(serr, cerr); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

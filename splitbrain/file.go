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
	"time"
)

// FileArbiter keeps claims as files under a shared directory (NFS, a cluster
// filesystem): Root/<vmid>/gen-<n>.claim.
//
// The test-and-set is link(2) of a fully written and fsynced temp file onto
// the claim name: link is atomic and fails with EEXIST when the name exists,
// so exactly one contender succeeds, and a reader can never see a claim that
// is only half written (O_EXCL-then-write could leave an empty file after a
// crash that would block the slot without saying who holds it).
type FileArbiter struct {
	root string
	now  func() time.Time
}

// NewFileArbiter returns an arbiter over root, which must be an absolute path.
// It does no I/O: root is checked on each Claim, and is never created,
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

// Claim implements Arbiter.
func (a *FileArbiter) Claim(ctx context.Context, c Claim) (Decision, error) {
	if err := c.validate(); err != nil {
		return Decision{}, err
	}
	if err := ctx.Err(); err != nil {
		return Decision{}, fmt.Errorf("splitbrain: claim %s gen %d: %w", c.VMID, c.Generation, err)
	}
	rec := Record{VMID: c.VMID, Generation: c.Generation, Claimant: c.Claimant, Reason: c.Reason, ClaimedAt: a.now().UTC()}
	data, err := encodeRecord(rec)
	if err != nil {
		return Decision{}, err
	}
	if err := a.ensureVMDir(c.VMID); err != nil {
		return Decision{}, err
	}
	dir := a.vmDir(c.VMID)
	tmp, err := writeTempSynced(dir, "."+claimName(c.Generation)+".tmp-", data)
	if err != nil {
		return Decision{}, err
	}
	// The temp name is ours alone; whatever happens below it is garbage.
	defer os.Remove(tmp)

	final := filepath.Join(dir, claimName(c.Generation))
	linkErr := os.Link(tmp, final)
	if linkErr != nil && !errors.Is(linkErr, fs.ErrExist) {
		return Decision{}, fmt.Errorf("splitbrain: claim %s gen %d: %w", c.VMID, c.Generation, linkErr)
	}
	if linkErr == nil {
		// Only a durable directory entry is a win: after a crash before this
		// sync the claim may be gone, and the other side may then win.
		if err := syncDir(dir); err != nil {
			return Decision{}, fmt.Errorf("splitbrain: claim %s gen %d: %w", c.VMID, c.Generation, err)
		}
		return Decision{Won: true, Holder: rec}, nil
	}
	// EEXIST: someone holds it, perhaps us (an earlier attempt, or an NFS
	// link whose reply was lost and whose retransmission saw our own file).
	held, ok, err := a.Holder(ctx, c.VMID, c.Generation)
	if err != nil {
		return Decision{}, err
	}
	if !ok {
		return Decision{}, fmt.Errorf("splitbrain: claim %s gen %d: link said the claim exists but it cannot be found", c.VMID, c.Generation)
	}
	d := decideOnConflict(c, held)
	if d.Won {
		// Our earlier attempt may have died before its directory sync.
		if err := syncDir(dir); err != nil {
			return Decision{}, fmt.Errorf("splitbrain: claim %s gen %d: %w", c.VMID, c.Generation, err)
		}
	}
	return d, nil
}

// Holder implements Arbiter.
func (a *FileArbiter) Holder(ctx context.Context, vmID string, generation uint64) (Record, bool, error) {
	if err := validateSlot(vmID, generation); err != nil {
		return Record{}, false, err
	}
	if err := ctx.Err(); err != nil {
		return Record{}, false, fmt.Errorf("splitbrain: holder of %s gen %d: %w", vmID, generation, err)
	}
	if err := a.checkRoot(); err != nil {
		return Record{}, false, err
	}
	b, err := os.ReadFile(filepath.Join(a.vmDir(vmID), claimName(generation)))
	if errors.Is(err, fs.ErrNotExist) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, fmt.Errorf("splitbrain: holder of %s gen %d: %w", vmID, generation, err)
	}
	rec, err := decodeRecord(b, vmID, generation)
	if err != nil {
		return Record{}, false, err
	}
	return rec, true, nil
}

// checkRoot refuses a root that is missing or not a directory, so that an
// unmounted share is an error (wait) rather than an empty slot.
func (a *FileArbiter) checkRoot() error {
	st, err := os.Stat(a.root)
	if err != nil {
		return fmt.Errorf("splitbrain: arbiter root: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("splitbrain: arbiter root %s is not a directory", a.root)
	}
	return nil
}

// ensureVMDir creates Root/<vmid> if needed and makes its entry durable.
func (a *FileArbiter) ensureVMDir(vmID string) error {
	if err := a.checkRoot(); err != nil {
		return err
	}
	dir := a.vmDir(vmID)
	err := os.Mkdir(dir, 0o755)
	if err == nil {
		if err := syncDir(a.root); err != nil {
			return fmt.Errorf("splitbrain: create %s: %w", dir, err)
		}
		return nil
	}
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	return fmt.Errorf("splitbrain: create %s: %w", dir, err)
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
		return "", fmt.Errorf("splitbrain: write claim: %w", err)
	}
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("splitbrain: write claim %s: %w", path, err)
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

package splitbrain

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// The cluster marker is one small record at the top of the arbiter's
// storage, written once by Init. It holds a random cluster id. Start-up
// checks it and every later operation compares it with what the first one
// saw: an empty mount point (the share is not mounted) has no marker, and
// another share or bucket has another id, so neither is mistaken for the
// shared storage, where both sides would each win on their own disk.

// markerName is the marker's file name under a file root and its key under
// an S3 prefix. VM ids cannot start with '.', so it never collides with one.
const markerName = ".ftvm-arbiter"

// markerFormat tags the marker, as recordFormat tags claims.
const markerFormat = "ftvm-arbiter/1"

type storedMarker struct {
	Format    string    `json:"format"`
	ClusterID string    `json:"cluster_id"`
	CreatedAt time.Time `json:"created_at"`
}

func newMarker(now time.Time) ([]byte, string, error) {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, "", fmt.Errorf("splitbrain: cluster id: %w", err)
	}
	m := storedMarker{Format: markerFormat, ClusterID: hex.EncodeToString(id[:]), CreatedAt: now.UTC()}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, "", fmt.Errorf("splitbrain: encode cluster marker: %w", err)
	}
	return append(b, '\n'), m.ClusterID, nil
}

// decodeMarker returns the cluster id of a stored marker. A marker that does
// not parse is permanent: only Init writes one, and whole.
func decodeMarker(b []byte, where string) (string, error) {
	var m storedMarker
	if err := json.Unmarshal(b, &m); err != nil {
		return "", permanent(fmt.Errorf("%w: cluster marker %s: %w", ErrCorruptClaim, where, err))
	}
	if m.Format != markerFormat || m.ClusterID == "" {
		return "", permanent(fmt.Errorf("%w: cluster marker %s: format %q id %q, want format %q", ErrCorruptClaim, where, m.Format, m.ClusterID, markerFormat))
	}
	return m.ClusterID, nil
}

// clusterPin remembers the first cluster id an arbiter saw and refuses any
// other afterwards.
type clusterPin struct {
	mu sync.Mutex
	id string
}

func (p *clusterPin) check(id, where string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.id == "" {
		p.id = id
	}
	if p.id != id {
		return "", permanent(fmt.Errorf("%w: %s holds cluster %s, but this side started with cluster %s (another share mounted? another bucket or prefix?)",
			ErrWrongCluster, where, id, p.id))
	}
	return id, nil
}

package replay

// PointHash folds the execution points of a run, exit number and all 18
// registers, into 64 bits. Logging the full registers at every exit would
// cost ~150 bytes an entry; instead the recorder and the replayer each keep
// a PointHash over the points they are given and compare it at every
// Checkpoint, which also carries the full registers of its own point.
//
// A PointHash covers the points after the previous checkpoint up to and
// including the checkpoint's own point: both sides Reset it after each
// checkpoint, so a replay can start at any checkpoint and a mismatch is
// known to lie between two checkpoints.
//
// It is not a cryptographic hash: it guards against accidents, not an
// adversary. Each step is a bijection of the state for a fixed input, so
// two runs that differ in a single register at a single point always get
// different sums. Part of the log format: changing it needs a new version.
type PointHash struct{ sum uint64 }

// pointHashSeed is the sum before any point (the first 64 bits of pi's
// fraction): a non-zero start, so a run of zero registers still mixes.
const pointHashSeed = 0x243f6a8885a308d3

// NewPointHash returns a PointHash that has seen no point.
func NewPointHash() PointHash { return PointHash{sum: pointHashSeed} }

// Add folds p into the hash.
func (h *PointHash) Add(p *ExecPoint) {
	s := mix(h.sum, p.Exit)
	for _, v := range p.Regs.Array() {
		s = mix(s, v)
	}
	h.sum = s
}

// Sum returns the hash of the points added since the last Reset.
func (h *PointHash) Sum() uint64 { return h.sum }

// Reset forgets every point added, as after a checkpoint.
func (h *PointHash) Reset() { h.sum = pointHashSeed }

// mix folds one word into the state. XOR then multiplication by an odd
// constant (the 64-bit golden ratio) is a bijection of the state; the shift
// XOR carries the high bits, where the multiplication puts its mixing, back
// down.
func mix(s, v uint64) uint64 {
	s ^= v
	s *= 0x9e3779b97f4a7c15
	s ^= s >> 29
	return s
}

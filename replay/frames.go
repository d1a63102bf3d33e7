package replay

import "encoding/binary"

// A NetRX entry's Data is a batch of frames, each a uvarint length followed
// by that many bytes: the frames one receive call handed to the guest.

// AppendFrame appends one frame of a batch to b.
func AppendFrame(b, frame []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(frame)))
	return append(b, frame...)
}

// NextFrame splits the first frame off a batch. ok is false when the batch
// is malformed (a length past the end, or longer than MaxFrame).
func NextFrame(batch []byte) (frame, rest []byte, ok bool) {
	n, k := binary.Uvarint(batch)
	if k <= 0 || n > MaxFrame || n > uint64(len(batch)-k) {
		return nil, nil, false
	}
	return batch[k : k+int(n)], batch[k+int(n):], true
}

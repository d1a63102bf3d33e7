package logchannel

// The join offer: what a joining backup already holds, sent to the
// primary before the state transfer, so that the transfer can leave out
// what the backup has (a local disk's chunks that are already equal).
// The channel carries its bytes and does not read them.

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// MaxJoinOffer bounds a join offer: the primary holds it whole before it
// reads it, so a longer one is a protocol violation, refused before it is
// stored.
const MaxJoinOffer = 4 << 20

// offerPiece bounds the bytes of one offer message: each piece that
// arrives is a sign of life on a slow link.
const offerPiece = 64 << 10

// offerLen: flags u8 (bit 0: the last piece), up to offerPiece bytes, CRC.
const offerLen = 1 + offerPiece + crcLen

// SendOffer sends the join offer, once, in a joining pairing only: the
// primary reads it with Sender.Offer before it sends the state. It
// returns once the offer is queued for the writer; a failure to send it
// ends the session as any write does.
func (r *Receiver) SendOffer(p []byte) error {
	if r.transfer == nil {
		return ErrNotJoining
	}
	if len(p) > MaxJoinOffer {
		return fmt.Errorf("logchannel: a join offer of %d bytes, over the limit of %d", len(p), MaxJoinOffer)
	}
	var msgs []byte
	for off := 0; ; {
		n := min(len(p)-off, offerPiece)
		last := off+n == len(p)
		f := make([]byte, 0, 1+n)
		if last {
			f = append(f, 1)
		} else {
			f = append(f, 0)
		}
		msgs = appendControl(msgs, msgJoinOffer, append(f, p[off:off+n]...))
		off += n
		if last {
			break
		}
	}
	r.offerMu.Lock()
	if r.offerQueued {
		r.offerMu.Unlock()
		return errors.New("logchannel: the join offer was sent already")
	}
	r.offerQueued, r.offer = true, msgs
	r.offerMu.Unlock()
	r.signalWriter()
	return r.Err()
}

// takeOffer returns the offer's messages if they wait for the writer.
func (r *Receiver) takeOffer() []byte {
	r.offerMu.Lock()
	defer r.offerMu.Unlock()
	b := r.offer
	r.offer = nil
	return b
}

// offerIn is the primary's end of the join offer, filled by the reader
// goroutine.
type offerIn struct {
	mu   sync.Mutex
	buf  []byte
	done chan struct{} // closed once the last piece arrived
}

// readOffer takes one piece of the offer. Called by the reader goroutine.
func (s *Sender) readOffer(f []byte) error {
	o := s.offer
	select {
	case <-o.done:
		return s.mr.protocolError("%v message after the last piece of the offer", msgJoinOffer)
	default:
	}
	if len(f) < 1 || f[0]&^1 != 0 {
		return s.mr.protocolError("%v message with flags %#x", msgJoinOffer, f[:min(len(f), 1)])
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.buf)+len(f)-1 > MaxJoinOffer {
		return s.mr.protocolError("a join offer of more than %d bytes", MaxJoinOffer)
	}
	o.buf = append(o.buf, f[1:]...)
	if f[0] == 1 {
		close(o.done)
	}
	return nil
}

// Offer waits for the joining backup's offer (Receiver.SendOffer) and
// returns it whole, or the Sender's error if it stopped first, or ctx's.
// In a pairing without Hello.Join it returns ErrNotJoining.
func (s *Sender) Offer(ctx context.Context) ([]byte, error) {
	if s.offer == nil {
		return nil, ErrNotJoining
	}
	select {
	case <-s.offer.done:
		s.offer.mu.Lock()
		defer s.offer.mu.Unlock()
		return s.offer.buf, nil
	case <-s.done:
		return nil, fmt.Errorf("logchannel: waiting for the join offer of %s: %w", s.peer, s.Err())
	case <-ctx.Done():
		return nil, fmt.Errorf("logchannel: waiting for the join offer of %s: %w", s.peer, ctx.Err())
	}
}

package logchannel

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// TestJoinOffer: a joining backup's offer reaches the primary whole, in
// pieces, before any transfer; it goes once, only in a joining pairing.
func TestJoinOffer(t *testing.T) {
	for _, size := range []int{0, 1, offerPiece, 3*offerPiece + 17} {
		s, r := pairAs(t, joinHello, fastConfig(), fastConfig())
		offer := randomBytes(size, uint64(size))
		if err := r.SendOffer(offer); err != nil {
			t.Fatal(err)
		}
		if err := r.SendOffer(offer); err == nil {
			t.Fatal("a second offer was taken")
		}
		got, err := s.Offer(testContext(t, 5*time.Second))
		if err != nil || !bytes.Equal(got, offer) {
			t.Fatalf("offer of %d bytes: got %d bytes, %v", size, len(got), err)
		}
		s.Close()
		r.Close()
	}
	fs, fr := pair(t, fastConfig(), fastConfig())
	defer fs.Close()
	defer fr.Close()
	if err := fr.SendOffer(nil); !errors.Is(err, ErrNotJoining) {
		t.Fatalf("SendOffer without a join: %v, want ErrNotJoining", err)
	}
	if _, err := fs.Offer(context.Background()); !errors.Is(err, ErrNotJoining) {
		t.Fatalf("Offer without a join: %v, want ErrNotJoining", err)
	}
	s, r := pairAs(t, joinHello, fastConfig(), fastConfig())
	defer s.Close()
	defer r.Close()
	if err := r.SendOffer(make([]byte, MaxJoinOffer+1)); err == nil {
		t.Fatal("an offer over the limit was queued")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Offer(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Offer with none sent: %v, want the context's end", err)
	}
}

// TestJoinOfferViolations: a backup that sends an offer without a join,
// longer than MaxJoinOffer, or after its last piece loses the primary,
// which names what was wrong, before it stores the excess.
func TestJoinOfferViolations(t *testing.T) {
	piece := func(last bool, n int) []byte {
		f := []byte{0}
		if last {
			f[0] = 1
		}
		return appendControl(nil, msgJoinOffer, append(f, make([]byte, n)...))
	}
	tests := []struct {
		name string
		join bool
		send func() []byte
		want string
	}{
		{"offer without a join", false, func() []byte { return piece(true, 10) }, "join-offer message in a pairing without a join"},
		{"offer over the limit", true, func() []byte {
			var b []byte
			for range MaxJoinOffer/offerPiece + 1 {
				b = append(b, piece(false, offerPiece)...)
			}
			return b
		}, "a join offer of more than"},
		{"piece after the last", true, func() []byte { return append(piece(true, 5), piece(true, 5)...) }, "after the last piece of the offer"},
		{"bad flags", true, func() []byte { return appendControl(nil, msgJoinOffer, []byte{4, 1, 2}) }, "with flags"},
		{"piece over the limit", true, func() []byte { return piece(false, offerPiece+1) }, "expected 65541"},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			hello := testHello
			hello.Join = tt.join
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			peer := make(chan *rawPeer, 1)
			go func() {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { conn.Close() })
				p, err := tryRawHandshakeAs(conn, hello, roleBackup, fastConfig())
				if err != nil {
					conn.Close()
					return
				}
				peer <- p
			}()
			s, err := Dial(testContext(t, 5*time.Second), ln.Addr().String(), hello, fastConfig())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			p := <-peer
			go p.conn.Write(tt.send())
			waitClosed(t, s.PeerLost(), 5*time.Second, "the primary to drop the backup")
			if err := s.Err(); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("the primary stopped with %v, want ErrProtocol and %q", err, tt.want)
			}
		})
	}
}

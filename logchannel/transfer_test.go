package logchannel

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
)

// joinHello is testHello for a joining pairing.
var joinHello = func() Hello { h := testHello; h.Join = true; return h }()

// joinEntries makes n entries of a log that resumes after seq after: no
// start entry, seqs after+1 on.
func joinEntries(n int, after uint64) []replay.Entry {
	es := testEntries(n + 1)[1:]
	for i := range es {
		es[i].Seq = after + uint64(i) + 1
	}
	return es
}

// randomBytes makes n bytes no compressor or chance match would hide a
// swap in.
func randomBytes(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// sendTransfer writes state to w in pieces of uneven sizes (so chunks and
// writes do not line up) and returns the first error.
func sendTransfer(w io.Writer, state []byte) error {
	for i, off := 0, 0; off < len(state); i++ {
		n := min(len(state)-off, 1000+i*37_000%(3*MaxTransferChunk))
		if _, err := w.Write(state[off : off+n]); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// readTransfer reads the receiver's transfer to its end in the
// background.
func readTransfer(r *Receiver) <-chan transferResult {
	ch := make(chan transferResult, 1)
	go func() {
		b, err := io.ReadAll(r.Transfer())
		ch <- transferResult{b, err}
	}()
	return ch
}

type transferResult struct {
	state []byte
	err   error
}

func waitTransfer(t *testing.T, ch <-chan transferResult, d time.Duration) transferResult {
	t.Helper()
	select {
	case res := <-ch:
		return res
	case <-time.After(d):
		t.Fatalf("the transfer did not end within %v", d)
		return transferResult{}
	}
}

// TestTransferThenLog: a joining backup gets a multi-MiB state intact,
// the seq it ends at, then the log from the next entry on, which it
// acknowledges as in any pairing. Entries appended during the transfer
// wait for its end.
func TestTransferThenLog(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{{"tls", fastConfig()}, {"clear", inClear(fastConfig())}} {
		t.Run(tc.name, func(t *testing.T) {
			s, r := pairAs(t, joinHello, tc.cfg, tc.cfg)
			if !r.Joining() {
				t.Fatal("the backup of a joining pairing does not say it joins")
			}
			const joinAt = 5000
			state := randomBytes(6<<20+12345, 1)
			es := joinEntries(300, joinAt)
			got := readTransfer(r)

			// The vCPU goes on while the state leaves: its entries are
			// appended, and flushed, before the transfer ends.
			appended := make(chan error, 1)
			go func() {
				for i := range es[:100] {
					if err := s.Append(es[i]); err != nil {
						appended <- err
						return
					}
				}
				appended <- s.Flush()
			}()
			if err := sendTransfer(s.Transfer(), state); err != nil {
				t.Fatalf("transfer: %v", err)
			}
			if got := r.Stats().Entries; got != 0 {
				t.Fatalf("%d entries arrived before the end of the transfer", got)
			}
			if err := s.Transfer().Finish(joinAt); err != nil {
				t.Fatalf("finish: %v", err)
			}
			if err := <-appended; err != nil {
				t.Fatalf("append during the transfer: %v", err)
			}
			if err := appendAll(s, es[100:], 7); err != nil {
				t.Fatal(err)
			}

			res := waitTransfer(t, got, 10*time.Second)
			if res.err != nil {
				t.Fatalf("reading the transfer: %v", res.err)
			}
			if !bytes.Equal(res.state, state) {
				t.Fatalf("the transfer arrived as %d bytes that differ from the %d sent", len(res.state), len(state))
			}
			if r.JoinAtSeq() != joinAt {
				t.Fatalf("JoinAtSeq %d, want %d", r.JoinAtSeq(), joinAt)
			}
			for i := range es {
				e, err := r.Next()
				if err != nil {
					t.Fatalf("entry %d: %v", i, err)
				}
				if !e.Equal(&es[i]) {
					t.Fatalf("entry %d: received %v, sent %v", i, e, es[i])
				}
			}
			last := es[len(es)-1].Seq
			ctx := testContext(t, 5*time.Second)
			if err := s.WaitAcked(ctx, last); err != nil {
				t.Fatalf("waiting for the ack of seq %d: %v", last, err)
			}
			if acked := s.Acked(); acked != last {
				t.Fatalf("acked %d, want %d", acked, last)
			}
			ss, rs := s.Stats(), r.Stats()
			if ss.TransferBytes != uint64(len(state)) || rs.TransferBytes != uint64(len(state)) {
				t.Fatalf("transfer bytes: sender %d, receiver %d, want %d", ss.TransferBytes, rs.TransferBytes, len(state))
			}
			if ss.Unacked != 0 {
				t.Fatalf("%d bytes unacked after the last ack: transfer bytes count as log", ss.Unacked)
			}
			if err := s.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// pairAs is pair with hello on both sides.
func pairAs(t *testing.T, hello Hello, sc, rc Config) (*Sender, *Receiver) {
	ln := listen(t)
	return connectAs(t, ln, ln.Addr().String(), hello, sc, rc)
}

// TestJoinMustAgree: a primary that starts a joining pairing and a backup
// started fresh (or the other way round) refuse each other, both saying
// why.
func TestJoinMustAgree(t *testing.T) {
	for _, primaryJoins := range []bool{true, false} {
		ph, bh := joinHello, testHello
		if !primaryJoins {
			ph, bh = bh, ph
		}
		ln := listen(t)
		ctx := testContext(t, 10*time.Second)
		accepted := make(chan error, 1)
		go func() {
			r, err := ln.Accept(ctx, bh, fastConfig())
			if r != nil {
				r.Close()
			}
			accepted <- err
		}()
		s, err := Dial(ctx, ln.Addr().String(), ph, fastConfig())
		if s != nil {
			s.Close()
		}
		aerr := <-accepted
		for side, err := range map[string]error{"primary": err, "backup": aerr} {
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "state transfer (a joining pairing)") {
				t.Errorf("primary joins=%v: %s: %v, want a refusal naming the join", primaryJoins, side, err)
			}
		}
	}
}

// TestTransferMisuse: the Sender refuses what would give the backup a log
// that does not continue the state.
func TestTransferMisuse(t *testing.T) {
	t.Run("no join", func(t *testing.T) {
		s, r := pair(t, fastConfig(), fastConfig())
		if _, err := s.Transfer().Write([]byte("state")); !errors.Is(err, ErrNotJoining) {
			t.Fatalf("Write in a pairing without a join: %v, want ErrNotJoining", err)
		}
		if _, err := r.Transfer().Read(make([]byte, 1)); !errors.Is(err, ErrNotJoining) {
			t.Fatalf("Read in a pairing without a join: %v, want ErrNotJoining", err)
		}
	})
	t.Run("first entry before the join point", func(t *testing.T) {
		s, _ := pairAs(t, joinHello, fastConfig(), fastConfig())
		if err := s.Transfer().Finish(10); err != nil {
			t.Fatal(err)
		}
		if err := s.Append(joinEntries(1, 9)[0]); err == nil || !strings.Contains(err.Error(), "resumes at 11") {
			t.Fatalf("append of seq 10 after a transfer that ended at 10: %v", err)
		}
		if err := s.Append(joinEntries(1, 10)[0]); err != nil {
			t.Fatalf("append of seq 11: %v", err)
		}
	})
	t.Run("finish that does not fit the entries appended", func(t *testing.T) {
		s, _ := pairAs(t, joinHello, fastConfig(), fastConfig())
		if err := s.Append(joinEntries(1, 20)[0]); err != nil {
			t.Fatal(err)
		}
		if err := s.Transfer().Finish(10); err == nil || !strings.Contains(err.Error(), "has seq 21, not 11") {
			t.Fatalf("Finish(10) after seq 21 was appended: %v", err)
		}
		if err := s.Transfer().Finish(20); err != nil {
			t.Fatalf("Finish(20): %v", err)
		}
		if _, err := s.Transfer().Write([]byte("more")); err == nil {
			t.Fatal("Write after Finish succeeded")
		}
	})
	t.Run("abandoned", func(t *testing.T) {
		s, r := pairAs(t, joinHello, fastConfig(), fastConfig())
		got := readTransfer(r)
		if _, err := s.Transfer().Write(randomBytes(1000, 2)); err != nil {
			t.Fatal(err)
		}
		s.Transfer().Close()
		if err := s.Append(joinEntries(1, 0)[0]); err == nil || !strings.Contains(err.Error(), "abandoned") {
			t.Fatalf("append after the transfer was abandoned: %v", err)
		}
		res := waitTransfer(t, got, 5*time.Second)
		if !errors.Is(res.err, ErrPeerLost) {
			t.Fatalf("the backup read %d bytes, then %v; want ErrPeerLost", len(res.state), res.err)
		}
	})
}

package logchannel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
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

// TestTransferCut: a connection cut in the middle of the transfer is an
// error on both sides, never an early io.EOF.
func TestTransferCut(t *testing.T) {
	ln := listen(t)
	p := newProxy(t, ln.Addr().String())
	s, r := connectAs(t, ln, p.addr(), joinHello, fastConfig(), fastConfig())
	sent := make(chan error, 1)
	go func() {
		piece := randomBytes(1<<20, 3)
		for range 256 {
			if _, err := s.Transfer().Write(piece); err != nil {
				sent <- err
				return
			}
		}
		sent <- errors.New("256 MiB written without an error")
	}()
	read := 0
	buf := make([]byte, 64<<10)
	for read < 2<<20 {
		n, err := r.Transfer().Read(buf)
		if err != nil {
			t.Fatalf("reading the transfer before the cut: %v", err)
		}
		read += n
	}
	p.cut()
	var err error
	for err == nil {
		var n int
		n, err = r.Transfer().Read(buf)
		read += n
	}
	t.Logf("backup: %d bytes, then %v", read, err)
	if err == io.EOF || !errors.Is(err, ErrPeerLost) {
		t.Fatalf("a cut transfer ended with %v on the backup, want ErrPeerLost", err)
	}
	select {
	case err := <-sent:
		t.Logf("primary: %v", err)
		if !errors.Is(err, ErrPeerLost) {
			t.Fatalf("a cut transfer ended with %v on the primary, want ErrPeerLost", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the primary's Write did not fail within 5s of the cut")
	}
	if err := s.Transfer().Finish(0); !errors.Is(err, ErrPeerLost) {
		t.Fatalf("Finish after the cut: %v, want ErrPeerLost", err)
	}
}

// TestTransferProtocolViolations: a primary that sends a transfer where
// none belongs, the log before the transfer's end, or an end that does
// not match the bytes, loses its backup, which keeps what was good.
func TestTransferProtocolViolations(t *testing.T) {
	const joinAt = 40
	es := joinEntries(20, joinAt)
	chunk := randomBytes(5000, 4)
	transferMsg := func(b []byte) []byte { return appendControl(nil, msgTransfer, b) }
	endMsg := func(length uint64, crc uint32, seq uint64) []byte {
		var f [transferEndLen - crcLen]byte
		putUint64(f[0:], length)
		putUint32(f[8:], crc)
		putUint64(f[12:], seq)
		return appendControl(nil, msgTransferEnd, f[:])
	}
	goodEnd := endMsg(uint64(len(chunk)), crc32c(chunk), joinAt)
	logMsgs := func(t *testing.T, es []replay.Entry) []byte {
		var b []byte
		for _, c := range encodeLog(t, es, 5) {
			b = append(append(b, appendHeader(nil, msgLog, len(c))...), c...)
		}
		return b
	}
	tests := []struct {
		name      string
		join      bool
		send      func(t *testing.T) []byte
		wantState []byte // the transfer's bytes the backup gets
		wantEOF   bool   // the transfer ended well
		entries   int    // the good entries the backup keeps
		want      string
	}{
		{
			name: "transfer without a join",
			send: func(*testing.T) []byte { return transferMsg(chunk) },
			want: "transfer message in a pairing that did not announce a join",
		},
		{
			name: "transfer after a log frame, without a join",
			send: func(t *testing.T) []byte {
				return append(logMsgs(t, testEntries(10)), transferMsg(chunk)...)
			},
			entries: 10,
			want:    "transfer message in a pairing that did not announce a join",
		},
		{
			name: "log before the end of the transfer",
			join: true,
			send: func(t *testing.T) []byte {
				return append(transferMsg(chunk), logMsgs(t, es)...)
			},
			wantState: chunk,
			want:      "log message before the end of the state transfer",
		},
		{
			name: "transfer after a log frame",
			join: true,
			send: func(t *testing.T) []byte {
				b := append(transferMsg(chunk), goodEnd...)
				b = append(b, logMsgs(t, es)...)
				return append(b, transferMsg(chunk)...)
			},
			wantState: chunk, wantEOF: true,
			entries: len(es),
			want:    "transfer message after the end of the state transfer",
		},
		{
			name: "end shorter than the transfer",
			join: true,
			send: func(*testing.T) []byte {
				return append(transferMsg(chunk), endMsg(uint64(len(chunk)-1), crc32c(chunk[1:]), joinAt)...)
			},
			wantState: chunk,
			want:      "the state transfer ends with 4999 bytes",
		},
		{
			name: "end with another CRC",
			join: true,
			send: func(*testing.T) []byte {
				return append(transferMsg(chunk), endMsg(uint64(len(chunk)), crc32c(chunk)^1, joinAt)...)
			},
			wantState: chunk,
			want:      "but 5000 bytes of CRC",
		},
		{
			name: "chunk over the limit",
			join: true,
			send: func(*testing.T) []byte {
				return transferMsg(make([]byte, MaxTransferChunk+1))
			},
			want: "transfer message of 262149 bytes, expected at most 262148",
		},
		{
			name: "first entry not after the join point",
			join: true,
			send: func(t *testing.T) []byte {
				b := append(transferMsg(chunk), goodEnd...)
				return append(b, logMsgs(t, joinEntries(20, joinAt+1))...)
			},
			wantState: chunk, wantEOF: true,
			want: "its first entry has seq 42, but the state transfer ended at seq 40",
		},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			hello := testHello
			hello.Join = tt.join
			p, r := rawPrimaryAs(t, hello, fastConfig())
			var got <-chan transferResult
			if tt.join {
				got = readTransfer(r)
			}
			if _, err := p.conn.Write(tt.send(t)); err != nil {
				// The backup may hang up before the end of a bad message.
				t.Logf("raw primary: %v", err)
			}
			entries, err := drain(t, r, 5*time.Second)
			t.Logf("%d entries, then %v", len(entries), err)
			if !errors.Is(err, ErrPeerLost) || !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Next: %v; want ErrPeerLost, ErrProtocol and %q", err, tt.want)
			}
			if len(entries) != tt.entries {
				t.Fatalf("the backup kept %d entries, want %d", len(entries), tt.entries)
			}
			if !tt.join {
				return
			}
			res := waitTransfer(t, got, 5*time.Second)
			if !bytes.Equal(res.state, tt.wantState) {
				t.Fatalf("the transfer gave %d bytes, want the %d sent", len(res.state), len(tt.wantState))
			}
			if tt.wantEOF != (res.err == nil) {
				t.Fatalf("the transfer ended with %v (want a clean end: %v)", res.err, tt.wantEOF)
			}
			if res.err != nil && !errors.Is(res.err, ErrPeerLost) {
				t.Fatalf("the transfer ended with %v, want ErrPeerLost", res.err)
			}
		})
	}
}

func putUint64(b []byte, v uint64) { binary.LittleEndian.PutUint64(b, v) }
func putUint32(b []byte, v uint32) { binary.LittleEndian.PutUint32(b, v) }
func crc32c(b []byte) uint32       { return crc32.Checksum(b, castagnoli) }

// slowConfig detects a silent peer within 250 ms: a transfer that lasts
// many times that must show the peers are alive all along.
func slowConfig() Config {
	c := fastConfig()
	c.HeartbeatInterval, c.FailoverTimeout = 20*time.Millisecond, 250*time.Millisecond
	return c
}

// finishJoin ends a transfer at joinAt and checks that entries after it
// arrive and are acknowledged, and that neither side lost the other.
func finishJoin(t *testing.T, s *Sender, r *Receiver, joinAt uint64) {
	t.Helper()
	if err := s.Transfer().Finish(joinAt); err != nil {
		t.Fatalf("finish: %v", err)
	}
	es := joinEntries(50, joinAt)
	if err := appendAll(s, es, 10); err != nil {
		t.Fatal(err)
	}
	for i := range es {
		e, err := r.Next()
		if err != nil {
			t.Fatalf("entry %d after the transfer: %v", i, err)
		}
		if !e.Equal(&es[i]) {
			t.Fatalf("entry %d: received %v, sent %v", i, e, es[i])
		}
	}
	if err := s.WaitAcked(testContext(t, 5*time.Second), es[len(es)-1].Seq); err != nil {
		t.Fatalf("ack after the transfer: %v", err)
	}
	if err := s.Err(); err != nil {
		t.Fatalf("primary: %v", err)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("backup: %v", err)
	}
}

// TestSlowTransferReader: a backup that takes the state slowly (as a
// restore that writes guest memory might) holds the primary back through
// TCP, and both sides keep exchanging heartbeats: nobody is declared lost
// over a transfer that lasts many failover timeouts.
func TestSlowTransferReader(t *testing.T) {
	cfg := slowConfig()
	cfg.MaxQueued = MaxTransferChunk // the backup holds one chunk
	s, r := pairAs(t, joinHello, cfg, cfg)
	state := randomBytes(3<<20, 5)
	sent := make(chan error, 1)
	go func() { sent <- sendTransfer(s.Transfer(), state) }()

	start := time.Now()
	// The primary must hear from the backup throughout: a heartbeat, or a
	// report of its progress through the transfer, in every half failover
	// timeout.
	signs := func() uint64 {
		st := s.Stats()
		return st.HeartbeatsReceived + st.TransferReceived + st.TransferTaken
	}
	quiet := make(chan time.Duration, 1)
	stopWatch := make(chan struct{})
	go func() {
		var longest time.Duration
		last, since := signs(), time.Now()
		for {
			select {
			case <-stopWatch:
				quiet <- longest
				return
			case <-time.After(5 * time.Millisecond):
			}
			if now := signs(); now != last {
				last, since = now, time.Now()
			}
			longest = max(longest, time.Since(since))
		}
	}()
	var got []byte
	buf := make([]byte, 16<<10)
	for len(got) < len(state) {
		n, err := r.Transfer().Read(buf)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		got = append(got, buf[:n]...)
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	close(stopWatch)
	longestQuiet := <-quiet
	if err := <-sent; err != nil {
		t.Fatalf("transfer: %v", err)
	}
	t.Logf("%d bytes in %v; the backup was silent for %v at most", len(got), elapsed.Round(time.Millisecond), longestQuiet.Round(time.Millisecond))
	if elapsed < 3*cfg.FailoverTimeout {
		t.Fatalf("the transfer took %v, not the 3 failover timeouts (%v) the test needs", elapsed, 3*cfg.FailoverTimeout)
	}
	if !bytes.Equal(got, state) {
		t.Fatal("the state arrived changed")
	}
	if longestQuiet > cfg.FailoverTimeout/2 {
		t.Fatalf("the primary heard nothing from the backup for %v during the transfer", longestQuiet)
	}
	finishJoin(t, s, r, 77)
	res := waitTransfer(t, readTransfer(r), time.Second)
	if res.err != nil || len(res.state) != 0 {
		t.Fatalf("after the end, the transfer gave %d bytes and %v; want io.EOF", len(res.state), res.err)
	}
}

// TestSlowTransferLink: over a link so slow that one transfer message
// takes longer than the failover timeout to arrive, the backup does not
// take the primary for dead while its bytes flow.
func TestSlowTransferLink(t *testing.T) {
	cfg := slowConfig()
	ln := listen(t)
	const perTick = 8 << 10 // per 10 ms: 800 KB/s, a full chunk in 320 ms
	addr := throttle(t, ln.Addr().String(), perTick, 10*time.Millisecond)
	s, r := connectAs(t, ln, addr, joinHello, cfg, cfg)
	state := randomBytes(3*MaxTransferChunk/2*2, 6)
	sent := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := s.Transfer().Write(state) // whole chunks
		sent <- err
	}()
	res := readTransfer(r)
	if err := <-sent; err != nil {
		t.Fatalf("transfer: %v", err)
	}
	if err := s.Err(); err != nil {
		t.Fatalf("primary after the transfer's writes: %v", err)
	}
	finishJoin(t, s, r, 1234)
	got := waitTransfer(t, res, 10*time.Second)
	elapsed := time.Since(start)
	t.Logf("%d bytes in %v", len(got.state), elapsed.Round(time.Millisecond))
	if got.err != nil || !bytes.Equal(got.state, state) {
		t.Fatalf("the transfer gave %d bytes (equal: %v) and %v", len(got.state), bytes.Equal(got.state, state), got.err)
	}
	if elapsed < 3*cfg.FailoverTimeout {
		t.Fatalf("the transfer took %v, not the 3 failover timeouts (%v) the test needs", elapsed, 3*cfg.FailoverTimeout)
	}
}

// throttle forwards one connection to target, the dialer's direction at
// perTick bytes per tick and the other at full speed, and returns its
// address.
func throttle(t *testing.T, target string, perTick int, tick time.Duration) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		down, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", target)
		if err != nil {
			down.Close()
			return
		}
		t.Cleanup(func() { down.Close(); up.Close() })
		go io.Copy(down, up)
		buf := make([]byte, perTick)
		next := time.Now()
		for {
			n, err := down.Read(buf)
			if n > 0 {
				if _, werr := up.Write(buf[:n]); werr != nil {
					return
				}
				next = next.Add(tick * time.Duration(n) / time.Duration(perTick))
				time.Sleep(time.Until(next))
			}
			if err != nil {
				up.Close()
				return
			}
		}
	}()
	return ln.Addr().String()
}

// TestTransferProgressWithoutJoin: a backup that reports progress through
// a transfer the pairing does not have is dropped.
func TestTransferProgressWithoutJoin(t *testing.T) {
	addr, peers := rawBackup(t)
	s, err := Dial(testContext(t, 10*time.Second), addr, testHello, fastConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := <-peers
	if _, err := p.conn.Write(appendControl(nil, msgTransferProgress, make([]byte, 16))); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, s.PeerLost(), 5*time.Second, "the primary to drop the backup")
	if err := s.Err(); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "transfer-progress message in a pairing without a join") {
		t.Fatalf("primary: %v", err)
	}
}

// TestTransferCloseUnblocksWrite: a Write that TCP holds back (the backup
// does not read) fails once the transfer is abandoned from another
// goroutine.
func TestTransferCloseUnblocksWrite(t *testing.T) {
	cfg := fastConfig()
	cfg.MaxQueued = MaxTransferChunk
	s, r := pairAs(t, joinHello, cfg, cfg)
	wrote := make(chan error, 1)
	go func() {
		_, err := s.Transfer().Write(make([]byte, 64<<20))
		wrote <- err
	}()
	waitFor(t, 5*time.Second, "the backup to hold all it may", func() bool { return r.Stats().TransferBytes >= 2*MaxTransferChunk })
	select {
	case err := <-wrote:
		t.Fatalf("a 64 MiB Write returned %v while the backup reads nothing", err)
	case <-time.After(50 * time.Millisecond):
	}
	s.Transfer().Close()
	select {
	case err := <-wrote:
		if err == nil || !strings.Contains(err.Error(), "abandoned") {
			t.Fatalf("Write after Close: %v, want the abandonment", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a Write blocked on TCP")
	}
	if _, err := drain(t, r, 5*time.Second); !errors.Is(err, ErrPeerLost) {
		t.Fatalf("backup: %v, want ErrPeerLost", err)
	}
}

// TestBackupDialsToJoin: a new backup dials a running primary that
// listens for joins, and the pairing is a primary's and a backup's as
// with Dial and Accept: state, the new epoch with its end, then log, then
// acks. A peer that does not join is refused, and the primary goes on
// listening.
func TestBackupDialsToJoin(t *testing.T) {
	ln := listen(t)
	ctx := testContext(t, 20*time.Second)
	primaryHello := joinHello
	primaryHello.Generation = 0
	type accepted struct {
		s   *Sender
		err error
	}
	acceptOne := func() <-chan accepted {
		ch := make(chan accepted, 1)
		go func() {
			s, err := ln.AcceptJoin(ctx, primaryHello, fastConfig())
			ch <- accepted{s, err}
		}()
		return ch
	}

	// A backup started fresh (no Join) is refused by the handshake.
	ch := acceptOne()
	fresh := testHello
	fresh.Generation = 7
	if s, err := Dial(ctx, ln.Addr().String(), fresh, fastConfig()); err == nil {
		s.Close()
		t.Fatal("a fresh primary's Dial to a join listener was accepted")
	}
	if a := <-ch; a.err == nil || !errors.As(a.err, new(*ConnError)) {
		t.Fatalf("AcceptJoin of a fresh peer: %v, want a ConnError (keep listening)", a.err)
	}
	// A joining backup that names an epoch itself is refused before it
	// connects: the primary gives it.
	withEpoch := joinHello
	withEpoch.Generation = 7
	if r, err := DialJoin(ctx, ln.Addr().String(), withEpoch, fastConfig()); err == nil {
		r.Close()
		t.Fatal("DialJoin with a generation of its own was allowed")
	}

	ch = acceptOne()
	r, err := DialJoin(ctx, ln.Addr().String(), joinHello, fastConfig())
	if err != nil {
		t.Fatalf("DialJoin: %v", err)
	}
	defer r.Close()
	a := <-ch
	if a.err != nil {
		t.Fatalf("AcceptJoin: %v", a.err)
	}
	s := a.s
	defer s.Close()
	got := readTransfer(r)
	state := randomBytes(300<<10, 3)
	if err := sendTransfer(s.Transfer(), state); err != nil {
		t.Fatal(err)
	}
	if err := s.Transfer().FinishAt(40, 9); err != nil {
		t.Fatal(err)
	}
	es := joinEntries(50, 40)
	if err := appendAll(s, es, 5); err != nil {
		t.Fatal(err)
	}
	if res := waitTransfer(t, got, 10*time.Second); res.err != nil || !bytes.Equal(res.state, state) {
		t.Fatalf("transfer: %d bytes, %v", len(res.state), res.err)
	}
	if r.JoinAtSeq() != 40 || r.JoinGeneration() != 9 {
		t.Fatalf("the transfer ended at seq %d generation %d, want 40 and 9", r.JoinAtSeq(), r.JoinGeneration())
	}
	for i := range es {
		e, err := r.Next()
		if err != nil || !e.Equal(&es[i]) {
			t.Fatalf("entry %d: %v %v", i, e, err)
		}
	}
	if err := s.WaitAcked(ctx, es[len(es)-1].Seq); err != nil {
		t.Fatal(err)
	}
}

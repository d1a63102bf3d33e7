package logchannel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
)

// Every test talks to 127.0.0.1 only, and bounds every wait.

var testHello = Hello{
	VMID:         "web-1",
	ImageSHA256:  sha256.Sum256([]byte("guest image")),
	ConfigDigest: sha256.Sum256([]byte("mem=64M")),
}

// fastConfig makes failure detection quick enough for tests and slow
// enough not to fire under -race on a loaded machine. It uses TLS, with
// credentials for testHello's VM from the tests' CA.
func fastConfig() Config {
	return withTLS(Config{HeartbeatInterval: 20 * time.Millisecond, FailoverTimeout: 2 * time.Second, HandshakeTimeout: 2 * time.Second})
}

// testCA is the CA of the tests' pair, made once per test binary.
var testCA = sync.OnceValue(func() *CA {
	ca, err := NewCA("logchannel test CA")
	if err != nil {
		panic(err)
	}
	return ca
})

// testCredentials are credentials from testCA for vmID.
func testCredentials(t testing.TB, vmID string) *Credentials {
	t.Helper()
	creds, err := testCA().Credentials(vmID, "test-host")
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

// sharedCredentials are testHello's, made once.
var sharedCredentials = sync.OnceValue(func() *Credentials {
	creds, err := testCA().Credentials(testHello.VMID, "test-host")
	if err != nil {
		panic(err)
	}
	return creds
})

// withTLS gives c testHello's credentials.
func withTLS(c Config) Config {
	c.TLS, c.InsecureNoTLS = sharedCredentials(), false
	return c
}

// inClear makes c run without TLS, for tests that read or tamper with the
// channel's messages on the wire.
func inClear(c Config) Config {
	c.TLS, c.InsecureNoTLS = nil, true
	return c
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func listen(t *testing.T) *Listener {
	t.Helper()
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// connect makes a session: a Receiver accepted on ln and a Sender dialed
// to addr (ln's address, or a proxy in front of it). Both are closed at the
// end of the test.
func connect(t *testing.T, ln *Listener, addr string, sc, rc Config) (*Sender, *Receiver) {
	t.Helper()
	return connectAs(t, ln, addr, testHello, sc, rc)
}

// connectAs is connect with hello on both sides.
func connectAs(t *testing.T, ln *Listener, addr string, hello Hello, sc, rc Config) (*Sender, *Receiver) {
	t.Helper()
	ctx := testContext(t, 10*time.Second)
	type accepted struct {
		r   *Receiver
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		r, err := ln.Accept(ctx, hello, rc)
		ch <- accepted{r, err}
	}()
	s, err := Dial(ctx, addr, hello, sc)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	a := <-ch
	if a.err != nil {
		s.Close()
		t.Fatalf("accept: %v", a.err)
	}
	t.Cleanup(func() {
		s.Close()
		a.r.Close()
	})
	return s, a.r
}

func pair(t *testing.T, sc, rc Config) (*Sender, *Receiver) {
	ln := listen(t)
	return connect(t, ln, ln.Addr().String(), sc, rc)
}

// testEntries makes a valid log of n entries: a Start, then a mix of kinds
// at increasing exits.
func testEntries(n int) []replay.Entry {
	es := make([]replay.Entry, 0, n)
	var exit, tsc uint64
	for seq := uint64(1); seq <= uint64(n); seq++ {
		var e replay.Entry
		if seq == 1 {
			e = replay.Entry{Kind: replay.KindStart, Start: replay.StartInfo{
				ImageSHA256: testHello.ImageSHA256, ConfigDigest: testHello.ConfigDigest, VMID: testHello.VMID, Config: "mem=64M",
			}}
		} else {
			exit++
			rip := 0x100000 + (seq%13)*0x40
			switch seq % 8 {
			case 0, 4:
				tsc += 1000 + seq%7
				e = replay.Entry{Kind: replay.KindTSC, Value: tsc}
			case 1:
				out := []byte("line " + string(rune('a'+seq%26)) + "\n")
				e = replay.Entry{Kind: replay.KindOutput, OutputKind: replay.OutputConsole, Length: uint64(len(out)), Hash: replay.OutputHash(out)}
			case 2:
				e = replay.Entry{Kind: replay.KindConsoleRead, Data: bytes.Repeat([]byte{byte(seq)}, int(seq%50))}
			case 3:
				e = replay.Entry{Kind: replay.KindRandom, Value: seq * 0x9e3779b97f4a7c15}
			case 5:
				e = replay.Entry{Kind: replay.KindClock, Clock: replay.ClockRealtime, Value: 1.7e18 + seq*1000}
			case 6:
				e = replay.Entry{Kind: replay.KindWait, Value: uint64(replay.WaitTimeout)}
			case 7:
				e = replay.Entry{Kind: replay.KindCheckpoint, Hash: seq, Regs: replay.Regs{RAX: seq, RSP: 0x7000, RIP: rip}}
			}
			e.Exit, e.RIP = exit, rip
		}
		e.Seq = seq
		es = append(es, e)
	}
	return es
}

// bigEntries makes n disk-read entries of size bytes each, starting at seq
// 1 and exit 1.
func bigEntries(n, size int) []replay.Entry {
	es := make([]replay.Entry, n)
	for i := range es {
		data := make([]byte, size)
		for j := range data {
			data[j] = byte(i + j)
		}
		es[i] = replay.Entry{Seq: uint64(i + 1), Kind: replay.KindDiskRead, Exit: uint64(i + 1), RIP: 0x100000, Data: data}
	}
	return es
}

// drain calls Next until it fails and returns the entries and the error.
func drain(t *testing.T, r *Receiver, within time.Duration) ([]replay.Entry, error) {
	t.Helper()
	type result struct {
		es  []replay.Entry
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var es []replay.Entry
		for {
			e, err := r.Next()
			if err != nil {
				ch <- result{es, err}
				return
			}
			es = append(es, e)
		}
	}()
	select {
	case res := <-ch:
		return res.es, res.err
	case <-time.After(within):
		t.Fatalf("Next did not fail within %v", within)
		return nil, nil
	}
}

// samePrefix checks got is exactly want[:len(got)].
func samePrefix(t *testing.T, got, want []replay.Entry) {
	t.Helper()
	if len(got) > len(want) {
		t.Fatalf("received %d entries, only %d were sent", len(got), len(want))
	}
	for i := range got {
		if !got[i].Equal(&want[i]) {
			t.Fatalf("entry %d: received %v, sent %v", i, got[i], want[i])
		}
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func waitClosed(t *testing.T, ch <-chan struct{}, d time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-ch:
		return time.Since(start)
	case <-time.After(d):
		t.Fatalf("%s did not happen within %v", what, d)
		return 0
	}
}

// countEntries decodes a log stream prefix and returns its entries; the
// stream may end anywhere.
func decodeAll(b []byte) []replay.Entry {
	dec := replay.NewDecoder(bytes.NewReader(b))
	var es []replay.Entry
	for {
		e, err := dec.Next()
		if err != nil {
			return es
		}
		es = append(es, e)
	}
}

// proxy sits between the primary and the backup and lets a test corrupt,
// cut or freeze the traffic. It understands the framing of the primary's
// direction (preamble, then type-length messages) so that a test can aim at
// a log message; the other direction it copies as bytes.
type proxy struct {
	t      *testing.T
	ln     net.Listener
	target string

	// onLog sees each log message the primary sends (n counts them from
	// 1) and returns the body to forward and, if cut >= 0, the number of
	// body bytes after which to cut both connections. nil forwards all.
	onLog func(n int, body []byte) (out []byte, cut int)

	frozen atomic.Bool
	closed chan struct{}

	mu       sync.Mutex
	conns    []*net.TCPConn
	intact   bytes.Buffer // log bytes forwarded before the first tampered message
	tampered bool
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln, target: target, closed: make(chan struct{})}
	t.Cleanup(p.close)
	go p.serve()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	down, err := p.ln.Accept()
	if err != nil {
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		down.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, down.(*net.TCPConn), up.(*net.TCPConn))
	p.mu.Unlock()
	if p.onLog == nil {
		// Bytes only: this works over TLS too.
		go p.forwardBytes(down, up)
	} else {
		go p.forwardMessages(down, up)
	}
	go p.forwardBytes(up, down)
}

// wait blocks while the proxy is frozen; false once it is closed.
func (p *proxy) wait() bool {
	for p.frozen.Load() {
		select {
		case <-p.closed:
			return false
		case <-time.After(2 * time.Millisecond):
		}
	}
	select {
	case <-p.closed:
		return false
	default:
		return true
	}
}

func (p *proxy) forwardBytes(from, to net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 && (!p.wait() || writeAll(to, buf[:n]) != nil) {
			return
		}
		if err != nil {
			p.cut()
			return
		}
	}
}

func writeAll(w io.Writer, b []byte) error {
	_, err := w.Write(b)
	return err
}

// forwardMessages copies the primary's direction message by message.
func (p *proxy) forwardMessages(from, to net.Conn) {
	r := bufio.NewReader(from)
	pre := make([]byte, preambleLen)
	if _, err := io.ReadFull(r, pre); err != nil || writeAll(to, pre) != nil {
		p.cut()
		return
	}
	for logs := 0; ; {
		hdr := make([]byte, headerLen)
		if _, err := io.ReadFull(r, hdr); err != nil {
			p.cut()
			return
		}
		body := make([]byte, binary.LittleEndian.Uint32(hdr[1:]))
		if _, err := io.ReadFull(r, body); err != nil {
			p.cut()
			return
		}
		cut := -1
		if msgType(hdr[0]) == msgLog {
			logs++
			out := body
			if p.onLog != nil {
				out, cut = p.onLog(logs, bytes.Clone(body))
			}
			p.mu.Lock()
			if cut >= 0 || !bytes.Equal(out, body) {
				p.tampered = true
			}
			if !p.tampered {
				p.intact.Write(body)
			}
			p.mu.Unlock()
			body = out
		}
		if !p.wait() {
			return
		}
		if cut >= 0 {
			writeAll(to, append(hdr, body[:cut]...))
			time.Sleep(20 * time.Millisecond) // let the bytes arrive before the reset
			p.cut()
			return
		}
		if writeAll(to, append(hdr, body...)) != nil {
			p.cut()
			return
		}
	}
}

// intactEntries are the entries of the log messages forwarded before the
// first tampered one: what the backup must have received.
func (p *proxy) intactEntries() []replay.Entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	return decodeAll(p.intact.Bytes())
}

// cut resets both connections.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.SetLinger(0) // close with a RST, as a crashed host's kernel would
		c.Close()
	}
}

func (p *proxy) close() {
	select {
	case <-p.closed:
		return
	default:
	}
	close(p.closed)
	p.ln.Close()
	p.cut()
}

// rawPeer is a hand-driven end of a connection, for misbehaving peers.
type rawPeer struct {
	conn net.Conn
	mr   *msgReader
}

// rawHandshake runs a correct handshake as side on conn, TLS first if
// cfg has credentials.
func rawHandshake(t *testing.T, conn net.Conn, side role, cfg Config) *rawPeer {
	t.Helper()
	p, err := tryRawHandshake(conn, side, cfg)
	if err != nil {
		t.Fatalf("raw %v handshake: %v", side, err)
	}
	return p
}

func tryRawHandshake(conn net.Conn, side role, cfg Config) (*rawPeer, error) {
	return tryRawHandshakeAs(conn, testHello, side, cfg)
}

func tryRawHandshakeAs(conn net.Conn, hello Hello, side role, cfg Config) (*rawPeer, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if cfg.TLS != nil {
		if conn, err = startTLS(conn, cfg.TLS, testHello.VMID, side, cfg.HandshakeTimeout); err != nil {
			return nil, err
		}
	}
	mr, err := handshake(conn, &hello, side, &cfg)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return &rawPeer{conn: conn, mr: mr}, nil
}

// rawBackup accepts one connection on a plain TCP listener and completes
// the handshake as the backup, with fastConfig's TLS; dial a Sender to
// the returned address.
func rawBackup(t *testing.T) (addr string, peer <-chan *rawPeer) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan *rawPeer, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		t.Cleanup(func() { conn.Close() })
		p, err := tryRawHandshake(conn, roleBackup, fastConfig())
		if err != nil {
			conn.Close()
			return
		}
		ch <- p
	}()
	return ln.Addr().String(), ch
}

// rawPrimary dials ln and completes the handshake as the primary, while
// Accept runs with rc (TLS or not, as rc says); it returns the raw end and
// the Receiver.
func rawPrimary(t *testing.T, rc Config) (*rawPeer, *Receiver) {
	t.Helper()
	return rawPrimaryAs(t, testHello, rc)
}

// rawPrimaryAs is rawPrimary with hello on both sides.
func rawPrimaryAs(t *testing.T, hello Hello, rc Config) (*rawPeer, *Receiver) {
	t.Helper()
	ln := listen(t)
	ctx := testContext(t, 10*time.Second)
	type accepted struct {
		r   *Receiver
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		r, err := ln.Accept(ctx, hello, rc)
		ch <- accepted{r, err}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p, err := tryRawHandshakeAs(conn, hello, rolePrimary, rc)
	if err != nil {
		t.Fatalf("raw primary handshake: %v", err)
	}
	a := <-ch
	if a.err != nil {
		t.Fatalf("accept: %v", a.err)
	}
	t.Cleanup(func() { a.r.Close() })
	return p, a.r
}

// sendLog sends a log message holding b.
func (p *rawPeer) sendLog(t *testing.T, b []byte) {
	t.Helper()
	if _, err := p.conn.Write(append(appendHeader(nil, msgLog, len(b)), b...)); err != nil {
		t.Fatalf("raw peer write: %v", err)
	}
}

// encodeLog returns the log stream bytes of es: the stream header and one
// frame per entry group of per.
func encodeLog(t *testing.T, es []replay.Entry, per int) [][]byte {
	t.Helper()
	var w chunkWriter
	enc := replay.NewEncoder(&w)
	for i := range es {
		if err := enc.Append(es[i]); err != nil {
			t.Fatal(err)
		}
		if (i+1)%per == 0 {
			if err := enc.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}
	return w.chunks
}

// chunkWriter keeps each Write apart: one per encoder Flush.
type chunkWriter struct{ chunks [][]byte }

func (w *chunkWriter) Write(p []byte) (int, error) {
	w.chunks = append(w.chunks, bytes.Clone(p))
	return len(p), nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

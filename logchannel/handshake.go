package logchannel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Hello says which VM a side replicates. A primary and a backup work
// together only if their Hellos are equal: the same VM, the same guest
// image and the same configuration, or the backup's replay would diverge
// (or, worse, not diverge visibly) from the primary's run.
type Hello struct {
	// VMID names the protected VM; at most MaxVMIDLen bytes. It keeps a
	// backup of one VM from replaying the log of another that happens to
	// run the same image.
	VMID string
	// Generation numbers the pairing of a primary with a backup (the
	// split-brain arbiter decides once per VM id and generation): a
	// primary of an earlier pairing that comes back must not feed a backup
	// of the current one.
	Generation uint64
	// ImageSHA256 is the SHA-256 of the guest image
	// (replay.StartInfo.ImageSHA256).
	ImageSHA256 [32]byte
	// ConfigDigest is the digest of the VM's configuration
	// (replay.StartInfo.ConfigDigest).
	ConfigDigest [32]byte
	// Join makes the pairing a joining one: the guest already runs on the
	// primary, which first sends the backup its state (Sender.Transfer,
	// Receiver.Transfer) and then the log from the entry after the one
	// the state was taken at (Receiver.JoinAtSeq). Without Join the backup
	// replays the log from the guest's first instruction. Both sides must
	// say the same: a backup started to join has no guest to replay from
	// the start, and one started fresh has not asked for a state; a
	// mismatch is refused in the handshake, so each side knows what the
	// session holds before it starts.
	Join bool
}

// role is the part a side plays: Dial is the primary's, Accept the
// backup's. It is on the wire so that two sides that both think they are
// the primary (or the backup) refuse each other.
type role uint8

const (
	rolePrimary role = 1
	roleBackup  role = 2
)

func (r role) String() string {
	switch r {
	case rolePrimary:
		return "primary"
	case roleBackup:
		return "backup"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

func (r role) peer() role { return 3 - r }

// ErrRefused is matched by errors.Is for every *RefusedError: retrying
// the same peer with the same Hello cannot succeed.
var ErrRefused = errors.New("logchannel: session refused")

// ErrNotFTVM is wrapped by the error for a peer that does not open with
// the channel's magic: something else connected (an HTTP client, a port
// scanner) or we dialed something else.
var ErrNotFTVM = errors.New("peer is not an ftvm logging channel")

// RefusedError is the error for a handshake in which a side refused the
// session because the two sides' Hellos, roles, protocol versions or
// heartbeat settings do not fit together. Both sides get one.
type RefusedError struct {
	// Peer is the peer's address.
	Peer string
	// Reason says what differs, from the point of view of the side that
	// refused ("peer runs guest image 3cc6... but this side runs
	// 7a62..."); several differences are separated by "; ".
	Reason string
	// ByPeer is true when the peer refused and this side did not (then
	// Reason is the peer's, and "peer" in it means this side).
	ByPeer bool
}

// Is makes errors.Is(err, ErrRefused) true.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

func (e *RefusedError) Error() string {
	if e.ByPeer {
		return fmt.Sprintf("logchannel: %s refused the session; it says: %s", e.Peer, e.Reason)
	}
	return fmt.Sprintf("logchannel: refused the session with %s: %s", e.Peer, e.Reason)
}

func (h *Hello) check() error {
	if len(h.VMID) > MaxVMIDLen {
		return fmt.Errorf("logchannel: vm id of %d bytes, more than %d", len(h.VMID), MaxVMIDLen)
	}
	return nil
}

// helloFields are the facts of a hello message of version 3:
//
//	role u8 | heartbeat interval u32 LE (microseconds) | generation u64 LE |
//	image [32] | config digest [32] | flags u8 | vm id length u8 | vm id
//
// flags: bit 0 is Join; the other bits are zero.
//
// The message's body is these, then the session binding (binding length
// u8, binding), then the CRC.
func appendHelloFields(b []byte, h *Hello, side role, heartbeat time.Duration) []byte {
	b = append(b, byte(side))
	b = binary.LittleEndian.AppendUint32(b, uint32(min(heartbeat.Microseconds(), 1<<32-1)))
	b = binary.LittleEndian.AppendUint64(b, h.Generation)
	b = append(b, h.ImageSHA256[:]...)
	b = append(b, h.ConfigDigest[:]...)
	var flags byte
	if h.Join {
		flags |= helloFlagJoin
	}
	b = append(b, flags, byte(len(h.VMID)))
	return append(b, h.VMID...)
}

type peerHello struct {
	Hello
	role      role
	heartbeat time.Duration
	facts     []byte // the fields the binding covers
	binding   []byte
}

const (
	helloFixedLen        = 1 + 4 + 8 + 32 + 32 + 1 + 1
	helloFlagJoin   byte = 1
	helloKnownFlags      = helloFlagJoin
)

// appendBinding appends a hello's session binding (helloBinding).
func appendBinding(b, binding []byte) []byte {
	b = append(b, byte(len(binding)))
	return append(b, binding...)
}

func parseHelloFields(f []byte) (peerHello, bool) {
	var p peerHello
	if len(f) < helloFixedLen {
		return p, false
	}
	end := helloFixedLen + int(f[helloFixedLen-1])
	if len(f) < end+1 || len(f) != end+1+int(f[end]) {
		return p, false
	}
	p.facts, p.binding = f[:end], f[end+1:]
	f = f[:end]
	p.role = role(f[0])
	p.heartbeat = time.Duration(binary.LittleEndian.Uint32(f[1:])) * time.Microsecond
	p.Generation = binary.LittleEndian.Uint64(f[5:])
	copy(p.ImageSHA256[:], f[13:45])
	copy(p.ConfigDigest[:], f[45:77])
	if f[77]&^helloKnownFlags != 0 {
		return p, false
	}
	p.Join = f[77]&helloFlagJoin != 0
	p.VMID = string(f[helloFixedLen:])
	return p, true
}

// verdict fields: accept u8 (1 accept, 0 refuse) | reason length u16 LE |
// reason.
func appendVerdictFields(b []byte, reason string) []byte {
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	accept := byte(0)
	if reason == "" {
		accept = 1
	}
	b = append(b, accept)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(reason)))
	return append(b, reason...)
}

func parseVerdictFields(f []byte) (accept bool, reason string, ok bool) {
	if len(f) < 3 || f[0] > 1 || len(f) != 3+int(binary.LittleEndian.Uint16(f[1:])) {
		return false, "", false
	}
	reason = string(f[3:])
	return f[0] == 1 && reason == "", reason, true
}

// shortHex prints the start of a digest, enough to tell two apart.
func shortHex(d [32]byte) string { return hex.EncodeToString(d[:6]) + "..." }

// mismatch says how the peer's hello differs from what this side needs,
// or "" if it fits.
func mismatch(own *Hello, ownRole role, cfg *Config, p *peerHello) string {
	var diffs []string
	if p.role != ownRole.peer() {
		if p.role == ownRole {
			diffs = append(diffs, fmt.Sprintf("peer is a %v but this side is the %v", p.role, ownRole))
		} else {
			diffs = append(diffs, fmt.Sprintf("peer claims %v, this side needs a %v", p.role, ownRole.peer()))
		}
	}
	if p.VMID != own.VMID {
		diffs = append(diffs, fmt.Sprintf("peer protects VM %q but this side VM %q", p.VMID, own.VMID))
	}
	if p.Generation != own.Generation {
		diffs = append(diffs, fmt.Sprintf("peer is of generation %d but this side of generation %d", p.Generation, own.Generation))
	}
	if p.ImageSHA256 != own.ImageSHA256 {
		diffs = append(diffs, fmt.Sprintf("peer runs guest image %s but this side runs %s", shortHex(p.ImageSHA256), shortHex(own.ImageSHA256)))
	}
	if p.ConfigDigest != own.ConfigDigest {
		diffs = append(diffs, fmt.Sprintf("peer has config digest %s but this side has %s", shortHex(p.ConfigDigest), shortHex(own.ConfigDigest)))
	}
	if p.Join != own.Join {
		diffs = append(diffs, fmt.Sprintf("peer %s but this side %s", joinWords(p.Join), joinWords(own.Join)))
	}
	if cfg.FailoverTimeout < 2*p.heartbeat {
		diffs = append(diffs, fmt.Sprintf("peer sends heartbeats every %v but this side's failover timeout is %v, less than twice that", p.heartbeat, cfg.FailoverTimeout))
	}
	return strings.Join(diffs, "; ")
}

func joinWords(join bool) string {
	if join {
		return "starts the backup from a state transfer (a joining pairing)"
	}
	return "starts the backup from the guest's first instruction"
}

// notFTVM builds the error for a peer whose first bytes are not the
// magic, with a guess at what it is.
func notFTVM(peer string, got []byte) error {
	hint := ""
	switch {
	case len(got) == 0:
	case bytes.HasPrefix(got, []byte("GET ")), bytes.HasPrefix(got, []byte("POST ")), bytes.HasPrefix(got, []byte("HEAD ")),
		bytes.HasPrefix(got, []byte("PUT ")), bytes.HasPrefix(got, []byte("HTTP/")):
		hint = " (HTTP?)"
	case got[0] == 0x16:
		hint = " (a TLS handshake: does the peer use TLS while this side runs with InsecureNoTLS?)"
	case bytes.HasPrefix(got, []byte("SSH-")):
		hint = " (SSH?)"
	}
	return fmt.Errorf("logchannel: %s: %w: it sent %q where the magic %q belongs%s", peer, ErrNotFTVM, got, Magic, hint)
}

// handshake runs this side's half of the handshake on conn (deadline
// already set) and returns the reader of the session, which may hold
// bytes the peer sent after its verdict.
//
// Both sides do the same: send the preamble and a hello, read the peer's,
// compare, send a verdict, read the peer's verdict. The session starts only
// if both accept. Each side reads everything the other sends before it
// closes, so that a refusal is never lost to a connection reset.
func handshake(conn net.Conn, own *Hello, side role, cfg *Config) (*msgReader, error) {
	peer := conn.RemoteAddr().String()
	timedOut := func(err error) bool {
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout()
	}
	ioFailed := func(what string, err error) error {
		switch {
		case timedOut(err):
			return fmt.Errorf("logchannel: handshake with %s: no %s within %v (is it an ftvm logging channel?): %w", peer, what, cfg.HandshakeTimeout, err)
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return fmt.Errorf("logchannel: handshake with %s: the connection ended before the %s: %w", peer, what, err)
		}
		return fmt.Errorf("logchannel: handshake with %s: %s: %w", peer, what, err)
	}

	facts := appendHelloFields(nil, own, side, cfg.HeartbeatInterval)
	binding, err := helloBinding(conn, facts)
	if err != nil {
		return nil, fmt.Errorf("logchannel: handshake with %s: binding the hello to the TLS session: %w", peer, err)
	}
	out := appendPreamble(nil, cfg.version)
	out = appendControl(out, msgHello, appendBinding(facts, binding))
	if _, err := conn.Write(out); err != nil {
		return nil, ioFailed("sending the hello", err)
	}

	br := bufio.NewReaderSize(conn, 64<<10)
	var pre [preambleLen]byte
	n, err := io.ReadFull(br, pre[:])
	// Judge the bytes that came even if the peer stopped short: three
	// bytes of "GET" say more than "unexpected EOF".
	if m := min(n, len(Magic)); string(pre[:m]) != Magic[:m] {
		// Read a little more for a better guess, without waiting long.
		got := pre[:n]
		if n == len(pre) {
			conn.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			more, _ := br.Peek(22)
			got = append(got, more...)
		}
		return nil, notFTVM(peer, got)
	}
	if isRemoteAlert(err) {
		return nil, &AuthError{Peer: peer, Reason: fmt.Sprintf("it sent the TLS alert %q", alertText(err)), ByPeer: true, Err: err}
	}
	if err != nil && cfg.TLS == nil && n == 0 && errors.Is(err, io.EOF) {
		// What a side that requires TLS does to a side in clear.
		return nil, fmt.Errorf("logchannel: handshake with %s: the connection ended before the preamble (does the peer require TLS while this side runs in clear?): %w", peer, err)
	}
	if err != nil {
		return nil, ioFailed("preamble", err)
	}
	mr := newMsgReader(br, "the peer")
	mr.off = int64(preambleLen)
	peerVersion := binary.LittleEndian.Uint16(pre[len(Magic):])

	fields, err := readHelloOrVerdict(mr, msgHello)
	if isRemoteAlert(err) {
		return nil, &AuthError{Peer: peer, Reason: fmt.Sprintf("it sent the TLS alert %q", alertText(err)), ByPeer: true, Err: err}
	}
	if err != nil {
		return nil, ioFailed("hello", err)
	}
	var reason string
	if peerVersion != cfg.version {
		reason = fmt.Sprintf("peer speaks protocol version %d but this side speaks %d", peerVersion, cfg.version)
	} else {
		p, ok := parseHelloFields(fields)
		if !ok {
			return nil, fmt.Errorf("logchannel: handshake with %s: malformed hello: %w", peer, ErrProtocol)
		}
		want, err := helloBinding(conn, p.facts)
		if err != nil {
			return nil, fmt.Errorf("logchannel: handshake with %s: binding the hello to the TLS session: %w", peer, err)
		}
		if !hmac.Equal(p.binding, want) {
			// A hello replayed from another session, or one made by a
			// side that does not hold this session's keys.
			return nil, &AuthError{Peer: peer, Reason: "the peer's hello is not bound to this TLS session"}
		}
		reason = mismatch(own, side, cfg, &p)
	}

	_, werr := conn.Write(appendControl(nil, msgVerdict, appendVerdictFields(nil, reason)))
	var peerReason string
	var rerr error
	if werr == nil {
		var f []byte
		if f, rerr = readHelloOrVerdict(mr, msgVerdict); isRemoteAlert(rerr) {
			// The backup checks the primary's certificate after the
			// primary's TLS handshake is done; its refusal comes here.
			return nil, &AuthError{Peer: peer, Reason: fmt.Sprintf("it sent the TLS alert %q", alertText(rerr)), ByPeer: true, Err: rerr}
		} else if rerr == nil {
			accept, why, ok := parseVerdictFields(f)
			switch {
			case !ok:
				rerr = fmt.Errorf("malformed verdict: %w", ErrProtocol)
			case !accept:
				peerReason = why
				if peerReason == "" {
					peerReason = "(no reason given)"
				}
			}
		}
	}
	// This side's own finding comes first: it is worded for this side,
	// and it stands even if the peer hung up before its verdict arrived.
	switch {
	case reason != "":
		return nil, &RefusedError{Peer: peer, Reason: reason}
	case werr != nil:
		return nil, ioFailed("sending the verdict", werr)
	case rerr != nil:
		return nil, ioFailed("verdict", rerr)
	case peerReason != "":
		return nil, &RefusedError{Peer: peer, Reason: peerReason, ByPeer: true}
	}
	return mr, nil
}

// readHelloOrVerdict reads a handshake message of type t and returns its
// fields, valid until the next read.
func readHelloOrVerdict(mr *msgReader, t msgType) ([]byte, error) {
	_, size, err := mr.readHeader(t)
	if err != nil {
		return nil, err
	}
	if size > maxHandshakeLen {
		return nil, mr.protocolError("%v message of %d bytes, over the limit of %d", t, size, maxHandshakeLen)
	}
	return mr.readControl(t, size, maxHandshakeLen, false)
}

// aLongTimeAgo is a deadline in the past: setting it wakes a blocked call.
var aLongTimeAgo = time.Unix(1, 0)

// interruptOnCancel makes a cancellation of ctx set a deadline in the past
// with setDeadline, which wakes a blocked Accept, Read or Write. stop ends
// the watch and reports whether ctx was cancelled (after stop returns, the
// deadline is no longer touched).
func interruptOnCancel(ctx context.Context, setDeadline func(time.Time) error) (stop func() (cancelled bool)) {
	if ctx.Done() == nil {
		return func() bool { return false }
	}
	done := make(chan struct{})
	fired := make(chan bool, 1)
	go func() {
		select {
		case <-ctx.Done():
			setDeadline(aLongTimeAgo)
			fired <- true
		case <-done:
			fired <- false
		}
	}()
	return func() bool {
		close(done)
		return <-fired
	}
}

// runHandshake runs the handshake on a new connection, TLS first unless
// cfg says to run in clear, bounded by the handshake timeout and by ctx.
// It returns the connection the session runs on.
func runHandshake(ctx context.Context, conn net.Conn, own *Hello, side role, cfg *Config) (net.Conn, *msgReader, error) {
	// The handshake's messages quote the timeout that applies, which is
	// ctx's if it ends first.
	hc := *cfg
	deadline := time.Now().Add(hc.HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
		hc.HandshakeTimeout = time.Until(d).Round(time.Millisecond)
	}
	conn.SetDeadline(deadline)
	stop := interruptOnCancel(ctx, conn.SetDeadline)
	var mr *msgReader
	var err error
	if cfg.TLS != nil {
		var secured net.Conn
		if secured, err = startTLS(conn, cfg.TLS, own.VMID, side, hc.HandshakeTimeout); err == nil {
			conn = secured
		}
	}
	if err == nil {
		mr, err = handshake(conn, own, side, &hc)
	}
	if stop() || ctx.Err() != nil {
		return nil, nil, fmt.Errorf("logchannel: handshake with %s: %w", conn.RemoteAddr(), context.Cause(ctx))
	}
	if err != nil {
		return nil, nil, err
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, nil, fmt.Errorf("logchannel: handshake with %s: %w", conn.RemoteAddr(), err)
	}
	if side == rolePrimary {
		mr.from = "the backup"
	} else {
		mr.from = "the primary"
	}
	return conn, mr, nil
}

// Dial connects the primary to the backup listening at addr, runs the
// handshake and returns the Sender of the log. hello is this VM's; the
// backup must have the same. ctx bounds the dial and the handshake only,
// as with net.Dialer: once Dial returns, Close ends the session. A refused
// handshake returns a *RefusedError, a peer that is not an ftvm logging
// channel an error wrapping ErrNotFTVM.
func Dial(ctx context.Context, addr string, hello Hello, cfg Config) (*Sender, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := hello.check(); err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("logchannel: dialing the backup at %s: %w", addr, err)
	}
	session, mr, err := runHandshake(ctx, conn, &hello, rolePrimary, &cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	s, err := newSender(session, mr, cfg, hello.Join)
	if err != nil {
		session.Close()
		return nil, err
	}
	return s, nil
}

// Listener is the backup's end: it accepts the primary's connection.
type Listener struct {
	ln *net.TCPListener
}

// Listen listens for the primary on the TCP address addr ("host:port";
// port 0 picks a free one, see Addr).
func Listen(addr string) (*Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("logchannel: %w", err)
	}
	return &Listener{ln: ln.(*net.TCPListener)}, nil
}

// Addr is the address the Listener listens on.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops listening. Receivers already accepted are not affected.
func (l *Listener) Close() error { return l.ln.Close() }

// Accept waits for a primary to connect, runs the handshake, and returns
// the Receiver of its log. expect is this VM's Hello, which the primary's
// must equal. ctx bounds the wait and the handshake.
//
// A connection whose handshake fails (a *RefusedError, a peer that is not
// ftvm, a peer silent past the handshake timeout) is closed and its error
// returned; the Listener stays open, so the caller may log the error and
// Accept again. One Accept at a time.
func (l *Listener) Accept(ctx context.Context, expect Hello, cfg Config) (*Receiver, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := expect.check(); err != nil {
		return nil, err
	}
	conn, err := l.accept(ctx)
	if err != nil {
		return nil, err
	}
	session, mr, err := runHandshake(ctx, conn, &expect, roleBackup, &cfg)
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, &ConnError{err}
	}
	return newReceiver(session, mr, cfg, expect.Join), nil
}

// DialJoin connects a new backup to a running primary listening for
// joins at addr (Listener.AcceptJoin), runs the handshake as the backup
// and returns the Receiver of the joining pairing: the state transfer
// (Receiver.Transfer), then the log. hello must say Join and leave
// Generation 0: the primary takes the new pairing's epoch once it has
// authenticated the backup and knows it will take it, and sends it with
// the end of the transfer (Receiver.JoinGeneration). The connection runs the other way from Dial's, nothing else differs: the
// TLS roles, the handshake and the session are a primary's and a
// backup's as always.
func DialJoin(ctx context.Context, addr string, hello Hello, cfg Config) (*Receiver, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := hello.check(); err != nil {
		return nil, err
	}
	if !hello.Join || hello.Generation != 0 {
		return nil, errors.New("logchannel: DialJoin needs a Hello with Join and generation 0 (the primary gives the pairing's epoch with the transfer)")
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("logchannel: dialing the primary at %s: %w", addr, err)
	}
	session, mr, err := runHandshake(ctx, conn, &hello, roleBackup, &cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return newReceiver(session, mr, cfg, true), nil
}

// AcceptJoin waits for a backup that joins the running primary (DialJoin),
// runs the handshake as the primary and returns the Sender of the joining
// pairing: expect must say Join and leave Generation 0. The caller takes
// the new pairing's epoch and ends the transfer with it (FinishAt). Failures are as Accept's: a
// *ConnError leaves the Listener open for the next one.
func (l *Listener) AcceptJoin(ctx context.Context, expect Hello, cfg Config) (*Sender, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if !expect.Join || expect.Generation != 0 {
		return nil, errors.New("logchannel: AcceptJoin needs a Hello with Join and generation 0 (the epoch goes with the transfer)")
	}
	if err := expect.check(); err != nil {
		return nil, err
	}
	conn, err := l.accept(ctx)
	if err != nil {
		return nil, err
	}
	session, mr, err := runHandshake(ctx, conn, &expect, rolePrimary, &cfg)
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, &ConnError{err}
	}
	s, err := newSender(session, mr, cfg, true)
	if err != nil {
		session.Close()
		return nil, &ConnError{err}
	}
	return s, nil
}

// accept takes the next TCP connection, or fails when ctx ends.
func (l *Listener) accept(ctx context.Context) (net.Conn, error) {
	l.ln.SetDeadline(time.Time{})
	stop := interruptOnCancel(ctx, l.ln.SetDeadline)
	conn, err := l.ln.Accept()
	cancelled := stop()
	l.ln.SetDeadline(time.Time{})
	if cancelled || ctx.Err() != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("logchannel: accepting on %s: %w", l.Addr(), context.Cause(ctx))
	}
	if err != nil {
		return nil, fmt.Errorf("logchannel: accepting on %s: %w", l.Addr(), err)
	}
	return conn, nil
}

// ConnError is an Accept that failed because of the one connection it
// took (a stray connect, a port scanner, an HTTP client, a peer without
// the pair's certificate, a primary with another configuration), not
// because of the listener: the caller may accept again.
type ConnError struct{ Err error }

func (e *ConnError) Error() string { return e.Err.Error() }
func (e *ConnError) Unwrap() error { return e.Err }

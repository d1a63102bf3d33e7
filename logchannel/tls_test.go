package logchannel

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
)

// otherCA is a CA that is not the pair's.
var otherCA = sync.OnceValue(func() *CA {
	ca, err := NewCA("someone else's CA")
	if err != nil {
		panic(err)
	}
	return ca
})

// strangers are credentials that must not get into the pair: nil means no
// certificate at all.
func strangers(t *testing.T) []struct {
	name  string
	creds *Credentials
} {
	fromOtherCA, err := otherCA().Credentials(testHello.VMID, "intruder")
	if err != nil {
		t.Fatal(err)
	}
	// An intruder's certificate from another CA, trusting the pair's CA,
	// so that only the check of its own certificate can stop it.
	fromOtherCA.CA = sharedCredentials().CA
	return []struct {
		name  string
		creds *Credentials
	}{
		{"no certificate", nil},
		{"another CA", fromOtherCA},
		{"another VM", testCredentials(t, "db-7")},
	}
}

// strangerTLS is the TLS configuration of a stranger playing side: it
// checks nothing of the peer, so that what is refused is its own
// certificate.
func strangerTLS(creds *Credentials, side role) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, ClientAuth: tls.RequestClientCert}
	if creds != nil {
		c.Certificates = []tls.Certificate{creds.Certificate}
	}
	if side == roleBackup && creds == nil {
		// A TLS server must have a certificate: a self-signed one for
		// the right VM id, from a CA nobody trusts.
		ca, _ := NewCA("self-signed")
		own, _ := ca.Credentials(testHello.VMID, "self")
		c.Certificates = []tls.Certificate{own.Certificate}
	}
	return c
}

// strangerHandshake plays side over TLS with cfg and then the channel's
// handshake, as a stranger that knows the protocol would.
func strangerHandshake(conn net.Conn, tc *tls.Config, side role) error {
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	var sc *tls.Conn
	if side == rolePrimary {
		sc = tls.Client(conn, tc)
	} else {
		sc = tls.Server(conn, tc)
	}
	if err := sc.Handshake(); err != nil {
		return err
	}
	cfg, _ := fastConfig().withDefaults()
	_, err := handshake(secureConn{sc}, &testHello, side, &cfg)
	return err
}

// TestTLSRefusesStrangers: a primary without the pair's certificate (none,
// one from another CA, one for another VM) is refused by the backup, which
// goes on listening; a backup without it is refused by the primary. Both
// ends of each connection fail.
func TestTLSRefusesStrangers(t *testing.T) {
	for _, st := range strangers(t) {
		t.Run("primary/"+strings.ReplaceAll(st.name, " ", "_"), func(t *testing.T) {
			ln := listen(t)
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			strangerErr := make(chan error, 1)
			go func() { strangerErr <- strangerHandshake(conn, strangerTLS(st.creds, rolePrimary), rolePrimary) }()
			r, err := ln.Accept(testContext(t, 5*time.Second), testHello, fastConfig())
			if r != nil {
				r.Close()
				t.Fatal("the backup accepted a stranger")
			}
			t.Logf("backup: %v", err)
			var ce *ConnError
			if !errors.As(err, &ce) || !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("backup: %v, want a ConnError matching ErrUnauthenticated", err)
			}
			serr := <-strangerErr
			t.Logf("stranger: %v", serr)
			if serr == nil {
				t.Fatal("the stranger primary's handshake went through")
			}
			// The listener still takes the real primary.
			s, rr := connect(t, ln, ln.Addr().String(), fastConfig(), fastConfig())
			e := testEntries(1)[0]
			if err := s.Append(e); err != nil {
				t.Fatal(err)
			}
			if got, err := rr.Next(); err != nil || !got.Equal(&e) {
				t.Fatalf("after the stranger: %v, %v", got, err)
			}
		})
		t.Run("backup/"+strings.ReplaceAll(st.name, " ", "_"), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			strangerErr := make(chan error, 1)
			go func() {
				conn, err := ln.Accept()
				if err != nil {
					strangerErr <- err
					return
				}
				defer conn.Close()
				strangerErr <- strangerHandshake(conn, strangerTLS(st.creds, roleBackup), roleBackup)
			}()
			s, err := Dial(testContext(t, 5*time.Second), ln.Addr().String(), testHello, fastConfig())
			if s != nil {
				s.Close()
				t.Fatal("the primary connected to a stranger")
			}
			t.Logf("primary: %v", err)
			var ae *AuthError
			if !errors.As(err, &ae) || ae.ByPeer || !errors.Is(err, ErrRefused) {
				t.Fatalf("primary: %v, want an *AuthError of its own matching ErrRefused", err)
			}
			serr := <-strangerErr
			t.Logf("stranger: %v", serr)
			if serr == nil {
				t.Fatal("the stranger backup's handshake went through")
			}
		})
	}
}

// TestTLSRefusalReachesThePrimary: a real primary whose certificate the
// backup refuses learns it from the backup (ByPeer), not as a reset.
func TestTLSRefusalReachesThePrimary(t *testing.T) {
	ln := listen(t)
	cfg := fastConfig()
	cfg.TLS = testCredentials(t, "db-7")
	backupErr := make(chan error, 1)
	go func() {
		_, err := ln.Accept(testContext(t, 5*time.Second), testHello, fastConfig())
		backupErr <- err
	}()
	h := testHello
	h.VMID = "db-7"
	_, err := Dial(testContext(t, 5*time.Second), ln.Addr().String(), h, cfg)
	t.Logf("primary: %v", err)
	t.Logf("backup: %v", <-backupErr)
	var ae *AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("primary: %v, want an *AuthError", err)
	}
	// The primary refuses the backup's certificate (for web-1) itself;
	// either way it must not be a bare I/O error.
	if !strings.Contains(err.Error(), `not "db-7"`) && !ae.ByPeer {
		t.Fatalf("primary: %v", err)
	}
}

// TestTLSAndClearRefuseEachOther: a primary in clear and a backup with TLS
// cannot talk, and each says why. (The other way round, the backup in clear
// sees a TLS ClientHello: TestListenerSurvivesBadPeers.)
func TestTLSAndClearRefuseEachOther(t *testing.T) {
	ln := listen(t)
	backupErr := make(chan error, 1)
	go func() {
		_, err := ln.Accept(testContext(t, 5*time.Second), testHello, fastConfig())
		backupErr <- err
	}()
	_, perr := Dial(testContext(t, 5*time.Second), ln.Addr().String(), testHello, inClear(fastConfig()))
	berr := <-backupErr
	t.Logf("primary in clear: %v", perr)
	t.Logf("backup with TLS: %v", berr)
	if perr == nil || !strings.Contains(perr.Error(), "require TLS") {
		t.Errorf("primary: %v", perr)
	}
	if !errors.Is(berr, ErrUnauthenticated) || !strings.Contains(berr.Error(), "in clear") {
		t.Errorf("backup: %v", berr)
	}
}

// TestHelloBoundToSession: inside a TLS session with the pair's
// certificate, a hello whose binding is not this session's (replayed from
// another session, or made without its keys) is refused.
func TestHelloBoundToSession(t *testing.T) {
	ln := listen(t)
	backupErr := make(chan error, 1)
	go func() {
		_, err := ln.Accept(testContext(t, 5*time.Second), testHello, fastConfig())
		backupErr <- err
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	sc, err := startTLS(conn, sharedCredentials(), testHello.VMID, rolePrimary, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := fastConfig().withDefaults()
	facts := appendHelloFields(nil, &testHello, rolePrimary, cfg.HeartbeatInterval)
	// The binding of another session: the same hello bound to a session
	// that ended.
	stale := bytes.Repeat([]byte{0x5a}, bindingLen)
	msg := appendControl(appendPreamble(nil, ProtocolVersion), msgHello, appendBinding(facts, stale))
	if _, err := sc.Write(msg); err != nil {
		t.Fatal(err)
	}
	berr := <-backupErr
	t.Logf("backup: %v", berr)
	if !errors.Is(berr, ErrUnauthenticated) || !strings.Contains(berr.Error(), "not bound to this TLS session") {
		t.Fatalf("backup: %v", berr)
	}
}

// recorder is a TCP proxy that keeps every byte it carries, both ways.
type recorder struct {
	ln       net.Listener
	mu       sync.Mutex
	captured bytes.Buffer
}

func newRecorder(t *testing.T, target string) *recorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{ln: ln}
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
		go rec.copy(up, down)
		go rec.copy(down, up)
	}()
	return rec
}

func (rec *recorder) copy(to, from net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			rec.mu.Lock()
			rec.captured.Write(buf[:n])
			rec.mu.Unlock()
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			to.Close()
			return
		}
	}
}

func (rec *recorder) bytes() []byte {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return bytes.Clone(rec.captured.Bytes())
}

// TestNothingInClear: a capture of the channel's bytes, both ways, holds
// neither the guest's console input nor the VM id when the channel runs
// with TLS; in clear (the control) it holds both.
func TestNothingInClear(t *testing.T) {
	secret := []byte("the console input: hunter2-correct-horse")
	for _, mode := range []string{"tls", "clear"} {
		t.Run(mode, func(t *testing.T) {
			cfg := fastConfig()
			if mode == "clear" {
				cfg = inClear(cfg)
			}
			ln := listen(t)
			rec := newRecorder(t, ln.Addr().String())
			s, r := connect(t, ln, rec.ln.Addr().String(), cfg, cfg)
			es := testEntries(10)
			es = append(es, replay.Entry{Seq: 11, Kind: replay.KindConsoleRead, Exit: 100, RIP: 0x100000, Data: secret})
			for _, e := range es {
				if err := s.Append(e); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
			for range es {
				if _, err := r.Next(); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.WaitAcked(testContext(t, 5*time.Second), 11); err != nil {
				t.Fatal(err)
			}
			captured := rec.bytes()
			t.Logf("%s: captured %d bytes", mode, len(captured))
			for _, what := range [][]byte{secret, []byte(testHello.VMID + "\x00"), []byte(Magic)} {
				in := bytes.Contains(captured, bytes.TrimSuffix(what, []byte{0}))
				if mode == "tls" && in {
					t.Errorf("%q is in clear on the wire", what)
				}
				if mode == "clear" && !in {
					t.Errorf("the control failed: %q is not in the capture of a channel in clear", what)
				}
			}
		})
	}
}

package logchannel

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// TestHandshakeRefusals: every kind of mismatch is refused on both sides,
// and each side's error says what differs.
func TestHandshakeRefusals(t *testing.T) {
	otherImage := sha256.Sum256([]byte("another guest image"))
	otherConfig := sha256.Sum256([]byte("mem=128M"))
	tests := []struct {
		name          string
		primary       func(*Hello, *Config)
		backup        func(*Hello, *Config)
		wantPrimary   string // in the primary's error
		wantBackup    string // in the backup's error
		primaryByPeer bool   // the primary's error is the backup's reason
		// inClear runs the case without TLS: with it, a VM id that
		// differs is refused earlier, by the certificate check
		// (TestTLSRefusesStrangers).
		inClear bool
	}{
		{
			name:        "vm id",
			inClear:     true,
			primary:     func(h *Hello, _ *Config) { h.VMID = "db-7" },
			wantPrimary: `peer protects VM "web-1" but this side VM "db-7"`,
			wantBackup:  `peer protects VM "db-7" but this side VM "web-1"`,
		},
		{
			name:        "image",
			primary:     func(h *Hello, _ *Config) { h.ImageSHA256 = otherImage },
			wantPrimary: "peer runs guest image " + shortHex(testHello.ImageSHA256) + " but this side runs " + shortHex(otherImage),
			wantBackup:  "peer runs guest image " + shortHex(otherImage) + " but this side runs " + shortHex(testHello.ImageSHA256),
		},
		{
			name:        "config digest",
			backup:      func(h *Hello, _ *Config) { h.ConfigDigest = otherConfig },
			wantPrimary: "peer has config digest " + shortHex(otherConfig) + " but this side has " + shortHex(testHello.ConfigDigest),
			wantBackup:  "peer has config digest " + shortHex(testHello.ConfigDigest) + " but this side has " + shortHex(otherConfig),
		},
		{
			name:        "generation",
			backup:      func(h *Hello, _ *Config) { h.Generation = 4 },
			wantPrimary: "peer is of generation 4 but this side of generation 0",
			wantBackup:  "peer is of generation 0 but this side of generation 4",
		},
		{
			name:        "protocol version",
			primary:     func(_ *Hello, c *Config) { c.version = ProtocolVersion + 1 },
			wantPrimary: fmt.Sprintf("peer speaks protocol version %d but this side speaks %d", ProtocolVersion, ProtocolVersion+1),
			wantBackup:  fmt.Sprintf("peer speaks protocol version %d but this side speaks %d", ProtocolVersion+1, ProtocolVersion),
		},
		{
			name:    "several at once",
			inClear: true,
			primary: func(h *Hello, _ *Config) {
				h.VMID = "db-7"
				h.ConfigDigest = otherConfig
			},
			wantPrimary: `peer protects VM "web-1" but this side VM "db-7"; peer has config digest`,
			wantBackup:  `peer protects VM "db-7" but this side VM "web-1"; peer has config digest`,
		},
		{
			// The backup would declare the primary lost between two of
			// its heartbeats.
			name: "heartbeats too slow for the failover timeout",
			primary: func(_ *Hello, c *Config) {
				c.HeartbeatInterval, c.FailoverTimeout = 300*time.Millisecond, 2*time.Second
			},
			backup: func(_ *Hello, c *Config) {
				c.HeartbeatInterval, c.FailoverTimeout = 20*time.Millisecond, 400*time.Millisecond
			},
			wantPrimary:   "this side's failover timeout is 400ms, less than twice that",
			primaryByPeer: true,
			wantBackup:    "peer sends heartbeats every 300ms but this side's failover timeout is 400ms",
		},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			ph, bh := testHello, testHello
			pc, bc := fastConfig(), fastConfig()
			if tt.inClear {
				pc, bc = inClear(pc), inClear(bc)
			}
			if tt.primary != nil {
				tt.primary(&ph, &pc)
			}
			if tt.backup != nil {
				tt.backup(&bh, &bc)
			}
			ln := listen(t)
			ctx := testContext(t, 10*time.Second)
			backupErr := make(chan error, 1)
			go func() {
				r, err := ln.Accept(ctx, bh, bc)
				if r != nil {
					r.Close()
				}
				backupErr <- err
			}()
			s, perr := Dial(ctx, ln.Addr().String(), ph, pc)
			if s != nil {
				s.Close()
			}
			berr := <-backupErr
			t.Logf("primary: %v", perr)
			t.Logf("backup:  %v", berr)
			for _, side := range []struct {
				name, want string
				err        error
				byPeer     bool
			}{{"primary", tt.wantPrimary, perr, tt.primaryByPeer}, {"backup", tt.wantBackup, berr, false}} {
				var re *RefusedError
				if !errors.As(side.err, &re) || !errors.Is(side.err, ErrRefused) {
					t.Fatalf("%s: %v, want a *RefusedError", side.name, side.err)
				}
				if !strings.Contains(side.err.Error(), side.want) || !strings.HasPrefix(side.err.Error(), "logchannel: ") {
					t.Errorf("%s: %q does not say %q", side.name, side.err, side.want)
				}
				if re.ByPeer != side.byPeer {
					t.Errorf("%s: ByPeer = %v", side.name, re.ByPeer)
				}
			}
		})
	}
}

// TestListenerSurvivesBadPeers: whatever connects to the backup's port, a
// clear error comes back promptly, and the next Accept still takes a real
// primary; with TLS (the default) and in clear.
func TestListenerSurvivesBadPeers(t *testing.T) {
	garbage := make([]byte, 64)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	isNotFTVM := func(err error) bool { return errors.Is(err, ErrNotFTVM) }
	isTimeout := func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
	isEOF := func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }
	tests := []struct {
		name     string
		send     []byte // nil: say nothing
		close    bool   // close right after sending
		check    func(error) bool
		want     string
		checkTLS func(error) bool // with TLS, if it differs
		wantTLS  string
	}{
		{"random bytes", garbage, false, isNotFTVM, "is not an ftvm logging channel", nil, ""},
		{"http request", []byte("GET / HTTP/1.1\r\nHost: backup\r\n\r\n"), false, isNotFTVM, "(HTTP?)", nil, ""},
		{"tls hello", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}, false, isNotFTVM, "TLS",
			isTimeout, "TLS handshake with"},
		{"silence", nil, false, isTimeout, "no preamble within 300ms", isTimeout, "not done within 300ms"},
		{"half a magic then hang up", []byte("FTVM"), true, isEOF, "the connection ended before the preamble",
			isEOF, "the connection ended before the TLS handshake was done"},
		{"magic and a garbage message", append(appendPreamble(nil, ProtocolVersion), 'Z', 0xff, 0xff, 0xff, 0xff), false,
			func(err error) bool { return errors.Is(err, ErrProtocol) }, "unexpected type 0x5a 'Z' message",
			func(err error) bool { return errors.Is(err, ErrUnauthenticated) }, "runs the logging channel in clear"},
		{"magic and a huge hello", append(appendPreamble(nil, ProtocolVersion), byte(msgHello), 0xff, 0xff, 0xff, 0x00), false,
			func(err error) bool { return errors.Is(err, ErrProtocol) }, "over the limit",
			func(err error) bool { return errors.Is(err, ErrUnauthenticated) }, "runs the logging channel in clear"},
	}
	for _, mode := range []string{"tls", "clear"} {
		t.Run(mode, func(t *testing.T) {
			ln := listen(t)
			cfg := fastConfig()
			if mode == "clear" {
				cfg = inClear(cfg)
			}
			cfg.HandshakeTimeout = 300 * time.Millisecond
			for _, tt := range tests {
				t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
					check, want := tt.check, tt.want
					if mode == "tls" && tt.checkTLS != nil {
						check, want = tt.checkTLS, tt.wantTLS
					}
					conn, err := net.Dial("tcp", ln.Addr().String())
					if err != nil {
						t.Fatal(err)
					}
					defer conn.Close()
					if tt.send != nil {
						conn.Write(tt.send)
					}
					if tt.close {
						conn.Close()
					}
					start := time.Now()
					r, err := ln.Accept(testContext(t, 5*time.Second), testHello, cfg)
					if r != nil {
						r.Close()
						t.Fatal("accepted a bad peer")
					}
					t.Logf("%v (after %v)", err, time.Since(start).Round(time.Millisecond))
					var ce *ConnError
					if err == nil || !errors.As(err, &ce) || !check(err) || !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "logchannel: ") {
						t.Fatalf("error %q, want a ConnError saying %q", err, want)
					}
					if time.Since(start) > 2*time.Second {
						t.Fatalf("took %v", time.Since(start))
					}
				})
			}
			// A real primary is still welcome.
			s, r := connect(t, ln, ln.Addr().String(), cfg, cfg)
			e := testEntries(1)[0]
			if err := s.Append(e); err != nil {
				t.Fatal(err)
			}
			if got, err := r.Next(); err != nil || !got.Equal(&e) {
				t.Fatalf("after bad peers: %v, %v", got, err)
			}
		})
	}
}

// TestDialBadBackups: the primary dialing something that is not a backup
// gets a clear error promptly, with TLS and in clear.
func TestDialBadBackups(t *testing.T) {
	isNotFTVM := func(err error) bool { return errors.Is(err, ErrNotFTVM) }
	isTimeout := func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
	tests := []struct {
		name          string
		reply         []byte
		check         func(error) bool
		want, wantTLS string
	}{
		{"http server", []byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"), isNotFTVM, "(HTTP?)", "(HTTP?)"},
		{"ssh server", []byte("SSH-2.0-OpenSSH_9.6\r\n"), isNotFTVM, "(SSH?)", "(SSH?)"},
		{"silent server", nil, isTimeout, "no preamble within 300ms", "not done within 300ms"},
	}
	for _, mode := range []string{"tls", "clear"} {
		cfg := fastConfig()
		if mode == "clear" {
			cfg = inClear(cfg)
		}
		cfg.HandshakeTimeout = 300 * time.Millisecond
		for _, tt := range tests {
			t.Run(mode+"/"+strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
				want := tt.want
				if mode == "tls" {
					want = tt.wantTLS
				}
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				served := make(chan struct{})
				go func() {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					defer conn.Close()
					if tt.reply != nil {
						conn.Write(tt.reply)
					}
					<-served
				}()
				defer close(served)
				start := time.Now()
				s, err := Dial(testContext(t, 5*time.Second), ln.Addr().String(), testHello, cfg)
				if s != nil {
					s.Close()
					t.Fatal("connected to a bad backup")
				}
				t.Logf("%v (after %v)", err, time.Since(start).Round(time.Millisecond))
				if err == nil || !tt.check(err) || !strings.Contains(err.Error(), want) {
					t.Fatalf("error %q, want one saying %q", err, want)
				}
			})
		}
	}

	// Nobody listening: the dial error, not a hang.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	if _, err := Dial(testContext(t, 5*time.Second), addr, testHello, fastConfig()); err == nil || !strings.Contains(err.Error(), "dialing the backup") {
		t.Fatalf("dial to a closed port: %v", err)
	}
}

// TestAcceptHonoursContext: a cancelled Accept returns at once, and the
// Listener still works afterwards.
func TestAcceptHonoursContext(t *testing.T) {
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(50 * time.Millisecond)
		cancel()
	}()
	start := time.Now()
	if _, err := ln.Accept(ctx, testHello, fastConfig()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Accept after cancel: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Accept took %v to notice the cancel", d)
	}
	connect(t, ln, ln.Addr().String(), fastConfig(), fastConfig())
}

// TestSameRoleRefused: two primaries (or two backups) refuse each other.
func TestSameRoleRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := fastConfig().withDefaults()
	errs := make(chan error, 2)
	for _, c := range []net.Conn{a, b} {
		go func() {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err := handshake(c, &testHello, roleBackup, &cfg)
			c.Close()
			errs <- err
		}()
	}
	for range 2 {
		err := <-errs
		if !strings.Contains(errString(err), "peer is a backup but this side is the backup") {
			t.Fatalf("two backups: %v", err)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

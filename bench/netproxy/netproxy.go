// Package netproxy is a TCP relay that tests and benchmarks put between a
// primary and its backup to partition their logging channel on demand.
package netproxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Proxy relays connections to a target until Freeze; from then on it
// swallows everything in both directions and keeps the connections open:
// to each side the other has gone silent, with no FIN and no reset, as when
// a host loses power or the network is cut.
type Proxy struct {
	ln     net.Listener
	target string
	frozen chan struct{}
	once   sync.Once
	// cut[0] silences the dialer-to-target direction, cut[1] the other.
	cut     [2]chan struct{}
	cutOnce [2]sync.Once
	mu      sync.Mutex
	conns   []net.Conn
	// forward counts the bytes relayed from the dialing side to the
	// target; freezeAt, if not 0, freezes the relay once it reaches it.
	forward, freezeAt atomic.Int64
}

// New starts a proxy on 127.0.0.1 relaying to target.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, frozen: make(chan struct{}), cut: [2]chan struct{}{make(chan struct{}), make(chan struct{})}}
	go p.accept()
	return p, nil
}

// Addr is the address to dial instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Freeze cuts the relay silently. It may be called more than once.
func (p *Proxy) Freeze() { p.once.Do(func() { close(p.frozen) }) }

// FreezeForward silences the direction from the dialing side to the
// target only (for a primary that dials its backup: the log and the
// primary's heartbeats stop, the backup's acks still arrive).
func (p *Proxy) FreezeForward() { p.cutOnce[0].Do(func() { close(p.cut[0]) }) }

// FreezeBackward silences the direction from the target to the dialing
// side only.
func (p *Proxy) FreezeBackward() { p.cutOnce[1].Do(func() { close(p.cut[1]) }) }

// FreezeAfter freezes the relay once n bytes have gone from the dialing
// side to the target: a cut that lands after a handshake, however long the
// handshake takes (TLS under emulation takes seconds).
func (p *Proxy) FreezeAfter(n int64) {
	p.freezeAt.Store(n)
	if p.forward.Load() >= n {
		p.Freeze()
	}
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		t, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, t)
		p.mu.Unlock()
		go p.pipe(t, c, &p.forward, p.cut[0])
		go p.pipe(c, t, nil, p.cut[1])
	}
}

func (p *Proxy) pipe(dst, src net.Conn, count *atomic.Int64, cut <-chan struct{}) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-p.frozen:
			io.Copy(io.Discard, src)
			return
		case <-cut:
			io.Copy(io.Discard, src)
			return
		default:
		}
		if n > 0 {
			dst.Write(buf[:n])
			if count != nil {
				if total, at := count.Add(int64(n)), p.freezeAt.Load(); at > 0 && total >= at {
					p.Freeze()
				}
			}
		}
		if err != nil {
			return
		}
	}
}

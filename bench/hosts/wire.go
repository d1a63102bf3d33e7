package hosts

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Wire is a point-to-point IP link between two hosts whose packets pass
// through this process, which can cut it each way and delay, lose or
// reorder its packets, as tc netem does in kernels that have it (many do
// not: CONFIG_NET_SCH_NETEM is off in this machine kind's kernel). Each
// end is a TUN device; TCP over it sees real loss and reordering and
// recovers as it would on a wire.
type Wire struct {
	ends [2]*os.File
	mu   sync.Mutex
	// dir[0] is the policy of packets from a to b, dir[1] from b to a.
	dir  [2]Impair
	rng  *rand.Rand
	wg   sync.WaitGroup
	once sync.Once
}

// Impair is what a Wire does to the packets of one direction. The zero
// value passes them on at once.
type Impair struct {
	Cut    bool          // drop every packet
	Loss   float64       // drop each packet with this probability
	Delay  time.Duration // hold each packet this long
	Jitter time.Duration // ± uniformly on Delay
	// Reorder sends each packet with this probability at once, ahead of
	// those that are being held.
	Reorder float64
}

// NewWire makes device ifname in hosts a and b, addresses ipa and ipb
// (IPv4, no prefix) at each end, and relays between them until Close.
// seed makes the impairments' random choices repeatable.
func (n *Net) NewWire(a, ipa, b, ipb, ifname string, seed uint64) (*Wire, error) {
	w := &Wire{rng: rand.New(rand.NewPCG(seed, 0x3173))}
	for i, end := range []struct{ host, ip, peer string }{{a, ipa, ipb}, {b, ipb, ipa}} {
		err := n.Do(end.host, func() error {
			fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
			if err != nil {
				return fmt.Errorf("opening /dev/net/tun: %w", err)
			}
			ifr, err := unix.NewIfreq(ifname)
			if err == nil {
				ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
				err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
			}
			if err != nil {
				unix.Close(fd)
				return fmt.Errorf("TUNSETIFF %s: %w", ifname, err)
			}
			w.ends[i] = os.NewFile(uintptr(fd), "tun:"+end.host+":"+ifname)
			return nil
		})
		if err == nil {
			err = n.IP(end.host, "addr", "add", end.ip, "peer", end.peer, "dev", ifname)
		}
		if err == nil {
			err = n.IP(end.host, "link", "set", ifname, "up")
		}
		if err != nil {
			w.Close()
			return nil, err
		}
	}
	w.wg.Add(2)
	go w.relay(0)
	go w.relay(1)
	return w, nil
}

// Set makes p the policy of packets from a to b (aToB) or from b to a.
func (w *Wire) Set(aToB bool, p Impair) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.dir[dirIndex(aToB)] = p
}

func dirIndex(aToB bool) int {
	if aToB {
		return 0
	}
	return 1
}

// relay carries packets read at end d to the other end.
func (w *Wire) relay(d int) {
	defer w.wg.Done()
	src, dst := w.ends[d], w.ends[1-d]
	buf := make([]byte, 65536)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return // closed
		}
		w.mu.Lock()
		p := w.dir[d]
		drop := p.Cut || (p.Loss > 0 && w.rng.Float64() < p.Loss)
		hold := p.Delay
		if p.Jitter > 0 {
			hold += time.Duration(w.rng.Int64N(int64(2*p.Jitter+1))) - p.Jitter
		}
		if p.Reorder > 0 && w.rng.Float64() < p.Reorder {
			hold = 0
		}
		w.mu.Unlock()
		switch {
		case drop:
		case hold <= 0:
			dst.Write(buf[:n]) // a packet the far end cannot take is lost, as on a wire
		default:
			pkt := append([]byte(nil), buf[:n]...)
			time.AfterFunc(hold, func() { dst.Write(pkt) })
		}
	}
}

// Close removes nothing (the hosts' Close does) but stops the relay and
// closes both devices, which takes the link down.
func (w *Wire) Close() error {
	var errs []error
	w.once.Do(func() {
		for _, f := range w.ends {
			if f != nil {
				errs = append(errs, f.Close())
			}
		}
	})
	w.wg.Wait()
	return errors.Join(errs...)
}

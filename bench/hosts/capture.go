package hosts

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Capture records when frames from one MAC address arrive on an interface
// from its link (not the frames the host sends out on it), with the
// kernel's receive timestamps, so that captures on several interfaces of
// one machine can be ordered against each other.
type Capture struct {
	fd           int
	src          net.HardwareAddr
	done, exited chan struct{}
	mu           sync.Mutex
	frames       []Frame
	// unstamped counts frames that came without the kernel's receive
	// timestamp (their time is the read's); lag is the longest time from
	// a frame's arrival to its read.
	unstamped int
	lag       time.Duration
	err       error
}

// Frame is a captured frame: when it arrived, and its first bytes (the
// Ethernet, IP and UDP or ARP headers).
type Frame struct {
	At   time.Time
	Head []byte
	Sum  uint64 // FNV-1a of the whole frame: equal frames, equal sums
}

// frameHead is how much of each frame a Capture keeps.
const frameHead = 64

// String says what the frame is, for a person.
func (f Frame) String() string {
	h := f.Head
	if len(h) < 14 {
		return fmt.Sprintf("%d-byte runt", len(h))
	}
	dst, src := net.HardwareAddr(h[0:6]), net.HardwareAddr(h[6:12])
	switch et := uint16(h[12])<<8 | uint16(h[13]); {
	case et == 0x0806 && len(h) >= 42:
		op := map[uint16]string{1: "request", 2: "reply"}[uint16(h[20])<<8|uint16(h[21])]
		return fmt.Sprintf("ARP %s %s -> %s: %s is at %s, asking for %s", op, src, dst, net.IP(h[28:32]), net.HardwareAddr(h[22:28]), net.IP(h[38:42]))
	case et == 0x0800 && len(h) >= 34:
		ihl := int(h[14]&0xf) * 4
		desc := fmt.Sprintf("IPv4 %s -> %s proto %d, %s -> %s, id %d", src, dst, h[23], net.IP(h[26:30]), net.IP(h[30:34]), uint16(h[18])<<8|uint16(h[19]))
		if h[23] == 17 && len(h) >= 14+ihl+8 {
			desc += fmt.Sprintf(", UDP %q", h[14+ihl+8:])
		}
		return desc
	default:
		return fmt.Sprintf("ethertype %#04x %s -> %s", et, src, dst)
	}
}

// CaptureFrom starts capturing, in host, the frames whose source is src
// that arrive on ifname.
func (n *Net) CaptureFrom(host, ifname string, src net.HardwareAddr) (*Capture, error) {
	c := &Capture{fd: -1, src: src, done: make(chan struct{}), exited: make(chan struct{})}
	err := n.Do(host, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		c.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("bind to %s: %w", ifname, err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return err
		}
		// Close cannot wake a blocked read: the reader polls.
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50_000})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		return nil, err
	}
	go c.read()
	return c, nil
}

func (c *Capture) read() {
	defer close(c.exited)
	defer unix.Close(c.fd)
	buf := make([]byte, 65536)
	oob := make([]byte, 128)
	for {
		select {
		case <-c.done:
			return
		default:
		}
		n, oobn, _, from, err := unix.Recvmsg(c.fd, buf, oob, 0)
		// ENETDOWN: the link went down (it may come back up).
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENETDOWN) {
			continue
		}
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if n < 14 || !bytes.Equal(buf[6:12], c.src) {
			continue
		}
		read := time.Now()
		at, stamped := read, false
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_TIMESTAMPNS && len(m.Data) >= 16 {
					at, stamped = time.Unix(int64(binary.NativeEndian.Uint64(m.Data)), int64(binary.NativeEndian.Uint64(m.Data[8:]))), true
				}
			}
		}
		sum := fnv.New64a()
		sum.Write(buf[:n])
		c.mu.Lock()
		if !stamped {
			c.unstamped++
		}
		c.lag = max(c.lag, read.Sub(at))
		c.frames = append(c.frames, Frame{At: at, Head: append([]byte(nil), buf[:min(n, frameHead)]...), Sum: sum.Sum64()})
		c.mu.Unlock()
	}
}

// Stop ends the capture, frees its socket and returns the arrival times
// seen, in order, and the error that ended it early, if any. It may be
// called more than once.
func (c *Capture) Stop() ([]Frame, error) {
	select {
	case <-c.done:
	default:
		close(c.done)
	}
	<-c.exited
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Frame(nil), c.frames...), c.err
}

// Quality says how many frames came without a kernel timestamp and how
// far the reader fell behind the arrivals at worst.
func (c *Capture) Quality() (unstamped int, lag time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.unstamped, c.lag
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

package vnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Tap carries frames to and from a Linux TAP device as they are. The host's
// administrator wires the device (a bridge, addresses, routes); the backend
// neither configures nor filters it.
type Tap struct {
	spec Spec
	rx   *rxQueue
	tx   txCounters

	mu      sync.Mutex
	dev     *os.File // nil until Bind
	closed  bool
	readErr error // why the reader stopped, if not by Close
	reader  sync.WaitGroup
	quit    chan struct{} // closed by Close: announcements stop
}

// NewTap creates a TAP backend for spec (KindTap) without opening the
// device: call Bind.
func NewTap(spec Spec) (*Tap, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if spec.Kind != KindTap {
		return nil, fmt.Errorf("vnet: NewTap given a %s spec", spec.Kind)
	}
	return &Tap{spec: spec, rx: newRxQueue(RxQueueFrames), quit: make(chan struct{})}, nil
}

// Bind opens (or creates) the TAP device spec.IfName in the calling
// thread's network namespace, without packet-information headers, and
// starts reading it. A device created here is not persistent: it vanishes
// at Close, and someone must bring it up and attach it (ip link set NAME
// master BRIDGE up). One made beforehand (ip tuntap add mode tap NAME) keeps
// its wiring, which suits a backup that binds only when it goes live.
func (t *Tap) Bind() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	if t.dev != nil {
		return nil
	}
	// Non-blocking so the os.File uses the runtime's poller: Close then
	// wakes a blocked Read instead of leaving the reader stuck.
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("vnet: tap %s: opening /dev/net/tun: %w", t.spec.IfName, err)
	}
	ifr, err := unix.NewIfreq(t.spec.IfName)
	if err == nil {
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("vnet: tap %s: TUNSETIFF: %w", t.spec.IfName, err)
	}
	t.dev = os.NewFile(uintptr(fd), "tap:"+t.spec.IfName)
	t.reader.Add(1)
	go t.read(t.dev)
	return nil
}

// read queues every frame the device delivers.
func (t *Tap) read(dev *os.File) {
	defer t.reader.Done()
	// Larger than MaxFrame: a device whose MTU was raised delivers bigger
	// frames, which must be read whole to be dropped whole.
	buf := make([]byte, 64<<10)
	for {
		n, err := dev.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				t.mu.Lock()
				t.readErr = err
				t.mu.Unlock()
			}
			return
		}
		t.rx.push(buf[:n]) // counts frames of a size the guest ABI does not allow as dropped
	}
}

// Send writes one frame to the device. A write that fails (the device is
// down, for instance) loses the frame as a wire would.
func (t *Tap) Send(frame []byte) error {
	dev, err := t.device()
	if err == nil && (len(frame) < MinFrame || len(frame) > MaxFrame) {
		err = fmt.Errorf("%w: frame of %d bytes (want %d-%d)", ErrDropped, len(frame), MinFrame, MaxFrame)
	}
	if err == nil {
		if _, werr := dev.Write(frame); werr != nil {
			err = fmt.Errorf("%w: tap %s: %w", ErrDropped, t.spec.IfName, werr)
		}
	}
	if err != nil {
		if !errors.Is(err, ErrClosed) {
			t.tx.dropped.Add(1)
		}
		return err
	}
	t.tx.carried(frame)
	return nil
}

// device returns the open device, or why frames cannot be sent.
func (t *Tap) device() (*os.File, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.closed:
		return nil, ErrClosed
	case t.dev == nil:
		return nil, fmt.Errorf("%w: tap %s is not bound yet", ErrDropped, t.spec.IfName)
	case t.readErr != nil:
		// A dead reader means the device is gone; say so at the next Send,
		// the only call that can report it.
		return nil, fmt.Errorf("%w: tap %s stopped reading: %w", ErrDropped, t.spec.IfName, t.readErr)
	}
	return t.dev, nil
}

// SendGratuitousARP writes a gratuitous ARP for ip at mac out of the
// device, as if the guest had sent it: it reaches the bridge and the
// neighbours beyond, which is where a backup that went live must announce
// that the guest's address has moved. It is the backend's frame, not the
// guest's, so it is not counted in Stats.
func (t *Tap) SendGratuitousARP(ip netip.Addr, mac net.HardwareAddr) error {
	frame, err := GratuitousARP(ip, mac)
	if err != nil {
		return err
	}
	dev, err := t.device()
	if err != nil {
		return err
	}
	if _, err := dev.Write(frame); err != nil {
		return fmt.Errorf("vnet: tap %s: gratuitous ARP: %w", t.spec.IfName, err)
	}
	return nil
}

// announceAgain are the times after Announce's first gratuitous ARP at
// which it sends it again, as hypervisors do for a guest that moved: a
// bridge port whose device was just opened forwards only once the kernel
// has handled the carrier change, up to a second later, and the first
// frames are dropped meanwhile (measured: a failover whose one
// announcement was lost left clients sending to the old host for 26-45 s,
// until their neighbour entries expired); a LAN may lose a frame too.
var announceAgain = []time.Duration{50 * time.Millisecond, 150 * time.Millisecond, 300 * time.Millisecond,
	600 * time.Millisecond, time.Second, 2 * time.Second}

// announceEvery is how often Announce repeats after announceAgain, until
// Close: a side the guest has left may still let out a frame it had
// committed (a paused old primary waking up), which moves the guest's MAC
// back to its port on the LAN's switches; the next announcement moves it
// back here (measured without it: clients got no reply for 23-46 s).
const announceEvery = 2 * time.Second

// Announce sends a gratuitous ARP for the guest's address and MAC now, and
// again in the background at the times of announceAgain, then every
// announceEvery, until Close.
func (t *Tap) Announce() error {
	if err := t.SendGratuitousARP(t.spec.Addr.Addr(), t.spec.MAC); err != nil {
		return err
	}
	go func() {
		began := time.Now()
		for _, at := range announceAgain {
			select {
			case <-t.quit:
				return
			case <-time.After(time.Until(began.Add(at))):
			}
			t.SendGratuitousARP(t.spec.Addr.Addr(), t.spec.MAC) // a later round may get through
		}
		tick := time.NewTicker(announceEvery)
		defer tick.Stop()
		for {
			select {
			case <-t.quit:
				return
			case <-tick.C:
				t.SendGratuitousARP(t.spec.Addr.Addr(), t.spec.MAC)
			}
		}
	}()
	return nil
}

// Receive implements Backend.
func (t *Tap) Receive(buf []byte) (int, bool) { return t.rx.pop(buf) }

// Pending implements Backend.
func (t *Tap) Pending() <-chan struct{} { return t.rx.pending }

// Stats implements Backend.
func (t *Tap) Stats() Stats { return stats(t.rx, &t.tx) }

// Close closes the device (a non-persistent one disappears) and waits for
// the reader.
func (t *Tap) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	close(t.quit)
	dev := t.dev
	t.mu.Unlock()
	var err error
	if dev != nil {
		err = dev.Close()
	}
	t.reader.Wait()
	return err
}

package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// ErrGuestAddress reports a guest address range outside guest RAM.
var ErrGuestAddress = errors.New("guest address outside RAM")

// ErrGuestAccess reports a guest address range the guest itself may not
// access that way: a device asked to write into text or read-only data, or
// to read a page the guest cannot read.
var ErrGuestAccess = errors.New("guest may not access that memory")

// GuestMemory is guest RAM seen from the VMM: guest-physical address 0 is
// byte 0. Every access is bounds-checked; devices reach guest memory only
// through it. Devices may touch guest memory only while the vCPU is stopped
// at an exit, so that a replay touches it at the same point.
type GuestMemory struct {
	b []byte
	// perms is the guest's access to each page, once the image is loaded:
	// what a device does for the guest (ForGuest) it may do only where
	// the guest could itself, so no call writes into text (W^X holds at
	// run time, not only at load time).
	perms []pagePerm
	// written holds the page ranges [first, end) handed out for writing
	// since the last publishWrites (vCPU thread only). They are published
	// to the dirty tracker once the exit that wrote them is handled, never
	// when handed out: a page collected between the hand-out and the
	// write would otherwise be sent without the write and forgotten.
	written [][2]uint64
	trackMu sync.Mutex
	track   []atomic.Uint64 // nil unless dirty tracking runs: one bit per page
}

// ForGuest returns the n bytes at addr for a device acting on the guest's
// behalf: readable by the guest, and writable too if write is set. The
// error wraps ErrGuestAddress or ErrGuestAccess; a device answers -EFAULT.
func (m *GuestMemory) ForGuest(addr, n uint64, write bool) ([]byte, error) {
	s, err := m.slice(addr, n)
	if err != nil || n == 0 {
		return s, err
	}
	for p := addr / pageSize; p <= (addr+n-1)/pageSize; p++ {
		perm := m.perms[p]
		ok := perm == permUserR || perm == permUserRX || perm == permUserRW
		if write {
			ok = perm == permUserRW
		}
		if !ok {
			verb := "read"
			if write {
				verb = "write"
			}
			return nil, fmt.Errorf("vmm: %s of [%#x, %#x+%#x): %w (page %#x)", verb, addr, addr, n, ErrGuestAccess, p*pageSize)
		}
	}
	if write {
		m.wrote(addr, n)
	}
	return s, nil
}

// wrote notes that [addr, addr+n) of RAM is being written by the VMM.
func (m *GuestMemory) wrote(addr, n uint64) {
	if n == 0 {
		return
	}
	first, end := addr/pageSize, (addr+n-1)/pageSize+1
	if k := len(m.written); k > 0 && m.written[k-1][0] <= first && end <= m.written[k-1][1] {
		return
	}
	m.written = append(m.written, [2]uint64{first, end})
}

// publishWrites hands the pages written since the last call to the dirty
// tracker, if one runs. Must be called on the vCPU thread after the writes
// are done (at the end of an exit's handling). The lock orders it against
// startTracking: writes published before tracking starts are in the first
// full copy, which begins after it.
func (m *GuestMemory) publishWrites() {
	if len(m.written) == 0 {
		return
	}
	m.trackMu.Lock()
	if m.track != nil {
		for _, r := range m.written {
			for p := r[0]; p < r[1]; p++ {
				m.track[p/64].Or(1 << (p % 64))
			}
		}
	}
	m.trackMu.Unlock()
	m.written = m.written[:0]
}

// startTracking begins recording the VMM's writes into RAM.
func (m *GuestMemory) startTracking() {
	m.trackMu.Lock()
	defer m.trackMu.Unlock()
	if m.track == nil {
		m.track = make([]atomic.Uint64, (len(m.b)/pageSize+63)/64)
	}
}

// takeWritten sets in bitmap the pages the VMM wrote since the last call
// (as published) and forgets them.
func (m *GuestMemory) takeWritten(bitmap []uint64) {
	m.trackMu.Lock()
	track := m.track
	m.trackMu.Unlock()
	for i := range track {
		bitmap[i] |= track[i].Swap(0)
	}
}

// Size is the number of bytes of guest RAM.
func (m *GuestMemory) Size() uint64 { return uint64(len(m.b)) }

// Slice returns the n bytes at guest-physical addr, aliasing guest RAM, or an
// error wrapping ErrGuestAddress if any of them is outside RAM. The caller
// may write them: they count as written by the VMM.
func (m *GuestMemory) Slice(addr, n uint64) ([]byte, error) {
	s, err := m.slice(addr, n)
	if err == nil {
		m.wrote(addr, n)
	}
	return s, err
}

func (m *GuestMemory) slice(addr, n uint64) ([]byte, error) {
	size := uint64(len(m.b))
	if addr > size || n > size-addr {
		return nil, fmt.Errorf("vmm: [%#x, %#x+%#x): %w (RAM is %#x bytes)", addr, addr, n, ErrGuestAddress, size)
	}
	return m.b[addr : addr+n : addr+n], nil
}

// Read copies len(dst) bytes from guest-physical addr.
func (m *GuestMemory) Read(addr uint64, dst []byte) error {
	s, err := m.slice(addr, uint64(len(dst)))
	if err != nil {
		return err
	}
	copy(dst, s)
	return nil
}

// Write copies src to guest-physical addr.
func (m *GuestMemory) Write(addr uint64, src []byte) error {
	s, err := m.Slice(addr, uint64(len(src)))
	if err != nil {
		return err
	}
	copy(s, src)
	return nil
}

// ReadU64 reads a little-endian uint64 at addr.
func (m *GuestMemory) ReadU64(addr uint64) (uint64, error) {
	s, err := m.slice(addr, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(s), nil
}

// WriteU64 writes a little-endian uint64 at addr.
func (m *GuestMemory) WriteU64(addr, v uint64) error {
	s, err := m.Slice(addr, 8)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(s, v)
	return nil
}

// ParseSize parses a memory size such as "64M", "64MiB", "1G" or "67108864".
func ParseSize(s string) (uint64, error) {
	num, mult := s, uint64(1)
	for _, suf := range []struct {
		s string
		m uint64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}} {
		if len(s) > len(suf.s) && s[len(s)-len(suf.s):] == suf.s {
			num, mult = s[:len(s)-len(suf.s)], suf.m
			break
		}
	}
	var n uint64
	if _, err := fmt.Sscanf(num, "%d", &n); err != nil || fmt.Sprint(n) != num {
		return 0, fmt.Errorf("vmm: size %q: want a number with an optional K, M or G suffix", s)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("vmm: size %q is too large", s)
	}
	return n * mult, nil
}

package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
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
}

// ForGuest returns the n bytes at addr for a device acting on the guest's
// behalf: readable by the guest, and writable too if write is set. The
// error wraps ErrGuestAddress or ErrGuestAccess; a device answers -EFAULT.
func (m *GuestMemory) ForGuest(addr, n uint64, write bool) ([]byte, error) {
	s, err := m.Slice(addr, n)
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
	return s, nil
}

// Size is the number of bytes of guest RAM.
func (m *GuestMemory) Size() uint64 { return uint64(len(m.b)) }

// Slice returns the n bytes at guest-physical addr, aliasing guest RAM, or an
// error wrapping ErrGuestAddress if any of them is outside RAM.
func (m *GuestMemory) Slice(addr, n uint64) ([]byte, error) {
	size := uint64(len(m.b))
	if addr > size || n > size-addr {
		return nil, fmt.Errorf("vmm: [%#x, %#x+%#x): %w (RAM is %#x bytes)", addr, addr, n, ErrGuestAddress, size)
	}
	return m.b[addr : addr+n : addr+n], nil
}

// Read copies len(dst) bytes from guest-physical addr.
func (m *GuestMemory) Read(addr uint64, dst []byte) error {
	s, err := m.Slice(addr, uint64(len(dst)))
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
	s, err := m.Slice(addr, 8)
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

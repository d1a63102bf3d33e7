package vnet

import (
	"container/list"
	"fmt"
	"net/netip"
)

// The user gateway's NAT: each (hostfwd socket, client) pair that sends to
// the guest gets a gateway UDP port, and the guest's replies to that port go
// back to that client from that socket. The table is bounded and evicts the
// least recently used pair, so a crowd of clients cannot grow it.
const (
	NATEntries   = 4096
	natFirstPort = 49152 // the IANA dynamic range: the guest sees clients at 10.0.2.2:49152-53247
)

// NATMapping is one NAT entry: gateway port GatewayPort stands for Client
// as seen by the socket of HostFwds[HostFwd].
type NATMapping struct {
	GatewayPort uint16
	HostFwd     int
	Client      netip.AddrPort
}

// String is the mapping as "GATEWAYPORT HOSTFWD CLIENT", which
// ParseNATMapping reads back.
func (m NATMapping) String() string {
	return fmt.Sprintf("%d %d %s", m.GatewayPort, m.HostFwd, m.Client)
}

// ParseNATMapping reads a mapping written by String.
func ParseNATMapping(s string) (NATMapping, error) {
	var m NATMapping
	var client string
	if _, err := fmt.Sscanf(s, "%d %d %s", &m.GatewayPort, &m.HostFwd, &client); err != nil {
		return NATMapping{}, fmt.Errorf("vnet: NAT mapping %q: %w", s, err)
	}
	c, err := netip.ParseAddrPort(client)
	if err != nil {
		return NATMapping{}, fmt.Errorf("vnet: NAT mapping %q: %w", s, err)
	}
	m.Client = c
	if m.String() != s {
		return NATMapping{}, fmt.Errorf("vnet: NAT mapping %q is not in canonical form", s)
	}
	return m, nil
}

// NATShare is a backend whose NAT decides which client each gateway port
// stands for: a state the guest observes (it answers gateway ports) that
// a backup going live must have, or its replies go to the wrong clients.
type NATShare interface {
	NATMappings() []NATMapping
	RestoreNAT([]NATMapping) error
	// OnNewNATMapping calls f (under the backend's lock: it must not call
	// back) for every mapping made from then on.
	OnNewNATMapping(f func(NATMapping))
}

// NATOf returns b's NAT, looking through wrappers (a pcap recorder).
func NATOf(b Backend) (NATShare, bool) {
	for {
		if n, ok := b.(NATShare); ok {
			return n, true
		}
		w, ok := b.(interface{ Unwrap() Backend })
		if !ok {
			return nil, false
		}
		b = w.Unwrap()
	}
}

type natKey struct {
	fwd    int
	client netip.AddrPort
}

type natTable struct {
	slots    []*list.Element // by GatewayPort-natFirstPort; nil when free
	byClient map[natKey]*list.Element
	lru      *list.List // of NATMapping, front = most recently used
}

func newNATTable(size int) *natTable {
	return &natTable{slots: make([]*list.Element, size), byClient: map[natKey]*list.Element{}, lru: list.New()}
}

// portFor returns the gateway port of a client, making an entry (and
// evicting the least recently used one when full) if it has none; made
// says it did.
func (t *natTable) portFor(fwd int, client netip.AddrPort) (port uint16, made bool) {
	key := natKey{fwd, client}
	if e, ok := t.byClient[key]; ok {
		t.lru.MoveToFront(e)
		return e.Value.(NATMapping).GatewayPort, false
	}
	slot := -1
	if t.lru.Len() == len(t.slots) {
		slot = t.remove(t.lru.Back())
	} else {
		// Free slots exist; the scan is short unless RestoreNAT scattered
		// entries, and bounded by the table size either way.
		for i, e := range t.slots {
			if e == nil {
				slot = i
				break
			}
		}
	}
	m := NATMapping{GatewayPort: uint16(natFirstPort + slot), HostFwd: fwd, Client: client}
	t.insert(slot, m)
	return m.GatewayPort, true
}

// lookup finds the client behind a gateway port and marks it used.
func (t *natTable) lookup(port uint16) (NATMapping, bool) {
	i := int(port) - natFirstPort
	if i < 0 || i >= len(t.slots) || t.slots[i] == nil {
		return NATMapping{}, false
	}
	e := t.slots[i]
	t.lru.MoveToFront(e)
	return e.Value.(NATMapping), true
}

func (t *natTable) insert(slot int, m NATMapping) {
	e := t.lru.PushFront(m)
	t.slots[slot] = e
	t.byClient[natKey{m.HostFwd, m.Client}] = e
}

func (t *natTable) remove(e *list.Element) (slot int) {
	m := t.lru.Remove(e).(NATMapping)
	slot = int(m.GatewayPort) - natFirstPort
	t.slots[slot] = nil
	delete(t.byClient, natKey{m.HostFwd, m.Client})
	return slot
}

// mappings lists the entries, least recently used first, so restoring them
// in order rebuilds the same LRU order.
func (t *natTable) mappings() []NATMapping {
	ms := make([]NATMapping, 0, t.lru.Len())
	for e := t.lru.Back(); e != nil; e = e.Prev() {
		ms = append(ms, e.Value.(NATMapping))
	}
	return ms
}

// restore adds mappings (least recently used first), replacing any entry
// that holds the same port or client.
func (t *natTable) restore(ms []NATMapping, fwds int) error {
	for _, m := range ms {
		slot := int(m.GatewayPort) - natFirstPort
		if slot < 0 || slot >= len(t.slots) || m.HostFwd < 0 || m.HostFwd >= fwds || !m.Client.IsValid() {
			return fmt.Errorf("vnet: NAT mapping %+v is outside this backend's table", m)
		}
		if e := t.slots[slot]; e != nil {
			t.remove(e)
		}
		if e, ok := t.byClient[natKey{m.HostFwd, m.Client}]; ok {
			t.remove(e)
		}
		t.insert(slot, m)
	}
	return nil
}

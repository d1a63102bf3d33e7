// Package vnet holds the host side of the guest's NIC: backends that carry
// the guest's Ethernet frames to and from the world.
//
// Two backends exist. User networking (no privileges) puts a gateway
// 10.0.2.2 in front of the guest 10.0.2.15 and forwards UDP datagrams from
// host sockets to the guest and back, through a small NAT; it never routes
// guest traffic anywhere else. TAP networking hands frames to a Linux TAP
// device as they are.
//
// Frames the backend receives are the VM's inputs and frames the guest sends
// are its outputs: the VMM's NIC device decides when each crosses (at
// guest-caused exits, after the Output Rule), so a backend only queues and
// carries frames, it never calls into the VM.
//
// Life of a backend in a fault-tolerant pair:
//
//	spec, err := vnet.ParseSpec(flag, vmID)  // both sides: the same MAC and addresses
//	b, err := vnet.Open(spec)                // the primary: bound at once
//	b, err := vnet.New(spec)                 // the backup: created, nothing bound ...
//	b.Bind(); b.Announce()                   // ... until it goes live
//
// Under user networking the NAT table is host state the log does not carry:
// a backup that goes live starts with an empty table (clients that send
// again get new gateway ports) unless the primary's table was handed over
// with (*User).NATMappings and RestoreNAT.
package vnet

import (
	"errors"
	"sync/atomic"
)

// Frame sizes of the guest ABI: Ethernet without FCS, MTU 1500.
const (
	MinFrame = 14   // an Ethernet header and nothing else
	MaxFrame = 1514 // 14-byte header + 1500-byte MTU
)

// Backend carries Ethernet frames between a guest NIC and the world.
//
// All methods are safe for concurrent use: the NIC device may send
// (outputs released by the Output Rule) from another goroutine than the one
// that receives.
type Backend interface {
	// Send carries one frame from the guest. The backend does not keep frame
	// after returning. A frame the backend refuses (malformed, not routable,
	// not bound yet) is counted in TxDropped and reported by an error that
	// wraps ErrDropped: treat it as a frame lost on the wire, not as a device
	// failure. After Close, Send returns ErrClosed.
	Send(frame []byte) error

	// Receive copies the next pending frame into buf (len(buf) >= MaxFrame)
	// and returns its length; ok is false when none is pending. It never
	// blocks. A frame that does not fit a shorter buf is dropped and
	// counted, never truncated.
	Receive(buf []byte) (n int, ok bool)

	// Pending returns a channel (buffered, size 1) that holds a token while
	// frames are pending: wait on it, then call Receive until ok is false.
	// A token left after a partial drain is put back, so a waiter never
	// misses queued frames; a wake-up may still find nothing (a race with
	// another Receive), which is harmless.
	Pending() <-chan struct{}

	// Stats returns the backend's counters.
	Stats() Stats

	// Bind connects the backend to the host network: user networking binds
	// its hostfwd sockets, TAP opens its device. Until then nothing arrives
	// and everything sent is dropped. A backup VM creates its backend with
	// New and binds it when it goes live. A second Bind does nothing.
	Bind() error

	// Announce tells the network that the guest's MAC and IP now live here:
	// a gratuitous ARP out of a TAP device (so switches and neighbours learn
	// the new port after a failover), nothing under user networking, whose
	// only neighbour is the backend's own gateway. Call it after Bind.
	Announce() error

	// Close unbinds and releases the backend; pending frames are lost.
	Close() error
}

// Stats counts a backend's frames. Rx is toward the guest, Tx from it.
type Stats struct {
	RxFrames  uint64 // frames handed to the guest by Receive
	RxBytes   uint64 // their bytes
	RxDropped uint64 // frames that arrived but never reached the guest: queue full, malformed, too big
	TxFrames  uint64 // frames from the guest that the backend carried or answered
	TxBytes   uint64 // their bytes
	TxDropped uint64 // frames from the guest that the backend refused: malformed, not routable, not bound
}

var (
	// ErrDropped is wrapped by the error of a Send whose frame was dropped.
	ErrDropped = errors.New("vnet: frame dropped")
	// ErrClosed is returned by a backend used after Close.
	ErrClosed = errors.New("vnet: backend closed")
)

// txCounters are the Tx half of Stats; the Rx half lives in rxQueue.
type txCounters struct {
	frames, bytes, dropped atomic.Uint64
}

func (c *txCounters) carried(frame []byte) {
	c.frames.Add(1)
	c.bytes.Add(uint64(len(frame)))
}

func stats(rx *rxQueue, tx *txCounters) Stats {
	return Stats{
		RxFrames:  rx.frames.Load(),
		RxBytes:   rx.bytes.Load(),
		RxDropped: rx.dropped.Load(),
		TxFrames:  tx.frames.Load(),
		TxBytes:   tx.bytes.Load(),
		TxDropped: tx.dropped.Load(),
	}
}

package vnet

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// Pcap is a Backend that records every frame the guest sends (even those
// the backend then drops) and every frame it receives, in the order they
// cross the NIC, to a pcap stream.
//
// Each record (header and frame) goes to the writer in a single Write, so a
// file holds whole records up to the last one written: a crashed VMM leaves
// a capture that reads to its end, losing at most the frame in flight.
// Nothing is fsynced; a host crash can lose what the OS had not written.
//
// Frames the backend makes itself and the guest never sees (a TAP's
// gratuitous ARP) are not recorded. A write error stops the recording, not
// the network: it is kept and returned by Err and Close.
type Pcap struct {
	inner Backend

	mu  sync.Mutex
	buf *bufio.Writer // sized to hold a whole record, so Flush issues one Write
	pw  *pcapgo.Writer
	err error
}

// WithPcap writes a pcap header (Ethernet, microsecond timestamps) to w and
// returns b recording to w. Closing the Pcap closes b, not w.
func WithPcap(b Backend, w io.Writer) (*Pcap, error) {
	p := &Pcap{inner: b, buf: bufio.NewWriterSize(w, 16+MaxFrame+512)}
	p.pw = pcapgo.NewWriter(p.buf)
	if err := p.pw.WriteFileHeader(MaxFrame, layers.LinkTypeEthernet); err != nil {
		return nil, fmt.Errorf("vnet: pcap header: %w", err)
	}
	if err := p.buf.Flush(); err != nil {
		return nil, fmt.Errorf("vnet: pcap header: %w", err)
	}
	return p, nil
}

func (p *Pcap) record(frame []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return
	}
	ci := gopacket.CaptureInfo{Timestamp: time.Now(), CaptureLength: len(frame), Length: len(frame)}
	err := p.pw.WritePacket(ci, frame)
	if err == nil {
		err = p.buf.Flush()
	}
	if err != nil {
		p.err = fmt.Errorf("vnet: pcap: %w", err)
	}
}

// Send records the frame, then sends it.
func (p *Pcap) Send(frame []byte) error {
	if len(frame) <= MaxFrame { // what the ABI forbids never reached the wire, and would not fit the snap length
		p.record(frame)
	}
	return p.inner.Send(frame)
}

// Receive receives a frame and records it.
func (p *Pcap) Receive(buf []byte) (int, bool) {
	n, ok := p.inner.Receive(buf)
	if ok {
		p.record(buf[:n])
	}
	return n, ok
}

// Err returns the error that stopped the recording, if any.
func (p *Pcap) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Unwrap returns the recorded backend.
func (p *Pcap) Unwrap() Backend { return p.inner }

// Pending implements Backend.
func (p *Pcap) Pending() <-chan struct{} { return p.inner.Pending() }

// Stats implements Backend.
func (p *Pcap) Stats() Stats { return p.inner.Stats() }

// Bind implements Backend.
func (p *Pcap) Bind() error { return p.inner.Bind() }

// Announce implements Backend.
func (p *Pcap) Announce() error { return p.inner.Announce() }

// Close closes the recorded backend and reports any recording error too.
func (p *Pcap) Close() error { return errors.Join(p.inner.Close(), p.Err()) }

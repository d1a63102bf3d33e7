package logchannel

import (
	"errors"
	"fmt"
	"time"

	"github.com/ftvm/ftvm/replay"
)

// Defaults of Config; the reasons are on Config's fields.
const (
	DefaultFlushInterval     = 5 * time.Millisecond
	DefaultHeartbeatInterval = 50 * time.Millisecond
	DefaultFailoverTimeout   = time.Second
	DefaultHandshakeTimeout  = 5 * time.Second
	DefaultMaxUnacked        = 16 << 20
	DefaultMaxQueued         = 64 << 20

	// DefaultMaxLag is the lag bound the primary's vCPU should give
	// Sender.WaitLag. VM-FT reports a lag typically under 100 ms and
	// throttles the primary above about 1 s. 500 ms leaves normal
	// operation (5x the typical lag) untouched, while keeping the time a
	// failover takes (detection, DefaultFailoverTimeout, plus replaying
	// the lag) within 1.5 s; at 1 s a failover could take 2 s.
	DefaultMaxLag = 500 * time.Millisecond
)

// Config tunes a Sender or a Receiver. The zero value means every default.
// Both sides should use the same values: the failover timeout of one side
// is measured against the heartbeats of the other, which the handshake
// checks.
type Config struct {
	// FlushInterval is the longest an appended entry waits in the
	// Sender's open frame before a background flush sends it, when the
	// caller does not Flush. An output's entry does not wait for it: the
	// caller Flushes at once, as VM-FT forces a log flush when a packet is
	// queued for transmit. Every other entry only has to reach the backup
	// well within the lag bound and the failover timeout, and each frame
	// costs a write here and draws an ack (a wake-up of this side) there.
	// 5 ms: on a pinned primary of the cpu guest it cut the frames of a
	// run from 1055 to 273 and the acks from 1705 to 274 (with the
	// receiver's 10 ms progress acks), the primary's CPU per exit from
	// 195 to 174 us and raised FT/plain from 0.79 to 0.88 (1 ms before).
	FlushInterval time.Duration

	// HeartbeatInterval: a side that has sent nothing for this long sends
	// a heartbeat. 50 ms: twenty chances to be heard within the failover
	// timeout, at a cost of a few hundred bytes a second.
	HeartbeatInterval time.Duration

	// FailoverTimeout: a side that has heard nothing from its peer (no
	// log, ack or heartbeat) for this long declares the peer lost. 1 s:
	// VM-FT uses "a few seconds"; our heartbeats come 20 times as often as
	// that, so 1 s rides out a lost burst, a GC pause or a scheduling
	// hiccup, and a false alarm costs no safety (the split-brain arbiter
	// lets only one side go live), only a needless failover. A shorter
	// timeout buys a faster failover against more false alarms. Must be at
	// least twice the peer's HeartbeatInterval.
	FailoverTimeout time.Duration

	// HandshakeTimeout bounds the handshake: a peer that says nothing, or
	// not enough, within it is dropped. 5 s: the handshake is two round
	// trips, and a peer that takes longer is not one to replicate to.
	HandshakeTimeout time.Duration

	// MaxUnacked bounds the bytes of log the Sender has sent and the
	// backup not yet acknowledged; Append and Flush block beyond it, so a
	// backup that stops reading stalls the primary instead of growing its
	// memory or the kernel's. 16 MiB: at the 10-20 Mbit/s of log VM-FT
	// measured for busy workloads that is seconds of log, at 1 Gbit/s a
	// fraction of one; it never binds while the backup keeps up.
	MaxUnacked int

	// MaxQueued bounds the entries the Receiver has received but Next has
	// not yet returned, counted as the memory they take (the Entry struct
	// and its data), not their encoded size, which can be 100 times
	// smaller. When it is reached the Receiver stops reading the
	// connection and TCP pushes back on the primary (VM-FT: a full log
	// buffer on the backup stalls the primary). The queue may go over by
	// the entries of one log frame; whatever a peer sends, it never holds
	// more than twice the bound. 64 MiB.
	MaxQueued int

	// FrameSize is the payload size at which the Sender's Encoder closes
	// a frame by itself (replay.NewEncoderSize). Default
	// replay.DefaultFrameSize.
	FrameSize int

	// TLS is this side's identity for the channel's mutual TLS (TLS 1.3):
	// its certificate from the pair's CA, naming the VM id, and that CA.
	// Required unless InsecureNoTLS.
	TLS *Credentials

	// InsecureNoTLS runs the channel in clear: no encryption and no
	// authentication, so anyone who reaches the backup's port can feed it
	// a log and anyone on the path reads every guest input. Both sides
	// must agree; a side with TLS refuses a side without.
	InsecureNoTLS bool

	// version overrides ProtocolVersion, for tests of a version mismatch.
	version uint16
}

// withDefaults fills in the defaults and checks the values.
func (c Config) withDefaults() (Config, error) {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.FlushInterval, DefaultFlushInterval)
	def(&c.HeartbeatInterval, DefaultHeartbeatInterval)
	def(&c.FailoverTimeout, DefaultFailoverTimeout)
	def(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	if c.MaxUnacked == 0 {
		c.MaxUnacked = DefaultMaxUnacked
	}
	if c.MaxQueued == 0 {
		c.MaxQueued = DefaultMaxQueued
	}
	if c.FrameSize == 0 {
		c.FrameSize = replay.DefaultFrameSize
	}
	if c.version == 0 {
		c.version = ProtocolVersion
	}
	switch {
	case c.FlushInterval < 0 || c.HeartbeatInterval < 0 || c.FailoverTimeout < 0 || c.HandshakeTimeout < 0:
		return c, errors.New("logchannel: config: negative interval or timeout")
	case c.HeartbeatInterval < time.Millisecond:
		return c, fmt.Errorf("logchannel: config: heartbeat interval %v is under 1ms", c.HeartbeatInterval)
	case c.FailoverTimeout < 2*c.HeartbeatInterval:
		return c, fmt.Errorf("logchannel: config: failover timeout %v is less than twice the heartbeat interval %v", c.FailoverTimeout, c.HeartbeatInterval)
	case c.MaxUnacked < 0 || c.MaxQueued < 0 || c.FrameSize < 0:
		return c, errors.New("logchannel: config: negative size")
	case c.TLS == nil && !c.InsecureNoTLS:
		return c, errors.New("logchannel: config: no TLS credentials (a certificate from the pair's CA); set InsecureNoTLS to run the channel in clear")
	case c.TLS != nil && c.InsecureNoTLS:
		return c, errors.New("logchannel: config: both TLS credentials and InsecureNoTLS")
	}
	return c, nil
}

// tick is how often a side checks its timers (heartbeat due, peer
// silent): often enough that a heartbeat is at most half an interval late
// and peer loss is noticed within an eighth of the timeout.
func (c *Config) tick() time.Duration {
	return max(min(c.HeartbeatInterval, c.FailoverTimeout/4)/2, time.Millisecond)
}

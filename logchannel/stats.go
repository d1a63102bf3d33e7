package logchannel

import (
	"errors"
	"time"
)

// ErrPeerLost is wrapped by the error a side reports once it has lost its
// peer: the connection closed or broke, the peer was silent for the
// failover timeout, or it sent something corrupt (after which nothing it
// sends can be trusted). The error also wraps the cause: errors.Is works
// for both, e.g. ErrPeerLost and replay.ErrChecksum.
var ErrPeerLost = errors.New("logchannel: peer lost")

// ErrClosed is returned by a Sender or Receiver after its Close.
var ErrClosed = errors.New("logchannel: closed")

// peerLost makes the error for a lost peer.
func peerLost(cause error) error { return &lostError{cause: cause} }

type lostError struct{ cause error }

func (e *lostError) Error() string   { return "logchannel: peer lost: " + e.cause.Error() }
func (e *lostError) Unwrap() []error { return []error{ErrPeerLost, e.cause} }

// Lag is how far the backup's replay is behind the primary.
type Lag struct {
	// Exits is the primary's latest exit minus the exit the backup has
	// replayed to.
	Exits uint64
	// Time is how long ago the primary was at the exit the backup has
	// replayed to: 0 when the backup has caught up, growing while it
	// stays behind. Precise to about a millisecond (see Sender.Lag).
	Time time.Duration
}

// Stats are the counters of one side of a channel, a plain value for
// metrics. Fields marked (sender) or (receiver) are zero on the other
// side; where a field says "sent / received" the first is the sender's
// meaning and the second the receiver's.
type Stats struct {
	// Entries appended and sent / received and queued.
	Entries uint64
	// LastSeq is the Seq of the last entry appended / received.
	LastSeq uint64
	// LastExit is the Exit of the last entry appended / received that has
	// one (control entries have none).
	LastExit uint64
	// Frames are log frames sent / received.
	Frames uint64
	// LogBytes are the bytes of log messages sent / received, message
	// headers included: the logging bandwidth.
	LogBytes uint64
	// TransferBytes are the state transfer's stream bytes sent / received
	// (a joining pairing; messages' headers and CRCs not counted). They
	// are not in LogBytes.
	TransferBytes uint64
	// TransferReceived (sender) are the transfer bytes the backup reported
	// received: the transfer's progress at the far end.
	TransferReceived uint64
	// TransferTaken (sender) are the transfer bytes the backup reported
	// taken from its Receiver (Transfer's Read): how far its restore is.
	TransferTaken uint64
	// Acks are ack messages received / sent.
	Acks uint64
	// AckedSeq is the highest Seq acknowledged.
	AckedSeq uint64
	// PrimaryReleased (backup): the seq up to which the primary reported
	// every output released.
	PrimaryReleased uint64
	// ReplayedExit is the exit the backup's replay has reached, as last
	// reported in an ack (sender) / by ReportReplayed (receiver).
	ReplayedExit uint64

	HeartbeatsSent     uint64
	HeartbeatsReceived uint64
	// RTT is the round trip time of the last heartbeat this side sent,
	// RTTAvg the mean over RTTSamples heartbeats. A side sends heartbeats
	// only when it has nothing else to send, so the RTT is measured while
	// idle.
	RTT        time.Duration
	RTTAvg     time.Duration
	RTTSamples uint64

	// Unacked are the bytes of log sent and not yet acknowledged (sender).
	Unacked int64
	// AckDelay is the time from sending a frame to receiving the ack that
	// covers it, for the last ack, and AckDelayAvg the mean over all acks
	// (sender): the part of an output's delay the channel adds.
	AckDelay    time.Duration
	AckDelayAvg time.Duration
	// Lag is the backup's replay lag. The receiver fills in Exits only:
	// the exits received and not yet reported replayed.
	Lag Lag
	// FlowBlocked counts the times Append or Flush waited because
	// MaxUnacked bytes were unacknowledged, FlowBlockedTime the total
	// wait (sender).
	FlowBlocked     uint64
	FlowBlockedTime time.Duration
	// LagWaits counts the WaitLag calls that had to wait, LagWaitTime
	// their total wait: the primary's throttling (sender).
	LagWaits    uint64
	LagWaitTime time.Duration

	// QueuedEntries and QueuedBytes are the received entries Next has not
	// returned yet and the memory they take (receiver).
	QueuedEntries int
	QueuedBytes   int64
	// ReadPaused counts the times the receiver stopped reading because
	// its queue was full, ReadPausedTime the total time (receiver).
	ReadPaused     uint64
	ReadPausedTime time.Duration
}

// rttStats keeps a last value and a mean.
type rttStats struct {
	last  time.Duration
	sum   time.Duration
	count uint64
}

func (r *rttStats) add(d time.Duration) {
	r.last = d
	r.sum += d
	r.count++
}

func (r *rttStats) avg() time.Duration {
	if r.count == 0 {
		return 0
	}
	return r.sum / time.Duration(r.count)
}

package logchannel

import (
	"fmt"
	"time"
)

// senderPolicy is the Sender's policy as a pure core: flow control, when a
// heartbeat, an echo or a release report is due, when the backup is lost,
// the lag and the ack statistics. It does no I/O, starts no goroutine and
// never reads the clock: the Sender feeds it what happened (a frame sent,
// an ack, a heartbeat heard) with the time of its own clock, asks it what
// to do, and does it. It is not safe for concurrent use; the Sender calls
// it with st held. testdata/senderpolicy/*.txt show what it does.
type senderPolicy struct {
	limits senderLimits
	peer   string // names the backup in errors: "the backup at ADDR"

	acked    uint64 // the highest Seq acknowledged
	highSent uint64 // Seq of the last entry of the last frame recorded by sent
	replayed uint64 // the highest exit the backup reported replayed
	inflight []frameRecord
	head     int   // first unacknowledged record in inflight
	unacked  int64 // bytes of inflight[head:]

	lastSend  time.Duration // when the last message of any kind left
	lastHeard time.Duration // when the last message of any kind came from the backup
	// lastProgress: when the backup last acked a new seq or reported a
	// later replayed exit (replayedAtProgress); see stalled.
	lastProgress       time.Duration
	replayedAtProgress uint64
	// leaseFrom: when the newest frame the backup acknowledged was sent
	// (or the pairing began); see leaseExpired.
	leaseFrom time.Duration
	// lastReplayed: when the backup last reported a later replayed exit,
	// or progress through a state transfer (see replayStuck).
	lastReplayed time.Duration
	// The backup's progress through the state transfer of a joining
	// pairing: bytes received and taken (transferProgress).
	transferReceived, transferTaken uint64

	echoStamp    int64 // the stamp of the backup's last heartbeat, to echo
	echoWanted   bool
	released     uint64 // Released: outputs up to this seq have left
	sentReleased uint64 // the last released seq reported to the backup

	lag        lagRing
	frames     uint64
	acks       uint64
	hbSent     uint64
	hbReceived uint64
	rtt        rttStats
	ackDelay   rttStats
}

// senderLimits are the bounds and intervals the policy enforces.
type senderLimits struct {
	maxUnacked        int64 // bytes sent and not acked; one frame always fits
	maxFrames         int   // frames sent and not acked
	heartbeatInterval time.Duration
	failoverTimeout   time.Duration
}

// frameRecord is a frame sent and not yet acknowledged.
type frameRecord struct {
	endSeq uint64 // Seq of its last entry
	bytes  int64  // its message size
	sentAt time.Duration
}

// newSenderPolicy starts the policy at time now, as if the backup had just
// been heard and a message just sent (the handshake).
func newSenderPolicy(limits senderLimits, peer string, now time.Duration) *senderPolicy {
	return &senderPolicy{
		limits:    limits,
		peer:      peer,
		lastSend:  now,
		lastHeard: now,
		leaseFrom: now,
		lag:       lagRing{buf: make([]lagSample, lagRingSize)},
	}
}

// inflightFrames is the number of frames sent and not yet acknowledged.
func (p *senderPolicy) inflightFrames() int { return len(p.inflight) - p.head }

// maySend reports whether a frame of size bytes may be sent now (flow
// control): always when nothing is unacknowledged, so that a frame larger
// than maxUnacked still goes; otherwise when it fits under maxUnacked and
// under maxFrames frames in flight.
func (p *senderPolicy) maySend(size int64) bool {
	n := p.inflightFrames()
	return n == 0 || p.unacked+size <= p.limits.maxUnacked && n < p.limits.maxFrames
}

// sent records a frame of size bytes whose last entry is endSeq, with the
// primary at exit, at time at. The caller records it before writing it:
// the ack may come back before the write returns. The caller has checked
// maySend.
func (p *senderPolicy) sent(endSeq, exit uint64, size int64, at time.Duration) {
	p.compact()
	p.inflight = append(p.inflight, frameRecord{endSeq: endSeq, bytes: size, sentAt: at})
	p.unacked += size
	p.highSent = endSeq
	p.lag.add(exit, at)
	p.frames++
}

// compact moves the unacknowledged records to the front once the
// acknowledged prefix is at least half the slice.
func (p *senderPolicy) compact() {
	if p.head > 0 && p.head >= len(p.inflight)/2 {
		n := copy(p.inflight, p.inflight[p.head:])
		p.inflight, p.head = p.inflight[:n], 0
	}
}

// wrote records that a message (log or control) finished leaving at at.
func (p *senderPolicy) wrote(at time.Duration) { p.lastSend = at }

// ack takes an ack received at at: every entry up to seq is received,
// the backup's replay has reached exit. grew reports a new acked seq. An
// ack beyond what was sent is an error wrapping ErrProtocol: believing it
// would release outputs whose entries the backup cannot have.
func (p *senderPolicy) ack(seq, exit uint64, at time.Duration) (grew bool, err error) {
	p.lastHeard = at
	if seq > p.highSent {
		return false, fmt.Errorf("%s acknowledged seq %d but only seq %d was sent: %w", p.peer, seq, p.highSent, ErrProtocol)
	}
	p.acks++
	grew = seq > p.acked
	if grew {
		p.acked = seq
		for p.head < len(p.inflight) && p.inflight[p.head].endSeq <= seq {
			r := &p.inflight[p.head]
			p.unacked -= r.bytes
			p.ackDelay.add(at - r.sentAt)
			p.leaseFrom = max(p.leaseFrom, r.sentAt)
			p.head++
		}
		if p.head == len(p.inflight) {
			p.inflight, p.head = p.inflight[:0], 0
		}
	}
	if exit > p.replayed {
		p.replayed = exit
		p.lastReplayed = at
		p.lag.prune(exit)
	}
	if grew || exit > p.replayedAtProgress {
		p.lastProgress, p.replayedAtProgress = at, exit
	}
	return grew, nil
}

// transferProgress takes the backup's report that it has received and
// taken so many bytes of the state transfer, at at. While they grow the
// backup is working: log frames sent after the transfer wait behind its
// tail and cannot be acked yet, which stalled must not count.
func (p *senderPolicy) transferProgress(received, taken uint64, at time.Duration) {
	p.lastHeard = at
	if received > p.transferReceived || taken > p.transferTaken {
		p.transferReceived = max(p.transferReceived, received)
		p.transferTaken = max(p.transferTaken, taken)
		p.lastProgress, p.lastReplayed = at, at
	}
}

// heard takes a message that is only a sign of life (a piece of the
// join offer), received at at.
func (p *senderPolicy) heard(at time.Duration) { p.lastHeard = at }

// heartbeat takes the backup's heartbeat, stamped stamp, received at at:
// an echo is due.
func (p *senderPolicy) heartbeat(stamp int64, at time.Duration) {
	p.lastHeard = at
	p.hbReceived++
	p.echoStamp, p.echoWanted = stamp, true
}

// echo takes the backup's echo of our heartbeat stamped stamp (a time
// since the Sender's epoch), received at at: a round trip sample.
func (p *senderPolicy) echo(stamp int64, at time.Duration) {
	p.lastHeard = at
	if rtt := int64(at) - stamp; rtt >= 0 {
		p.rtt.add(time.Duration(rtt))
	}
}

// setReleased records that the outputs of every entry up to seq have left
// this side; a report to the backup becomes due. It never lowers it.
func (p *senderPolicy) setReleased(seq uint64) { p.released = max(p.released, seq) }

// releaseDue returns the released seq to report, if one is newer than the
// last reported; the caller calls releaseReported once it is sent.
func (p *senderPolicy) releaseDue() (uint64, bool) {
	return p.released, p.released > p.sentReleased
}

func (p *senderPolicy) releaseReported(seq uint64) { p.sentReleased = max(p.sentReleased, seq) }

// echoDue returns the stamp of a heartbeat of the backup to echo, once.
func (p *senderPolicy) echoDue() (int64, bool) {
	wanted := p.echoWanted
	p.echoWanted = false
	return p.echoStamp, wanted
}

// heartbeatDue reports whether nothing was sent for heartbeatInterval at
// time at: a heartbeat keeps the backup from declaring us lost.
func (p *senderPolicy) heartbeatDue(at time.Duration) bool {
	return at-p.lastSend >= p.limits.heartbeatInterval
}

// heartbeatSent counts a heartbeat; the caller also calls wrote.
func (p *senderPolicy) heartbeatSent() { p.hbSent++ }

// lost returns, at time at, why the backup is lost, or nil: nothing heard
// from it for longer than the failover timeout, or stalled.
func (p *senderPolicy) lost(at time.Duration) error {
	if silent := at - p.lastHeard; silent > p.limits.failoverTimeout {
		return fmt.Errorf("nothing heard from %s for %v (failover timeout %v)", p.peer, silent.Round(time.Millisecond), p.limits.failoverTimeout)
	}
	return p.stalled(at)
}

// stalled reports a backup that is alive (its heartbeats arrive) but no
// longer working: for longer than the failover timeout it has acked no
// entry and reported no replay progress while entries wait for its ack.
// Such a backup would hold the primary's outputs, and then its vCPU,
// forever; it is lost, as a silent one is.
func (p *senderPolicy) stalled(at time.Duration) error {
	if p.head == len(p.inflight) {
		return nil
	}
	since := max(p.lastProgress, p.inflight[p.head].sentAt)
	if stuck := at - since; stuck > p.limits.failoverTimeout {
		return fmt.Errorf("%s acknowledged nothing and replayed nothing for %v while %d log bytes waited for its ack (acked seq %d of %d; failover timeout %v)",
			p.peer, stuck.Round(time.Millisecond), p.unacked, p.acked, p.highSent, p.limits.failoverTimeout)
	}
	return nil
}

// leaseExpired reports, at time at, that outputs may no longer leave on
// the strength of the backup's acks. The backup takes the primary for lost
// only after a failover timeout in which nothing reached it, and the
// newest frame it acknowledged reached it after it was sent (leaseFrom):
// until leaseFrom plus the failover timeout it cannot have gone live. Past
// that, this side may have been paused (SIGSTOP, a stalled host) while the
// backup took over, and acks that waited in the socket meanwhile prove
// nothing about now. A margin of an eighth of the timeout covers the time
// from the check to the output's write.
func (p *senderPolicy) leaseExpired(at time.Duration) error {
	limit := p.limits.failoverTimeout - p.limits.failoverTimeout/8
	if held := at - p.leaseFrom; held >= limit {
		return fmt.Errorf("the newest frame %s acknowledged was sent %v ago, and in a failover timeout (%v) without us it may have gone live: releasing nothing more until the arbiter decides",
			p.peer, held.Round(time.Millisecond), p.limits.failoverTimeout)
	}
	return nil
}

// replayStuck reports, at time at, a backup whose replay holds the primary:
// the primary has waited for its lag to fall since waitingSince, and for
// longer than the failover timeout the backup replayed nothing (nor took
// any of a state transfer). Its acks and heartbeats may still arrive (its
// receiver works, its vCPU does not), which neither lost nor stalled
// catches; without this the primary would wait for it forever.
//
// A backup that has not reported any replayed exit yet is left alone: a
// backup that just joined may take seconds to take in the state it was
// sent (measured: 1.6 s after the live side had sent 128 MiB, with the
// cores shared), and the silence and transfer-stall rules cover it
// meanwhile.
func (p *senderPolicy) replayStuck(at, waitingSince time.Duration) error {
	if p.replayed == 0 {
		return nil
	}
	since := max(p.lastReplayed, waitingSince)
	if stuck := at - since; stuck > p.limits.failoverTimeout {
		return fmt.Errorf("%s replayed nothing for %v while the primary waited for it to catch up (replayed exit %d; failover timeout %v)",
			p.peer, stuck.Round(time.Millisecond), p.replayed, p.limits.failoverTimeout)
	}
	return nil
}

// lagAt returns the backup's lag at time at, with the primary at exit
// latest (which may be ahead of what was sent: entries still buffered).
func (p *senderPolicy) lagAt(latest uint64, at time.Duration) Lag {
	if p.replayed >= latest {
		return Lag{}
	}
	l := Lag{Exits: latest - p.replayed}
	// Samples the backup has replayed past are pruned, so the oldest
	// left is when the primary moved past the backup's exit.
	if t, ok := p.lag.oldest(); ok {
		l.Time = max(at-t, 0)
	}
	return l
}

// fillStats sets the fields of st the policy keeps.
func (p *senderPolicy) fillStats(st *Stats, latest uint64, at time.Duration) {
	st.Frames = p.frames
	st.Acks = p.acks
	st.AckedSeq = p.acked
	st.ReplayedExit = p.replayed
	st.HeartbeatsSent = p.hbSent
	st.TransferReceived = p.transferReceived
	st.TransferTaken = p.transferTaken
	st.HeartbeatsReceived = p.hbReceived
	st.RTT = p.rtt.last
	st.RTTAvg = p.rtt.avg()
	st.RTTSamples = p.rtt.count
	st.Unacked = p.unacked
	st.AckDelay = p.ackDelay.last
	st.AckDelayAvg = p.ackDelay.avg()
	st.Lag = p.lagAt(latest, at)
}

// lagRingSize bounds the lag samples: at one per lagResolution they cover
// over 4 s, far past any lag bound worth throttling at.
const (
	lagRingSize   = 4096
	lagResolution = time.Millisecond
)

// lagRing remembers when the primary reached which exit: samples (exit,
// at) meaning "by time at the primary had reached exit", increasing in
// both, oldest first.
type lagRing struct {
	buf        []lagSample
	head, size int
}

type lagSample struct {
	exit uint64
	at   time.Duration
}

func (r *lagRing) at(i int) *lagSample { return &r.buf[(r.head+i)%len(r.buf)] }

// add records that the primary has reached exit at time at. Samples less
// than lagResolution apart are merged (the newer exit is credited to the
// older time, which overstates the lag by less than lagResolution); when
// the ring is full the oldest sample goes.
func (r *lagRing) add(exit uint64, at time.Duration) {
	if r.size > 0 {
		last := r.at(r.size - 1)
		if exit <= last.exit {
			return
		}
		if at-last.at < lagResolution {
			last.exit = exit
			return
		}
	}
	if r.size == len(r.buf) {
		r.head = (r.head + 1) % len(r.buf)
		r.size--
	}
	*r.at(r.size) = lagSample{exit: exit, at: at}
	r.size++
}

// prune drops the samples the backup has replayed past: exit <= replayed.
func (r *lagRing) prune(replayed uint64) {
	for r.size > 0 && r.at(0).exit <= replayed {
		r.head = (r.head + 1) % len(r.buf)
		r.size--
	}
}

// oldest returns the time of the oldest sample.
func (r *lagRing) oldest() (time.Duration, bool) {
	if r.size == 0 {
		return 0, false
	}
	return r.at(0).at, true
}

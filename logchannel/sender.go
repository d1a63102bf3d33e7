package logchannel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/replay"
)

// maxInflightFrames bounds the frames sent and not yet acknowledged, next
// to MaxUnacked's bound on their bytes, so that a flood of tiny frames
// cannot grow the bookkeeping without bound. 64Ki frames are a minute of
// log at one frame per FlushInterval.
const maxInflightFrames = 1 << 16

// Sender is the primary's end of the logging channel. It implements
// replay.Sink: the recorder appends entries on the vCPU thread, and they
// reach the backup in frames of the replay log format.
//
// Four goroutines run beside the caller's: a reader (acks and heartbeats
// from the backup), a flusher (sends what Append buffered within
// FlushInterval), a heartbeater and a watchdog (declares the backup lost
// after FailoverTimeout of silence). All methods are safe for concurrent
// use.
type Sender struct {
	conn  net.Conn
	peer  string
	cfg   Config
	epoch time.Time  // timestamps are durations since epoch, on the monotonic clock
	mr    *msgReader // the reader goroutine's

	// mu serialises Append and Flush with the flusher. It is held while
	// the encoder writes, flow-control waits included: the log is one
	// ordered stream.
	mu      sync.Mutex
	enc     *replay.Encoder
	curSeq  uint64 // Seq of the latest entry given to the encoder
	curExit uint64 // the highest Exit given to the encoder
	sentSeq uint64 // Seq of the last entry of the last frame sent

	// wmu serialises writes on conn: log messages and heartbeats.
	wmu sync.Mutex
	hdr [headerLen]byte // scratch, under wmu

	pending chan struct{} // cap 1: there is something for the flusher
	wakeHB  chan struct{} // cap 1: there is a heartbeat to echo, or a release to report
	// states are state messages (SetState) waiting for the next write.
	stateMu sync.Mutex
	states  []byte
	// released: the outputs of every entry up to it have left (Released).
	released atomic.Uint64

	dead       atomic.Bool  // err is set: a fast check for Append
	lastSend   atomic.Int64 // time of the last write, ns since epoch
	lastHeard  atomic.Int64 // time of the last message from the backup
	echoStamp  atomic.Int64 // the backup's last heartbeat, to echo
	echoWanted atomic.Bool
	appended   atomic.Uint64
	lastSeq    atomic.Uint64
	latestExit atomic.Uint64 // the primary's progress, for the lag
	logBytes   atomic.Uint64
	hbSent     atomic.Uint64
	hbReceived atomic.Uint64

	// st guards the state shared with the reader goroutine.
	st       sync.Mutex
	changed  chan struct{} // closed and replaced when acked, replayed or err change
	err      error         // why the Sender stopped; nil while it runs
	lost     chan struct{} // closed when the peer is lost
	done     chan struct{} // closed when the Sender stops, for any reason
	acked    uint64
	highSent uint64 // Seq of the last entry sent or being sent
	replayed uint64 // the backup's replayed exit
	inflight []frameRecord
	head     int   // first unacknowledged record in inflight
	unacked  int64 // bytes of the inflight records
	// lastProgress: when the backup last acked a new seq or reported a
	// later replayed exit (replayedAtProgress); see stalled.
	lastProgress       time.Duration
	replayedAtProgress uint64
	lag                lagRing
	frames             uint64
	acks               uint64
	rtt                rttStats
	ackDelay           rttStats

	flowBlocked, lagWaits       uint64
	flowBlockedTime, lagWaitDur time.Duration

	ackCh chan uint64
	wg    sync.WaitGroup
}

// frameRecord is a frame sent and not yet acknowledged.
type frameRecord struct {
	endSeq uint64 // Seq of its last entry
	bytes  int64  // its message size
	sentAt time.Duration
}

var _ replay.Sink = (*Sender)(nil)

// senderWriter is what the Encoder writes to: each Write is one Flush of
// the encoder, the stream header and/or one whole frame, and goes out as
// one log message.
type senderWriter struct{ s *Sender }

func (w senderWriter) Write(p []byte) (int, error) { return w.s.sendLog(p) }

func newSender(conn net.Conn, mr *msgReader, cfg Config) (*Sender, error) {
	s := &Sender{
		conn:    conn,
		peer:    "the backup at " + conn.RemoteAddr().String(),
		cfg:     cfg,
		epoch:   time.Now(),
		mr:      mr,
		pending: make(chan struct{}, 1),
		wakeHB:  make(chan struct{}, 1),
		changed: make(chan struct{}),
		lost:    make(chan struct{}),
		done:    make(chan struct{}),
		ackCh:   make(chan uint64, 1),
		lag:     lagRing{buf: make([]lagSample, lagRingSize)},
	}
	s.enc = replay.NewEncoderSize(senderWriter{s}, cfg.FrameSize)
	s.lastHeard.Store(s.now())
	s.lastSend.Store(s.now())
	// The stream header goes first, so the backup checks the log format
	// before any entry arrives.
	s.mu.Lock()
	err := s.enc.Flush()
	s.mu.Unlock()
	if err != nil {
		return nil, s.failed(err)
	}
	s.wg.Add(4)
	go s.readLoop()
	go s.flushLoop()
	go s.heartbeatLoop()
	go s.watchdog()
	return s, nil
}

func (s *Sender) now() int64 { return int64(time.Since(s.epoch)) }

// Append adds e to the log. It is buffered in the open frame and sent by
// the next Flush, by the flusher within FlushInterval, or at once if the
// frame is full. e must follow the previous entry (Seq one more, Exit not
// less); an invalid entry is refused (the error wraps
// replay.ErrInvalidEntry) and the Sender stays usable. Append keeps no
// reference to e.Data.
//
// Append blocks while MaxUnacked bytes are unacknowledged (flow control);
// Close or the loss of the backup ends the wait with an error. After the
// backup is lost every call returns the error at once.
func (s *Sender) Append(e replay.Entry) error {
	if s.dead.Load() {
		return s.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	wasEmpty := s.enc.Buffered() == 0
	prevSeq, prevExit := s.curSeq, s.curExit
	s.curSeq = e.Seq
	s.curExit = max(s.curExit, e.Exit)
	if err := s.enc.Append(e); err != nil {
		if errors.Is(err, replay.ErrInvalidEntry) {
			// Refused before anything was written.
			s.curSeq, s.curExit = prevSeq, prevExit
			return fmt.Errorf("logchannel: %w", err)
		}
		return s.failed(err)
	}
	s.appended.Add(1)
	s.lastSeq.Store(e.Seq)
	s.latestExit.Store(s.curExit)
	if wasEmpty {
		select {
		case s.pending <- struct{}{}:
		default:
		}
	}
	return nil
}

// Flush sends the open frame now. The caller flushes after appending an
// output's entry, so the output's delay does not wait for the flusher.
// It blocks like Append.
func (s *Sender) Flush() error {
	if s.dead.Load() {
		return s.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enc.Flush(); err != nil {
		return s.failed(err)
	}
	return nil
}

// failed returns the error for a failed write of the encoder: the
// Sender's own error if it has stopped (the write failed because of it).
func (s *Sender) failed(err error) error {
	if e := s.Err(); e != nil {
		return e
	}
	return fmt.Errorf("logchannel: %w", err)
}

// sendLog sends the bytes of one encoder Write as a log message. Called
// with mu held.
func (s *Sender) sendLog(p []byte) (int, error) {
	size := int64(headerLen + len(p))
	if s.curSeq > s.sentSeq {
		if err := s.waitForRoom(size); err != nil {
			return 0, err
		}
		// Recorded before the write: the ack may come back before the
		// write call returns.
		s.st.Lock()
		now := time.Duration(s.now())
		s.compactInflight()
		s.inflight = append(s.inflight, frameRecord{endSeq: s.curSeq, bytes: size, sentAt: now})
		s.unacked += size
		s.highSent = s.curSeq
		s.lag.add(s.curExit, now)
		s.frames++
		s.st.Unlock()
	}
	states := s.takeStates()
	s.wmu.Lock()
	bufs := net.Buffers{states, appendHeader(s.hdr[:0], msgLog, len(p)), p}
	_, err := bufs.WriteTo(s.conn)
	s.lastSend.Store(s.now())
	s.wmu.Unlock()
	if err != nil {
		s.lose(fmt.Errorf("sending a log frame to %s: %w", s.peer, err))
		return 0, s.Err()
	}
	s.sentSeq = s.curSeq
	s.logBytes.Add(uint64(size))
	return len(p), nil
}

// waitForRoom blocks until a message of size bytes fits under MaxUnacked
// (one always fits when nothing is unacknowledged) or the Sender stops.
func (s *Sender) waitForRoom(size int64) error {
	s.st.Lock()
	defer s.st.Unlock()
	fits := func() bool {
		inflight := len(s.inflight) - s.head
		return inflight == 0 || s.unacked+size <= int64(s.cfg.MaxUnacked) && inflight < maxInflightFrames
	}
	var since int64 = -1
	for s.err == nil && !fits() {
		if since < 0 {
			since = s.now()
			s.flowBlocked++
		}
		ch := s.changed
		s.st.Unlock()
		<-ch
		s.st.Lock()
	}
	if since >= 0 {
		s.flowBlockedTime += time.Duration(s.now() - since)
	}
	return s.err
}

// compactInflight moves the unacknowledged records to the front once the
// acknowledged prefix is at least half the slice.
func (s *Sender) compactInflight() {
	if s.head > 0 && s.head >= len(s.inflight)/2 {
		n := copy(s.inflight, s.inflight[s.head:])
		s.inflight, s.head = s.inflight[:n], 0
	}
}

// notifyLocked wakes everyone waiting on a change. Called with st held.
func (s *Sender) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// stop ends the Sender with err; the first call wins. Closing the
// connection wakes the goroutines blocked on it.
func (s *Sender) stop(err error, lost bool) {
	s.st.Lock()
	if s.err != nil {
		s.st.Unlock()
		return
	}
	s.err = err
	s.dead.Store(true)
	if lost {
		close(s.lost)
	}
	close(s.done)
	s.notifyLocked()
	s.st.Unlock()
	s.conn.Close()
}

func (s *Sender) lose(cause error) { s.stop(peerLost(cause), true) }

// readLoop reads what the backup sends: acks, heartbeats, echoes.
func (s *Sender) readLoop() {
	defer s.wg.Done()
	for {
		t, size, err := s.mr.readHeader(msgAck, msgHeartbeat, msgEcho)
		if err != nil {
			s.lose(readFailed(s.peer, err))
			return
		}
		want := ackLen
		if t != msgAck {
			want = heartbeatLen
		}
		f, err := s.mr.readControl(t, size, want, true)
		if err != nil {
			s.lose(readFailed(s.peer, err))
			return
		}
		now := s.now()
		s.lastHeard.Store(now)
		switch t {
		case msgAck:
			if err := s.onAck(leUint64(f[0:]), leUint64(f[8:]), time.Duration(now)); err != nil {
				s.lose(err)
				return
			}
		case msgHeartbeat:
			s.hbReceived.Add(1)
			s.echoStamp.Store(parseStamp(f))
			s.echoWanted.Store(true)
			select {
			case s.wakeHB <- struct{}{}:
			default:
			}
		case msgEcho:
			if rtt := now - parseStamp(f); rtt >= 0 {
				s.st.Lock()
				s.rtt.add(time.Duration(rtt))
				s.st.Unlock()
			}
		}
	}
}

// readFailed words a read error of a session.
func readFailed(peer string, err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s closed the connection", peer)
	}
	return fmt.Errorf("reading from %s: %w", peer, err)
}

// onAck takes an ack: every entry up to seq is received, the backup's
// replay has reached exit.
func (s *Sender) onAck(seq, exit uint64, now time.Duration) error {
	s.st.Lock()
	if seq > s.highSent {
		// Believing it would release outputs whose entries the backup
		// cannot have: the Output Rule would be broken.
		s.st.Unlock()
		return fmt.Errorf("%s acknowledged seq %d but only seq %d was sent: %w", s.peer, seq, s.highSent, ErrProtocol)
	}
	s.acks++
	grew := seq > s.acked
	if grew {
		s.acked = seq
		for s.head < len(s.inflight) && s.inflight[s.head].endSeq <= seq {
			r := &s.inflight[s.head]
			s.unacked -= r.bytes
			s.ackDelay.add(now - r.sentAt)
			s.head++
		}
		if s.head == len(s.inflight) {
			s.inflight, s.head = s.inflight[:0], 0
		}
	}
	if exit > s.replayed {
		s.replayed = exit
		s.lag.prune(exit)
	}
	if grew || exit > s.replayedAtProgress {
		s.lastProgress, s.replayedAtProgress = now, exit
	}
	s.notifyLocked()
	s.st.Unlock()
	if grew {
		// Only this goroutine sends on ackCh, and the channel holds one
		// value: drop a value the consumer has not taken (acks are
		// cumulative) and the send cannot block.
		select {
		case <-s.ackCh:
		default:
		}
		s.ackCh <- seq
	}
	return nil
}

// flushLoop sends what Append left in the open frame within FlushInterval.
// It sleeps until Append signals a frame has been opened, so an idle
// channel costs no wakeups.
func (s *Sender) flushLoop() {
	defer s.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-s.pending:
		}
		timer.Reset(s.cfg.FlushInterval)
		select {
		case <-s.done:
			timer.Stop()
			return
		case <-timer.C:
		}
		s.mu.Lock()
		if !s.dead.Load() && s.enc.Buffered() > 0 {
			s.enc.Flush() // a failure stops the Sender, which Append reports
		}
		s.mu.Unlock()
	}
}

// heartbeatLoop echoes the backup's heartbeats, writes state (SetState)
// and reports released outputs (Released) that no log frame carried, and
// sends a heartbeat when nothing was sent for
// HeartbeatInterval. Its writes may block behind
// a log write that TCP holds back; the watchdog does not depend on it.
func (s *Sender) heartbeatLoop() {
	defer s.wg.Done()
	ticker := time.NewTicker(s.cfg.tick())
	defer ticker.Stop()
	var buf []byte
	var sentReleased uint64
	for {
		select {
		case <-s.done:
			return
		case <-ticker.C:
		case <-s.wakeHB:
		}
		if states := s.takeStates(); len(states) > 0 && !s.writeControl(states) {
			return
		}
		if r := s.released.Load(); r > sentReleased {
			if !s.writeControl(appendStamp(buf[:0], msgReleased, int64(r))) {
				return
			}
			sentReleased = r
		}
		if s.echoWanted.Swap(false) {
			if !s.writeControl(appendStamp(buf[:0], msgEcho, s.echoStamp.Load())) {
				return
			}
		}
		if now := s.now(); time.Duration(now-s.lastSend.Load()) >= s.cfg.HeartbeatInterval {
			if !s.writeControl(appendStamp(buf[:0], msgHeartbeat, now)) {
				return
			}
			s.hbSent.Add(1)
		}
	}
}

// writeControl writes a control message; false if the Sender stopped.
func (s *Sender) writeControl(b []byte) bool {
	s.wmu.Lock()
	_, err := s.conn.Write(b)
	s.lastSend.Store(s.now())
	s.wmu.Unlock()
	if err != nil {
		s.lose(fmt.Errorf("sending to %s: %w", s.peer, err))
		return false
	}
	return true
}

// watchdog declares the backup lost when nothing came from it for
// FailoverTimeout. It never writes, so a connection stuck in TCP flow
// control cannot stop it.
func (s *Sender) watchdog() {
	defer s.wg.Done()
	ticker := time.NewTicker(s.cfg.tick())
	defer ticker.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-ticker.C:
		}
		now := s.now()
		if silent := time.Duration(now - s.lastHeard.Load()); silent > s.cfg.FailoverTimeout {
			s.lose(fmt.Errorf("nothing heard from %s for %v (failover timeout %v)", s.peer, silent.Round(time.Millisecond), s.cfg.FailoverTimeout))
			return
		}
		if err := s.stalled(time.Duration(now)); err != nil {
			s.lose(err)
			return
		}
	}
}

// stalled reports a backup that is alive (its heartbeats arrive) but no
// longer working: for longer than the failover timeout it has acked no
// entry and reported no replay progress while entries wait for its ack.
// Such a backup would hold the primary's outputs, and then its vCPU,
// forever; it is lost, as a silent one is.
func (s *Sender) stalled(now time.Duration) error {
	s.st.Lock()
	defer s.st.Unlock()
	if s.head == len(s.inflight) {
		return nil
	}
	since := max(s.lastProgress, s.inflight[s.head].sentAt)
	if stuck := now - since; stuck > s.cfg.FailoverTimeout {
		return fmt.Errorf("%s acknowledged nothing and replayed nothing for %v while %d log bytes waited for its ack (acked seq %d of %d; failover timeout %v)",
			s.peer, stuck.Round(time.Millisecond), s.unacked, s.acked, s.highSent, s.cfg.FailoverTimeout)
	}
	return nil
}

// SetState sends the backup the latest value of a piece of the guest's
// world that the log does not carry (a NAT mapping): before any log frame
// written after this call, so an entry that depends on it never arrives
// first. It never blocks on the connection. An error means the key or
// value is out of bounds (MaxStateKey, MaxStateValue).
func (s *Sender) SetState(key string, value []byte) error {
	if len(key) == 0 || len(key) > MaxStateKey || len(value) > MaxStateValue {
		return fmt.Errorf("logchannel: state %q of %d bytes: a key is 1-%d bytes and a value at most %d", key, len(value), MaxStateKey, MaxStateValue)
	}
	fields := make([]byte, 0, 1+len(key)+len(value))
	fields = append(append(append(fields, byte(len(key))), key...), value...)
	s.stateMu.Lock()
	s.states = appendControl(s.states, msgState, fields)
	s.stateMu.Unlock()
	select {
	case s.wakeHB <- struct{}{}:
	default:
	}
	return nil
}

// takeStates returns the state messages waiting to be written, in order.
func (s *Sender) takeStates() []byte {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	b := s.states
	s.states = nil
	return b
}

// Released tells the backup, soon, that every output of the entries up to
// seq has left this side: a backup that goes live then releases only the
// outputs of later entries. Safe from any goroutine; never blocks.
func (s *Sender) Released(seq uint64) {
	for {
		old := s.released.Load()
		if seq <= old {
			return
		}
		if s.released.CompareAndSwap(old, seq) {
			break
		}
	}
	select {
	case s.wakeHB <- struct{}{}:
	default:
	}
}

// Acked returns the highest Seq the backup has acknowledged.
func (s *Sender) Acked() uint64 {
	s.st.Lock()
	defer s.st.Unlock()
	return s.acked
}

// Acks delivers the highest acknowledged Seq each time it grows, for the
// goroutine that releases held outputs (outputrule.Rule.Ack). Acks are
// cumulative, so a value the consumer has not taken yet is replaced by the
// next: the consumer may skip values but always gets the latest, and the
// reader of the connection never waits for it. The channel is never
// closed; select on PeerLost too.
func (s *Sender) Acks() <-chan uint64 { return s.ackCh }

// WaitAcked blocks until the backup has acknowledged seq, the Sender
// stops (its error) or ctx ends.
func (s *Sender) WaitAcked(ctx context.Context, seq uint64) error {
	for {
		s.st.Lock()
		acked, err, ch := s.acked, s.err, s.changed
		s.st.Unlock()
		switch {
		case acked >= seq:
			return nil
		case err != nil:
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("logchannel: waiting for the ack of seq %d (acked %d): %w", seq, acked, ctx.Err())
		}
	}
}

// Lag returns how far the backup's replay is behind, from the replayed
// exit the backup last reported in an ack. The Sender keeps, for each
// frame it sends, the frame's highest exit and the time, merged to one
// sample per millisecond and at most lagRingSize samples (over 4 s at
// that rate): Lag.Time is precise to about a millisecond, and when the
// backup is further behind than the samples reach it is a lower bound.
func (s *Sender) Lag() Lag {
	s.st.Lock()
	defer s.st.Unlock()
	return s.lagLocked(time.Duration(s.now()))
}

func (s *Sender) lagLocked(now time.Duration) Lag {
	latest := s.latestExit.Load()
	if s.replayed >= latest {
		return Lag{}
	}
	l := Lag{Exits: latest - s.replayed}
	// Samples the backup has replayed past are pruned, so the oldest
	// left is when the primary moved past the backup's exit.
	if at, ok := s.lag.oldest(); ok {
		l.Time = max(now-at, 0)
	}
	return l
}

// WaitLag blocks while Lag().Time exceeds maxLag: the primary's vCPU calls
// it between exits to throttle itself when the backup falls behind, as
// VM-FT slows the primary when its lag grows (DefaultMaxLag is a sensible
// bound). It returns nil once the lag is within maxLag, the Sender's error
// if it stops, or ctx's error. The backup's progress comes with its acks,
// so it must report it (Receiver.ReportReplayed) for the lag to fall.
func (s *Sender) WaitLag(ctx context.Context, maxLag time.Duration) error {
	var since int64 = -1
	defer func() {
		if since >= 0 {
			s.st.Lock()
			s.lagWaitDur += time.Duration(s.now() - since)
			s.st.Unlock()
		}
	}()
	for {
		s.st.Lock()
		lag, err, ch := s.lagLocked(time.Duration(s.now())), s.err, s.changed
		if lag.Time > maxLag && err == nil && since < 0 {
			since = s.now()
			s.lagWaits++
		}
		s.st.Unlock()
		switch {
		case err != nil:
			return err
		case lag.Time <= maxLag:
			return nil
		}
		// The lag only falls when an ack reports progress, which
		// notifies ch.
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("logchannel: waiting for the backup's lag of %v to fall to %v: %w", lag.Time, maxLag, ctx.Err())
		}
	}
}

// PeerLost is closed when the backup is lost (Err says why). It is not
// closed by Close.
func (s *Sender) PeerLost() <-chan struct{} { return s.lost }

// Err returns nil while the Sender runs, then why it stopped: an error
// wrapping ErrPeerLost and the cause, or ErrClosed.
func (s *Sender) Err() error {
	s.st.Lock()
	defer s.st.Unlock()
	return s.err
}

// Stats returns the Sender's counters.
func (s *Sender) Stats() Stats {
	s.st.Lock()
	defer s.st.Unlock()
	return Stats{
		Entries:            s.appended.Load(),
		LastSeq:            s.lastSeq.Load(),
		LastExit:           s.latestExit.Load(),
		Frames:             s.frames,
		LogBytes:           s.logBytes.Load(),
		Acks:               s.acks,
		AckedSeq:           s.acked,
		ReplayedExit:       s.replayed,
		HeartbeatsSent:     s.hbSent.Load(),
		HeartbeatsReceived: s.hbReceived.Load(),
		RTT:                s.rtt.last,
		RTTAvg:             s.rtt.avg(),
		RTTSamples:         s.rtt.count,
		Unacked:            s.unacked,
		AckDelay:           s.ackDelay.last,
		AckDelayAvg:        s.ackDelay.avg(),
		Lag:                s.lagLocked(time.Duration(s.now())),
		FlowBlocked:        s.flowBlocked,
		FlowBlockedTime:    s.flowBlockedTime,
		LagWaits:           s.lagWaits,
		LagWaitTime:        s.lagWaitDur,
	}
}

// Close ends the session without flushing: Flush and WaitAcked first for
// an orderly end. It interrupts a blocked Append, Flush or WaitLag, which
// return ErrClosed, and waits for the Sender's goroutines. The backup sees
// the connection close and reports its primary lost.
func (s *Sender) Close() error {
	s.stop(ErrClosed, false)
	s.wg.Wait()
	return nil
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

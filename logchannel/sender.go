package logchannel

import (
	"context"
	"crypto/tls"
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
// after FailoverTimeout of silence, or of no progress). They do the I/O;
// what to do and when (flow control, heartbeats, loss of the backup, the
// lag) is decided by senderPolicy, a pure core they feed under st with
// the Sender's clock. All methods are safe for concurrent use.
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
	// Under wmu, reused by writeFrameLocked: the frame's parts for writev,
	// or one buffer for TLS.
	vecParts [3][]byte
	vec      net.Buffers
	wbuf     []byte

	pending chan struct{} // cap 1: there is something for the flusher
	wakeHB  chan struct{} // cap 1: there is a heartbeat to echo, or a release to report
	// states are state messages (SetState) waiting for the next write.
	stateMu sync.Mutex
	states  []byte

	dead       atomic.Bool // err is set: a fast check for Append
	appended   atomic.Uint64
	lastSeq    atomic.Uint64
	latestExit atomic.Uint64 // the primary's progress, for the lag
	logBytes   atomic.Uint64

	// st guards the state shared between the goroutines.
	st      sync.Mutex
	changed chan struct{} // closed and replaced when acked, replayed or err change
	// changedTaken: a waiter holds changed, so the next change must close it.
	changedTaken bool
	err          error         // why the Sender stopped; nil while it runs
	lost         chan struct{} // closed when the peer is lost
	done         chan struct{} // closed when the Sender stops, for any reason
	// pol decides: flow control, heartbeats, loss of the backup, lag.
	pol *senderPolicy

	flowBlocked, lagWaits       uint64
	flowBlockedTime, lagWaitDur time.Duration

	ackCh chan uint64
	// ackMu orders the deliveries of acks: to onAckFn once OnAck set it,
	// else on ackCh.
	ackMu   sync.Mutex
	onAckFn func(uint64)
	wg      sync.WaitGroup

	// The state transfer of a joining pairing (Hello.Join).
	join     bool
	transfer *TransferWriter
	// transferred is closed once the end of the transfer is sent: log
	// messages wait for it.
	transferred chan struct{}
	// joinMu guards the seq the log resumes after, once Finish named it,
	// and the first seq appended, which must be the one after it.
	joinMu    sync.Mutex
	joinAt    uint64
	joinKnown bool
	firstSeq  uint64
	// transferBytes are the transfer's stream bytes sent, for Stats.
	transferBytes atomic.Uint64
	// offer is the joining backup's offer (Offer), nil without a join.
	offer *offerIn
}

var _ replay.Sink = (*Sender)(nil)

// senderWriter is what the Encoder writes to: each Write is one Flush of
// the encoder, the stream header and/or one whole frame, and goes out as
// one log message.
type senderWriter struct{ s *Sender }

func (w senderWriter) Write(p []byte) (int, error) { return w.s.sendLog(p) }

func newSender(conn net.Conn, mr *msgReader, cfg Config, join bool) (*Sender, error) {
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
		join:    join,
	}
	if join {
		s.transfer = &TransferWriter{s: s}
		s.transferred = make(chan struct{})
		s.offer = &offerIn{done: make(chan struct{})}
	}
	s.enc = replay.NewEncoderSize(senderWriter{s}, cfg.FrameSize)
	s.pol = newSenderPolicy(senderLimits{
		maxUnacked:        int64(cfg.MaxUnacked),
		maxFrames:         maxInflightFrames,
		heartbeatInterval: cfg.HeartbeatInterval,
		failoverTimeout:   cfg.FailoverTimeout,
	}, s.peer, s.now())
	// The stream header goes first, so the backup checks the log format
	// before any entry arrives. In a joining pairing the state transfer
	// goes first, and the header with the first frame after it.
	if !join {
		s.mu.Lock()
		err := s.enc.Flush()
		s.mu.Unlock()
		if err != nil {
			return nil, s.failed(err)
		}
	}
	s.wg.Add(4)
	go s.readLoop()
	go s.flushLoop()
	go s.heartbeatLoop()
	go s.watchdog()
	return s, nil
}

// now is the Sender's clock, the time it gives its policy: the time since
// epoch on the monotonic clock.
func (s *Sender) now() time.Duration { return time.Since(s.epoch) }

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
	first := false
	if s.join {
		var err error
		if first, err = s.checkJoinSeq(e.Seq); err != nil {
			return err
		}
	}
	wasEmpty := s.enc.Buffered() == 0
	prevSeq, prevExit := s.curSeq, s.curExit
	s.curSeq = e.Seq
	s.curExit = max(s.curExit, e.Exit)
	if err := s.enc.Append(e); err != nil {
		if errors.Is(err, replay.ErrInvalidEntry) {
			// Refused before anything was written.
			s.curSeq, s.curExit = prevSeq, prevExit
			if first {
				s.joinMu.Lock()
				s.firstSeq = 0
				s.joinMu.Unlock()
			}
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
	if s.join {
		select {
		case <-s.transferred:
		case <-s.done:
			return 0, s.Err()
		}
	}
	size := int64(headerLen + len(p))
	if s.curSeq > s.sentSeq {
		if err := s.waitForRoom(size); err != nil {
			return 0, err
		}
		// Recorded before the write: the ack may come back before the
		// write call returns.
		s.st.Lock()
		s.pol.sent(s.curSeq, s.curExit, size, s.now())
		s.st.Unlock()
	}
	states := s.takeStates()
	s.wmu.Lock()
	err := s.writeFrameLocked(states, p)
	s.wroteLocked()
	s.wmu.Unlock()
	if err != nil {
		s.lose(fmt.Errorf("sending a log frame to %s: %w", s.peer, err))
		return 0, s.Err()
	}
	s.sentSeq = s.curSeq
	s.logBytes.Add(uint64(size))
	return len(p), nil
}

// writeFrameLocked writes the waiting state messages and the log frame p
// in one go, allocating nothing: in clear with one writev; over TLS as one
// record (a vector would become one record per part) from a reused buffer.
// Called with wmu held.
func (s *Sender) writeFrameLocked(states, p []byte) error {
	hdr := appendHeader(s.hdr[:0], msgLog, len(p))
	if _, isTLS := s.conn.(*tls.Conn); isTLS {
		s.wbuf = append(append(append(s.wbuf[:0], states...), hdr...), p...)
		_, err := s.conn.Write(s.wbuf)
		if cap(s.wbuf) > 4<<20 {
			s.wbuf = nil // do not keep an outsized frame's buffer for ever
		}
		return err
	}
	s.vecParts = [3][]byte{states, hdr, p}
	s.vec = s.vecParts[:]
	_, err := s.vec.WriteTo(s.conn) // consumes s.vec; vecParts is reused next time
	s.vecParts = [3][]byte{}
	return err
}

// waitForRoom blocks until a message of size bytes fits under MaxUnacked
// (one always fits when nothing is unacknowledged) or the Sender stops.
func (s *Sender) waitForRoom(size int64) error {
	s.st.Lock()
	defer s.st.Unlock()
	var since time.Duration = -1
	for s.err == nil && !s.pol.maySend(size) {
		if since < 0 {
			since = s.now()
			s.flowBlocked++
		}
		ch := s.waitChangeLocked()
		s.st.Unlock()
		<-ch
		s.st.Lock()
	}
	if since >= 0 {
		s.flowBlockedTime += s.now() - since
	}
	return s.err
}

// wroteLocked tells the policy a message has left. Called with wmu held,
// so that the times it is given never go back.
func (s *Sender) wroteLocked() {
	s.st.Lock()
	s.pol.wrote(s.now())
	s.st.Unlock()
}

// notifyLocked wakes everyone waiting on a change. Called with st held.
// The channel is replaced only if a waiter took it (waitChangeLocked):
// most acks find nobody waiting, and a new channel per ack was an
// allocation per ack.
func (s *Sender) notifyLocked() {
	if !s.changedTaken {
		return
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.changedTaken = false
}

// waitChangeLocked returns the channel the next change closes. Called with
// st held.
func (s *Sender) waitChangeLocked() <-chan struct{} {
	s.changedTaken = true
	return s.changed
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

// Lose ends the session as if the backup were lost, for cause: PeerLost
// closes and Err wraps ErrPeerLost. A primary whose joining backup failed
// after the log switched to it decides on it as on any lost backup.
func (s *Sender) Lose(cause error) { s.lose(cause) }

// Peer returns the backup's address.
func (s *Sender) Peer() string { return s.conn.RemoteAddr().String() }

// readLoop reads what the backup sends: acks, heartbeats, echoes.
func (s *Sender) readLoop() {
	defer s.wg.Done()
	for {
		t, size, err := s.mr.readHeader(msgAck, msgHeartbeat, msgEcho, msgTransferProgress, msgJoinOffer)
		if err != nil {
			s.lose(readFailed(s.peer, err))
			return
		}
		want := heartbeatLen
		switch {
		case t == msgAck:
			want = ackLen
		case (t == msgTransferProgress || t == msgJoinOffer) && !s.join:
			s.lose(readFailed(s.peer, s.mr.protocolError("%v message in a pairing without a join", t)))
			return
		case t == msgTransferProgress:
			want = transferProgressLen
		case t == msgJoinOffer:
			want = offerLen
		}
		f, err := s.mr.readControl(t, size, want, t != msgJoinOffer)
		if err != nil {
			s.lose(readFailed(s.peer, err))
			return
		}
		now := s.now()
		switch t {
		case msgAck:
			if err := s.onAck(leUint64(f[0:]), leUint64(f[8:]), now); err != nil {
				s.lose(err)
				return
			}
		case msgHeartbeat:
			s.st.Lock()
			s.pol.heartbeat(parseStamp(f), now)
			s.st.Unlock()
			select {
			case s.wakeHB <- struct{}{}:
			default:
			}
		case msgEcho:
			s.st.Lock()
			s.pol.echo(parseStamp(f), now)
			s.st.Unlock()
		case msgTransferProgress:
			s.st.Lock()
			s.pol.transferProgress(leUint64(f[0:]), leUint64(f[8:]), now)
			s.st.Unlock()
		case msgJoinOffer:
			if err := s.readOffer(f); err != nil {
				s.lose(readFailed(s.peer, err))
				return
			}
			s.st.Lock()
			s.pol.heard(now)
			s.st.Unlock()
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
	grew, err := s.pol.ack(seq, exit, now)
	if err != nil {
		// Believing it would release outputs whose entries the backup
		// cannot have: the Output Rule would be broken.
		s.st.Unlock()
		return err
	}
	s.notifyLocked()
	s.st.Unlock()
	if grew {
		s.ackMu.Lock()
		defer s.ackMu.Unlock()
		if s.onAckFn != nil {
			// Not once the Sender stopped: the acks of a lost backup
			// must not release outputs once the loss is being decided
			// on (the decision releases them, or not).
			if !s.dead.Load() {
				s.onAckFn(seq)
			}
			return nil
		}
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
		s.st.Lock()
		r, releaseDue := s.pol.releaseDue()
		s.st.Unlock()
		if releaseDue {
			if !s.writeControl(appendStamp(buf[:0], msgReleased, int64(r))) {
				return
			}
			s.st.Lock()
			s.pol.releaseReported(r)
			s.st.Unlock()
		}
		s.st.Lock()
		stamp, echoDue := s.pol.echoDue()
		s.st.Unlock()
		if echoDue {
			if !s.writeControl(appendStamp(buf[:0], msgEcho, stamp)) {
				return
			}
		}
		now := s.now()
		s.st.Lock()
		hbDue := s.pol.heartbeatDue(now)
		s.st.Unlock()
		if hbDue {
			if !s.writeControl(appendStamp(buf[:0], msgHeartbeat, int64(now))) {
				return
			}
			s.st.Lock()
			s.pol.heartbeatSent()
			s.st.Unlock()
		}
	}
}

// writeControl writes a control message; false if the Sender stopped.
func (s *Sender) writeControl(b []byte) bool {
	s.wmu.Lock()
	_, err := s.conn.Write(b)
	s.wroteLocked()
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
		s.st.Lock()
		err := s.pol.lost(s.now())
		s.st.Unlock()
		if err != nil {
			s.lose(err)
			return
		}
	}
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
	if s.dead.Load() {
		return nil // no backup to tell; nothing may pile up for it
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

// FlushReports writes now the state and the release report not sent yet.
// A primary whose guest has ended calls it once its last output left and
// before Close, so that its backup learns that nothing is left for it to
// release (it would otherwise take the closing connection for a primary
// that died holding outputs).
func (s *Sender) FlushReports() error {
	if states := s.takeStates(); len(states) > 0 && !s.writeControl(states) {
		return s.Err()
	}
	s.st.Lock()
	r, due := s.pol.releaseDue()
	s.st.Unlock()
	if due {
		if !s.writeControl(appendStamp(nil, msgReleased, int64(r))) {
			return s.Err()
		}
		s.st.Lock()
		s.pol.releaseReported(r)
		s.st.Unlock()
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
// outputs of later entries. Safe from any goroutine; never waits for the
// connection.
func (s *Sender) Released(seq uint64) {
	s.st.Lock()
	old, _ := s.pol.releaseDue()
	s.pol.setReleased(seq)
	s.st.Unlock()
	if seq <= old {
		return
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
	return s.pol.acked
}

// Acks delivers the highest acknowledged Seq each time it grows, for the
// goroutine that releases held outputs (outputrule.Rule.Ack). Acks are
// cumulative, so a value the consumer has not taken yet is replaced by the
// next: the consumer may skip values but always gets the latest, and the
// reader of the connection never waits for it. The channel is never
// closed; select on PeerLost too.
func (s *Sender) Acks() <-chan uint64 { return s.ackCh }

// OnAck makes the reader of the connection call f with the highest
// acknowledged Seq each time it grows, in order, instead of delivering it
// on Acks; an ack already waiting on Acks goes to f at once. That saves a
// hand-off to another goroutine, and the wake-up of a thread it may cost,
// per ack: the acks are what releases held outputs. f runs on the reader:
// it must not block, nor wait for anything this Sender does. Once the
// Sender has stopped, f gets no more acks.
func (s *Sender) OnAck(f func(seq uint64)) {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	s.onAckFn = f
	select {
	case seq := <-s.ackCh:
		if !s.dead.Load() {
			f(seq)
		}
	default:
	}
}

// WaitAcked blocks until the backup has acknowledged seq, the Sender
// stops (its error) or ctx ends.
func (s *Sender) WaitAcked(ctx context.Context, seq uint64) error {
	for {
		s.st.Lock()
		acked, err, ch := s.pol.acked, s.err, s.waitChangeLocked()
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
	return s.lagLocked()
}

// lagLocked is Lag with st held.
func (s *Sender) lagLocked() Lag { return s.pol.lagAt(s.latestExit.Load(), s.now()) }

// WaitLag blocks while Lag().Time exceeds maxLag: the primary's vCPU calls
// it between exits to throttle itself when the backup falls behind, as
// VM-FT slows the primary when its lag grows (DefaultMaxLag is a sensible
// bound). It returns nil once the lag is within maxLag, the Sender's error
// if it stops, or ctx's error. The backup's progress comes with its acks,
// so it must report it (Receiver.ReportReplayed) for the lag to fall. A
// backup that replays nothing for the failover timeout while WaitLag holds
// the primary is lost (the error wraps ErrPeerLost): it may still ack and
// send heartbeats, but it would hold the primary forever.
func (s *Sender) WaitLag(ctx context.Context, maxLag time.Duration) error {
	var since time.Duration = -1
	defer func() {
		if since >= 0 {
			s.st.Lock()
			s.lagWaitDur += s.now() - since
			s.st.Unlock()
		}
	}()
	var tick *time.Ticker
	var tickC <-chan time.Time
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	for {
		s.st.Lock()
		now := s.now()
		lag, err, ch := s.lagLocked(), s.err, s.waitChangeLocked()
		if lag.Time > maxLag && err == nil && since < 0 {
			since = now
			s.lagWaits++
		}
		var stuck error
		if err == nil && lag.Time > maxLag {
			stuck = s.pol.replayStuck(now, since)
		}
		s.st.Unlock()
		switch {
		case err != nil:
			return err
		case lag.Time <= maxLag:
			return nil
		case stuck != nil:
			s.lose(stuck)
			continue // s.err now says why
		}
		if tick == nil {
			// A backup that stops replaying sends no ack to wake us: look
			// again a few times per failover timeout.
			tick = time.NewTicker(max(s.pol.limits.failoverTimeout/4, time.Millisecond))
			tickC = tick.C
		}
		// The lag only falls when an ack reports progress, which
		// notifies ch.
		select {
		case <-ch:
		case <-tickC:
		case <-ctx.Done():
			return fmt.Errorf("logchannel: waiting for the backup's lag of %v to fall to %v: %w", lag.Time, maxLag, ctx.Err())
		}
	}
}

// MayRelease says whether outputs whose entries the backup acknowledged
// may leave now: the backup's acks bound when it could first take this
// side for lost (see senderPolicy.leaseExpired). When they no longer do,
// MayRelease loses the backup, so that the arbiter decides who goes on,
// and returns why; the caller must then hold its outputs until the
// decision. Call it just before the outputs are written.
func (s *Sender) MayRelease() error {
	s.st.Lock()
	err := s.pol.leaseExpired(s.now())
	s.st.Unlock()
	if err != nil {
		// Not here: closing the connection may wait for a write, and the
		// caller holds its outputs' lock.
		go s.lose(err)
	}
	return err
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
	st := Stats{
		Entries:         s.appended.Load(),
		LastSeq:         s.lastSeq.Load(),
		LastExit:        s.latestExit.Load(),
		LogBytes:        s.logBytes.Load(),
		FlowBlocked:     s.flowBlocked,
		FlowBlockedTime: s.flowBlockedTime,
		LagWaits:        s.lagWaits,
		LagWaitTime:     s.lagWaitDur,
	}
	s.pol.fillStats(&st, st.LastExit, s.now())
	st.TransferBytes = s.transferBytes.Load()
	return st
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

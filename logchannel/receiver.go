package logchannel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/replay"
)

// progressAckInterval is the least time between two acks that only report
// replay progress (acks of received entries go at once): the backup's
// replayer may report every exit, and the primary needs the lag only well
// within its bound (DefaultMaxLag, 500 ms) and the failover timeout, not
// to the exit. Each ack wakes the primary; at 1 ms they were most of its
// wake-ups on a compute-bound guest.
const progressAckInterval = 10 * time.Millisecond

// Receiver is the backup's end of the logging channel. It implements
// replay.Source: Next returns the primary's entries in order.
//
// A reader goroutine reads the connection, decodes the log into a queue
// and has every entry acknowledged as soon as its frame is decoded (on
// receipt, not on replay, as in VM-FT); a writer goroutine sends the acks
// and heartbeats; a watchdog declares the primary lost after
// FailoverTimeout of silence. Next is for one goroutine (the replayer);
// the other methods are safe for concurrent use.
type Receiver struct {
	conn  net.Conn
	peer  string
	cfg   Config
	epoch time.Time
	mr    *msgReader // the reader goroutine's

	mu      sync.Mutex
	arrived sync.Cond // an entry was queued, or err was set
	room    sync.Cond // the queue shrank, or err was set
	queue   []replay.Entry
	qhead   int   // next entry for Next
	qbytes  int64 // memory of the queued entries (entryMem)
	err     error // why the reader stopped; nil while it runs
	closed  bool
	entries uint64
	lastSeq uint64 // of the last entry queued
	lastExt uint64 // the last Exit queued
	frames  uint64
	rtt     rttStats

	pausedCount uint64
	pausedTime  time.Duration

	receivedSeq  atomic.Uint64 // every entry up to it is queued: what the next ack says
	replayedExit atomic.Uint64
	// progressArmed is set when ReportReplayed has woken the writer and
	// the writer has not sent the progress yet: the replayer may report
	// every exit, and only the first report after an ack wakes the writer.
	progressArmed atomic.Bool
	lastHeard     atomic.Int64 // ns since epoch
	paused        atomic.Bool  // the reader waits for room: silence is ours
	echoStamp     atomic.Int64
	echoWanted    atomic.Bool
	logBytes      atomic.Uint64
	acksSent      atomic.Uint64
	ackedSeq      atomic.Uint64
	// primaryReleased: the primary said it released the outputs of every
	// entry up to this seq (msgReleased).
	primaryReleased atomic.Uint64
	// state: the primary's SetState values by key (setState).
	stateMu    sync.Mutex
	state      map[string][]byte
	hbSent     atomic.Uint64
	hbReceived atomic.Uint64

	// transfer is the state transfer of a joining pairing (Hello.Join),
	// nil in another; joinAt the seq it ended at.
	transfer      *transferIn
	joinAt        atomic.Uint64
	joinGen       atomic.Uint64 // the generation FinishAt gave
	transferBytes atomic.Uint64 // received
	transferTaken atomic.Uint64 // returned by Transfer's Read

	// offer: the join offer's messages waiting for the writer
	// (SendOffer); offerQueued once it was given.
	offerMu     sync.Mutex
	offer       []byte
	offerQueued bool

	wake     chan struct{} // cap 1: the writer has something to send
	done     chan struct{}
	doneOnce sync.Once
	wg       sync.WaitGroup
}

var _ replay.Source = (*Receiver)(nil)

// entryOverhead is the memory of an Entry beyond its variable parts.
var entryOverhead = int64(reflect.TypeFor[replay.Entry]().Size())

// entryMem is the memory a queued entry takes, what MaxQueued bounds.
func entryMem(e *replay.Entry) int64 {
	return entryOverhead + int64(len(e.Data)+len(e.Start.VMID)+len(e.Start.Config))
}

func newReceiver(conn net.Conn, mr *msgReader, cfg Config, join bool) *Receiver {
	r := &Receiver{
		conn:  conn,
		peer:  "the primary at " + conn.RemoteAddr().String(),
		cfg:   cfg,
		epoch: time.Now(),
		mr:    mr,
		wake:  make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
	r.arrived.L = &r.mu
	r.room.L = &r.mu
	if join {
		// MaxQueued bounds the transfer's bytes waiting for Read too.
		r.transfer = &transferIn{r: r, chunks: make(chan []byte, max(1, cfg.MaxQueued/MaxTransferChunk))}
	}
	r.lastHeard.Store(r.now())
	r.wg.Add(3)
	go r.readLoop()
	go r.writeLoop()
	go r.watchdog()
	return r
}

func (r *Receiver) now() int64 { return int64(time.Since(r.epoch)) }

// Next returns the next entry of the log, blocking until one arrives.
// Once the primary is lost (the connection closed or broke, it was silent
// for FailoverTimeout, or it sent a corrupt frame) Next first returns every
// entry received before, then an error wrapping ErrPeerLost and the cause,
// for good. After Close it returns ErrClosed.
func (r *Receiver) Next() (replay.Entry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		if r.closed {
			return replay.Entry{}, ErrClosed
		}
		if r.qhead < len(r.queue) {
			break
		}
		if r.err != nil {
			return replay.Entry{}, r.err
		}
		r.arrived.Wait()
	}
	e := r.queue[r.qhead]
	r.queue[r.qhead] = replay.Entry{} // drop the reference to its data
	r.qhead++
	r.qbytes -= entryMem(&e)
	switch {
	case r.qhead == len(r.queue):
		r.queue, r.qhead = r.queue[:0], 0
	case r.qhead >= 1024 && r.qhead >= len(r.queue)/2:
		n := copy(r.queue, r.queue[r.qhead:])
		clear(r.queue[n:])
		r.queue, r.qhead = r.queue[:n], 0
	}
	r.room.Signal()
	return e, nil
}

// ReportReplayed tells the primary that the backup's replay has reached
// exit (it goes with the next ack, at most every millisecond). The
// primary's Lag and WaitLag depend on it. Lower values than an earlier
// report are ignored.
func (r *Receiver) ReportReplayed(exit uint64) {
	for {
		old := r.replayedExit.Load()
		if exit <= old {
			return
		}
		if r.replayedExit.CompareAndSwap(old, exit) {
			break
		}
	}
	if r.progressArmed.CompareAndSwap(false, true) {
		r.signalWriter()
	}
}

func (r *Receiver) signalWriter() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Err returns nil while the Receiver reads, then why it stopped (the same
// error Next returns once the queue is drained, or ErrClosed).
func (r *Receiver) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Done is closed when the Receiver stops reading: the primary is lost or
// Close was called. Entries may still be queued for Next.
func (r *Receiver) Done() <-chan struct{} { return r.done }

// setState keeps a state message's value under its key.
func (r *Receiver) setState(f []byte) error {
	if len(f) < 1 || int(f[0]) == 0 || len(f) < 1+int(f[0]) {
		return r.mr.protocolError("state message of %d bytes with a key of %d", len(f), f[0])
	}
	key, value := string(f[1:1+int(f[0])]), f[1+int(f[0]):]
	if len(value) > MaxStateValue {
		return r.mr.protocolError("state %q with a value of %d bytes, over %d", key, len(value), MaxStateValue)
	}
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	if _, ok := r.state[key]; !ok && len(r.state) >= MaxStates {
		return r.mr.protocolError("state key %q over the limit of %d keys", key, MaxStates)
	}
	if r.state == nil {
		r.state = map[string][]byte{}
	}
	r.state[key] = append([]byte(nil), value...)
	return nil
}

// State returns a copy of the state the primary sent (SetState): each key
// with its latest value. Complete for every log entry received.
func (r *Receiver) State() map[string][]byte {
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	m := make(map[string][]byte, len(r.state))
	for k, v := range r.state {
		m[k] = v
	}
	return m
}

// PrimaryReleased is the seq up to which the primary said it released
// every output. The outputs of later entries may never have left it.
// Final once the channel has ended (ErrPeerLost).
func (r *Receiver) PrimaryReleased() uint64 { return r.primaryReleased.Load() }

// Stats returns the Receiver's counters.
func (r *Receiver) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Stats{
		Entries:            r.entries,
		LastSeq:            r.lastSeq,
		LastExit:           r.lastExt,
		Frames:             r.frames,
		LogBytes:           r.logBytes.Load(),
		TransferBytes:      r.transferBytes.Load(),
		Acks:               r.acksSent.Load(),
		AckedSeq:           r.ackedSeq.Load(),
		PrimaryReleased:    r.primaryReleased.Load(),
		ReplayedExit:       r.replayedExit.Load(),
		HeartbeatsSent:     r.hbSent.Load(),
		HeartbeatsReceived: r.hbReceived.Load(),
		RTT:                r.rtt.last,
		RTTAvg:             r.rtt.avg(),
		RTTSamples:         r.rtt.count,
		Lag:                Lag{Exits: r.lastExt - min(r.lastExt, r.replayedExit.Load())},
		QueuedEntries:      len(r.queue) - r.qhead,
		QueuedBytes:        r.qbytes,
		ReadPaused:         r.pausedCount,
		ReadPausedTime:     r.pausedTime,
	}
}

// Close stops the Receiver: the connection closes (the primary sees its
// backup lost), Next returns ErrClosed, and Close waits for the
// Receiver's goroutines.
func (r *Receiver) Close() error {
	r.flushAcks(500 * time.Millisecond)
	r.mu.Lock()
	r.closed = true
	if r.err == nil {
		r.err = ErrClosed
	}
	r.arrived.Broadcast()
	r.room.Broadcast()
	r.mu.Unlock()
	r.stopped()
	r.wg.Wait()
	return nil
}

// fail stops the reader because the primary is lost; the first cause
// wins.
func (r *Receiver) fail(cause error) {
	r.mu.Lock()
	if r.err == nil {
		r.err = peerLost(cause)
	}
	r.arrived.Broadcast()
	r.room.Broadcast()
	r.mu.Unlock()
	r.stopped()
}

// flushAcks gives the writer up to limit to acknowledge every entry
// received: the primary holds outputs until their entries are acked, so a
// backup that ends (its replay verified) must not leave its last ack unsent.
func (r *Receiver) flushAcks(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for r.ackedSeq.Load() < r.receivedSeq.Load() && time.Now().Before(deadline) {
		select {
		case <-r.done:
			return
		default:
		}
		r.signalWriter()
		time.Sleep(time.Millisecond)
	}
}

func (r *Receiver) stopped() {
	r.doneOnce.Do(func() { close(r.done) })
	r.conn.Close()
}

// Entries go from the reader to the queue in batches: handing them over
// one by one would wake the replayer once per entry, which costs more than
// decoding them. A batch goes when it reaches these sizes, and whenever the
// reader is about to wait for the network.
const (
	batchEntries = 256
	batchBytes   = 256 << 10
)

// readLoop decodes the log into the queue until the stream ends.
func (r *Receiver) readLoop() {
	defer r.wg.Done()
	ls := &logStream{r: r}
	ls.dec = replay.NewDecoder(ls)
	for {
		e, err := ls.dec.Next()
		if err != nil {
			// Entries decoded before the failure are good: keep them,
			// without waiting for room (a batch is small), so that the
			// failure is reported at once.
			r.publish(ls, true)
			cause := ls.cause
			if cause == nil {
				// The bytes arrived but are not a good log: a flipped
				// bit (the frame's CRC), a forged length, a gap in the
				// seqs. Entries before the bad frame stay queued.
				cause = fmt.Errorf("bad log from %s: %w", r.peer, err)
			}
			r.fail(cause)
			return
		}
		if !ls.started {
			ls.started = true
			if r.transfer != nil && e.Seq != r.JoinAtSeq()+1 {
				r.fail(fmt.Errorf("bad log from %s: its first entry has seq %d, but the state transfer ended at seq %d: %w", r.peer, e.Seq, r.JoinAtSeq(), ErrProtocol))
				return
			}
		}
		ls.batch = append(ls.batch, e)
		ls.batchMem += entryMem(&e)
		ls.frames = ls.dec.Frames()
		if len(ls.batch) >= batchEntries || ls.batchMem >= batchBytes {
			if !r.publish(ls, false) {
				return
			}
		}
	}
}

// publish moves the reader's batch to the queue. Past twice MaxQueued it
// first waits for Next to make room (the queue normally takes a frame
// whole, see logStream.Read; this bounds a frame of many tiny entries),
// unless force. false if the Receiver stopped.
func (r *Receiver) publish(ls *logStream, force bool) bool {
	if len(ls.batch) == 0 {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	hardCap, size := 2*int64(r.cfg.MaxQueued), ls.batchMem
	if !force && !r.waitForRoomLocked(func() bool { return r.qbytes == 0 || r.qbytes+size <= hardCap }) {
		return false
	}
	wasEmpty := r.qhead == len(r.queue)
	r.queue = append(r.queue, ls.batch...)
	r.qbytes += size
	r.entries += uint64(len(ls.batch))
	last := &ls.batch[len(ls.batch)-1]
	r.lastSeq = last.Seq
	for i := len(ls.batch) - 1; i >= 0; i-- {
		if ls.batch[i].Exit != 0 {
			r.lastExt = ls.batch[i].Exit
			break
		}
	}
	r.frames = ls.frames
	clear(ls.batch) // drop the references to the entries' data
	ls.batch, ls.batchMem = ls.batch[:0], 0
	if wasEmpty {
		r.arrived.Signal() // only Next waits, and only on an empty queue
	}
	return true
}

// waitForRoomLocked waits, with mu held, until fits or the Receiver
// stops; false if it stopped. While it waits the reader does not read the
// connection, so the watchdog does not count the silence.
func (r *Receiver) waitForRoomLocked(fits func() bool) bool {
	if r.err != nil || fits() {
		return r.err == nil
	}
	r.pausedCount++
	since := r.now()
	r.paused.Store(true)
	for r.err == nil && !fits() {
		r.room.Wait()
	}
	// Restart the silence clock before the watchdog looks again.
	r.lastHeard.Store(r.now())
	r.paused.Store(false)
	r.pausedTime += time.Duration(r.now() - since)
	return r.err == nil
}

// markReceived has every entry queued so far acknowledged.
func (r *Receiver) markReceived() {
	r.mu.Lock()
	seq := r.lastSeq
	r.mu.Unlock()
	if seq > r.receivedSeq.Load() {
		r.receivedSeq.Store(seq)
		r.signalWriter()
	}
}

// errStreamEnded is what logStream returns to the decoder when the
// connection fails; the cause is in logStream.cause.
var errStreamEnded = errors.New("log stream ended")

// logStream is the replay log carried by the connection's log messages,
// as one io.Reader for the Decoder. It handles the other messages on the
// way, and is where acks and flow control hook in: the decoder reads a
// whole frame before returning its first entry and reads nothing more
// until it has returned its last, and each log message holds whole frames
// (one encoder Flush), so when the decoder asks for bytes past the end of
// a message, every entry of the messages so far is queued, and is acked.
type logStream struct {
	r         *Receiver
	dec       *replay.Decoder // reading from this logStream
	remaining int             // bytes of the current log message not yet read
	cause     error           // why the stream ended

	batch    []replay.Entry // decoded, not yet queued
	batchMem int64
	frames   uint64 // frames decoded, up to the last entry in batch
	started  bool   // an entry was decoded
}

func (ls *logStream) Read(p []byte) (int, error) {
	r := ls.r
	for ls.remaining == 0 {
		if !r.publish(ls, false) {
			ls.cause = ErrClosed
			return 0, errStreamEnded
		}
		r.markReceived()
		// Stop reading while the queue is full: TCP then pushes back
		// on the primary.
		r.mu.Lock()
		ok := r.waitForRoomLocked(func() bool { return r.qbytes < int64(r.cfg.MaxQueued) })
		r.mu.Unlock()
		if !ok {
			ls.cause = ErrClosed // the Receiver has its error already
			return 0, errStreamEnded
		}
		if err := ls.nextMessage(); err != nil {
			ls.cause = err
			return 0, errStreamEnded
		}
	}
	n, err := r.mr.r.Read(p[:min(len(p), ls.remaining)])
	ls.remaining -= n
	r.mr.off += int64(n)
	if n > 0 {
		r.lastHeard.Store(r.now())
		return n, nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	ls.cause = fmt.Errorf("reading log message %d from %s, %d bytes short of its end: %w", r.mr.count, r.peer, ls.remaining, err)
	return 0, errStreamEnded
}

// nextMessage reads messages until the header of a log message, handling
// heartbeats and echoes on the way.
func (ls *logStream) nextMessage() error {
	r := ls.r
	for {
		t, size, err := r.mr.readHeader(msgLog, msgHeartbeat, msgEcho, msgReleased, msgState, msgTransfer, msgTransferEnd)
		if err != nil {
			return readFailed(r.peer, err)
		}
		now := r.now()
		r.lastHeard.Store(now)
		if t == msgTransfer || t == msgTransferEnd {
			tr := r.transfer
			switch {
			case tr == nil:
				err = r.mr.protocolError("%v message in a pairing that did not announce a join", t)
			case tr.ended:
				err = r.mr.protocolError("%v message after the end of the state transfer", t)
			case t == msgTransfer:
				err = tr.readTransfer(size)
			default:
				err = tr.readTransferEnd(size)
			}
			if err != nil {
				return readFailed(r.peer, err)
			}
			continue
		}
		if t == msgLog && r.transfer != nil && !r.transfer.ended {
			return readFailed(r.peer, r.mr.protocolError("log message before the end of the state transfer"))
		}
		if t == msgLog {
			ls.remaining = size
			r.logBytes.Add(uint64(headerLen + size))
			return nil
		}
		if t == msgState {
			f, err := r.mr.readControl(t, size, maxStateLen, false)
			if err == nil {
				err = r.setState(f)
			}
			if err != nil {
				return readFailed(r.peer, err)
			}
			continue
		}
		f, err := r.mr.readControl(t, size, heartbeatLen, true)
		if err != nil {
			return readFailed(r.peer, err)
		}
		switch t {
		case msgHeartbeat:
			r.hbReceived.Add(1)
			r.echoStamp.Store(parseStamp(f))
			r.echoWanted.Store(true)
			r.signalWriter()
		case msgEcho:
			if rtt := now - parseStamp(f); rtt >= 0 {
				r.mu.Lock()
				r.rtt.add(time.Duration(rtt))
				r.mu.Unlock()
			}
		case msgReleased:
			if seq := leUint64(f); seq > r.primaryReleased.Load() {
				r.primaryReleased.Store(seq)
			}
		}
	}
}

// writeLoop sends acks (at once for received entries, at most every
// progressAckInterval for replay progress alone), echoes, and a heartbeat
// when nothing was sent for HeartbeatInterval. It is the only writer of
// the connection.
func (r *Receiver) writeLoop() {
	defer r.wg.Done()
	ticker := time.NewTicker(r.cfg.tick())
	defer ticker.Stop()
	progress := time.NewTimer(time.Hour)
	progress.Stop()
	var sentSeq, sentExit uint64
	var sentReceived, sentTaken uint64 // transfer progress reported
	lastAck, lastSend, lastTransferReport := int64(-1<<62), r.now(), int64(-1<<62)
	buf := make([]byte, 0, 64)
	for {
		select {
		case <-r.done:
			return
		case <-r.wake:
		case <-ticker.C:
		case <-progress.C:
		}
		now := r.now()
		buf = buf[:0]
		if r.echoWanted.Swap(false) {
			buf = appendStamp(buf, msgEcho, r.echoStamp.Load())
		}
		seq, exit := r.receivedSeq.Load(), r.replayedExit.Load()
		ack := seq > sentSeq
		if !ack && exit > sentExit {
			if wait := time.Duration(lastAck + int64(progressAckInterval) - now); wait > 0 {
				progress.Reset(wait)
			} else {
				ack = true
			}
		}
		if ack {
			// Disarm before reading the exit that goes out, so that a
			// report racing with this ack wakes the writer again.
			r.progressArmed.Store(false)
			exit = r.replayedExit.Load()
			buf = appendAck(buf, seq, exit)
			sentSeq, sentExit, lastAck = seq, exit, now
		}
		if r.transfer != nil && time.Duration(now-lastTransferReport) >= r.cfg.tick() {
			received, taken := r.transferBytes.Load(), r.transferTaken.Load()
			if received > sentReceived || taken > sentTaken {
				var f [16]byte
				binary.LittleEndian.PutUint64(f[0:], received)
				binary.LittleEndian.PutUint64(f[8:], taken)
				buf = appendControl(buf, msgTransferProgress, f[:])
				sentReceived, sentTaken, lastTransferReport = received, taken, now
			}
		}
		if r.transfer != nil {
			buf = append(buf, r.takeOffer()...)
		}
		if len(buf) == 0 && time.Duration(now-lastSend) >= r.cfg.HeartbeatInterval {
			buf = appendStamp(buf, msgHeartbeat, now)
			r.hbSent.Add(1)
		}
		if len(buf) == 0 {
			continue
		}
		if _, err := r.conn.Write(buf); err != nil {
			r.fail(fmt.Errorf("sending to %s: %w", r.peer, err))
			return
		}
		lastSend = r.now()
		if ack {
			r.acksSent.Add(1)
			r.ackedSeq.Store(seq)
		}
	}
}

// watchdog declares the primary lost when nothing came from it for
// FailoverTimeout while the reader was reading.
func (r *Receiver) watchdog() {
	defer r.wg.Done()
	ticker := time.NewTicker(r.cfg.tick())
	defer ticker.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-ticker.C:
		}
		if r.paused.Load() {
			continue
		}
		if silent := time.Duration(r.now() - r.lastHeard.Load()); silent > r.cfg.FailoverTimeout {
			r.fail(fmt.Errorf("nothing heard from %s for %v (failover timeout %v)", r.peer, silent.Round(time.Millisecond), r.cfg.FailoverTimeout))
			return
		}
	}
}

package ft

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// errConsoleFull is what offering an output to a full console queue
// returns: nothing was taken, and the output (with every later one, to
// keep their order) waits until the queue calls its onRoom.
var errConsoleFull = errors.New("ft: the console queue is full")

// maxConsoleQueued bounds the console output released but not yet written
// (a terminal paused with Ctrl-S, a pipe nobody reads): past it the outputs
// stay held, the held buffer fills and the vCPU waits.
const maxConsoleQueued = 1 << 20

// consoleQueue writes released console output to the real writer from a
// goroutine of its own, so that releasing an output never waits for the
// writer. Acks release outputs on the logging channel's reader, and a
// reader stuck in a write to a stopped terminal would read no acks nor
// heartbeats: after the failover timeout the pair would take its peer for
// lost. A queue that is full refuses more (errConsoleFull) instead of
// blocking or dropping them.
type consoleQueue struct {
	w      io.Writer
	max    int
	onRoom func() // called, on the writer goroutine, after a refusal once there is room

	mu       sync.Mutex
	buf      []byte // queued, not yet handed to w
	spare    []byte // the buffer last written, reused for the next queue
	inFlight int    // bytes in the write under way
	writing  bool   // the writer goroutine runs
	refused  bool   // an offer was refused since the last write
	err      error  // the first write error: later output is dropped
	idle     chan struct{}
}

func newConsoleQueue(w io.Writer, maxQueued int) *consoleQueue {
	return &consoleQueue{w: w, max: maxQueued}
}

// offer queues data for the writer, or returns errConsoleFull and takes
// nothing. An output larger than the bound is taken when the queue is
// empty, or it would never be. It never blocks. After a write failed,
// data is dropped and the failure returned.
func (q *consoleQueue) offer(data []byte) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return q.err
	}
	if queued := len(q.buf) + q.inFlight; queued > 0 && queued+len(data) > q.max {
		q.refused = true
		return errConsoleFull
	}
	q.buf = append(q.buf, data...)
	if !q.writing {
		q.writing = true
		go q.write()
	}
	return nil
}

// write writes what is queued, in order, until nothing is, then ends:
// one writer at a time, started by the offer that finds none.
func (q *consoleQueue) write() {
	q.mu.Lock()
	for len(q.buf) > 0 {
		out := q.buf
		q.buf, q.spare = q.spare[:0], nil
		q.inFlight = len(out)
		q.mu.Unlock()
		_, err := q.w.Write(out)
		q.mu.Lock()
		q.spare, q.inFlight = out, 0
		if err != nil && q.err == nil {
			q.err = fmt.Errorf("vmm: console output: %w", err)
			q.buf = q.buf[:0]
		}
		if q.refused && q.onRoom != nil {
			// Not under mu: onRoom offers the outputs that wait.
			q.refused = false
			q.mu.Unlock()
			q.onRoom()
			q.mu.Lock()
		}
	}
	q.writing = false
	if q.idle != nil {
		close(q.idle)
		q.idle = nil
	}
	q.mu.Unlock()
}

// flush waits until what was queued is written, and returns the first
// write error. A writer blocked for good blocks it too: output released
// to the outside world must reach it before ftvm exits.
func (q *consoleQueue) flush() error {
	q.mu.Lock()
	if !q.writing {
		err := q.err
		q.mu.Unlock()
		return err
	}
	if q.idle == nil {
		q.idle = make(chan struct{})
	}
	idle := q.idle
	q.mu.Unlock()
	<-idle
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.err
}

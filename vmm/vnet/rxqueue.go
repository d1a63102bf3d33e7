package vnet

import (
	"sync"
	"sync/atomic"
)

// RxQueueFrames is how many received frames a backend holds for the guest.
// A frame that arrives when the queue is full is dropped and counted, so a
// flood costs at most RxQueueFrames*MaxFrame bytes (1.5 MiB) and the world
// can never make the VMM grow without bound.
const RxQueueFrames = 1024

// rxQueue is the bounded FIFO of frames waiting for the guest.
type rxQueue struct {
	mu    sync.Mutex
	slots [][]byte // a ring; each slot's array (cap MaxFrame) is reused, so a steady stream allocates nothing
	head  int      // the oldest frame
	n     int      // frames queued

	// pending holds a token while n > 0 (see Backend.Pending). Kept under mu
	// by push and pop so the token and the queue agree.
	pending chan struct{}

	frames, bytes, dropped atomic.Uint64
}

func newRxQueue(capacity int) *rxQueue {
	return &rxQueue{slots: make([][]byte, capacity), pending: make(chan struct{}, 1)}
}

// push copies frame into the queue. It drops (and counts) a frame of a size
// the guest ABI does not allow, or one that finds the queue full.
func (q *rxQueue) push(frame []byte) bool {
	if len(frame) < MinFrame || len(frame) > MaxFrame {
		q.dropped.Add(1)
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == len(q.slots) {
		q.dropped.Add(1)
		return false
	}
	i := (q.head + q.n) % len(q.slots)
	if q.slots[i] == nil {
		q.slots[i] = make([]byte, 0, MaxFrame)
	}
	q.slots[i] = append(q.slots[i][:0], frame...)
	q.n++
	q.signal()
	return true
}

// pop copies the oldest frame into buf. A frame that does not fit (the
// caller broke the len(buf) >= MaxFrame precondition) is dropped and
// counted rather than truncated: a cut frame would be a lie to the guest.
func (q *rxQueue) pop(buf []byte) (int, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.n > 0 {
		f := q.slots[q.head]
		q.head = (q.head + 1) % len(q.slots)
		q.n--
		if len(f) > len(buf) {
			q.dropped.Add(1)
			continue
		}
		n := copy(buf, f)
		q.frames.Add(1)
		q.bytes.Add(uint64(n))
		if q.n > 0 {
			q.signal() // put the token back for the frames still queued
		} else {
			q.unsignal() // none left: a stale token would wake a waiter for nothing
		}
		return n, true
	}
	q.unsignal()
	return 0, false
}

func (q *rxQueue) signal() {
	select {
	case q.pending <- struct{}{}:
	default:
	}
}

func (q *rxQueue) unsignal() {
	select {
	case <-q.pending:
	default:
	}
}

// len is the number of frames queued.
func (q *rxQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

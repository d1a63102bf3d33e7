// Package ft runs a guest fault-tolerantly, VM-FT style: a primary that
// records every non-deterministic input and ships it to a backup over the
// logging channel, holding each output until the backup has acknowledged
// the entry that produced it (the Output Rule), and a backup that replays
// the log one step behind, checks every execution point, and goes live
// when the primary is gone and the arbiter says it may.
//
// It is the glue between vmm, replay, logchannel, outputrule and
// splitbrain; the command line only parses flags and calls it.
package ft

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ftvm/ftvm/outputrule"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm"
)

// holdingWorld is the primary's live world under the Output Rule: the
// recorder logs each output's entry and hands the output here with that
// entry's Seq; it leaves when an ack covers the Seq.
type holdingWorld struct {
	*vmm.LiveWorld
	ctx   context.Context
	start time.Time
	send  func(replay.OutputKind, []byte) error // to the real sinks
	flush func() error                          // ship buffered entries now
	m     *Metrics

	mu       sync.Mutex // serialises Rule, release order and the sinks
	rule     *outputrule.Rule
	solo     bool          // no backup any more: outputs leave at once
	ackCh    chan struct{} // closed and replaced at an ack if taken (wakeLocked)
	ackTaken bool          // a waiter holds ackCh
	sendErr  error
	lastHeld uint64
	delays   []time.Duration // when recording: every release's delay
	record   bool
	// reportReleased tells the backup the Seq of the last output that
	// left (outputs leave in Seq order, so every earlier one has too).
	reportReleased func(seq uint64)
	// mayRelease, if set, is asked before acknowledged outputs leave
	// (logchannel.Sender.MayRelease): an error means the backup may have
	// gone live meanwhile, and they wait in blocked, in order, for the
	// arbiter (fenced): goSolo sends them if this side won.
	mayRelease func() error
	fenced     bool
	// blocked are acknowledged outputs that have not left, in order:
	// fenced, or behind one that a sink could not take yet (send returned
	// errConsoleFull; resume sends them on). Their bytes count against
	// maxHeldBytes with the held ones', so that the vCPU waits while a
	// sink is stuck.
	blocked      []outputrule.Released
	blockedBytes int
}

var _ replay.OutputHolder = (*holdingWorld)(nil)

// maxHeldBytes bounds the outputs a primary holds for its backup; past it
// the vCPU waits for acks (VM-FT stalls the primary when its buffer fills).
const maxHeldBytes = 8 << 20

func newHoldingWorld(ctx context.Context, live *vmm.LiveWorld, send func(replay.OutputKind, []byte) error, flush func() error, m *Metrics) *holdingWorld {
	return &holdingWorld{LiveWorld: live, ctx: ctx, start: time.Now(), send: send, flush: flush, m: m,
		rule: outputrule.New(maxHeldBytes), ackCh: make(chan struct{})}
}

func (h *holdingWorld) now() time.Duration { return time.Since(h.start) }

// HoldOutput holds an output until the entry seq is acknowledged, and makes
// the channel send that entry at once (VM-FT flushes the log as soon as an
// output waits on it).
func (h *holdingWorld) HoldOutput(_ replay.ExecPoint, seq uint64, kind replay.OutputKind, data []byte) error {
	if kind != replay.OutputDisk || h.Disk() == nil {
		return h.hold(seq, kind, data) // a local disk's outputs are hashes
	}
	// A disk batch: reads see it from now on; the file only once it is
	// released. A flush's call returns when the flush is done.
	ticket, flush, err := h.StageDisk(data)
	if err != nil {
		return err
	}
	if err := h.hold(seq, kind, data); err != nil {
		return err
	}
	if flush {
		return h.WaitDisk(ticket)
	}
	return nil
}

func (h *holdingWorld) hold(seq uint64, kind replay.OutputKind, data []byte) error {
	for {
		h.mu.Lock()
		if h.solo {
			done, err := h.passLocked(seq, kind, data)
			if done {
				h.mu.Unlock()
				return err
			}
			wake := h.waitAckLocked()
			h.mu.Unlock()
			select {
			case <-wake:
			case <-h.ctx.Done():
				return vmm.ErrInterrupted
			}
			continue
		}
		err := outputrule.ErrFull
		if h.roomLocked(len(data)) {
			err = h.rule.Hold(seq, kind, data, h.now())
		}
		if err == nil {
			h.lastHeld = seq
			h.m.held(h.rule.Held())
			// The ack may have overtaken the hold: release what it covers.
			h.releaseLocked(h.rule.Ack(h.rule.Acked(), h.now()))
			h.mu.Unlock()
			return h.flush()
		}
		wake := h.waitAckLocked()
		h.mu.Unlock()
		if !errors.Is(err, outputrule.ErrFull) {
			return err
		}
		if err := h.flush(); err != nil {
			return err
		}
		select {
		case <-wake:
		case <-h.ctx.Done():
			return vmm.ErrInterrupted
		}
	}
}

// passLocked sends an output of a side alone at once, or, while earlier
// outputs wait for a sink, queues it behind them. It returns false, having
// done nothing, when the outputs waiting are at the bound: the caller
// waits for room (wakeLocked) and tries again.
func (h *holdingWorld) passLocked(seq uint64, kind replay.OutputKind, data []byte) (bool, error) {
	if len(h.blocked) == 0 {
		err := h.send(kind, data)
		if !errors.Is(err, errConsoleFull) {
			return true, err
		}
	} else if h.blockedBytes+len(data) > maxHeldBytes {
		return false, nil
	}
	h.blocked = append(h.blocked, outputrule.Released{Seq: seq, Kind: kind, Data: append([]byte(nil), data...)})
	h.blockedBytes += len(data)
	return true, nil
}

// roomLocked says whether an output of n bytes may be held now that
// acknowledged outputs wait for a sink: their bytes count too.
func (h *holdingWorld) roomLocked(n int) bool {
	if h.blockedBytes == 0 {
		return true // the Rule checks its own bound
	}
	_, held := h.rule.Held()
	return h.blockedBytes+held+n <= maxHeldBytes
}

// Ack is called in order for each acknowledgement from the backup, on the
// logging channel's reader: it must not block, and does not (a sink that
// cannot take an output refuses it, and the outputs wait in blocked).
func (h *holdingWorld) Ack(seq uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.releaseLocked(h.rule.Ack(seq, h.now()))
	h.wakeLocked()
}

// waitAckLocked returns a channel closed at the next ack or go-solo.
func (h *holdingWorld) waitAckLocked() <-chan struct{} {
	h.ackTaken = true
	return h.ackCh
}

// wakeLocked wakes the waiters of waitAckLocked. Most acks find none, and
// then no new channel is made (one per ack was an allocation per ack).
func (h *holdingWorld) wakeLocked() {
	if !h.ackTaken {
		return
	}
	close(h.ackCh)
	h.ackCh = make(chan struct{})
	h.ackTaken = false
}

// goSolo releases everything held and lets later outputs leave at once: the
// backup is gone and this primary won the right to carry on alone.
func (h *holdingWorld) goSolo() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.solo, h.fenced = true, false
	blocked := h.blocked
	h.blocked, h.blockedBytes = nil, 0
	h.releaseLocked(append(blocked, h.rule.Ack(^uint64(0), h.now())...))
	h.wakeLocked()
}

// resume sends on the outputs that waited for a sink once it has room
// (consoleQueue.onRoom), unless they wait for the arbiter.
func (h *holdingWorld) resume() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fenced || len(h.blocked) == 0 {
		return
	}
	blocked := h.blocked
	h.blocked, h.blockedBytes = nil, 0
	h.releaseLocked(blocked)
	h.wakeLocked()
}

// protectAgain makes outputs wait for a backup again: one that joined with
// the state after entry seq, whose acks (and only those) release every
// later output. Nothing is held when it is called: a side alone released
// everything at once (some of it may still wait in blocked for the
// console, and leaves first).
func (h *holdingWorld) protectAgain(seq uint64, reportReleased func(uint64), mayRelease func() error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.solo = false
	h.mayRelease = mayRelease
	h.rule = outputrule.New(maxHeldBytes)
	h.rule.Ack(seq, h.now())
	h.reportReleased = reportReleased
	h.m.held(h.rule.Held())
}

// sendError returns the first error of a sink an output was released to.
func (h *holdingWorld) sendError() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sendErr
}

// pending reports whether every held output has left and, if not, a
// channel closed at the next ack or when the primary goes solo.
func (h *holdingWorld) pending() (bool, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n, _ := h.rule.Held()
	return n == 0 && len(h.blocked) == 0, h.waitAckLocked()
}

func (h *holdingWorld) releaseLocked(rel []outputrule.Released) {
	if len(rel) == 0 {
		h.m.held(h.rule.Held())
		return
	}
	sent := 0
	for i, r := range rel {
		// The lease is checked before each output, not once per batch: a
		// side paused (SIGSTOP) in the middle of a batch must not send
		// the rest when it wakes. Outputs leave in order: once one waits,
		// so do the later ones.
		wait := len(h.blocked) > 0
		if !wait && !h.solo && h.mayRelease != nil && h.mayRelease() != nil {
			wait, h.fenced = true, true
		}
		if !wait {
			err := h.send(r.Kind, r.Data)
			if wait = errors.Is(err, errConsoleFull); !wait && err != nil && h.sendErr == nil {
				h.sendErr = err
			}
		}
		if wait {
			for _, b := range rel[i:] {
				h.blocked = append(h.blocked, b)
				h.blockedBytes += len(b.Data)
			}
			break
		}
		sent++
		h.m.released(r.Delay)
		if h.record {
			h.delays = append(h.delays, r.Delay)
		}
	}
	if sent > 0 && !h.solo && h.reportReleased != nil {
		h.reportReleased(rel[sent-1].Seq)
	}
	h.m.held(h.rule.Held())
}

// gatedSink is the primary's log sink: the logging channel while there is
// a backup; while a lost backup's fate is decided it blocks the vCPU
// (nothing more may be logged or output); once the primary carries on alone
// it drops entries; if the primary lost the decision it refuses them.
type gatedSink struct {
	inner replay.Sink

	mu      sync.Mutex
	state   sinkState
	decided chan struct{} // closed when state leaves sinkDeciding
	err     error         // why the sink refuses (sinkHalted)
}

type sinkState int

const (
	sinkLive sinkState = iota
	sinkDeciding
	sinkSolo
	sinkHalted
)

func newGatedSink(inner replay.Sink) *gatedSink {
	return &gatedSink{inner: inner, decided: make(chan struct{})}
}

// gate waits out a decision and says whether to use the inner sink.
func (g *gatedSink) gate() (bool, error) {
	g.mu.Lock()
	st, decided := g.state, g.decided
	g.mu.Unlock()
	if st == sinkDeciding {
		<-decided
		g.mu.Lock()
		st = g.state
		g.mu.Unlock()
	}
	switch st {
	case sinkSolo:
		return false, nil
	case sinkHalted:
		return false, g.err
	}
	return true, nil
}

func (g *gatedSink) Append(e replay.Entry) error {
	use, err := g.gate()
	if !use || err != nil {
		return err
	}
	if err := g.inner.Append(e); err != nil {
		if use, err2 := g.afterFailure(); !use {
			return err2
		}
		return err
	}
	return nil
}

func (g *gatedSink) Flush() error {
	use, err := g.gate()
	if !use || err != nil {
		return err
	}
	if err := g.inner.Flush(); err != nil {
		if use, err2 := g.afterFailure(); !use {
			return err2
		}
		return err
	}
	return nil
}

// afterFailure: a channel error while a decision is (or is about to be)
// under way is not the VM's failure: wait for the decision.
func (g *gatedSink) afterFailure() (bool, error) {
	g.mu.Lock()
	live := g.state == sinkLive
	g.mu.Unlock()
	if live {
		g.deciding()
	}
	return g.gate()
}

// rejoin makes inner, a backup that joined, the sink again. Called on the
// vCPU thread between two exits, so no Append or Flush runs meanwhile.
func (g *gatedSink) rejoin(inner replay.Sink) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inner, g.state, g.err = inner, sinkLive, nil
	g.decided = make(chan struct{})
}

// deciding starts a decision: the sink blocks until solo or halt.
func (g *gatedSink) deciding() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == sinkLive {
		g.state = sinkDeciding
	}
}

func (g *gatedSink) decide(st sinkState, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == sinkSolo || g.state == sinkHalted {
		return
	}
	g.state, g.err = st, err
	close(g.decided)
}

package ft

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/splitbrain"
	"github.com/ftvm/ftvm/vmm"
)

// protection is the live side of a protected VM: the recording of the guest
// into whichever backup it has (none while it runs alone), the Output Rule
// over that backup's acks, and the decision when the backup is lost. The
// first primary starts it with the backup it dialed; a backup that went
// live starts it alone, recording on from the log it replayed. Either way,
// a new backup can join it (serveJoins): the guest's state goes over by
// live transfer (vmm.Machine.StartPrecopy) and, at the transfer's pause,
// the log and the Output Rule switch to the new backup in a new epoch.
type protection struct {
	o      *Common
	ctx    context.Context
	cancel context.CancelFunc // stops the run (a halt)

	rec     *replay.Recorder
	sink    *gatedSink
	hw      *holdingWorld
	thr     *throttledSink
	console *consoleQueue // where released console output goes

	machine atomic.Pointer[vmm.Machine]
	gen     atomic.Uint64 // the epoch claims are made in

	mu      sync.Mutex
	sender  *logchannel.Sender // the current backup's channel; nil while alone
	stopNAT func()
	since   time.Time // protected since, or alone since
	halted  chan error

	// joins counts the backups that joined; protected says whether a
	// backup holds the guest's state now (not while one is being
	// transferred), since changed (Unix ns); transferBytes is the state
	// sent to the last backup that joined or is joining.
	joining       atomic.Pointer[logchannel.Sender] // a backup whose transfer is under way
	joins         atomic.Int64
	protected     atomic.Bool
	changed       atomic.Int64
	transferBytes atomic.Uint64
	// The local disk's part of the last join: chunks found different
	// from the backup's copy, and disk bytes sent in all.
	diskDiffered, diskBytes atomic.Uint64
}

// setProtected records whether a backup protects the guest.
func (p *protection) setProtected(on bool) {
	p.protected.Store(on)
	p.changed.Store(time.Now().UnixNano())
}

// newProtection builds the recording side over live. sender is the backup
// the primary dialed, or nil for a side that starts alone (a backup gone
// live), whose holding world then releases at once.
func newProtection(ctx context.Context, cancel context.CancelFunc, o *Common, live *vmm.LiveWorld, sender *logchannel.Sender, maxLag time.Duration) *protection {
	p := &protection{o: o, ctx: ctx, cancel: cancel, halted: make(chan error, 1), stopNAT: func() {}, since: time.Now()}
	p.gen.Store(o.Generation)
	var inner replay.Sink = discardSink{}
	if sender != nil {
		inner = sender
	}
	p.sink = newGatedSink(inner)
	p.console = newConsoleQueue(o.Stdout, maxConsoleQueued)
	p.hw = newHoldingWorld(ctx, live, p.send, p.sink.Flush, o.Metrics)
	p.console.onRoom = p.hw.resume
	if maxLag == 0 {
		maxLag = logchannel.DefaultMaxLag
	}
	p.thr = &throttledSink{gatedSink: p.sink, ctx: ctx, maxLag: maxLag}
	p.rec = replay.NewRecorder(p.hw, p.thr, replay.RecorderConfig{})
	p.thr.lag = func(context.Context, time.Duration) error { return nil }
	o.Metrics.gaugeFunc("ftvm_protected", "1 while a backup holds the guest's state and acknowledges its log; 0 while the guest runs alone (or a backup's transfer is under way).",
		func() float64 { return boolFloat(p.protected.Load()) })
	o.Metrics.gaugeFunc("ftvm_protected_changed_timestamp_seconds", "When ftvm_protected last changed (Unix time).",
		func() float64 { return float64(p.changed.Load()) / 1e9 })
	o.Metrics.counterFunc("ftvm_backups_joined_total", "Backups that joined the running guest by live transfer.",
		func() float64 { return float64(p.joins.Load()) })
	o.Metrics.gaugeFunc("ftvm_transfer_bytes_sent", "State sent to the backup that joined last, or is joining now.",
		func() float64 { return float64(p.transferBytes.Load()) })
	o.Metrics.gaugeFunc("ftvm_transfer_disk_chunks_differed", "Chunks of the local disk that differed from the copy of the backup that joined last.",
		func() float64 { return float64(p.diskDiffered.Load()) })
	o.Metrics.gaugeFunc("ftvm_transfer_disk_bytes_sent", "Local disk data sent to the backup that joined last: the chunks that differed, then those written during its transfer.",
		func() float64 { return float64(p.diskBytes.Load()) })
	o.Metrics.channelMetrics(func() logchannel.Stats {
		if s := p.current(); s != nil {
			return s.Stats()
		}
		return logchannel.Stats{}
	})
	if sender == nil {
		p.hw.goSolo()
		p.sink.decide(sinkSolo, nil)
		p.setProtected(false)
		return p
	}
	p.setProtected(true)
	p.hw.reportReleased, p.hw.mayRelease = sender.Released, sender.MayRelease
	p.attach(sender)
	return p
}

// send delivers a released output: console output to the console queue,
// which never blocks (errConsoleFull when it has no room), packets to the
// network backend at once (the TAP device and the user network's UDP
// sockets take a frame without waiting for anyone), a disk batch to the
// shared disk's writer (DiskFile.Apply queues it and never blocks).
func (p *protection) send(kind replay.OutputKind, data []byte) error {
	if kind == replay.OutputConsole {
		return p.console.offer(data)
	}
	return vmm.SendOutput(nil, p.o.Net, p.o.Disk, kind, data)
}

// discardSink takes entries while nothing records them (before the first
// join of a side that starts alone; the gated sink drops them anyway).
type discardSink struct{}

func (discardSink) Append(replay.Entry) error { return nil }
func (discardSink) Flush() error              { return nil }

// attach makes sender the backup: acks release outputs, its loss is
// decided on, and the NAT mappings go to it.
func (p *protection) attach(sender *logchannel.Sender) {
	p.mu.Lock()
	p.sender = sender
	p.since = time.Now()
	p.stopNAT()
	p.stopNAT = func() {}
	if p.o.Net != nil {
		p.stopNAT = shareNAT(p.o.Net, sender)
	}
	p.mu.Unlock()
	p.thr.lag = sender.WaitLag
	// The channel's reader releases the outputs an ack covers itself, a
	// hand-off to another goroutine less per ack; Ack never blocks.
	sender.OnAck(p.hw.Ack)
	go p.watch(sender)
}

// current returns the backup's channel, nil while alone.
func (p *protection) current() *logchannel.Sender {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sender
}

// watch decides, when the backup behind s is lost, whether this side
// carries on alone (it won the arbiter in the pairing's epoch) or halts.
// Until then the sink holds the vCPU: nothing more is logged or output.
func (p *protection) watch(s *logchannel.Sender) {
	select {
	case <-s.PeerLost():
	case <-p.ctx.Done():
		return
	}
	p.sink.deciding()
	cause := s.Err()
	o := p.o
	gen := p.gen.Load()
	o.logf("primary: lost the backup (%v); asking the arbiter (epoch %d) before releasing any more output", cause, gen)
	o.Metrics.SetRole("deciding")
	_, err := arbitrate(p.ctx, o.Arbiter, splitbrain.Claim{VMID: o.VMID, Generation: gen,
		Claimant: o.Claimant, Reason: fmt.Sprintf("primary lost its backup: %v", cause)}, o.logf)
	if err != nil && p.ctx.Err() != nil {
		// Interrupted while deciding (Ctrl-C, or the caller stopped the
		// run): nothing was decided, and the run ends as interrupted,
		// not as a halt. The sink must still let go of a vCPU (or the
		// final flush) waiting on the decision, refusing.
		p.sink.decide(sinkHalted, fmt.Errorf("%w while asking the arbiter: %v", vmm.ErrInterrupted, err))
		return
	}
	if err != nil {
		o.logf("primary: %v", err)
		o.Metrics.SetRole("halted")
		p.sink.decide(sinkHalted, err)
		p.halted <- err
		p.cancel() // stop a vCPU that is computing without exits
		return
	}
	p.mu.Lock()
	if p.sender == s {
		p.sender = nil
		p.since = time.Now()
		p.stopNAT()
		p.stopNAT = func() {}
	}
	p.mu.Unlock()
	p.setProtected(false)
	o.logf("primary: won the arbiter at %s: carrying on alone, outputs released without a backup; a new backup may join", time.Now().Format(time.RFC3339Nano))
	o.Metrics.SetRole("solo")
	p.hw.goSolo()
	p.sink.decide(sinkSolo, nil)
}

// serveJoins takes backups that join this side while it runs alone, one
// at a time, until ctx ends or the listener fails. A connection that fails
// the handshake is counted and the listener goes on; one that arrives
// while a backup protects the VM is turned away without touching the
// arbiter (taking an epoch for it would fence the backup that is there).
func (p *protection) serveJoins(ln *logchannel.Listener) {
	o := p.o
	hello := o.joinHello()
	for {
		s, err := ln.AcceptJoin(p.ctx, hello, o.Channel)
		if err != nil {
			var conn *logchannel.ConnError
			if p.ctx.Err() != nil || !errors.As(err, &conn) {
				if p.ctx.Err() == nil {
					o.logf("primary: no longer taking joining backups: %v", err)
				}
				return
			}
			o.Metrics.refusedConnection(errors.Is(err, logchannel.ErrUnauthenticated))
			o.logf("primary: refused a joining connection (%v)", err)
			continue
		}
		if p.current() != nil {
			o.logf("primary: turned away a backup that wants to join from %s: a backup protects the VM already", s.Peer())
			s.Close()
			continue
		}
		if err := p.join(s); err != nil {
			o.logf("primary: the backup joining from %s did not make it (%v); still running alone", s.Peer(), err)
		}
	}
}

// join transfers the running guest to the backup behind s and makes it
// this side's backup. The guest runs on while its RAM is copied; at the
// final pause (on the vCPU thread, between two exits) the recording's
// position goes into the state, and the log, the Output Rule and the
// claims switch to the new backup and its epoch: every entry after the
// pause goes to it, and every output after the pause waits for its ack.
func (p *protection) join(s *logchannel.Sender) error {
	o := p.o
	m := p.machine.Load()
	if m == nil {
		s.Close()
		return errors.New("the guest is not running")
	}
	// A local disk: the backup offers its copy's chunk hashes first, so
	// that the transfer sends only the chunks that differ.
	var offer []byte
	disk := o.localDisk()
	if o.Config.Disk != nil && o.Config.Disk.Local {
		if disk == nil {
			s.Close()
			return errors.New("the guest's disk is local, but this side has no copy of it attached")
		}
		octx, cancel := context.WithTimeout(p.ctx, joinStallTimeout(o.Channel))
		var err error
		offer, err = s.Offer(octx)
		cancel()
		if err != nil {
			s.Close()
			return fmt.Errorf("the backup offered nothing of its copy of the local disk: %w", err)
		}
	}
	gen, err := TakeEpoch(p.ctx, o.Arbiter, o.VMID, o.Claimant)
	if err != nil {
		s.Close()
		return err
	}
	o.logf("primary: a backup joins from %s %s; epoch %d; copying the running guest's state", s.Peer(), o.channelSecurity(), gen)
	o.Metrics.SetRole("transferring")
	tw := s.Transfer()
	p.joining.Store(s)
	defer p.joining.Store(nil)
	p.transferBytes.Store(0)
	stopProgress := make(chan struct{})
	defer close(stopProgress)
	stalled := make(chan error, 1)
	var running atomic.Pointer[vmm.Precopy]
	go func() {
		// The transfer's progress for the metrics, and a guard: a backup
		// that stops taking the state (hung, or hostile) while the guest
		// runs on would hold this side's joins for good. The transfer is
		// abandoned once neither the bytes sent nor the backup's reports
		// of bytes received and taken (nor the local disk's bytes compared
		// with the backup's copy) grew for joinStallTimeout.
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		var last [4]uint64
		moved := time.Now()
		for {
			st := s.Stats()
			p.transferBytes.Store(st.TransferBytes)
			var compared uint64
			if pc := running.Load(); pc != nil {
				compared = pc.Compared()
			}
			if now := [4]uint64{st.TransferBytes, st.TransferReceived, st.TransferTaken, compared}; now != last {
				last, moved = now, time.Now()
			} else if stall := joinStallTimeout(o.Channel); time.Since(moved) > stall {
				err := fmt.Errorf("the state transfer made no progress for %v (%s of state sent)", stall, sizeText(st.TransferBytes))
				stalled <- err
				// Lost, as a backup that stops acking is: the blocked Write
				// fails, so does the pre-copy, and if the log had switched
				// to this backup, its loss is decided on (watch).
				s.Lose(err)
				return
			}
			select {
			case <-tick.C:
			case <-stopProgress:
				return
			}
		}
	}()
	var joinSeq uint64
	switched := false
	pc, err := m.StartPrecopy(tw, vmm.PrecopyOptions{Nudge: p.hw.LiveWorld.Nudge, Disk: disk, DiskOffer: offer, AtPause: func(st *vmm.State) error {
		// The new backup journals disk writes from the pause on: every
		// earlier one must be on the shared disk first (a side alone
		// released them all already; they may still be in the writer).
		if d := p.hw.LiveWorld.Disk(); d != nil {
			if err := d.Sync(p.ctx); err != nil {
				return err
			}
		}
		st.Log, st.LogVMID = p.rec.Position(), o.VMID
		p.rec.CheckpointNext()
		joinSeq = st.Log.Seq
		p.gen.Store(gen)
		p.hw.protectAgain(joinSeq, s.Released, s.MayRelease)
		p.sink.rejoin(s)
		p.attach(s)
		switched = true
		return nil
	}})
	if err != nil {
		s.Close()
		o.Metrics.SetRole("solo")
		return err
	}
	running.Store(pc)
	stats, err := pc.Wait()
	p.transferBytes.Store(s.Stats().TransferBytes) // a short transfer ends between two samples
	if err == nil {
		err = tw.FinishAt(joinSeq, gen)
	}
	select {
	case serr := <-stalled:
		err = serr
	default:
	}
	if err != nil {
		tw.Close()
		if !switched {
			s.Close()
			o.Metrics.SetRole("solo")
			return err
		}
		// Switched, so the vCPU logs to s: its loss is decided on as any
		// backup's (watch), in the new epoch.
		s.Lose(err)
		return err
	}
	p.joins.Add(1)
	p.setProtected(true)
	o.Metrics.SetRole("primary")
	if disk != nil {
		p.diskDiffered.Store(stats.DiskDiffer)
		p.diskBytes.Store(stats.DiskBytes)
		o.logf("primary: the joining backup's copy of the local disk (%s): %d of %d chunks differed; %d chunks sent in all (%s, %d in the pause)",
			sizeText(stats.DiskSize), stats.DiskDiffer, (stats.DiskSize+vmm.DiskChunkSize(stats.DiskSize)-1)/vmm.DiskChunkSize(stats.DiskSize),
			stats.DiskChunks, sizeText(stats.DiskBytes), stats.DiskPauseChunks)
	}
	o.logf("primary: PROTECTED again at %s: the backup from %s joined at log seq %d, epoch %d (%s sent in %d rounds, %v in all; the guest paused %v)",
		time.Now().Format(time.RFC3339Nano), s.Peer(), joinSeq, gen, sizeText(stats.Bytes()), len(stats.Rounds), stats.Total.Round(time.Millisecond), stats.Pause.Round(time.Microsecond))
	return nil
}

// close stops sharing the NAT, closes the channel of a backup that
// joined (the caller closes the one it dialed), and waits until the
// console output released so far is written: a guest's last words must
// appear before ftvm exits, whichever way the run ended.
func (p *protection) close() {
	defer p.console.flush()
	if s := p.joining.Load(); s != nil {
		// The run ended under a transfer: end it, so that the machine's
		// RAM is released now rather than when the backup gives up.
		s.Lose(errors.New("the guest stopped during the state transfer"))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopNAT()
	if p.sender != nil && p.joins.Load() > 0 {
		p.sender.Close()
	}
}

// joinStallTimeout is how long a joining backup may take no state before
// the transfer to it is abandoned: the failover timeout, at least 5 s
// (the state moves in chunks of up to 256 KiB, and a slow link may take
// a while over one).
func joinStallTimeout(c logchannel.Config) time.Duration {
	return max(c.FailoverTimeout, 5*time.Second)
}

// drain, once the guest stopped and the log's end entry is logged, waits
// with a backup for its acks of the last outputs and tells it they left.
func (p *protection) drain() error {
	if err := p.sink.Flush(); err != nil {
		return err
	}
	for {
		drained, changed := p.hw.pending()
		if drained {
			break
		}
		select {
		case err := <-p.halted:
			p.halted <- err
			return err
		case <-p.ctx.Done():
			return vmm.ErrInterrupted
		case <-changed:
		}
	}
	if err := p.console.flush(); err != nil {
		return err
	}
	if err := p.hw.sendError(); err != nil {
		return err
	}
	if s := p.current(); s != nil {
		_ = s.FlushReports()
	}
	return nil
}

// haltedErr returns the halt's error if the arbiter halted this side.
func (p *protection) haltedErr() error {
	select {
	case err := <-p.halted:
		p.halted <- err
		return err
	default:
		return nil
	}
}

// sizeText prints a byte count for a person.
func sizeText(n uint64) string {
	switch {
	case n >= 10<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

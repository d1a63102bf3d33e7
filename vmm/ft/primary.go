package ft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/splitbrain"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/session"
	"github.com/ftvm/ftvm/vmm/vnet"
)

// Common are the options primary and backup share.
type Common struct {
	// Backend runs the guest. Primary and backup may use different ones:
	// the guest sees the same machine on each (vmm.ABIProfile).
	Backend backend.Backend
	Image   *vmm.Image
	Config  vmm.Config
	VMID    string
	// Generation numbers one primary/backup pairing; the arbiter decides
	// once per VM id and generation.
	Generation uint64
	Arbiter    splitbrain.Arbiter
	// Claimant names this side to the arbiter and in logs, e.g. "backup@host".
	Claimant string
	Stdin    io.Reader
	Stdout   io.Writer
	// Net is the guest's network backend, or nil. The primary's is bound;
	// the backup's is created unbound and bound when it goes live.
	Net     vnet.Backend
	Channel logchannel.Config
	Metrics *Metrics
	// Logf reports what happens (connected, lost the backup, live, ...)
	// for a person; nil discards.
	Logf func(format string, args ...any)
}

// prepare checks the options.
func (c *Common) prepare() error {
	if c.Backend == nil {
		return errors.New("ft: no backend given")
	}
	c.Metrics.SetBackend(c.Backend.Name())
	c.Metrics.SetChannelTLS(!c.Channel.InsecureNoTLS)
	return nil
}

// insecureMark opens every line a side logs while its logging channel
// runs in clear, so that nobody misses it.
const insecureMark = "[INSECURE: logging channel in clear, no TLS] "

func (c *Common) logf(format string, args ...any) {
	if c.Logf != nil {
		if c.Channel.InsecureNoTLS {
			format = insecureMark + format
		}
		c.Logf(format, args...)
	}
}

// channelSecurity says how the logging channel is protected, for the
// "connected" lines.
func (c *Common) channelSecurity() string {
	if c.Channel.InsecureNoTLS {
		return "in clear (--insecure-no-tls: anyone on the path reads the guest's inputs)"
	}
	return "over mutual TLS 1.3"
}

func (c *Common) hello() logchannel.Hello {
	return logchannel.Hello{VMID: c.VMID, Generation: c.Generation,
		ImageSHA256: c.Image.Hash, ConfigDigest: vmm.ConfigDigest(c.Config)}
}

func (c *Common) send(kind replay.OutputKind, data []byte) error {
	return vmm.SendOutput(c.Stdout, c.Net, kind, data)
}

// PrimaryOptions configure RunPrimary.
type PrimaryOptions struct {
	Common
	BackupAddr string
	// MaxLag throttles the primary while the backup's replay is more than
	// this far behind (0: logchannel.DefaultMaxLag, 500 ms: VM-FT keeps the
	// lag typically under 100 ms and throttles past about a second; a
	// failover replays the lag before going live, so it bounds go-live time).
	MaxLag time.Duration
	// OnDone, if set, gets the primary's figures when RunPrimary returns
	// (for benchmarks): the channel's statistics and every output's delay.
	OnDone func(PrimaryStats)
}

// PrimaryStats are a primary run's figures.
type PrimaryStats struct {
	Channel      logchannel.Stats
	OutputDelays []time.Duration
	Elapsed      time.Duration
}

// RunPrimary runs the guest as the primary of a pair: it connects to the
// backup, records the guest into the logging channel, holds every output
// until the backup acknowledges its entry, and returns when the guest
// stops. If the backup is lost it asks the arbiter before releasing
// anything more: it carries on alone if it wins and halts with
// ErrLostArbitration if it loses.
func RunPrimary(ctx context.Context, o PrimaryOptions) (vmm.Result, error) {
	if err := o.prepare(); err != nil {
		return vmm.Result{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sender, err := dialBackup(ctx, o)
	if err != nil {
		return vmm.Result{}, err
	}
	defer sender.Close()
	o.logf("primary: connected to the backup at %s %s; recording on the %s backend", o.BackupAddr, o.channelSecurity(), o.Backend.Name())
	o.Metrics.SetRole("primary")
	o.Metrics.channelMetrics(sender.Stats)

	live := vmm.NewLiveWorld(ctx, o.Stdin, o.Stdout)
	if o.Net != nil {
		live.AttachNet(o.Net)
		defer shareNAT(o.Net, sender)()
	}
	sink := newGatedSink(sender)
	hw := newHoldingWorld(ctx, live, o.send, sink.Flush, o.Metrics)
	hw.reportReleased = sender.Released
	if o.OnDone != nil {
		hw.record = true
		began := time.Now()
		defer func() {
			hw.mu.Lock()
			delays := append([]time.Duration(nil), hw.delays...)
			hw.mu.Unlock()
			o.OnDone(PrimaryStats{Channel: sender.Stats(), OutputDelays: delays, Elapsed: time.Since(began)})
		}()
	}
	go func() {
		for {
			select {
			case seq := <-sender.Acks():
				hw.Ack(seq)
			case <-sender.PeerLost():
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	maxLag := o.MaxLag
	if maxLag == 0 {
		maxLag = logchannel.DefaultMaxLag
	}
	rec := replay.NewRecorder(hw, &throttledSink{gatedSink: sink, sender: sender, ctx: ctx, maxLag: maxLag}, replay.RecorderConfig{})

	// The watcher runs until RunPrimary returns: a backup lost while the
	// last outputs drain must be decided on like any other.
	halted := make(chan error, 1)
	runDone := make(chan struct{})
	defer close(runDone)
	go func() {
		select {
		case <-sender.PeerLost():
		case <-runDone:
			return
		}
		sink.deciding()
		cause := sender.Err()
		o.logf("primary: lost the backup (%v); asking the arbiter before releasing any more output", cause)
		o.Metrics.SetRole("deciding")
		_, err := arbitrate(ctx, o.Arbiter, splitbrain.Claim{VMID: o.VMID, Generation: o.Generation,
			Claimant: o.Claimant, Reason: fmt.Sprintf("primary lost its backup: %v", cause)}, o.logf)
		if err != nil && ctx.Err() != nil {
			// Interrupted while deciding (Ctrl-C, or the caller stopped the
			// run): nothing was decided, and the run ends as interrupted,
			// not as a halt. The sink must still let go of a vCPU (or the
			// final flush) waiting on the decision, refusing.
			sink.decide(sinkHalted, fmt.Errorf("%w while asking the arbiter: %v", vmm.ErrInterrupted, err))
			return
		}
		if err != nil {
			o.logf("primary: %v", err)
			o.Metrics.SetRole("halted")
			sink.decide(sinkHalted, err)
			halted <- err
			cancel() // stop a vCPU that is computing without exits
			return
		}
		o.logf("primary: won the arbiter at %s: carrying on alone, outputs released without a backup", time.Now().Format(time.RFC3339Nano))
		o.Metrics.SetRole("solo")
		hw.goSolo()
		sink.decide(sinkSolo, nil)
	}()

	end, err := session.RecordWith(ctx, o.Backend, o.Image, o.Config, o.VMID, rec)
	res := end.Result
	select {
	case err := <-halted:
		return res, err
	default:
	}
	if err == nil {
		err = sink.Flush()
	}
	if err != nil {
		return res, err
	}
	// The guest has stopped; its last outputs leave when acknowledged.
	for {
		drained, changed := hw.pending()
		if drained {
			break
		}
		select {
		case err := <-halted:
			return res, err
		case <-ctx.Done():
			return res, vmm.ErrInterrupted
		case <-changed:
		}
	}
	if hw.sendErr != nil {
		return res, hw.sendErr
	}
	// Tell the backup that every output left: it waits for this before it
	// lets the connection go (a lost backup's watcher decides as before).
	_ = sender.FlushReports()
	return res, end.Err()
}

// dialBackup connects to the backup, retrying while it is not up yet (a
// pair starts both at once) for up to a few seconds.
func dialBackup(ctx context.Context, o PrimaryOptions) (*logchannel.Sender, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := logchannel.Dial(ctx, o.BackupAddr, o.hello(), o.Channel)
		if err == nil {
			return s, nil
		}
		if errors.Is(err, logchannel.ErrRefused) || time.Now().After(deadline) || ctx.Err() != nil {
			return nil, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// throttledSink makes the vCPU wait, every few hundred entries, while the
// backup's replay lags more than maxLag behind.
type throttledSink struct {
	*gatedSink
	sender *logchannel.Sender
	ctx    context.Context
	maxLag time.Duration
	n      int
}

func (t *throttledSink) Append(e replay.Entry) error {
	if t.n++; t.n%256 == 0 {
		if err := t.sender.WaitLag(t.ctx, t.maxLag); err != nil && t.ctx.Err() != nil {
			return vmm.ErrInterrupted
		}
	}
	return t.gatedSink.Append(e)
}

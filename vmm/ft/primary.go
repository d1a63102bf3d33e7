package ft

import (
	"context"
	"errors"
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
	Net vnet.Backend
	// Disk is the guest's shared disk, or nil (none, or a local disk that
	// each side's machine writes itself). Only the live side writes it.
	Disk    *vmm.DiskFile
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

// joinHello is the hello of a joining pairing, on either side: the epoch
// is the running primary's to give, and a local disk's size and digest
// are not compared (vmm.JoinConfigDigest): the transfer makes the
// joining side's copy equal and proves it.
func (c *Common) joinHello() logchannel.Hello {
	h := c.hello()
	h.Generation, h.Join = 0, true
	h.ConfigDigest = vmm.JoinConfigDigest(c.Config)
	return h
}

// localDisk returns this side's copy of a local disk, or nil.
func (c *Common) localDisk() *vmm.DiskFile {
	if d := c.Config.Disk; d != nil && d.Local {
		return d.File
	}
	return nil
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
	// JoinListener, if set, takes backups that join the running guest
	// once its backup is lost and it carries on alone (ftvm backup --join).
	JoinListener *logchannel.Listener
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

	live := vmm.NewLiveWorld(ctx, o.Stdin, o.Stdout)
	if o.Net != nil {
		live.AttachNet(o.Net)
	}
	if o.Disk != nil {
		live.AttachDisk(o.Disk)
	}
	p := newProtection(ctx, cancel, &o.Common, live, sender, o.MaxLag)
	defer p.close()
	if o.OnDone != nil {
		p.hw.record = true
		began := time.Now()
		defer func() {
			p.hw.mu.Lock()
			delays := append([]time.Duration(nil), p.hw.delays...)
			p.hw.mu.Unlock()
			o.OnDone(PrimaryStats{Channel: sender.Stats(), OutputDelays: delays, Elapsed: time.Since(began)})
		}()
	}
	if o.JoinListener != nil {
		go p.serveJoins(o.JoinListener)
	}

	end, _, err := session.RecordSnapshot(ctx, o.Backend, o.Image, o.Config, o.VMID, p.rec,
		session.SnapshotPlan{Started: func(m *vmm.Machine) { p.machine.Store(m) }})
	res := end.Result
	if herr := p.haltedErr(); herr != nil {
		return res, herr
	}
	if err != nil {
		return res, err
	}
	// The guest has stopped; its last outputs leave when acknowledged.
	if err := p.drain(); err != nil {
		return res, err
	}
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
	lag    func(ctx context.Context, maxLag time.Duration) error // the backup's Sender.WaitLag
	ctx    context.Context
	maxLag time.Duration
	n      int
}

func (t *throttledSink) Append(e replay.Entry) error {
	if t.n++; t.n%256 == 0 {
		if err := t.lag(t.ctx, t.maxLag); err != nil && t.ctx.Err() != nil {
			return vmm.ErrInterrupted
		}
	}
	return t.gatedSink.Append(e)
}

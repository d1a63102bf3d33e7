package ft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/splitbrain"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/session"
)

// BackupOptions configure RunBackup.
type BackupOptions struct {
	Common
	// Listener takes the primary's connection.
	Listener *logchannel.Listener
	// Join, if set, is the address of a running primary to join (its
	// JoinListener) instead of waiting on Listener: the backup gets the
	// running guest's state and the pairing's epoch from it, then the log.
	Join string
	// JoinListener, if set, takes new backups that join this side once it
	// went live: the guest is protected again after a failover.
	JoinListener *logchannel.Listener
	// MaxLag is PrimaryOptions.MaxLag, for when this side went live and a
	// backup joined it.
	MaxLag time.Duration
}

// BackupOutcome says how a backup's run ended.
type BackupOutcome struct {
	Result vmm.Result
	// Verified: the primary's guest ended and the replay reached the same
	// final state (registers and memory digest) at the same last exit.
	Verified bool
	// WentLive: the primary was lost, this backup won the arbiter and ran
	// the guest live from exit LiveAt on.
	WentLive bool
	LiveAt   uint64
	Summary  replay.Summary
}

// ErrDiverged wraps the error of a backup whose replay parted from the
// primary: it stopped, and it never goes live.
var ErrDiverged = errors.New("ft: the backup's replay diverged; it will not go live")

// RunBackup accepts the primary's connection, replays its log with outputs
// dropped and every execution point checked, and acknowledges entries on
// receipt. If the primary is lost, it replays every received entry, asks
// the arbiter, and if it wins goes live: it binds the guest's network
// identity and carries on with real inputs and outputs.
func RunBackup(ctx context.Context, o BackupOptions) (BackupOutcome, error) {
	var out BackupOutcome
	if err := o.prepare(); err != nil {
		return out, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if o.Join != "" {
		return o.runJoined(ctx, cancel)
	}
	recv, err := o.accept(ctx)
	if err != nil {
		return out, err
	}
	defer recv.Close()
	o.logf("backup: primary connected %s; replaying on the %s backend", o.channelSecurity(), o.Backend.Name())
	o.Metrics.SetRole("backup")
	o.Metrics.receiverMetrics(recv.Stats)

	live := o.newLiveWorld(ctx)
	goLive := o.goLiveFunc(ctx, recv, live)

	start, src, err := replay.PeekStart(recv)
	if errors.Is(err, logchannel.ErrPeerLost) {
		// Lost before even the start entry arrived: this side received,
		// and so acknowledged, nothing, and the primary released no
		// output. Whoever wins the arbiter may run the guest; if it is
		// this side, it starts the guest from its first instruction.
		o.logf("backup: the primary is gone before its log began (%v); asking the arbiter", err)
		if err := goLive(err); err != nil {
			return out, err
		}
		out.WentLive, out.LiveAt = true, 0
		o.logf("backup: LIVE since %s (won the arbiter; the guest starts from its beginning: the primary released nothing)", time.Now().Format(time.RFC3339Nano))
		end, err := session.RunOn(ctx, o.Backend, o.Image, o.Config, live)
		out.Result = end.Result
		if err != nil {
			return out, err
		}
		return out, end.Err()
	}
	if err != nil {
		return out, err
	}
	if start.Config != o.Config.Text() {
		return out, fmt.Errorf("ft: the primary runs configuration %s, this backup %s", start.Config, o.Config.Text())
	}
	rep := replay.NewReplayer(src)
	if _, err := rep.VerifyStart(vmm.StartInfo(o.Image, o.Config, o.VMID)); err != nil {
		return out, err
	}
	m, err := vmm.New(o.Backend, o.Image, o.Config, nil)
	if err != nil {
		return out, fmt.Errorf("%w: %w", session.ErrSetup, err)
	}
	defer m.Close()
	return o.replayThenTakeOver(ctx, cancel, recv, rep, m, live, goLive, 0, 0, 0)
}

// replayThenTakeOver runs the backup's replay of rep on m (created with a
// nil world, which it sets) until the guest ends, the replay diverges, or
// the primary is lost and this side goes live, recording from then on so
// that a new backup can join it. lastTSC and lastClock are the time the
// guest saw before the replay starts and baseExit the exits it made (a
// joined backup's state).
func (o *BackupOptions) replayThenTakeOver(ctx context.Context, cancel context.CancelFunc, recv *logchannel.Receiver, rep *replay.Replayer,
	m *vmm.Machine, live *vmm.LiveWorld, goLive func(error) error, baseExit, lastTSC, lastClock uint64) (BackupOutcome, error) {
	var out BackupOutcome
	var prot *protection
	fw := &failoverWorld{rep: rep, live: live, lost: logchannel.ErrPeerLost, progress: recv.ReportReplayed, done: ctx.Done(),
		lastTSC: lastTSC, lastClock: lastClock,
		primaryReleased: recv.PrimaryReleased,
		onRelease: func(n, bytes int) {
			o.logf("backup: released %d outputs (%d bytes) that the primary had not reported released", n, bytes)
		},
		onReissue: func(blocks int) {
			o.logf("backup: wrote again %d disk blocks that the primary may not have completed", blocks)
		}}
	if o.Disk != nil {
		fw.journal = vmm.NewDiskJournal(o.Disk.Size())
	}
	fw.goLive = func(cause error) error {
		o.logf("backup: the primary is gone (%v); replayed the whole log; asking the arbiter", cause)
		if err := goLive(cause); err != nil {
			return err
		}
		out.WentLive, out.LiveAt = true, baseExit+rep.Summary().Exits
		o.logf("backup: LIVE since %s (won the arbiter in epoch %d; the guest continues from exit %d)", time.Now().Format(time.RFC3339Nano), o.Generation, out.LiveAt)
		return nil
	}
	fw.becomeLive = func(p replay.ExecPoint) (replay.World, error) {
		prot = newProtection(ctx, cancel, &o.Common, live, nil, o.MaxLag)
		if err := prot.rec.ContinueAt(replay.FreshPosition(rep.LastSeq(), replay.ExecPoint{Exit: p.Exit - 1})); err != nil {
			return nil, err
		}
		prot.machine.Store(m)
		if o.JoinListener != nil {
			go prot.serveJoins(o.JoinListener)
			o.logf("backup: a new backup may join this side at %s (ftvm backup --join)", o.JoinListener.Addr())
		}
		return prot.rec, nil
	}
	m.SetWorld(fw)
	end, err := session.Run(ctx, m)
	out.Result, out.Summary = end.Result, rep.Summary()
	out.Summary.Exits += baseExit
	if prot != nil {
		defer prot.close()
		if herr := prot.haltedErr(); herr != nil {
			return out, herr
		}
	}
	var div *replay.DivergenceError
	if errors.As(err, &div) {
		o.Metrics.SetRole("diverged")
		return out, fmt.Errorf("%w: %w", ErrDiverged, err)
	}
	if err != nil {
		return out, err
	}
	if out.WentLive {
		if prot != nil && err == nil {
			// A backup that joined verifies the rest of the run.
			if err := prot.rec.Finish(end.Digest); err != nil {
				return out, err
			}
			if err := prot.drain(); err != nil {
				return out, err
			}
		}
		return out, end.Err()
	}
	finishErr := rep.Finish(end.Digest)
	if errors.As(finishErr, &div) {
		return out, fmt.Errorf("%w: %w", ErrDiverged, finishErr)
	}
	if finishErr != nil && !errors.Is(finishErr, logchannel.ErrPeerLost) {
		return out, finishErr
	}
	if finishErr == nil {
		digest := end.Digest
		out.Verified = true
		o.logf("backup: verified: replayed to the primary's last exit %d with the same final state %x", out.Summary.Exits, digest[:8])
	} else {
		o.logf("backup: the guest ended here as the log says, but the primary was lost before the log's end entry (%v): its final state is not verified", finishErr)
	}
	// The guest has ended on both sides. Its last outputs may still be held
	// on the primary: wait until the primary says they left, or is gone.
	if fw.waitReleased(recv.Done()) {
		if finishErr != nil {
			return out, finishErr
		}
		return out, end.Err()
	}
	cause := finishErr
	if cause == nil {
		cause = fmt.Errorf("the primary's connection ended with the guest's last outputs not reported released: %w", recv.Err())
	}
	o.logf("backup: the guest's last outputs may never have left the primary (%v); asking the arbiter whether to release them", cause)
	if err := goLive(cause); err != nil {
		return out, err
	}
	out.WentLive, out.LiveAt = true, out.Summary.Exits
	if err := fw.releaseUnreleased(replay.ExecPoint{Exit: out.Summary.Exits}); err != nil {
		return out, err
	}
	return out, end.Err()
}

// newLiveWorld is the world a backup answers from once it is live; the
// shared disk is attached at once (nothing touches it before go-live).
func (o *BackupOptions) newLiveWorld(ctx context.Context) *vmm.LiveWorld {
	live := vmm.NewLiveWorld(ctx, o.Stdin, o.Stdout)
	if o.Disk != nil {
		live.AttachDisk(o.Disk)
	}
	return live
}

// goLiveFunc returns what a backup does when its primary is lost: ask the
// arbiter in the pairing's epoch, then take the guest's network identity
// with the NAT mappings the primary sent.
func (o *BackupOptions) goLiveFunc(ctx context.Context, recv *logchannel.Receiver, live *vmm.LiveWorld) func(error) error {
	return func(cause error) error {
		o.Metrics.SetRole("deciding")
		_, err := arbitrate(ctx, o.Arbiter, splitbrain.Claim{VMID: o.VMID, Generation: o.Generation,
			Claimant: o.Claimant, Reason: fmt.Sprintf("backup lost the primary: %v", cause)}, o.logf)
		if err != nil {
			o.Metrics.SetRole("halted")
			return err
		}
		o.logf("%s in epoch %d; taking the guest's place", lineWonArbiter, o.Generation)
		if o.Net != nil {
			// The NAT first: a client's packet read between the bind and
			// the restore got a gateway port of an empty table, one the
			// restore then gave back to the client that had it, and the
			// guest's answer went to that other client (seen under
			// emulation in TestFailoverKeepsTheNAT).
			if restored, skipped, _ := restoreNAT(o.Net, recv.State()); restored+skipped > 0 {
				o.logf("backup: restored %d NAT mappings from the primary (%d skipped: malformed or outside the table)", restored, skipped)
			}
			if err := bindRetrying(ctx, o.Net.Bind, o.logf); err != nil {
				return fmt.Errorf("ft: going live: binding the guest's network: %w", err)
			}
			if err := o.Net.Announce(); err != nil {
				o.logf("backup: announcing the guest's address: %v", err)
			}
			live.AttachNet(o.Net)
		}
		o.Metrics.SetRole("live")
		return nil
	}
}

// runJoined joins the running primary at o.Join: it receives the guest's
// state by live transfer and the pairing's epoch, then replays the log
// from the transfer's pause on, as any backup does, and goes live in the
// same way if the primary is lost. A primary lost before the transfer
// ended leaves this side nothing to take over: it stops with an error and
// never asks the arbiter.
func (o *BackupOptions) runJoined(ctx context.Context, cancel context.CancelFunc) (BackupOutcome, error) {
	var out BackupOutcome
	// A local disk: this side's copy is offered (its chunk hashes) so
	// that only the chunks that differ come; hashed before connecting,
	// so that the primary does not wait on it.
	disk := o.localDisk()
	var offer []byte
	if disk != nil {
		var err error
		if offer, err = vmm.DiskOffer(disk); err != nil {
			return out, fmt.Errorf("ft: joining the primary at %s: this side's copy of the disk: %w", o.Join, err)
		}
	}
	recv, err := logchannel.DialJoin(ctx, o.Join, o.joinHello(), o.Channel)
	if err != nil {
		return out, err
	}
	defer recv.Close()
	o.logf("backup: joining the running primary at %s %s; receiving the guest's state", o.Join, o.channelSecurity())
	o.Metrics.SetRole("joining")
	o.Metrics.receiverMetrics(recv.Stats)
	began := time.Now()
	if disk != nil {
		if err := recv.SendOffer(offer); err != nil {
			return out, fmt.Errorf("ft: joining the primary at %s: %w", o.Join, err)
		}
	}
	tr := recv.Transfer()
	st, err := vmm.ReceivePrecopyDisk(tr, disk)
	if err == nil {
		// The end of the transfer carries the epoch: read up to it.
		var n int64
		if n, err = io.Copy(io.Discard, tr); err == nil && n > 0 {
			err = fmt.Errorf("%d bytes after the state", n)
		}
	}
	if err != nil {
		return out, fmt.Errorf("ft: joining the primary at %s: the state transfer failed, so this side has nothing to take over: %w", o.Join, err)
	}
	gen := recv.JoinGeneration()
	switch {
	case gen == 0:
		return out, fmt.Errorf("ft: joining the primary at %s: it gave no epoch for the pairing", o.Join)
	case st.Log.Seq == 0 || st.Log.Seq != recv.JoinAtSeq() || st.LogVMID != o.VMID:
		return out, fmt.Errorf("ft: joining the primary at %s: its state is at log seq %d of VM %q, the transfer ended at seq %d of VM %q",
			o.Join, st.Log.Seq, st.LogVMID, recv.JoinAtSeq(), o.VMID)
	}
	o.Generation = gen
	rep := replay.NewReplayer(recv)
	if err := rep.JoinAt(st.Log); err != nil {
		return out, err
	}
	m, err := vmm.Restore(o.Backend, o.Image, st, nil)
	if err != nil {
		return out, fmt.Errorf("ft: joining the primary at %s: %w", o.Join, err)
	}
	defer m.Close()
	if disk != nil {
		// The copy is the live side's now: the guest runs on with the
		// live side's configuration, whose digest is of the copies when
		// the pair first started.
		if err := m.AttachLocalDisk(disk); err != nil {
			return out, fmt.Errorf("ft: joining the primary at %s: %w", o.Join, err)
		}
		cfg, err := st.MachineConfig(o.Image)
		if err != nil {
			return out, err
		}
		cfg.Disk.File = disk
		o.Config = cfg
		o.logf("backup: this side's copy of the local disk is the primary's at the pause (checked whole against its root hash)")
	}
	o.logf("backup: joined at log seq %d (exit %d) in epoch %d, %v after connecting (%s of state); replaying on the %s backend",
		st.Log.Seq, st.Exits, gen, time.Since(began).Round(time.Millisecond), sizeText(recv.Stats().TransferBytes), o.Backend.Name())
	o.Metrics.SetRole("backup")
	live := o.newLiveWorld(ctx)
	tsc, clock := st.SeenTime()
	return o.replayThenTakeOver(ctx, cancel, recv, rep, m, live, o.goLiveFunc(ctx, recv, live), st.Exits, tsc, clock)
}

// accept waits for the primary. A connection that fails the handshake (a
// stray connect, a scanner, a primary of another VM) is reported and the
// backup goes on listening: only the listener failing or ctx ends it.
func (o *BackupOptions) accept(ctx context.Context) (*logchannel.Receiver, error) {
	for {
		recv, err := o.Listener.Accept(ctx, o.hello(), o.Channel)
		var conn *logchannel.ConnError
		if err == nil || !errors.As(err, &conn) {
			return recv, err
		}
		o.Metrics.refusedConnection(errors.Is(err, logchannel.ErrUnauthenticated))
		o.logf("backup: refused a connection (%v); still waiting for the primary", err)
	}
}

// bindRetrying binds the guest's network identity, waiting while another
// process still holds it: a fenced primary on the same host keeps its
// forwarded ports (EADDRINUSE) or its TAP device (EBUSY) until it halts or
// is killed (ftvm pair kills a primary that lost the arbiter: see
// PairSupervisor). It gives up after 30 s.
func bindRetrying(ctx context.Context, bind func() error, logf func(string, ...any)) error {
	deadline := time.Now().Add(30 * time.Second)
	for logged := false; ; {
		err := bind()
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) && !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return err
		}
		if !logged {
			logf("backup: the guest's address is still held (%v); waiting for the old primary to let go", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

package logchannel

// The state transfer of a joining pairing: both ends, over one pair of
// messages (see doc.go, "Joining a running primary").

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"sync/atomic"
)

// ErrNotJoining is returned by the transfer's methods in a pairing whose
// Hello did not say Join: there is no state transfer in it.
var ErrNotJoining = errors.New("logchannel: not a joining pairing: it has no state transfer")

// TransferWriter sends the state transfer of a joining pairing: the bytes
// given to Write, then, with Finish, the end of the transfer and the seq
// of the last log entry the state includes. Get it from Sender.Transfer.
//
// Write blocks while TCP holds the bytes back, as log frames do, and
// keeps no more than one chunk (MaxTransferChunk) in memory; the bytes do
// not count against MaxUnacked, which bounds unacknowledged log. Its
// methods may be called from any goroutine, one at a time, while the
// guest runs on: entries appended meanwhile stay in the Sender's open
// frame, and once a frame is due, Append and Flush wait for Finish (the
// log never overtakes the state it continues).
type TransferWriter struct {
	s *Sender

	mu     sync.Mutex
	length uint64 // stream bytes sent
	crc    uint32 // CRC-32C of the stream bytes sent
	buf    []byte // the message being written
	err    error  // ErrNotJoining, or nil
	// finished: the end is sent. Atomic so that Close need not wait for
	// a Write that TCP holds back.
	finished atomic.Bool
}

var _ io.WriteCloser = (*TransferWriter)(nil)

// Transfer returns the writer of the state transfer. It is the same
// writer at every call; in a pairing without Hello.Join its methods
// return ErrNotJoining.
func (s *Sender) Transfer() *TransferWriter {
	if s.transfer == nil {
		return &TransferWriter{s: s, err: ErrNotJoining}
	}
	return s.transfer
}

// usableLocked says why the transfer can take no more bytes, or nil.
// Called with w.mu held.
func (w *TransferWriter) usableLocked() error {
	switch {
	case w.err != nil:
		return w.err
	case w.finished.Load():
		return errors.New("logchannel: the state transfer has ended (Finish)")
	}
	return w.s.Err()
}

// Write sends p as the next bytes of the transfer, in messages of at most
// MaxTransferChunk bytes. It returns once every byte is handed to the
// connection, or the Sender's error if it stopped (the backup lost).
func (w *TransferWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usableLocked(); err != nil {
		return 0, err
	}
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), MaxTransferChunk)]
		w.buf = appendControl(w.buf[:0], msgTransfer, chunk)
		if err := w.s.writeTransfer(w.buf); err != nil {
			return n, err
		}
		w.length += uint64(len(chunk))
		w.s.transferBytes.Add(uint64(len(chunk)))
		w.crc = crc32.Update(w.crc, castagnoli, chunk)
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// Finish ends the transfer: the backup learns its length and CRC, which
// it checks, and that the log goes on with the entry after joinAtSeq (the
// Seq of the last entry the transferred state includes; 0 if none). The
// first entry appended to the Sender must have Seq joinAtSeq+1, or Finish
// (if it was appended before) or Append (if after) refuses it. Once the
// end is sent, waiting log frames go out.
func (w *TransferWriter) Finish(joinAtSeq uint64) error { return w.FinishAt(joinAtSeq, 0) }

// FinishAt is Finish that also gives the backup the generation of the
// pairing (Receiver.JoinGeneration): the epoch a running primary took for
// the backup that joined it (AcceptJoin), whose hellos said 0.
func (w *TransferWriter) FinishAt(joinAtSeq, generation uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usableLocked(); err != nil {
		return err
	}
	s := w.s
	s.joinMu.Lock()
	if s.firstSeq != 0 && s.firstSeq != joinAtSeq+1 {
		first := s.firstSeq
		s.joinMu.Unlock()
		return fmt.Errorf("logchannel: the state transfer cannot end at seq %d: the first entry appended has seq %d, not %d", joinAtSeq, first, joinAtSeq+1)
	}
	s.joinAt, s.joinKnown = joinAtSeq, true
	s.joinMu.Unlock()

	var f [transferEndLen - crcLen]byte
	binary.LittleEndian.PutUint64(f[0:], w.length)
	binary.LittleEndian.PutUint32(f[8:], w.crc)
	binary.LittleEndian.PutUint64(f[12:], joinAtSeq)
	binary.LittleEndian.PutUint64(f[20:], generation)
	if err := s.writeTransfer(appendControl(w.buf[:0], msgTransferEnd, f[:])); err != nil {
		return err
	}
	w.finished.Store(true)
	w.buf = nil
	close(s.transferred)
	return nil
}

// Close abandons a transfer that has not been finished: the Sender stops
// (its methods return an error saying so) and the backup sees its primary
// lost, since a joining backup without the whole state has nothing to
// replay. It may be called while a Write waits for TCP, from another
// goroutine: the Write then fails. After Finish, Close does nothing.
func (w *TransferWriter) Close() error {
	if w.err != nil || w.finished.Load() {
		return nil
	}
	w.s.stop(fmt.Errorf("logchannel: the state transfer to %s was abandoned after %d bytes", w.s.peer, w.s.transferBytes.Load()), false)
	return nil
}

// Len returns the stream bytes sent so far.
func (w *TransferWriter) Len() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.length
}

// writeTransfer writes one transfer message.
func (s *Sender) writeTransfer(msg []byte) error {
	s.wmu.Lock()
	_, err := s.conn.Write(msg)
	s.wroteLocked()
	s.wmu.Unlock()
	if err != nil {
		s.lose(fmt.Errorf("sending the state transfer to %s: %w", s.peer, err))
		return s.Err()
	}
	return nil
}

// checkJoinSeq checks the seq of an entry appended in a joining pairing:
// the first must follow the seq the transfer ended at. first says seq was
// taken as the first. Called with mu held.
func (s *Sender) checkJoinSeq(seq uint64) (first bool, err error) {
	s.joinMu.Lock()
	defer s.joinMu.Unlock()
	if s.firstSeq != 0 {
		return false, nil
	}
	if s.joinKnown && seq != s.joinAt+1 {
		return false, fmt.Errorf("logchannel: entry seq %d: the state transfer ended at seq %d, so the log resumes at %d", seq, s.joinAt, s.joinAt+1)
	}
	s.firstSeq = seq
	return true, nil
}

// transferIn is the backup's end of the transfer: the reader goroutine
// puts each checked chunk on chunks, and closes it at an end whose length
// and CRC match what arrived; Read takes them in order.
type transferIn struct {
	r      *Receiver
	chunks chan []byte

	// The reader goroutine's.
	length uint64
	crc    uint32
	ended  bool

	// Read's.
	cur       []byte
	delivered uint64
	eof       bool
}

// Transfer returns the state transfer's stream: its bytes in order, then
// io.EOF once the end arrived and checked (length and CRC), after which
// JoinAtSeq is known and Next returns the entries from JoinAtSeq()+1. If
// the channel ends first, Read returns an error wrapping the Receiver's
// (ErrPeerLost and the cause, or ErrClosed). For one goroutine; the same
// reader at every call. In a pairing without Hello.Join, Read returns
// ErrNotJoining.
//
// The reader goroutine holds up to MaxQueued bytes of the transfer (at
// least one chunk) that Read has not taken; past that it stops reading the
// connection, and TCP pushes back on the primary.
func (r *Receiver) Transfer() io.Reader {
	if r.transfer == nil {
		return errReader{ErrNotJoining}
	}
	return r.transfer
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// JoinAtSeq returns the Seq of the last entry included in the transferred
// state: the log resumes after it. Known once the transfer's Read has
// returned io.EOF; 0 before, and in a pairing without a join.
func (r *Receiver) JoinAtSeq() uint64 { return r.joinAt.Load() }

// JoinGeneration returns the generation the primary gave with the end of
// the transfer (FinishAt): the new pairing's epoch when the backup dialed
// a running primary (DialJoin); 0 before the end or if none was given.
func (r *Receiver) JoinGeneration() uint64 { return r.joinGen.Load() }

// Joining says the pairing is a joining one (Hello.Join).
func (r *Receiver) Joining() bool { return r.transfer != nil }

func (t *transferIn) Read(p []byte) (int, error) {
	for len(t.cur) == 0 {
		if t.eof {
			return 0, io.EOF
		}
		if len(p) == 0 {
			return 0, nil
		}
		var c []byte
		var ok bool
		select {
		case c, ok = <-t.chunks:
		case <-t.r.done:
			// Chunks that arrived before the end are good: take them.
			select {
			case c, ok = <-t.chunks:
			default:
				return 0, fmt.Errorf("logchannel: the state transfer from %s ended after %d bytes, before its end: %w", t.r.peer, t.delivered, t.r.Err())
			}
		}
		if !ok {
			t.eof = true
			return 0, io.EOF
		}
		t.cur = c
	}
	n := copy(p, t.cur)
	t.cur = t.cur[n:]
	t.delivered += uint64(n)
	t.r.transferTaken.Store(t.delivered)
	return n, nil
}

// readTransfer reads the body of a transfer message of size bytes and
// hands its chunk to Transfer's reader. The body is read a piece at a
// time, each piece a sign of life, so that a slow link that delivers a
// chunk over longer than the failover timeout is not a dead primary.
func (t *transferIn) readTransfer(size int) error {
	r := t.r
	if size < crcLen || size > transferLen {
		return r.mr.protocolError("%v message of %d bytes, expected at most %d", msgTransfer, size, transferLen)
	}
	body := make([]byte, size)
	streamLen := size - crcLen
	for got := 0; got < size; {
		n, err := r.mr.r.Read(body[got:min(size, got+32<<10)])
		if n > 0 {
			// Counted as they come, for the progress reports: on a slow
			// link a chunk may take longer than the failover timeout.
			r.transferBytes.Add(uint64(min(got+n, streamLen) - min(got, streamLen)))
			r.lastHeard.Store(r.now())
		}
		got += n
		r.mr.off += int64(n)
		if err != nil && got < size {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("reading transfer message %d from %s, %d bytes short of its end: %w", r.mr.count, r.peer, size-got, err)
		}
	}
	chunk := body[:size-crcLen]
	crc := crc32.Update(crc32.Checksum(r.mr.hdr[:], castagnoli), castagnoli, chunk)
	if stored := binary.LittleEndian.Uint32(body[size-crcLen:]); stored != crc {
		return r.mr.protocolError("%v message checksum mismatch: stored %#08x, computed %#08x", msgTransfer, stored, crc)
	}
	t.length += uint64(len(chunk))
	t.crc = crc32.Update(t.crc, castagnoli, chunk)
	select {
	case t.chunks <- chunk:
		return nil
	default:
	}
	// Transfer's reader is behind: the silence that follows is ours, not
	// the primary's.
	r.paused.Store(true)
	defer func() {
		r.lastHeard.Store(r.now())
		r.paused.Store(false)
	}()
	select {
	case t.chunks <- chunk:
		return nil
	case <-r.done:
		return ErrClosed
	}
}

// readTransferEnd takes the end of the transfer: its length and CRC must
// be those of the bytes that arrived.
func (t *transferIn) readTransferEnd(size int) error {
	r := t.r
	f, err := r.mr.readControl(msgTransferEnd, size, transferEndLen, true)
	if err != nil {
		return err
	}
	length, crc, seq, gen := leUint64(f[0:]), binary.LittleEndian.Uint32(f[8:]), leUint64(f[12:]), leUint64(f[20:])
	if length != t.length || crc != t.crc {
		return r.mr.protocolError("the state transfer ends with %d bytes of CRC %#08x, but %d bytes of CRC %#08x arrived", length, crc, t.length, t.crc)
	}
	t.ended = true
	r.joinAt.Store(seq)
	r.joinGen.Store(gen)
	close(t.chunks)
	return nil
}

package logchannel

// The message layer: see doc.go for the protocol as a whole.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
)

const (
	// Magic opens every connection, in both directions, so that a peer
	// that is not an ftvm logging channel is told apart at the first
	// bytes.
	Magic = "FTVMCHAN"
	// ProtocolVersion is the version of the protocol this package speaks.
	// The preamble and the message header (type, length) keep their layout
	// in every version, so that two versions can always tell each other
	// why they refuse.
	// Version 2 added the hello's session binding; version 3 the hello's
	// flags (a joining pairing) and the state transfer's messages; version
	// 4 the join offer.
	ProtocolVersion uint16 = 4

	// MaxMessageLen bounds the body of a message: one log frame of at most
	// replay.MaxFrameLen bytes plus its lengths, CRC and the stream header
	// fit with room to spare. A longer length is refused before anything
	// is allocated, so a corrupt or hostile length costs nothing.
	MaxMessageLen = 17 << 20

	preambleLen = len(Magic) + 2
	headerLen   = 1 + 4 // type, body length
	crcLen      = 4

	// maxHandshakeLen bounds a hello or verdict message.
	maxHandshakeLen = 4096
	// maxReasonLen bounds the reason in a refusal verdict.
	maxReasonLen = 1024
	// MaxVMIDLen bounds Hello.VMID.
	MaxVMIDLen = 255
)

// msgType is the first byte of a message. Printable letters, so that a
// byte dump of a connection reads.
type msgType byte

const (
	msgHello     msgType = 'H' // both ways, handshake only
	msgVerdict   msgType = 'V' // both ways, handshake only
	msgLog       msgType = 'L' // primary -> backup: bytes of the replay log stream
	msgAck       msgType = 'A' // backup -> primary
	msgHeartbeat msgType = 'P' // both ways
	msgEcho      msgType = 'E' // both ways: the answer to a heartbeat
	// msgReleased, primary -> backup: the primary released every output
	// of the entries up to this seq. A backup that goes live releases the
	// outputs of later entries, which the primary may never have sent.
	msgReleased msgType = 'R'
	// msgState, primary -> backup: a piece of the guest's world that is
	// not in the log but that the guest observes, such as which client a
	// NAT port stands for: a key and its latest value (SetState).
	msgState msgType = 'S'
	// msgTransfer, primary -> backup, in a joining pairing only and before
	// any log message: the next bytes of the state transfer stream.
	msgTransfer msgType = 'T'
	// msgTransferEnd, primary -> backup: the transfer is whole (its length
	// and CRC) and the log goes on after the seq it names.
	msgTransferEnd msgType = 'J'
	// msgTransferProgress, backup -> primary: the transfer bytes received
	// and taken so far. A backup working through a long transfer is not
	// stalled, although the log frames behind it wait for their acks.
	msgTransferProgress msgType = 'G'
	// msgJoinOffer, backup -> primary, in a joining pairing only: a piece
	// of what the backup already holds (SendOffer), which the transfer
	// may leave out.
	msgJoinOffer msgType = 'O'
)

func (t msgType) String() string {
	switch t {
	case msgHello:
		return "hello"
	case msgVerdict:
		return "verdict"
	case msgLog:
		return "log"
	case msgAck:
		return "ack"
	case msgHeartbeat:
		return "heartbeat"
	case msgEcho:
		return "heartbeat-echo"
	case msgReleased:
		return "released"
	case msgState:
		return "state"
	case msgTransfer:
		return "transfer"
	case msgTransferEnd:
		return "transfer-end"
	case msgTransferProgress:
		return "transfer-progress"
	case msgJoinOffer:
		return "join-offer"
	}
	return fmt.Sprintf("type %#02x %s", byte(t), strconv.QuoteRune(rune(t)))
}

// Body sizes of the fixed-size control messages, CRC included.
const (
	ackLen       = 8 + 8 + crcLen // acked seq, replayed exit
	heartbeatLen = 8 + crcLen     // the sender's timestamp
	echoLen      = 8 + crcLen     // the echoed timestamp
	releasedLen  = 8 + crcLen     // the seq whose outputs are all released
	// MaxStateKey and MaxStateValue bound a state message's key and value;
	// MaxStates bounds the keys a Receiver keeps.
	MaxStateKey   = 255
	MaxStateValue = 1024
	MaxStates     = 1 << 16
	maxStateLen   = 1 + MaxStateKey + MaxStateValue + crcLen
	// MaxTransferChunk bounds the stream bytes of one transfer message: a
	// chunk is what the backup must hold before it can check the CRC, and
	// heartbeats and state wait behind it on the primary.
	MaxTransferChunk = 256 << 10
	transferLen      = MaxTransferChunk + crcLen
	// transferEndLen: stream length u64, stream CRC-32C u32, join seq u64,
	// the pairing's generation u64 (0: the handshake's).
	transferEndLen = 8 + 4 + 8 + 8 + crcLen
	// transferProgressLen: bytes received u64, bytes taken u64.
	transferProgressLen = 8 + 8 + crcLen
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendHeader appends a message header.
func appendHeader(b []byte, t msgType, bodyLen int) []byte {
	b = append(b, byte(t))
	return binary.LittleEndian.AppendUint32(b, uint32(bodyLen))
}

// appendControl appends a control message (every type but log) with the
// given fields; its body ends with the CRC-32C of the header and fields.
// The log needs no such CRC: each of its frames carries its own.
func appendControl(b []byte, t msgType, fields []byte) []byte {
	start := len(b)
	b = appendHeader(b, t, len(fields)+crcLen)
	b = append(b, fields...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

func appendPreamble(b []byte, version uint16) []byte {
	b = append(b, Magic...)
	return binary.LittleEndian.AppendUint16(b, version)
}

// ErrProtocol is wrapped by the error for a message that breaks the
// protocol: an unknown or misplaced type, a length over a limit or of the
// wrong size, a control message whose CRC does not match.
var ErrProtocol = errors.New("protocol violation")

// msgReader reads messages from one direction of a connection. Not safe
// for concurrent use: each connection has one reading goroutine.
type msgReader struct {
	r     *bufio.Reader
	from  string // "the primary", "the backup", "the peer": for messages
	count uint64 // messages read so far
	off   int64  // bytes read so far, preamble included
	hdr   [headerLen]byte
	body  []byte // scratch for control messages
}

func newMsgReader(r *bufio.Reader, from string) *msgReader {
	return &msgReader{r: r, from: from, body: make([]byte, 0, 64)}
}

// protocolError makes an error about the message being read.
func (m *msgReader) protocolError(format string, args ...any) error {
	return fmt.Errorf("message %d from %s (at byte %d): %s: %w", m.count, m.from, m.off, fmt.Sprintf(format, args...), ErrProtocol)
}

// readHeader reads the next message's header and checks its type is one
// of allowed and its length within the limit. A clean end of the
// connection before the header is returned as io.EOF.
func (m *msgReader) readHeader(allowed ...msgType) (msgType, int, error) {
	n, err := io.ReadFull(m.r, m.hdr[:])
	m.off += int64(n)
	if err != nil {
		if err == io.ErrUnexpectedEOF {
			return 0, 0, fmt.Errorf("connection ended inside the header of message %d from %s: %w", m.count+1, m.from, err)
		}
		return 0, 0, err
	}
	m.count++
	t := msgType(m.hdr[0])
	size := binary.LittleEndian.Uint32(m.hdr[1:])
	ok := false
	for _, a := range allowed {
		ok = ok || t == a
	}
	if !ok {
		return 0, 0, m.protocolError("unexpected %v message (length field %d)", t, size)
	}
	if size > MaxMessageLen {
		return 0, 0, m.protocolError("%v message of %d bytes, over the limit of %d", t, size, MaxMessageLen)
	}
	return t, int(size), nil
}

// readControl reads the body of a control message of type t whose header
// said size, checks the size is want (or at most want if exact is false)
// and the CRC, and returns the fields without the CRC. The slice is reused
// by the next call.
func (m *msgReader) readControl(t msgType, size, want int, exact bool) ([]byte, error) {
	if size < crcLen || size > want || exact && size != want {
		return nil, m.protocolError("%v message of %d bytes, expected %d", t, size, want)
	}
	if cap(m.body) < size {
		m.body = make([]byte, size)
	}
	body := m.body[:size]
	n, err := io.ReadFull(m.r, body)
	m.off += int64(n)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("connection ended inside %v message %d from %s: %w", t, m.count, m.from, err)
	}
	fields := body[:size-crcLen]
	crc := crc32.Update(crc32.Checksum(m.hdr[:], castagnoli), castagnoli, fields)
	if stored := binary.LittleEndian.Uint32(body[size-crcLen:]); stored != crc {
		return nil, m.protocolError("%v message checksum mismatch: stored %#08x, computed %#08x", t, stored, crc)
	}
	return fields, nil
}

func appendAck(b []byte, seq, replayedExit uint64) []byte {
	var f [16]byte
	binary.LittleEndian.PutUint64(f[0:], seq)
	binary.LittleEndian.PutUint64(f[8:], replayedExit)
	return appendControl(b, msgAck, f[:])
}

func appendStamp(b []byte, t msgType, stamp int64) []byte {
	var f [8]byte
	binary.LittleEndian.PutUint64(f[:], uint64(stamp))
	return appendControl(b, t, f[:])
}

func parseStamp(fields []byte) int64 { return int64(binary.LittleEndian.Uint64(fields)) }

func leUint64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

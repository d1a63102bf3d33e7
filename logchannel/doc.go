// Package logchannel carries the replay log from the primary VMM to the
// backup over TCP, and the backup's acknowledgements back: the logging
// channel of VMware vSphere FT (Scales et al. 2010).
//
// The primary Dials and gets a *Sender, a replay.Sink for its Recorder;
// the backup Listens, Accepts and gets a *Receiver, a replay.Source for
// its Replayer. The log travels in the replay package's own format (one
// Encoder on the primary, one Decoder on the backup, CRC-32C per frame):
// this package adds no second format for entries, only the messages
// around the log's bytes.
//
// # What each side promises
//
// The backup acknowledges an entry when it has received it whole, checked
// its frame's CRC and queued it for replay: on receipt, not on replay. The
// primary releases an output (package outputrule) once the ack of the
// output's entry is in (Sender.Acks), which is VM-FT's Output Rule. An ack
// never covers an entry the backup does not have; a Sender that receives
// such an ack treats it as a protocol violation and drops the backup.
//
// Both sides watch each other: any message (log, ack, heartbeat) is a sign
// of life, a side that has sent nothing for HeartbeatInterval sends a
// heartbeat, and a side that has heard nothing for FailoverTimeout
// declares its peer lost (Sender.PeerLost, or ErrPeerLost from
// Receiver.Next once the received entries are replayed). What happens next
// (go live, or go on without a backup) is decided elsewhere, by the
// split-brain arbiter.
//
// Memory is bounded on both sides. The Sender blocks Append and Flush
// while MaxUnacked bytes are unacknowledged; the Receiver stops reading
// the socket while MaxQueued bytes of entries wait for Next, so TCP pushes
// back on the primary. A stalled backup stalls the primary, as in VM-FT.
//
// The backup reports how far its replay has come (ReportReplayed); the
// primary turns that into a lag in exits and in time (Sender.Lag) and
// throttles its vCPU with Sender.WaitLag when the lag grows.
//
// # Joining a running primary
//
// A pairing is fresh (the backup replays from the guest's first
// instruction) or joining (Hello.Join: the guest already runs, as after
// a failover left the primary unprotected). Both sides' Hellos must say
// the same, so a backup is started to join or to start fresh, and each
// side knows before the session starts which it is.
//
// In a joining pairing the primary first streams the guest's state to
// the backup (Sender.Transfer: Write, then Finish(seq)) while the guest
// runs on, and the backup reads it (Receiver.Transfer) to restore its
// VM. Finish names the Seq of the last entry the state includes; the log
// resumes at the next one (Receiver.JoinAtSeq), and its first entry must
// be that one on both sides. Entries the primary appends meanwhile wait
// in the open frame, and once a frame is due Append and Flush wait for
// Finish: nothing of the log overtakes the state it continues. The
// transfer is flow-controlled like the log (Write blocks on TCP; the
// backup holds at most MaxQueued of its bytes that Read has not taken),
// but its bytes are not log: MaxUnacked and acks do not count them.
// A transfer cut short is an error on both sides, never an early
// io.EOF: the end carries the stream's length and CRC, which the backup
// checks before Read returns io.EOF. Every piece of a transfer message
// that arrives is a sign of life, and the backup reports the bytes it
// has received and taken, which the primary counts as progress, so a
// long transfer on a slow link or into a slow restore is not a lost peer.
//
// Before the transfer, a joining backup may send a join offer
// (Receiver.SendOffer): what it already holds, such as the chunk hashes of
// its copy of a local disk, so that the state transfer leaves out what is
// equal. The primary reads it whole (Sender.Offer, at most MaxJoinOffer
// bytes); the channel does not look inside it.
//
// # Security
//
// The channel runs over mutual TLS 1.3 unless Config.InsecureNoTLS says to
// run in clear. Each side presents a certificate from the pair's CA that
// names the VM id (see tls.go, NewCA, WritePairCredentials) and checks the
// peer's the same way; a peer without one fails with an *AuthError
// (ErrUnauthenticated, ErrRefused) on both sides, and Accept returns it as
// a *ConnError so the backup listens on. Every hello carries a binding of
// its fields to the TLS session (exported keying material), so a hello is
// good only in the session it was sent in. Everything below runs inside
// the TLS session.
//
// # Wire protocol, version 4
//
// Both directions start with a preamble, then messages:
//
//	preamble = "FTVMCHAN" (8 bytes), protocol version uint16 LE
//	message  = type (1 byte), body length uint32 LE (<= MaxMessageLen,
//	           17 MiB), body
//
// The body of every message but a log message ends with the CRC-32C
// (Castagnoli) of the message's type, length and the rest of the body. A
// log message needs none: its body is whole frames of the replay log
// stream, which carry their own CRC. The preamble and the message header
// keep their layout in every version, so two versions can still refuse
// each other with a reason.
//
// Handshake. Each side sends its preamble and a hello, reads the peer's,
// compares, sends a verdict and reads the peer's verdict; the session
// starts only if both accept, and a side that refuses says why.
//
//	'H' hello    role u8 (1 primary, 2 backup), heartbeat interval u32 LE
//	             (microseconds), generation u64 LE, guest image SHA-256
//	             [32], config digest [32], flags u8 (bit 0: Join, the
//	             others zero), VM id length u8, VM id,
//	             binding length u8 (32 with TLS, 0 in clear), binding: the
//	             TLS exporter "EXPORTER-ftvm-logchannel-hello" with the
//	             fields before it as context
//	'V' verdict  accept u8 (1, or 0 to refuse), reason length u16 LE,
//	             reason (UTF-8, at most 1024 bytes)
//
// A side refuses if the peer's protocol version, VM id, generation, image,
// config digest or Join differ from its own, if the peer has the same role, or if the
// peer's heartbeat interval is more than half this side's failover
// timeout. Both sides then fail with a *RefusedError naming each
// difference ("peer runs guest image 3cc6... but this side runs
// 7a62...", matching ErrRefused). Bytes other than the magic fail with
// ErrNotFTVM; silence fails after HandshakeTimeout.
//
// Session. Primary to backup:
//
//	'L' log        bytes of the replay log stream: the stream header and/or
//	               one frame, exactly what one Encoder Flush writes. The
//	               stream header comes first, right after the handshake.
//	'P' heartbeat  the sender's timestamp int64 LE (ns on its own clock)
//	'E' echo       the timestamp of the peer's heartbeat, sent back at once
//	'R' released   seq uint64 LE: every output of the entries up to it left
//	'S' state      key length u8, key, value (SetState)
//	'T' transfer   joining pairing only, before any log message: the next
//	               bytes of the state transfer, 1 to MaxTransferChunk
//	               (256 KiB)
//	'J' transfer end  the stream's length uint64 LE, its CRC-32C uint32
//	               LE, the seq uint64 LE the log resumes after, and the
//	               pairing's generation uint64 LE (0: the hellos'; a
//	               running primary that a backup dialed gives the epoch it
//	               took, DialJoin); sent once, before the log's stream
//	               header
//
// Backup to primary: 'P' and 'E' the same, and
//
//	'A' ack        seq uint64 LE: every entry up to it is received;
//	               replayed exit uint64 LE: the backup's replay progress
//	'G' transfer progress  joining pairing only: transfer bytes received
//	               uint64 LE and taken by Read uint64 LE, sent when they
//	               grow, at most every heartbeat tick
//	'O' join offer joining pairing only, once, in pieces: flags
//	               u8 (bit 0: the last piece), then up to 64 KiB of the
//	               offer; at most MaxJoinOffer (4 MiB) in all, one offer
//
// The backup acks when it has decoded every frame of the log messages it
// has read, so one ack may cover several frames that arrived together. An
// ack that only reports progress goes at most every millisecond. A
// message of a type the receiving side does not expect, over the length
// limit, of the wrong size or with a bad CRC, a log frame that does not
// decode, a transfer message in a pairing without a join or after the
// transfer's end, a log message before it, an offer piece after the
// offer's last or past MaxJoinOffer, and an end whose length or
// CRC differ from the bytes that came, end the session: the side that sees it closes the connection and
// reports its peer lost, naming what was wrong.
package logchannel

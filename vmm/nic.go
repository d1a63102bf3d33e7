package vmm

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/ftvm/ftvm/replay"
)

// NICConfig is what the guest sees of its NIC. Primary and backup must
// agree on it, so it is part of Config (and of the config digest); the
// backend that carries the frames is the World's business.
type NICConfig struct {
	MAC     [6]byte
	Addr    netip.Prefix // the guest's IPv4 address and prefix length
	Gateway netip.Addr
}

const (
	portNICInfo = 0x20
	portNICTX   = 0x21
	portNICRX   = 0x22

	maxNICBatch = 256
	pktDescSize = 16 // struct ftvm_pkt_desc: addr u64, len u32, flags u32
	minFrame    = 14
	errNoDev    = ^uint64(18) // -19, ENODEV
)

// nic is the guest's NIC: descriptor arrays in guest memory, one exit per
// batch in each direction (guests/ABI.md). All of its state is in guest
// memory and the World, so it replays without a state of its own.
type nic struct {
	cfg    *NICConfig
	frames [][]byte // scratch: receive buffers aliasing guest memory
	lens   []int
	batch  []byte // scratch: a transmit batch
}

// nicInfo: RDI = 16 bytes for MAC, IPv4, prefix; RSI = 4 bytes for the gateway.
func (n *nic) info(x *exitContext) (bool, int, error) {
	if n.cfg == nil {
		x.setResult(errNoDev)
		return false, 0, nil
	}
	var info [16]byte
	copy(info[:6], n.cfg.MAC[:])
	ip := n.cfg.Addr.Addr().As4()
	copy(info[8:12], ip[:])
	info[12] = byte(n.cfg.Addr.Bits())
	gw := n.cfg.Gateway.As4()
	infoBuf, err1 := x.mem.ForGuest(x.point.Regs.RDI, uint64(len(info)), true)
	gwBuf, err2 := x.mem.ForGuest(x.point.Regs.RSI, uint64(len(gw)), true)
	if err1 != nil || err2 != nil {
		x.setResult(errFault)
		return false, 0, nil
	}
	copy(infoBuf, info[:])
	copy(gwBuf, gw[:])
	x.setResult(0)
	return false, 0, nil
}

// descriptors validates a descriptor array of count entries at addr and
// returns the guest memory each one names. Every descriptor is checked
// before anything happens, so a bad one changes nothing.
// write says whether the device will write the table and the buffers
// (receive) or only read them (transmit): the guest must be able to.
func (x *exitContext) descriptors(addr, count uint64, minLen, maxLen uint32, write bool, out [][]byte) ([][]byte, uint64) {
	if count > maxNICBatch {
		return nil, errInval
	}
	table, err := x.mem.ForGuest(addr, count*pktDescSize, write)
	if err != nil {
		return nil, errFault
	}
	out = out[:0]
	for i := uint64(0); i < count; i++ {
		d := table[i*pktDescSize:]
		a, l := binary.LittleEndian.Uint64(d), binary.LittleEndian.Uint32(d[8:])
		if l < minLen || l > maxLen {
			return nil, errInval
		}
		buf, err := x.mem.ForGuest(a, uint64(l), write)
		if err != nil {
			return nil, errFault
		}
		out = append(out, buf)
	}
	return out, 0
}

// transmit: RDI = descriptors, RSI = count. The whole batch is one output,
// so the Output Rule holds it behind one log entry.
func (n *nic) transmit(x *exitContext) (bool, int, error) {
	if n.cfg == nil {
		x.setResult(errNoDev)
		return false, 0, nil
	}
	frames, errno := x.descriptors(x.point.Regs.RDI, x.point.Regs.RSI, minFrame, replay.MaxFrame, false, n.frames)
	if errno != 0 {
		x.setResult(errno)
		return false, 0, nil
	}
	n.frames = frames
	n.batch = n.batch[:0]
	for _, f := range frames {
		n.batch = replay.AppendFrame(n.batch, f)
	}
	if len(frames) > 0 {
		if err := x.world.Output(x.point, replay.OutputPacket, n.batch); err != nil {
			return false, 0, err
		}
	}
	x.setResult(uint64(len(frames)))
	return false, 0, nil
}

// receive: RDI = descriptors, RSI = count. Frames are copied straight into
// the guest's buffers; each descriptor's len becomes the frame's length.
func (n *nic) receive(x *exitContext) (bool, int, error) {
	if n.cfg == nil {
		x.setResult(errNoDev)
		return false, 0, nil
	}
	addr, count := x.point.Regs.RDI, x.point.Regs.RSI
	frames, errno := x.descriptors(addr, count, replay.MaxFrame, 1<<16, true, n.frames)
	if errno != 0 {
		x.setResult(errno)
		return false, 0, nil
	}
	n.frames = frames
	if cap(n.lens) < len(frames) {
		n.lens = make([]int, maxNICBatch)
	}
	lens := n.lens[:len(frames)]
	got := 0
	if len(frames) > 0 {
		var err error
		if got, err = x.world.NetReceive(x.point, frames, lens); err != nil {
			return false, 0, err
		}
	}
	if got < 0 || got > len(frames) {
		return false, 0, fmt.Errorf("vmm: the world delivered %d frames into %d buffers", got, len(frames))
	}
	table, _ := x.mem.Slice(addr, count*pktDescSize) // checked by descriptors
	for i := 0; i < got; i++ {
		binary.LittleEndian.PutUint32(table[i*pktDescSize+8:], uint32(lens[i]))
	}
	x.setResult(uint64(got))
	return false, 0, nil
}

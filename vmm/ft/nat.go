package ft

import (
	"sort"
	"strconv"
	"strings"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/vmm/vnet"
)

// The user network's NAT decides which client each gateway port stands
// for, and the guest answers gateway ports: a backup that went live with
// an empty table would send a reply to whichever client happened to get
// that port next. So the primary sends every mapping to the backup as
// channel state, ahead of the entries whose frames use it, and the backup
// restores them all when it goes live.

const natStatePrefix = "nat/"

// shareNAT sends net's NAT mappings, the present ones and every later
// one, to the backup over sender, until stop is called. Nothing if net has
// no NAT (TAP).
func shareNAT(net vnet.Backend, sender *logchannel.Sender) (stop func()) {
	nat, ok := vnet.NATOf(net)
	if !ok {
		return func() {}
	}
	send := func(m vnet.NATMapping) {
		// Cannot fail: the key and the text are far below the bounds.
		_ = sender.SetState(natStatePrefix+strconv.Itoa(int(m.GatewayPort)), []byte(m.String()))
	}
	nat.OnNewNATMapping(send) // first, so that none made meanwhile is missed
	for _, m := range nat.NATMappings() {
		send(m)
	}
	return func() { nat.OnNewNATMapping(nil) }
}

// restoreNAT gives net the NAT mappings the primary sent. Mappings that do
// not parse or do not fit net's table are skipped and counted.
func restoreNAT(net vnet.Backend, state map[string][]byte) (restored, skipped int, err error) {
	nat, ok := vnet.NATOf(net)
	if !ok {
		return 0, 0, nil
	}
	var ms []vnet.NATMapping
	for k, v := range state {
		if !strings.HasPrefix(k, natStatePrefix) {
			continue
		}
		m, err := vnet.ParseNATMapping(string(v))
		if err != nil || k != natStatePrefix+strconv.Itoa(int(m.GatewayPort)) {
			skipped++
			continue
		}
		ms = append(ms, m)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].GatewayPort < ms[j].GatewayPort })
	for _, m := range ms {
		if err := nat.RestoreNAT([]vnet.NATMapping{m}); err != nil {
			skipped++
			continue
		}
		restored++
	}
	return restored, skipped, nil
}

package bench

import (
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/hosts"
)

// TestCheckWire: the guest's frames must come from one host at a time in
// the order it lived on them; a frame from a host it had left is a split
// brain unless another host sent the same frame (a late duplicate).
func TestCheckWire(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int, sum uint64) hosts.Frame {
		return hosts.Frame{At: t0.Add(time.Duration(ms) * time.Millisecond), Sum: sum}
	}
	type fs = []hosts.Frame
	for _, c := range []struct {
		name            string
		live            []string
		primary, backup fs
		split, fails    bool
		dups            int
	}{
		{"primary stayed", []string{"primary"}, fs{at(1, 1), at(2, 2)}, nil, false, false, 0},
		{"the backup spoke while the primary stayed", []string{"primary"}, fs{at(1, 1)}, fs{at(2, 2)}, true, true, 0},
		{"a clean failover", []string{"primary", "backup"}, fs{at(1, 1)}, fs{at(2, 2), at(3, 3)}, false, false, 0},
		{"the old primary spoke after", []string{"primary", "backup"}, fs{at(1, 1), at(4, 9)}, fs{at(2, 2)}, true, true, 0},
		{"the old primary repeated a committed output", []string{"primary", "backup"}, fs{at(1, 1), at(4, 2)}, fs{at(2, 2), at(3, 3)}, false, false, 1},
		{"back to the primary's host after a join", []string{"primary", "backup", "primary"}, fs{at(1, 1), at(5, 5)}, fs{at(2, 2)}, false, false, 0},
		{"the backup went live but was never heard", []string{"primary", "backup"}, fs{at(1, 1)}, nil, false, true, 0},
	} {
		var split bool
		var dups int
		err := checkWire(c.live, true, c.primary, c.backup, &split, &dups)
		if (err != nil) != c.fails || split != c.split || dups != c.dups {
			t.Errorf("%s: err %v, split brain %v, dups %d", c.name, err, split, dups)
		}
	}
}

package logchannel

import (
	"strings"
	"testing"
	"time"
)

// TestStateArrivesBeforeTheEntriesAfterIt: a state set before an entry is
// appended is at the backup when that entry is, and a later value of the
// same key replaces it; keys and values out of bounds are refused.
func TestStateArrivesBeforeTheEntriesAfterIt(t *testing.T) {
	s, r := pair(t, fastConfig(), fastConfig())
	defer r.Close()
	defer s.Close()
	es := testEntries(40)
	for i, e := range es {
		if i%10 == 5 {
			if err := s.SetState("nat/49152", []byte(strings.Repeat("v", i))); err != nil {
				t.Fatal(err)
			}
			if err := s.SetState("k"+strings.Repeat("x", i), []byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range es {
		if _, err := r.Next(); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if i == 5 || i == 25 {
			// Everything set before entry i was appended is here.
			st := r.State()
			if got := string(st["nat/49152"]); len(got) < i {
				t.Fatalf("at entry %d the backup has nat/49152 = %q, set to %d bytes before it", i, got, i)
			}
			if _, ok := st["k"+strings.Repeat("x", i)]; !ok {
				t.Fatalf("at entry %d the key set before it is missing", i)
			}
		}
	}
	waitFor(t, 10*time.Second, "the last state", func() bool { return len(r.State()["nat/49152"]) == 35 })
	if n := len(r.State()); n != 5 {
		t.Fatalf("%d keys, want 5", n)
	}
	for _, bad := range []struct {
		key   string
		value []byte
	}{{"", nil}, {strings.Repeat("k", MaxStateKey+1), nil}, {"k", make([]byte, MaxStateValue+1)}} {
		if err := s.SetState(bad.key, bad.value); err == nil {
			t.Errorf("SetState(%d-byte key, %d-byte value) accepted", len(bad.key), len(bad.value))
		}
	}
}

package logchannel

import (
	"sync"
	"testing"
	"time"
)

// TestOnAck: once OnAck is set the reader hands every ack to it, in order,
// after the one that waited on Acks, and nothing more comes on Acks.
func TestOnAck(t *testing.T) {
	s, r := pair(t, fastConfig(), fastConfig())
	want := testEntries(3000)
	go func() {
		for {
			if _, err := r.Next(); err != nil {
				return
			}
		}
	}()
	appendAll := func(from, to int) {
		for i := from; i < to; i++ {
			if err := s.Append(want[i]); err != nil {
				t.Fatalf("append %d: %v", i, err)
			}
		}
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := s.WaitAcked(testContext(t, 10*time.Second), uint64(to)); err != nil {
			t.Fatal(err)
		}
	}
	appendAll(0, 1000) // the last ack waits on Acks: nobody takes it

	var mu sync.Mutex
	var got []uint64
	s.OnAck(func(seq uint64) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, seq)
	})
	// The reader may still be handing ack 1000 over as OnAck is set: it
	// reaches the function either way, not lost between the two.
	waitFor(t, 5*time.Second, "ack 1000 to reach OnAck's function", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) > 0 && got[len(got)-1] == 1000
	})

	appendAll(1000, len(want))
	waitFor(t, 5*time.Second, "the last ack to reach OnAck's function", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return got[len(got)-1] == uint64(len(want))
	})
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("OnAck's function got %d after %d", got[i], got[i-1])
		}
	}
	select {
	case seq := <-s.Acks():
		t.Fatalf("Acks delivered %d after OnAck", seq)
	default:
	}
}

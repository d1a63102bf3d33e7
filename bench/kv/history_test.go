package kv

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

func at(ms int) time.Time { return time.Unix(0, 0).Add(time.Duration(ms) * time.Millisecond) }

// The model accepts a linearizable history and refuses a lost write: a
// GET that, after a PUT was acknowledged, still sees the old value.
func TestModel(t *testing.T) {
	ok := []Call{
		{Client: 0, Op: Put, Key: "a", Value: "1", Reply: Reply{Status: "OK"}, Done: true, Start: at(0), End: at(10)},
		{Client: 1, Op: Get, Key: "a", Reply: Reply{Status: "OK", Value: "1"}, Done: true, Start: at(20), End: at(30)},
		{Client: 0, Op: Append, Key: "a", Value: "2", Reply: Reply{Status: "OK"}, Done: true, Start: at(40), End: at(50)},
		{Client: 1, Op: Get, Key: "a", Reply: Reply{Status: "OK", Value: "12"}, Done: true, Start: at(60), End: at(70)},
		{Client: 1, Op: Get, Key: "b", Reply: Reply{Status: "NOTFOUND"}, Done: true, Start: at(60), End: at(70)},
		{Client: 2, Op: Put, Key: "b", Value: "x", Done: false, Start: at(65)}, // no reply: may or may not apply
	}
	if res, _ := CheckLinearizable(ok, time.Second); res != porcupine.Ok {
		t.Fatalf("linearizable history judged %v", res)
	}
	lost := append(ok[:2:2], Call{Client: 0, Op: Put, Key: "a", Value: "2", Reply: Reply{Status: "OK"}, Done: true, Start: at(40), End: at(50)},
		Call{Client: 1, Op: Get, Key: "a", Reply: Reply{Status: "OK", Value: "1"}, Done: true, Start: at(60), End: at(70)})
	if res, _ := CheckLinearizable(lost, time.Second); res != porcupine.Illegal {
		t.Fatalf("a lost acknowledged write judged %v", res)
	}
}

func TestMaxGap(t *testing.T) {
	calls := []Call{
		{Done: true, Start: at(0), End: at(10)},
		{Done: true, Start: at(10), End: at(20)},
		{Done: true, Start: at(20), End: at(520)},
	}
	if g := maxGap(calls); g != 500*time.Millisecond {
		t.Fatalf("gap %v", g)
	}
}

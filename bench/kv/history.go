package kv

import (
	"context"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"
)

// Call is one operation a client made, as it saw it: what it asked, what
// came back, and when. A call that never got its reply has Done false: it
// may or may not have taken effect.
type Call struct {
	Client     int
	Op         Op
	Key, Value string
	Reply      Reply
	Done       bool
	Start, End time.Time
}

// Workload drives clients against one kvstore, each doing a random mix of
// PUT (unique values), APPEND and GET on a few shared keys, and records
// every call for a linearizability check.
type Workload struct {
	Clients  int
	Keys     int
	Duration time.Duration
	// OpTimeout bounds one call, retries included (default 20 s).
	OpTimeout time.Duration
	Seed      int64
	// Stop, if set, ends the workload early when closed: the clients
	// finish the call they are in and start no other.
	Stop <-chan struct{}
	// Dial makes each client (default Dial): to reach the server from
	// elsewhere, another network namespace say.
	Dial func(addr string) (*Client, error)
	// Completed, if set, counts the calls that got a reply as they do.
	Completed *atomic.Int64
}

// Outcome is what a Workload saw.
type Outcome struct {
	Calls []Call
	// MaxGap is the longest time during which no call completed anywhere:
	// the client-observed unavailability.
	MaxGap time.Duration
	Failed int // calls that never got a reply
}

// Run runs the workload against addr.
func (w Workload) Run(ctx context.Context, addr string) (Outcome, error) {
	if w.OpTimeout == 0 {
		w.OpTimeout = 20 * time.Second
	}
	var mu sync.Mutex
	var out Outcome
	var wg sync.WaitGroup
	stop := time.Now().Add(w.Duration)
	dial := w.Dial
	if dial == nil {
		dial = Dial
	}
	for i := 0; i < w.Clients; i++ {
		c, err := dial(addr)
		if err != nil {
			return out, err
		}
		wg.Add(1)
		go func(i int, c *Client) {
			defer wg.Done()
			defer c.Close()
			rng := rand.New(rand.NewSource(w.Seed + int64(i)))
			for n := 0; time.Now().Before(stop) && ctx.Err() == nil && !stopped(w.Stop); n++ {
				call := Call{Client: i, Key: fmt.Sprintf("k%d", rng.Intn(w.Keys))}
				switch p := rng.Intn(10); {
				case p < 3:
					call.Op, call.Value = Put, fmt.Sprintf("c%dn%d", i, n)
				case p < 4:
					call.Op, call.Value = Append, fmt.Sprintf("+%d.%d", i, n)
				default:
					call.Op = Get
				}
				octx, cancel := context.WithTimeout(ctx, w.OpTimeout)
				call.Start = time.Now()
				r, err := c.Do(octx, call.Op, call.Key, call.Value)
				call.End = time.Now()
				cancel()
				call.Reply, call.Done = r, err == nil
				if call.Done && call.Op == Append && r.Status == "ERR" {
					call.Done = true // too long: it took no effect, which the model knows
				}
				if call.Done && w.Completed != nil {
					w.Completed.Add(1)
				}
				mu.Lock()
				out.Calls = append(out.Calls, call)
				if !call.Done {
					out.Failed++
				}
				mu.Unlock()
				if !call.Done {
					return // this client's next request id would be refused as stale
				}
			}
		}(i, c)
	}
	wg.Wait()
	out.MaxGap = maxGap(out.Calls)
	return out, nil
}

// stopped says whether stop is closed (never, if nil).
func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// maxGap is the longest stretch with no call completing, measured from
// the first call's start to the last call's end.
func maxGap(calls []Call) time.Duration {
	var first time.Time
	for _, c := range calls {
		if first.IsZero() || c.Start.Before(first) {
			first = c.Start
		}
	}
	return MaxGapSince(calls, first)
}

// MaxGapSince is the longest stretch with no call completing from since
// to the last call's end: the unavailability a fault at since caused,
// leaving out how long the clients took to reach the server at first.
func MaxGapSince(calls []Call, since time.Time) time.Duration {
	var ends []time.Time
	for _, c := range calls {
		if c.Done && c.End.After(since) {
			ends = append(ends, c.End)
		}
	}
	return LongestGap(since, ends)
}

// LongestGap is the longest stretch from since on between two of the
// times in ends (which it sorts): how long nobody heard back.
func LongestGap(since time.Time, ends []time.Time) time.Duration {
	sort.Slice(ends, func(i, j int) bool { return ends[i].Before(ends[j]) })
	var gap time.Duration
	prev := since
	for _, e := range ends {
		gap = max(gap, e.Sub(prev))
		prev = e
	}
	return gap
}

// kvInput and kvOutput are a call and its result for the model.
type kvInput struct {
	op         Op
	key, value string
}

type kvOutput struct {
	status, value string
	unknown       bool // no reply: any outcome is allowed
}

// Model is a porcupine model of kvstore: PUT sets, APPEND appends (creating
// the key; refused with ERR when the value would pass 1024 bytes), GET
// reads (NOTFOUND for a missing key). Partitioned by key.
var Model = porcupine.Model{
	Partition: PartitionByKey(func(in any) string { return in.(kvInput).key }),
	Init:      func() any { return (*string)(nil) }, // nil: the key does not exist
	Step: func(state, input, output any) (bool, any) {
		cur := state.(*string)
		in, out := input.(kvInput), output.(kvOutput)
		switch in.op {
		case Get:
			if out.unknown {
				return true, cur
			}
			if cur == nil {
				return out.status == "NOTFOUND", cur
			}
			return out.status == "OK" && out.value == *cur, cur
		case Put:
			v := in.value
			return out.unknown || out.status == "OK", &v
		case Append:
			old := ""
			if cur != nil {
				old = *cur
			}
			if len(old)+len(in.value) > 1024 {
				return out.unknown || out.status == "ERR", cur
			}
			v := old + in.value
			return out.unknown || out.status == "OK", &v
		}
		return false, cur
	},
	Equal: func(a, b any) bool {
		x, y := a.(*string), b.(*string)
		return x == nil && y == nil || x != nil && y != nil && *x == *y
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(kvInput), output.(kvOutput)
		res := out.status + " " + out.value
		if out.unknown {
			res = "?"
		}
		return fmt.Sprintf("%s %s %s -> %s", in.op, in.key, in.value, strings.TrimSpace(res))
	},
}

// PartitionByKey is a porcupine Partition for a store whose keys are
// independent: one part per key, in key order, each checked on its own.
func PartitionByKey(key func(input any) string) func([]porcupine.Operation) [][]porcupine.Operation {
	return func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := key(op.Input)
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		sort.Strings(keys)
		parts := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, byKey[k])
		}
		return parts
	}
}

// CheckLinearizable checks the calls against Model with porcupine. Calls
// without a reply may have taken effect at any time after they started.
func CheckLinearizable(calls []Call, timeout time.Duration) (porcupine.CheckResult, porcupine.LinearizationInfo) {
	var ops []porcupine.Operation
	var latest int64
	for _, c := range calls {
		latest = max(latest, c.End.UnixNano())
	}
	for _, c := range calls {
		end := c.End.UnixNano()
		out := kvOutput{status: c.Reply.Status, value: c.Reply.Value}
		if !c.Done {
			out.unknown, end = true, latest+int64(time.Hour)
		}
		ops = append(ops, porcupine.Operation{ClientId: c.Client, Input: kvInput{c.Op, c.Key, c.Value}, Output: out,
			Call: c.Start.UnixNano(), Return: end})
	}
	return porcupine.CheckOperationsVerbose(Model, ops, timeout)
}

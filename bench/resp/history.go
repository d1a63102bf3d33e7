package resp

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/ftvm/ftvm/bench/kv"
)

// Op is a command the workload makes.
type Op string

const (
	Set    Op = "SET"
	Get    Op = "GET"
	Append Op = "APPEND"
)

// Call is one command a client made, as it saw it. A call whose reply
// never came has Done false (Err says why): it may or may not have run.
type Call struct {
	Client     int
	Op         Op
	Key, Value string
	Reply      Value
	Done       bool
	Err        string `json:",omitempty"`
	Start, End time.Time
}

// Workload drives clients, each on a TCP connection of its own, doing a
// random mix of SET (unique values), APPEND and GET on a few shared keys
// (k0, k1, ...), and records every call for a linearizability check.
type Workload struct {
	Clients  int
	Keys     int
	Duration time.Duration
	// OpTimeout bounds one call (default 1 minute): TCP's retransmissions
	// carry a call across a failover, so it is far longer than one.
	OpTimeout time.Duration
	Seed      int64
	// Stop, if set, ends the workload early when closed: the clients
	// finish the call they are in and start no other.
	Stop <-chan struct{}
	// Dial makes each client's connection: to reach the server from
	// another network namespace, say. Default: Dial with a 10 s timeout.
	Dial func(addr string) (*Client, error)
	// Completed, if set, counts the calls that got a reply as they do.
	Completed *atomic.Int64
}

// Outcome is what a Workload saw.
type Outcome struct {
	Calls []Call
	// MaxGap is the longest time during which no call completed anywhere,
	// and MaxLatency the longest call that completed.
	MaxGap, MaxLatency time.Duration
	// Failed calls never got a reply: the connection broke (a reset, say)
	// or the call timed out; Errors got an error reply (-ERR, -OOM).
	Failed, Errors int
	// FirstErr is the first failed call's error.
	FirstErr string
}

// Run runs the workload against addr. Every client connects before any
// starts.
func (w Workload) Run(ctx context.Context, addr string) (Outcome, error) {
	if w.OpTimeout == 0 {
		w.OpTimeout = time.Minute
	}
	dial := w.Dial
	if dial == nil {
		dial = func(addr string) (*Client, error) { return Dial(addr, 10*time.Second) }
	}
	var out Outcome
	conns := make([]*Client, w.Clients)
	for i := range conns {
		c, err := dial(addr)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return out, err
		}
		conns[i] = c
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	stop := time.Now().Add(w.Duration)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			rng := rand.New(rand.NewSource(w.Seed + int64(i)))
			for n := 0; time.Now().Before(stop) && ctx.Err() == nil && !stopped(w.Stop); n++ {
				call := Call{Client: i, Key: fmt.Sprintf("k%d", rng.Intn(w.Keys))}
				args := []string{"", call.Key}
				switch p := rng.Intn(10); {
				case p < 3:
					call.Op, call.Value = Set, fmt.Sprintf("c%dn%d", i, n)
				case p < 4:
					call.Op, call.Value = Append, fmt.Sprintf("+%d.%d", i, n)
				default:
					call.Op = Get
				}
				args[0] = string(call.Op)
				if call.Op != Get {
					args = append(args, call.Value)
				}
				octx, cancel := context.WithTimeout(ctx, w.OpTimeout)
				call.Start = time.Now()
				r, err := c.Do(octx, args...)
				call.End = time.Now()
				cancel()
				call.Reply, call.Done = r, err == nil
				if err != nil {
					call.Err = err.Error()
				}
				if call.Done && w.Completed != nil {
					w.Completed.Add(1)
				}
				mu.Lock()
				out.Calls = append(out.Calls, call)
				if !call.Done {
					out.Failed++
					if out.FirstErr == "" {
						out.FirstErr = fmt.Sprintf("client %d, %s %s: %s", i, call.Op, call.Key, call.Err)
					}
				} else if r.Kind == '-' {
					out.Errors++
				}
				mu.Unlock()
				if !call.Done {
					return // the connection is out of step with its replies
				}
			}
		}()
	}
	wg.Wait()
	var first time.Time
	for _, c := range out.Calls {
		if first.IsZero() || c.Start.Before(first) {
			first = c.Start
		}
		if c.Done {
			out.MaxLatency = max(out.MaxLatency, c.End.Sub(c.Start))
		}
	}
	out.MaxGap = MaxGapSince(out.Calls, first)
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

// MaxGapSince is the longest stretch with no call completing from since
// to the last call's end.
func MaxGapSince(calls []Call, since time.Time) time.Duration {
	var ends []time.Time
	for _, c := range calls {
		if c.Done && c.End.After(since) {
			ends = append(ends, c.End)
		}
	}
	return kv.LongestGap(since, ends)
}

// FinalReads GETs keys k0..k(keys-1) on c, as calls of client number
// client, for the history: the server's state must hold every
// acknowledged write.
func FinalReads(ctx context.Context, c *Client, keys, client int) ([]Call, error) {
	var calls []Call
	for k := 0; k < keys; k++ {
		call := Call{Client: client, Op: Get, Key: fmt.Sprintf("k%d", k), Start: time.Now()}
		octx, cancel := context.WithTimeout(ctx, 20*time.Second)
		r, err := c.Do(octx, string(Get), call.Key)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("GET %s: %w", call.Key, err)
		}
		call.Reply, call.Done, call.End = r, true, time.Now()
		calls = append(calls, call)
	}
	return calls, nil
}

// respInput and respOutput are a call and its result for the model.
type respInput struct {
	op         Op
	key, value string
}

type respOutput struct {
	reply   Value
	unknown bool // no reply: any outcome is allowed
}

// Model is a porcupine model of the redis guest's strings: SET sets (+OK),
// APPEND appends, creating the key, and replies with the new length, GET
// reads (a null bulk string for a missing key). An error reply is a
// command that did not run. Partitioned by key.
var Model = porcupine.Model{
	Partition: kv.PartitionByKey(func(in any) string { return in.(respInput).key }),
	Init:      func() any { return (*string)(nil) }, // nil: the key does not exist
	Step: func(state, input, output any) (bool, any) {
		cur := state.(*string)
		in, out := input.(respInput), output.(respOutput)
		r := out.reply
		if !out.unknown && r.Kind == '-' {
			return in.op != Get, cur
		}
		switch in.op {
		case Get:
			if out.unknown {
				return true, cur
			}
			if cur == nil {
				return r.Kind == '$' && r.Null, cur
			}
			return r.Kind == '$' && !r.Null && r.Str == *cur, cur
		case Set:
			v := in.value
			return out.unknown || r.Kind == '+' && r.Str == "OK", &v
		case Append:
			old := ""
			if cur != nil {
				old = *cur
			}
			v := old + in.value
			return out.unknown || r.Kind == ':' && r.Int == int64(len(v)), &v
		}
		return false, cur
	},
	Equal: func(a, b any) bool {
		x, y := a.(*string), b.(*string)
		return x == nil && y == nil || x != nil && y != nil && *x == *y
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(respInput), output.(respOutput)
		res := out.reply.String()
		if out.unknown {
			res = "?"
		}
		return fmt.Sprintf("%s %s %s -> %s", in.op, in.key, in.value, res)
	},
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
		out := respOutput{reply: c.Reply}
		if !c.Done {
			out.unknown, end = true, latest+int64(time.Hour)
		}
		ops = append(ops, porcupine.Operation{ClientId: c.Client, Input: respInput{c.Op, c.Key, c.Value}, Output: out,
			Call: c.Start.UnixNano(), Return: end})
	}
	return porcupine.CheckOperationsVerbose(Model, ops, timeout)
}

// LostWrites counts the acknowledged writes the final reads (the calls
// of client final) show no trace of. An acknowledged SET or APPEND that no
// other SET can have followed (every other SET of its key ended before it
// began) must be in its key's final value, whatever APPENDs came after.
// Porcupine's verdict covers this and more; this is the plain count for a
// report.
func LostWrites(calls []Call, final int) int {
	finals := map[string]string{}
	for _, c := range calls {
		if c.Client == final {
			finals[c.Key] = c.Reply.Str
		}
	}
	lost := 0
	for _, w := range calls {
		v, read := finals[w.Key]
		if w.Client == final || w.Op == Get || !w.Done || w.Reply.Kind == '-' || !read {
			continue
		}
		overwritable := false
		for _, o := range calls {
			if o.Key == w.Key && o.Op == Set && o.Client != final && (o.Client != w.Client || !o.Start.Equal(w.Start)) &&
				(!o.Done || o.End.After(w.Start)) {
				overwritable = true
				break
			}
		}
		if !overwritable && !strings.Contains(v, w.Value) {
			lost++
		}
	}
	return lost
}

package resp

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

func at(ms int) time.Time { return time.Unix(0, 0).Add(time.Duration(ms) * time.Millisecond) }

var (
	ok       = Value{Kind: '+', Str: "OK"}
	null     = Value{Kind: '$', Null: true}
	bulk     = func(s string) Value { return Value{Kind: '$', Str: s} }
	integer  = func(n int64) Value { return Value{Kind: ':', Int: n} }
	oneFinal = 9
)

// The model accepts a linearizable history and refuses a lost write: a GET
// that, after a SET was acknowledged, still sees the old value; and an
// APPEND whose reply is not the new length.
func TestModel(t *testing.T) {
	good := []Call{
		{Client: 0, Op: Set, Key: "a", Value: "1", Reply: ok, Done: true, Start: at(0), End: at(10)},
		{Client: 1, Op: Get, Key: "a", Reply: bulk("1"), Done: true, Start: at(20), End: at(30)},
		{Client: 0, Op: Append, Key: "a", Value: "2", Reply: integer(2), Done: true, Start: at(40), End: at(50)},
		{Client: 1, Op: Get, Key: "a", Reply: bulk("12"), Done: true, Start: at(60), End: at(70)},
		{Client: 1, Op: Get, Key: "b", Reply: null, Done: true, Start: at(60), End: at(70)},
		{Client: 2, Op: Set, Key: "b", Value: "x", Done: false, Start: at(65)}, // no reply: may or may not apply
		{Client: oneFinal, Op: Get, Key: "a", Reply: bulk("12"), Done: true, Start: at(80), End: at(90)},
	}
	if res, _ := CheckLinearizable(good, time.Second); res != porcupine.Ok {
		t.Fatalf("linearizable history judged %v", res)
	}
	if n := LostWrites(good, oneFinal); n != 0 {
		t.Fatalf("%d lost writes in a good history", n)
	}
	lost := append(good[:2:2], Call{Client: 0, Op: Set, Key: "a", Value: "2", Reply: ok, Done: true, Start: at(40), End: at(50)},
		Call{Client: oneFinal, Op: Get, Key: "a", Reply: bulk("1"), Done: true, Start: at(60), End: at(70)})
	if res, _ := CheckLinearizable(lost, time.Second); res != porcupine.Illegal {
		t.Fatalf("a lost acknowledged write judged %v", res)
	}
	if n := LostWrites(lost, oneFinal); n != 1 {
		t.Fatalf("LostWrites = %d, want 1", n)
	}
	badLen := append(good[:2:2], Call{Client: 0, Op: Append, Key: "a", Value: "2", Reply: integer(3), Done: true, Start: at(40), End: at(50)})
	if res, _ := CheckLinearizable(badLen, time.Second); res != porcupine.Illegal {
		t.Fatalf("an APPEND replying the wrong length judged %v", res)
	}
}

// The client speaks RESP2: commands as arrays of bulk strings, and every
// reply type back.
func TestClient(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	go func() {
		r := bufio.NewReader(b)
		for _, reply := range []string{"+OK\r\n", "$5\r\nhe\r\no\r\n", "$-1\r\n", ":-7\r\n", "-ERR nope\r\n", "*2\r\n$1\r\nx\r\n*-1\r\n"} {
			cmd, err := Read(r)
			if err != nil || cmd.Kind != '*' {
				return
			}
			b.Write([]byte(reply))
		}
	}()
	c := NewClient(a)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got []string
	for i := 0; i < 6; i++ {
		v, err := c.Do(ctx, "SET", "k", "v\r\n")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, v.String())
	}
	want := `"OK" "he\r\no" (nil) -7 (error) ERR nope ["x" (nil)]`
	if strings.Join(got, " ") != want {
		t.Fatalf("replies %s, want %s", strings.Join(got, " "), want)
	}
	if got := string(Encode(nil, "GET", "k")); got != "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n" {
		t.Fatalf("Encode: %q", got)
	}
}

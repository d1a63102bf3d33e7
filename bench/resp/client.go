// Package resp is a client for the redis guest (guests/redis.c): RESP2
// over one TCP connection, one command at a time, no retries. A command
// whose reply does not come (the connection broke, or the deadline passed)
// may or may not have run; the connection is then useless, as its replies
// would no longer match its commands.
//
// It is written here rather than taken from a Redis client library: those
// pool connections and retry commands on network errors, which would send
// an APPEND twice and hide from the history that a call's outcome was
// unknown; a linearizability check needs every call as it was sent, once.
package resp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Value is one RESP2 reply.
type Value struct {
	// Kind is RESP's type byte: '+' simple string, '-' error, ':' integer,
	// '$' bulk string, '*' array.
	Kind  byte
	Str   string // a simple string's, an error's or a bulk string's text
	Int   int64
	Null  bool // a null bulk string or array
	Array []Value
}

func (v Value) String() string {
	switch {
	case v.Null:
		return "(nil)"
	case v.Kind == ':':
		return strconv.FormatInt(v.Int, 10)
	case v.Kind == '-':
		return "(error) " + v.Str
	case v.Kind == '*':
		s := make([]string, len(v.Array))
		for i, e := range v.Array {
			s[i] = e.String()
		}
		return "[" + strings.Join(s, " ") + "]"
	}
	return strconv.Quote(v.Str)
}

// Client is one connection to a RESP server. It is not safe for concurrent
// use.
type Client struct {
	conn net.Conn
	r    *bufio.Reader
	buf  []byte
}

// Dial connects to addr (host:port) within timeout.
func Dial(addr string, timeout time.Duration) (*Client, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	return NewClient(conn), nil
}

// NewClient is a client on conn.
func NewClient(conn net.Conn) *Client { return &Client{conn: conn, r: bufio.NewReader(conn)} }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Do sends one command and reads its reply, waiting at most until ctx's
// deadline. An error reply (-ERR ...) is a Value, not an error; an error
// means no reply came, and the client must not be used again.
func (c *Client) Do(ctx context.Context, args ...string) (Value, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Time{}
	}
	c.conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c.buf = Encode(c.buf[:0], args...)
	if _, err := c.conn.Write(c.buf); err != nil {
		return Value{}, err
	}
	return Read(c.r)
}

// Encode appends args as a RESP array of bulk strings (a command) to b.
func Encode(b []byte, args ...string) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	return b
}

// ErrProtocol: the server's reply is not RESP2.
var ErrProtocol = errors.New("resp: malformed reply")

// maxBulk bounds a bulk string or an array read (the guest's replies are
// far smaller).
const maxBulk = 64 << 20

// Read reads one reply.
func Read(r *bufio.Reader) (Value, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return Value{}, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return Value{}, fmt.Errorf("%w: %q", ErrProtocol, line)
	}
	v := Value{Kind: line[0]}
	text := line[1 : len(line)-2]
	switch v.Kind {
	case '+', '-':
		v.Str = text
		return v, nil
	case ':', '$', '*':
		n, err := strconv.ParseInt(text, 10, 64)
		if err != nil || v.Kind != ':' && (n < -1 || n > maxBulk) {
			return Value{}, fmt.Errorf("%w: %q", ErrProtocol, line)
		}
		switch {
		case v.Kind == ':':
			v.Int = n
		case n == -1:
			v.Null = true
		case v.Kind == '$':
			b := make([]byte, n+2)
			if _, err := io.ReadFull(r, b); err != nil {
				return Value{}, err
			}
			if b[n] != '\r' || b[n+1] != '\n' {
				return Value{}, fmt.Errorf("%w: a bulk string of %d bytes not ended by CRLF", ErrProtocol, n)
			}
			v.Str = string(b[:n])
		default:
			v.Array = make([]Value, 0, min(n, 1024))
			for i := int64(0); i < n; i++ {
				e, err := Read(r)
				if err != nil {
					return Value{}, err
				}
				v.Array = append(v.Array, e)
			}
		}
		return v, nil
	}
	return Value{}, fmt.Errorf("%w: %q", ErrProtocol, line)
}

// Package kv is a client for the kvstore guest (guests/README.md): one
// UDP datagram per request and per reply, retried with the same request id
// until answered, so that a retried request takes effect once.
package kv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// Op is a kvstore operation.
type Op string

const (
	Put    Op = "PUT"
	Get    Op = "GET"
	Append Op = "APPEND"
)

// Reply is the server's answer to one request.
type Reply struct {
	Status string // OK, NOTFOUND or ERR
	Value  string // the value of a GET, or the reason of an ERR
	// Tries is how many times the request was sent.
	Tries int
}

// ErrNoReply: every retry timed out.
var ErrNoReply = errors.New("kv: no reply")

// Client talks to one kvstore. It is not safe for concurrent use: a client
// id has one request in flight at a time, as kvstore's exactly-once table
// expects.
type Client struct {
	conn    *net.UDPConn
	id      uint64
	next    uint64
	Timeout time.Duration // per try; default 200 ms
	buf     []byte
}

// Dial makes a client with client id id for the kvstore at addr.
func Dial(addr string, id uint64) (*Client, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("kv: %w", err)
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return nil, fmt.Errorf("kv: %w", err)
	}
	return &Client{conn: conn, id: id, Timeout: 200 * time.Millisecond, buf: make([]byte, 2048)}, nil
}

// Close releases the socket.
func (c *Client) Close() error { return c.conn.Close() }

// Do sends one request and waits for its reply, resending the same request
// (same request id) after each Timeout until ctx ends.
func (c *Client) Do(ctx context.Context, op Op, key, value string) (Reply, error) {
	c.next++
	rid := c.next
	req := fmt.Sprintf("%d %d %s %s", c.id, rid, op, key)
	if op != Get {
		req += " " + value
	}
	prefix := fmt.Sprintf("%d %d ", c.id, rid)
	for tries := 1; ; tries++ {
		if ctx.Err() != nil {
			return Reply{Tries: tries - 1}, fmt.Errorf("%w after %d tries: %v", ErrNoReply, tries-1, ctx.Err())
		}
		if _, err := c.conn.Write([]byte(req)); err != nil && !isRefused(err) {
			return Reply{Tries: tries}, fmt.Errorf("kv: send: %w", err)
		}
		deadline := time.Now().Add(c.Timeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		c.conn.SetReadDeadline(deadline)
		for {
			n, err := c.conn.Read(c.buf)
			if err != nil {
				if isRefused(err) { // nobody bound yet (e.g. mid-failover): wait out the try
					time.Sleep(time.Until(deadline))
				}
				break // timeout: resend
			}
			msg := string(c.buf[:n])
			if !strings.HasPrefix(msg, prefix) {
				continue // a late reply to an earlier request
			}
			return parseReply(msg[len(prefix):], tries)
		}
	}
}

func isRefused(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && strings.Contains(op.Err.Error(), "refused")
}

func parseReply(s string, tries int) (Reply, error) {
	status, value, _ := strings.Cut(s, " ")
	switch status {
	case "OK", "NOTFOUND", "ERR":
		return Reply{Status: status, Value: value, Tries: tries}, nil
	}
	return Reply{Tries: tries}, fmt.Errorf("kv: malformed reply %q", s)
}

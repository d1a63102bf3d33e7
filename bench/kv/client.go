// Package kv is a client for the kvstore guest (guests/README.md): one
// UDP datagram per request and per reply, retried with the same request id
// until answered, so that a retried request takes effect once.
package kv

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
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

// ErrSessionExpired: the store forgot this client (more than its client
// table holds arrived since this client's previous request), so it could
// not tell whether the request already ran, and ran nothing. The outcome
// of the client's previous request is unknown too.
var ErrSessionExpired = errors.New("kv: the store forgot this client's session; the request did not run, and whether the previous one did is unknown")

// Client talks to one kvstore. It is not safe for concurrent use: a client
// id has one request in flight at a time, as kvstore's exactly-once table
// expects.
type Client struct {
	conn    *net.UDPConn
	id      uint64
	next    uint64        // the last request id used
	Timeout time.Duration // per try; default 200 ms
	buf     []byte
}

// Dial makes a client for the kvstore at addr, with a random 64-bit client
// id: two clients (two processes, two containers whose PIDs are both 1)
// never share a session, whose stored reply one of them would get for a
// request that never ran.
func Dial(addr string) (*Client, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("kv: %w", err)
	}
	var b [8]byte
	if _, err := crand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("kv: a client id: %w", err)
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return nil, fmt.Errorf("kv: %w", err)
	}
	return &Client{conn: conn, id: binary.LittleEndian.Uint64(b[:]), Timeout: 200 * time.Millisecond, buf: make([]byte, 2048)}, nil
}

// ID is the client id.
func (c *Client) ID() uint64 { return c.id }

// Close releases the socket.
func (c *Client) Close() error { return c.conn.Close() }

// Do sends one request and waits for its reply, resending the same request
// (same request id) after each Timeout until ctx ends.
//
// The first request of a client is a HELLO (request id 1), which opens its
// session without any other effect: a retry of a first request that did
// run, arriving after the store forgot the client, must not run again.
func (c *Client) Do(ctx context.Context, op Op, key, value string) (Reply, error) {
	if c.next == 0 {
		c.next = 1
		if r, err := c.send(ctx, fmt.Sprintf("%d 1 HELLO", c.id), 1); err != nil {
			c.next = 0
			return r, err
		} else if r.Status != "OK" {
			return r, fmt.Errorf("kv: HELLO refused: %s %s", r.Status, r.Value)
		}
	}
	c.next++
	req := fmt.Sprintf("%d %d %s %s", c.id, c.next, op, key)
	if op != Get {
		req += " " + value
	}
	r, err := c.send(ctx, req, c.next)
	if err == nil && r.Status == "ERR" && r.Value == "nosession" {
		c.next = 0 // the next request opens a new session
		return r, ErrSessionExpired
	}
	return r, err
}

// send sends the request req with request id rid until its reply arrives.
func (c *Client) send(ctx context.Context, req string, rid uint64) (Reply, error) {
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

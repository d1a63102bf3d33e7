package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/ftvm/ftvm/bench/kv"
)

func cmdKV(args []string) int {
	fs := newFlagSet("kv", "--addr ADDR (put K V | get K | append K V | bench [--clients N] [--duration D])")
	addr := fs.String("addr", "127.0.0.1:7000", "the kvstore's `HOST:PORT` (a hostfwd of ftvm --net user)")
	timeout := fs.Duration("timeout", 10*time.Second, "give up on an operation after this long")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return exitUsage
	}
	ctx, cancel := interruptContext()
	defer cancel()
	if rest[0] == "bench" {
		bfs := newFlagSet("kv bench", "[--clients N] [--duration D]")
		clients := bfs.Int("clients", 4, "concurrent clients")
		duration := bfs.Duration("duration", 10*time.Second, "how long to run")
		if err := bfs.Parse(rest[1:]); err != nil {
			return exitUsage
		}
		res, err := kv.Bench(ctx, *addr, *clients, *duration)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ftvm kv bench: %v\n", err)
			return exitFailed
		}
		fmt.Println(res)
		if res.Errors > 0 {
			return 1
		}
		return 0
	}
	var op kv.Op
	want := 3
	switch rest[0] {
	case "put":
		op = kv.Put
	case "append":
		op = kv.Append
	case "get":
		op, want = kv.Get, 2
	default:
		fs.Usage()
		return exitUsage
	}
	if len(rest) != want {
		fs.Usage()
		return exitUsage
	}
	value := ""
	if want == 3 {
		value = rest[2]
	}
	c, err := kv.Dial(*addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm kv: %v\n", err)
		return exitFailed
	}
	defer c.Close()
	opCtx, cancel2 := context.WithTimeout(ctx, *timeout)
	defer cancel2()
	r, err := c.Do(opCtx, op, rest[1], value)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm kv: %v\n", err)
		return 1
	}
	switch {
	case r.Status == "OK" && op == kv.Get:
		fmt.Println(r.Value)
	case r.Status == "OK":
	default:
		fmt.Fprintf(os.Stderr, "ftvm kv: %s %s\n", r.Status, r.Value)
		return 1
	}
	return 0
}

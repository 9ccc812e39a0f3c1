// Command imsidecar-pprof is imsidecar with net/http/pprof, for profiling
// the daemon under the load generator (docs/PERFORMANCE.md): the same
// sidecar.Run, plus a pprof listener on the loopback address in
// IMBENCH_PPROF_ADDR. It is a benchmarking tool, never installed; the
// product binary serves no pprof. IMBENCH_MEMPROFILERATE sets
// runtime.MemProfileRate (1 records every allocation: exact per-user
// figures for a heap profile, at a cost in speed).
//
//	go build -o /tmp/imsidecar-pprof ./sidecar/internal/loadtest/cmd/imsidecar-pprof
//	imbench -paths sidecar -imsidecar /tmp/imsidecar-pprof -sidecar-env IMBENCH_PPROF_ADDR=127.0.0.1:6060
//	go tool pprof -sample_index=inuse_space http://127.0.0.1:6060/debug/pprof/heap
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // the point of this command
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"

	"expressolivre.org/imsidecar/sidecar"
)

func main() {
	if v := os.Getenv("IMBENCH_MEMPROFILERATE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			fmt.Fprintln(os.Stderr, "imsidecar-pprof: IMBENCH_MEMPROFILERATE must be a positive integer")
			os.Exit(2)
		}
		runtime.MemProfileRate = n
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	if err := servePprof(ctx, os.Getenv("IMBENCH_PPROF_ADDR")); err != nil {
		fmt.Fprintln(os.Stderr, "imsidecar-pprof:", err)
		os.Exit(1)
	}
	err := sidecar.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "imsidecar:", err)
		os.Exit(1)
	}
}

// servePprof serves http.DefaultServeMux (where net/http/pprof registers)
// on a loopback addr until ctx ends; "" serves nothing.
func servePprof(ctx context.Context, addr string) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("IMBENCH_PPROF_ADDR %q is not a loopback host:port", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.DefaultServeMux}
	go func() { <-ctx.Done(); srv.Close() }()
	go srv.Serve(l)
	return nil
}

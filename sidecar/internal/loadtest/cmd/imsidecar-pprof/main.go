// Command imsidecar-pprof is imsidecar with net/http/pprof, for profiling
// the daemon under the load generator (docs/PERFORMANCE.md): the same
// sidecar.Run, plus a pprof listener on the loopback address in
// IMBENCH_PPROF_ADDR. It is a benchmarking tool, never installed; the
// product binary serves no pprof. IMBENCH_MEMPROFILERATE sets
// runtime.MemProfileRate (1 records every allocation: exact per-user
// figures for a heap profile, at a cost in speed). IMBENCH_PPROF_PORT,
// instead of IMBENCH_PPROF_ADDR, serves pprof on that port of the host of
// the daemon's own --listen flag: the cluster paths start every node with
// one environment, each on its own loopback address (127.0.0.11, .12, …).
//
//	go build -o /tmp/imsidecar-pprof ./sidecar/internal/loadtest/cmd/imsidecar-pprof
//	imbench -paths sidecar -imsidecar /tmp/imsidecar-pprof -sidecar-env IMBENCH_PPROF_ADDR=127.0.0.1:6060
//	go tool pprof -sample_index=inuse_space http://127.0.0.1:6060/debug/pprof/heap
//	imbench -paths sidecar,sidecar-cluster -imsidecar /tmp/imsidecar-pprof -sidecar-env IMBENCH_PPROF_PORT=6060
//	go tool pprof -sample_index=inuse_space http://127.0.0.11:6060/debug/pprof/heap
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
	"strings"
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
	addr := os.Getenv("IMBENCH_PPROF_ADDR")
	if port := os.Getenv("IMBENCH_PPROF_PORT"); addr == "" && port != "" {
		addr = net.JoinHostPort(listenHost(os.Args[1:]), port)
	}
	if err := servePprof(ctx, addr); err != nil {
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

// listenHost is the host of the --listen flag in args ("" if none, which
// servePprof refuses).
func listenHost(args []string) string {
	for i, a := range args {
		v, ok := strings.CutPrefix(strings.TrimLeft(a, "-"), "listen=")
		if !ok && (a == "--listen" || a == "-listen") && i+1 < len(args) {
			v, ok = args[i+1], true
		}
		if ok {
			host, _, _ := net.SplitHostPort(v)
			return host
		}
	}
	return ""
}

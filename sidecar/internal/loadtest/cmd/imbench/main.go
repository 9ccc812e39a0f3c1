// Command imbench runs the load generator of package loadtest: the sidecar
// path against Prosody's BOSH and WebSocket and a bare XMPP client, on one
// private Prosody on loopback. It prints a markdown table and writes the
// same figures as JSON (default bench/results.json).
//
//	go run ./sidecar/internal/loadtest/cmd/imbench -users 1000 -rate 500
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"expressolivre.org/imsidecar/sidecar/internal/loadtest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "imbench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		cfg     loadtest.Config
		paths   = flag.String("paths", "bare,sidecar,sidecar-tls,bosh,websocket", "paths to measure, in order: bare, sidecar, bosh, websocket, sidecar-bosh, sidecar-websocket (browser clients through imsidecar), sidecar-tls (the sidecar path with STARTTLS to a Prosody with a test CA's certificate), sidecar-cluster (the sidecar path through -cluster-nodes imsidecar nodes in cluster mode sharing a Redis with AOF, sticky traffic), sidecar-cluster-rr (the same, round robin)")
		sweep   = flag.String("sweep", joinRates(loadtest.DefaultSweepRates), "knee ladder: comma-separated rates (msg/s) run after the target phase, each for -sweep-time, up to the first that does not hold (p99 > 50 ms, a loss, or under 90% of the rate delivered); empty: no knee")
		out     = flag.String("out", "bench/results.json", "JSON output file")
		profile = flag.String("profile", "quick", "name recorded in the results")
		keep    = flag.Bool("keep", false, "keep the scratch directory (logs) after the run")
		env     = flag.String("sidecar-env", "", "comma-separated NAME=value pairs for imsidecar, e.g. GODEBUG=gctrace=1")
	)
	flag.IntVar(&cfg.Users, "users", 1000, "simulated users online at once")
	flag.Float64Var(&cfg.Rate, "rate", 500, "target messages per second")
	flag.DurationVar(&cfg.Duration, "duration", 10*time.Second, "message phase at -rate")
	flag.DurationVar(&cfg.SweepTime, "sweep-time", 3*time.Second, "each knee step")
	flag.DurationVar(&cfg.SweepSettle, "sweep-settle", 500*time.Millisecond, "least pause after a phase has drained before the next knee step; the step also waits until Prosody (and imsidecar) are idle")
	flag.Func("prosody-set", "extra line for Prosody's global config, e.g. 'network_settings = { nagle = false }' (repeatable)", func(s string) error {
		cfg.ProsodyConfig = append(cfg.ProsodyConfig, s)
		return nil
	})
	flag.StringVar(&cfg.LatencyDir, "latency-dir", "", "write every message's send/receive times per path and phase as CSV into this directory")
	flag.StringVar(&cfg.LagDir, "prosody-lag-dir", "", "load a probe into Prosody that logs its event-loop stalls and Lua GC cycle ends into this directory")
	flag.StringVar(&cfg.EventsDir, "prosody-events-dir", "", "load a probe into Prosody that accounts its CPU per event (stanza) name, and write each path's login-storm share per login into this directory")
	flag.Func("prosody-cpus", "comma-separated CPU numbers to pin each Prosody to, the generator and imsidecar going to the others (e.g. 1 on a 2-core machine: Prosody gets a core of its own, as on a host of its own)", func(s string) error {
		for f := range strings.SplitSeq(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return fmt.Errorf("bad CPU %q", f)
			}
			cfg.ProsodyCPUs = append(cfg.ProsodyCPUs, n)
		}
		return nil
	})
	flag.StringVar(&cfg.TraceDir, "trace-dir", "", "write a runtime/trace of the generator during each path's target phase into this directory")
	flag.IntVar(&cfg.Concurrency, "concurrency", 100, "logins in flight during the login storm")
	flag.IntVar(&cfg.SourceAddrs, "source-addrs", 0, "127.0.0.x client source addresses (0: users/2000+1)")
	flag.StringVar(&cfg.Transport, "transport", loadtest.TransportHTTP1, "sidecar path's HTTP API: http1, or h2c (HTTP/2 without TLS: pending polls share a few connections)")
	flag.IntVar(&cfg.ClusterNodes, "cluster-nodes", 3, "imsidecar nodes of the cluster paths")
	flag.DurationVar(&cfg.ClusterLeaseTTL, "cluster-lease-ttl", 0, "the cluster paths' --cluster-lease-ttl (0: imsidecar's default)")
	flag.BoolVar(&cfg.MemSlope, "mem-slope", false, "log the sidecar paths' users in as two halves and report imsidecar's memory growth between them per user added (KB/user slope: the per-user cost without each process's fixed one-offs), besides the usual figure; login rate and CPU then include a 2 s pause")
	flag.IntVar(&cfg.PHPSample, "php-sample", 20, "sessions written by the real PHP CLI (the rest by the Go generator)")
	flag.StringVar(&cfg.SidecarBin, "imsidecar", "", "imsidecar binary (default: go build ./sidecar/cmd/imsidecar)")
	flag.DurationVar(&cfg.Timeout, "timeout", 30*time.Minute, "bound on the whole run")
	flag.Parse()
	cfg.Paths = strings.Split(*paths, ",")
	if *env != "" {
		cfg.SidecarEnv = strings.Split(*env, ",")
	}
	for _, s := range strings.Split(*sweep, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v <= 0 {
			return fmt.Errorf("-sweep: bad rate %q", s)
		}
		cfg.SweepRates = append(cfg.SweepRates, v)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))

	dir, err := os.MkdirTemp("", "imbench-")
	if err != nil {
		return err
	}
	if *keep {
		cfg.Logger.Info("scratch directory kept", "dir", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	cfg.Dir = dir
	if cfg.SidecarBin == "" {
		root, err := moduleRoot()
		if err != nil {
			return err
		}
		cfg.SidecarBin = filepath.Join(dir, "imsidecar")
		if err := loadtest.BuildSidecar(ctx, root, cfg.SidecarBin); err != nil {
			return err
		}
	}
	m := loadtest.ThisMachine()
	results, err := loadtest.Run(ctx, cfg)
	if err != nil {
		return err
	}
	rep := loadtest.NewReport(*profile, m, cfg, results)
	rep.Markdown(os.Stdout)
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	return rep.WriteJSON(*out)
}

func joinRates(rates []float64) string {
	s := make([]string, len(rates))
	for i, r := range rates {
		s[i] = strconv.FormatFloat(r, 'f', -1, 64)
	}
	return strings.Join(s, ",")
}

// moduleRoot walks up from the working directory to go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory; pass -imsidecar")
		}
		dir = parent
	}
}

package xmppconn

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// attemptLog records when reconnection attempts failed, in bubble time.
type attemptLog struct {
	mu    sync.Mutex
	times []time.Time
}

func (a *attemptLog) Enabled(context.Context, slog.Level) bool { return true }
func (a *attemptLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "xmppconn: reconnect failed" {
		a.mu.Lock()
		a.times = append(a.times, time.Now())
		a.mu.Unlock()
	}
	return nil
}
func (a *attemptLog) WithAttrs([]slog.Attr) slog.Handler { return a }
func (a *attemptLog) WithGroup(string) slog.Handler      { return a }

// TestReconnectBackoff: retries against a refusing address follow a
// capped, jittered exponential schedule and stop at Close.
func TestReconnectBackoff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there any more: every dial is refused at once

	synctest.Test(t, func(t *testing.T) {
		log := &attemptLog{}
		cfg, err := Config{
			Addr: addr, Domain: "example.test", TLS: TLSNone, User: "alice", Password: "pw",
			Reconnect: true, MinBackoff: time.Second, MaxBackoff: 8 * time.Second,
			Logger: slog.New(log),
		}.normalize()
		if err != nil {
			t.Fatal(err)
		}
		c := &Conn{cfg: cfg, log: cfg.Logger, pending: map[string]*iqWait{}}
		c.closeCtx, c.closeStart = context.WithCancel(context.Background())
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			backoff := cfg.MinBackoff
			_, _, err := c.reconnect(&backoff)
			done <- err
		}()
		time.Sleep(60 * time.Second)
		c.closeStart()
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Fatalf("reconnect after Close: %v", err)
		}
		log.mu.Lock()
		defer log.mu.Unlock()
		// Nominal waits 0.25s, then 1, 2, 4, 8, 8...; each jittered to [w/2, w].
		nominal := []time.Duration{250 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second}
		prev := start
		for i, at := range log.times {
			w := nominal[min(i, len(nominal)-1)]
			if d := at.Sub(prev); d < w/2 || d > w {
				t.Errorf("attempt %d after %v, want within [%v, %v]", i+1, d, w/2, w)
			}
			prev = at
		}
		// In 60s: at least 0.125+0.5+1+2+4 then one per ≤8s.
		if n := len(log.times); n < 8 || n > 16 {
			t.Errorf("%d attempts in 60s", n)
		}
	})
}

package xmppconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// attemptLog records when reconnection attempts failed, in bubble time,
// with their error and the next wait they logged.
type attemptLog struct {
	mu    sync.Mutex
	times []time.Time
	errs  []error
	waits []time.Duration
}

func (a *attemptLog) Enabled(context.Context, slog.Level) bool { return true }
func (a *attemptLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "xmppconn: reconnect failed" {
		var err error
		var wait time.Duration
		r.Attrs(func(at slog.Attr) bool {
			switch at.Key {
			case "err":
				err, _ = at.Value.Any().(error)
			case "next_wait":
				wait = at.Value.Duration()
			}
			return true
		})
		a.mu.Lock()
		a.times = append(a.times, time.Now())
		a.errs = append(a.errs, err)
		a.waits = append(a.waits, wait)
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
		c, start, done := startReconnect(cfg)
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

// refusals is a gate that refuses the attempts whose number (from 1) it
// lists and admits the others; as a ConnectGate (connect), an AuthGate
// (auth) or a BeforeReconnect answering "not now" (notNow).
type refusals struct {
	mu     sync.Mutex
	n      int
	refuse map[int]bool
}

var errGateRefused = errors.New("refused by the test's gate")

func (g *refusals) ask() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n++
	if g.refuse[g.n] {
		return errGateRefused
	}
	return nil
}

func (g *refusals) asked() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

type connectGate struct{ *refusals }

func (g connectGate) Acquire(context.Context) (func(), error) {
	if err := g.ask(); err != nil {
		return nil, err
	}
	return func() {}, nil
}

type authGate struct{ *refusals }

func (g authGate) Acquire(context.Context, bool) (func(AuthResult), error) {
	if err := g.ask(); err != nil {
		return nil, err
	}
	return func(AuthResult) {}, nil
}

func (g *refusals) notNow(context.Context) error {
	if err := g.ask(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotAdmitted, err)
	}
	return nil
}

// TestReconnectBackoffGateRefused: an attempt refused before its dial, by
// the ConnectGate or by BeforeReconnect's "not now" (an error wrapping
// ErrNotAdmitted, which no longer stops the Conn), keeps the backoff
// where it is; one the AuthGate refused, once the stream was up, grows it
// as the real failures around it do (a refused dial, the server's
// temporary-auth-failure). The next_wait each attempt logs is exact; the
// waits themselves are jittered within [w/2, w] of it. A refused AuthGate
// attempt sends no credentials; an attempt BeforeReconnect put off does
// not reach the ConnectGate, asked before the dial.
func TestReconnectBackoffGateRefused(t *testing.T) {
	const s = time.Second
	for _, tc := range []struct {
		name   string
		gate   string // "connect", "notNow": the server's port is closed; "auth": it answers temporary-auth-failure
		refuse []int  // the attempts the gate refuses, from 1
		want   []time.Duration
	}{
		{"connect gate, no refusal", "connect", nil, []time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 8 * s}},
		{"connect gate refuses the first 4", "connect", []int{1, 2, 3, 4}, []time.Duration{1 * s, 1 * s, 1 * s, 1 * s, 2 * s, 4 * s, 8 * s, 8 * s}},
		{"connect gate refuses 3 after 2 failures", "connect", []int{3, 4, 5}, []time.Duration{1 * s, 2 * s, 2 * s, 2 * s, 2 * s, 4 * s, 8 * s, 8 * s}},
		{"connect gate refuses between failures", "connect", []int{2, 4}, []time.Duration{1 * s, 1 * s, 2 * s, 2 * s, 4 * s, 8 * s}},
		{"connect gate refuses at the cap", "connect", []int{5, 6}, []time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 8 * s, 8 * s, 8 * s}},
		{"not now, never", "notNow", nil, []time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 8 * s}},
		{"not now for the first 4", "notNow", []int{1, 2, 3, 4}, []time.Duration{1 * s, 1 * s, 1 * s, 1 * s, 2 * s, 4 * s, 8 * s, 8 * s}},
		{"not now 3 times after 2 failures", "notNow", []int{3, 4, 5}, []time.Duration{1 * s, 2 * s, 2 * s, 2 * s, 2 * s, 4 * s, 8 * s, 8 * s}},
		{"auth gate, no refusal", "auth", nil, []time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 8 * s}},
		{"auth gate refuses the first 4", "auth", []int{1, 2, 3, 4}, []time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 8 * s}},
		{"auth gate refuses 3 after 2 failures", "auth", []int{3, 4, 5}, []time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 8 * s}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &refusals{refuse: map[int]bool{}}
			for _, n := range tc.refuse {
				g.refuse[n] = true
			}
			var srv *xmppconntest.FakeServer
			addr := ""
			if tc.gate == "auth" {
				srv = xmppconntest.StartFakeServer(t, xmppconntest.FakeOptions{NoStartTLS: true, AuthFailure: "temporary-auth-failure"})
				addr = srv.Addr
			} else {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				addr = ln.Addr().String()
				ln.Close() // every dial is refused at once
			}
			synctest.Test(t, func(t *testing.T) {
				log := &attemptLog{}
				cfg := Config{
					Addr: addr, Domain: xmppconntest.DefaultDomain, TLS: TLSNone, User: "alice", Password: "secret",
					Reconnect: true, MinBackoff: s, MaxBackoff: 8 * s, Logger: slog.New(log),
				}
				dials := &refusals{} // a ConnectGate admitting every attempt: it counts the dials
				switch tc.gate {
				case "auth":
					cfg.AuthGate = authGate{g}
				case "connect":
					cfg.ConnectGate = connectGate{g}
				case "notNow":
					cfg.BeforeReconnect = g.notNow
					cfg.ConnectGate = connectGate{dials}
				}
				cfg, err := cfg.normalize()
				if err != nil {
					t.Fatal(err)
				}
				c, start, done := startReconnect(cfg)
				time.Sleep(60 * s)
				c.closeStart()
				if err := <-done; !errors.Is(err, ErrClosed) {
					t.Fatalf("reconnect after Close: %v", err)
				}
				log.mu.Lock()
				defer log.mu.Unlock()
				if len(log.waits) < len(tc.want) {
					t.Fatalf("%d attempts in 60 s, want at least %d", len(log.waits), len(tc.want))
				}
				if got := log.waits[:len(tc.want)]; fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Errorf("next waits %v, want %v", got, tc.want)
				}
				prev, w, admitted := start, cfg.MinBackoff/4, 0
				for i, at := range log.times {
					if d := at.Sub(prev); d < w/2 || d > w {
						t.Errorf("attempt %d after %v, want within [%v, %v]", i+1, d, w/2, w)
					}
					prev, w = at, log.waits[i]
					refused := errors.Is(log.errs[i], ErrNotAdmitted)
					if refused != g.refuse[i+1] || refused != errors.Is(log.errs[i], errGateRefused) {
						t.Errorf("attempt %d failed with %v; refused by the gate: %v", i+1, log.errs[i], g.refuse[i+1])
					}
					if !refused {
						admitted++
					}
				}
				if srv != nil && srv.AuthAttempts() != admitted {
					t.Errorf("%d SASL exchanges at the server, want %d: one per admitted attempt", srv.AuthAttempts(), admitted)
				}
				if tc.gate == "notNow" && dials.asked() != admitted {
					t.Errorf("%d attempts reached the dial, want %d: one per attempt BeforeReconnect let go", dials.asked(), admitted)
				}
			})
		})
	}
}

// startReconnect runs the reconnection loop of a Conn of cfg from
// MinBackoff, as after a broken stream, in its own goroutine; done gets
// its error.
func startReconnect(cfg Config) (c *Conn, start time.Time, done chan error) {
	c = &Conn{cfg: cfg, log: cfg.Logger, pending: map[string]*iqWait{}}
	c.closeCtx, c.closeStart = context.WithCancel(context.Background())
	done = make(chan error, 1)
	go func() {
		backoff := cfg.MinBackoff
		_, _, err := c.reconnect(&backoff)
		done <- err
	}()
	return c, time.Now(), done
}

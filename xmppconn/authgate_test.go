package xmppconn_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// gateLog is an AuthGate that records every call and can refuse.
type gateLog struct {
	mu      sync.Mutex
	calls   []string // "acquire known=B", "release R"
	refuse  error
	changed chan struct{}
}

var errGateClosed = errors.New("gate closed for the test")

func newGateLog() *gateLog { return &gateLog{changed: make(chan struct{}, 100)} }

func (g *gateLog) Acquire(_ context.Context, knownGood bool) (func(xmppconn.AuthResult), error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, fmt.Sprintf("acquire known=%v", knownGood))
	g.changed <- struct{}{}
	if g.refuse != nil {
		return nil, g.refuse
	}
	released := false
	return func(r xmppconn.AuthResult) {
		g.mu.Lock()
		defer g.mu.Unlock()
		if released {
			g.calls = append(g.calls, "released twice")
		}
		released = true
		g.calls = append(g.calls, "release "+r.String())
		g.changed <- struct{}{}
	}, nil
}

func (g *gateLog) setRefuse(err error) {
	g.mu.Lock()
	g.refuse = err
	g.mu.Unlock()
}

func (g *gateLog) log() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.calls...)
}

// waitFor waits until the gate's calls satisfy cond.
func (g *gateLog) waitFor(t *testing.T, what string, cond func([]string) bool) []string {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		if l := g.log(); cond(l) {
			return l
		}
		select {
		case <-g.changed:
		case <-deadline:
			t.Fatalf("gate calls %q, want %s", g.log(), what)
		}
	}
}

func equal(a, b []string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

func lastIs(want string) func([]string) bool {
	return func(l []string) bool { return len(l) > 2 && l[len(l)-1] == want }
}

// pairs checks that calls are acquire/release pairs, each acquire with
// known, each release one of outcomes.
func pairs(t *testing.T, calls []string, known bool, outcomes ...string) {
	t.Helper()
	if len(calls)%2 != 0 {
		t.Fatalf("gate calls %q: not acquire/release pairs", calls)
	}
	for i := 0; i < len(calls); i += 2 {
		ok := false
		for _, o := range outcomes {
			ok = ok || calls[i+1] == "release "+o
		}
		if calls[i] != fmt.Sprintf("acquire known=%v", known) || !ok {
			t.Fatalf("gate calls %q: pair %d is %q %q", calls, i/2, calls[i], calls[i+1])
		}
	}
}

// TestAuthGate: the gate admits every SASL exchange against a real
// Prosody, the first and each reconnection (known good), and learns each
// outcome right after it; an attempt whose dial fails does not ask it; a refusal sends nothing to the server, makes
// Dial fail with the gate's error (and ErrNotAdmitted), and makes a
// reconnection retry (not give up) until the gate admits it.
func TestAuthGate(t *testing.T) {
	b, s := prosodyBackend(t, xmppconntest.Options{})
	b.register(t, "alice", pw)
	b.register(t, "bob", pw)
	g := newGateLog()
	c := connect(t, b, "alice", pw, "web", func(cfg *xmppconn.Config) { cfg.Reconnect = true; cfg.AuthGate = g })
	if l := g.log(); !equal(l, []string{"acquire known=false", "release succeeded"}) {
		t.Fatalf("Dial: gate calls %q", l)
	}

	// A reconnection asks the gate, as credentials known to work.
	b.restart(t)
	l := g.waitFor(t, "a successful reconnection", lastIs("release succeeded"))
	pairs(t, l[2:], true, "aborted", "succeeded") // aborted: the stream closed before the verdict
	c.rec.waitFor(t, 20*time.Second, "online again", func(ev xmppconn.Event) bool {
		sc, ok := ev.(*xmppconn.StateChange)
		return ok && sc.State == xmppconn.StateOnline
	})

	// A refused reconnection is retried, without a word to the server.
	g.setRefuse(errGateClosed)
	fails, oks := s.AuthFailures("alice"), s.AuthSuccesses("alice")
	b.restart(t)
	n := len(g.log())
	g.waitFor(t, "two refusals", func(l []string) bool { return len(l) >= n+2 })
	if s.AuthFailures("alice") != fails || s.AuthSuccesses("alice") != oks {
		t.Fatal("credentials were sent to the server while the gate refused")
	}
	if st := c.State(); st != xmppconn.StateReconnecting {
		t.Fatalf("State() = %s while the gate refuses, want reconnecting", st)
	}
	g.setRefuse(nil)
	g.waitFor(t, "a reconnection admitted", func(l []string) bool { return len(l) > n+2 && l[len(l)-1] == "release succeeded" })
	for deadline := time.Now().Add(10 * time.Second); c.State() != xmppconn.StateOnline; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("State() = %s after the gate admitted the reconnection", c.State())
		}
	}

	// The password changes on the server: the reconnection fails once,
	// and the gate is told so.
	s.RegisterMany(t, map[string]string{"alice": "changed-elsewhere"})
	n = len(g.log())
	b.restart(t)
	if err := waitDone(t, c.Conn, 20*time.Second); !errors.Is(err, xmppconn.ErrAuth) {
		t.Fatalf("Err() = %v, want ErrAuth", err)
	}
	l = g.log()[n:]
	pairs(t, l, true, "aborted", "failed")
	if l[len(l)-1] != "release failed" {
		t.Fatalf("password changed: gate calls %q, want the last a failure", l)
	}

	// A refused Dial fails with the gate's error; nothing reaches the server.
	g2 := newGateLog()
	g2.setRefuse(errGateClosed)
	cfg := baseConfig(t, b, "bob", pw, "web", newRecorder())
	cfg.AuthGate = g2
	_, err := xmppconn.Dial(ctxT(t), cfg)
	if !errors.Is(err, errGateClosed) || !errors.Is(err, xmppconn.ErrNotAdmitted) || errors.Is(err, xmppconn.ErrAuth) {
		t.Fatalf("Dial with a refusing gate: %v, want the gate's error and ErrNotAdmitted", err)
	}
	if want := "xmppconn: authentication not admitted: " + errGateClosed.Error(); err.Error() != want {
		t.Fatalf("Dial with a refusing gate: %q, want %q", err, want)
	}
	if s.AuthFailures("bob")+s.AuthSuccesses("bob") != 0 {
		t.Fatal("bob's credentials reached the server through a refusing gate")
	}
	// A wrong password: the gate learns of the failure.
	g3 := newGateLog()
	cfg.Password, cfg.AuthGate = "wrong", g3
	if _, err := xmppconn.Dial(ctxT(t), cfg); !errors.Is(err, xmppconn.ErrAuth) {
		t.Fatalf("Dial with a wrong password: %v", err)
	}
	if l := g3.log(); !equal(l, []string{"acquire known=false", "release failed"}) {
		t.Fatalf("wrong password: gate calls %q", l)
	}
	// The server is down: the gate is not asked, as no SASL exchange
	// can start.
	b.kill(t)
	g4 := newGateLog()
	cfg.Password, cfg.AuthGate = pw, g4
	if _, err := xmppconn.Dial(ctxT(t), cfg); err == nil {
		t.Fatal("Dial succeeded with the server down")
	}
	if l := g4.log(); len(l) != 0 {
		t.Fatalf("server down: gate calls %q, want none", l)
	}
}

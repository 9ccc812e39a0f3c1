package sidecar

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// acceptCounter stands in for the Jabber server: /readyz's check of it
// is a TCP connection and nothing more, so a listener is the real thing.
type acceptCounter struct {
	ln       net.Listener
	accepted chan string // the peers' addresses, in the order accepted
	done     chan struct{}
}

func listenCounting(t *testing.T, addr string) *acceptCounter {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	a := &acceptCounter{ln: ln, accepted: make(chan string, 1<<14), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case a.accepted <- c.RemoteAddr().String():
			default:
				t.Error("acceptCounter: more connections than it can count")
			}
			c.Close()
		}
	}()
	t.Cleanup(a.close)
	return a
}

func (a *acceptCounter) close() {
	a.ln.Close()
	<-a.done
}

// dials counts the connections accepted since its last call. The accept
// queue is first in, first out: it connects once itself and counts what
// was accepted before its own connection.
func (a *acceptCounter) dials(t *testing.T) int {
	t.Helper()
	c, err := net.Dial("tcp", a.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	marker, n := c.LocalAddr().String(), 0
	timeout := time.After(5 * time.Second)
	for {
		select {
		case addr := <-a.accepted:
			if addr == marker {
				return n
			}
			n++
		case <-timeout:
			t.Fatalf("the listener did not accept the counting connection (%d before it)", n)
		}
	}
}

// stepClock is readiness's clock in the tests: it moves only when told,
// or by step at every reading.
type stepClock struct {
	mu   sync.Mutex
	t    time.Time
	step time.Duration
}

func (c *stepClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.t
	c.t = c.t.Add(c.step)
	return t
}

func (c *stepClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// readyzFixture is the ops endpoints over the API harness, with a
// counting listener for the Jabber server and readiness on a clock of
// the test's.
type readyzFixture struct {
	h     *harness
	o     *ops
	srv   http.Handler
	xmpp  *acceptCounter
	clock *stepClock
}

func newReadyzFixture(t *testing.T) *readyzFixture {
	t.Helper()
	h := newHarness(t, "")
	xmpp := listenCounting(t, "127.0.0.1:0")
	cfg := *h.api.cfg
	cfg.XMPPAddr = xmpp.ln.Addr().String()
	clock := &stepClock{t: time.Now()}
	o := &ops{cfg: &cfg, reg: h.reg, reader: h.reader, metrics: h.api.metrics, api: h.api}
	o.readiness.now = clock.now
	return &readyzFixture{h: h, o: o, srv: o.routes(), xmpp: xmpp, clock: clock}
}

// holdStore makes the store's check wait until release is called, or
// its context ends. Call it in the bubble, which its channel belongs to.
func (f *readyzFixture) holdStore() (release func()) {
	ch := make(chan struct{})
	f.h.reader.mu.Lock()
	defer f.h.reader.mu.Unlock()
	f.h.reader.readyHook = func(ctx context.Context) error {
		select {
		case <-ch:
		case <-ctx.Done():
		}
		return ctx.Err() // the check's context cut before release: a failed verdict
	}
	return func() { close(ch) }
}

type readyzAnswer struct {
	Status  string            `json:"status"`
	Reasons map[string]string `json:"reasons"`
}

// probe asks /readyz once with ctx and decodes the answer.
func (f *readyzFixture) probe(t *testing.T, ctx context.Context) (int, readyzAnswer) {
	t.Helper()
	rec := httptest.NewRecorder()
	f.srv.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil).WithContext(ctx))
	var a readyzAnswer
	if rec.Body.Len() == 0 && ctx.Err() != nil {
		return 0, a // hung up: nobody to answer
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
		t.Errorf("/readyz answered %d %q: %v", rec.Code, rec.Body, err)
	}
	return rec.Code, a
}

// flood asks /readyz n times at once and wants 200 from each.
func (f *readyzFixture) flood(t *testing.T, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if code, a := f.probe(t, context.Background()); code != http.StatusOK || a.Status != "ready" {
				t.Errorf("/readyz in the flood: %d %+v", code, a)
			}
		})
	}
	wg.Wait()
}

// TestReadyzFloodChecksOnce: the probes in flight together, and those
// within readyReuse of a verdict, cost the Jabber server one connection
// and the session store one check, however many. At 2,000 users the
// probes' connections
// (every 50 ms from a start-up script, every few seconds from each
// balancer) joined a full accept queue, and a restarted node was never
// ready. The old handler dialled once per probe: 500 and 1,000 here.
func TestReadyzFloodChecksOnce(t *testing.T) {
	const n = 500
	t.Run("coalesced", func(t *testing.T) {
		// Every verdict is old at once (the clock jumps a window at each
		// reading), so only the sharing of the check in flight holds the
		// count: the store's check is held until all n probes wait.
		f := newReadyzFixture(t)
		f.clock.step = readyReuse
		synctest.Test(t, func(t *testing.T) {
			release := f.holdStore()
			var wg sync.WaitGroup
			wg.Go(func() { f.flood(t, n) })
			synctest.Wait() // one probe in the store's check, the others waiting
			release()
			wg.Wait()
		})
		if dials, checks := f.xmpp.dials(t), f.h.reader.readies.Load(); dials != 1 || checks != 1 {
			t.Fatalf("%d probes in flight together: %d connections to the Jabber server and %d store checks, want 1 and 1", n, dials, checks)
		}
	})
	t.Run("reused", func(t *testing.T) {
		f := newReadyzFixture(t)
		f.flood(t, n)
		f.flood(t, n) // a burst within the window
		if dials, checks := f.xmpp.dials(t), f.h.reader.readies.Load(); dials != 1 || checks != 1 {
			t.Fatalf("%d probes within readyReuse: %d connections and %d store checks, want 1 and 1", 2*n, dials, checks)
		}
		f.clock.advance(readyReuse)
		f.flood(t, n)
		if dials, checks := f.xmpp.dials(t), f.h.reader.readies.Load(); dials != 1 || checks != 2 {
			t.Fatalf("%d probes a window later: %d connections and %d store checks in all, want 1 more of each", n, dials, checks)
		}
	})
}

// TestReadyzVerdictChanges: a verdict, failed or not, answers for
// readyReuse, and the next check after it sees the change.
func TestReadyzVerdictChanges(t *testing.T) {
	f := newReadyzFixture(t)
	addr := f.xmpp.ln.Addr().String()
	steps := []struct {
		name   string
		do     func()
		code   int
		reason string // the one reason of a 503
	}{
		{"up", func() {}, 200, ""},
		{"the Jabber server gone, within the window", func() { f.xmpp.close() }, 200, ""},
		{"the Jabber server gone, a window later", func() { f.clock.advance(readyReuse) }, 503, "xmpp"},
		{"the Jabber server back, within the window", func() { f.xmpp = listenCounting(t, addr) }, 503, "xmpp"},
		{"the Jabber server back, a window later", func() { f.clock.advance(readyReuse) }, 200, ""},
		{"the store down, within the window", func() { f.h.reader.mu.Lock(); f.h.reader.down = true; f.h.reader.mu.Unlock() }, 200, ""},
		{"the store down, a window later", func() { f.clock.advance(readyReuse) }, 503, "session_store"},
		{"the store back, a window later", func() {
			f.h.reader.mu.Lock()
			f.h.reader.down = false
			f.h.reader.mu.Unlock()
			f.clock.advance(readyReuse)
		}, 200, ""},
	}
	for _, s := range steps {
		s.do()
		code, a := f.probe(t, context.Background())
		want := readyzAnswer{Status: "ready"}
		if s.code != 200 {
			want.Status = "unavailable"
		}
		if _, ok := a.Reasons[s.reason]; code != s.code || a.Status != want.Status || (s.reason != "" && (!ok || len(a.Reasons) != 1)) || (s.reason == "" && a.Reasons != nil) {
			t.Fatalf("%s: %d %+v, want %d %s %q", s.name, code, a, s.code, want.Status, s.reason)
		}
	}
}

// TestReadyzDrainingAtOnce: the shutdown reason is never a reused one.
func TestReadyzDrainingAtOnce(t *testing.T) {
	f := newReadyzFixture(t)
	if code, _ := f.probe(t, context.Background()); code != 200 {
		t.Fatalf("before the shutdown: %d", code)
	}
	f.h.api.draining.Store(true)
	code, a := f.probe(t, context.Background())
	if code != 503 || a.Status != "unavailable" || a.Reasons["shutdown"] != "shutting down" || len(a.Reasons) != 1 {
		t.Fatalf("while draining, within the window: %d %+v, want 503 with the shutdown reason alone", code, a)
	}
	f.h.api.draining.Store(false)
	if code, a := f.probe(t, context.Background()); code != 200 || a.Reasons != nil {
		t.Fatalf("after draining, within the window: %d %+v", code, a)
	}
	if dials, checks := f.xmpp.dials(t), f.h.reader.readies.Load(); dials != 1 || checks != 1 {
		t.Fatalf("three probes within the window: %d connections and %d store checks, want 1 and 1", dials, checks)
	}
}

// TestReadyzProbeHangsUp: a probe that hangs up neither cuts the check
// others wait for (it runs under a context of its own) nor waits for it
// itself. The bubble's end shows every probe's goroutine ended.
func TestReadyzProbeHangsUp(t *testing.T) {
	f := newReadyzFixture(t)
	type answer struct {
		code int
		a    readyzAnswer
	}
	synctest.Test(t, func(t *testing.T) {
		release := f.holdStore()
		probe := func(ctx context.Context) chan answer {
			out := make(chan answer, 1)
			go func() {
				code, a := f.probe(t, ctx)
				out <- answer{code, a}
			}()
			return out
		}
		// The first probe runs the check, and hangs up in the middle of it.
		ctxA, hangUpA := context.WithCancel(t.Context())
		first := probe(ctxA)
		synctest.Wait()
		// One waits for it, and one more, which hangs up while it waits.
		second := probe(t.Context())
		ctxC, hangUpC := context.WithCancel(t.Context())
		third := probe(ctxC)
		synctest.Wait()
		hangUpC()
		<-third // a deadlock here fails the test: it went on waiting
		hangUpA()
		release()
		if got := <-second; got.code != 200 || got.a.Status != "ready" {
			t.Errorf("the probe that waited: %d %+v, want 200: the first probe's hang-up cut the shared check", got.code, got.a)
		}
		<-first
	})
	if checks := f.h.reader.readies.Load(); checks != 1 {
		t.Fatalf("%d store checks, want the one the three probes shared", checks)
	}
	if dials := f.xmpp.dials(t); dials != 1 {
		t.Fatalf("%d connections to the Jabber server, want 1", dials)
	}
}

// TestReadyzCheckBounded: a check that never ends by itself ends at
// readyTimeout, not before though its prober hung up, and fails.
func TestReadyzCheckBounded(t *testing.T) {
	f := newReadyzFixture(t)
	f.h.reader.readyHook = func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}
	synctest.Test(t, func(t *testing.T) {
		ctx, hangUp := context.WithCancel(t.Context())
		done := make(chan struct{})
		start := time.Now()
		go func() {
			defer close(done)
			f.probe(t, ctx)
		}()
		synctest.Wait()
		hangUp()
		<-done
		if took := time.Since(start); took != readyTimeout {
			t.Fatalf("the check of a probe that hung up took %v, want its bound %v", took, readyTimeout)
		}
	})
	f.h.reader.mu.Lock()
	f.h.reader.readyHook = nil
	f.h.reader.mu.Unlock()
	code, a := f.probe(t, context.Background())
	if code != 503 || a.Reasons["session_store"] == "" {
		t.Fatalf("the verdict of the check that ran out of time, reused: %d %+v", code, a)
	}
}

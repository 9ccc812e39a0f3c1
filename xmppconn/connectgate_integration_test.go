package xmppconn_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// countingGate is a ConnectGate of limit places that records the most
// attempts it held at once, and its admissions and releases.
type countingGate struct {
	slots              chan struct{}
	held, most         atomic.Int64
	admitted, released atomic.Int64
	refuse             error
}

func (g *countingGate) Acquire(ctx context.Context) (func(), error) {
	if g.refuse != nil {
		return nil, g.refuse
	}
	select {
	case g.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	g.admitted.Add(1)
	n := g.held.Add(1)
	for m := g.most.Load(); n > m && !g.most.CompareAndSwap(m, n); m = g.most.Load() {
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			g.held.Add(-1)
			g.released.Add(1)
			<-g.slots
		})
	}, nil
}

// TestConnectGate: Dial and Prepare ask the ConnectGate before they
// dial, hold its place until the stream is secured, and release it once
// per admission, whether the attempt succeeded or failed; a gate that
// refuses fails the attempt with its error (and ErrNotAdmitted), before
// any connection; with a gate of 2, 12 logins at once have at most 2
// connection attempts in flight and all succeed. Real Prosody.
func TestConnectGate(t *testing.T) {
	b, _ := prosodyBackend(t, xmppconntest.Options{LogLevel: "info"})
	b.register(t, "carol", "carolpw")

	g := &countingGate{slots: make(chan struct{}, 2)}
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i := range 12 {
		wg.Go(func() {
			cfg := baseConfig(t, b, "carol", "carolpw", "", nil)
			cfg.ConnectGate = g
			if i%2 == 0 {
				c, err := xmppconn.Dial(ctxT(t), cfg)
				if err == nil {
					c.Close(ctxT(t))
				}
				errs <- err
				return
			}
			w, err := xmppconn.Prepare(ctxT(t), cfg, time.Minute)
			if err == nil {
				w.Close()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a login through the gate: %v", err)
		}
	}
	if m := g.most.Load(); m < 1 || m > 2 {
		t.Errorf("%d connection attempts in flight at once, want at most the gate's 2", m)
	}
	if a, r := g.admitted.Load(), g.released.Load(); a != 12 || r != 12 {
		t.Errorf("%d attempts admitted, %d released; want 12 and 12", a, r)
	}

	// A failed attempt releases its place too: a closed port, a wrong
	// password.
	g2 := &countingGate{slots: make(chan struct{}, 1)}
	bad := baseConfig(t, b, "carol", "carolpw", "", nil)
	bad.Addr, bad.ConnectGate = "127.0.0.1:1", g2
	if _, err := xmppconn.Dial(ctxT(t), bad); err == nil {
		t.Error("Dial to a closed port succeeded")
	}
	wrong := baseConfig(t, b, "carol", "wrong", "", nil)
	wrong.ConnectGate = g2
	if _, err := xmppconn.Dial(ctxT(t), wrong); !errors.Is(err, xmppconn.ErrAuth) {
		t.Errorf("Dial with a wrong password = %v, want ErrAuth", err)
	}
	if a, r := g2.admitted.Load(), g2.released.Load(); a != 2 || r != 2 {
		t.Errorf("failed attempts: %d admitted, %d released; want 2 and 2", a, r)
	}

	// A gate that refuses: the attempt fails with its error.
	no := errors.New("no place for you")
	refused := baseConfig(t, b, "carol", "carolpw", "", nil)
	refused.ConnectGate = &countingGate{refuse: no}
	if _, err := xmppconn.Dial(ctxT(t), refused); !errors.Is(err, no) || !errors.Is(err, xmppconn.ErrNotAdmitted) {
		t.Errorf("Dial through a refusing gate = %v, want its error and ErrNotAdmitted", err)
	}
	if _, err := xmppconn.Prepare(ctxT(t), refused, time.Minute); !errors.Is(err, no) || !errors.Is(err, xmppconn.ErrNotAdmitted) {
		t.Errorf("Prepare through a refusing gate = %v, want its error and ErrNotAdmitted", err)
	}
}

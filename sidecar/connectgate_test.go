package sidecar

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// TestConnectGateBounds: --xmpp-connect-limit places at most; an attempt
// past them waits for one to be released, and one whose context ends
// first fails with errXMPP (503 for the API call that waited) and holds
// nothing; 0 is no limit.
func TestConnectGateBounds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newConnectGate(2)
		r1, err1 := g.Acquire(t.Context())
		r2, err2 := g.Acquire(t.Context())
		if err1 != nil || err2 != nil || len(g.slots) != 2 {
			t.Fatalf("two places: %v %v, %d in flight", err1, err2, len(g.slots))
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		start := time.Now()
		if _, err := g.Acquire(ctx); !errors.Is(err, errXMPP) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("a third attempt past the limit = %v, want errXMPP and the deadline", err)
		}
		if d := time.Since(start); d != time.Second {
			t.Errorf("the third attempt gave up after %v, want its context's 1s", d)
		}
		got := make(chan func(), 1)
		go func() {
			r, err := g.Acquire(t.Context())
			if err != nil {
				t.Error(err)
			}
			got <- r
		}()
		synctest.Wait()
		select {
		case <-got:
			t.Fatal("an attempt went past the limit")
		default:
		}
		r1()
		r3 := <-got
		if len(g.slots) != 2 {
			t.Errorf("%d in flight after one released and one admitted, want 2", len(g.slots))
		}
		r2()
		r3()
		if len(g.slots) != 0 {
			t.Errorf("%d in flight after all released", len(g.slots))
		}
		free := newConnectGate(0)
		for range 100 {
			if _, err := free.Acquire(t.Context()); err != nil {
				t.Fatalf("no limit: %v", err)
			}
		}
	})
}

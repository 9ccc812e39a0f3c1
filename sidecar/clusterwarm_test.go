package sidecar

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// TestWarmPool: the warm streams a node keeps for sessions handed to it
// are bounded in number whoever asks (a flood of preparations from a
// peer is refused past warmMax), one per session, forgotten and closed
// after warmLife, taken once, and refused after the pool is closed.
func TestWarmPool(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newWarmPool()
		var expired atomic.Int32
		for i := range warmMax {
			sk := fmt.Sprintf("%064d", i)
			if fresh, err := p.reserve(sk); !fresh || err != nil {
				t.Fatalf("reserve %d: %v %v", i, fresh, err)
			}
			if i%2 == 0 && !p.put(sk, new(xmppconn.Warm), func() { expired.Add(1) }) {
				t.Fatalf("put %d refused", i)
			}
		}
		// The flood: a new session past the bound, and the same session
		// again, prepare nothing.
		if _, err := p.reserve("x"); !errors.Is(err, errWarmFull) {
			t.Errorf("reserve past warmMax: %v, want errWarmFull", err)
		}
		if fresh, err := p.reserve(fmt.Sprintf("%064d", 0)); fresh || err != nil {
			t.Errorf("reserve of a session prepared already: %v %v", fresh, err)
		}
		// A reservation is not a warm stream; a warm stream is taken once.
		if w := p.take(fmt.Sprintf("%064d", 1)); w != nil {
			t.Errorf("take of a session being prepared returned %v", w)
		}
		if w := p.take(fmt.Sprintf("%064d", 2)); w == nil {
			t.Errorf("take of a prepared session returned nothing")
		}
		if w := p.take(fmt.Sprintf("%064d", 2)); w != nil {
			t.Errorf("second take returned %v", w)
		}
		// A put for a reservation dropped meanwhile is refused.
		p.remove(fmt.Sprintf("%064d", 1), nil)
		if p.put(fmt.Sprintf("%064d", 1), new(xmppconn.Warm), func() {}) {
			t.Errorf("put without a reservation kept the stream")
		}
		time.Sleep(warmLife + time.Second)
		synctest.Wait()
		if want := int32(warmMax/2 - 1); expired.Load() != want {
			t.Errorf("%d warm streams expired, want %d", expired.Load(), want)
		}
		p.mu.Lock()
		left := len(p.m)
		p.mu.Unlock()
		if left != warmMax/2-1 { // the reservations still preparing
			t.Errorf("%d entries left after warmLife", left)
		}
		p.close()
		if _, err := p.reserve("y"); !errors.Is(err, ErrShuttingDown) {
			t.Errorf("reserve after close: %v, want ErrShuttingDown", err)
		}
	})
}

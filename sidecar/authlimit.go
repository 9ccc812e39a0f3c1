package sidecar

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// authWindow is the period --auth-failure-limit counts failures over.
const authWindow = time.Hour

// authLimiter is the one gate every XMPP authentication of the daemon goes
// through, first login or reconnection (xmppconn.Config.AuthGate). Every
// web user reaches the server from the web server's address, and servers
// ban an address after a number of failed logins (ejabberd's
// mod_fail2ban: 20 an hour), so the limiter bounds the failures the server
// sees: at most limit in any window, whatever happens.
//
// The invariant is failures + inFlight ≤ limit, where failures are the
// refusals of the last window and inFlight the attempts admitted whose
// verdict is not known yet: each attempt reserves one unit of the failure
// budget, and gives it back unless the server refused it. Any mix of
// outcomes, in any order, thus stays within the limit. An attempt that
// finds no unit free waits its turn in a queue, bounded by its context; it
// is refused (ErrAuthThrottled) only when its context ends first, at once
// when the budget is spent on failures that leave the window after its
// deadline. A good password is never refused while budget remains.
//
// Credentials that worked before (the same Conn's, or the last that worked
// for the user) go before every waiting unproven login, at once when a unit
// is free, and only they may use the last fifth of the budget (reserve: 2
// of the default 10), so that a storm of stale passwords cannot keep the
// users whose password works from logging in or reconnecting. The first
// refusal of such credentials ends both for the rest of the window: they
// wait in line like any other, and nobody uses the reserve.
//
// Waiters are granted units in order, by hand-off (the unit is counted for
// the waiter before it wakes), so a freed unit wakes one waiter, not all.
type authLimiter struct {
	limit   int // 0: no limit
	reserve int // units only known-good credentials may use
	window  time.Duration
	failed  func() // counts a refusal (the metric)

	mu       sync.Mutex
	failures []time.Time // refusals within the window, oldest first
	inFlight int
	// reservedUntil: until then, known-good credentials have no priority.
	reservedUntil time.Time
	good          map[string][32]byte // per user, the credentials that last worked
	queue         []*authWaiter       // priority waiters first, each group in arrival order
	timer         *time.Timer         // armed while waiters wait for a failure to age out
	stopped       bool
}

type authWaiter struct {
	ready    chan struct{} // closed when granted or refused
	priority bool
	deadline time.Time // zero: none
	err      error     // set before ready is closed when refused
}

func newAuthLimiter(limit int, failed func()) *authLimiter {
	return &authLimiter{limit: limit, reserve: limit / 5, window: authWindow, failed: failed, good: map[string][32]byte{}}
}

// gate returns the xmppconn.AuthGate of one session's credentials.
func (l *authLimiter) gate(user string, cred [32]byte) xmppconn.AuthGate {
	return authGate{l, user, cred}
}

type authGate struct {
	l    *authLimiter
	user string
	cred [32]byte
}

func (g authGate) Acquire(ctx context.Context, knownGood bool) (func(xmppconn.AuthResult), error) {
	return g.l.acquire(ctx, g.user, g.cred, knownGood)
}

// acquire admits one authentication attempt of user with cred, waiting
// for a unit of the failure budget if none is free.
func (l *authLimiter) acquire(ctx context.Context, user string, cred [32]byte, knownGood bool) (func(xmppconn.AuthResult), error) {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return nil, ErrShuttingDown
	}
	now := time.Now()
	l.pruneLocked(now)
	l.dispatchLocked(now) // units freed by failures that just aged out
	if good, ok := l.good[user]; ok && good == cred {
		knownGood = true
	}
	if l.limit <= 0 {
		l.mu.Unlock()
		return l.releaser(user, cred, knownGood, false), nil
	}
	priority := knownGood && !now.Before(l.reservedUntil)
	w := &authWaiter{ready: make(chan struct{}), priority: priority}
	w.deadline, _ = ctx.Deadline()
	i := len(l.queue)
	if priority {
		i = 0
		for i < len(l.queue) && l.queue[i].priority {
			i++
		}
	}
	l.queue = append(l.queue, nil)
	copy(l.queue[i+1:], l.queue[i:])
	l.queue[i] = w
	// Granted at once when nobody waits before w and a unit is free;
	// refused at once when hopeless.
	l.dispatchLocked(now)
	l.mu.Unlock()

	select {
	case <-w.ready:
		if w.err != nil {
			return nil, w.err
		}
		return l.releaser(user, cred, knownGood, true), nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-w.ready:
		if w.err != nil {
			return nil, w.err
		}
		// Granted as the context ended: give the unit to the next one.
		l.inFlight--
		l.dispatchLocked(time.Now())
	default:
		l.removeLocked(w)
	}
	// Which held the budget: at 2,000 users the waits ran out behind
	// logins in flight, with no failure at all, which a message naming
	// failures only sent the reader looking for bad passwords.
	return nil, fmt.Errorf("%w: waited for the failure budget (%d failures in the last %v, %d logins in flight): %w",
		ErrAuthThrottled, len(l.failures), l.window, l.inFlight, ctx.Err())
}

func (l *authLimiter) throttled() error {
	return fmt.Errorf("%w: %d failures in the last %v", ErrAuthThrottled, len(l.failures), l.window)
}

// releaser returns the release function of an admitted attempt; holds says
// it holds a unit.
func (l *authLimiter) releaser(user string, cred [32]byte, knownGood, holds bool) func(xmppconn.AuthResult) {
	var once sync.Once
	return func(r xmppconn.AuthResult) {
		once.Do(func() { l.finish(user, cred, knownGood, holds, r) })
	}
}

func (l *authLimiter) finish(user string, cred [32]byte, knownGood, holds bool, r xmppconn.AuthResult) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if holds {
		l.inFlight--
	}
	switch r {
	case xmppconn.AuthSucceeded:
		l.good[user] = cred
	case xmppconn.AuthFailed:
		l.failed()
		l.failures = append(l.failures, now)
		if good, ok := l.good[user]; ok && good == cred {
			delete(l.good, user)
		}
		if knownGood {
			l.reservedUntil = now.Add(l.window)
			for _, w := range l.queue {
				w.priority = false
			}
		}
	}
	l.pruneLocked(now)
	l.dispatchLocked(now)
}

// capLocked is the part of the budget w may use.
func (l *authLimiter) capLocked(w *authWaiter) int {
	if w.priority {
		return l.limit
	}
	return l.limit - l.reserve
}

// freeLocked is the budget w may use that no attempt holds.
func (l *authLimiter) freeLocked(w *authWaiter) int {
	return l.capLocked(w) - len(l.failures) - l.inFlight
}

// hopelessLocked reports whether w cannot be granted before its deadline:
// its whole budget is spent on failures that leave the window after it.
func (l *authLimiter) hopelessLocked(w *authWaiter) bool {
	c := l.capLocked(w)
	return len(l.failures) >= c && !w.deadline.IsZero() &&
		(c <= 0 || w.deadline.Before(l.failures[len(l.failures)-c].Add(l.window)))
}

// dispatchLocked hands free units to waiters in order, and refuses at once
// the waiters that can no longer be served in time.
func (l *authLimiter) dispatchLocked(now time.Time) {
	for len(l.queue) > 0 && l.freeLocked(l.queue[0]) > 0 {
		w := l.queue[0]
		l.queue[0] = nil
		l.queue = l.queue[1:]
		l.inFlight++
		close(w.ready)
	}
	if len(l.queue) > 0 && len(l.failures) >= l.limit-l.reserve {
		kept := l.queue[:0]
		for _, w := range l.queue {
			if l.hopelessLocked(w) {
				w.err = l.throttled()
				close(w.ready)
				continue
			}
			kept = append(kept, w)
		}
		clear(l.queue[len(kept):])
		l.queue = kept
	}
	if len(l.queue) == 0 {
		l.queue = nil
	}
	l.armLocked(now)
}

// armLocked makes sure waiters are woken when the oldest failure leaves
// the window; the timer re-arms itself from there.
func (l *authLimiter) armLocked(now time.Time) {
	if l.timer != nil || len(l.queue) == 0 || len(l.failures) == 0 {
		return
	}
	l.timer = time.AfterFunc(l.failures[0].Add(l.window).Sub(now), func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.timer = nil
		now := time.Now()
		l.pruneLocked(now)
		l.dispatchLocked(now)
	})
}

func (l *authLimiter) removeLocked(w *authWaiter) {
	for i, q := range l.queue {
		if q == w {
			l.queue = slices.Delete(l.queue, i, i+1)
			break
		}
	}
	if len(l.queue) == 0 {
		l.queue = nil
	}
}

func (l *authLimiter) pruneLocked(now time.Time) {
	i := 0
	for i < len(l.failures) && now.Sub(l.failures[i]) >= l.window {
		i++
	}
	if i > 0 {
		l.failures = append(l.failures[:0], l.failures[i:]...)
	}
}

// stop ends the timer and refuses the waiting logins: the daemon is
// shutting down.
func (l *authLimiter) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	for _, w := range l.queue {
		w.err = ErrShuttingDown
		close(w.ready)
	}
	l.queue = nil
}

package sidecar

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// attempt is one acquire running in its own goroutine.
type attempt struct {
	release func(xmppconn.AuthResult)
	err     error
	done    chan struct{}
}

func startAttempt(ctx context.Context, l *authLimiter, user, pw string, knownGood bool) *attempt {
	a := &attempt{done: make(chan struct{})}
	go func() {
		defer close(a.done)
		a.release, a.err = l.acquire(ctx, user, sha(user, pw), knownGood)
	}()
	return a
}

func sha(user, pw string) [32]byte {
	return credentials(phpsession.Identity{User: user, Password: pw})
}

func (a *attempt) finished() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

func admitted(as []*attempt) (n int) {
	for _, a := range as {
		if a.finished() && a.err == nil {
			n++
		}
	}
	return n
}

// TestAuthLimiterWaitsForBudget: unproven logins are in flight only as
// many at once as the remaining failure budget; the others wait, in
// order, and go as soon as an attempt ends without a failure. Failures
// shrink the budget, an hour later it is whole again.
func TestAuthLimiterWaitsForBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var fails atomic.Int32
		l := newAuthLimiter(3, func() { fails.Add(1) })
		var as []*attempt
		for i := range 8 {
			as = append(as, startAttempt(t.Context(), l, fmt.Sprintf("u%d", i), "pw", false))
			synctest.Wait() // in this order
		}
		if n := admitted(as); n != 3 {
			t.Fatalf("%d admitted at once, want 3 (the budget)", n)
		}
		for _, a := range as[:3] {
			if !a.finished() {
				t.Fatal("not the first three admitted")
			}
		}
		as[0].release(xmppconn.AuthFailed) // budget 2, both in flight: nobody new
		synctest.Wait()
		if n := admitted(as); n != 3 {
			t.Fatalf("after a failure: %d admitted, want 3", n)
		}
		as[1].release(xmppconn.AuthSucceeded) // a unit back: the next one goes
		synctest.Wait()
		if !as[3].finished() || as[4].finished() {
			t.Fatal("after a success the fourth (only) should go")
		}
		as[2].release(xmppconn.AuthAborted) // no verdict: its unit is back
		synctest.Wait()
		if !as[4].finished() || as[5].finished() {
			t.Fatal("after an aborted attempt the fifth (only) should go")
		}
		as[3].release(xmppconn.AuthFailed)
		time.Sleep(time.Minute)
		as[4].release(xmppconn.AuthFailed) // 3 failures: budget spent
		synctest.Wait()
		if admitted(as) != 5 || fails.Load() != 3 {
			t.Fatalf("admitted %d, failures %d; want 5 and 3", admitted(as), fails.Load())
		}
		// The waiters have no deadline: they go as failures age out, one
		// per failure.
		time.Sleep(time.Hour - time.Minute - time.Second)
		synctest.Wait()
		if admitted(as) != 5 {
			t.Fatal("admitted before the failures left the window")
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if admitted(as) != 7 {
			t.Fatalf("an hour after the first two failures %d admitted, want 7", admitted(as))
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if admitted(as) != 8 {
			t.Fatalf("an hour after the third failure %d admitted, want 8", admitted(as))
		}
		for _, a := range as[5:] {
			a.release(xmppconn.AuthSucceeded)
		}
		l.stop()
	})
}

// TestAuthLimiterRefusesHopeless: with the budget spent on failures, a
// login whose deadline comes before the oldest failure leaves the window
// is refused at once (ErrAuthThrottled), also one already waiting, and a
// waiter whose context ends leaves the queue without leaking a unit.
func TestAuthLimiterRefusesHopeless(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newAuthLimiter(2, func() {})
		ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
		defer cancel()
		a, b := startAttempt(ctx, l, "a", "x", false), startAttempt(ctx, l, "b", "x", false)
		synctest.Wait()
		waiting := startAttempt(ctx, l, "c", "x", false)
		synctest.Wait()
		if waiting.finished() {
			t.Fatal("the third did not wait")
		}
		start := time.Now()
		a.release(xmppconn.AuthFailed)
		b.release(xmppconn.AuthFailed)
		synctest.Wait()
		if !waiting.finished() || !errors.Is(waiting.err, ErrAuthThrottled) || time.Since(start) != 0 {
			t.Fatalf("waiter: finished %v err %v after %v, want ErrAuthThrottled at once", waiting.finished(), waiting.err, time.Since(start))
		}
		late := startAttempt(ctx, l, "d", "x", true) // even known-good
		synctest.Wait()
		if !late.finished() || !errors.Is(late.err, ErrAuthThrottled) {
			t.Fatalf("a known-good login past the limit: %v, want ErrAuthThrottled", late.err)
		}

		// A waiter whose context ends: refused, its place gone.
		time.Sleep(time.Hour)
		c1 := startAttempt(t.Context(), l, "e", "x", false)
		c2 := startAttempt(t.Context(), l, "f", "x", false)
		synctest.Wait()
		short, cancelShort := context.WithCancel(t.Context())
		w := startAttempt(short, l, "g", "x", false)
		synctest.Wait()
		cancelShort()
		synctest.Wait()
		if !errors.Is(w.err, ErrAuthThrottled) || !errors.Is(w.err, context.Canceled) {
			t.Fatalf("canceled waiter: %v", w.err)
		}
		c1.release(xmppconn.AuthSucceeded)
		c2.release(xmppconn.AuthSucceeded)
		l.mu.Lock()
		inFlight, queued := l.inFlight, len(l.queue)
		l.mu.Unlock()
		if inFlight != 0 || queued != 0 {
			t.Fatalf("in flight %d, queued %d after all ended; want 0 0", inFlight, queued)
		}
		l.stop()
	})
}

// TestAuthLimiterKnownGood: credentials that worked before (the Conn's, or
// the last that worked for the user) go before waiting unproven logins;
// the first failure of such credentials ends that for the window.
func TestAuthLimiterKnownGood(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newAuthLimiter(3, func() {})
		// bob's password works once: it is known good from then on.
		a := startAttempt(t.Context(), l, "bob", "right", false)
		synctest.Wait()
		a.release(xmppconn.AuthSucceeded)
		h1, h2, h3 := startAttempt(t.Context(), l, "x1", "?", false), startAttempt(t.Context(), l, "x2", "?", false), startAttempt(t.Context(), l, "x0", "?", false)
		synctest.Wait()
		unproven := startAttempt(t.Context(), l, "x3", "?", false)
		synctest.Wait()
		bob := startAttempt(t.Context(), l, "bob", "right", false)
		carol := startAttempt(t.Context(), l, "carol", "c", true) // a reconnection
		synctest.Wait()
		h1.release(xmppconn.AuthAborted)
		synctest.Wait()
		h2.release(xmppconn.AuthAborted)
		synctest.Wait()
		if !bob.finished() || !carol.finished() || unproven.finished() {
			t.Fatalf("known-good bob %v carol %v, unproven %v; want the known-good first", bob.finished(), carol.finished(), unproven.finished())
		}
		h3.release(xmppconn.AuthAborted)
		synctest.Wait()
		if !unproven.finished() {
			t.Fatal("the unproven login did not get the unit")
		}
		// carol's password changed on the server: reserved mode. The
		// budget is 2 now, both units held (bob, unproven): a known-good
		// login waits in line behind an earlier unproven one.
		carol.release(xmppconn.AuthFailed)
		later := startAttempt(t.Context(), l, "x4", "?", false)
		synctest.Wait()
		dave := startAttempt(t.Context(), l, "dave", "d", true)
		synctest.Wait()
		bob.release(xmppconn.AuthSucceeded)
		synctest.Wait()
		if !later.finished() || dave.finished() {
			t.Fatalf("reserved mode: unproven %v, known-good %v; want arrival order", later.finished(), dave.finished())
		}
		unproven.release(xmppconn.AuthSucceeded)
		later.release(xmppconn.AuthSucceeded)
		<-dave.done
		dave.release(xmppconn.AuthSucceeded)
		// A failed password is no longer known good.
		l.mu.Lock()
		_, carolGood := l.good["carol"]
		_, bobGood := l.good["bob"]
		l.mu.Unlock()
		if carolGood || !bobGood {
			t.Fatalf("good: carol %v bob %v, want false true", carolGood, bobGood)
		}
		l.stop()
	})
}

// TestAuthLimiterNeverPastLimit: many logins, known good or not, with
// random outcomes and random context ends, never give the server more
// than the limit of failures in any hour, and every good login is admitted
// while budget remains.
func TestAuthLimiterNeverPastLimit(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rng := rand.New(rand.NewPCG(seed, 7))
				const limit = 5
				var mu sync.Mutex
				var failTimes []time.Time
				var maxInFlight, inFlight int
				l := newAuthLimiter(limit, func() {})
				var wg sync.WaitGroup
				for i := range 200 {
					knownGood := rng.IntN(2) == 0
					outcome := xmppconn.AuthResult(rng.IntN(3))
					hold := time.Duration(rng.IntN(5000)) * time.Millisecond
					timeout := time.Duration(1+rng.IntN(120)) * time.Minute
					time.Sleep(time.Duration(rng.IntN(60)) * time.Second)
					wg.Go(func() {
						ctx, cancel := context.WithTimeout(t.Context(), timeout)
						defer cancel()
						release, err := l.acquire(ctx, fmt.Sprint("u", i%17), sha(fmt.Sprint(i), ""), knownGood)
						if err != nil {
							if !errors.Is(err, ErrAuthThrottled) {
								t.Errorf("acquire: %v", err)
							}
							return
						}
						mu.Lock()
						inFlight++
						maxInFlight = max(maxInFlight, inFlight)
						mu.Unlock()
						time.Sleep(hold)
						mu.Lock()
						inFlight--
						if outcome == xmppconn.AuthFailed {
							failTimes = append(failTimes, time.Now())
						}
						mu.Unlock()
						release(outcome)
					})
				}
				wg.Wait()
				l.stop()
				for i := range failTimes {
					n := 0
					for _, f := range failTimes[i:] {
						if f.Sub(failTimes[i]) < time.Hour {
							n++
						}
					}
					if n > limit {
						t.Fatalf("%d failures within an hour from %v, limit %d", n, failTimes[i], limit)
					}
				}
				if len(failTimes) < 2*limit {
					t.Fatalf("only %d failures: the test proves nothing", len(failTimes))
				}
				if maxInFlight > limit {
					t.Fatalf("%d attempts in flight at once, limit %d", maxInFlight, limit)
				}
			})
		})
	}
}

// TestAuthLimiterUnlimited: --auth-failure-limit 0 admits everything at
// once and still counts failures.
func TestAuthLimiterUnlimited(t *testing.T) {
	var fails atomic.Int32
	l := newAuthLimiter(0, func() { fails.Add(1) })
	for range 50 {
		release, err := l.acquire(t.Context(), "u", sha("u", "p"), false)
		if err != nil {
			t.Fatal(err)
		}
		defer release(xmppconn.AuthFailed)
	}
	t.Cleanup(func() {
		if fails.Load() != 50 {
			t.Errorf("failures counted %d, want 50", fails.Load())
		}
	})
}

// TestAuthLimiterReserve: unproven logins may spend only four fifths of
// the budget; the rest is kept for credentials that worked before, so a
// storm of stale passwords does not lock out the users whose password
// works. The first failure of known-good credentials closes the reserve.
func TestAuthLimiterReserve(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newAuthLimiter(10, func() {})
		ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
		defer cancel()
		var stale []*attempt
		for i := range 9 {
			stale = append(stale, startAttempt(ctx, l, fmt.Sprint("s", i), "old", false))
			synctest.Wait()
		}
		if admitted(stale) != 8 {
			t.Fatalf("%d unproven admitted, want 8 (limit 10 less the reserve 2)", admitted(stale))
		}
		k1 := startAttempt(ctx, l, "k1", "pw", true)
		synctest.Wait()
		if !k1.finished() || k1.err != nil {
			t.Fatalf("a known-good login with the reserve free: %v %v", k1.finished(), k1.err)
		}
		for _, a := range stale[:8] {
			a.release(xmppconn.AuthFailed)
		}
		synctest.Wait()
		if !stale[8].finished() || !errors.Is(stale[8].err, ErrAuthThrottled) {
			t.Fatalf("the ninth stale login: %v, want ErrAuthThrottled at once", stale[8].err)
		}
		k2 := startAttempt(ctx, l, "k2", "pw", true)
		synctest.Wait()
		k3 := startAttempt(ctx, l, "k3", "pw", true)
		synctest.Wait()
		if !k2.finished() || k2.err != nil || k3.finished() {
			t.Fatal("with 8 failures and one known-good in flight, one more known-good should go, a third wait")
		}
		k1.release(xmppconn.AuthFailed) // 9 failures; the reserve is closed
		synctest.Wait()
		if !k3.finished() || !errors.Is(k3.err, ErrAuthThrottled) {
			t.Fatalf("known-good after a known-good failure: %v, want ErrAuthThrottled", k3.err)
		}
		k2.release(xmppconn.AuthFailed) // 10: the limit, never more
		k4 := startAttempt(ctx, l, "k4", "pw", true)
		synctest.Wait()
		if !errors.Is(k4.err, ErrAuthThrottled) {
			t.Fatalf("past the limit: %v", k4.err)
		}
		l.stop()
	})
}

// TestAuthLimiterStop: shutdown refuses the waiting logins and any new one
// at once (ErrShuttingDown), instead of letting them wait their timeout.
func TestAuthLimiterStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newAuthLimiter(1, func() {})
		held := startAttempt(t.Context(), l, "a", "x", false)
		synctest.Wait()
		waiting := startAttempt(t.Context(), l, "b", "x", false)
		synctest.Wait()
		l.stop()
		synctest.Wait()
		if !errors.Is(waiting.err, ErrShuttingDown) {
			t.Fatalf("waiting login after stop: %v, want ErrShuttingDown", waiting.err)
		}
		if _, err := l.acquire(t.Context(), "c", sha("c", "x"), true); !errors.Is(err, ErrShuttingDown) {
			t.Fatalf("new login after stop: %v, want ErrShuttingDown", err)
		}
		held.release(xmppconn.AuthSucceeded)
	})
}

// TestAuthLimiterThrottledSaysWhy: a login refused by the limiter says
// what held the budget, failures or logins in flight: at 2,000 users the
// refusals came from waits behind logins in flight with no failure at
// all, and read as if passwords had failed.
func TestAuthLimiterThrottledSaysWhy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newAuthLimiter(3, func() {})
		var as []*attempt
		for i := range 3 {
			as = append(as, startAttempt(t.Context(), l, fmt.Sprintf("u%d", i), "pw", false))
		}
		synctest.Wait()
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := l.acquire(ctx, "late", sha("late", "pw"), false)
		if !errors.Is(err, ErrAuthThrottled) || !errors.Is(err, context.DeadlineExceeded) ||
			!strings.Contains(err.Error(), "0 failures in the last 1h0m0s, 3 logins in flight") {
			t.Fatalf("behind logins in flight: %v", err)
		}
		for _, a := range as {
			a.release(xmppconn.AuthFailed)
		}
		ctx2, cancel2 := context.WithTimeout(t.Context(), time.Minute)
		defer cancel2()
		_, err = l.acquire(ctx2, "late", sha("late", "pw"), false)
		if !errors.Is(err, ErrAuthThrottled) || !strings.Contains(err.Error(), "3 failures in the last 1h0m0s") {
			t.Fatalf("with the budget spent on failures: %v", err)
		}
	})
}

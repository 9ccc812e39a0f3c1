package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
)

// scriptCounter counts the scripts a Redis client runs.
type scriptCounter struct{ n atomic.Int64 }

func (c *scriptCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *scriptCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := strings.ToLower(cmd.Name()); n == "evalsha" || n == "eval" {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (c *scriptCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestOwnerHints: a node forwarding a session's calls to its owner asks
// Redis who the owner is once, then forwards without a claim until the
// owner's lease could have expired (a hint from a claim never outlives
// the lease in Redis); an owner that says it holds the session no more
// (a hand-over), or whose peer port refuses (its process gone), ends the
// hint at once and the call claims as before; a lease expired asks Redis
// again; and the owner's answers telling how long its lease lasts extend
// the hint past the lease period the claim saw. On the real Redis and
// the 3-master Redis Cluster.
func TestOwnerHints(t *testing.T) {
	for _, tc := range redisSpecs() {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			spec := tc.spec(t)
			const ttl = 2 * time.Second
			a, b := leaseNode(t, spec, "a", ttl), leaseNode(t, spec, "b", ttl)
			var scripts scriptCounter
			b.rdb.AddHook(&scripts)
			b.peer = &http.Client{}
			b.secret = "hint-secret"
			b.redisSteadySince.Store(time.Now().Add(-time.Hour).UnixNano()) // Redis answered b all along: an ended hint routes nothing

			// a's peer listener: answers the forwarded calls, or that it
			// holds the session no more.
			var forwarded atomic.Int64
			var handedOver, tell atomic.Bool
			owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				forwarded.Add(1)
				if handedOver.Load() {
					writeError(w, ErrNotOwner)
					return
				}
				if tell.Load() {
					w.Header().Set(leaseLeftHeader, "1500")
				}
				w.Write([]byte(`{"ok":true}`))
			}))
			defer owner.Close()
			a.ls.self.peer = strings.TrimPrefix(owner.URL, "http://")
			claimA := func(sk string) lease {
				t.Helper()
				res, err := a.take(ctx, sk, nil)
				if err != nil || !res.won {
					t.Fatalf("a's claim: %+v %v", res, err)
				}
				return res.lease
			}
			call := func(sk string) (local bool) {
				t.Helper()
				r := httptest.NewRequest(http.MethodGet, "/v1/roster", nil).WithContext(ctx)
				w := httptest.NewRecorder()
				local, _, err := b.toOwner(w, r, sk, nil, true)
				if err != nil {
					t.Fatalf("call: %v", err)
				}
				if !local && w.Code != http.StatusOK {
					t.Fatalf("forwarded call answered %d %s", w.Code, w.Body)
				}
				return local
			}

			sk := sessionKey("hinted-session-id-aaaaaaaaaaaa")
			la := claimA(sk)
			if call(sk) || scripts.n.Load() != 1 || forwarded.Load() != 1 {
				t.Fatalf("first call: %d scripts, %d forwarded, want a claim and a forward", scripts.n.Load(), forwarded.Load())
			}
			for range 5 {
				if call(sk) {
					t.Fatal("a hinted call was served here")
				}
			}
			if scripts.n.Load() != 1 || forwarded.Load() != 6 {
				t.Fatalf("five more calls: %d scripts in all, %d forwarded, want no claim and five forwards", scripts.n.Load(), forwarded.Load())
			}
			// The hint ends no later than the lease does in Redis.
			pttl, err := a.rdb.PTTL(ctx, keysOf(sk).lease).Result()
			if err != nil {
				t.Fatal(err)
			}
			b.hints.mu.Lock()
			h := b.hints.m[sk]
			b.hints.mu.Unlock()
			if h.l != la || time.Duration(h.until-monoNow()) > pttl+time.Millisecond {
				t.Fatalf("hint %+v ends in %v, the lease in %v", h.l, time.Duration(h.until-monoNow()), pttl)
			}

			// A hand-over: a gives the lease back and answers not_owner.
			if ok, err := a.ls.release(ctx, sk, la); err != nil || !ok {
				t.Fatalf("release: %v %v", ok, err)
			}
			handedOver.Store(true)
			before := scripts.n.Load()
			if !call(sk) {
				t.Fatal("after a hand-over the call was not claimed here")
			}
			if scripts.n.Load() != before+1 {
				t.Fatalf("%d scripts after a hand-over, want the one claim", scripts.n.Load()-before)
			}
			if l, _ := b.holds(sk); l.node != "b" {
				t.Fatalf("b holds %+v", l)
			}
			handedOver.Store(false)

			// The owner's process gone: its peer port refuses, and the
			// hinted call takes the session over with one claim.
			gone := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{}`)) }))
			a.ls.self.peer = strings.TrimPrefix(gone.URL, "http://")
			sk2 := sessionKey("hinted-session-id-bbbbbbbbbbbb")
			claimA(sk2)
			if call(sk2) {
				t.Fatal("the first call was served here")
			}
			gone.Close()
			before = scripts.n.Load()
			if !call(sk2) {
				t.Fatal("the owner's port refusing, the call did not take the session over")
			}
			if scripts.n.Load() != before+1 {
				t.Fatalf("%d scripts for a takeover from a hinted owner, want one (the forced claim)", scripts.n.Load()-before)
			}

			// The lease expiring (a frozen owner): the call asks Redis again.
			a.ls.self.peer = strings.TrimPrefix(owner.URL, "http://")
			sk3 := sessionKey("hinted-session-id-cccccccccccc")
			claimA(sk3)
			call(sk3)
			for {
				if _, ok := b.hints.get(sk3, monoNow(), false); !ok {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			before = scripts.n.Load()
			call(sk3)
			if scripts.n.Load() == before {
				t.Fatal("a call after the lease's expiry did not ask Redis")
			}

			// The owner tells how long its lease lasts (renewed meanwhile):
			// each answer extends the hint, and the calls need no claim
			// past the lease period the claim saw.
			tell.Store(true)
			sk4 := sessionKey("hinted-session-id-dddddddddddd")
			l4 := claimA(sk4)
			call(sk4)
			before = scripts.n.Load()
			for end := time.Now().Add(ttl + time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
				if lost, err := a.ls.renew(ctx, map[string]lease{sk4: l4}); err != nil || len(lost) != 0 {
					t.Fatalf("a's renewal: %v %v", lost, err)
				}
				if call(sk4) {
					t.Fatal("a call was served here")
				}
			}
			if n := scripts.n.Load() - before; n != 0 {
				t.Fatalf("%d claims past the lease period the claim saw, though the owner told its lease lasted", n)
			}
		})
	}
}

// TestOwnerHintsBounded: a node keeps at most ownerHintsMax hints, and a
// renewal pass's prune forgets the ended ones.
func TestOwnerHintsBounded(t *testing.T) {
	var h ownerHints
	now := monoNow()
	l := lease{token: 1, node: "a", incarnation: "i", peer: "127.0.0.1:1"}
	for i := range ownerHintsMax + 100 {
		until := now + int64(time.Minute)
		if i%2 == 0 {
			until = now - 1
		}
		h.put(fmt.Sprintf("%064d", i), l, until)
	}
	if n := len(h.m); n != ownerHintsMax {
		t.Fatalf("%d hints kept, want at most %d", n, ownerHintsMax)
	}
	if _, ok := h.get(fmt.Sprintf("%064d", 0), now, false); ok {
		t.Fatal("an ended hint was given")
	}
	if got, ok := h.get(fmt.Sprintf("%064d", 0), now, true); !ok || got != l {
		t.Fatalf("an ended hint, asked for while Redis is away: %+v %v", got, ok)
	}
	if got, ok := h.get(fmt.Sprintf("%064d", 1), now, false); !ok || got != l {
		t.Fatalf("a current hint: %+v %v", got, ok)
	}
	h.prune(now)
	if n := len(h.m); n != ownerHintsMax/2 {
		t.Fatalf("%d hints after the prune, want the %d current ones", n, ownerHintsMax/2)
	}
	h.put(fmt.Sprintf("%064d", -1), l, now+int64(time.Minute))
	if _, ok := h.get(fmt.Sprintf("%064d", -1), now, false); !ok {
		t.Fatal("no room after the prune")
	}
}

// slowPairTTL is the lease TTL of slowPair's nodes.
const slowPairTTL = 3 * time.Second

// slowPair starts a real Redis and two nodes on it, a directly and b
// through a proxy whose delay the test sets; b's claim scripts are
// counted.
func slowPair(t *testing.T) (a, b *cluster, proxy *slowProxy, scripts *scriptCounter) {
	t.Helper()
	r := phpsessiontest.StartRedis(t)
	proxy = startSlowProxy(t, r.Addr)
	a = leaseNode(t, "redis://"+r.Addr, "a", slowPairTTL)
	b = leaseNode(t, "redis://"+proxy.addr, "b", slowPairTTL)
	scripts = &scriptCounter{}
	b.rdb.AddHook(scripts)
	return a, b, proxy, scripts
}

// TestClaimShared: the calls of one session reaching a node at once share
// one claim (takeShared), whether another node holds the session or the
// claim takes it; a caller that leaves returns at once and takes the
// claim down with it for nobody else. Redis answers 100 ms late, so the
// calls overlap.
func TestClaimShared(t *testing.T) {
	ctx := t.Context()
	a, b, proxy, scripts := slowPair(t)
	proxy.delay.Store(int64(100 * time.Millisecond))
	const calls = 20
	concurrently := func(sk string, want string) {
		t.Helper()
		before := scripts.n.Load()
		results := make(chan claimResult, calls)
		var wg sync.WaitGroup
		for range calls {
			wg.Go(func() {
				res, err := b.takeShared(ctx, sk)
				if err != nil {
					t.Errorf("takeShared: %v", err)
				}
				results <- res
			})
		}
		wg.Wait()
		close(results)
		for res := range results {
			if res.lease.node != want || res.won != (want == "b") {
				t.Errorf("a call was answered %+v, want the lease of %s", res, want)
			}
		}
		if n := scripts.n.Load() - before; n != 1 {
			t.Errorf("%d calls at once ran %d claim scripts, want one", calls, n)
		}
	}

	held := sessionKey("shared-claim-held-aaaaaaaaaaaa")
	if res, err := a.take(ctx, held, nil); err != nil || !res.won {
		t.Fatalf("a's claim: %+v %v", res, err)
	}
	concurrently(held, "a")
	concurrently(sessionKey("shared-claim-free-bbbbbbbbbbbb"), "b")

	// A caller that leaves: it returns at once; the others, and the
	// claim, go on.
	sk := sessionKey("shared-claim-left-cccccccccccc")
	gone, cancel := context.WithCancel(ctx)
	left := make(chan error, 1)
	go func() {
		_, err := b.takeShared(gone, sk)
		left <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-left:
		if err == nil {
			t.Fatal("a caller that left was answered as if it had stayed")
		}
	case <-time.After(50 * time.Millisecond):
		t.Fatal("a caller that left waited for the claim")
	}
	if res, err := b.takeShared(ctx, sk); err != nil || !res.won {
		t.Fatalf("the call that stayed: %+v %v", res, err)
	}
	if n := len(b.claiming); n != 0 {
		t.Fatalf("%d claims left in flight", n)
	}

	// A claim that fails (Redis answered it too late: away, or slow) does
	// not fail the calls that joined it meanwhile: each claims on its own,
	// and Redis, back by then, answers it.
	sk = sessionKey("shared-claim-late-dddddddddddd")
	proxy.delay.Store(int64(redisOpTimeout + 500*time.Millisecond))
	first := make(chan error, 1)
	go func() {
		_, err := b.takeShared(ctx, sk)
		first <- err
	}()
	for {
		b.mu.Lock()
		_, inFlight := b.claiming[sk]
		b.mu.Unlock()
		if inFlight {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	joined := make(chan error, 1)
	go func() {
		res, err := b.takeShared(ctx, sk)
		if err == nil && !res.won {
			err = fmt.Errorf("not won: %+v", res)
		}
		joined <- err
	}()
	time.Sleep(100 * time.Millisecond)
	proxy.delay.Store(0) // Redis is back
	if err := <-first; !errors.Is(err, ErrClusterRedis) {
		t.Fatalf("the claim Redis answered too late: %v, want ErrClusterRedis", err)
	}
	if err := <-joined; err != nil {
		t.Fatalf("a call that joined the failed claim: %v, want the session claimed on its own", err)
	}
}

// TestLeaseLeftHeader: the owner tells, on a forwarded call's answer, how
// long its leases last at least (a TTL from its last renewal pass that
// reached Redis, nothing once that is a TTL old); the forwarding node
// takes at most a TTL of it, and nothing from a malformed value.
func TestLeaseLeftHeader(t *testing.T) {
	const ttl = 3 * time.Second
	cl := &cluster{ls: &leaseStore{ttl: ttl}}
	for _, tc := range []struct {
		ago      time.Duration
		min, max int64
	}{
		{0, 2900, 3000},
		{time.Second, 1900, 2000},
		{ttl, 0, 0},
		{time.Minute, 0, 0},
	} {
		cl.renewed.Store(time.Now().Add(-tc.ago).UnixNano())
		h := http.Header{}
		cl.tellLeaseLeft(h)
		got := h.Get(leaseLeftHeader)
		if tc.max == 0 {
			if got != "" {
				t.Errorf("renewed %v ago: told %q, want nothing", tc.ago, got)
			}
			continue
		}
		ms, err := strconv.ParseInt(got, 10, 64)
		if err != nil || ms < tc.min || ms > tc.max {
			t.Errorf("renewed %v ago: told %q, want %d..%d ms", tc.ago, got, tc.min, tc.max)
		}
	}
	for v, want := range map[string]time.Duration{
		"1500": 1500 * time.Millisecond, "999999999999": ttl, "": 0, "0": 0, "-5": 0, "1e3": 0, "abc": 0, "1500 ": 0,
	} {
		h := http.Header{}
		h.Set(leaseLeftHeader, v)
		if got := cl.leaseLeftOf(h); got != want {
			t.Errorf("told %q: took %v, want %v", v, got, want)
		}
	}
}

// TestOwnerHintsThroughOutage: while Redis is away, and for a TTL after it
// comes back, a call for a session another node holds goes to the last
// owner known even when its hint has ended, without a claim: the owner
// serves it from its table, and Redis, just back, is not asked a
// thousand claims at once (issue 20 item 6). Once Redis is steady an
// ended hint routes nothing, and the renewal pass forgets it. A last
// owner gone meanwhile refuses the forward: the hint is dropped, and the
// call fails as a claim without Redis does, served nowhere.
func TestOwnerHintsThroughOutage(t *testing.T) {
	ctx := t.Context()
	a, b, proxy, scripts := slowPair(t)
	b.peer = &http.Client{}
	b.secret = "hint-secret"
	var forwarded atomic.Int64
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		forwarded.Add(1)
		w.Write([]byte(`{"ok":true}`))
	}))
	defer owner.Close()
	a.ls.self.peer = strings.TrimPrefix(owner.URL, "http://")

	call := func(sk string) (time.Duration, error) {
		t.Helper()
		start := time.Now()
		r := httptest.NewRequest(http.MethodGet, "/v1/roster", nil).WithContext(ctx)
		w := httptest.NewRecorder()
		local, _, err := b.toOwner(w, r, sk, nil, true)
		if err == nil && (local || w.Code != http.StatusOK) {
			t.Fatalf("the call was not forwarded: local %v, answered %d %s", local, w.Code, w.Body)
		}
		return time.Since(start), err
	}
	endHint := func(sk string, ago time.Duration) {
		b.hints.mu.Lock()
		defer b.hints.mu.Unlock()
		h, ok := b.hints.m[sk]
		if !ok {
			t.Fatal("no hint")
		}
		h.until = monoNow() - 1 - int64(ago)
		b.hints.m[sk] = h
	}
	want := func(step string, scriptsWant, forwardsWant int64) {
		t.Helper()
		if s, f := scripts.n.Load(), forwarded.Load(); s != scriptsWant || f != forwardsWant {
			t.Fatalf("%s: %d claim scripts and %d forwards in all, want %d and %d", step, s, f, scriptsWant, forwardsWant)
		}
	}

	b.redisSteadySince.Store(time.Now().Add(-time.Hour).UnixNano())
	sk := sessionKey("outage-hinted-session-aaaaaaaaaa")
	if res, err := a.take(ctx, sk, nil); err != nil || !res.won {
		t.Fatalf("a's claim: %+v %v", res, err)
	}
	if _, err := call(sk); err != nil {
		t.Fatal(err)
	}
	want("the first call", 1, 1)
	endHint(sk, 0)

	// Redis away (it answers after go-redis's timeouts), as b's heartbeat
	// finds: the ended hint routes, at once.
	proxy.delay.Store(int64(redisOpTimeout + 500*time.Millisecond))
	b.redisSteadySince.Store(0)
	for range 3 {
		if d, err := call(sk); err != nil || d > redisOpTimeout/2 {
			t.Fatalf("a call through the outage: %v after %v, want it forwarded to the last owner at once", err, d)
		}
	}
	want("through the outage", 1, 4)
	b.renew(ctx)
	if _, ok := b.hints.get(sk, monoNow(), true); !ok {
		t.Fatal("a renewal pass through the outage forgot the ended hint")
	}

	// Back: an ended hint routes nothing, the call claims (and
	// forwards), though the pass, Redis not steady yet, keeps the
	// hints that ended; once steady, it forgets those ended a while.
	proxy.delay.Store(0)
	b.redisSteadySince.Store(time.Now().UnixNano())
	if _, err := call(sk); err != nil {
		t.Fatal(err)
	}
	want("Redis back", 2, 5)
	endHint(sk, endedHintKept)
	b.renew(ctx)
	if _, ok := b.hints.get(sk, monoNow(), true); !ok {
		t.Fatal("a renewal pass with Redis back for less than a TTL forgot an ended hint")
	}
	b.redisSteadySince.Store(time.Now().Add(-2 * slowPairTTL).UnixNano())
	if _, err := call(sk); err != nil {
		t.Fatal(err)
	}
	want("Redis steady", 3, 6)
	endHint(sk, 0)
	b.renew(ctx)
	if _, ok := b.hints.get(sk, monoNow(), true); !ok {
		t.Fatal("the renewal pass forgot a hint ended just now: it is kept for an outage to come")
	}
	endHint(sk, endedHintKept)
	b.renew(ctx)
	if _, ok := b.hints.get(sk, monoNow(), true); ok {
		t.Fatalf("the renewal pass kept a hint ended %v ago with Redis steady", endedHintKept)
	}

	// Hostile: the last owner known is gone (its port refuses) while
	// Redis is away. The call is not served here, nor anywhere: it fails
	// as a claim without Redis does, and the hint is dropped.
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPeer := gone.Addr().String()
	gone.Close()
	sk2 := sessionKey("outage-dead-owner-bbbbbbbbbbbbb")
	b.hints.put(sk2, lease{token: 7, node: "c", incarnation: "dead", peer: deadPeer}, monoNow()-1)
	proxy.delay.Store(int64(redisOpTimeout + 500*time.Millisecond))
	b.redisSteadySince.Store(0)
	if _, err := call(sk2); !errors.Is(err, ErrClusterRedis) {
		t.Fatalf("a call whose last owner is gone, Redis away: %v, want ErrClusterRedis", err)
	}
	if _, ok := b.hints.get(sk2, monoNow(), true); ok {
		t.Fatal("the hint on a gone owner was kept")
	}
	want("a gone owner", 4, 6)
}

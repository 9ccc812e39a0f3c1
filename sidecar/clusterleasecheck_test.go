package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
	"expressolivre.org/imsidecar/xmppconn"
)

// leaseNode is node's cluster side on the Redis spec, its leases
// lasting ttl, with no renewal running: the test says when the last one
// reached Redis (cluster.renewed).
func leaseNode(t *testing.T, spec, node string, ttl time.Duration) *cluster {
	t.Helper()
	ls := testLeaseStore(t, spec, node, ttl)
	logger := slog.New(slog.DiscardHandler)
	m := newMetrics(func() map[xmppconn.State]int { return nil }, func() int64 { return 0 })
	cl := &cluster{rdb: ls.rdb, logger: logger, metrics: m, held: map[string]heldLease{}, logCap: 5, logBytes: 1 << 20, ls: ls, warms: newWarmPool()}
	cl.reg = newRegistry(&Config{EventBuffer: 1000, EventBufferMB: 4}, nil, nil, nil, logger, m)
	t.Cleanup(cl.wg.Wait)
	return cl
}

// timedMine runs cl.mine on each of sks at once, and returns the longest
// a call took, how many were told the session is theirs and how many were
// refused with ErrClusterRedis.
func timedMine(ctx context.Context, cl *cluster, sks []string) (longest time.Duration, mine, refused int) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, sk := range sks {
		wg.Go(func() {
			start := time.Now()
			ok, err := cl.mine(ctx, sk)
			d := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			longest = max(longest, d)
			if ok {
				mine++
			}
			if errors.Is(err, ErrClusterRedis) {
				refused++
			}
		})
	}
	wg.Wait()
	return longest, mine, refused
}

// TestClusterLeaseCheckRedisStalled: through a Redis outage the owner's
// last renewal ages past two thirds of the TTL, and every call asks Redis
// whether the lease is still its own (cluster.mine). go-redis does not
// bound a read by the context, only by its 2 s read timeout, and retries
// it: with every redis-server stalled (SIGSTOP: connections accepted,
// nothing answered, as a partition dropping packets or a master loading)
// one call waited 8.1 s for the check, 20 at once up to 10.1 s on a Redis
// and 16.0 s on a 3-master Redis Cluster, queued for the small pool; with
// Redis refusing connections, 0.49–0.51 s, go-redis's retries. A call is
// now answered within the check's bound (leaseCheckWait), one call alone,
// 20 sessions' calls at once or 20 calls of one session, and served, as
// on an error. The bound asserted, 1 s, is half the read timeout the old
// code waited for: a behaviour, not a speed goal.
//
// That holds only while the process ran all along. A node whose process
// did not run since its last renewal (woken from SIGSTOP) may have lost
// its sessions meanwhile: with Redis not answering, its calls are refused
// (ErrClusterRedis) within a third of the TTL, not served from a log
// another node moved on from (issue 20 item 3 at 2,000 users).
func TestClusterLeaseCheckRedisStalled(t *testing.T) {
	ctx := t.Context()
	for _, dep := range stallDeployments() {
		for _, outage := range []string{"sigstop", "refused"} {
			t.Run(dep.name+"/"+outage, func(t *testing.T) {
				spec, servers := dep.start(t)
				stalledMine(ctx, t, spec, servers, outage)
			})
		}
	}
}

// stallDeployments are the Redis deployments the stall tests run on: a
// redis-server and a 3-master Redis Cluster, with the servers to stall.
func stallDeployments() []struct {
	name  string
	start func(t *testing.T) (spec string, servers []*phpsessiontest.Redis)
} {
	return []struct {
		name  string
		start func(t *testing.T) (spec string, servers []*phpsessiontest.Redis)
	}{
		{"redis", func(t *testing.T) (string, []*phpsessiontest.Redis) {
			r := phpsessiontest.StartRedis(t)
			return "redis://" + r.Addr, []*phpsessiontest.Redis{r}
		}},
		{"redis-cluster", func(t *testing.T) (string, []*phpsessiontest.Redis) {
			c := phpsessiontest.StartRedisCluster(t, 3)
			var addrs []string
			for _, n := range c.Nodes {
				addrs = append(addrs, n.Addr)
			}
			return "redis-cluster://" + strings.Join(addrs, ","), c.Nodes
		}},
	}
}

// stalledMine is one run of TestClusterLeaseCheckRedisStalled: every
// server of the deployment stalled (sigstop) or stopped (refused).
func stalledMine(ctx context.Context, t *testing.T, spec string, servers []*phpsessiontest.Redis, outage string) {
	a := leaseNode(t, spec, "a", 5*time.Second)
	var sks []string
	for i := range 20 {
		sk := fmt.Sprintf("stalled-%02d-aaaaaaaaaaaaaaaaaaaa", i)
		if res, err := a.take(ctx, sk, nil); err != nil || !res.won {
			t.Fatalf("claim: %+v %v", res, err)
		}
		sks = append(sks, sk)
	}
	// Fresh renewal: no check. Stale, Redis answering: checked, mine.
	a.renewed.Store(time.Now().UnixNano())
	if d, n, _ := timedMine(ctx, a, sks); n != len(sks) {
		t.Fatalf("fresh renewal: %d of %d calls served (%v)", n, len(sks), d)
	}
	a.renewed.Store(0)
	if d, n, _ := timedMine(ctx, a, sks); n != len(sks) {
		t.Fatalf("stale renewal, Redis answering: %d of %d calls served (%v)", n, len(sks), d)
	}
	for _, r := range servers {
		switch outage {
		case "sigstop":
			phpsessiontest.Stall(t, r)
		case "refused":
			r.Stop()
		}
	}
	// Woken from a pause: no renewal for three TTLs, and the process did
	// not run (watchPauses saw the gap), or has not looked at the clock
	// since (it is waking now).
	for _, woken := range []struct {
		name        string
		woke, pulse time.Time
	}{
		{"the gap seen", time.Now(), time.Now()},
		{"the clock not looked at since", time.Time{}, time.Now().Add(-3 * a.ls.ttl)},
	} {
		a.renewed.Store(time.Now().Add(-3 * a.ls.ttl).UnixNano())
		a.woke.Store(0)
		if !woken.woke.IsZero() {
			a.woke.Store(woken.woke.UnixNano())
		}
		a.pulse.Store(woken.pulse.UnixNano())
		d, n, refused := timedMine(ctx, a, sks)
		t.Logf("%s, woken from a pause (%s): longest call %v", outage, woken.name, d)
		if n != 0 || refused != len(sks) {
			t.Errorf("%s, woken from a pause (%s): %d of %d calls served, %d refused: want all refused", outage, woken.name, n, len(sks), refused)
		}
		if d > a.ls.ttl/3+time.Second {
			t.Errorf("%s, woken from a pause (%s): a call waited %v for the lease check", outage, woken.name, d)
		}
		if len(a.held) != len(sks) {
			t.Errorf("%s, woken from a pause (%s): %d leases left of %d; Redis said none was lost", outage, woken.name, len(a.held), len(sks))
		}
	}
	// The outage: renewals stale, the process running all along.
	a.renewed.Store(time.Now().Add(-3 * a.ls.ttl).UnixNano())
	a.woke.Store(0)
	a.pulse.Store(time.Now().UnixNano())
	for _, round := range []struct {
		name string
		sks  []string
	}{
		{"one call", sks[:1]},
		{"20 sessions at once", sks},
		{"20 calls of one session", func() []string {
			one := make([]string, 20)
			for i := range one {
				one[i] = sks[1]
			}
			return one
		}()},
	} {
		d, n, _ := timedMine(ctx, a, round.sks)
		t.Logf("%s, %s: longest call %v", outage, round.name, d)
		if n != len(round.sks) {
			t.Errorf("%s, %s: %d of %d calls served", outage, round.name, n, len(round.sks))
		}
		if d > time.Second {
			t.Errorf("%s, %s: a call waited %v for the lease check", outage, round.name, d)
		}
	}
}

// TestClusterLeaseCheckTakenOver: the bound on the lease check keeps what
// the check is for. An owner whose renewals stopped (frozen past its TTL)
// while another node took its session over, asked with Redis answering,
// serves none of 20 calls at once, and drops the lease before answering.
func TestClusterLeaseCheckTakenOver(t *testing.T) {
	ctx := t.Context()
	for _, tc := range redisSpecs() {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec(t)
			const ttl = time.Second
			a, b := leaseNode(t, spec, "a", ttl), leaseNode(t, spec, "b", ttl)
			sk := "taken-over-aaaaaaaaaaaaaaaaaaaaa"
			res, err := a.take(ctx, sk, nil)
			if err != nil || !res.won {
				t.Fatalf("a's claim: %+v %v", res, err)
			}
			a.renewed.Store(time.Now().UnixNano())
			if ok, err := a.mine(ctx, sk); !ok || err != nil {
				t.Fatal("a's own session, renewals current: not served")
			}
			a.renewed.Store(0) // frozen: no renewal since
			time.Sleep(ttl + 200*time.Millisecond)
			if rb, err := b.ls.claimExpired(ctx, sk, res.lease); err != nil || !rb.won {
				t.Fatalf("b's claim of the expired lease: %+v %v", rb, err)
			}
			calls := make([]string, 20)
			for i := range calls {
				calls[i] = sk
			}
			if d, n, _ := timedMine(ctx, a, calls); n != 0 {
				t.Fatalf("the woken owner served %d of %d calls of a session b took (%v)", n, len(calls), d)
			}
			if _, held := a.holds(sk); held {
				t.Fatal("the woken owner still holds a lease b took")
			}
		})
	}
}

// TestClusterRedisStalledBounds: with every redis-server stalled
// (SIGSTOP), each Redis operation of the cluster ends within its bound,
// not go-redis's read timeout times its retries. A renewal pass, the 20
// idle leases it gives back included, ends within a third of the TTL
// (the old code: 42 s, 2 s a lease given back, far past a 1.5 s lease's
// expiry); a claim and an owner lookup made for a user's call with no
// deadline of their own, within redisOpTimeout (8.1 s before on a Redis
// Cluster); the release of 20 leases at shutdown stops at the first that
// Redis does not answer (the old code waited out the shutdown's 10 s).
// Bounds asserted with room: behaviours, not speed goals.
func TestClusterRedisStalledBounds(t *testing.T) {
	ctx := t.Context()
	for _, dep := range stallDeployments() {
		t.Run(dep.name, func(t *testing.T) {
			spec, servers := dep.start(t)
			const ttl = 1500 * time.Millisecond
			a := leaseNode(t, spec, "a", ttl)
			a.peer = &http.Client{}
			// 20 leases claimed by calls that opened no stream, a TTL
			// ago (the pass gives them back), and 20 fresh ones.
			for _, group := range []string{"idle", "bounds"} {
				for i := range 20 {
					sk := fmt.Sprintf("%s-%02d-aaaaaaaaaaaaaaaaaaaaaa", group, i)
					if res, err := a.take(ctx, sk, nil); err != nil || !res.won {
						t.Fatalf("claim: %+v %v", res, err)
					}
				}
				if group == "idle" {
					time.Sleep(ttl + 100*time.Millisecond)
				}
			}
			phpsessiontest.Stall(t, servers...)
			timed := func(what string, bound time.Duration, f func()) {
				t.Helper()
				start := time.Now()
				f()
				d := time.Since(start)
				t.Logf("%s: %v", what, d.Round(time.Millisecond))
				if d > bound {
					t.Errorf("%s took %v with Redis stalled, over %v", what, d, bound)
				}
			}
			timed("a renewal pass", ttl, func() { a.renew(ctx) })
			if n := len(a.held); n != 20 {
				t.Errorf("the renewal pass left %d leases in the table, want the 20 fresh ones", n)
			}
			timed("a claim for a user's call", 3*time.Second, func() {
				if _, err := a.take(ctx, "bounds-new-aaaaaaaaaaaaaaaaaaaaaaa", nil); err == nil {
					t.Error("a claim on a stalled Redis succeeded")
				}
			})
			timed("an owner lookup for a BOSH request", 3*time.Second, func() {
				if _, _, err := a.ls.owner(ctx, "bounds-00-aaaaaaaaaaaaaaaaaaaaaa"); err == nil {
					t.Error("an owner lookup on a stalled Redis succeeded")
				}
			})
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			timed("the release of 20 leases at shutdown", 5*time.Second, func() { a.stop(sctx) })
		})
	}
}

// TestClusterRenewSlowRedis: on a Redis slow to answer (every reply
// 150 ms late, as on an overloaded machine), a renewal pass renews the
// node's leases even when it also has leases to give back. The old pass
// gave idle leases back one round trip each before renewing, spent its
// third of the TTL on them, and the renewal then failed at once: the
// sessions' leases expired and the other nodes took them over (rolling
// SIGTERM at 2,000 users).
func TestClusterRenewSlowRedis(t *testing.T) {
	ctx := t.Context()
	r := phpsessiontest.StartRedis(t)
	proxy := startSlowProxy(t, r.Addr)
	const ttl = 3 * time.Second // a pass has 1 s
	a := leaseNode(t, "redis://"+proxy.addr, "a", ttl)
	var idle, fresh []string
	for _, group := range []string{"idle", "fresh"} {
		for i := range 12 {
			sk := fmt.Sprintf("%s-%02d-aaaaaaaaaaaaaaaaaaaaaa", group, i)
			if res, err := a.take(ctx, sk, nil); err != nil || !res.won {
				t.Fatalf("claim: %+v %v", res, err)
			}
			if group == "idle" {
				idle = append(idle, sk)
			} else {
				fresh = append(fresh, sk)
			}
		}
		if group == "idle" {
			time.Sleep(ttl + 100*time.Millisecond) // claimed a TTL ago by calls that opened no stream
		}
	}
	proxy.delay.Store(int64(150 * time.Millisecond))
	before := a.renewed.Load()
	a.renew(ctx)
	if a.renewed.Load() == before {
		t.Fatal("the renewal pass did not renew the leases (Redis answers, 150 ms late)")
	}
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	for _, sk := range fresh {
		if d, err := rdb.PTTL(ctx, leaseKey(sk)).Result(); err != nil || d < ttl-time.Second {
			t.Errorf("lease of %s: TTL %v %v after the pass, want about %v", sk[:8], d, err, ttl)
		}
	}
	for _, sk := range idle {
		if n, err := rdb.Exists(ctx, leaseKey(sk)).Result(); err != nil || n != 0 {
			t.Errorf("idle lease of %s still in Redis (%d, %v), want given back", sk[:8], n, err)
		}
	}
	if n := len(a.held); n != len(fresh) {
		t.Errorf("%d leases in the table after the pass, want the %d fresh ones", n, len(fresh))
	}
}

// slowProxy relays TCP to a server and holds each chunk of the server's
// replies for delay first.
type slowProxy struct {
	addr  string
	delay atomic.Int64 // nanoseconds
}

func startSlowProxy(t *testing.T, upstream string) *slowProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &slowProxy{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Go(func() { io.Copy(s, c); s.Close() })
			wg.Go(func() {
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 {
						time.Sleep(time.Duration(p.delay.Load()))
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			})
		}
	})
	return p
}

// TestClusterRenewPoolBusy: a renewal pass renews while every connection
// of the node's shared pool is taken (by slow state writes and lookups on
// an overloaded machine; here by blocking pops), for the renewals and the
// heartbeat have connections of their own (leaseStore.beat). On the
// shared pool the pass waited for a connection past its third of the
// TTL, and the leases expired.
func TestClusterRenewPoolBusy(t *testing.T) {
	ctx := t.Context()
	r := phpsessiontest.StartRedis(t)
	spec := "redis://" + r.Addr
	const ttl = 3 * time.Second
	a := leaseNode(t, spec, "a", ttl)
	beat, err := clusterRedis(spec, beatPoolSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { beat.Close() })
	a.ls.beat = beat
	for i := range 5 {
		if res, err := a.take(ctx, fmt.Sprintf("busy-%02d-aaaaaaaaaaaaaaaaaaaaaa", i), nil); err != nil || !res.won {
			t.Fatalf("claim: %+v %v", res, err)
		}
	}
	shared := a.rdb.(*redis.Client)
	bctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for range shared.Options().PoolSize {
		wg.Go(func() { shared.BLPop(bctx, 2*time.Second, "nothing-comes") })
	}
	for shared.PoolStats().TotalConns < uint32(shared.Options().PoolSize) || shared.PoolStats().IdleConns > 0 {
		time.Sleep(5 * time.Millisecond)
	}
	before := a.renewed.Load()
	a.renew(ctx)
	if a.renewed.Load() == before {
		t.Fatal("the renewal pass did not renew with the shared pool busy")
	}
}

// TestClusterPipelinesRedisGone: with the Redis server gone (connection
// refused), every pipelined script of the cluster fails: a renewal pass,
// the release of many leases, a batch of state writes. go-redis left a
// pipeline's commands with neither a value nor an error once its retries
// of the dial ran out, and on a redis-server the old code read that as
// leases renewed and released: through such an outage the node took its
// renewals for current.
func TestClusterPipelinesRedisGone(t *testing.T) {
	ctx := t.Context()
	for _, dep := range stallDeployments() {
		t.Run(dep.name, func(t *testing.T) {
			spec, servers := dep.start(t)
			a := leaseNode(t, spec, "a", 5*time.Second)
			held := map[string]lease{}
			for i := range 3 {
				sk := fmt.Sprintf("gone-%02d-aaaaaaaaaaaaaaaaaaaaaaaa", i)
				res, err := a.take(ctx, sk, nil)
				if err != nil || !res.won {
					t.Fatalf("claim: %+v %v", res, err)
				}
				held[sk] = res.lease
			}
			for _, r := range servers {
				r.Stop()
			}
			if lost, err := a.ls.renew(ctx, held); !errors.Is(err, ErrClusterRedis) || len(lost) != 0 {
				t.Errorf("renewal with Redis gone: lost %v, err %v; want ErrClusterRedis", lost, err)
			}
			if err := a.ls.releaseAll(ctx, held); !errors.Is(err, ErrClusterRedis) {
				t.Errorf("release with Redis gone: %v; want ErrClusterRedis", err)
			}
			batch := []*stateCall{{keys: []string{"{gone}a"}, args: []any{"x"}}, {keys: []string{"{gone}b"}, args: []any{"x"}}}
			execState(a.rdb, batch)
			for i, c := range batch {
				if c.err == nil {
					t.Errorf("state write %d with Redis gone: answered %d, no error", i, c.n)
				}
			}
		})
	}
}

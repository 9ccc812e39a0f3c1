package sidecar

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
)

// TestSealer: a PHP session id sealed for the orphan index opens only with
// the cluster's secret and for the session it was sealed for; anything
// else read from Redis is refused.
func TestSealer(t *testing.T) {
	s := newSealer("0123456789abcdef-secret")
	id := "php-session-id-0123456789abcdef"
	sk := sessionKey(id)
	sealed := s.seal(sk, id)
	if strings.Contains(sealed, id) {
		t.Fatalf("the sealed form shows the id: %q", sealed)
	}
	if got, err := s.open(sk, sealed); err != nil || got != id {
		t.Fatalf("open: %q %v", got, err)
	}
	if again := s.seal(sk, id); again == sealed {
		t.Errorf("two seals of one id are equal: the nonce is not fresh")
	}
	other := "another-php-session-id-456789"
	for _, tc := range []struct {
		name, sk, sealed string
		s                *sealer
	}{
		{"another secret", sk, sealed, newSealer("another-secret-0123456")},
		{"moved to another session", sessionKey(other), sealed, s},
		{"sealed for another session's key", sk, s.seal(sk, other), s},
		{"one byte changed", sk, sealed[:len(sealed)-2] + "AA", s},
		{"truncated", sk, sealed[:10], s},
		{"not base64", sk, "!!!!", s},
		{"empty", sk, "", s},
		{"oversized", sk, strings.Repeat("A", 2000), s},
	} {
		if got, err := tc.s.open(tc.sk, tc.sealed); err == nil {
			t.Errorf("%s: opened as %q", tc.name, got)
		}
	}
}

// FuzzSealedOpen: an index entry read from Redis never panics the opener,
// and what opens is an id whose key is the session's.
func FuzzSealedOpen(f *testing.F) {
	s := newSealer("fuzz-secret-0123456789")
	id := "fuzz-session-id-0123456789"
	sk := sessionKey(id)
	f.Add(sk, s.seal(sk, id))
	f.Add(sk, "")
	f.Add("x", "AAAA")
	f.Fuzz(func(t *testing.T, sk, sealed string) {
		got, err := s.open(sk, sealed)
		if err == nil && sessionKey(got) != sk {
			t.Fatalf("opened %q for a session whose key is not %s", got, sk)
		}
	})
}

// TestRendezvous: every node computes the same owner for an orphan; the
// orphans spread over the live nodes; when a node leaves, only its share
// moves.
func TestRendezvous(t *testing.T) {
	three := []string{"web1|a1", "web2|b2", "web3|c3"}
	two := []string{"web1|a1", "web3|c3"}
	count := map[string]int{}
	moved := 0
	for i := range 3000 {
		sk := sessionKey(fmt.Sprintf("session-%d", i))
		a := rendezvous(three, sk)
		if b := rendezvous([]string{three[2], three[0], three[1]}, sk); b != a {
			t.Fatalf("the order of the live list changed the pick: %s, %s", a, b)
		}
		count[a]++
		if c := rendezvous(two, sk); c != a {
			moved++
			if a != "web2|b2" {
				t.Fatalf("%s moved from %s to %s though %s stayed", sk[:8], a, c, a)
			}
		}
	}
	for _, m := range three {
		if count[m] < 800 || count[m] > 1200 {
			t.Errorf("%s got %d of 3000 orphans", m, count[m])
		}
	}
	if moved != count["web2|b2"] {
		t.Errorf("%d moved, web2 had %d", moved, count["web2|b2"])
	}
	if rendezvous(nil, "x") != "" {
		t.Errorf("no live node picked someone")
	}
}

// TestOrphanIndex runs the index and the adoption against a real Redis
// and a 3-master Redis Cluster: the owner's fenced mark indexes an online
// session under its incarnation and removes it when offline; a stale
// lease writes nothing; a survivor adopts a dead incarnation's entry once
// its lease expired, atomically with the lease; an entry whose session another node holds,
// or marked since by a newer owner, is dropped, not adopted.
func TestOrphanIndex(t *testing.T) {
	for _, tc := range redisSpecs() {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec(t)
			store := func(node string) *leaseStore { return testLeaseStore(t, spec, node, 2*time.Second) }
			a, b, c := store("a"), store("b"), store("c")
			seal := newSealer("index-secret-0123456789")
			ctx := t.Context()
			entries := func(ls *leaseStore, sk string) map[string]string {
				m, err := ls.rdb.HGetAll(ctx, indexKey(partitionOf(sk), ls.self.member())).Result()
				if err != nil {
					t.Fatal(err)
				}
				return m
			}
			for i, id := range []string{"one-session-id-aaaaaaaaaaaaaa", "two-session-id-bbbbbbbbbbbbbb", "three-session-id-ccccccccccc", "five-session-id-eeeeeeeeeeee", "six-session-id-ffffffffffffff"} {
				sk := sessionKey(id)
				ra, err := a.claim(ctx, sk, nil)
				if err != nil || !ra.won {
					t.Fatalf("claim: %+v %v", ra, err)
				}
				if ok, err := a.markSealed(ctx, sk, ra.lease, true, seal.seal(sk, id)); err != nil || !ok {
					t.Fatalf("mark: %v %v", ok, err)
				}
				e := entries(a, sk)[sk]
				if tok, sealed, _ := strings.Cut(e, "|"); tok != fmt.Sprint(ra.lease.token) {
					t.Fatalf("index entry %q, want token %d", e, ra.lease.token)
				} else if got, err := seal.open(sk, sealed); err != nil || got != id {
					t.Fatalf("the indexed id: %q %v", got, err)
				}
				// A mark without an id keeps the indexed one.
				if ok, err := a.mark(ctx, sk, ra.lease, true); err != nil || !ok || entries(a, sk)[sk] != e {
					t.Fatalf("a mark without id changed the entry: %v %v %q", ok, err, entries(a, sk)[sk])
				}
				// b, not the owner, cannot index or unindex it.
				forged := lease{token: ra.lease.token, node: "b", incarnation: "i-b", peer: "127.0.0.1:1"}
				if ok, err := b.markSealed(ctx, sk, forged, true, seal.seal(sk, id)); err != nil || ok || len(entries(b, sk)) != 0 {
					t.Fatalf("a forged lease indexed the session: %v %v", ok, err)
				}
				dead := a.self
				switch i {
				case 0:
					// a dies holding it: while its lease lasts (or it
					// woke and renewed it), nobody adopts it and the entry
					// stays; once the lease expired (deleted here, as its
					// TTL does: the meta hash still names a), c adopts it,
					// once.
					if ad, err := c.adopt(ctx, sk, dead); err != nil || ad.won || ad.why != "held" {
						t.Fatalf("adopted a session whose lease is still held: %+v %v", ad, err)
					}
					if _, ok := entries(a, sk)[sk]; !ok {
						t.Fatalf("a held session's entry was dropped")
					}
					if err := a.rdb.Del(ctx, keysOf(sk).lease).Err(); err != nil {
						t.Fatal(err)
					}
					ad, err := c.adopt(ctx, sk, dead)
					if err != nil || !ad.won || ad.lease.node != "c" || ad.lease.token <= ra.lease.token || ad.sealed == "" {
						t.Fatalf("adopt: %+v %v", ad, err)
					}
					if _, ok := entries(a, sk)[sk]; ok {
						t.Fatalf("the dead node's entry is still there")
					}
					if _, ok := entries(c, sk)[sk]; !ok {
						t.Fatalf("the entry did not move to c's index")
					}
					if again, err := b.adopt(ctx, sk, dead); err != nil || again.won || again.why != "gone" {
						t.Fatalf("a second adoption: %+v %v", again, err)
					}
					// The woken old owner can neither write nor unindex.
					if ok, err := a.mark(ctx, sk, ra.lease, false); err != nil || ok {
						t.Fatalf("the old owner wrote: %v %v", ok, err)
					}
					if _, ok := entries(c, sk)[sk]; !ok {
						t.Fatalf("the old owner removed c's entry")
					}
				case 1:
					// b took it over on a call first: the entry is dropped.
					rb, err := b.claim(ctx, sk, &ra.lease)
					if err != nil || !rb.won {
						t.Fatalf("takeover: %+v %v", rb, err)
					}
					if ad, err := c.adopt(ctx, sk, dead); err != nil || ad.won || ad.why != "moved" {
						t.Fatalf("adopted a session b holds: %+v %v", ad, err)
					}
					if cur, _, _ := c.owner(ctx, sk); cur != rb.lease {
						t.Fatalf("the lease changed: %v", cur)
					}
				case 2:
					// a gave it back (a hand-over), then a newer owner
					// marked it and let it go: the entry is stale.
					if ok, err := a.release(ctx, sk, ra.lease); err != nil || !ok {
						t.Fatalf("a's release: %v %v", ok, err)
					}
					rb, err := b.claim(ctx, sk, nil)
					if err != nil || !rb.won {
						t.Fatal(err)
					}
					if ok, err := b.mark(ctx, sk, rb.lease, false); err != nil || !ok {
						t.Fatal(err)
					}
					if ok, err := b.release(ctx, sk, rb.lease); err != nil || !ok {
						t.Fatalf("b's release: %v %v", ok, err)
					}
					if ad, err := c.adopt(ctx, sk, dead); err != nil || ad.won || ad.why != "offline" {
						t.Fatalf("adopted a session marked offline since: %+v %v", ad, err)
					}
				case 3, 4:
					// b claimed it after a gave it back (3: a hand-over
					// whose time ran out) or took it over from the dead a
					// (4), and b's lease lapsed while b, loaded, was still
					// logging the user in (not marked online yet): the
					// adoption must not claim it too, two nodes resuming
					// one XMPP session. Once b's renewal sets its lease
					// again, the entry is dropped as moved.
					var expected *lease
					if i == 3 {
						if ok, err := a.release(ctx, sk, ra.lease); err != nil || !ok {
							t.Fatalf("a's release: %v %v", ok, err)
						}
					} else {
						expected = &ra.lease
					}
					rb, err := b.claim(ctx, sk, expected)
					if err != nil || !rb.won {
						t.Fatalf("b's claim: %+v %v", rb, err)
					}
					if err := a.rdb.Del(ctx, keysOf(sk).lease).Err(); err != nil {
						t.Fatal(err)
					}
					if ad, err := c.adopt(ctx, sk, dead); err != nil || ad.won || ad.why != "held" {
						t.Fatalf("adopted a session b claimed, its lease lapsed: %+v %v", ad, err)
					}
					if _, ok := entries(a, sk)[sk]; !ok {
						t.Fatalf("the entry was dropped while b's lease was lapsed")
					}
					if lost, err := b.renew(ctx, map[string]lease{sk: rb.lease}); err != nil || len(lost) != 0 {
						t.Fatalf("b's renewal of its lapsed lease: lost %v, %v", lost, err)
					}
					if ad, err := c.adopt(ctx, sk, dead); err != nil || ad.won || ad.why != "moved" {
						t.Fatalf("adopt after b's renewal: %+v %v", ad, err)
					}
					if cur, _, _ := c.owner(ctx, sk); cur != rb.lease {
						t.Fatalf("the lease changed: %v", cur)
					}
				}
			}
			// Offline removes the owner's entry.
			sk := sessionKey("four-session-id-ddddddddddd")
			ra, _ := a.claim(ctx, sk, nil)
			a.markSealed(ctx, sk, ra.lease, true, seal.seal(sk, "four-session-id-ddddddddddd"))
			if ok, err := a.mark(ctx, sk, ra.lease, false); err != nil || !ok || len(entries(a, sk)) != 0 {
				t.Fatalf("offline left the entry: %v %v %v", ok, err, entries(a, sk))
			}
		})
	}
}

// orphanRig is a dead node "a" holding one session online (its orphan
// index entry sealed), whose peer port accepts and never answers (a
// frozen node's kernel), and a survivor "b" on spec that has seen a alive
// once; a is then frozen (its liveness key and lease gone) and b's Redis
// has answered for a whole TTL. The user has logged out meanwhile, so
// b's adoption marks them offline.
func orphanRig(t *testing.T, redisAddr, spec string, ttl time.Duration) (dead *leaseStore, b *cluster, sk string) {
	t.Helper()
	ctx := t.Context()
	frozen, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	t.Cleanup(func() { frozen.Close(); held.Wait() })
	held.Go(func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := frozen.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	})
	dead = testLeaseStore(t, "redis://"+redisAddr, "a", ttl)
	dead.self.peer = frozen.Addr().String()
	seal := newSealer("sweep-secret-0123456789")
	const id = "orphaned-session-id-aaaaaaaaaaa"
	sk = sessionKey(id)
	ra, err := dead.claim(ctx, sk, nil)
	if err != nil || !ra.won {
		t.Fatalf("claim: %+v %v", ra, err)
	}
	if ok, err := dead.markSealed(ctx, sk, ra.lease, true, seal.seal(sk, id)); err != nil || !ok {
		t.Fatalf("mark: %v %v", ok, err)
	}
	me := dead.self.member()
	if err := dead.rdb.Set(ctx, nodeKeyPrefix+me, dead.self.peer, 0).Err(); err != nil {
		t.Fatal(err)
	}
	b = leaseNode(t, spec, "b", ttl)
	b.sealer = seal
	b.peer = &http.Client{}
	b.orphans = &orphans{cl: b, sem: make(chan struct{}, adoptionsInFlight), busy: map[string]bool{}, stopped: make(chan struct{})}
	b.reg.reader = &fakeReader{sessions: map[string]*phpsession.Session{}, errs: map[string]error{id: phpsession.ErrNotLoggedIn}}
	var wg sync.WaitGroup
	b.orphans.tick(ctx, &wg) // a is alive: b learns its peer address
	if err := dead.rdb.SAdd(ctx, nodesKey, me).Err(); err != nil {
		t.Fatal(err)
	}
	b.orphans.tick(ctx, &wg)
	wg.Wait()
	if err := dead.rdb.Del(ctx, nodeKeyPrefix+me, keysOf(sk).lease).Err(); err != nil {
		t.Fatal(err)
	}
	b.orphans.okSince = time.Now().Add(-ttl)
	return dead, b, sk
}

// wantAdopted fails the test unless b adopted the orphan sk of dead (the
// entry left dead's index, the logged-out user marked offline).
func wantAdopted(t *testing.T, dead *leaseStore, sk string) {
	t.Helper()
	ctx := t.Context()
	if n, err := dead.rdb.HExists(ctx, indexKey(partitionOf(sk), dead.self.member()), sk).Result(); err != nil || n {
		t.Fatalf("the frozen node's index still holds the session (%v, %v): its sweep read nothing", n, err)
	}
	if on, err := dead.rdb.HGet(ctx, keysOf(sk).meta, "on").Result(); err != nil || on != "0" {
		t.Errorf("the adopted session of a logged-out user: on=%q %v, want 0", on, err)
	}
}

// TestOrphanSweepAfterSilentPeer: a node frozen (SIGSTOP), not killed,
// does not answer the liveness question its survivors ask before they
// resume its sessions (askDead), and the question takes peerAskTimeout
// out of their pass. The sweep of its index must still have time for
// Redis: it shared the heartbeat's third of the TTL, the ask spent it,
// and on a loaded machine (2,000 users) the survivors read the frozen
// node's index in one pass of three and resumed few of its idle users
// (issue 20 item 3). Here Redis answers each round trip 150 ms late: the
// heartbeat, the liveness keys and the ask leave the old shared bound
// nothing.
func TestOrphanSweepAfterSilentPeer(t *testing.T) {
	r := phpsessiontest.StartRedis(t)
	proxy := startSlowProxy(t, r.Addr)
	dead, b, sk := orphanRig(t, r.Addr, "redis://"+proxy.addr, 2*time.Second)
	proxy.delay.Store(int64(150 * time.Millisecond))
	var wg sync.WaitGroup
	b.orphans.tick(t.Context(), &wg)
	wg.Wait()
	proxy.delay.Store(0)
	wantAdopted(t, dead, sk)
}

// TestOrphanSweepPoolBusy: a survivor whose shared Redis pool is taken
// (by the calls of a takeover storm; here by blocking pops for a second)
// still reads the nodes' liveness keys and a dead node's index, on the
// connections of its heartbeat (leaseStore.beat), and adopts the orphan
// once a connection is free. On the shared pool the pass's reads waited
// past their third of the TTL at 2,000 users, pass after pass, and no
// orphan was adopted (issue 20 item 3).
func TestOrphanSweepPoolBusy(t *testing.T) {
	ctx := t.Context()
	r := phpsessiontest.StartRedis(t)
	spec := "redis://" + r.Addr
	dead, b, sk := orphanRig(t, r.Addr, spec, 2*time.Second)
	beat, err := clusterRedis(spec, beatPoolSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { beat.Close() })
	b.ls.beat = beat
	shared := b.rdb.(*redis.Client)
	var busy sync.WaitGroup
	for range shared.Options().PoolSize {
		busy.Go(func() { shared.BLPop(ctx, time.Second, "nothing-comes") })
	}
	for shared.PoolStats().TotalConns < uint32(shared.Options().PoolSize) || shared.PoolStats().IdleConns > 0 {
		time.Sleep(5 * time.Millisecond)
	}
	var wg sync.WaitGroup
	b.orphans.tick(ctx, &wg)
	wg.Wait()
	busy.Wait()
	wantAdopted(t, dead, sk)
}

// TestHandoffGate: the peer listener's gate ends the forwarded polls when
// the hand-over starts, lets a call being served finish, and answers a
// call arriving during the hand-over 409 not_owner as soon as its own
// session is handed over, or once the hand-over is over for a session it
// does not hand over.
func TestHandoffGate(t *testing.T) {
	cl := &cluster{handoff: newHandoff()}
	served := make(chan string, 4)
	release := make(chan struct{})
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/events" {
			<-r.Context().Done()
			served <- "poll ended"
			return
		}
		<-release
		served <- "send served"
		w.WriteHeader(http.StatusAccepted)
	})
	srv := httptest.NewServer(cl.handoffGate(inner))
	defer srv.Close()
	endHandoff := sync.OnceFunc(func() { close(cl.handoff.done) })
	defer endHandoff() // before srv.Close: no call left waiting
	get := func(method, path string, sid ...string) chan int {
		ch := make(chan int, 1)
		go func() {
			req, _ := http.NewRequestWithContext(t.Context(), method, srv.URL+path, nil)
			if len(sid) > 0 {
				req.Header.Set("X-Session-Id", sid[0])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				ch <- 0
				return
			}
			resp.Body.Close()
			ch <- resp.StatusCode
		}()
		return ch
	}
	poll := get("GET", "/v1/events")
	send := get("POST", "/v1/messages")
	time.Sleep(100 * time.Millisecond)
	h := cl.handoff
	handed := make(chan struct{})
	h.mu.Lock()
	h.on = true
	h.pending = map[string]chan struct{}{sessionKey("handed-session-id-aaaaaaaaaa"): handed}
	h.mu.Unlock()
	h.endPolls()
	if got := <-served; got != "poll ended" {
		t.Fatalf("first: %s", got)
	}
	if st := <-poll; st != http.StatusOK {
		t.Fatalf("the forwarded poll: %d", st)
	}
	late := get("GET", "/v1/roster")
	lateHanded := get("GET", "/v1/roster", "handed-session-id-aaaaaaaaaa")
	lateOther := get("GET", "/v1/roster", "another-session-id-bbbbbbbbbb")
	drained := make(chan struct{})
	go func() { h.inflight.Wait(); close(drained) }()
	select {
	case <-drained:
		t.Fatal("the hand-over did not wait for the send being served")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	<-drained
	if st := <-send; st != http.StatusAccepted {
		t.Fatalf("the send: %d", st)
	}
	select {
	case st := <-late:
		t.Fatalf("a call during the hand-over was answered %d before its end", st)
	case st := <-lateHanded:
		t.Fatalf("a call for a session being handed over was answered %d before its lease was given back", st)
	case <-time.After(100 * time.Millisecond):
	}
	close(handed) // its lease is given back; the others are still being handed over
	select {
	case st := <-lateHanded:
		if st != http.StatusConflict {
			t.Fatalf("a call for a session handed over: %d, want 409 not_owner", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a call for a session handed over waited for the whole hand-over")
	}
	select {
	case st := <-lateOther:
		t.Fatalf("a call for a session not handed over was answered %d before the end", st)
	case <-time.After(100 * time.Millisecond):
	}
	endHandoff()
	for _, ch := range []chan int{late, lateOther} {
		if st := <-ch; st != http.StatusConflict {
			t.Fatalf("a call during the hand-over: %d, want 409 not_owner", st)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/roster", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 512)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	if resp.StatusCode != http.StatusConflict || !strings.Contains(b.String(), `"not_owner"`) {
		t.Fatalf("after the hand-over: %d %s", resp.StatusCode, b.String())
	}
}

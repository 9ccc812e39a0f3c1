package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"

	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// stateNode is one node's side of the state scripts, on the Redis spec.
func stateNode(t *testing.T, spec, node string) *cluster {
	t.Helper()
	return leaseNode(t, spec, node, 5*time.Second)
}

// stateSession is a session on node cl, its state loaded from Redis.
func stateSession(t *testing.T, cl *cluster, sk, user string) (*session, *xmppconn.ResumeState) {
	t.Helper()
	s := &session{key: sk, short: sk[:8], user: user, presence: map[string][]presenceInfo{}}
	st, err := cl.durable(t.Context(), s, func() *eventLog { return cl.reg.mem.newLog(1000, 4<<20, nil) })
	if err != nil {
		t.Fatal(err)
	}
	return s, st
}

// ownedSession takes sk's lease on node cl, failing unless it is won,
// and loads user's session there.
func ownedSession(t *testing.T, cl *cluster, sk, user string) (*session, lease) {
	t.Helper()
	r, err := cl.take(t.Context(), sk, nil)
	if err != nil || !r.won {
		t.Fatalf("%s's claim: %+v %v", cl.ls.self.node, r, err)
	}
	s, _ := stateSession(t, cl, sk, user)
	return s, r.lease
}

// testLeaseStore is node's lease store on the Redis spec, leases lasting
// ttl; its client closes with the test.
func testLeaseStore(t *testing.T, spec, node string, ttl time.Duration) *leaseStore {
	t.Helper()
	rdb, err := clusterRedis(spec, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	return &leaseStore{rdb: rdb, ttl: ttl, metaTTL: time.Minute,
		self: lease{node: node, incarnation: "i-" + node, peer: "127.0.0.1:1"}}
}

// flushScripts empties the script cache of every Redis node behind rdb,
// as a restart does: the next EVALSHA of each script is answered NOSCRIPT.
func flushScripts(t *testing.T, rdb redis.UniversalClient) {
	t.Helper()
	ctx := t.Context()
	err := rdb.ScriptFlush(ctx).Err()
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error { return c.ScriptFlush(ctx).Err() })
	}
	if err != nil {
		t.Fatal(err)
	}
}

// redisSpecs are the two Redis deployments every cluster script test runs
// on: a single Redis and a 3-master Redis Cluster.
func redisSpecs() []struct {
	name string
	spec func(t *testing.T) string
} {
	return []struct {
		name string
		spec func(t *testing.T) string
	}{
		{"redis", func(t *testing.T) string { return "redis://" + phpsessiontest.StartRedis(t).Addr }},
		{"redis-cluster", func(t *testing.T) string {
			c := phpsessiontest.StartRedisCluster(t, 3)
			var addrs []string
			for _, n := range c.Nodes {
				addrs = append(addrs, n.Addr)
			}
			return "redis-cluster://" + strings.Join(addrs, ",")
		}},
	}
}

func chatStanza(i int) []byte {
	return []byte(`<message to="bob@example.org" type="chat" id="m` + strconv.Itoa(i) + `"><body>hi ` + strconv.Itoa(i) + `</body></message>`)
}

// TestClusterState runs the state scripts against a real Redis and a real
// 3-master Redis Cluster: the owner's XEP-0198 state, event log and
// contacts' presences come back whole on the node that takes the session
// over, at the same offsets under a new epoch that takes the earlier
// one's cursors; a stanza's events are seen only
// once written with its count; a forged lease, an old token or another
// node's lease writes nothing.
func TestClusterState(t *testing.T) {
	for _, tc := range redisSpecs() {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec(t)
			a, b := stateNode(t, spec, "a"), stateNode(t, spec, "b")
			ctx := t.Context()
			for _, id := range []string{"state-one-aaaaaaaaaaaaaaa", "state-two-bbbbbbbbbbbbbbbbb", "state-three-cccccccccccc"} {
				sk := sessionKey(id)
				ra, err := a.take(ctx, sk, nil)
				if err != nil || !ra.won {
					t.Fatalf("a's claim: %+v %v", ra, err)
				}
				s, st := stateSession(t, a, sk, "alice")
				if st != nil || s.durable == nil || !s.durable.newLog {
					t.Fatalf("a new session: state %v, store %+v", st, s.durable)
				}
				s.appendState(xmppconn.StateConnecting, "")
				cs := s.durable
				want := xmppconn.ResumeState{V: 1, JID: "alice@example.org/web-" + sk[:8], ID: "sm-" + sk[:6], Max: 300}
				if err := cs.Save(want); err != nil {
					t.Fatal(err)
				}
				// A stanza's events wait for its count.
				head := s.log.head()
				s.trackPresence(&xmppconn.Presence{From: "bob@example.org/desk", Show: "away"})
				cs.notePresence("bob@example.org/desk", s.presenceAt("bob@example.org/desk"))
				s.appendJSON("presence", presenceEvent{From: "bob@example.org/desk", Type: "available", Show: "away"})
				if !s.appendJSONOnce("message", "k1", messageJSON{From: "bob@example.org/desk", ID: "1", Body: "one"}) {
					t.Fatal("message refused")
				}
				if s.appendJSONOnce("message", "k1", messageJSON{From: "bob@example.org/desk", ID: "1", Body: "one"}) {
					t.Fatal("a duplicate pending message was taken")
				}
				if got := s.log.head(); got != head {
					t.Fatalf("a stanza's events were seen before its count was written: head %v, was %v", got, head)
				}
				if err := cs.Handled(1); err != nil {
					t.Fatal(err)
				}
				if got := s.log.head(); got.offset != head.offset+2 {
					t.Fatalf("after the count: head %v, was %v", got, head)
				}
				for i := range 3 {
					if err := cs.Sent(chatStanza(i)); err != nil {
						t.Fatal(err)
					}
				}
				if err := cs.Acked(2); err != nil {
					t.Fatal(err)
				}
				// The acknowledgement waits for the next write, or the
				// flush after the next renewal.
				if in, err := a.load(ctx, sk); err != nil || in.meta["acked"] != "0" || len(in.unacked) != 3 {
					t.Fatalf("an acknowledgement was written on its own: acked %q, %d stanzas, %v", in.meta["acked"], len(in.unacked), err)
				}
				cs.flush() // as the hand-over at SIGTERM
				if ok, err := a.ls.mark(ctx, sk, ra.lease, true); err != nil || !ok {
					t.Fatalf("mark: %v %v", ok, err)
				}
				// b forging a lease (its own name with a's token, a's name
				// with a higher token) writes nothing.
				for _, forged := range []lease{{token: ra.lease.token, node: "b", incarnation: "i-b", peer: "127.0.0.1:1"},
					{token: ra.lease.token + 1, node: "a", incarnation: "i-a", peer: "127.0.0.1:1"}} {
					b.hold(sk, forged)
					fs := &clusterSession{cl: b, sk: sk, log: newEventLog(10, nil), user: "mallory"}
					if err := fs.Save(xmppconn.ResumeState{V: 1, JID: "mallory@example.org/x"}); !errors.Is(err, ErrNotOwner) {
						t.Fatalf("a forged lease's Save: %v", err)
					}
					if _, ok := b.holds(sk); ok {
						t.Fatal("a refused write left the forged lease held")
					}
					if _, err := b.load(ctx, sk); !errors.Is(err, ErrNotOwner) {
						t.Fatalf("a load without the lease: %v", err)
					}
				}
				b.wg.Wait()
				// a dies; b takes the session over with a higher token.
				rb, err := b.take(ctx, sk, &ra.lease)
				if err != nil || !rb.won || !rb.online {
					t.Fatalf("b's takeover: %+v %v", rb, err)
				}
				// a's old token writes nothing, and the stanza's events
				// are dropped, not shown: b gets the stanza again.
				before := s.log.head()
				s.appendJSON("message", messageJSON{From: "bob@example.org/desk", ID: "2", Body: "two"})
				if err := cs.Handled(2); !errors.Is(err, ErrNotOwner) {
					t.Fatalf("the old owner's count: %v", err)
				}
				if got := s.log.head(); got != before {
					t.Fatalf("the old owner showed a stanza it could not write: %v, was %v", got, before)
				}
				if err := cs.Sent(chatStanza(9)); !errors.Is(err, ErrNotOwner) {
					t.Fatalf("the old owner's send: %v", err)
				}
				a.wg.Wait()
				s2, got := stateSession(t, b, sk, "alice")
				if got == nil {
					t.Fatal("b found nothing to resume")
				}
				if got.ID != want.ID || got.JID != want.JID || got.H != 1 || got.Acked != 2 || len(got.Unacked) != 1 || !bytes.Equal(got.Unacked[0], chatStanza(2)) || got.Max != 300 {
					t.Fatalf("b resumes %+v", got)
				}
				if s2.log.epoch == s.log.epoch || s2.log.head().offset != s.log.head().offset {
					t.Fatalf("b's log at %v, a's at %v: want the same offset under another epoch", s2.log.head(), s.log.head())
				}
				res := s2.log.read(head, true, 10)
				if !res.recovered || len(res.events) != 2 || res.events[1].kind != "message" || !strings.Contains(string(res.events[1].fields), `"one"`) {
					t.Fatalf("b's log after a's cursor %v: %+v", head, res)
				}
				if !s2.log.hasKey("k1") {
					t.Fatal("b's log lost the dedup key")
				}
				if p := s2.presenceOf("bob@example.org"); len(p) != 1 || p[0].Show != "away" {
					t.Fatalf("b's contacts' presences: %+v", p)
				}
				// b's log continues a's offsets in Redis too, and its
				// epoch: a log loaded again takes a's and b's cursors.
				s2.appendState(xmppconn.StateOnline, "resumed")
				s3, _ := stateSession(t, b, sk, "alice")
				if s3.log.head().offset != s2.log.head().offset {
					t.Fatalf("reloaded at %v, b at %v", s3.log.head(), s2.log.head())
				}
				for _, c := range []cursor{head, {s2.log.epoch, head.offset}} {
					if res := s3.log.read(c, true, 10); !res.recovered || len(res.events) != 3 || res.events[2].kind != "state" {
						t.Fatalf("the log loaded again after cursor %v: %+v", c, res)
					}
				}
				// Another user on the same PHP session gets a new log.
				s4, st4 := stateSession(t, b, sk, "carol")
				if st4 != nil || s4.log.epoch == s.log.epoch || !s4.durable.newLog {
					t.Fatalf("another user's session continues alice's: %v %v", st4, s4.log.epoch)
				}
			}
		})
	}
}

// TestClusterRenewDuringFlush: a renewal pass does not wait for the
// writes an outage kept back. Redis answering again, the pass starts their
// flush and ends; a renewal that comes while the flush runs has it run
// again, and what was kept back meanwhile is written then. After a 30 s
// outage at 2,000 users the flush held a node's renewals back 2–3 s, near
// the point where every call checks its lease in Redis, and a longer one
// would have let the leases expire (issue 20 item 6).
func TestClusterRenewDuringFlush(t *testing.T) {
	spec := "redis://" + phpsessiontest.StartRedis(t).Addr
	a := stateNode(t, spec, "a")
	ctx := t.Context()
	var stores []*clusterSession
	for _, name := range []string{"one", "two"} {
		s, _ := ownedSession(t, a, sessionKey("flush-"+name+"-ffffffffffffffffffff"), "alice")
		if err := s.durable.Save(xmppconn.ResumeState{V: 1, JID: "alice@example.org/web", ID: "sm-" + name}); err != nil {
			t.Fatal(err)
		}
		stores = append(stores, s.durable)
	}
	one, two := stores[0], stores[1]
	down := func() { a.redisDown.Store(time.Now().Add(time.Hour).UnixNano()) } // as after a failed write
	down()
	if err := one.Sent(chatStanza(0)); err != nil {
		t.Fatalf("a send failed for Redis: %v", err)
	}
	one.mu.Lock() // the flush stops at this session
	locked := true
	defer func() {
		if locked {
			one.mu.Unlock()
		}
	}()
	pass := func(what string) {
		t.Helper()
		done := make(chan struct{})
		go func() { a.renew(ctx); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			one.mu.Unlock()
			locked = false
			<-done
			t.Fatalf("the %s renewal pass waited for the flush of the writes Redis did not take", what)
		}
	}
	pass("first")
	for taken := time.Now().Add(10 * time.Second); ; {
		a.flushMu.Lock()
		n := len(a.flushList)
		a.flushMu.Unlock()
		if n == 0 {
			break // the flusher has taken the list
		}
		if time.Now().After(taken) {
			t.Fatal("no flusher took the writes kept back after the renewal")
		}
		time.Sleep(10 * time.Millisecond)
	}
	down() // a write failed again while the flush runs
	if err := two.Sent(chatStanza(1)); err != nil {
		t.Fatalf("a send failed for Redis: %v", err)
	}
	pass("second")
	one.mu.Unlock()
	locked = false
	deadline := time.Now().Add(10 * time.Second)
	for _, cs := range stores {
		for {
			cs.mu.Lock()
			kept := cs.dirty || len(cs.unsynced) > 0 || cs.hasWant
			cs.mu.Unlock()
			if !kept {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: its state kept back is not written after the renewals", cs.sk[:10])
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if a.redisDown.Load() != 0 {
		t.Error("Redis still marked down after the flush")
	}
}

// TestClusterMarkRetried: an online mark Redis did not take (slower than
// its bound, or down: here its context ends first) is written after the
// next renewal that reaches Redis, while the node holds the lease it was
// made under; a later mark replaces it, and one whose lease was given
// back or claimed again since is dropped. Without it a user who logged in
// while Redis did not answer was never in the orphan index, and a node
// taking their session over found them offline.
func TestClusterMarkRetried(t *testing.T) {
	spec := "redis://" + phpsessiontest.StartRedis(t).Addr
	a := stateNode(t, spec, "a")
	a.sealer = newSealer("mark-retried-secret-0123456789")
	ctx := t.Context()
	late, cancel := context.WithCancel(ctx)
	cancel()
	state := func(sk string) (on string, indexed bool) {
		on, err := a.rdb.HGet(ctx, keysOf(sk).meta, "on").Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		_, err = a.rdb.HGet(ctx, indexKey(partitionOf(sk), a.ls.self.member()), sk).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		return on, err == nil
	}
	for _, c := range []struct {
		name    string
		between func(sk string)
		on      string
		indexed bool
	}{
		{"Redis answers again", func(string) {}, "1", true},
		{"logged out since", func(sk string) { a.closed(sk, "logout") }, "0", false},
		{"lease given back since", func(sk string) { a.giveBack(ctx, sk) }, "", false},
		{"lease claimed again since", func(sk string) {
			a.giveBack(ctx, sk)
			if r, err := a.take(ctx, sk, nil); err != nil || !r.won {
				t.Fatalf("the claim again: %+v %v", r, err)
			}
		}, "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			id := "mark-retried-" + strings.ReplaceAll(c.name, " ", "-")
			sk := sessionKey(id)
			if r, err := a.take(ctx, sk, nil); err != nil || !r.won {
				t.Fatalf("claim: %+v %v", r, err)
			}
			a.opened(late, sk, id)
			if on, indexed := state(sk); on != "" || indexed {
				t.Fatalf("the mark Redis did not take is there: on=%q indexed=%v", on, indexed)
			}
			c.between(sk)
			a.redisBack()
			if on, indexed := state(sk); on != c.on || indexed != c.indexed {
				t.Errorf("after Redis answered: on=%q indexed=%v, want on=%q indexed=%v", on, indexed, c.on, c.indexed)
			}
		})
	}
}

// TestClusterStateRedisDown: while Redis does not answer, sends go on
// (the store keeps a mirror), a stanza's events are shown at once and its
// count is refused (the server is not told it); when Redis answers, the
// whole state and the events kept back are written, and a takeover then
// finds them all.
func TestClusterStateRedisDown(t *testing.T) {
	spec := "redis://" + phpsessiontest.StartRedis(t).Addr
	a, b := stateNode(t, spec, "a"), stateNode(t, spec, "b")
	ctx := t.Context()
	sk := sessionKey("state-down-dddddddddddddddddd")
	s, la := ownedSession(t, a, sk, "alice")
	cs := s.durable
	if err := cs.Save(xmppconn.ResumeState{V: 1, JID: "alice@example.org/web", ID: "sm"}); err != nil {
		t.Fatal(err)
	}
	a.ls.mark(ctx, sk, la, true)
	a.redisDown.Store(time.Now().Add(time.Hour).UnixNano()) // as after a failed write
	for i := range 3 {
		if err := cs.Sent(chatStanza(i)); err != nil {
			t.Fatalf("a send failed for Redis: %v", err)
		}
	}
	head := s.log.head()
	s.appendJSON("message", messageJSON{From: "bob@example.org/desk", ID: "1", Body: "during"})
	if err := cs.Handled(1); err == nil {
		t.Fatal("a count was taken while Redis was down")
	}
	if got := s.log.head(); got.offset != head.offset+1 {
		t.Fatalf("the user did not see the message during the outage: %v", got)
	}
	if err := cs.Acked(1); err != nil {
		t.Fatal(err)
	}
	a.redisBack()
	if len(cs.unsynced) != 0 || cs.dirty || cs.hasWant {
		t.Fatalf("kept back after Redis came back: %d events, dirty %v, count %v", len(cs.unsynced), cs.dirty, cs.hasWant)
	}
	rb, err := b.take(ctx, sk, &la)
	if err != nil || !rb.won {
		t.Fatal(rb, err)
	}
	s2, st := stateSession(t, b, sk, "alice")
	if st == nil || st.H != 1 || st.Acked != 1 || len(st.Unacked) != 2 {
		t.Fatalf("after the outage b resumes %+v", st)
	}
	if res := s2.log.read(head, true, 10); !res.recovered || len(res.events) != 1 {
		t.Fatalf("b's log after the outage: %+v", res)
	}
}

// TestClusterStateDoubleFault: an owner that dies while Redis does not
// answer has shown its page events Redis never got (the double fault). The
// next owner's own events take those offsets; a page whose cursor names one
// of them must be told recovered:false, not given the next owner's events
// after it as though it had the ones before (2,000-user kill -9, run 13:
// 33 messages shown twice, untold). A cursor up to what Redis holds stays
// valid, on that owner and on the one after it.
func TestClusterStateDoubleFault(t *testing.T) {
	for _, tc := range redisSpecs() {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec(t)
			a, b, c := stateNode(t, spec, "a"), stateNode(t, spec, "b"), stateNode(t, spec, "c")
			ctx := t.Context()
			sk := sessionKey("double-fault-fffffffffffffff")
			s, la := ownedSession(t, a, sk, "alice")
			want := xmppconn.ResumeState{V: 1, JID: "alice@example.org/web-" + sk[:8], ID: "sm-" + sk[:6], Max: 300}
			if err := s.durable.Save(want); err != nil {
				t.Fatal(err)
			}
			if ok, err := a.ls.mark(ctx, sk, la, true); err != nil || !ok {
				t.Fatalf("mark: %v %v", ok, err)
			}
			s.appendState(xmppconn.StateConnecting, "")
			s.appendState(xmppconn.StateOnline, "")
			written := s.log.head() // Redis holds everything up to here
			msg := messageJSON{From: "bob@example.org/desk", ID: "m1", Body: "during the outage"}
			a.redisDown.Store(time.Now().Add(time.Hour).UnixNano())
			s.appendJSONOnce("message", "k1", msg)
			if err := s.durable.Handled(1); err == nil {
				t.Fatal("a count was written while Redis was down")
			}
			shown := s.log.read(written, true, 10) // the page polls: it has the message
			if len(shown.events) != 1 || shown.cursor.offset != written.offset+1 {
				t.Fatalf("the page's poll during the outage: %+v", shown)
			}
			// a dies (nothing flushed); b takes the session over and
			// resumes it: its state events, then the server sends the
			// message again.
			rb, err := b.take(ctx, sk, &la)
			if err != nil || !rb.won || !rb.online {
				t.Fatalf("b's takeover: %+v %v", rb, err)
			}
			s2, st := stateSession(t, b, sk, "alice")
			if st == nil {
				t.Fatal("b found nothing to resume")
			}
			if err := s2.durable.Save(*st); err != nil {
				t.Fatal(err)
			}
			s2.appendState(xmppconn.StateConnecting, "")
			s2.appendState(xmppconn.StateOnline, "resumed")
			if !s2.appendJSONOnce("message", "k1", msg) {
				t.Fatal("the message sent again was refused: Redis never had it")
			}
			if err := s2.durable.Handled(1); err != nil {
				t.Fatal(err)
			}
			if got := s2.log.head().offset; got <= shown.cursor.offset {
				t.Fatalf("b's log ends at %d, not past the page's cursor %v", got, shown.cursor)
			}
			if res := s2.log.read(shown.cursor, true, 10); res.recovered {
				t.Fatalf("a cursor past what Redis held was answered as current: %+v", res)
			}
			for _, cur := range []cursor{written, {written.epoch, written.offset + 100}, {12345, written.offset}} {
				res := s2.log.read(cur, true, 10)
				if cur == written {
					if !res.recovered || len(res.events) != 3 || res.cursor != s2.log.head() {
						t.Fatalf("after the cursor Redis held: %+v, want b's 3 events up to %v", res, s2.log.head())
					}
					continue
				}
				if res.recovered {
					t.Fatalf("a forged cursor %v was answered as current: %+v", cur, res)
				}
			}
			// c takes it from b: a's and b's cursors still hold.
			s2.durable.flush()
			lb, _ := b.holds(sk)
			rc, err := c.take(ctx, sk, &lb)
			if err != nil || !rc.won {
				t.Fatalf("c's takeover: %+v %v", rc, err)
			}
			s3, _ := stateSession(t, c, sk, "alice")
			for _, cur := range []cursor{written, {s2.log.epoch, written.offset}} {
				if res := s3.log.read(cur, true, 10); !res.recovered || len(res.events) != 3 {
					t.Fatalf("c's log after %v: %+v", cur, res)
				}
			}
			if res := s3.log.read(shown.cursor, true, 10); res.recovered {
				t.Fatalf("c answered the cursor past what Redis held as current: %+v", res)
			}
		})
	}
}

// TestClusterStateLogCap: the log in Redis keeps at most --event-buffer
// events and drops what a poll acknowledged; offsets stay those of the
// owner.
func TestClusterStateLogCap(t *testing.T) {
	spec := "redis://" + phpsessiontest.StartRedis(t).Addr
	a, b := stateNode(t, spec, "a"), stateNode(t, spec, "b")
	ctx := t.Context()
	sk := sessionKey("state-cap-eeeeeeeeeeeeeeeeeee")
	s, la := ownedSession(t, a, sk, "alice")
	for i := range 12 {
		s.appendState(xmppconn.StateOnline, "n"+strconv.Itoa(i))
	}
	s.log.read(cursor{s.log.epoch, 3}, true, 1) // a poll acknowledges 3
	a.ls.mark(ctx, sk, la, false)
	b.take(ctx, sk, &la)
	s2, _ := stateSession(t, b, sk, "alice")
	if s2.log.head().offset != s.log.head().offset || s2.log.n != 5 {
		t.Fatalf("b's log: head %v (a's %v), %d events kept (cap 5)", s2.log.head(), s.log.head(), s2.log.n)
	}
	s.appendState(xmppconn.StateOnline, "after") // a, no longer the owner
	if s2.log.n != 5 {
		t.Fatal("the old owner wrote")
	}
}

// TestClusterStateWritePath: an acknowledgement rides on the session's
// next write; one Redis no longer agrees with (-1) makes the write whole;
// the keys' TTLs are set on the first write and on a list a write creates
// again, not on every write; a log over its byte cap loses its oldest
// events; concurrent writes of many sessions are batched and each gets its
// own answer, on a Redis whose script cache was emptied too.
func TestClusterStateWritePath(t *testing.T) {
	for _, tc := range redisSpecs() {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec(t)
			a := stateNode(t, spec, "a")
			ctx := t.Context()
			sk := sessionKey("state-path-ffffffffffffffffff")
			s, _ := ownedSession(t, a, sk, "alice")
			cs := s.durable
			if err := cs.Save(xmppconn.ResumeState{V: 1, JID: "alice@example.org/web", ID: "sm"}); err != nil {
				t.Fatal(err)
			}
			k := keysOf(sk)
			stored := func() (string, string, int) {
				t.Helper()
				in, err := a.load(ctx, sk)
				if err != nil {
					t.Fatal(err)
				}
				return in.meta["acked"], in.meta["h"], len(in.unacked)
			}
			for i := range 3 {
				if err := cs.Sent(chatStanza(i)); err != nil {
					t.Fatal(err)
				}
			}
			if pttl := a.rdb.PTTL(ctx, k.unacked).Val(); pttl <= 0 {
				t.Fatalf("the unacked list has no TTL: %v", pttl)
			}
			if err := cs.Acked(3); err != nil {
				t.Fatal(err)
			}
			if acked, _, n := stored(); acked != "0" || n != 3 {
				t.Fatalf("after Acked: acked %s, %d stanzas", acked, n)
			}
			// The list emptied is gone; the next send makes it anew, with
			// a TTL, though the session's TTLs were set a moment ago.
			s.appendJSON("message", messageJSON{From: "bob@example.org/desk", ID: "1", Body: "one"})
			if err := cs.Handled(1); err != nil {
				t.Fatal(err)
			}
			if acked, h, n := stored(); acked != "3" || h != "1" || n != 0 {
				t.Fatalf("the count did not carry the acknowledgement: acked %s, h %s, %d stanzas", acked, h, n)
			}
			if err := cs.Sent(chatStanza(3)); err != nil {
				t.Fatal(err)
			}
			if pttl := a.rdb.PTTL(ctx, k.unacked).Val(); pttl <= 0 {
				t.Fatalf("the unacked list made anew has no TTL: %v", pttl)
			}
			a.rdb.Persist(ctx, k.meta)
			if err := cs.Sent(chatStanza(4)); err != nil {
				t.Fatal(err)
			}
			if pttl := a.rdb.PTTL(ctx, k.meta).Val(); pttl >= 0 {
				t.Fatalf("a write within the minute set the TTLs again: %v", pttl)
			}
			cs.mu.Lock()
			cs.ttlAt = 0
			cs.mu.Unlock()
			if err := cs.Sent(chatStanza(5)); err != nil {
				t.Fatal(err)
			}
			if pttl := a.rdb.PTTL(ctx, k.meta).Val(); pttl <= 0 {
				t.Fatalf("the minute's write set no TTL: %v", pttl)
			}
			// Redis's acknowledgement is not the one the store wrote: the
			// next write is the whole state.
			a.rdb.HSet(ctx, k.meta, "acked", "99")
			if err := cs.Acked(4); err != nil {
				t.Fatal(err)
			}
			if err := cs.Sent(chatStanza(6)); err != nil {
				t.Fatal(err)
			}
			if acked, _, n := stored(); acked != "4" || n != 3 {
				t.Fatalf("after a refused acknowledgement: acked %s, %d stanzas, want 4 and 3", acked, n)
			}
			// An acknowledgement no write carries: the pass after a
			// renewal writes it once it is a renewal interval old.
			if err := cs.Acked(5); err != nil {
				t.Fatal(err)
			}
			a.redisBack()
			if acked, _, _ := stored(); acked != "4" {
				t.Fatalf("a young acknowledgement was flushed: acked %s", acked)
			}
			cs.mu.Lock()
			cs.ackAt -= int64(ackWait(a.ls.ttl))
			cs.mu.Unlock()
			a.redisBack()
			if acked, _, n := stored(); acked != "5" || n != 2 {
				t.Fatalf("the pass after a renewal: acked %s, %d stanzas, want 5 and 2", acked, n)
			}
			// The byte cap: the oldest events leave the list in Redis.
			cs.mu.Lock()
			a.logBytes = 300
			cs.mu.Unlock()
			for i := range 10 {
				s.appendState(xmppconn.StateOnline, strings.Repeat("x", 50)+strconv.Itoa(i))
			}
			in, err := a.load(ctx, sk)
			if err != nil {
				t.Fatal(err)
			}
			sum := 0
			for _, r := range in.records {
				sum += len(r)
			}
			if sum > 300 || len(in.records) == 0 || in.meta["eb"] != strconv.Itoa(sum) {
				t.Fatalf("log over its byte cap: %d records, %d bytes, eb %s", len(in.records), sum, in.meta["eb"])
			}
			// Many sessions at once, after Redis forgot its scripts.
			flushScripts(t, a.rdb)
			var wg sync.WaitGroup
			errs := make(chan error, 40)
			for i := range 40 {
				id := fmt.Sprintf("state-many-%02d-gggggggggggggg", i)
				sk := sessionKey(id)
				if r, err := a.take(ctx, sk, nil); err != nil || !r.won {
					t.Fatal(r, err)
				}
				s, _ := stateSession(t, a, sk, "user"+strconv.Itoa(i))
				wg.Go(func() {
					if err := s.durable.Save(xmppconn.ResumeState{V: 1, JID: "user" + strconv.Itoa(i) + "@example.org/web", ID: "sm"}); err != nil {
						errs <- err
						return
					}
					for j := range 5 {
						if err := s.durable.Sent(chatStanza(j)); err != nil {
							errs <- err
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			for i := range 40 {
				sk := sessionKey(fmt.Sprintf("state-many-%02d-gggggggggggggg", i))
				in, err := a.load(ctx, sk)
				if err != nil || len(in.unacked) != 5 || !bytes.Equal(in.unacked[4], chatStanza(4)) {
					t.Fatalf("session %d: %d stanzas, %v", i, len(in.unacked), err)
				}
			}
			// A batch of several, every script unknown to Redis.
			flushScripts(t, a.rdb)
			var batch []*stateCall
			for i := range 6 {
				sk := sessionKey(fmt.Sprintf("state-many-%02d-gggggggggggggg", i))
				l, _ := a.holds(sk)
				if i == 5 {
					l.token++ // not the lease: 0
				}
				batch = append(batch, &stateCall{keys: keysOf(sk).stateKeys(), args: []any{l.String(), 60000, 5000, "H", i}})
			}
			execState(a.rdb, batch)
			for i, c := range batch {
				if want := min(1, 5-i); c.err != nil || c.n != want {
					t.Fatalf("batched script %d after NOSCRIPT: %d %v, want %d", i, c.n, c.err, want)
				}
			}
		})
	}
}

// FuzzDecodeRecord: an event record read from Redis never panics the
// decoder; what it accepts encodes back to itself and is an event a poll
// can send as is.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(&event{at: 1, kind: "message", key: "0123456789abcdef", fields: []byte(`"body":"hi"`)}))
	f.Add(encodeRecord(&event{at: time.Now().UnixNano(), kind: "state", fields: []byte(`"state":"online","reason":""`)}))
	f.Add([]byte{})
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := decodeRecord(b)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeRecord(&ev), b) {
			t.Fatalf("record %q decodes to %+v, which encodes otherwise", b, ev)
		}
		var sb strings.Builder
		encodeEvent(&sb, 1, ev)
		var probe map[string]any
		if err := json.Unmarshal([]byte(sb.String()), &probe); err != nil {
			t.Fatalf("an accepted record makes a poll's JSON invalid: %s: %v", sb.String(), err)
		}
	})
}

// FuzzParseSaved: whatever Redis holds for a session never panics the
// decoder, and a state it returns is one xmppconn.Resume accepts; the
// dedup keys of acknowledged events (meta 'dk') it returns are keys a log
// takes, and a malformed 'dk' costs those keys only, not the log; the
// earlier epochs (meta 'pe') it returns are at most maxPrevEpochs and
// stored back as read, and a malformed 'pe' costs those only.
func FuzzParseSaved(f *testing.F) {
	st, _ := stateJSON(xmppconn.ResumeState{V: 1, JID: "alice@example.org/web", ID: "sm"})
	rec := string(encodeRecord(&event{kind: "state", fields: []byte(`"a":1`)}))
	f.Add(st, "3", "1", "7", "9", "alice", "1", string(chatStanza(1)), rec, "bob@example.org/desk", `{"resource":"desk","show":"away"}`, "\x03abc\x01z", "5:4,6:8")
	f.Add(st, "3", "1", "7", "9", "alice", "1", string(chatStanza(1)), rec, "bob@example.org/desk", `{"resource":"desk","show":"away"}`, "\x05ab", "5:04")
	f.Add("{", "x", "-1", "", "0", "", "0", "<a/>", "\x05", "/", "null", "\x00", "1:1,2:2,3:3,4:4,5:5,6:6,7:7,8:8,9:9")
	f.Fuzz(func(t *testing.T, st, h, acked, ep, next, user, on, unacked, record, pfull, pjson, dk, pe string) {
		in := stored{
			meta:     map[string]string{"st": st, "h": h, "acked": acked, "ep": ep, "next": next, "user": user, "on": on, "dk": dk, "pe": pe},
			unacked:  [][]byte{[]byte(unacked)},
			records:  [][]byte{[]byte(record)},
			presence: map[string]string{pfull: pjson},
		}
		sv, _ := parseSaved("alice", in)
		if sv.state != nil {
			if err := sv.state.Validate(); err != nil {
				t.Fatalf("parseSaved returned a state Resume refuses: %v", err)
			}
		}
		if sv.logOK && sv.next < uint64(len(sv.events))+1 {
			t.Fatalf("a log whose events end before offset 1: %+v", sv)
		}
		if !sv.logOK && sv.keys != nil {
			t.Fatalf("dedup keys %q kept without a log", sv.keys)
		}
		for _, k := range sv.keys {
			if len(k) == 0 || len(k) > maxRecordKey {
				t.Fatalf("a dedup key of %d bytes accepted", len(k))
			}
		}
		if _, err := ackedKeys(dk); err != nil && sv.keys != nil {
			t.Fatalf("malformed 'dk' %q decoded to %q", dk, sv.keys)
		}
		if len(sv.prev) > maxPrevEpochs || !sv.logOK && sv.prev != nil {
			t.Fatalf("earlier epochs %v kept (log %v)", sv.prev, sv.logOK)
		}
		if sv.prev != nil && formatEpochs(sv.prev) != pe {
			t.Fatalf("'pe' %q decoded to %v, which is stored otherwise", pe, sv.prev)
		}
		if sv.logOK {
			l := newEventLog(10, nil)
			l.seed(&sv)
			if len(l.prev) > maxPrevEpochs || slices.ContainsFunc(l.prev, func(c cursor) bool { return c.epoch == l.epoch }) || l.next != sv.next {
				t.Fatalf("seeded log at epoch %d, next %d, earlier %v, from %+v", l.epoch, l.next, l.prev, sv)
			}
		}
	})
}

// TestClusterStateAfterLogStopped: once a session's log is stopped (the
// session is being let go: a hand-over or a lease lost), a stanza the
// stream still reads before it is detached is not counted handled, so the
// server gives it again to the next owner. Before, its events went to
// Redis at the stopped log's stale offset, where the second such stanza's
// were taken for a retried write and skipped while its count was stored
// and acknowledged: lost (issue 20 item 5, the rolling restart's losses).
func TestClusterStateAfterLogStopped(t *testing.T) {
	spec := "redis://" + phpsessiontest.StartRedis(t).Addr
	a, b := stateNode(t, spec, "a"), stateNode(t, spec, "b")
	ctx := t.Context()
	sk := sessionKey("stopped-log-aaaaaaaaaaaaaaa")
	s, la := ownedSession(t, a, sk, "alice")
	cs := s.durable
	if err := cs.Save(xmppconn.ResumeState{V: 1, JID: "alice@example.org/web-" + sk[:8], ID: "sm-" + sk[:6], Max: 300}); err != nil {
		t.Fatal(err)
	}
	if ok, err := a.ls.mark(ctx, sk, la, true); err != nil || !ok {
		t.Fatalf("mark: %v %v", ok, err)
	}
	stanza := handledStanza(s, cs)
	if err := stanza(1); err != nil {
		t.Fatal(err)
	}
	s.log.stopAndWake() // letGo, before the stream is detached
	for i := 2; i <= 4; i++ {
		if err := stanza(i); err == nil {
			t.Errorf("stanza %d, read after the log stopped, was counted handled", i)
		}
	}
	cs.flush() // as letGo does
	if !a.drop(sk, la) {
		t.Fatal("a did not hold the lease")
	}
	if ok, err := a.ls.release(ctx, sk, la); err != nil || !ok {
		t.Fatalf("a's release: %v %v", ok, err)
	}
	if rb, err := b.take(ctx, sk, nil); err != nil || !rb.won {
		t.Fatalf("b's claim: %+v %v", rb, err)
	}
	s2, st := stateSession(t, b, sk, "alice")
	if st == nil {
		t.Fatal("b found nothing to resume")
	}
	for i := 1; i <= int(st.H); i++ {
		if !s2.log.hasKey("k" + strconv.Itoa(i)) {
			t.Errorf("stanza %d is counted handled (h=%d) but its event is not in the log b loaded: lost", i, st.H)
		}
	}
	if st.H != 1 {
		t.Errorf("h=%d after the log stopped at 1", st.H)
	}
}

// handledStanza returns a function that has session s's stream read its
// i-th inbound stanza, a message keyed "k<i>", and report it handled to
// store cs.
func handledStanza(s *session, cs *clusterSession) func(i int) error {
	return func(i int) error {
		k := "k" + strconv.Itoa(i)
		s.appendJSONOnce("message", k, messageJSON{From: "bob@example.org/desk", ID: k, Body: k})
		return cs.Handled(uint32(i))
	}
}

// TestClusterStateGoneStore: a stanza whose events a write dropped
// because the lease was no longer in the node's table is never covered
// by a count written later, even once the lease is back in the table (a
// call claiming the session again found its stream still up): at 2,000
// users such a later write told the server it could forget three
// messages whose events nobody had. The store refuses every write from
// then on, and its stream is detached, for the server to give those
// stanzas to the session's next stream. On a real Redis.
func TestClusterStateGoneStore(t *testing.T) {
	spec := "redis://" + phpsessiontest.StartRedis(t).Addr
	a := stateNode(t, spec, "a")
	ctx := t.Context()
	sk := sessionKey("gone-store-aaaaaaaaaaaaaaaaa")
	s, la := ownedSession(t, a, sk, "alice")
	cs := s.durable
	if err := cs.Save(xmppconn.ResumeState{V: 1, JID: "alice@example.org/web-" + sk[:8], ID: "sm-" + sk[:6], Max: 300}); err != nil {
		t.Fatal(err)
	}
	conn := &detachRecorder{fakeConn: &fakeConn{jid: "alice@example.org/web-" + sk[:8], done: make(chan struct{})}}
	s.conn = conn
	s.setState(xmppconn.StateOnline, "")
	a.reg.mu.Lock()
	a.reg.sessions[sk] = s
	a.reg.mu.Unlock()
	stanza := handledStanza(s, cs)
	if err := stanza(1); err != nil {
		t.Fatal(err)
	}
	if !a.drop(sk, la) { // the lease leaves the table
		t.Fatal("a did not hold the lease")
	}
	if err := stanza(2); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("stanza 2, the lease not in the table: %v, want ErrNotOwner", err)
	}
	a.hold(sk, la) // and comes back
	for i := 3; i <= 4; i++ {
		// Refused as not owner, or, once the detach the gone store asked
		// for has stopped the log, as a stopped log: not counted either
		// way (Redis's h is checked below).
		if err := stanza(i); !errors.Is(err, ErrNotOwner) && !errors.Is(err, errLogStopped) {
			t.Errorf("stanza %d, after a write dropped stanza 2's events: %v, want ErrNotOwner or errLogStopped", i, err)
		}
	}
	if err := cs.Save(xmppconn.ResumeState{V: 1, JID: "alice@example.org/web-" + sk[:8], ID: "sm-" + sk[:6], Max: 300, H: 4}); !errors.Is(err, ErrNotOwner) {
		t.Errorf("a Save after the store was gone: %v, want ErrNotOwner", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !conn.detached.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !conn.detached.Load() {
		t.Error("the stream of the gone store was not detached")
	}
	if a.reg.get("gone-store-aaaaaaaaaaaaaaaaa") != nil {
		t.Error("the session is still in the registry")
	}
	in, err := a.load(ctx, sk)
	if err != nil {
		t.Fatal(err)
	}
	sv, errs := parseSaved("alice", in)
	if len(errs) > 0 || sv.state == nil {
		t.Fatalf("the state in Redis: %+v %v", sv, errs)
	}
	if sv.state.H != 1 {
		t.Errorf("h=%d in Redis; want 1, the last stanza whose events were written", sv.state.H)
	}
}

// TestClusterStateDedupAfterAck: a message the page acknowledged leaves
// the log in Redis, but its dedup key stays there, so the node taking
// the session over still refuses it when the server delivers it again
// (issue 20 item 3's flake: a resumption the server refused logs in
// afresh, and Prosody sends again, from offline storage, the messages
// the old session had not seen acknowledged; the page had them).
func TestClusterStateDedupAfterAck(t *testing.T) {
	for _, tc := range redisSpecs() {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec(t)
			a, b := stateNode(t, spec, "a"), stateNode(t, spec, "b")
			ctx := t.Context()
			sk := sessionKey("state-dedup-ddddddddddddddd")
			s, la := ownedSession(t, a, sk, "alice")
			msg := func(i int) (string, messageJSON) {
				m := &xmppconn.Message{From: "bob@example.org/desk", ID: "m" + strconv.Itoa(i), Type: "chat", Body: "hi " + strconv.Itoa(i)}
				return messageKey(m), newMessageJSON(m)
			}
			for i := range 3 {
				if k, m := msg(i); !s.appendJSONOnce("message", k, m) {
					t.Fatalf("message %d refused", i)
				}
			}
			s.log.read(s.log.head(), true, 10) // the page has them all
			s.appendState(xmppconn.StateOnline, "")
			var in stored
			in, err := a.load(ctx, sk)
			if err != nil {
				t.Fatal(err)
			}
			if len(in.records) != 1 {
				t.Fatalf("Redis keeps %d events after the page acknowledged the messages, want the state event alone", len(in.records))
			}
			a.ls.mark(ctx, sk, la, true)
			if r, err := b.take(ctx, sk, &la); err != nil || !r.won {
				t.Fatalf("b's takeover: %+v %v", r, err)
			}
			s2, _ := stateSession(t, b, sk, "alice")
			for i := range 3 {
				if k, m := msg(i); s2.appendJSONOnce("message", k, m) {
					t.Errorf("message %d, which the page had, was taken again by the new owner", i)
				}
			}
			if k, m := msg(3); !s2.appendJSONOnce("message", k, m) {
				t.Error("a new message was refused")
			}
			if s2.log.head().offset != s.log.head().offset+1 {
				t.Errorf("b's log head %v, want one event after a's %v", s2.log.head(), s.log.head())
			}
		})
	}
}

// FuzzAckedKeys: whatever Redis holds in a session's 'dk' field never
// panics the decoder; the keys it accepts are each 1 to maxRecordKey
// bytes and encode back to the field.
func FuzzAckedKeys(f *testing.F) {
	f.Add("\x03abc\x01z")
	f.Add("")
	f.Add("\x00")
	f.Add("\x05ab")
	f.Fuzz(func(t *testing.T, dk string) {
		keys, err := ackedKeys(dk)
		if err != nil {
			return
		}
		var b strings.Builder
		for _, k := range keys {
			if len(k) == 0 || len(k) > maxRecordKey {
				t.Fatalf("key of %d bytes accepted", len(k))
			}
			b.WriteByte(byte(len(k)))
			b.WriteString(k)
		}
		if b.String() != dk {
			t.Fatalf("%q decodes to %q, which encodes otherwise", dk, keys)
		}
	})
}

// TestSeedKeysExpire: the keys of an earlier owner's acknowledged events
// refuse a message delivered again for as long as an acknowledged event
// stays in a log (ackedRetention), then no longer; the log's own keys
// are untouched.
func TestSeedKeysExpire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newEventLog(100, nil)
		l.seedKeys([]string{"old"})
		if !l.appendOnce("message", "new", []byte(`"a":1`)) {
			t.Fatal("a new message was refused")
		}
		if l.appendOnce("message", "old", []byte(`"a":1`)) {
			t.Fatal("a message the earlier owner's page had was taken")
		}
		time.Sleep(ackedRetention + time.Second)
		l.read(l.head(), true, 10) // the page has "new"; it stays for its own retention
		if !l.appendOnce("message", "old", []byte(`"a":1`)) {
			t.Fatal("an acknowledged key outlived ackedRetention")
		}
		if l.appendOnce("message", "old", []byte(`"a":1`)) {
			t.Fatal("the log's own key was lost")
		}
	})
}

// storedStateID is the resumption id of the state Redis holds for sk.
func storedStateID(t *testing.T, cl *cluster, sk string) string {
	t.Helper()
	js, err := cl.rdb.HGet(t.Context(), keysOf(sk).meta, "st").Result()
	if err != nil {
		t.Fatalf("the state in Redis: %v", err)
	}
	st, err := xmppconn.ParseResumeState([]byte(js))
	if err != nil {
		t.Fatalf("the state in Redis: %v", err)
	}
	return st.ID
}

// TestClusterStateSaveRedisDown: a Save (a new XMPP session's state)
// while Redis does not answer is kept, dirty, and returns nil, as a send
// is: failing it failed the login. Redis back, the state is written
// whole, and the node taking the session over resumes the new session,
// with the send and count of the outage. A lease found another node's
// still fails a Save (ErrNotOwner), Redis answering or not.
func TestClusterStateSaveRedisDown(t *testing.T) {
	spec := "redis://" + phpsessiontest.StartRedis(t).Addr
	a, b := stateNode(t, spec, "a"), stateNode(t, spec, "b")
	sk := sessionKey("state-save-down-sssssssssssssss")
	s, la := ownedSession(t, a, sk, "alice")
	cs := s.durable
	if err := cs.Save(xmppconn.ResumeState{V: 1, JID: "alice@example.org/web", ID: "sm-old", H: 7}); err != nil {
		t.Fatal(err)
	}
	a.ls.mark(t.Context(), sk, la, true)
	cs.mu.Lock()
	cs.wantH, cs.hasWant = 9, true // a count of the old session Redis refused
	cs.mu.Unlock()

	a.redisDown.Store(time.Now().Add(time.Hour).UnixNano()) // as after a failed write
	if err := cs.Save(xmppconn.ResumeState{V: 1, JID: "alice@example.org/web", ID: "sm-new"}); err != nil {
		t.Fatalf("a Save failed for Redis: %v", err)
	}
	cs.mu.Lock()
	dirty, hasWant, queued := cs.dirty, cs.hasWant, cs.flushing
	cs.mu.Unlock()
	if !dirty || hasWant || !queued {
		t.Fatalf("after a Save Redis did not take: dirty %v (want true), the old session's count %v (want dropped), on the flush list %v (want true)", dirty, hasWant, queued)
	}
	if id := storedStateID(t, a, sk); id != "sm-old" {
		t.Fatalf("Redis holds %q while it does not answer", id)
	}
	if err := cs.Sent(chatStanza(1)); err != nil {
		t.Fatal(err)
	}
	s.appendJSON("message", messageJSON{From: "bob@example.org/desk", ID: "1", Body: "during"})
	if err := cs.Handled(1); err == nil {
		t.Fatal("a count was taken while Redis was down")
	}

	a.redisBack()
	cs.mu.Lock()
	dirty = cs.dirty
	cs.mu.Unlock()
	if dirty {
		t.Fatal("the state is still dirty after Redis came back")
	}
	rb, err := b.take(t.Context(), sk, &la)
	if err != nil || !rb.won {
		t.Fatal(rb, err)
	}
	_, st := stateSession(t, b, sk, "alice")
	if st == nil || st.ID != "sm-new" || st.H != 1 || len(st.Unacked) != 1 || !bytes.Equal(st.Unacked[0], chatStanza(1)) {
		t.Fatalf("after the outage b resumes %+v, want sm-new with h 1 and the one send", st)
	}

	// The lease is b's now.
	if err := cs.Save(xmppconn.ResumeState{V: 1, JID: "alice@example.org/web", ID: "sm-a"}); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("a Save on a lease taken over: %v, want ErrNotOwner", err)
	}
	a.redisDown.Store(time.Now().Add(time.Hour).UnixNano())
	if err := cs.Save(xmppconn.ResumeState{V: 1, JID: "alice@example.org/web", ID: "sm-a"}); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("a Save on a lease found lost, Redis down: %v, want ErrNotOwner", err)
	}
	if id := storedStateID(t, b, sk); id != "sm-new" {
		t.Fatalf("the old owner's Save reached Redis: it holds %q", id)
	}
}

// TestClusterLoginRedisDown: a real XMPP stream whose store is a cluster
// session must log in afresh while Redis does not answer its state
// write: its link to Prosody broke for longer than Prosody keeps the
// session (smacks_hibernation_time), so the resumption is refused. In
// the daemon the reconnection first proves the lease in Redis
// (fencedGate), so this happens with Redis answering that and not the
// state write: a Redis slow enough to answer the check (2 s) and not the
// write (1 s), or the 2 s the node keeps Redis marked down after a write
// failed, until a lease renewal reaches it; here the node's mark. The
// login must go through once; the old code failed it on the Save
// (ErrResumeStore) and the stream logged in again and again, unserved,
// while Redis did not answer. Redis back, it holds the new session,
// which another node resumes, its Redis marked down too (the takeover's
// Save after the resumption), with no second login at Prosody.
func TestClusterLoginRedisDown(t *testing.T) {
	// StartProsody skips under -short, and only then, as every starter.
	const hibernation = 2 * time.Second
	srv := xmppconntest.StartProsody(t, xmppconntest.Options{SmacksHibernation: hibernation})
	srv.Register(t, "alice", "alice-pw")
	px := xmppconntest.StartProxy(t, srv.Addr) // the stream's link to Prosody, which the test cuts
	spec := "redis://" + phpsessiontest.StartRedis(t).Addr
	a, b := stateNode(t, spec, "a"), stateNode(t, spec, "b")
	sk := sessionKey("login-down-lllllllllllllllllllll")
	s, la := ownedSession(t, a, sk, "alice")
	ctx := t.Context()
	a.ls.mark(ctx, sk, la, true)
	cfg := xmppconn.Config{Addr: px.Addr(), Domain: srv.Domain, TLSConfig: srv.TLSConfig(),
		User: "alice", Password: "alice-pw", Resource: "web", ResumeStore: s.durable,
		Reconnect: true, MinBackoff: 100 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	conn, err := xmppconn.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	oldID := conn.ResumeState().ID
	if oldID == "" || storedStateID(t, a, sk) != oldID {
		t.Fatalf("Redis does not hold the session %q", oldID)
	}

	a.redisDown.Store(time.Now().Add(time.Hour).UnixNano()) // as after a failed write
	px.Refuse()
	time.Sleep(hibernation + time.Second) // Prosody ends the session
	px.Restore()
	for deadline := time.Now().Add(10 * time.Second); conn.State() != xmppconn.StateOnline || conn.ResumeState().ID == oldID; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no fresh login 10 s after the link came back (state %v; %d logins, %d authentications at Prosody)", conn.State(), srv.Binds("alice"), srv.AuthSuccesses("alice"))
		}
	}
	time.Sleep(2 * time.Second) // time for the old code's next logins
	if n, m := srv.Binds("alice"), srv.AuthSuccesses("alice"); n != 2 || m != 2 {
		t.Fatalf("%d logins (%d authentications) at Prosody, want 2 (2): the first and one fresh", n, m)
	}
	id := conn.ResumeState().ID
	if got := storedStateID(t, a, sk); got != oldID {
		t.Fatalf("Redis holds %q while it does not answer", got)
	}
	a.redisBack()
	if got := storedStateID(t, a, sk); got != id {
		t.Fatalf("Redis back, it holds the session %q, want the fresh login's %q", got, id)
	}

	if _, err := conn.Detach(ctx); err != nil { // the node lets go, as when it dies
		t.Fatal(err)
	}
	rb, err := b.take(ctx, sk, &la)
	if err != nil || !rb.won {
		t.Fatal(rb, err)
	}
	s2, st := stateSession(t, b, sk, "alice")
	if st == nil || st.ID != id {
		t.Fatalf("b found %+v to resume, want the session %q", st, id)
	}
	b.redisDown.Store(time.Now().Add(time.Hour).UnixNano())
	cfg.ResumeStore = s2.durable
	conn2, err := xmppconn.Resume(ctx, cfg, *st)
	if err != nil {
		t.Fatalf("the takeover's resumption failed while Redis did not answer: %v", err)
	}
	defer conn2.Close(ctx)
	if n := srv.Binds("alice"); n != 2 {
		t.Errorf("%d logins at Prosody after the takeover, want 2: b did not resume the session", n)
	}
}

// reconnectLog records the reconnection attempts of a stream that failed
// ("xmppconn: reconnect failed"): each one's error and next wait.
type reconnectLog struct {
	mu    sync.Mutex
	errs  []error
	waits []time.Duration
}

func (l *reconnectLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *reconnectLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "xmppconn: reconnect failed" {
		return nil
	}
	var err error
	var wait time.Duration
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "err":
			err, _ = a.Value.Any().(error)
		case "next_wait":
			wait = a.Value.Duration()
		}
		return true
	})
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.waits = append(l.waits, wait)
	l.mu.Unlock()
	return nil
}
func (l *reconnectLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *reconnectLog) WithGroup(string) slog.Handler      { return l }

func (l *reconnectLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.errs)
}

// TestClusterReconnectRedisDownBackoff: while Redis is down, a stream's
// reconnection cannot check its lease, and BeforeReconnect (stepAside)
// puts it off ("not now": xmppconn.ErrNotAdmitted, ErrClusterRedis)
// before it dials: the Jabber server sees no connection while Redis does
// not answer, the stream's backoff stays at its least, and once Redis is
// back the stream comes back online within about that backoff. Before,
// each attempt went on to the dial and the TLS handshake, where the
// fenced AuthGate refused it: a connection at the server per attempt,
// 1.3 a second per broken stream at a 1 s MinBackoff (and before that,
// each refusal doubled the backoff, leaving a stream up to 32 s behind
// after a 30 s outage). A lease truly lost still stops the stream,
// detached, without a dial. A real Prosody and a redis-server, stopped
// and started again (persistent: the lease outlives it), the stream
// configured as the daemon's (fenced AuthGate, BeforeReconnect).
func TestClusterReconnectRedisDownBackoff(t *testing.T) {
	// StartProsody skips under -short, and only then, as every starter.
	srv := xmppconntest.StartProsody(t, xmppconntest.Options{})
	srv.Register(t, "alice", "alice-pw")
	px := xmppconntest.StartProxy(t, srv.Addr) // the stream's link to Prosody, which the test cuts
	rs := phpsessiontest.StartPersistentRedis(t)
	// No renewal runs: the lease outlives the outage by its TTL alone.
	a, b := leaseNode(t, "redis://"+rs.Addr, "a", time.Minute), leaseNode(t, "redis://"+rs.Addr, "b", time.Minute)
	sk := sessionKey("reconnect-down-rrrrrrrrrrrrrrrrrr")
	ctx := t.Context()
	if res, err := a.take(ctx, sk, nil); err != nil || !res.won {
		t.Fatalf("claim: %+v %v", res, err)
	}
	log := &reconnectLog{}
	const least = 100 * time.Millisecond
	cfg := xmppconn.Config{Addr: px.Addr(), Domain: srv.Domain, TLSConfig: srv.TLSConfig(),
		User: "alice", Password: "alice-pw", Resource: "web",
		Reconnect: true, MinBackoff: least, MaxBackoff: 30 * time.Second, Logger: slog.New(log),
		AuthGate:        a.gate(sk, a.reg.auth.gate("alice", [32]byte{})),
		BeforeReconnect: func(ctx context.Context) error { return a.stepAside(ctx, sk) }}
	conn, err := xmppconn.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	rs.Stop()
	dialled := px.Accepted()
	px.Cut() // the stream breaks; its reconnections find Redis down
	for deadline := time.Now().Add(20 * time.Second); log.len() < 6; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d reconnection attempts in 20 s with Redis down, want 6", log.len())
		}
	}
	log.mu.Lock()
	errs, waits := append([]error(nil), log.errs...), append([]time.Duration(nil), log.waits...)
	log.mu.Unlock()
	dials := px.Accepted() - dialled
	rs.Start()
	back := time.Now()
	if dials != 0 {
		t.Errorf("%d connections at the Jabber server in %d reconnection attempts with Redis down, want 0: each must be put off before its dial", dials, len(errs))
	}
	for i, err := range errs {
		if !errors.Is(err, xmppconn.ErrNotAdmitted) || !errors.Is(err, ErrClusterRedis) {
			t.Errorf("attempt %d with Redis down: %v, want put off (ErrNotAdmitted, ErrClusterRedis)", i+1, err)
		}
		if waits[i] != least {
			t.Errorf("attempt %d with Redis down: next wait %v, want %v: a refusal before the dial must not grow the backoff (all: %v)", i+1, waits[i], least, waits)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); conn.State() != xmppconn.StateOnline; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("state %v 10 s after Redis came back", conn.State())
		}
	}
	t.Logf("%d reconnection attempts put off with Redis down, %d connections at the server; online %v after redis-server was started again",
		len(errs), dials, time.Since(back).Round(10*time.Millisecond))

	// Another node holds the lease now: the next reconnection stops the
	// stream, detached, without a dial, as before.
	if err := a.rdb.Del(ctx, leaseKey(sk)).Err(); err != nil { // a's lease expired
		t.Fatal(err)
	}
	if res, err := b.take(ctx, sk, nil); err != nil || !res.expired {
		t.Fatalf("b's claim: %+v %v, want a's lease found expired", res, err)
	} else if rb, err := b.ls.claimExpired(ctx, sk, res.lease); err != nil || !rb.won {
		t.Fatalf("b's takeover: %+v %v", rb, err)
	}
	dialled = px.Accepted()
	px.Cut()
	select {
	case <-conn.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("state %v 10 s after the link broke with the lease b's", conn.State())
	}
	if err := conn.Err(); !errors.Is(err, xmppconn.ErrDetached) || !errors.Is(err, ErrNotOwner) {
		t.Errorf("the stream stopped with %v, want detached (ErrDetached, ErrNotOwner)", err)
	}
	if n := px.Accepted() - dialled; n != 0 {
		t.Errorf("%d connections at the Jabber server after the lease was lost, want 0", n)
	}
	if _, held := a.holds(sk); held {
		t.Error("a still holds the lease b took")
	}
}

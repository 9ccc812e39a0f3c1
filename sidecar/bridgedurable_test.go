package sidecar

import (
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// TestClusterHeldBacklog runs the browser backlog's state operations
// ('K', 'k') against a real Redis and a 3-master Redis Cluster: what
// arrived while no browser was attached comes back on the node taking the
// session over, in order and bounded like the bridge's backlog; what a
// browser took never comes back; another user of the same PHP session
// gets nothing of it.
func TestClusterHeldBacklog(t *testing.T) {
	for _, tc := range redisSpecs() {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec(t)
			a, b := stateNode(t, spec, "a"), stateNode(t, spec, "b")
			ctx := t.Context()
			sk := sessionKey("held-backlog-aaaaaaaaaaaaaaa")
			s, la := heldOwner(t, a, sk)
			cs := s.durable
			const keep = 3
			br := s.bridgeOf(2, keep, a.metrics)
			var h uint32
			inbound := func(br *bridge, cs *clusterSession, body string) {
				t.Helper()
				br.fromServer(bobSays(t, body)) // the Tap runs before the stanza's count
				h++
				if err := cs.Handled(h); err != nil {
					t.Fatal(err)
				}
			}
			// No browser attached: five messages, the backlog keeps three.
			for i := 1; i <= 5; i++ {
				inbound(br, cs, "held-"+strconv.Itoa(i))
			}
			// A page takes the first of them (a BOSH answer of one stanza).
			c, err := br.attach(func() {})
			if err != nil {
				t.Fatal(err)
			}
			br.markReady(c)
			if got := taken(c, 1); len(got) != 1 || !strings.Contains(string(got[0]), "held-3") {
				t.Fatalf("the page took %q, want held-3 (the oldest kept)", got)
			}
			// A message the page takes before its count is written is
			// not written for browsers at all.
			br.fromServer(bobSays(t, "fast"))
			for _, raw := range taken(c, 1<<20) {
				if strings.Contains(string(raw), "held-") {
					continue // held-4 and held-5, taken too: forgotten
				}
				if !strings.Contains(string(raw), ">fast<") {
					t.Fatalf("unexpected %q", raw)
				}
			}
			h++
			if err := cs.Handled(h); err != nil {
				t.Fatal(err)
			}
			br.detach(c)
			// Two more arrive while no page is attached.
			inbound(br, cs, "late-1")
			inbound(br, cs, "late-2")

			// a dies; b takes the session over and its first bridge has
			// exactly the two, in order.
			a.wg.Wait()
			if _, err := b.take(ctx, sk, &la); err != nil {
				t.Fatal(err)
			}
			s2, br2, c2 := heldPage(t, b, sk, "alice", keep)
			got := taken(c2, 1<<20)
			if len(got) != 2 || !strings.Contains(string(got[0]), ">late-1<") || !strings.Contains(string(got[1]), ">late-2<") {
				t.Fatalf("the new owner's first page got %q, want late-1 and late-2", got)
			}
			// Taken: a third node would find nothing.
			in, err := b.load(ctx, sk)
			if err != nil {
				t.Fatal(err)
			}
			if items, next := parseHeld(in.meta); len(items) != 0 || next != 8 {
				t.Fatalf("after the page took them Redis holds %d stanzas, last number %d (want 0, 8)", len(items), next)
			}
			// One more for nobody, then the PHP session's user changes:
			// the new user's bridge gets nothing of alice's, and Redis
			// forgets it.
			br2.detach(c2)
			br2.fromServer(bobSays(t, "secret"))
			if err := s2.durable.Handled(h + 1); err != nil {
				t.Fatal(err)
			}
			s3, _, c3 := heldPage(t, b, sk, "mallory", keep)
			if got := taken(c3, 1<<20); len(got) != 0 {
				t.Fatalf("another user of the PHP session got %q", got)
			}
			s3.appendState(xmppconn.StateConnecting, "") // the new user's first write
			in, err = b.load(ctx, sk)
			if err != nil {
				t.Fatal(err)
			}
			if items, _ := parseHeld(in.meta); len(items) != 0 {
				t.Fatalf("alice's backlog left in Redis for mallory's session: %d stanzas", len(items))
			}
		})
	}
}

// TestClusterHeldBacklogFenced: the browser backlog's operations ('K',
// 'k') write nothing under a stale fencing token or a forged lease. Once
// b took the session over, a's stanza kept for browsers (with its count)
// is refused and a's "a browser took them" is not written: Redis's
// backlog stays as b found it. The script sent directly with a's old
// lease, or with b's token under another node's name, answers 0 and
// writes nothing either.
func TestClusterHeldBacklogFenced(t *testing.T) {
	for _, tc := range redisSpecs() {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec(t)
			a, b := stateNode(t, spec, "a"), stateNode(t, spec, "b")
			ctx := t.Context()
			sk := sessionKey("held-fenced-aaaaaaaaaaaaaaaa")
			s, la := heldOwner(t, a, sk)
			cs := s.durable
			br := s.bridgeOf(2, 3, a.metrics)
			for i := 1; i <= 2; i++ {
				br.fromServer(bobSays(t, "held-"+strconv.Itoa(i)))
				if err := cs.Handled(uint32(i)); err != nil {
					t.Fatal(err)
				}
			}
			a.wg.Wait()
			rb, err := b.take(ctx, sk, &la)
			if err != nil || !rb.won || rb.lease.token <= la.token {
				t.Fatalf("b's takeover: %+v %v", rb, err)
			}
			backlog := func() map[string]string {
				t.Helper()
				in, err := b.load(ctx, sk)
				if err != nil {
					t.Fatal(err)
				}
				m := map[string]string{}
				for f, v := range in.meta {
					if f == "bl" || f == "bn" || f == "bb" || f[0] == 'k' {
						m[f] = v
					}
				}
				return m
			}
			before := backlog()
			if items, next := parseHeld(before); len(items) != 2 || next != 2 {
				t.Fatalf("before: Redis holds %d stanzas, last number %d (want 2, 2)", len(items), next)
			}
			// a, its lease stale: one more stanza for browsers, with its
			// count, then a browser taking all.
			br.fromServer(bobSays(t, "stale"))
			if err := cs.Handled(3); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("the stale owner's count with its K: %v", err)
			}
			cs.tookHeld(3)
			a.wg.Wait()
			if got := backlog(); !maps.Equal(got, before) {
				t.Fatalf("the stale owner changed the backlog: %v, was %v", got, before)
			}
			// The script itself, under a's old token and under b's token
			// with another node's name.
			for _, l := range []lease{la, {token: rb.lease.token, node: "c", incarnation: "i-c", peer: "127.0.0.1:1"}} {
				n, err := stateScript.Run(ctx, a.rdb, keysOf(sk).stateKeys(), l.String(), time.Minute.Milliseconds(), (5 * time.Second).Milliseconds(),
					"K", "9", "<message><body>forjada</body></message>", 3, maxHeldBytes, "k", "2").Int()
				if err != nil || n != 0 {
					t.Fatalf("K and k under the lease %s: %d %v, want 0", l, n, err)
				}
			}
			if got := backlog(); !maps.Equal(got, before) {
				t.Fatalf("a fenced-out script changed the backlog: %v, was %v", got, before)
			}
		})
	}
}

// taken is what a page takes and proves it read at once: the stanzas
// are forgotten in Redis.
func taken(c *bridgeClient, max int) [][]byte {
	out, top := c.takeUnacked(max)
	c.b.acked(top)
	return out
}

// heldOwner is alice's session owned by node cl and resumable (saved
// with a stream id), so that its stanzas for browsers ride on their
// counts.
func heldOwner(t *testing.T, cl *cluster, sk string) (*session, lease) {
	t.Helper()
	s, l := ownedSession(t, cl, sk, "alice")
	s.jid = "alice@example.org"
	if err := s.durable.Save(xmppconn.ResumeState{V: 1, JID: "alice@example.org/web-" + sk[:8], ID: "sm-held", Max: 300}); err != nil {
		t.Fatal(err)
	}
	return s, l
}

// heldPage is user's session loaded on node cl, as by a node taking it
// over, with a page attached to its bridge (keep stanzas kept for
// browsers) and ready.
func heldPage(t *testing.T, cl *cluster, sk, user string, keep int) (*session, *bridge, *bridgeClient) {
	t.Helper()
	s, _ := stateSession(t, cl, sk, user)
	s.jid = user + "@example.org"
	br := s.bridgeOf(2, keep, cl.metrics)
	c, err := br.attach(func() {})
	if err != nil {
		t.Fatal(err)
	}
	br.markReady(c)
	return s, br, c
}

// bobSays is a chat message from bob to alice, as the server sends it.
func bobSays(t *testing.T, body string) *xmppconn.Stanza {
	t.Helper()
	st, err := xmppconn.ParseStanza([]byte(`<message xmlns="jabber:client" from="bob@example.org/desk" to="alice@example.org" type="chat"><body>`+body+`</body></message>`), 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestClusterHeldUnacked: what a BOSH answer carried stays in Redis until
// the page acknowledges the answer. The owner dies with one answer
// acknowledged, one not, and one stanza still queued; its late
// acknowledgement, after another node took the session over, is refused
// (its lease is stale); the new owner's first page gets the unacknowledged
// answer's stanzas and the queued one, in order, and not the
// acknowledged one. On a real Redis and a 3-master Redis Cluster.
func TestClusterHeldUnacked(t *testing.T) {
	for _, tc := range redisSpecs() {
		t.Run(tc.name, func(t *testing.T) { testHeldUnacked(t, tc.spec(t)) })
	}
}

// testHeldUnacked is TestClusterHeldUnacked on the Redis spec.
func testHeldUnacked(t *testing.T, spec string) {
	sk := sessionKey("held-unacked-aaaaaaaaaaaaaaaa")
	a, b := stateNode(t, spec, "a"), stateNode(t, spec, "b")
	s, la := heldOwner(t, a, sk)
	ctx, cs := t.Context(), s.durable
	br := s.bridgeOf(2, 8, a.metrics)
	c, err := br.attach(func() {})
	if err != nil {
		t.Fatal(err)
	}
	br.markReady(c)
	var h uint32
	inbound := func(body string) {
		t.Helper()
		br.fromServer(bobSays(t, body))
		h++
		if err := cs.Handled(h); err != nil {
			t.Fatal(err)
		}
	}
	inbound("m1")
	inbound("m2")
	inbound("m3")
	first, s1 := c.takeUnacked(1)
	rest, s3 := c.takeUnacked(1 << 20)
	if len(first) != 1 || len(rest) != 2 || s1 != 1 || s3 != 3 {
		t.Fatalf("two answers: %q (top %d) and %q (top %d)", first, s1, rest, s3)
	}
	br.acked(s1)  // the page's next requests proved the first answer read
	inbound("m4") // queued for the page, not taken yet

	// a stops (as SIGSTOP); b takes the session over; a wakes and
	// acknowledges the second answer: refused, its lease is gone.
	if _, err := b.take(ctx, sk, &la); err != nil {
		t.Fatal(err)
	}
	br.acked(s3)
	a.wg.Wait()
	if _, ok := a.holds(sk); ok {
		t.Fatal("a still holds the session after its stale write")
	}
	in, err := b.load(ctx, sk)
	if err != nil {
		t.Fatal(err)
	}
	if items, _ := parseHeld(in.meta); len(items) != 3 {
		t.Fatalf("after the stale owner's acknowledgement Redis holds %d stanzas, want 3 (m2, m3, m4)", len(items))
	}

	_, br2, c2 := heldPage(t, b, sk, "alice", 8)
	got, top := c2.takeUnacked(1 << 20)
	var bodies []string
	for _, raw := range got {
		x := string(raw)
		bodies = append(bodies, x[strings.Index(x, "<body>")+len("<body>"):strings.Index(x, "</body>")])
	}
	if strings.Join(bodies, ",") != "m2,m3,m4" || top != 4 {
		t.Fatalf("the new owner's first page got %v (top %d), want m2,m3,m4 (top 4)", bodies, top)
	}
	// Not acknowledged yet: still in Redis; acknowledged: gone.
	in, err = b.load(ctx, sk)
	if err != nil {
		t.Fatal(err)
	}
	if items, _ := parseHeld(in.meta); len(items) != 3 {
		t.Fatalf("before the new page's acknowledgement Redis holds %d stanzas, want 3", len(items))
	}
	br2.acked(top)
	in, err = b.load(ctx, sk)
	if err != nil {
		t.Fatal(err)
	}
	if items, next := parseHeld(in.meta); len(items) != 0 || next != 4 {
		t.Fatalf("after the acknowledgement Redis holds %d stanzas, last number %d (want 0, 4)", len(items), next)
	}
}

// TestBOSHAcknowledge: which answers a request proves the page read: those
// hold+1 rids or more below it, and up to its ack attribute; an ack at or
// past the request's own rid proves nothing more.
func TestBOSHAcknowledge(t *testing.T) {
	for _, tc := range []struct {
		name string
		hold int
		rid  int64
		ack  string
		left []int64
	}{
		{"hold 1: two below", 1, 13, "", []int64{12}},
		{"hold 1: ack of the last", 1, 13, "12", nil},
		{"hold 1: ack of an older one", 1, 13, "10", []int64{12}},
		{"hold 1: ack past the request", 1, 13, "99", []int64{12}},
		{"hold 1: ack not a number", 1, 13, "x", []int64{12}},
		{"hold 0: the one below", 0, 13, "", nil},
		{"hold 2: three below", 2, 13, "", []int64{11, 12}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := newBridge(&session{}, 1, 1, nil)
			bs := &boshSession{hold: tc.hold, c: &bridgeClient{b: br},
				carried: []carriedAnswer{{10, 1}, {11, 2}, {12, 3}}}
			body := &boshBody{attrs: map[string]string{"rid": strconv.FormatInt(tc.rid, 10)}}
			if tc.ack != "" {
				body.attrs["ack"] = tc.ack
			}
			bs.acknowledge(tc.rid, body)
			var left []int64
			for _, a := range bs.carried {
				left = append(left, a.rid)
			}
			if !slices.Equal(left, tc.left) {
				t.Fatalf("unacknowledged answers %v, want %v", left, tc.left)
			}
		})
	}
}
